"""``quality --grid cache=... --grid cutoff=...``: the axes reach the pipeline as its arguments (only when on) and
the table shows their columns only where some case sets them."""

from __future__ import annotations

from diffship.bench.quality import (
    DEFAULTS,
    describe_case,
    fewer_flops,
    format_quality_table,
    grid_cases,
    parse_quality_axis,
)


def row(**case: object) -> dict[str, object]:
    entry = {"accuracy": 0.5, "low": 0.4, "high": 0.6}
    return {**DEFAULTS, "scheduler": "PNDMScheduler", **case, "scores": {"shape": entry, "all": entry},
            "seconds_per_image": 0.1, "quality_per_second": 5.0}


def test_quality_fewer_flops_axes_become_pipeline_arguments_when_on() -> None:
    cases = grid_cases([parse_quality_axis("cache=1,3"), parse_quality_axis("cutoff=1,0.5")], DEFAULTS)
    assert [fewer_flops(case) for case in cases] == [
        {}, {"guidance_cutoff": 0.5}, {"cache_interval": 3}, {"cache_interval": 3, "guidance_cutoff": 0.5}]
    assert describe_case(row(cache=3, cutoff=0.5)).endswith(", cache 3, cutoff 0.5")


def test_quality_table_shows_the_fewer_flops_columns_only_when_set() -> None:
    plain = format_quality_table({"scored": ["shape"], "cases": [row()]})
    assert "cache" not in plain and "cutoff" not in plain
    swept = format_quality_table({"scored": ["shape"], "cases": [row(), row(cache=3)]}).splitlines()
    assert "cache" in swept[0] and "cutoff" not in swept[0]
