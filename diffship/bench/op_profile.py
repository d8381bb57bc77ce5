"""Where a UNet or VAE decoder call's time goes on this CPU: ONNX Runtime's per-node profile of the engine the runtime
runs, grouped by kind of work and set against the arithmetic floor of each kind.

    python -m diffship.bench.op_profile --package packages/sd15-random --latent 32,64 [--repeats 3] [--threads N] [--json out]
    python -m diffship.bench.op_profile --package packages/sd15-random --component vae_decoder --latent 32,64

For each latent size one warm-up and ``--repeats`` profiled calls (the UNet at batch 2, a guided step; the VAE
decoder at batch 1) of the package's component, opened as the runtime opens it (its ``build-ort`` engine when there is one: pre-optimised, fused attention, no prepacking). Node
times come from ONNX Runtime's own profiler (``SessionOptions.enable_profiling``), medians over the calls. FLOPs per
kind come from torch's counter over diffusers' module on the same weights (``bench.flops``): convolutions, matrix
products, attention (in a graph without ``build-ort``'s fused attention, attention's matrix products and softmax count
as "matrix product" and "attention" on ONNX Runtime's side). The floor of each kind is its FLOPs over the best float32 GEMM this machine reaches (ONNX
Runtime's MLAS or torch's, whichever is faster); "above floor" is the time a kind takes beyond that. Work torch does
not count (normalisations, elementwise, layout reorders) has a floor of zero here, so all its time is "above floor".
A benchmark: it prints tables and writes JSON; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from diffship.core.package import ModelPackage

KINDS: dict[str, tuple[str, ...]] = {
    "convolution": ("Conv", "FusedConv"),
    "matrix product": ("MatMul", "FusedMatMul", "Gemm", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
                       "QLinearMatMul", "QLinearConv", "ConvInteger"),
    "attention": ("MultiHeadAttention", "Attention", "Softmax"),
    "normalisation": ("GroupNormalization", "GroupNorm", "InstanceNormalization", "LayerNormalization",
                      "SkipLayerNormalization", "ReduceMean", "Sqrt", "Pow"),
    "layout": ("ReorderInput", "ReorderOutput", "Transpose", "Reshape", "Concat", "Split", "Slice", "Resize",
               "Upsample", "Squeeze", "Unsqueeze", "Expand", "Shape", "Gather", "Cast"),
}
"""ONNX Runtime op types by kind of work; anything else (Add, Mul, Sigmoid, Gelu, ...) is "elementwise"."""

TORCH_KINDS = {
    "convolution": ("convolution",),
    "matrix product": ("mm", "addmm"),
    "attention": ("bmm", "baddbmm", "scaled_dot_product", "_scaled_dot_product"),
}
"""torch FLOP-counter op names (prefix match after ``aten.``) by kind."""


def kind_of(op_type: str) -> str:
    return next((kind for kind, ops in KINDS.items() if op_type in ops), "elementwise")


def flops_by_kind(package: ModelPackage, component: str, feeds: dict[str, np.ndarray]) -> dict[str, float]:
    """torch's FLOP count of diffusers' ``component`` on ``feeds``, by kind (convolution, matrix product, attention)."""
    import torch

    from diffship.bench.flops import flop_counter
    from diffship.bench.reference import reference_pipeline

    pipe = reference_pipeline(package).pipe
    tensors = {name: torch.from_numpy(value) for name, value in feeds.items()}
    with torch.inference_mode(), flop_counter() as counter:
        if component == "unet":
            pipe.unet(tensors["sample"], tensors["timestep"], tensors["encoder_hidden_states"])
        else:
            pipe.vae.decode(tensors["latent_sample"])
    totals: dict[str, float] = defaultdict(float)
    for op, flops in counter.get_flop_counts().get("Global", {}).items():
        name = str(op).removeprefix("aten.").split(".")[0]
        kind = next((k for k, names in TORCH_KINDS.items() if any(name.startswith(n) for n in names)), "uncounted")
        totals[kind] += float(flops)
    return dict(totals)


def profile_calls(package: ModelPackage, component: str, threads: int | None, feeds: dict[str, np.ndarray],
                  repeats: int) -> dict[str, Any]:
    """Per-node times of ``repeats`` calls after one warm-up, of the engine the runtime opens for ``component`` (same
    graph, session and run options): op type -> median seconds per call, plus the calls' wall times (taken with the
    profiler on, which adds a little to each)."""
    from diffship.engines.backend import OpenRequest, open_engines
    from diffship.engines.ort import OrtEngine, OrtOptions

    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    with tempfile.TemporaryDirectory() as folder:
        options = OrtOptions(threads=threads, device="cpu", profile_prefix=str(Path(folder) / component))
        engine = open_engines(package, [component], "ort", OpenRequest(precision="fp32", options=options))[0][component]
        assert isinstance(engine, OrtEngine)
        try:
            walls = []
            for _ in range(repeats + 1):
                tick = time.perf_counter()
                engine(feeds)
                walls.append(time.perf_counter() - tick)
            events = json.loads(Path(engine.session.end_profiling()).read_text())
        finally:
            engine.close()
    return {"graph": str(engine.path), "call_median_s": statistics.median(walls[1:]), "call_s": walls[1:],
            "ops": node_seconds(events, repeats)}


def node_seconds(events: list[dict[str, Any]], repeats: int) -> dict[str, dict[str, float]]:
    """From ONNX Runtime's profile events: op type -> median seconds per call over the calls after the first
    (the warm-up), and the number of nodes of that type. Each node event is given to the ``model_run`` it falls in."""
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    if len(runs) != repeats + 1:
        raise RuntimeError(f"expected {repeats + 1} model_run events in ONNX Runtime's profile, found {len(runs)}")
    per_run: list[dict[str, float]] = [defaultdict(float) for _ in runs]
    counts: dict[str, int] = defaultdict(int)
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        index = next((i for i, (start, end) in enumerate(runs) if start <= event["ts"] <= end), None)
        if index is None or index == 0:  # outside any call, or the warm-up
            continue
        op_type = event["args"]["op_name"]
        per_run[index][op_type] += event["dur"] / 1e6
        if index == 1:
            counts[op_type] += 1
    timed = per_run[1:]
    return {op: {"median_s": statistics.median(run.get(op, 0.0) for run in timed), "nodes": counts[op]}
            for op in sorted({op for run in timed for op in run})}


def summarise(profile: dict[str, Any], flops: dict[str, float], peak_gflops: float) -> list[dict[str, Any]]:
    """One row per kind: seconds, share of the call, FLOPs, achieved GFLOP/s, floor and time above it."""
    seconds: dict[str, float] = defaultdict(float)
    ops: dict[str, list[str]] = defaultdict(list)
    for op, figures in profile["ops"].items():
        seconds[kind_of(op)] += figures["median_s"]
        ops[kind_of(op)].append(op)
    call = profile["call_median_s"]
    seconds["outside nodes (scheduling, threads)"] = max(0.0, call - sum(seconds.values()))
    rows = []
    for kind, spent in sorted(seconds.items(), key=lambda item: -item[1]):
        work = flops.get(kind, 0.0)
        floor = work / (peak_gflops * 1e9)
        rows.append({"kind": kind, "ops": sorted(ops.get(kind, [])), "seconds": spent, "share": spent / call,
                     "gflop": work / 1e9, "gflops": work / 1e9 / spent if work and spent else None,
                     "floor_s": floor, "above_floor_s": spent - floor})
    return rows


COMPONENTS = ("unet", "vae_decoder")


def component_feeds(package: ModelPackage, component: str, latent: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random inputs of one call: a guided UNet step (batch 2) or one image's decode."""
    constants = package.constants
    if component == "vae_decoder":
        return {"latent_sample": rng.standard_normal((1, constants.latent_channels, latent, latent)).astype(np.float32)}
    return {"sample": rng.standard_normal((2, constants.latent_channels, latent, latent)).astype(np.float32),
            "timestep": np.full((2,), 500.0, np.float32),
            "encoder_hidden_states": rng.standard_normal(
                (2, constants.text_max_length, constants.unet_text_size)).astype(np.float32)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", required=True, type=Path)
    parser.add_argument("--component", choices=COMPONENTS, default="unet")
    parser.add_argument("--latent", default="32,64", help="latent sizes, comma-separated (64 = 512x512 images)")
    parser.add_argument("--repeats", type=int, default=3, help="profiled calls after the warm-up (>= 1)")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--json", type=Path, default=Path("bench-out/op_profile.json"))
    arguments = parser.parse_args()
    if arguments.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {arguments.repeats}")

    from diffship.bench.flops import best_gemm_gflops
    from diffship.bench.machine import describe_machine
    from diffship.core.package import ModelPackage
    from diffship.runtime.tables import format_table

    package = ModelPackage.open(arguments.package)
    latents = [int(size) for size in arguments.latent.split(",")]
    component = arguments.component
    rng = np.random.default_rng(0)
    all_feeds = {size: component_feeds(package, component, size, rng) for size in latents}
    flops = {size: flops_by_kind(package, component, feeds) for size, feeds in all_feeds.items()}
    peaks = best_gemm_gflops(arguments.threads)
    peak = max(peaks.values())
    print("best float32 GEMM: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items()))
    results = {}
    for size in latents:
        feeds = all_feeds[size]
        profile = profile_calls(package, component, arguments.threads, feeds, arguments.repeats)
        rows = summarise(profile, flops[size], peak)
        floor = sum(flops[size].values()) / (peak * 1e9)
        results[str(size)] = {"profile": profile, "kinds": rows, "flops": flops[size], "floor_s": floor,
                              "ratio_to_floor": profile["call_median_s"] / floor}
        batch = 2 if component == "unet" else 1
        print(f"\n{component} ({profile['graph']}), latent {size}x{size}, batch {batch}: "
              f"call {profile['call_median_s']:.3f} s (median of {arguments.repeats}), floor {floor:.3f} s ({sum(flops[size].values()) / 1e9:.1f} GFLOP at {peak:.0f} GFLOP/s): "
              f"{profile['call_median_s'] / floor:.2f}x")
        print(format_table(["kind", "s", "share", "GFLOP", "GFLOP/s", "floor s", "above floor s", "op types"],
                           [[r["kind"], f"{r['seconds']:.3f}", f"{r['share']:.0%}", f"{r['gflop']:.1f}",
                             f"{r['gflops']:.0f}" if r["gflops"] else "-", f"{r['floor_s']:.3f}",
                             f"{r['above_floor_s']:.3f}", " ".join(r["ops"][:6])] for r in rows]))
    arguments.json.parent.mkdir(parents=True, exist_ok=True)
    arguments.json.write_text(json.dumps({"machine": describe_machine(), "package": str(arguments.package),
                                          "component": component, "gemm_gflops": peaks,
                                          "repeats": arguments.repeats,
                                          "latents": results}, indent=2) + "\n")
    print(f"wrote {arguments.json}")


if __name__ == "__main__":
    main()
