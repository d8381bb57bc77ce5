"""``bench.coldstart.start_stages`` and the cold-start table: process start -> first image in parts."""

from __future__ import annotations

import pytest

from diffship.bench.coldstart import start_stages
from diffship.bench.harness import format_cold_start


def child(first_image: float, generate: float, again: float) -> dict[str, float]:
    return {"first_image_s": first_image, "import_s": 1.0, "load_s": 2.0, "generate_s": generate, "again_s": again,
            "peak_rss_bytes": 2**30}


def test_start_stages_add_up_and_count_a_slow_first_call_as_warm_up() -> None:
    stages = start_stages(child(first_image=10.0, generate=6.5, again=5.0))
    assert stages == pytest.approx({"interpreter_s": 0.5, "import_s": 1.0, "open_s": 2.0, "warm_up_s": 1.5,
                                    "image_s": 5.0})
    assert sum(stages.values()) == pytest.approx(10.0)


def test_start_stages_never_understate_start_up_when_the_second_call_is_the_slower() -> None:
    stages = start_stages(child(first_image=10.0, generate=6.5, again=7.0))
    assert stages["warm_up_s"] == 0.0 and stages["image_s"] == 6.5


def test_cold_start_table_gives_both_speed_ups_against_diffusers() -> None:
    runs = {"diffusers": child(first_image=12.0, generate=6.0, again=6.0),
            "diffship ort": child(first_image=8.0, generate=6.0, again=6.0)}
    for figures in runs.values():
        figures["stages"] = start_stages(figures)
    table = format_cold_start(runs)
    row = next(line for line in table.splitlines() if line.startswith("diffship ort"))
    # Totals 12 vs 8 s; start-up (total - image) 6 vs 2 s.
    assert "1.5x" in row and "3.0x" in row
