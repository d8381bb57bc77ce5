"""``bench``'s summary and tables: each contender's spread (min / median / max, max/min), a warning line when its
runs differ by more than 2x, and ratios of tiny times that never print as "0.00x"."""

from __future__ import annotations

from diffship.bench.harness import BenchResult, Run, format_ratio, format_tables, spread_warnings, summarize

DIFFUSERS, OURS = "diffusers (torch fp32 cpu)", "diffship ort fp32 cpu"


def runs(contender: str, steps: int, totals: list[float]) -> list[Run]:
    return [Run(contender, steps, k, total, {"unet": total / 2}, [total / 2 / steps] * steps)
            for k, total in enumerate(totals)]


def result(diffusers_totals: list[float], our_totals: list[float]) -> BenchResult:
    measured = runs(DIFFUSERS, 20, diffusers_totals) + runs(OURS, 20, our_totals)
    return BenchResult({}, {}, measured, summarize(measured, DIFFUSERS))


def test_bench_summary_records_each_contenders_spread() -> None:
    summary = {row["contender"]: row for row in result([0.26, 3.6, 1.0], [0.5, 0.6, 0.55]).summary}
    assert summary[DIFFUSERS]["min_s"] == 0.26 and summary[DIFFUSERS]["max_s"] == 3.6
    assert summary[DIFFUSERS]["spread"] == 3.6 / 0.26
    assert summary[OURS]["spread"] == 0.6 / 0.5


def test_bench_warns_when_a_contenders_max_is_over_twice_its_min() -> None:
    swung = result([0.26, 3.6, 1.0], [0.5, 0.6, 0.55])
    warnings = spread_warnings(swung.summary)
    assert len(warnings) == 1
    assert DIFFUSERS in warnings[0] and "0.260 to 3.600 s" in warnings[0] and "13.85x apart" in warnings[0]
    table = format_tables(swung)
    assert warnings[0] in table.splitlines()
    steady = result([1.0, 1.9, 1.2], [0.5, 0.6, 0.55])
    assert not spread_warnings(steady.summary) and "warning" not in format_tables(steady)


def test_bench_ratios_of_tiny_times_are_not_zero() -> None:
    table = format_tables(result([3.6, 3.5, 3.7], [0.004, 0.004, 0.005]))
    ours = next(line for line in table.splitlines() if OURS in line)
    assert "0.00x" not in table and "0.0011x" in ours and "0.004" in ours
    assert format_ratio(1.234) == "1.23x" and format_ratio(0.0123) == "0.012x" and format_ratio(float("inf")) == "inf"
