"""Export-time proof that an ONNX file computes what its torch module computes (docs/design.md, "Parity bars").

Every export is checked by ``onnx.checker`` (full check) and then run in ONNX Runtime (CPU) against the float32
torch module on fresh random inputs at two shapes (different batch and spatial size), through the same verification
loop every other check uses (``core.metrics.verify_outputs``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch

from diffship.core.metrics import Verification, verify_outputs
from diffship.core.specs import ComponentSpec
from diffship.engines.onnx.session import open_session, run_session
from diffship.exporter.onnx_export import STREAM_BYTES


def check_onnx(path: Path) -> None:
    """``onnx.checker`` with shape inference; given a path so that models with external data work."""
    onnx.checker.check_model(str(path), full_check=True)


def verify_component(
    onnx_path: Path,
    reference: torch.nn.Module,
    spec: ComponentSpec,
    dtype: str,
    cases: Sequence[Mapping[str, int]],
    int_high: int,
    seed: int = 1234,
) -> Verification:
    """Run the ONNX file in ONNX Runtime (CPU) and the float32 torch module on the same random inputs. A graph whose
    weights pass ``STREAM_BYTES`` is run unoptimised and without prepacking: its memory-mapped weights are then all
    ONNX Runtime holds of them, beside the torch module's own copy."""
    large = sum(f.stat().st_size for f in onnx_path.parent.glob(onnx_path.name + "*")) > STREAM_BYTES
    session = open_session(onnx_path, optimization="disable", config={"session.disable_prepacking": "1"}) if large \
        else open_session(onnx_path)

    def torch_outputs(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.inference_mode():
            expected = reference(*(torch.from_numpy(feeds[t.name]) for t in spec.inputs))
        return [e.float().numpy() for e in (expected if isinstance(expected, tuple) else (expected,))]

    return verify_outputs(spec, dtype, cases, torch_outputs, lambda feeds: run_session(session, feeds), int_high, seed)
