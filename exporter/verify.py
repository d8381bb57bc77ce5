"""Export-time proof that an ONNX file computes what its torch module computes (DESIGN.md section 5 bars).

Every export is checked by ``onnx.checker`` (full check) and then run in ONNX Runtime (CPU) against the float32
torch module on fresh random inputs at two or more shapes (different batch and spatial size).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from engines.specs import ComponentSpec, PipelineConstants, symbolic_dims

FP32_MAX_ABS_RELATIVE = 1e-4
"""fp32: max |onnx - torch| <= 1e-4 x output scale, the scale being max |torch output|."""
FP16_MIN_PSNR_DB = 35.0
FP16_MAX_REL_L2 = 1e-2
IMAGE_OUTPUTS = {("vae_decoder", "sample")}
"""Outputs judged as images (PSNR) in fp16; every other output is judged by relative L2."""


class VerificationError(Exception):
    """An exported component misses the parity bars."""


@dataclass(frozen=True)
class OutputFigures:
    name: str
    shape: tuple[int, ...]
    max_abs_diff: float
    scale: float
    rel_l2: float
    psnr_db: float | None


@dataclass(frozen=True)
class CaseResult:
    dims: Mapping[str, int]
    outputs: tuple[OutputFigures, ...]


@dataclass(frozen=True)
class Verification:
    component: str
    dtype: str
    cases: tuple[CaseResult, ...]
    failures: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def bar(self) -> str:
        if self.dtype == "fp32":
            return f"max abs diff <= {FP32_MAX_ABS_RELATIVE:g} x max|torch|"
        return f"PSNR >= {FP16_MIN_PSNR_DB:g} dB (images), rel L2 <= {FP16_MAX_REL_L2:g} (other outputs) vs torch fp32"

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
        text = f"max abs diff {worst['max_abs_diff']:.2e} ({worst['max_rel_abs_diff']:.1e} of scale), rel L2 {worst['rel_l2']:.2e}"
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


def check_onnx(path: Path) -> None:
    """``onnx.checker`` with shape inference; given a path so that models with external data work."""
    onnx.checker.check_model(str(path), full_check=True)


def verification_dims(constants: PipelineConstants) -> list[dict[str, int]]:
    """Two request shapes that differ in batch and in (non-square) spatial size."""
    multiple = constants.spatial_multiple
    return [
        symbolic_dims(1, multiple, multiple, constants.vae_scale_factor),
        symbolic_dims(3, 2 * multiple, 3 * multiple, constants.vae_scale_factor),
    ]


def random_inputs(
    spec: ComponentSpec, dims: Mapping[str, int], generator: torch.Generator, int_high: int
) -> tuple[torch.Tensor, ...]:
    """float32/int64 inputs for the torch reference; images in [-1, 1], timesteps in [0, 1000), ids in the vocab."""
    tensors = []
    for tensor in spec.inputs:
        shape = tensor.resolve(dims)
        if tensor.dtype.startswith("int"):
            tensors.append(torch.randint(0, int_high, shape, generator=generator, dtype=torch.int64))
        elif tensor.name == "timestep":
            tensors.append(torch.rand(shape, generator=generator) * 999.0)
        elif "image_height" in tensor.shape:
            tensors.append(torch.rand(shape, generator=generator) * 2.0 - 1.0)
        else:
            tensors.append(torch.randn(shape, generator=generator))
    return tuple(tensors)


def compare(component: str, name: str, actual: np.ndarray, reference: np.ndarray) -> OutputFigures:
    actual64 = actual.astype(np.float64)
    reference64 = reference.astype(np.float64)
    diff = actual64 - reference64
    norm = float(np.linalg.norm(reference64))
    psnr = None
    if (component, name) in IMAGE_OUTPUTS:
        mse = float(np.mean((np.clip(actual64 / 2 + 0.5, 0, 1) - np.clip(reference64 / 2 + 0.5, 0, 1)) ** 2))
        psnr = math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)
    return OutputFigures(
        name=name,
        shape=tuple(reference.shape),
        max_abs_diff=float(np.max(np.abs(diff))) if diff.size else 0.0,
        scale=float(np.max(np.abs(reference64))) if reference64.size else 0.0,
        rel_l2=float(np.linalg.norm(diff) / norm) if norm else 0.0,
        psnr_db=psnr,
    )


def judge(component: str, dtype: str, figures: OutputFigures) -> str | None:
    """Why ``figures`` miss the bar for ``dtype``, or None."""
    if not all(math.isfinite(v) for v in (figures.max_abs_diff, figures.rel_l2)):
        return f"{component}.{figures.name}: non-finite output"
    if dtype == "fp32":
        limit = FP32_MAX_ABS_RELATIVE * figures.scale
        if figures.max_abs_diff > limit:
            return f"{component}.{figures.name}: max abs diff {figures.max_abs_diff:.3e} > {limit:.3e} (1e-4 x {figures.scale:.3g})"
        return None
    if figures.psnr_db is not None:
        if figures.psnr_db < FP16_MIN_PSNR_DB:
            return f"{component}.{figures.name}: PSNR {figures.psnr_db:.2f} dB < {FP16_MIN_PSNR_DB} dB"
        return None
    if figures.rel_l2 > FP16_MAX_REL_L2:
        return f"{component}.{figures.name}: relative L2 {figures.rel_l2:.3e} > {FP16_MAX_REL_L2}"
    return None


def verify_component(
    onnx_path: Path,
    reference: torch.nn.Module,
    spec: ComponentSpec,
    dtype: str,
    cases: Sequence[Mapping[str, int]],
    int_high: int,
    seed: int = 1234,
) -> Verification:
    """Run the ONNX file in ONNX Runtime (CPU) and the float32 torch module on the same random inputs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed)
    onnx_inputs = {i.name: i for i in session.get_inputs()}
    results, failures = [], []
    for dims in cases:
        inputs = random_inputs(spec, dims, generator, int_high)
        with torch.inference_mode():
            expected = reference(*inputs)
        expected = expected if isinstance(expected, tuple) else (expected,)
        feeds = {
            t.name: x.numpy().astype(_numpy_dtype(onnx_inputs[t.name].type))
            for t, x in zip(spec.inputs, inputs, strict=True)
        }
        actual = session.run([t.name for t in spec.outputs], feeds)
        figures = tuple(
            compare(spec.name, t.name, np.asarray(a), e.float().numpy())
            for t, a, e in zip(spec.outputs, actual, expected, strict=True)
        )
        for f in figures:
            if (reason := judge(spec.name, dtype, f)) is not None:
                failures.append(f"{reason} at {dict(dims)}")
        results.append(CaseResult(dims=dict(dims), outputs=figures))
    return Verification(spec.name, dtype, tuple(results), tuple(failures))


def _numpy_dtype(ort_type: str) -> type[np.generic]:
    return {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}[ort_type]
