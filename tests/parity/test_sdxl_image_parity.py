"""SDXL image-to-image and the base -> refiner hand-off: runtime.Pipeline (ONNX Runtime, CPU, fp32) against diffusers'
StableDiffusionXLImg2ImgPipeline and StableDiffusionXLPipeline over the same ``tiny-xl`` weights, with the same injected
draws. Bar: 2/255 for images; latents handed over agree to float32 rounding (the pixel bar's source).

The hand-off here is base -> base (the same model continues from ``denoising_start``): the arithmetic diffusers does
on either side does not depend on which model runs it, and ``tiny-xl`` is the package every test already has."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

diffusers = pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")

from diffship.bench.reference import ImageDraws, Reference, run_reference, run_reference_image_task  # noqa: E402
from diffship.runtime import Pipeline  # noqa: E402
from tests.parity import test_sdxl_parity as text_suite  # noqa: E402
from tests.parity.conftest import sdxl_reference  # noqa: E402
from tests.parity.test_image_tasks_parity import sample_image  # noqa: E402
from tests.parity.test_sdxl_parity import HEIGHT, NEGATIVES, PROMPTS, WIDTH  # noqa: E402

# The base model's pipelines (module fixtures), as the text-to-image suite opens them.
ours = text_suite.ours
reference = text_suite.reference

STEPS = 8
SEED = 91


def draws_for(ours: Pipeline, batch: int, strength: float, noised: bool = True, encoded: bool = True) -> ImageDraws:
    shape = (batch, 4, HEIGHT // 8, WIDTH // 8)
    rng = np.random.default_rng(2000 + int(strength * 100))
    start, image_noise = rng.standard_normal(shape, dtype=np.float32), rng.standard_normal(shape, dtype=np.float32)
    return ImageDraws(start if noised else None, image_noise if encoded else None)


def worst_pixel(actual: list[np.ndarray], expected: list[np.ndarray]) -> int:
    a, b = np.stack(actual), np.stack(expected)
    assert a.shape == b.shape, f"shape {a.shape} vs diffusers' {b.shape}"
    return int(np.abs(a.astype(int) - b.astype(int)).max())


def img2img(ours: Pipeline, reference: Reference, scheduler: str, strength: float | None, guidance: float = 5.0,
            negatives: list[str] | None = NEGATIVES, image: Any = None, **extra: Any) -> int:
    """Worst pixel difference for one image-to-image call of both prompts (``strength`` None: SDXL's default)."""
    image = sample_image(HEIGHT, WIDTH) if image is None else image
    latents_given = isinstance(image, np.ndarray)
    noised = "denoising_start" not in extra
    draws = draws_for(ours, len(PROMPTS), strength or 0.3, noised=noised, encoded=not latents_given)
    seeds = [SEED + k for k in range(len(PROMPTS))]
    mine = ours(PROMPTS, negative_prompt=negatives, image=image, strength=strength, num_inference_steps=STEPS,
                guidance_scale=guidance, scheduler=scheduler, seed=SEED, start_noise=draws.start_noise,
                image_noise=draws.image_noise, **extra)
    expected = run_reference_image_task(
        reference, PROMPTS, torch.from_numpy(image) if latents_given else image, draws, seeds,
        strength=0.3 if strength is None else strength, negative_prompts=negatives, steps=STEPS, guidance=guidance,
        scheduler=scheduler, extra=extra)
    return worst_pixel(mine.images, expected)


@pytest.mark.parametrize("scheduler,strength", [
    ("euler", None), ("euler_a", 0.75), ("dpmpp_2m", 0.6), ("heun", 0.5), ("dpm2_a", 0.9), ("ddim", 0.4),
    ("unipc", 1.0), ("lms", 0.3),
])
def test_sdxl_img2img_matches_diffusers(scheduler: str, strength: float | None, ours: Pipeline,
                                        reference: Reference) -> None:
    worst = img2img(ours, reference, scheduler, strength)
    assert worst <= 2, f"{scheduler} at strength {strength}: max pixel difference {worst}/255"


def test_sdxl_img2img_unguided_with_micro_conditioning_matches_diffusers(ours: Pipeline, reference: Reference) -> None:
    worst = img2img(ours, reference, "euler_a", 0.7, guidance=0.0, negatives=None,
                    original_size=(256, 192), crops_coords_top_left=(8, 16), target_size=(64, 96))
    assert worst <= 2, f"max pixel difference {worst}/255"


def test_sdxl_img2img_negative_sizes_match_diffusers(ours: Pipeline, reference: Reference) -> None:
    # Image-to-image's own rule: each negative size defaults to its positive one, the crop corner is shared.
    worst = img2img(ours, reference, "euler", 0.6, negative_original_size=(32, 32), crops_coords_top_left=(4, 4))
    assert worst <= 2, f"max pixel difference {worst}/255"


def base_latents(ours: Pipeline, reference: Reference, scheduler: str, end: float) -> tuple[np.ndarray, float]:
    """The base model's latents at ``denoising_end`` (ours), and how far diffusers' are from them."""
    start = np.random.default_rng(9).standard_normal((len(PROMPTS), 4, HEIGHT // 8, WIDTH // 8)).astype(np.float32)
    seeds = [SEED + k for k in range(len(PROMPTS))]
    mine = ours(PROMPTS, negative_prompt=NEGATIVES, num_inference_steps=STEPS, guidance_scale=5.0, scheduler=scheduler,
                height=HEIGHT, width=WIDTH, latents=start, seed=SEED, denoising_end=end, output_type="latent")
    theirs = np.stack(run_reference(reference, PROMPTS, start, seeds, NEGATIVES, STEPS, 5.0, scheduler,
                                    extra={"denoising_end": end, "output_type": "latent"}))
    assert mine.images == [] and mine.latents is not None and mine.latents.shape == theirs.shape
    return mine.latents, float(np.abs(mine.latents - theirs).max() / np.abs(theirs).max())


@pytest.mark.parametrize("scheduler,fraction", [("euler", 0.8), ("euler_a", 0.6), ("heun", 0.7), ("dpmpp_2m", 0.5),
                                                ("unipc", 0.75)])
def test_sdxl_handoff_matches_diffusers(scheduler: str, fraction: float, ours: Pipeline, reference: Reference) -> None:
    latents, relative = base_latents(ours, reference, scheduler, fraction)
    assert relative < 1e-4, f"{scheduler}: handed-over latents differ by {relative:.2e} of their largest value"
    worst = img2img(ours, reference, scheduler, None, image=latents, denoising_start=fraction)
    assert worst <= 2, f"{scheduler} from {fraction}: max pixel difference {worst}/255"


def test_sdxl_handoff_runs_the_schedule_once(ours: Pipeline) -> None:
    # The two halves together take every step of the schedule once: timesteps seen by the callbacks.
    seen: list[float] = []
    start = np.random.default_rng(3).standard_normal((1, 4, HEIGHT // 8, WIDTH // 8)).astype(np.float32)
    first = ours(PROMPTS[0], num_inference_steps=10, guidance_scale=0.0, height=HEIGHT, width=WIDTH, latents=start,
                 denoising_end=0.7, output_type="latent", callback=lambda i, t, x: seen.append(t))
    ours(PROMPTS[0], image=first.latents, num_inference_steps=10, guidance_scale=0.0, denoising_start=0.7,
         callback=lambda i, t, x: seen.append(t))
    whole: list[float] = []
    ours(PROMPTS[0], num_inference_steps=10, guidance_scale=0.0, height=HEIGHT, width=WIDTH, latents=start,
         callback=lambda i, t, x: whole.append(t))
    assert seen == whole and len(whole) == 10


@pytest.fixture(scope="module")
def refiner(tiny_xl_refiner_package: Path) -> Pipeline:
    return Pipeline.from_package(tiny_xl_refiner_package, backend="ort", device="cpu")


@pytest.fixture(scope="module")
def refiner_reference(tiny_xl_refiner_dir: Path) -> Reference:
    loaded = sdxl_reference(tiny_xl_refiner_dir, "StableDiffusionXLImg2ImgPipeline")
    assert loaded.pipe.text_encoder is None and loaded.pipe.config.requires_aesthetics_score
    return loaded


@pytest.mark.parametrize("scheduler,strength,extra", [
    ("euler", None, {}),
    ("dpmpp_2m", 0.5, {"aesthetic_score": 8.0, "negative_aesthetic_score": 1.0, "original_size": (512, 768),
                       "negative_original_size": (128, 128), "negative_crops_coords_top_left": (0, 8)}),
    ("heun", 0.8, {}),
], ids=["defaults", "scores-and-sizes", "heun"])
def test_sdxl_refiner_img2img_matches_diffusers(scheduler: str, strength: float | None, extra: dict[str, Any],
                                                refiner: Pipeline, refiner_reference: Reference) -> None:
    worst = img2img(refiner, refiner_reference, scheduler, strength, **extra)
    assert worst <= 2, f"{scheduler}: max pixel difference {worst}/255"


@pytest.mark.parametrize("scheduler,fraction", [("euler", 0.8), ("euler_a", 0.7)])
def test_sdxl_base_to_refiner_matches_diffusers(scheduler: str, fraction: float, ours: Pipeline,
                                                reference: Reference, refiner: Pipeline,
                                                refiner_reference: Reference) -> None:
    latents, relative = base_latents(ours, reference, scheduler, fraction)
    assert relative < 1e-4, f"handed-over latents differ by {relative:.2e} of their largest value"
    worst = img2img(refiner, refiner_reference, scheduler, None, image=latents, denoising_start=fraction)
    assert worst <= 2, f"{scheduler} from {fraction}: max pixel difference {worst}/255"
