"""Parity arithmetic shared by export verification, engine builds and parity reports, and the one verification loop.

Bars (docs/design.md, "Parity bars"): fp32 ONNX vs torch: max |diff| <= 1e-4 x max |reference|. fp16 (ONNX or
engine) vs fp32: PSNR >= 35 dB for images, relative L2 <= 1e-2 for latents and embeddings. int8 (the quantized UNet
of ``build-ort --precision int8``) vs fp32: relative L2 <= 0.15 per call; its pictures vs fp32's: PSNR >= 25 dB.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from diffship.core.specs import ComponentSpec, PipelineConstants, symbolic_dims

FP32_MAX_ABS_RELATIVE = 1e-4
FP16_MIN_PSNR_DB = 35.0
FP16_MAX_REL_L2 = 1e-2
INT8_MAX_REL_L2 = 0.15
"""Per UNet call on random inputs. Measured on real trajectories: 0.04-0.08 (full-size SD 1.5), BENCHMARKS.md."""
INT8_MIN_PSNR_DB = 25.0
"""int8 pictures against the fp32 engines' pictures, same seed (end to end)."""
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


SSIM_SIGMA = 1.5
SSIM_RADIUS = 5
"""Wang et al. (2004)'s SSIM: an 11-tap Gaussian window of sigma 1.5, K1 = 0.01, K2 = 0.03."""
_SSIM_TAPS = np.exp(-0.5 * (np.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=np.float64) / SSIM_SIGMA) ** 2)
_SSIM_TAPS /= _SSIM_TAPS.sum()


def _gaussian_blur(planes: np.ndarray) -> np.ndarray:
    """Separable Gaussian blur of the last two axes, edges mirrored (scipy.ndimage's ``reflect``), as in
    scikit-image's ``structural_similarity`` with ``gaussian_weights=True`` (numpy only: core needs no scipy)."""
    for axis in (-2, -1):
        pad = [(0, 0)] * planes.ndim
        pad[axis] = (SSIM_RADIUS, SSIM_RADIUS)
        padded = np.pad(planes, pad, mode="symmetric")
        length = planes.shape[axis]
        planes = sum(tap * np.take(padded, range(k, k + length), axis=axis) for k, tap in enumerate(_SSIM_TAPS))
    return planes


def ssim(actual: np.ndarray, reference: np.ndarray, peak: float) -> float:
    """Mean structural similarity of images (HxW, HxWxC or NxHxWxC; channels and images averaged), Wang et al.'s
    definition: PSNR counts a one-pixel shift of an edge as a large error, SSIM weighs what a viewer would notice.
    Border pixels within the window's radius are left out of the mean, as scikit-image does."""
    if actual.shape != reference.shape:
        raise ValueError(f"ssim: shapes differ: {actual.shape} vs {reference.shape}")
    if actual.ndim == 2:
        actual, reference = actual[None, :, :, None], reference[None, :, :, None]
    elif actual.ndim == 3:
        actual, reference = actual[None], reference[None]
    if min(actual.shape[1:3]) <= 2 * SSIM_RADIUS:
        raise ValueError(f"ssim: images of {actual.shape[1]}x{actual.shape[2]} are smaller than the 11x11 window")
    # N, H, W, C -> N, C, H, W: the blur runs over the last two axes.
    x = np.moveaxis(actual.astype(np.float64), -1, 1)
    y = np.moveaxis(reference.astype(np.float64), -1, 1)
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    mu_x, mu_y = _gaussian_blur(x), _gaussian_blur(y)
    var_x = _gaussian_blur(x * x) - mu_x**2
    var_y = _gaussian_blur(y * y) - mu_y**2
    cov = _gaussian_blur(x * y) - mu_x * mu_y
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    inner = index[..., SSIM_RADIUS:-SSIM_RADIUS, SSIM_RADIUS:-SSIM_RADIUS]
    return float(inner.mean())


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
    """Why ``figures`` miss the bar for ``dtype`` (``fp32``, ``fp16`` or ``int8``), or None."""
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
    if dtype == "int8":
        if figures.rel_l2 > INT8_MAX_REL_L2:
            return f"{component}.{figures.name}: relative L2 {figures.rel_l2:.3e} > {INT8_MAX_REL_L2} (int8 bar)"
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
    if dtype == "int8":
        return f"rel L2 <= {INT8_MAX_REL_L2:g} vs fp32"
    return f"PSNR >= {FP16_MIN_PSNR_DB:g} dB (images), rel L2 <= {FP16_MAX_REL_L2:g} (other outputs) vs fp32"


# ---------------------------------------------------------------------------------------------- the verification loop

RunOutputs = Callable[[dict[str, np.ndarray]], Sequence[np.ndarray]]
"""Float32/int64 feeds in (as ``random_feeds`` makes them), the component's outputs out, in spec order."""


@dataclass(frozen=True)
class CaseResult:
    dims: Mapping[str, int]
    outputs: tuple[OutputFigures, ...]


@dataclass(frozen=True)
class Verification:
    """A candidate's outputs against a reference's on the same random inputs, case by case, judged at one bar."""

    component: str
    dtype: str
    cases: tuple[CaseResult, ...]
    failures: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def bar(self) -> str:
        return bar_description(self.dtype)

    def worst(self) -> dict[str, float]:
        figures = [o for case in self.cases for o in case.outputs]
        worst = {
            "max_abs_diff": max(o.max_abs_diff for o in figures),
            "max_rel_abs_diff": max(o.max_abs_diff / o.scale if o.scale else 0.0 for o in figures),
            "rel_l2": max(o.rel_l2 for o in figures),
        }
        psnrs = [o.psnr_db for o in figures if o.psnr_db is not None]
        if psnrs:
            worst["psnr_db"] = min(psnrs)
        return worst

    def describe(self) -> str:
        worst = self.worst()
        text = (f"max abs diff {worst['max_abs_diff']:.2e} ({worst['max_rel_abs_diff']:.1e} of scale), "
                f"rel L2 {worst['rel_l2']:.2e}")
        if "psnr_db" in worst:
            text += f", PSNR {worst['psnr_db']:.1f} dB"
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "bar": self.bar,
            "passed": self.passed,
            "worst": self.worst(),
            "cases": [
                {"dims": dict(c.dims), "outputs": [asdict(o) | {"shape": list(o.shape)} for o in c.outputs]}
                for c in self.cases
            ],
        }


def verification_dims(constants: PipelineConstants) -> list[dict[str, int]]:
    """Two request shapes that differ in batch, (non-square) spatial size and prompt windows (1 and 2). Where any multiple of the VAE factor
    is accepted, the second is not a multiple of the UNet's down-sampling (odd latent sizes: 9 x 13)."""
    unit, factor = constants.spatial_multiple, constants.vae_scale_factor
    if unit == factor:
        first, second = (8 * unit, 8 * unit), (9 * unit, 13 * unit)
    else:  # packages exported before sizes became free: multiples of the UNet's down-sampling only
        first, second = (unit, unit), (2 * unit, 3 * unit)
    window = constants.text_max_length
    return [symbolic_dims(1, *first, factor, window), symbolic_dims(3, *second, factor, 2 * window)]


def verify_outputs(
    spec: ComponentSpec,
    dtype: str,
    cases: Sequence[Mapping[str, int]],
    reference: RunOutputs,
    candidate: RunOutputs,
    int_high: int,
    seed: int = 1234,
) -> Verification:
    """Run ``reference`` and ``candidate`` on the same random inputs at each case's shape; judge at ``dtype``'s bar.

    The one loop behind every check that one graph computes what another does: an export against its torch module,
    an fp16 conversion against fp32, a build-ort graph against the exported one.
    """
    rng = np.random.default_rng(seed)
    return verify_on_feeds(spec, dtype, [(dims, random_feeds(spec, dims, rng, int_high)) for dims in cases],
                           reference, candidate)


def verify_on_feeds(
    spec: ComponentSpec,
    dtype: str,
    cases: Sequence[tuple[Mapping[str, int], Mapping[str, np.ndarray]]],
    reference: RunOutputs,
    candidate: RunOutputs,
) -> Verification:
    """``verify_outputs`` on given inputs (each with the dims it is recorded under), such as a real run's."""
    results, failures = [], []
    for dims, feeds in cases:
        expected = reference(dict(feeds))
        actual = candidate(dict(feeds))
        figures = tuple(
            compare(spec.name, tensor.name, np.asarray(a, dtype=np.float32), np.asarray(e, dtype=np.float32))
            for tensor, a, e in zip(spec.outputs, actual, expected, strict=True)
        )
        failures += [f"{reason} at {dict(dims)}" for f in figures if (reason := judge(spec.name, dtype, f)) is not None]
        results.append(CaseResult(dims=dict(dims), outputs=figures))
    return Verification(spec.name, dtype, tuple(results), tuple(failures))
