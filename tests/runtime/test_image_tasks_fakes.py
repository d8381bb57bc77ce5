"""Image-to-image and inpainting in runtime.Pipeline over numpy engines (tests/fakes.py): what a seed draws and in what
order, injected draws, the VAE encoder opened on first use, the known region kept, a 9-channel UNet's input, and every
refusal (no VAE encoder, no mask for an inpainting UNet, draws this call does not make, a static profile's size).
Parity with diffusers' pipelines is tests/parity/test_image_tasks_parity.py."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from diffship.core.package import ModelPackage
from diffship.engines.backend import register_backend
from diffship.runtime import Pipeline
from diffship.runtime.errors import PipelineInputError
from tests.fakes import TINY, FakeEngine, NumpyBackend, with_profile, write_package

FREE_SIZES = replace(TINY, spatial_multiple=8)
"""A package exported with free sizes (any multiple of 8 pixels)."""
INPAINTING = replace(FREE_SIZES, unet_in_channels=9)


def image(height: int = 64, width: int = 72, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def mask(height: int = 64, width: int = 72) -> np.ndarray:
    array = np.zeros((height, width), dtype=np.uint8)
    array[16:40, 24:56] = 255
    return array


def open_pipe(root: Path, constants=FREE_SIZES, profiles=None) -> tuple[Pipeline, NumpyBackend]:
    package = write_package(root, constants) if not (root / "manifest.json").exists() else root
    backend = NumpyBackend(profiles)
    register_backend("numpy", lambda: backend)
    return Pipeline.from_package(package, backend="numpy"), backend


@pytest.fixture()
def pipe(tmp_path: Path) -> Pipeline:
    return open_pipe(tmp_path / "pkg")[0]


def test_the_vae_encoder_opens_on_the_first_image_once(tmp_path: Path) -> None:
    pipe, backend = open_pipe(tmp_path / "pkg")
    pipe("x", num_inference_steps=2, seed=0)
    assert "vae_encoder" not in pipe.engines
    result = pipe("x", image=image(), num_inference_steps=4, seed=0)
    pipe("x", image=image(), mask_image=mask(), num_inference_steps=4, seed=0)
    assert [e.spec.name for e in backend.opened].count("vae_encoder") == 1
    assert result.timings.vae_encode > 0 and "vae_encode" in result.timings.stage_seconds()
    assert result.parameters[0]["task"] == "img2img" and result.parameters[0]["strength"] == 0.8


@pytest.mark.parametrize("steps,strength,runs", [(10, 0.3, 3), (10, 0.75, 7), (10, 1.0, 10), (7, 0.5, 3)])
def test_strength_runs_int_steps_times_strength_as_diffusers(pipe: Pipeline, steps, strength, runs) -> None:
    result = pipe("x", image=image(), strength=strength, num_inference_steps=steps, scheduler="euler", seed=0)
    assert len(result.timings.unet_steps) == runs


@pytest.mark.parametrize("task", ["img2img", "inpaint"])
def test_a_seed_means_these_draws_in_this_order(pipe: Pipeline, task: str) -> None:
    """Image k draws from default_rng(seed + k) in draw_order: injecting exactly those draws gives the same images
    (a deterministic sampler: no step noise follows); and two images of one call are two calls with seeds k, k + 1."""
    extra = {"mask_image": mask()} if task == "inpaint" else {}
    common = dict(image=image(), strength=0.6, num_inference_steps=6, num_images_per_prompt=2, **extra)
    seeded = pipe("a fox", seed=40, scheduler="ddim", **common)
    order = pipe.draw_order(task, 0.6)
    assert order == ("image_noise", "start_noise")
    generators = [np.random.default_rng(40 + k) for k in range(2)]
    draws = {name: np.stack([g.standard_normal((4, 8, 9), dtype=np.float32) for g in generators]) for name in order}
    injected = pipe("a fox", seed=99, scheduler="ddim", **common, **draws)
    np.testing.assert_array_equal(np.stack(injected.images), np.stack(seeded.images))
    together = pipe("a fox", seed=40, scheduler="euler_a", **common)
    apart = [pipe("a fox", seed=40 + k, scheduler="euler_a", **{**common, "num_images_per_prompt": 1}).images[0]
             for k in range(2)]
    np.testing.assert_array_equal(np.stack(together.images), np.stack(apart))
    assert not np.array_equal(together.images[0], together.images[1])


def test_injected_draws_replace_the_seed(pipe: Pipeline) -> None:
    shape = (1, 4, 8, 9)
    draws = {"image_noise": np.full(shape, 0.5, np.float32), "start_noise": np.full(shape, -0.25, np.float32)}
    first = pipe("x", image=image(), strength=0.5, num_inference_steps=4, scheduler="ddim", seed=1, **draws)
    second = pipe("x", image=image(), strength=0.5, num_inference_steps=4, scheduler="ddim", seed=2, **draws)
    np.testing.assert_array_equal(first.images[0], second.images[0])  # deterministic sampler: the seed drew nothing
    assert first.parameters[0]["injected"] == ["image_noise", "start_noise"]


def test_argmax_takes_the_mean_and_draws_no_image_noise(pipe: Pipeline) -> None:
    assert pipe.draw_order("img2img", 0.5, "argmax") == ("start_noise",)
    start = np.zeros((1, 4, 8, 9), np.float32)
    a = pipe("x", image=image(), strength=0.5, num_inference_steps=4, scheduler="ddim", sample_mode="argmax",
             start_noise=start, seed=1)
    b = pipe("x", image=image(), strength=0.5, num_inference_steps=4, scheduler="ddim", sample_mode="argmax",
             start_noise=start, seed=2)
    np.testing.assert_array_equal(a.images[0], b.images[0])


def test_four_channel_inpainting_keeps_the_known_latents(pipe: Pipeline) -> None:
    """After the last step the region outside the mask is the image's own latents (diffusers' blend)."""
    seen = []
    pipe("x", image=image(), mask_image=mask(), strength=0.7, num_inference_steps=5, scheduler="euler",
         image_noise=np.zeros((1, 4, 8, 9), np.float32), seed=3, callback=lambda i, t, latents: seen.append(latents))
    encoder = pipe.engines["vae_encoder"]
    from PIL import Image

    from diffship.runtime.conditioning import preprocess_image

    parameters = encoder({"sample": preprocess_image(Image.fromarray(image()), 64, 72)})["latent_parameters"]
    known = parameters[:, :4] * np.float32(TINY.scaling_factor)
    keep = mask()[::8, ::8] < 128
    np.testing.assert_array_equal(seen[-1][0][:, keep], known[0][:, keep])
    assert not np.array_equal(seen[-1][0][:, ~keep], known[0][:, ~keep])


def test_an_inpainting_unet_reads_nine_channels_and_needs_a_mask(tmp_path: Path) -> None:
    pipe, _ = open_pipe(tmp_path / "pkg", INPAINTING)
    with pytest.raises(PipelineInputError, match="inpainting UNet .9 input channels.*give image and mask_image"):
        pipe("x", num_inference_steps=2)
    with pytest.raises(PipelineInputError, match="give image and mask_image"):
        pipe("x", image=image(), num_inference_steps=2)
    assert pipe.draw_order("inpaint", 1.0) == ("start_noise", "masked_image_noise")
    assert pipe.draw_order("inpaint", 0.5) == ("image_noise", "start_noise", "masked_image_noise")
    pipe("x", image=image(), mask_image=mask(), num_inference_steps=3, seed=0)
    unet = pipe.engines["unet"]
    assert isinstance(unet, FakeEngine)
    assert {call["sample"] for call in unet.calls} == {(2, 9, 8, 9)}  # guided: [uncond; cond], 4 + 1 + 4 channels


def test_a_package_without_a_vae_encoder_says_re_export(tmp_path: Path) -> None:
    root = write_package(tmp_path / "pkg", FREE_SIZES)
    package = ModelPackage.open(root)
    components = {k: v for k, v in package.manifest.components.items() if k != "vae_encoder"}
    package.write_manifest(replace(package.manifest, components=components))
    pipe, _ = open_pipe(root)
    pipe("x", num_inference_steps=2, seed=0)  # text-to-image still works
    with pytest.raises(PipelineInputError, match="no VAE encoder.*re-export"):
        pipe("x", image=image(), num_inference_steps=2)


@pytest.mark.parametrize("arguments,message", [
    ({"latents": np.zeros((1, 4, 8, 9), np.float32)}, "with an image, inject start_noise"),
    ({"masked_image_noise": np.zeros((1, 4, 8, 9), np.float32)}, "masked_image_noise .* is not drawn by this call"),
    ({"sample_mode": "argmax", "image_noise": np.zeros((1, 4, 8, 9), np.float32)}, "image_noise .* is not drawn"),
    ({"start_noise": np.zeros((1, 4, 8, 8), np.float32)}, r"start_noise must be .* of shape \(1, 4, 8, 9\)"),
    ({"image_noise": np.full((1, 4, 8, 9), np.nan, np.float32)}, "image_noise contains NaN"),
    ({"height": 60}, "height 60 is not a multiple of 8 pixels"),
    ({"strength": 0.05, "num_inference_steps": 10}, "runs no step"),
])
def test_image_task_refusals_say_what_is_allowed(pipe: Pipeline, arguments, message) -> None:
    given = {"image": image(), "num_inference_steps": 4, "seed": 0, **arguments}
    with pytest.raises(PipelineInputError, match=message):
        pipe("x", **given)


def test_start_noise_without_an_image_is_refused(pipe: Pipeline) -> None:
    with pytest.raises(PipelineInputError, match="start_noise .* is not drawn by this call; it draws latents"):
        pipe("x", num_inference_steps=2, start_noise=np.zeros((1, 4, 8, 8), np.float32))


def test_a_static_profile_names_the_one_size_it_takes(tmp_path: Path) -> None:
    root = write_package(tmp_path / "pkg", FREE_SIZES)
    specs = {c: ModelPackage.open(root).variant(c, "fp32").spec for c in ("unet", "vae_decoder")}
    profiles = {name: with_profile(spec, (1, 2), size=(8, 9)) for name, spec in specs.items()}
    pipe, _ = open_pipe(root, profiles=profiles)
    assert pipe.size_limits().height == (64, 64) and pipe.size_limits().width == (72, 72)
    pipe("x", num_inference_steps=2, height=64, width=72, seed=0)
    with pytest.raises(PipelineInputError, match="take 72x64 .width x height. only: they were built with a static"):
        pipe("x", num_inference_steps=2, height=64, width=64)


@pytest.mark.parametrize("steps", [3, 7, 49, 999])
def test_the_least_strength_advised_runs_a_step(pipe: Pipeline, steps: int) -> None:
    with pytest.raises(PipelineInputError, match="runs no step") as refused:
        pipe("x", image=image(), num_inference_steps=steps, strength=0.5 / steps, seed=0)
    advised = float(re.search(r"at least ([0-9.e-]+)", str(refused.value)).group(1))
    assert int(steps * advised) == 1  # the advice works, and is not far above what is needed
    if steps <= 49:
        pipe("x", image=image(), num_inference_steps=steps, strength=advised, seed=0)


@pytest.mark.parametrize("arguments,message", [
    (("text2img", 1.0, "sample"), "task must be one of txt2img, img2img, inpaint"),
    (("img2img", float("nan"), "sample"), "strength must be a number in"),
    (("img2img", 2, "sample"), "strength must be a number in"),
    (("img2img", "x", "sample"), "strength must be a number in"),
    (("img2img", 0.5, "bad"), "sample_mode must be one of sample, argmax"),
])
def test_draw_order_checks_what_it_is_asked(pipe: Pipeline, arguments, message) -> None:
    with pytest.raises(PipelineInputError, match=message):
        pipe.draw_order(*arguments)


def test_draw_order_on_an_inpainting_unet_knows_it_only_inpaints(tmp_path: Path) -> None:
    pipe, _ = open_pipe(tmp_path / "pkg", INPAINTING)
    for task in ("txt2img", "img2img"):
        with pytest.raises(PipelineInputError, match=f"does inpaint only, not {task}"):
            pipe.draw_order(task, 0.5)


def test_sample_mode_without_an_image_is_refused(pipe: Pipeline) -> None:
    with pytest.raises(PipelineInputError, match="sample_mode 'argmax' is for image-to-image and inpainting"):
        pipe("x", num_inference_steps=2, sample_mode="argmax")


def test_a_strength_grid_records_what_a_single_image_records(pipe: Pipeline, tmp_path: Path) -> None:
    from diffship.runtime.grid import parse_axis, sweep

    arguments = {"image": image(), "mask_image": mask(), "num_inference_steps": 4, "seed": 3, "sample_mode": "argmax",
                 "negative_prompt": "blurry", "guidance_scale": 7.5}
    grid = sweep(pipe, "x", [parse_axis("strength=0.5,1")], arguments)
    single = pipe("x", strength=0.5, **arguments).parameters[0]
    assert grid.parameters["grid"] == {"strength": [0.5, 1.0]}
    assert {k: v for k, v in grid.parameters.items() if k != "grid"} == {k: v for k, v in single.items()
                                                                           if k != "strength"}
    assert grid.parameters["task"] == "inpaint" and {"model", "backend", "height", "sample_mode"} <= set(grid.parameters)
