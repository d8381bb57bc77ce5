"""End to end: runtime.Pipeline (ONNX Runtime, CPU) against diffusers' StableDiffusionPipeline on the same weights.

The reference is diffusers loading the tiny models' ``save_pretrained`` folders, driven by bench.reference (schedulers
swapped as users swap them); both sides get identical injected starting latents and, for the ancestral/LCM samplers,
identical per-step noise. Bars (docs/design.md, "Parity bars"): fp32
max pixel difference <= 2/255; fp16 PSNR >= 30 dB against diffusers fp32.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

diffusers = pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")

from diffship.bench.reference import Reference, run_reference  # noqa: E402
from diffship.core.package import ModelPackage  # noqa: E402
from diffship.runtime import Pipeline  # noqa: E402
from diffship.runtime.schedulers import SHORT_NAMES  # noqa: E402

PROMPTS = ["a red fox in the snow", "an astronaut riding a horse on the moon, highly detailed", "a bowl of ramen"]
NEGATIVES = ["blurry", "low quality, watermark", ""]
HEIGHT, WIDTH = 64, 128
STEPS = 6
"""Enough for every multistep scheduler's history; 1-50 steps are tests/runtime/test_scheduler_parity.py's. (Was 10:
cut for CI's time budget.)"""
SEED = 1234


@pytest.fixture(scope="module")
def our_pipelines(packages: dict[str, Path]) -> dict[tuple[str, str], Pipeline]:
    opened = {}
    for name, path in packages.items():
        for precision in ModelPackage.open(path).dtypes():
            opened[name, precision] = Pipeline.from_package(path, backend="ort", precision=precision, device="cpu")
    return opened


def run_diffusers(reference: Reference, scheduler: str, negatives, guidance: float, latents: np.ndarray) -> np.ndarray:
    seeds = [SEED + k for k in range(len(latents))]
    return np.stack(run_reference(reference, PROMPTS, latents, seeds, negatives, STEPS, guidance, scheduler))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def starting_latents() -> np.ndarray:
    return np.random.default_rng(99).standard_normal((len(PROMPTS), 4, HEIGHT // 8, WIDTH // 8)).astype(np.float32)


# Every scheduler guided with negative prompts; the guidance paths (unguided, no negative prompt) with two of them.
CASES = [(scheduler, 7.5, "negative") for scheduler in SHORT_NAMES] + [
    (scheduler, guidance, negatives) for scheduler in ("pndm", "euler_a")
    for guidance, negatives in ((1.0, "no-negative"), (1.0, "negative"), (7.5, "no-negative"))]


@pytest.mark.parametrize("scheduler,guidance,negatives", CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("model", ["tiny", "tiny-v"])
def test_pipeline_fp32_matches_diffusers(model, scheduler, guidance, negatives, our_pipelines, reference_pipelines) -> None:
    negatives = NEGATIVES if negatives == "negative" else None
    latents = starting_latents()
    ours = our_pipelines[model, "fp32"](
        PROMPTS, negative_prompt=negatives, num_inference_steps=STEPS, guidance_scale=guidance, scheduler=scheduler,
        height=HEIGHT, width=WIDTH, latents=latents, seed=SEED,
    )
    expected = run_diffusers(reference_pipelines[model], scheduler, negatives, guidance, latents)
    actual = np.stack(ours.images)
    assert actual.shape == expected.shape == (len(PROMPTS), HEIGHT, WIDTH, 3)
    worst = int(np.abs(actual.astype(int) - expected.astype(int)).max())
    assert worst <= 2, f"max pixel difference {worst}/255"


@pytest.mark.parametrize("scheduler,eta", [("ddim", 0.5), ("ddim", 1.0), ("tcd", 0.3)], ids=lambda v: str(v))
@pytest.mark.parametrize("model", ["tiny", "tiny-v"])
def test_pipeline_with_eta_matches_diffusers(model, scheduler, eta, our_pipelines, reference_pipelines) -> None:
    """eta > 0: DDIM and TCD inject fresh noise each step, drawn from each image's seed as diffusers' pipeline gets it."""
    latents = starting_latents()
    ours = our_pipelines[model, "fp32"](
        PROMPTS, negative_prompt=NEGATIVES, num_inference_steps=STEPS, scheduler=scheduler, height=HEIGHT,
        width=WIDTH, latents=latents, seed=SEED, eta=eta,
    )
    seeds = [SEED + k for k in range(len(latents))]
    expected = np.stack(run_reference(reference_pipelines[model], PROMPTS, latents, seeds, NEGATIVES, STEPS, 7.5,
                                      scheduler, eta=eta))
    worst = int(np.abs(np.stack(ours.images).astype(int) - expected.astype(int)).max())
    assert worst <= 2, f"max pixel difference {worst}/255"
    assert ours.parameters[0]["eta"] == eta


@pytest.mark.parametrize("scheduler", ["pndm", "euler_a", "dpmpp_2m_karras"])
@pytest.mark.parametrize("model", ["tiny"])  # the fixtures export fp16 for tiny only (tests/conftest.py)
def test_pipeline_fp16_onnx_psnr_against_diffusers_fp32(model, scheduler, our_pipelines, reference_pipelines) -> None:
    latents = starting_latents()
    ours = our_pipelines[model, "fp16"](
        PROMPTS, num_inference_steps=STEPS, scheduler=scheduler, height=HEIGHT, width=WIDTH, latents=latents, seed=SEED
    )
    expected = run_diffusers(reference_pipelines[model], scheduler, None, 7.5, latents)
    assert psnr(np.stack(ours.images), expected) >= 30.0
