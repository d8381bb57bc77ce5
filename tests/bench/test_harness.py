"""``bench.harness.bench_to_files``: the figures of a long benchmark are on disk before its late, fresh-process part
(the cold start) begins, and after each of those processes, so a failure there loses nothing already measured."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from diffship.bench.harness import BenchSettings, bench_to_files


def test_a_late_failure_keeps_every_figure_measured_before_it(tiny_package: Path, tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    shutil.copytree(tiny_package, package)
    settings = BenchSettings(package=package, height=64, width=64, steps=(1,), repeats=1)
    json_path = tmp_path / "out" / "bench.json"
    seen: list[str] = []

    def progress(line: str) -> None:
        seen.append(line)
        if line == "cold start: diffship ort":  # the package goes away between two cold-start processes
            package.rename(tmp_path / "moved")

    with pytest.raises(RuntimeError, match="cold-start run for diffship ort failed"):
        bench_to_files(settings, json_path, json_path.parent, progress)
    data = json.loads(json_path.read_text())
    assert {run["contender"].split()[0] for run in data["runs"]} == {"diffusers", "diffship"}
    assert {row["steps"] for row in data["summary"]} == {1}
    assert list(data["cold_start"]) == ["diffusers"] and data["cold_start"]["diffusers"]["first_image_s"] > 0
    assert (json_path.parent / "latency_vs_steps.png").is_file()
    assert seen.index("cold start: diffusers") < seen.index("cold start: diffship ort")


def test_every_engine_the_runtime_runs_is_timed_the_vae_encoder_img2img_opens_too(tmp_path: Path) -> None:
    from diffship.bench.harness import Inputs, RuntimeContender, TimedEngine
    from diffship.engines.backend import register_backend
    from diffship.runtime import Pipeline
    from tests.fakes import NumpyBackend, write_package

    package = write_package(tmp_path / "pkg")
    register_backend("numpy", NumpyBackend)
    settings = BenchSettings(package=package, height=64, width=64, steps=(4,), repeats=1, task="img2img", strength=0.5)
    contender = RuntimeContender(Pipeline.from_package(package, backend="numpy"), "diffship numpy")
    assert "vae_encoder" not in contender.pipe.engines  # opened by the first image-to-image call: the warm-up
    inputs = Inputs.make(settings, latent_channels=4, factor=8)
    contender.run(settings, 4, inputs)
    run = contender.run(settings, 4, inputs)
    engines = contender.pipe.engines
    assert "vae_encoder" in engines and all(isinstance(engine, TimedEngine) for engine in engines.values())
    assert run.engine_seconds is not None and 0 < run.engine_seconds < run.total
    contender.close()
