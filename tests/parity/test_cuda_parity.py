"""End to end on an NVIDIA GPU: runtime.Pipeline on ONNX Runtime's CUDA provider against diffusers fp32 (CPU).

Same bars as on the CPU (docs in tests/parity/test_pipeline_parity.py): fp32 max pixel difference <= 2/255, fp16 PSNR
>= 30 dB. CUDA graphs must not change the picture: replayed graphs run the same kernels on the same buffers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("diffusers")

from diffship.core.package import ModelPackage  # noqa: E402
from diffship.engines.ort import cuda_available  # noqa: E402
from diffship.runtime import Pipeline  # noqa: E402
from tests.parity.test_pipeline_parity import (  # noqa: E402
    HEIGHT,
    NEGATIVES,
    PROMPTS,
    SEED,
    STEPS,
    WIDTH,
    psnr,
    run_diffusers,
    starting_latents,
)

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda_pipelines(packages: dict[str, Path]) -> dict[tuple[str, str, bool], Pipeline]:
    if not cuda_available():
        pytest.skip("onnxruntime-gpu is not installed (pip install 'diffship[ort-gpu]')")
    opened = {}
    for name, path in packages.items():
        for precision in ModelPackage.open(path).dtypes():
            for graphs in (False, True):
                opened[name, precision, graphs] = Pipeline.from_package(
                    path, backend="ort", precision=precision, device="cuda", cuda_graphs=graphs
                )
    yield opened
    for pipe in opened.values():
        pipe.close()


def generate(pipe: Pipeline, scheduler: str, guidance: float, negatives) -> np.ndarray:
    result = pipe(PROMPTS, negative_prompt=negatives, num_inference_steps=STEPS, guidance_scale=guidance,
                  scheduler=scheduler, height=HEIGHT, width=WIDTH, latents=starting_latents(), seed=SEED)
    return np.stack(result.images)


@pytest.mark.parametrize("scheduler", ["ddim", "euler_a", "dpmpp_2m", "unipc"])
@pytest.mark.parametrize("model", ["tiny", "tiny-v"])
def test_cuda_pipeline_fp32_matches_diffusers(model, scheduler, cuda_pipelines, reference_pipelines) -> None:
    pipe = cuda_pipelines[model, "fp32", False]
    assert pipe.engines["unet"].device == "cuda"
    actual = generate(pipe, scheduler, 7.5, NEGATIVES)
    expected = run_diffusers(reference_pipelines[model], scheduler, NEGATIVES, 7.5, starting_latents())
    worst = int(np.abs(actual.astype(int) - expected.astype(int)).max())
    assert worst <= 2, f"max pixel difference {worst}/255"


@pytest.mark.parametrize("scheduler", ["pndm", "euler_a", "dpmpp_2m_karras"])
@pytest.mark.parametrize("model", ["tiny"])  # the fixtures export fp16 for tiny only (tests/conftest.py)
def test_cuda_pipeline_fp16_psnr_against_diffusers_fp32(model, scheduler, cuda_pipelines, reference_pipelines) -> None:
    actual = generate(cuda_pipelines[model, "fp16", False], scheduler, 7.5, None)
    expected = run_diffusers(reference_pipelines[model], scheduler, None, 7.5, starting_latents())
    assert psnr(actual, expected) >= 30.0


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("guidance", [1.0, 7.5])
def test_cuda_graphs_pipeline_matches_plain_cuda(precision, guidance, cuda_pipelines) -> None:
    plain = generate(cuda_pipelines["tiny", precision, False], "euler_a", guidance, None)
    graphed_pipe = cuda_pipelines["tiny", precision, True]
    first = generate(graphed_pipe, "euler_a", guidance, None)
    replayed = generate(graphed_pipe, "euler_a", guidance, None)  # every engine call now replays a captured graph
    assert graphed_pipe.engines["unet"]._graphs, "no CUDA graph was captured"
    np.testing.assert_array_equal(first, replayed)
    # Static shapes let cuDNN pick other kernels than the dynamic session: equal up to rounding, not bit for bit.
    assert int(np.abs(first.astype(int) - plain.astype(int)).max()) <= 2
