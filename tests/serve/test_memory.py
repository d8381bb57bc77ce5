"""Admission by memory (serve/memory.py) on ``tiny``: the model fitted from measured peaks does not under-predict a
larger size; with a small ``memory_budget`` a size that cannot fit answers 413 naming the largest that does, and the
server stays up; calls larger than a batch run in pieces of at most ``max_batch`` images (batch_size x n_iter), with
the images the pipeline gives the whole call."""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from diffship.runtime import Pipeline
from diffship.serve.memory import GiB, MemoryModel, fit, measure
from tests.serve.conftest import metric, running_service


def test_fit_recovers_linear_and_square_terms_and_never_goes_negative() -> None:
    model = fit([(p, int(1000 * p + 0.01 * p * p)) for p in (36864, 65536, 102400)])
    assert model.per_pixel == pytest.approx(1000, rel=1e-6) and model.per_pixel_squared == pytest.approx(0.01, rel=1e-6)
    shrinking = fit([(100, 1000), (200, 1100), (300, 1150)])  # concave: no negative square term
    assert shrinking.per_pixel > 0 and shrinking.per_pixel_squared == 0


@pytest.fixture(scope="module")
def tiny_model(serve_pipe: Pipeline) -> MemoryModel:
    model = measure(lambda side: serve_pipe("m", num_inference_steps=1, guidance_scale=7.5, seed=0, height=side,
                                            width=side))
    assert model is not None, "this test needs Linux's /proc/self/clear_refs"
    return model


def test_the_measured_model_does_not_under_predict_a_larger_size(serve_pipe: Pipeline, tiny_model: MemoryModel) -> None:
    [(pixels, grown)] = measure(lambda side: serve_pipe("m", num_inference_steps=1, guidance_scale=7.5, seed=0,
                                                        height=side, width=side), sides=(384,)).points  # type: ignore[union-attr]
    assert pixels == 384 * 384 and grown > 0
    assert tiny_model.need(384, 384) >= grown


def test_a_size_over_the_budget_answers_413_naming_the_largest_that_fits(
        serve_pipe: Pipeline, tiny_package: Path, tiny_model: MemoryModel) -> None:
    budget = tiny_model.need(256, 256)
    with running_service(serve_pipe, tiny_package, memory_budget=budget, memory_model=tiny_model) as (url, _):
        refused = httpx.post(f"{url}/v1/images/generations", json={"prompt": "a fox", "size": "1024x1024", "steps": 1},
                             timeout=60)
        alive = httpx.get(f"{url}/healthz")
        fits = httpx.post(f"{url}/v1/images/generations", json={"prompt": "a fox", "size": "256x256", "steps": 1},
                          timeout=60)
    assert refused.status_code == 413, refused.text
    side = tiny_model.largest_side(budget)
    assert side >= 256 and f"the largest square size that fits is {side}x{side}" in refused.json()["error"]["message"]
    assert alive.status_code == 200 and fits.status_code == 200


def pixels_of(b64: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(b64))) as image:
        return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize("budget_images", [None, 2])
def test_a_call_over_a_batch_runs_in_pieces_with_the_same_images(
        serve_pipe: Pipeline, tiny_package: Path, tiny_model: MemoryModel, budget_images: int | None) -> None:
    """batch_size 3 x n_iter 2 = 6 images: max_batch 4 (or a budget of 2 images) cuts it into batches no larger."""
    budget = tiny_model.need(64, 64, budget_images) if budget_images else 8 * GiB
    body = {"prompt": "a fox", "batch_size": 3, "n_iter": 2, "steps": 2, "seed": 11, "width": 64, "height": 64}
    with running_service(serve_pipe, tiny_package, max_batch=4, memory_budget=budget,
                         memory_model=tiny_model) as (url, service):
        answer = httpx.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=120)
        text = service.metrics_text().decode()
    assert answer.status_code == 200, answer.text
    expected = serve_pipe("a fox", num_inference_steps=2, seed=11, num_images_per_prompt=6, height=64, width=64,
                          guidance_scale=7.0)
    assert len(answer.json()["images"]) == 6
    for b64, image in zip(answer.json()["images"], expected.images, strict=True):
        np.testing.assert_array_equal(pixels_of(b64), image)
    most = min(4, budget_images or 4)
    runs = metric(text, "diffship_run_images_count")
    assert runs >= math.ceil(6 / most) and metric(text, "diffship_run_images_sum") == 6
    assert metric(text, "diffship_run_images_bucket", le=f"{float(most)}") == runs  # none larger than `most`
