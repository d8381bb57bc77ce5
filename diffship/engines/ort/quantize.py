"""``build-ort --precision int8`` (build time): static int8 quantization of the UNet for ONNX Runtime's CPU provider.

What is quantized: the convolutions and matrix products with constant weights on the UNet's spatial stream (every node
downstream of the ``sample`` input), weights int8 per output channel, activations uint8 with a scale and zero point
calibrated (min/max) on UNet inputs recorded from the package's own denoising runs. Left in float: the first and last
convolutions (the latent's own scale goes in and the predicted noise comes out there), the time embedding and the
text projections (they never see ``sample``; small, and their error would reach every block), attention's
score and value products (activations on both sides; fused into ``MultiHeadAttention`` first anyway).

The format is QDQ (QuantizeLinear/DequantizeLinear pairs around float operators), which ONNX Runtime fuses into integer
kernels when the session is optimised. ``reduce_range`` keeps weights in 7 bits: without VNNI, x86's u8 x s8 multiply
(``vpmaddubsw``) saturates its 16-bit sums on full-range weights; with VNNI it costs a little accuracy and no speed.
Measured on the full-size SD 1.5 UNet on an AVX2 CPU without VNNI: 1.7x faster than the fp32 build-ort graph at 32x32
latents (BENCHMARKS.md, "int8").
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from diffship.engines.ort.targets import cpu_flags

log = logging.getLogger(__name__)

QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")
"""CPU flags (``/proc/cpuinfo``) of the dot-product instructions that make int8 convolutions pay the most."""


def cpu_has_int8_dot_product() -> bool:
    return bool(cpu_flags() & set(VNNI_FLAGS))


def nodes_to_quantize(model: Any, spatial_input: str = "sample") -> tuple[list[str], dict[str, int]]:
    """The names of the nodes to quantize (see the module docstring), and how many of each kind were left out."""
    graph = model.graph
    constants = {t.name for t in graph.initializer}
    producer = {output: node for node in graph.node for output in node.output}

    def constant(tensor: str) -> bool:
        node = producer.get(tensor)
        if tensor in constants:
            return True
        return node is not None and (node.op_type == "Constant" or (
            node.op_type in ("Transpose", "Reshape", "Cast", "Identity") and constant(node.input[0])))

    spatial = {spatial_input}
    for node in graph.node:  # ONNX graphs are stored in topological order
        if any(name in spatial for name in node.input):
            spatial.update(node.output)
    candidates = [n for n in graph.node if n.op_type in QUANTIZED_OPS]
    convolutions = [n for n in candidates if n.op_type == "Conv" and any(i in spatial for i in n.input)]
    ends = {convolutions[0].name, convolutions[-1].name} if convolutions else set()
    chosen: list[str] = []
    left_out = {"first_and_last_convolution": 0, "no_spatial_input": 0, "no_constant_weight": 0}
    for node in candidates:
        if node.name in ends:
            left_out["first_and_last_convolution"] += 1
        elif not any(name in spatial for name in node.input[:1]):
            left_out["no_spatial_input"] += 1
        elif len(node.input) < 2 or not constant(node.input[1]):
            left_out["no_constant_weight"] += 1
        else:
            chosen.append(node.name)
    return chosen, left_out


def quantize_unet(source: Path, out: Path, calibration: Iterable[Mapping[str, np.ndarray]]) -> dict[str, Any]:
    """Quantize the float UNet graph ``source`` into ``out`` (QDQ, external weights beside it); returns a report."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    model = onnx.load(str(source), load_external_data=False)
    # Every node needs a name for nodes_to_quantize; the exporters name theirs, hand-edited graphs may not.
    unnamed = [node for node in model.graph.node if not node.name]
    if unnamed:
        raise ValueError(f"{source}: {len(unnamed)} nodes have no name; int8 selection needs named nodes")
    chosen, left_out = nodes_to_quantize(model)
    del model
    if not chosen:
        raise ValueError(f"{source}: no convolution or matrix product on the spatial stream to quantize")
    feeds = list(calibration)
    if not feeds:
        raise ValueError("int8 calibration needs at least one recorded UNet input")

    class _Feeds(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            found = next(self._feeds, None)
            return None if found is None else dict(found)

    log.info("int8: quantizing %d nodes of %s on %d calibration inputs", len(chosen), source.name, len(feeds))
    quantize_static(
        str(source), str(out), _Feeds(), quant_format=QuantFormat.QDQ, op_types_to_quantize=list(QUANTIZED_OPS),
        per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        nodes_to_quantize=chosen, use_external_data_format=True, extra_options={"ActivationSymmetric": False},
    )
    return {"quantized_nodes": len(chosen), "left_in_float": left_out, "calibration_inputs": len(feeds),
            "weights": "int8 per channel, 7-bit range", "activations": "uint8, min/max calibrated"}
