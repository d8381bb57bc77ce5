"""Time per image by sampler and step count (``cli.py bench-samplers``).

Samplers differ in UNet calls per step (Heun, KDPM2 and DPM++ SDE make two, PNDM one extra), and their own numpy
arithmetic is the "scheduler" stage of the pipeline's timings. Each round runs every (sampler, steps) case once, in the
same order, after one warm-up image; the table quotes the median over rounds. Only diffship runs here: what each
sampler costs is its UNet calls, and the UNet against diffusers is measured in BENCHMARKS.md's end-to-end tables.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from diffship.runtime.schedulers import make_scheduler

if TYPE_CHECKING:
    from diffship.runtime.pipeline import Pipeline

PROMPT = "a red fox in the snow, detailed fur, golden hour"


def measure_samplers(
    pipe: Pipeline, names: Sequence[str], step_counts: Sequence[int], size: int, rounds: int,
    progress: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:
    """Seconds per image (median over ``rounds``), UNet calls and the scheduler's own seconds per case."""
    cases = [(name, steps) for name in names for steps in step_counts]
    pipe(PROMPT, num_inference_steps=2, height=size, width=size, seed=0)  # warm-up: sessions, arenas
    samples: dict[tuple[str, int], list[dict[str, float]]] = {case: [] for case in cases}
    for round_index in range(rounds):
        for name, steps in cases:
            result = pipe(PROMPT, num_inference_steps=steps, height=size, width=size, seed=0, scheduler=name)
            timings = result.timings
            samples[name, steps].append({"total": timings.total, "unet": timings.unet, "scheduler": timings.scheduler})
            progress(f"round {round_index + 1}/{rounds}: {name} {steps} steps {result.timings.total:.2f}s")
    rows = []
    for name, steps in cases:
        runs = samples[name, steps]
        rows.append({
            "sampler": name, "steps": steps, "unet_calls": len(make_scheduler(name, pipe.scheduler_config, steps)),
            "seconds_per_image": statistics.median(r["total"] for r in runs),
            "unet_seconds": statistics.median(r["unet"] for r in runs),
            "scheduler_seconds": statistics.median(r["scheduler"] for r in runs),
            "runs": runs,
        })
    return {"size": size, "rounds": rounds, "prompt": PROMPT, "cases": rows}


def format_sampler_table(result: dict[str, Any]) -> str:
    from diffship.runtime.tables import format_table

    header = ["sampler", "steps", "UNet calls", "s / image", "UNet s", "sampler s", "s / UNet call"]
    rows = [[r["sampler"], r["steps"], r["unet_calls"], f"{r['seconds_per_image']:.2f}", f"{r['unet_seconds']:.2f}",
             f"{r['scheduler_seconds'] * 1000:.0f} ms", f"{r['unet_seconds'] / r['unet_calls']:.3f}"]
            for r in result["cases"]]
    return format_table(header, rows)
