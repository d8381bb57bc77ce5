"""Export-time proof that an ONNX file computes what its torch module computes (DESIGN.md section 5 bars).

Every export is checked by ``onnx.checker`` (full check) and then run in ONNX Runtime (CPU) against the float32
torch module on fresh random inputs at two or more shapes (different batch and spatial size).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from engines.metrics import OutputFigures, bar_description, compare, judge, random_feeds
from engines.specs import ComponentSpec, PipelineConstants, symbolic_dims


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
    rng = np.random.default_rng(seed)
    onnx_inputs = {i.name: i for i in session.get_inputs()}
    results, failures = [], []
    for dims in cases:
        inputs = random_feeds(spec, dims, rng, int_high)
        with torch.inference_mode():
            expected = reference(*(torch.from_numpy(inputs[t.name]) for t in spec.inputs))
        expected = expected if isinstance(expected, tuple) else (expected,)
        feeds = {name: x.astype(_numpy_dtype(onnx_inputs[name].type)) for name, x in inputs.items()}
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


def _numpy_dtype(ort_type: str) -> np.dtype[Any]:
    return np.dtype({"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64"}[ort_type])
