"""Parity arithmetic shared by export verification, engine builds and parity reports (no torch).

Bars (DESIGN.md section 5): fp32 ONNX vs torch: max |diff| <= 1e-4 x max |reference|. fp16 (ONNX or engine) vs
fp32: PSNR >= 35 dB for images, relative L2 <= 1e-2 for latents and embeddings.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from engines.specs import ComponentSpec

FP32_MAX_ABS_RELATIVE = 1e-4
FP16_MIN_PSNR_DB = 35.0
FP16_MAX_REL_L2 = 1e-2
IMAGE_OUTPUTS = {("vae_decoder", "sample")}
"""Outputs judged as images (PSNR over [-1, 1] mapped to [0, 1]); every other output by relative L2."""


@dataclass(frozen=True)
class OutputFigures:
    name: str
    shape: tuple[int, ...]
    max_abs_diff: float
    scale: float
    """max |reference|: what max_abs_diff is relative to."""
    rel_l2: float
    psnr_db: float | None


def random_feeds(
    spec: ComponentSpec, dims: Mapping[str, int], rng: np.random.Generator, int_high: int
) -> dict[str, np.ndarray]:
    """float32/int64 inputs: images in [-1, 1], timesteps in [0, 999), token ids in [0, int_high), else N(0, 1)."""
    feeds = {}
    for tensor in spec.inputs:
        shape = tensor.resolve(dims)
        if tensor.dtype.startswith("int"):
            feeds[tensor.name] = rng.integers(0, int_high, shape, dtype=np.int64)
        elif tensor.name == "timestep":
            feeds[tensor.name] = (rng.random(shape) * 999.0).astype(np.float32)
        elif "image_height" in tensor.shape:
            feeds[tensor.name] = (rng.random(shape) * 2.0 - 1.0).astype(np.float32)
        else:
            feeds[tensor.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def psnr(actual: np.ndarray, reference: np.ndarray, peak: float) -> float:
    mse = float(np.mean((actual.astype(np.float64) - reference.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(peak**2 / mse)


def compare(component: str, name: str, actual: np.ndarray, reference: np.ndarray) -> OutputFigures:
    actual64 = actual.astype(np.float64)
    reference64 = reference.astype(np.float64)
    diff = actual64 - reference64
    norm = float(np.linalg.norm(reference64))
    image_psnr = None
    if (component, name) in IMAGE_OUTPUTS:
        image_psnr = psnr(np.clip(actual64 / 2 + 0.5, 0, 1), np.clip(reference64 / 2 + 0.5, 0, 1), 1.0)
    return OutputFigures(
        name=name,
        shape=tuple(reference.shape),
        max_abs_diff=float(np.max(np.abs(diff))) if diff.size else 0.0,
        scale=float(np.max(np.abs(reference64))) if reference64.size else 0.0,
        rel_l2=float(np.linalg.norm(diff) / norm) if norm else 0.0,
        psnr_db=image_psnr,
    )


def judge(component: str, dtype: str, figures: OutputFigures) -> str | None:
    """Why ``figures`` miss the bar for ``dtype`` (``fp32`` or ``fp16``), or None."""
    if not all(math.isfinite(v) for v in (figures.max_abs_diff, figures.rel_l2)):
        return f"{component}.{figures.name}: non-finite output"
    if dtype == "fp32":
        limit = FP32_MAX_ABS_RELATIVE * figures.scale
        if figures.max_abs_diff > limit:
            return (
                f"{component}.{figures.name}: max abs diff {figures.max_abs_diff:.3e} > {limit:.3e} "
                f"({FP32_MAX_ABS_RELATIVE:g} x {figures.scale:.3g})"
            )
        return None
    if figures.psnr_db is not None:
        if figures.psnr_db < FP16_MIN_PSNR_DB:
            return f"{component}.{figures.name}: PSNR {figures.psnr_db:.2f} dB < {FP16_MIN_PSNR_DB} dB"
        return None
    if figures.rel_l2 > FP16_MAX_REL_L2:
        return f"{component}.{figures.name}: relative L2 {figures.rel_l2:.3e} > {FP16_MAX_REL_L2}"
    return None


def bar_description(dtype: str) -> str:
    if dtype == "fp32":
        return f"max abs diff <= {FP32_MAX_ABS_RELATIVE:g} x max|reference|"
    return f"PSNR >= {FP16_MIN_PSNR_DB:g} dB (images), rel L2 <= {FP16_MAX_REL_L2:g} (other outputs) vs fp32"
