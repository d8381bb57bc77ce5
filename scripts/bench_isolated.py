"""Latency against diffusers when the two cannot share one process's memory (full-size SDXL in fp32 on a 24 GB machine).

    python scripts/bench_isolated.py --package packages/sdxl-random --size 512 --steps 1,4 --guidance 0,5 \
        --rounds 2 --json bench-out/sdxl-isolated.json

Each round starts one fresh process per contender, diffusers and diffship alternating: it loads the model (timed),
makes one warm-up image, then one image per (steps, guidance) case with the same injected latents, and reports its
times and peak memory. ``cli.py bench`` interleaves calls inside one process instead; use it wherever both fit.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PROMPT = "a red fox in the snow, photograph"
CONTENDERS = ("diffusers", "diffship")


def _cases(arguments: argparse.Namespace) -> list[tuple[int, float]]:
    return [(int(s), float(g)) for s in arguments.steps.split(",") for g in arguments.guidance.split(",")]


def _child(arguments: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from diffship.core.package import ModelPackage
    from diffship.runtime.timing import peak_rss_bytes

    package = ModelPackage.open(arguments.package)
    factor = package.constants.vae_scale_factor
    latents = np.random.default_rng(0).standard_normal(
        (1, package.constants.latent_channels, arguments.size // factor, arguments.size // factor)).astype(np.float32)
    tick = time.perf_counter()
    if arguments.contender == "diffship":
        from diffship.runtime import Pipeline

        pipe = Pipeline.from_package(arguments.package, backend="ort", device="cpu")

        def generate(steps: int, guidance: float) -> None:
            pipe(PROMPT, num_inference_steps=steps, guidance_scale=guidance, height=arguments.size,
                 width=arguments.size, latents=latents, seed=0)
    else:
        import torch

        from diffship.bench.reference import reference_pipeline

        diffusers_pipe = reference_pipeline(package).pipe

        def generate(steps: int, guidance: float) -> None:
            with torch.inference_mode():
                diffusers_pipe(PROMPT, num_inference_steps=steps, guidance_scale=guidance, height=arguments.size,
                               width=arguments.size, latents=torch.from_numpy(latents), output_type="np")
    loaded = time.perf_counter() - tick
    tick = time.perf_counter()
    generate(1, 0.0)  # warm-up: first-call allocations and kernel choices; with the load, the cold start
    first_image = time.perf_counter() - tick
    seconds = {}
    for steps, guidance in _cases(arguments):
        tick = time.perf_counter()
        generate(steps, guidance)
        seconds[f"{steps}:{guidance:g}"] = time.perf_counter() - tick
    return {"load_s": loaded, "first_image_s": first_image, "seconds": seconds, "peak_rss_bytes": peak_rss_bytes()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", required=True, type=Path)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", default="1,4", help="comma-separated step counts")
    parser.add_argument("--guidance", default="0,5", help="comma-separated guidance scales")
    parser.add_argument("--rounds", type=int, default=2, help="fresh processes per contender")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--contender", choices=CONTENDERS, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.contender:
        print(json.dumps(_child(arguments)))
        return
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in CONTENDERS}
    for round_index in range(arguments.rounds):
        for name in CONTENDERS:
            print(f"round {round_index + 1}/{arguments.rounds}: {name} (fresh process)", file=sys.stderr, flush=True)
            command = [sys.executable, __file__, "--package", str(arguments.package), "--size", str(arguments.size),
                       "--steps", arguments.steps, "--guidance", arguments.guidance, "--contender", name]
            done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
            if done.returncode != 0:
                raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    rows = []
    for steps, guidance in _cases(arguments):
        key = f"{steps}:{guidance:g}"
        medians = {name: statistics.median(run["seconds"][key] for run in runs[name]) for name in CONTENDERS}
        rows.append({"steps": steps, "guidance": guidance, **{f"{n}_s": medians[n] for n in CONTENDERS},
                     "ratio": medians["diffship"] / medians["diffusers"]})
    print(f"{'steps':>5}  {'guidance':>8}  {'diffusers s':>11}  {'diffship s':>10}  {'ratio':>6}")
    for row in rows:
        print(f"{row['steps']:>5}  {row['guidance']:>8g}  {row['diffusers_s']:>11.2f}  {row['diffship_s']:>10.2f}  "
              f"{row['ratio']:>5.2f}x")
    for name in CONTENDERS:
        loads = [run["load_s"] for run in runs[name]]
        colds = [run["load_s"] + run["first_image_s"] for run in runs[name]]
        peak = max(run["peak_rss_bytes"] or 0 for run in runs[name]) / 2**30
        print(f"{name}: load {statistics.median(loads):.1f} s, cold start to the first image (1 step, guidance 0) "
              f"{statistics.median(colds):.1f} s (medians of {len(loads)}), peak RSS {peak:.2f} GiB")
    if arguments.json:
        arguments.json.parent.mkdir(parents=True, exist_ok=True)
        arguments.json.write_text(json.dumps({"arguments": {k: str(v) for k, v in vars(arguments).items()},
                                              "rows": rows, "runs": runs}, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
