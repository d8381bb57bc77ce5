"""End to end on a trained model: ``shapes`` (diffship/models/shapes) through runtime.Pipeline against diffusers.

Random weights leave the latents near noise the whole way; a trained UNet moves them to an image, so the samplers'
arithmetic meets the dynamics it was written for. The reference is rebuilt from the package's manifest
(``bench.reference.reference_pipeline``: the bundled folder, weights digest checked), with identical injected starting
latents and per-step noise. The VAE here down-samples 4x, not 8x (72 pixels is 18 latents, which the UNet halves twice unevenly). Bar: 2/255 (fp32).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

diffusers = pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")

from diffship.bench.reference import ImageDraws, Reference, reference_pipeline, run_reference, run_reference_image_task  # noqa: E402
from diffship.core.package import ModelPackage  # noqa: E402
from diffship.runtime import Pipeline  # noqa: E402
from diffship.runtime.schedulers import SHORT_NAMES  # noqa: E402

PROMPTS = ["a large red circle on a white background, center", "a small blue star, top left", "a green triangle"]
NEGATIVES = ["a black background", "", "a square"]
HEIGHT, WIDTH = 64, 72
STEPS = 12
SEED = 31


@pytest.fixture(scope="module")
def shapes_pipe(shapes_package: Path) -> Pipeline:
    return Pipeline.from_package(shapes_package, backend="ort", precision="fp32", device="cpu")


@pytest.fixture(scope="module")
def shapes_reference(shapes_package: Path) -> Reference:
    return reference_pipeline(ModelPackage.open(shapes_package))


def starting_latents(pipe: Pipeline, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    factor = pipe.constants.vae_scale_factor
    shape = (len(PROMPTS), pipe.constants.latent_channels, height // factor, width // factor)
    return np.random.default_rng(5).standard_normal(shape).astype(np.float32)


def worst_difference(actual: list[np.ndarray], expected: list[np.ndarray]) -> int:
    a, b = np.stack(actual), np.stack(expected)
    assert a.shape == b.shape, f"shape {a.shape} vs diffusers' {b.shape}"
    return int(np.abs(a.astype(int) - b.astype(int)).max())


SCHEDULERS = ("pndm", "ddim", "euler", "euler_a", "heun", "lms", "dpmpp_2m", "dpmpp_2m_sde_karras", "dpmpp_sde", "unipc",
              "lcm")
"""One of each kind (multistep, ancestral, second order, SDE, Karras, LCM): every name runs on tiny and tiny-v."""
assert set(SCHEDULERS) <= set(SHORT_NAMES)
CASES = [(scheduler, 4.0, "negative") for scheduler in SCHEDULERS] + [
    (scheduler, guidance, negatives) for scheduler in ("pndm", "euler_a")
    for guidance, negatives in ((1.0, "no-negative"), (7.5, "no-negative"))]


@pytest.mark.parametrize("scheduler,guidance,negatives", CASES, ids=lambda v: str(v))
def test_shapes_fp32_matches_diffusers(scheduler, guidance, negatives, shapes_pipe, shapes_reference) -> None:
    negative_prompts = NEGATIVES if negatives == "negative" else None
    latents = starting_latents(shapes_pipe)
    ours = shapes_pipe(PROMPTS, negative_prompt=negative_prompts, num_inference_steps=STEPS, guidance_scale=guidance,
                       scheduler=scheduler, height=HEIGHT, width=WIDTH, latents=latents, seed=SEED)
    expected = run_reference(shapes_reference, PROMPTS, latents, [SEED + k for k in range(len(PROMPTS))],
                             negative_prompts, STEPS, guidance, scheduler)
    worst = worst_difference(ours.images, expected)
    assert worst <= 2, f"max pixel difference {worst}/255"


def test_shapes_draws_an_image_not_noise(shapes_pipe) -> None:
    """What makes this suite different from the random-weight ones: the images are flat backgrounds with one shape."""
    image = shapes_pipe(PROMPTS[0], num_inference_steps=20, guidance_scale=4.0, seed=SEED).images[0].astype(float)
    corners = np.concatenate([image[:6, :6].reshape(-1, 3), image[-6:, -6:].reshape(-1, 3)])
    assert corners.std(axis=0).max() < 25, "the background should be one flat colour"
    assert np.abs(image[28:36, 28:36].mean(axis=(0, 1)) - corners.mean(axis=0)).max() > 60, "no shape in the centre"


@pytest.mark.parametrize("task,scheduler,strength", [("img2img", "euler_a", 0.6), ("inpaint", "dpmpp_2m", 1.0)])
def test_shapes_image_tasks_match_diffusers(task, scheduler, strength, shapes_pipe, shapes_reference) -> None:
    from PIL import Image

    start = shapes_pipe(PROMPTS[:1], num_inference_steps=20, guidance_scale=4.0, seed=SEED, height=64, width=64)
    image = Image.fromarray(start.images[0])
    mask = None
    if task == "inpaint":
        mask_array = np.zeros((64, 64), dtype=np.uint8)
        mask_array[16:48, 16:48] = 255
        mask = Image.fromarray(mask_array)
    prompts = PROMPTS[1:]
    factor = shapes_pipe.constants.vae_scale_factor
    shape = (len(prompts), shapes_pipe.constants.latent_channels, 64 // factor, 64 // factor)
    rng = np.random.default_rng(9)
    start_noise, image_noise, masked_noise = (rng.standard_normal(shape, dtype=np.float32) for _ in range(3))
    if mask is not None:  # diffusers' inpainting pipeline encodes once for the batch
        image_noise, masked_noise = (np.repeat(d[:1], len(prompts), axis=0) for d in (image_noise, masked_noise))
    order = shapes_pipe.draw_order(task, strength)
    draws = ImageDraws(start_noise, image_noise if "image_noise" in order else None,
                       masked_noise if "masked_image_noise" in order else None)
    ours = shapes_pipe(prompts, image=image, mask_image=mask, strength=strength, num_inference_steps=STEPS,
                       guidance_scale=4.0, scheduler=scheduler, seed=SEED, start_noise=draws.start_noise,
                       image_noise=draws.image_noise, masked_image_noise=draws.masked_image_noise)
    expected = run_reference_image_task(shapes_reference, prompts, image, draws, [SEED + k for k in range(len(prompts))],
                                        mask_image=mask, strength=strength, steps=STEPS, guidance=4.0,
                                        scheduler=scheduler, height=64 if mask is not None else None,
                                        width=64 if mask is not None else None)
    worst = worst_difference(ours.images, expected)
    assert worst <= 2, f"max pixel difference {worst}/255"
