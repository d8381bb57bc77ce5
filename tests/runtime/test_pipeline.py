"""runtime.Pipeline behaviour: seeds, batching, guidance batching, validation, callbacks, timings, saved PNGs."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from diffship.engines.base import EngineBase
from diffship.runtime import Pipeline
from diffship.runtime.errors import PipelineError, PipelineInputError
from diffship.runtime.images import read_parameters
from tests.conftest import images_alone_and_from_threads


@pytest.fixture(scope="module")
def pipe(tiny_package: Path) -> Pipeline:
    return Pipeline.from_package(tiny_package, device="cpu")


class CountingEngine(EngineBase):
    """The real engine, with a batch cap of our choosing, counting calls and the batch sizes it saw."""

    def __init__(self, inner: EngineBase, cap: int | None = None) -> None:
        self.inner, self.spec, self.cap, self.batches = inner, inner.spec, cap, []

    def max_batch(self) -> int | None:
        return self.cap

    def __call__(self, feeds):
        self.batches.append(len(next(iter(feeds.values()))))
        return self.inner(feeds)


def test_same_seed_gives_byte_identical_images_across_runs(pipe: Pipeline) -> None:
    first = pipe(["a red fox", "a cat"], num_inference_steps=5, seed=11, num_images_per_prompt=2)
    second = pipe(["a red fox", "a cat"], num_inference_steps=5, seed=11, num_images_per_prompt=2)
    assert first.seeds == second.seeds == [11, 12, 13, 14]
    for a, b in zip(first.images, second.images, strict=True):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("scheduler", ["pndm", "euler_a", "lcm"])
def test_images_per_prompt_split_into_calls_gives_same_bytes(pipe: Pipeline, scheduler: str) -> None:
    together = pipe("a red fox", num_inference_steps=6, seed=42, num_images_per_prompt=3, scheduler=scheduler)
    apart = [pipe("a red fox", num_inference_steps=6, seed=42 + k, scheduler=scheduler).images[0] for k in range(3)]
    for a, b in zip(together.images, apart, strict=True):
        assert a.tobytes() == b.tobytes()


def test_different_seeds_give_different_images(pipe: Pipeline) -> None:
    a = pipe("a red fox", num_inference_steps=4, seed=1).images[0]
    b = pipe("a red fox", num_inference_steps=4, seed=2).images[0]
    assert a.tobytes() != b.tobytes()


def test_guidance_makes_one_doubled_unet_call_per_step(pipe: Pipeline) -> None:
    original = pipe.engines["unet"]
    counting = CountingEngine(original)
    pipe.engines["unet"] = counting
    try:
        pipe(["a", "b"], num_inference_steps=3, guidance_scale=7.5, scheduler="ddim", seed=0)
        assert counting.batches == [4, 4, 4]
        counting.batches.clear()
        pipe(["a", "b"], num_inference_steps=3, guidance_scale=1.0, scheduler="ddim", seed=0)
        assert counting.batches == [2, 2, 2]
    finally:
        pipe.engines["unet"] = original


def test_capped_engine_batch_is_split_without_changing_the_image(pipe: Pipeline) -> None:
    reference = pipe(["a", "b"], num_inference_steps=3, scheduler="ddim", seed=5)
    original = pipe.engines["unet"]
    capped = CountingEngine(original, cap=3)
    pipe.engines["unet"] = capped
    try:
        chunked = pipe(["a", "b"], num_inference_steps=3, scheduler="ddim", seed=5)
    finally:
        pipe.engines["unet"] = original
    assert capped.batches == [3, 1] * 3
    for a, b in zip(reference.images, chunked.images, strict=True):
        assert a.tobytes() == b.tobytes()


def test_callback_sees_every_step(pipe: Pipeline) -> None:
    seen = []
    result = pipe("x", num_inference_steps=4, scheduler="euler", seed=0, callback=lambda i, t, x: seen.append((i, t, x.shape)))
    assert [i for i, _, _ in seen] == [0, 1, 2, 3]
    assert all(shape == (1, 4, 8, 8) for _, _, shape in seen)
    assert len(result.timings.unet_steps) == 4


def test_pndm_runs_one_more_unet_step_than_asked_as_diffusers(pipe: Pipeline) -> None:
    assert len(pipe("x", num_inference_steps=4, scheduler="pndm", seed=0).timings.unet_steps) == 5


def test_timings_cover_every_stage(pipe: Pipeline) -> None:
    timings = pipe("a fox", num_inference_steps=3, seed=0).timings
    stages = timings.stage_seconds()
    assert set(stages) == {"tokenize", "text_encoder", "unet", "scheduler", "vae_decode"}
    assert all(v > 0 for v in stages.values())
    assert timings.total >= sum(stages.values())


@pytest.mark.parametrize("scheduler", ["euler", "ddim"])
def test_injected_latents_mean_unscaled_noise_like_seeded_ones(pipe: Pipeline, scheduler: str) -> None:
    """Latents given by the caller are the same kind of thing the seed draws: unscaled noise."""
    seeded = pipe("x", num_inference_steps=3, scheduler=scheduler, seed=8)
    noise = np.random.default_rng(8).standard_normal((4, 8, 8), dtype=np.float32)[None]
    injected = pipe("x", num_inference_steps=3, scheduler=scheduler, seed=8, latents=noise)
    assert seeded.images[0].tobytes() == injected.images[0].tobytes()


def test_long_prompt_is_truncated_with_a_warning_naming_the_count(pipe: Pipeline, caplog) -> None:
    prompt = ", ".join(["a red fox in the snow"] * 20)
    dropped = len(pipe.tokenizer.tokenize(prompt)) - 75
    with caplog.at_level(logging.WARNING, logger="diffship.runtime.pipeline"):
        pipe(prompt, num_inference_steps=1, seed=0)
    assert f"{dropped} were dropped" in caplog.text


def test_result_save_writes_pngs_with_parameters(pipe: Pipeline, tmp_path: Path) -> None:
    result = pipe(["a fox", "a cat"], negative_prompt="blurry", num_inference_steps=2, seed=3, scheduler="euler_a")
    paths = result.save(tmp_path / "out")
    assert [p.name for p in paths] == ["image-00-3.png", "image-01-4.png"]
    params = read_parameters(paths[1])
    assert params["prompt"] == "a cat" and params["negative_prompt"] == "blurry" and params["seed"] == 4
    assert params["scheduler"] == "euler_a" and params["steps"] == 2
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(paths[0])), result.images[0])


def test_fp16_precision_loads_the_fp16_export(tiny_package: Path) -> None:
    with Pipeline.from_package(tiny_package, precision="fp16", device="cpu") as pipe16:
        assert pipe16.engines["unet"].inputs[0].dtype == "float16"
        image = pipe16("a fox", num_inference_steps=2, seed=0).images[0]
    assert image.dtype == np.uint8 and image.shape == (64, 64, 3)


@pytest.mark.parametrize(
    "arguments,fragment",
    [
        ({"prompt": 3}, "prompt must be a string"),
        ({"prompt": []}, "empty list"),
        ({"prompt": ["a", 1]}, "prompt[1] must be a string, got int"),
        ({"prompt": ["a", "b"], "negative_prompt": ["x"]}, "negative_prompt has 1 entries but prompt has 2"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"num_inference_steps": 2.5}, "num_inference_steps"),
        ({"guidance_scale": float("nan")}, "guidance_scale must be finite"),
        ({"guidance_scale": -1.0}, "guidance_scale must be finite and >= 0"),
        ({"guidance_scale": "7"}, "guidance_scale must be a number"),
        ({"height": 100}, "not a multiple of 8 pixels"),
        ({"width": 0}, "width 0 is outside"),
        ({"height": 64.0}, "integer number of pixels"),
        ({"scheduler": "warp"}, "unknown scheduler 'warp'; known: ddim"),
        ({"scheduler": "DPM fast"}, "scheduler 'DPM fast' (no diffusers scheduler) is not implemented in this runtime"),
        ({"num_images_per_prompt": 0}, "num_images_per_prompt"),
        ({"seed": -1}, "seed must be an integer from 0 to"),
        ({"latents": np.zeros((1, 4, 8, 9), np.float32)}, "latents must be a numpy array of floats of shape (1, 4, 8, 8)"),
        ({"latents": np.full((1, 4, 8, 8), np.nan, np.float32)}, "NaN"),
        ({"num_inference_steps": 51, "scheduler": "lcm"}, "original_inference_steps"),
    ],
)
def test_bad_input_gets_a_clear_error(pipe: Pipeline, arguments: dict, fragment: str) -> None:
    call = {"prompt": "a fox", "num_inference_steps": 2, **arguments}
    with pytest.raises(PipelineInputError) as raised:
        pipe(**call)
    assert fragment in str(raised.value)


def test_latents_overflowing_stop_with_an_error_naming_the_step(pipe: Pipeline) -> None:
    # A finite (float64) guidance scale beyond float32 range: the real guidance arithmetic overflows on step 1.
    with pytest.raises(PipelineError, match=r"latents became NaN or infinite at step 1 of 3 .*guidance_scale 1e\+300"):
        pipe("a red fox", num_inference_steps=3, guidance_scale=1e300, seed=0, scheduler="ddim")


def test_eight_threads_on_onnx_runtime_give_the_images_of_one_by_one(pipe: Pipeline) -> None:
    calls = [{"prompt": f"a red fox {k}", "seed": k, "num_inference_steps": 3, "scheduler": "euler_a"} for k in range(8)]
    alone, together = images_alone_and_from_threads(pipe, calls)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(alone, together, strict=True))
