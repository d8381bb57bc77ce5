"""SDXL end to end: runtime.Pipeline (ONNX Runtime, CPU) against diffusers' StableDiffusionXLPipeline loading the same
``save_pretrained`` folder the package was exported from (``tiny-xl``: two text encoders, a text_time UNet with two
transformer layers in a block). Same injected latents and per-step noise on both sides; bar: 2/255 in fp32
(docs/design.md, "Parity bars")."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

diffusers = pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")

from diffship.bench.reference import Reference, run_reference  # noqa: E402
from diffship.runtime import Pipeline  # noqa: E402
from diffship.runtime.schedulers import SHORT_NAMES  # noqa: E402
from tests.parity.conftest import sdxl_reference  # noqa: E402

PROMPTS = ["a red fox in the snow", "an astronaut riding a horse on the moon, highly detailed"]
NEGATIVES = ["blurry", "low quality, watermark"]
HEIGHT, WIDTH = 64, 96
STEPS = 6
SEED = 77


@pytest.fixture(scope="module")
def ours(tiny_xl_package: Path) -> Pipeline:
    return Pipeline.from_package(tiny_xl_package, backend="ort", device="cpu")


@pytest.fixture(scope="module")
def reference(tiny_xl_dir: Path) -> Reference:
    return sdxl_reference(tiny_xl_dir)


def latents_for(batch: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    return np.random.default_rng(5).standard_normal((batch, 4, height // 8, width // 8)).astype(np.float32)


def compare(ours: Pipeline, reference: Reference, prompts: list[str], negatives: list[str] | None, guidance: float,
            scheduler: str | None, steps: int = STEPS, images_per_prompt: int = 1, height: int = HEIGHT,
            width: int = WIDTH, **extra: Any) -> int:
    """The worst pixel difference between the two pipelines' images for the same call."""
    latents = latents_for(len(prompts) * images_per_prompt, height, width)
    actual = ours(prompts, negative_prompt=negatives, num_inference_steps=steps, guidance_scale=guidance,
                  scheduler=scheduler, height=height, width=width, latents=latents, seed=SEED,
                  num_images_per_prompt=images_per_prompt, **extra).images
    seeds = [SEED + k for k in range(len(latents))]
    repeated = [p for p in prompts for _ in range(images_per_prompt)]
    repeated_negatives = None if negatives is None else [n for n in negatives for _ in range(images_per_prompt)]
    expected = run_reference(reference, repeated, latents, seeds, repeated_negatives, steps, guidance, scheduler,
                             extra=extra)
    assert np.stack(actual).shape == np.stack(expected).shape == (len(latents), height, width, 3)
    return int(np.abs(np.stack(actual).astype(int) - np.stack(expected).astype(int)).max())


@pytest.mark.parametrize("scheduler", list(SHORT_NAMES))
def test_sdxl_every_scheduler_matches_diffusers(scheduler: str, ours: Pipeline, reference: Reference) -> None:
    # One prompt here (two in the cases below): the loop per scheduler is what this covers.
    worst = compare(ours, reference, PROMPTS[:1], NEGATIVES[:1], 5.0, scheduler)
    assert worst <= 2, f"{scheduler}: max pixel difference {worst}/255"


@pytest.mark.parametrize("guidance", [0.0, 1.0, 5.0])
@pytest.mark.parametrize("negatives", ["none", "given", "empty-strings"])
def test_sdxl_guidance_and_negative_prompts_match_diffusers(guidance: float, negatives: str, ours: Pipeline,
                                                            reference: Reference) -> None:
    # No negative prompt under guidance: zero embeddings (force_zeros_for_empty_prompt); "" given: the encoded "".
    chosen = {"none": None, "given": NEGATIVES, "empty-strings": ["", ""]}[negatives]
    worst = compare(ours, reference, PROMPTS, chosen, guidance, "euler")
    assert worst <= 2, f"max pixel difference {worst}/255"


def test_sdxl_without_force_zeros_matches_diffusers(ours: Pipeline, reference: Reference) -> None:
    # A model whose pipeline does not set force_zeros_for_empty_prompt guides against the encoded "".
    assert ours.text.xl.force_zeros_for_empty_prompt and reference.pipe.config.force_zeros_for_empty_prompt
    saved = ours.text.xl  # SDXL's own constants, as the text side read them from the package
    ours.text.xl = replace(saved, force_zeros_for_empty_prompt=False)
    reference.pipe.register_to_config(force_zeros_for_empty_prompt=False)
    try:
        without = compare(ours, reference, PROMPTS, None, 5.0, "euler")
    finally:
        ours.text.xl = saved
        reference.pipe.register_to_config(force_zeros_for_empty_prompt=True)
    assert without <= 2, f"max pixel difference {without}/255"


@pytest.mark.parametrize("micro", [
    {"original_size": (512, 384), "target_size": (64, 96), "crops_coords_top_left": (16, 8)},
    {"original_size": (128, 128), "negative_original_size": (32, 48), "negative_target_size": (64, 64),
     "negative_crops_coords_top_left": (4, 0)},
], ids=["positive", "negative"])
def test_sdxl_micro_conditioning_matches_diffusers(micro: dict[str, Any], ours: Pipeline, reference: Reference) -> None:
    # One prompt: with several images diffusers pairs negative time ids with the wrong half (runtime/text/sdxl.py).
    worst = compare(ours, reference, PROMPTS[:1], NEGATIVES[:1], 5.0, "euler", **micro)
    assert worst <= 2, f"max pixel difference {worst}/255"


def test_sdxl_micro_conditioning_changes_the_image(ours: Pipeline) -> None:
    latents = latents_for(1)
    plain = ours(PROMPTS[0], num_inference_steps=2, guidance_scale=0.0, height=HEIGHT, width=WIDTH, latents=latents)
    cropped = ours(PROMPTS[0], num_inference_steps=2, guidance_scale=0.0, height=HEIGHT, width=WIDTH, latents=latents,
                   crops_coords_top_left=(256, 0))
    assert int(np.abs(plain.images[0].astype(int) - cropped.images[0].astype(int)).max()) > 2


def test_sdxl_guidance_rescale_and_images_per_prompt_match_diffusers(ours: Pipeline, reference: Reference) -> None:
    worst = compare(ours, reference, PROMPTS, NEGATIVES, 7.0, "dpmpp_2m", images_per_prompt=2, guidance_rescale=0.7)
    assert worst <= 2, f"max pixel difference {worst}/255"


def test_sdxl_square_and_tall_sizes_match_diffusers(ours: Pipeline, reference: Reference) -> None:
    for height, width in ((64, 64), (104, 56)):
        worst = compare(ours, reference, PROMPTS[:1], None, 5.0, "euler_a", height=height, width=width)
        assert worst <= 2, f"{height}x{width}: max pixel difference {worst}/255"


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_sdxl_turbo_style_matches_diffusers(steps: int, ours: Pipeline, reference: Reference) -> None:
    # SDXL-Turbo's package: Euler ancestral with trailing timestep spacing, guidance 0 (no unconditional batch).
    turbo = {**ours.scheduler_config, "_class_name": "EulerAncestralDiscreteScheduler", "timestep_spacing": "trailing"}
    saved_ours, saved_reference = ours.scheduler_config, reference.loaded_scheduler_config
    ours.scheduler_config = turbo
    reference.loaded_scheduler_config = diffusers.EulerAncestralDiscreteScheduler.from_config(
        saved_reference, timestep_spacing="trailing").config
    try:
        worst = compare(ours, reference, PROMPTS, None, 0.0, None, steps=steps)
    finally:
        ours.scheduler_config, reference.loaded_scheduler_config = saved_ours, saved_reference
    assert worst <= 2, f"{steps} steps: max pixel difference {worst}/255"


@pytest.fixture(scope="module")
def clip_skip_package(tiny_xl_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from diffship.exporter.onnx_export import ExportOptions
    from diffship.exporter.package import ExportRequest, export_package

    out = tmp_path_factory.mktemp("clip-skip") / "tiny-xl-clip-skip-1"
    export_package(ExportRequest(out=out, model_path=tiny_xl_dir, options=ExportOptions(exporter="legacy"), clip_skip=1))
    return out


@pytest.mark.parametrize("negatives", [None, NEGATIVES], ids=["zeros-negative", "negative-prompts"])
def test_sdxl_clip_skip_matches_diffusers(negatives: list[str] | None, clip_skip_package: Path, ours: Pipeline,
                                          reference: Reference) -> None:
    guidance = 5.0
    # Both sides read the skipped layer (diffusers' negatives come from its own encode_prompt: bench/reference.py).
    with Pipeline.from_package(clip_skip_package, backend="ort", device="cpu") as skipping:
        assert skipping.constants.clip_skip == 1
        worst = compare(skipping, replace(reference, clip_skip=1), PROMPTS, negatives, guidance, "euler")
        moved = compare(skipping, reference, PROMPTS, negatives, guidance, "euler")
    assert worst <= 2, f"max pixel difference {worst}/255"
    assert moved > 2, "the skipped layer should change the image (diffusers without clip_skip is this close)"


def test_sdxl_fp16_matches_diffusers_fp32_and_decodes_in_fp32(tiny_xl_package: Path, reference: Reference,
                                                               tmp_path: Path) -> None:
    # The fp16 bar of SD 1.x (PSNR >= 30 dB against diffusers fp32). SDXL's VAE overflows in fp16 (force_upcast):
    # diffusers decodes in fp32, and so does an fp16 pipeline here.
    import shutil

    from diffship.core.package import ModelPackage
    from diffship.engines.onnx.fp16 import convert_to_fp16

    package_path = tmp_path / "tiny-xl"
    shutil.copytree(tiny_xl_package, package_path)
    package = ModelPackage.open(package_path)
    assert package.constants.force_upcast
    for component in ("text_encoder", "text_encoder_2", "unet", "vae_decoder"):
        convert_to_fp16(package, component)
    latents = latents_for(len(PROMPTS))
    with Pipeline.from_package(package_path, backend="ort", precision="fp16", device="cpu") as half:
        dtypes = {name: engine.spec.inputs[0].dtype for name, engine in half.engines.items()}
        assert dtypes == {"text_encoder": "int64", "text_encoder_2": "int64", "unet": "float16",
                          "vae_decoder": "float32"}
        actual = np.stack(half(PROMPTS, negative_prompt=NEGATIVES, num_inference_steps=STEPS, guidance_scale=5.0,
                               scheduler="euler_a", height=HEIGHT, width=WIDTH, latents=latents, seed=SEED).images)
    expected = np.stack(run_reference(reference, PROMPTS, latents, [SEED + k for k in range(len(PROMPTS))], NEGATIVES,
                                      STEPS, 5.0, "euler_a"))
    error = actual.astype(float) - expected.astype(float)
    psnr = 10 * np.log10(255.0**2 / max(float(np.mean(error**2)), 1e-12))
    assert psnr >= 30, f"fp16 vs diffusers fp32: {psnr:.1f} dB"
