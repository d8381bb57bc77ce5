"""The arithmetic floor of a UNet call on this machine: FLOPs counted by torch, over a measured GEMM peak.

    python -m diffship.bench.flops --package packages/sd15-random --latent 64 [--batch 2]

FLOPs: torch.utils.flop_counter over diffusers' UNet on the package's weights at the given shape (convolutions,
matrix products and attention; elementwise work and normalisations are not counted, so the floor is optimistic).
torch's counter has no formula for the CPU's fused attention (``_scaled_dot_product_flash_attention_for_cpu``) and
counts it as zero; ``flop_counter`` gives it the same formula as the GPU kernels (2026-11-24: without it the SD 1.5
UNet's count at 64x64 latents missed all 252 GFLOP of its attention, 16% of the call's 1.61 TFLOP).
Peak: the best of ONNX Runtime's (MLAS) and torch's float32 GEMM, square sizes 2,048 and 3,072, on this machine's
threads. It is a rate of reference, not a bound: a well-shaped convolution can run a little faster.
The floor is FLOPs / peak; BENCHMARKS.md quotes the UNet's measured time against it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from diffship.core.package import ModelPackage


def flop_counter() -> Any:
    """torch's FlopCounterMode, with the CPU's fused attention counted like the GPU's (2 matrix products)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_attention(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any) -> int:
        return int(sdpa_flop_count(query_shape, key_shape, value_shape))

    fused = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    return FlopCounterMode(display=False, custom_mapping={fused: cpu_attention} if fused is not None else None)


def count_unet_flops(package: ModelPackage, batch: int, latent: int) -> float:
    import torch

    from diffship.bench.reference import reference_pipeline

    constants = package.constants
    unet = reference_pipeline(package).pipe.unet
    sample = torch.randn(batch, constants.latent_channels, latent, latent)
    timestep = torch.full((batch,), 500.0)
    hidden = torch.randn(batch, constants.text_max_length, constants.unet_text_size)
    with torch.inference_mode(), flop_counter() as counter:
        unet(sample, timestep, hidden)
    return float(counter.get_total_flops())


def gemm_peak(size: int = 3072, repeats: int = 10, threads: int | None = None) -> float:
    """Best float32 GFLOP/s of an N x N x N MatMul in ONNX Runtime (CPU)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [size, size]) for n in ("a", "b")]
    output = helper.make_tensor_value_info("c", TensorProto.FLOAT, [size, size])
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm", inputs, [output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {"a": rng.standard_normal((size, size)).astype(np.float32),
             "b": rng.standard_normal((size, size)).astype(np.float32)}
    session.run(None, feeds)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feeds)
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best / 1e9


def best_gemm_gflops(threads: int | None, sizes: tuple[int, ...] = (2048, 3072)) -> dict[str, float]:
    """The best float32 GEMM rate (GFLOP/s) of ONNX Runtime (MLAS) and of torch on this machine, square ``sizes``."""
    import torch

    rates = {"onnxruntime": max(gemm_peak(size, threads=threads) for size in sizes)}
    if threads:
        torch.set_num_threads(threads)
    best = 0.0
    for size in sizes:
        a, b = torch.randn(size, size), torch.randn(size, size)
        torch.mm(a, b)
        for _ in range(8):
            tick = time.perf_counter()
            torch.mm(a, b)
            best = max(best, 2.0 * size**3 / (time.perf_counter() - tick) / 1e9)
    rates["torch"] = best
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", required=True, type=Path)
    parser.add_argument("--latent", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int)
    arguments = parser.parse_args()
    from diffship.core.package import ModelPackage

    package = ModelPackage.open(arguments.package)
    flops = count_unet_flops(package, arguments.batch, arguments.latent)
    peaks = best_gemm_gflops(arguments.threads)
    peak = max(peaks.values())
    result: dict[str, Any] = {
        "batch": arguments.batch,
        "latent": arguments.latent,
        "unet_tflop": flops / 1e12,
        "gemm_peak_gflops": peak,
        "gemm_gflops": peaks,
        "floor_seconds": flops / (peak * 1e9),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
