"""Image-to-image and inpainting: runtime.Pipeline (ONNX Runtime, CPU, fp32) against diffusers'
StableDiffusionImg2ImgPipeline and StableDiffusionInpaintPipeline over the same weights, with the same injected draws
(the VAE's latent draws, the noise added at the starting step, the ancestral samplers' step noise). Bar: 2/255.

The grid is a covering design of pairs, not the full product (which would take most of CI's budget): EVERY scheduler
runs every task and model (image-to-image on ``tiny`` and ``tiny-v``; inpainting with the 4-channel ``tiny`` and
``tiny-v`` UNets and the 9-channel ``tiny-inpaint`` one), and across those five runs meets every strength (0.3, 0.75,
1.0), both guidance scales (1, 7.5) and every size (64x72, 96x64, 64x64: multiples of 8, not of 64, and a square one).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

diffusers = pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")

from diffship.bench.reference import ImageDraws, Reference, reference_pipeline, run_reference_image_task  # noqa: E402
from diffship.core.package import ModelPackage  # noqa: E402
from diffship.runtime import Pipeline  # noqa: E402
from diffship.runtime.schedulers import SHORT_NAMES  # noqa: E402

PROMPTS = ["a red fox in the snow", "a bowl of ramen"]
NEGATIVES = ["blurry", "low quality, watermark"]
STEPS = 6
"""Strengths 0.3 / 0.75 / 1.0 run 1 / 4 / 6 steps, so the multistep schedulers build their history in two of the three;
schedule arithmetic at 1-50 steps is tests/runtime/test_scheduler_parity.py's. (Was 10: cut for CI's time budget.)"""
SEED = 77
STRENGTHS = (0.3, 0.75, 1.0)
GUIDANCES = (1.0, 7.5)
SIZES = ((64, 72), (96, 64), (64, 64))
"""(height, width) in pixels."""
TASKS = (("img2img", "tiny"), ("img2img", "tiny-v"), ("inpaint", "tiny"), ("inpaint", "tiny-v"),
         ("inpaint", "tiny-inpaint"))


def covering_cases() -> list[tuple[str, str, str, float, float, tuple[int, int]]]:
    cases = []
    for k, scheduler in enumerate(SHORT_NAMES):
        for t, (task, model) in enumerate(TASKS):
            cases.append((task, model, scheduler, STRENGTHS[(k + t) % 3], GUIDANCES[(k + t) % 2], SIZES[(k + 2 * t) % 3]))
    return cases


def test_covering_design_meets_every_pair() -> None:
    cases = covering_cases()
    assert {(c[0], c[1], c[2]) for c in cases} == {(task, model, s) for task, model in TASKS for s in SHORT_NAMES}
    assert {(c[2], c[3]) for c in cases} == {(s, w) for s in SHORT_NAMES for w in STRENGTHS}
    assert {(c[2], c[4]) for c in cases} == {(s, g) for s in SHORT_NAMES for g in GUIDANCES}
    assert {(c[2], c[5]) for c in cases} == {(s, size) for s in SHORT_NAMES for size in SIZES}
    for task, model in TASKS:
        mine = [c for c in cases if c[:2] == (task, model)]
        assert {c[3] for c in mine} == set(STRENGTHS) and {c[4] for c in mine} == set(GUIDANCES)


def sample_image(height: int, width: int, seed: int = 3) -> object:
    """A smooth picture with edges (gradients, a disc, stripes): what a VAE meets, deterministic."""
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    disc = ((y - height * 0.4) ** 2 + (x - width * 0.6) ** 2) < (min(height, width) * 0.25) ** 2
    rgb = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin(x / 5.0)], axis=-1)
    rgb[disc] = (0.9, 0.2, 0.1)
    noise = np.random.default_rng(seed).uniform(-0.03, 0.03, rgb.shape)
    return Image.fromarray((np.clip(rgb + noise, 0, 1) * 255).round().astype(np.uint8))


def sample_mask(height: int, width: int) -> object:
    """White (repaint) over a rectangle, with a grey ramp at its edge so that binarising at 0.5 matters."""
    from PIL import Image

    mask = np.zeros((height, width), dtype=np.uint8)
    top, left = height // 4, width // 3
    mask[top : top + height // 2, left : left + width // 3] = 255
    mask[top - 2 : top, left : left + width // 3] = 140  # >= 0.5: repaint
    mask[top + height // 2 : top + height // 2 + 2, left : left + width // 3] = 110  # < 0.5: keep
    return Image.fromarray(mask)


def draws_for(pipe: Pipeline, masked: bool, strength: float, height: int, width: int) -> ImageDraws:
    """Injected draws for every draw this call makes. diffusers' inpainting pipeline encodes once for the batch (one
    VAE draw shared by all images), so its image draws are the same row for every image."""
    batch = len(PROMPTS)
    shape = (batch, pipe.constants.latent_channels, height // 8, width // 8)
    rng = np.random.default_rng(1000 + height + width)
    start = rng.standard_normal(shape, dtype=np.float32)
    image_noise = rng.standard_normal(shape, dtype=np.float32)
    masked_noise = rng.standard_normal(shape, dtype=np.float32)
    if masked:
        image_noise, masked_noise = (np.repeat(d[:1], batch, axis=0) for d in (image_noise, masked_noise))
    order = pipe.draw_order("inpaint" if masked else "img2img", strength)
    return ImageDraws(start, image_noise if "image_noise" in order else None,
                      masked_noise if "masked_image_noise" in order else None)


@pytest.fixture(scope="module")
def image_pipelines(packages: dict[str, Path], tiny_inpaint_package: Path) -> dict[str, Pipeline]:
    paths = {**packages, "tiny-inpaint": tiny_inpaint_package}
    return {name: Pipeline.from_package(path, backend="ort", precision="fp32", device="cpu")
            for name, path in paths.items()}


@pytest.fixture(scope="module")
def image_references(packages: dict[str, Path], tiny_inpaint_package: Path) -> dict[str, Reference]:
    paths = {**packages, "tiny-inpaint": tiny_inpaint_package}
    return {name: reference_pipeline(ModelPackage.open(path)) for name, path in paths.items()}


def compare(pipe: Pipeline, reference: Reference, task: str, scheduler: str, strength: float, guidance: float,
            height: int, width: int, negatives: list[str] | None = None, image_size: tuple[int, int] | None = None,
            **extra: object) -> int:
    """The worst pixel difference (0..255) between our images and diffusers' for one case (``image_size``: the input
    image's (height, width) when not the working size)."""
    image = sample_image(*(image_size or (height, width)))
    mask = sample_mask(*(image_size or (height, width))) if task == "inpaint" else None
    draws = draws_for(pipe, mask is not None, strength, height, width)
    seeds = [SEED + k for k in range(len(PROMPTS))]
    ours = pipe(
        PROMPTS, negative_prompt=negatives, image=image, mask_image=mask, strength=strength,
        num_inference_steps=STEPS, guidance_scale=guidance, scheduler=scheduler, seed=SEED,
        start_noise=draws.start_noise, image_noise=draws.image_noise, masked_image_noise=draws.masked_image_noise,
        **({"height": height, "width": width} if mask is not None else {}), **extra,  # type: ignore[arg-type]
    )
    expected = run_reference_image_task(
        reference, PROMPTS, image, draws, seeds, mask_image=mask, strength=strength, negative_prompts=negatives,
        steps=STEPS, guidance=guidance, scheduler=scheduler,
        height=height if mask is not None else None, width=width if mask is not None else None,
        padding_mask_crop=extra.get("padding_mask_crop"),  # type: ignore[arg-type]
    )
    actual, wanted = np.stack(ours.images), np.stack(expected)
    assert actual.shape == wanted.shape, f"shape {actual.shape} vs diffusers' {wanted.shape}"
    return int(np.abs(actual.astype(int) - wanted.astype(int)).max())


@pytest.mark.parametrize("task,model,scheduler,strength,guidance,size", covering_cases(),
                         ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v))
def test_image_task_fp32_matches_diffusers(task, model, scheduler, strength, guidance, size, image_pipelines,
                                           image_references) -> None:
    height, width = size
    worst = compare(image_pipelines[model], image_references[model], task, scheduler, strength, guidance, height, width,
                    negatives=NEGATIVES if guidance > 1 else None)
    assert worst <= 2, f"max pixel difference {worst}/255"


@pytest.mark.parametrize("model", ["tiny", "tiny-inpaint"])
def test_padding_mask_crop_matches_diffusers(model, image_pipelines, image_references) -> None:
    """Inpainting a crop around the mask at the working size, pasted back into the full image under the original's
    unmasked pixels: an 80x96 image (not the working size), a 64x64 working size."""
    worst = compare(image_pipelines[model], image_references[model], "inpaint", "euler_a", 0.75, 7.5, 64, 64,
                    negatives=NEGATIVES, image_size=(80, 96), padding_mask_crop=4)
    assert worst <= 2, f"max pixel difference {worst}/255"
