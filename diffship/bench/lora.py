"""LoRA swaps: how long changing the LoRA of a loaded pipeline takes, and the memory it needs, against diffusers.

    python -m diffship.bench.lora runtime   --package DIR --lora A.safetensors --lora B.safetensors [--rounds 3] [--device cpu]
    python -m diffship.bench.lora diffusers --pretrained DIR --lora A.safetensors --lora B.safetensors [--rounds 3]

Each process opens its pipeline once, then per round: A -> B -> none, timing each swap and sampling the resident
memory every 5 ms while it runs (the peak above the memory before the swap). ours: ``Pipeline.set_loras`` (the merged
weights into new ONNX Runtime sessions of the touched components); diffusers: ``unfuse_lora`` + ``unload_lora_weights``
+ ``load_lora_weights`` + ``fuse_lora``, the same LoRA fused into the torch weights. ``measure_lora_swaps`` runs the
two sides in fresh processes, alternated, and returns medians.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from diffship.bench.processes import absolute, run_module

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * PAGE


@contextlib.contextmanager
def sampled_peak(record: dict[str, float]) -> Iterator[None]:
    """``record['peak_extra_bytes']``: the most resident memory above the start seen while the block ran."""
    start = rss_bytes()
    peak = [start]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    tick = time.perf_counter()
    try:
        yield
    finally:
        record["seconds"] = time.perf_counter() - tick
        done.set()
        sampler.join()
        record["peak_extra_bytes"] = max(peak[0], rss_bytes()) - start


def _swaps(apply: Callable[[Sequence[str]], None], loras: Sequence[str], rounds: int) -> list[dict[str, Any]]:
    records = []
    for round_index in range(rounds):
        for label, chosen in (("A", loras[:1]), ("B", loras[1:2] or loras[:1]), ("none", [])):
            record: dict[str, Any] = {"round": round_index, "to": label}
            with sampled_peak(record):
                apply(chosen)
            records.append(record)
    return records


def run_runtime(package: str, loras: Sequence[str], rounds: int, device: str) -> dict[str, Any]:
    from diffship.runtime import Pipeline

    tick = time.perf_counter()
    pipe = Pipeline.from_package(package, device=device)
    opened = time.perf_counter() - tick
    return {"side": "diffship", "open_seconds": opened, "rss_bytes": rss_bytes(),
            "swaps": _swaps(pipe.set_loras, loras, rounds)}


def run_diffusers(pretrained: str, loras: Sequence[str], rounds: int) -> dict[str, Any]:
    import torch
    from diffusers import StableDiffusionPipeline

    torch.set_grad_enabled(False)
    tick = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(pretrained, safety_checker=None)
    opened = time.perf_counter() - tick
    loaded = [False]

    def apply(chosen: Sequence[str]) -> None:
        if loaded[0]:
            pipe.unfuse_lora()
            pipe.unload_lora_weights()
            loaded[0] = False
        for path in chosen:
            pipe.load_lora_weights(path)
            pipe.fuse_lora(lora_scale=1.0)
            loaded[0] = True

    return {"side": "diffusers", "open_seconds": opened, "rss_bytes": rss_bytes(),
            "swaps": _swaps(apply, loras, rounds)}


def measure_lora_swaps(
    package: Path, pretrained: Path, loras: Sequence[Path], rounds: int, processes: int, device: str,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """Both sides in fresh processes, alternated ``processes`` times each; per side and swap kind, the medians."""
    lora_args = [arg for path in loras for arg in ("--lora", absolute(path))]
    sides = {
        "diffship": ["runtime", "--package", absolute(package), "--device", device],
        "diffusers": ["diffusers", "--pretrained", absolute(pretrained)],
    }
    results: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    for index in range(processes):
        for side, arguments in sides.items():
            progress(f"{side}: process {index + 1}/{processes}, {rounds} rounds of A -> B -> none")
            done = run_module("diffship.bench.lora", [*arguments, *lora_args, "--rounds", str(rounds)])
            if done.returncode != 0:
                raise RuntimeError(f"bench.lora {side} failed: {done.stderr.strip().splitlines()[-1:]}")
            results[side].append(json.loads(done.stdout.strip().splitlines()[-1]))
    summary: dict[str, Any] = {}
    for side, runs in results.items():
        swaps = [s for run in runs for s in run["swaps"]]
        summary[side] = {
            "open_seconds_median": statistics.median(r["open_seconds"] for r in runs),
            "rss_after_open_bytes_median": statistics.median(r["rss_bytes"] for r in runs),
            **{f"to_{kind}": {
                "seconds_median": statistics.median(s["seconds"] for s in swaps if s["to"] == kind),
                "seconds_range": [min(s["seconds"] for s in swaps if s["to"] == kind),
                                  max(s["seconds"] for s in swaps if s["to"] == kind)],
                "peak_extra_bytes_max": max(s["peak_extra_bytes"] for s in swaps if s["to"] == kind),
                "count": sum(s["to"] == kind for s in swaps),
            } for kind in ("A", "B", "none")},
        }
    return {"loras": [str(p) for p in loras], "rounds": rounds, "processes": processes, "summary": summary,
            "runs": results}


def format_lora_table(result: dict[str, Any]) -> str:
    from diffship.runtime.tables import format_table

    rows = []
    for kind in ("A", "B", "none"):
        ours, theirs = result["summary"]["diffship"][f"to_{kind}"], result["summary"]["diffusers"][f"to_{kind}"]
        rows.append([f"-> {kind}", f"{ours['seconds_median']:.2f}s", f"{theirs['seconds_median']:.2f}s",
                     f"{ours['seconds_median'] / theirs['seconds_median']:.2f}x",
                     f"{ours['peak_extra_bytes_max'] / 2**20:.0f} MiB", f"{theirs['peak_extra_bytes_max'] / 2**20:.0f} MiB"])
    return format_table(["swap", "diffship", "diffusers", "ratio", "diffship peak +", "diffusers peak +"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("side", choices=["runtime", "diffusers"])
    parser.add_argument("--package")
    parser.add_argument("--pretrained")
    parser.add_argument("--lora", action="append", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.side == "runtime":
        result = run_runtime(args.package, args.lora, args.rounds, args.device)
    else:
        result = run_diffusers(args.pretrained, args.lora, args.rounds)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
