"""Peak memory and time of a VAE decode at large sizes: diffship's decoder engine (ONNX Runtime, CPU) whole and in
tiles (runtime/vae_tiling.py), against diffusers' ``AutoencoderKL`` with ``enable_tiling``. The VAE is a preset's
architecture with seeded random weights (``exporter/configs/<preset>/vae.json``; memory and time do not depend on
the weights), exported once into a cache folder. Each case runs in a fresh process; once the model is loaded its
peak resident set size is reset (``/proc/self/clear_refs``), so ``peak`` is the highest the process reached while
decoding (model included) and ``decode`` what the decode added above the memory held before it.

    python -m diffship.bench.vae_tiles --child MODE FOLDER SIZE TILE   # one case; prints one JSON line
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diffship.bench.processes import absolute, run_module
from diffship.core.specs import ComponentSpec, TensorSpec

MODES = ("untiled", "tiled", "diffusers-tiled")
DECODER = ComponentSpec(
    "vae_decoder",
    inputs=(TensorSpec("latent_sample", "float32", ("batch", 4, "latent_height", "latent_width")),),
    outputs=(TensorSpec("sample", "float32", ("batch", 3, "image_height", "image_width")),),
)
CONFIGS = Path(__file__).resolve().parents[1] / "exporter" / "configs"


def prepare_vae(preset: str, folder: Path, seed: int = 0) -> Path:
    """``folder`` with the preset's VAE (seeded random weights) as diffusers' ``vae/`` and its decoder as ONNX;
    made once (``ready.json`` marks a finished folder)."""
    marker = folder / "ready.json"
    if marker.exists():
        return folder
    import torch
    from diffusers import AutoencoderKL

    from diffship.core.files import write_json_atomic
    from diffship.exporter.families.stable_diffusion import VaeDecoderBoundary
    from diffship.exporter.onnx_export import ExportOptions, export_component

    config = json.loads((CONFIGS / preset / "vae.json").read_text(encoding="utf-8"))
    torch.manual_seed(seed)
    vae = AutoencoderKL.from_config(config).eval()
    vae.save_pretrained(folder / "vae")
    multiples = {"batch": 1, "latent_height": 1, "latent_width": 1, "image_height": 8, "image_width": 8}
    with torch.inference_mode():
        export_component(VaeDecoderBoundary(vae).eval(), DECODER, (torch.randn(2, 4, 9, 13),), folder,
                         ExportOptions(), multiples, file_name="vae_decoder.onnx")
    write_json_atomic(marker, {"preset": preset, "seed": seed})
    return folder


def measure(folder: Path, sizes: Sequence[int], modes: Sequence[str], tile: int,
            progress: Callable[[str], None] = lambda line: None, timeout_s: float | None = None) -> dict[str, Any]:
    """Every (size, mode) case in its own process; a case that fails (out of memory) or runs past ``timeout_s`` is
    recorded as such."""
    cases: list[dict[str, Any]] = []
    for size in sizes:
        for mode in modes:
            progress(f"{mode} at {size}x{size} ...")
            refusal = _too_big(mode, size, tile)
            if refusal is not None:  # on a shared machine an out-of-memory kill may take a neighbour's process
                cases.append({"mode": mode, "size": size, "error": refusal})
                continue
            try:
                done = run_module("diffship.bench.vae_tiles", ["--child", mode, absolute(folder), str(size), str(tile)],
                                  timeout_s=timeout_s)
            except subprocess.TimeoutExpired:
                cases.append({"mode": mode, "size": size, "error": f"timed out after {timeout_s:g}s"})
                continue
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            if done.returncode != 0 or not lines:
                cases.append({"mode": mode, "size": size, "error": (done.stderr.strip().splitlines() or
                                                                     [f"exit status {done.returncode}"])[-1]})
            else:
                cases.append({"mode": mode, "size": size, **json.loads(lines[-1])})
            progress(f"  {cases[-1]}")
    return {"tile": tile, "cases": cases}


MARGIN = 2**30
"""Held back beyond a case's estimate (the model, the interpreter, the libraries)."""


def _too_big(mode: str, size: int, tile: int) -> str | None:
    """Why a case is not run (its estimate beyond this machine's available memory), or None."""
    from diffship.runtime.requests import DECODE_BYTES_PER_PIXEL, available_memory

    side = size if mode == "untiled" or size <= tile else tile
    needed = DECODE_BYTES_PER_PIXEL * side * side + 12 * size * size + MARGIN
    available = available_memory()
    if available is not None and needed > available:
        return f"not run: needs about {needed / 2**30:.1f} GiB, {available / 2**30:.1f} GiB available"
    return None


def format_table(result: dict[str, Any]) -> str:
    from diffship.runtime.tables import format_table as table

    rows = []
    for case in result["cases"]:
        if "error" in case:
            rows.append([f"{case['size']}", case["mode"], "-", "-", "-", f"failed: {case['error'][:60]}"])
        else:
            rows.append([f"{case['size']}", case["mode"], f"{case['peak_mb']:,.0f} MB", f"{case['decode_mb']:,.0f} MB",
                         f"{case['seconds']:.1f}s", f"{case['tiles']} tile(s)"])
    return table(["size (px)", "decode", "peak RSS", "added by decode", "time", ""], rows) + \
        f"\ntile {result['tile']} px (diffusers: tile_sample_min_size), overlap 0.25"


def _child(mode: str, folder: Path, size: int, tile: int) -> dict[str, Any]:
    latents = np.random.default_rng(0).standard_normal((1, 4, size // 8, size // 8), dtype=np.float32)
    decode, tiles = _decoder(mode, folder, tile, size)
    Path("/proc/self/clear_refs").write_text("5")  # the peak so far (imports, loading) is not the decode's
    loaded = _status_bytes("VmRSS")
    started = time.perf_counter()
    pixels = decode(latents)
    seconds = time.perf_counter() - started
    assert pixels.shape == (1, 3, size, size), pixels.shape
    peak = _status_bytes("VmHWM")
    return {"peak_mb": peak / 2**20, "decode_mb": (peak - loaded) / 2**20, "loaded_mb": loaded / 2**20,
            "seconds": seconds, "tiles": tiles}


def _decoder(mode: str, folder: Path, tile: int, size: int) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
    stride = int(tile / 8 * 0.75)
    count = len(range(0, size // 8, stride)) ** 2 if size > tile else 1
    if mode == "diffusers-tiled":
        import torch
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(str(folder / "vae")).eval()
        vae.enable_tiling()
        vae.tile_sample_min_size, vae.tile_latent_min_size = tile, tile // 8

        def run_torch(latents: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return vae.decode(torch.from_numpy(latents)).sample.numpy()

        return run_torch, count
    from diffship.engines.ort.engine import OrtEngine, OrtOptions
    from diffship.runtime.vae_tiling import tiled

    engine = OrtEngine(folder / "vae_decoder.onnx", DECODER, OrtOptions(device="cpu"))

    def run(latents: np.ndarray) -> np.ndarray:
        return engine({"latent_sample": latents})["sample"]

    if mode == "untiled":
        return run, 1
    return (lambda latents: tiled(run, latents, tile // 8, tile)), count


def _status_bytes(field: str) -> int:
    """A memory figure of this process from /proc/self/status (VmRSS: now; VmHWM: the peak since the reset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        print(json.dumps(_child(sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))))
    else:
        sys.exit(__doc__)
