"""The HTTP service on a real socket: the official openai client and a plain HTTP client for AUTOMATIC1111's API get
the images Pipeline makes for the same seed; bad input answers 422 with the Python API's message; a full queue 429
with Retry-After; a deadline 504; a client that disconnects has its queued work withdrawn; health, readiness and
metrics."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from diffship.runtime import Pipeline
from diffship.runtime.errors import PipelineInputError
from diffship.runtime.images import read_parameters
from tests.serve.conftest import metric, running_service, wait_for


def decode(b64: str) -> tuple[np.ndarray, dict[str, Any]]:
    raw = base64.b64decode(b64)
    with Image.open(io.BytesIO(raw)) as image:
        pixels = np.asarray(image.convert("RGB"))
    return pixels, read_parameters(io.BytesIO(raw))


def test_openai_client_gets_the_pipelines_images(serve_pipe: Pipeline, tiny_package: Path) -> None:
    with running_service(serve_pipe, tiny_package) as (url, _):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="not-checked", max_retries=0)
        response = client.images.generate(
            model="tiny", prompt="a red fox in the snow", n=2, size="64x64", response_format="b64_json",
            extra_body={"steps": 4, "seed": 3, "guidance_scale": 5.0, "negative_prompt": "blurry"})
    expected = serve_pipe("a red fox in the snow", negative_prompt="blurry", num_inference_steps=4, seed=3,
                          guidance_scale=5.0, num_images_per_prompt=2, height=64, width=64)
    assert response.data is not None and len(response.data) == 2
    for item, image, parameters in zip(response.data, expected.images, expected.parameters, strict=True):
        assert item.b64_json is not None
        pixels, recorded = decode(item.b64_json)
        np.testing.assert_array_equal(pixels, image)
        assert recorded == parameters  # generation parameters travel in every PNG


def test_openai_client_sees_our_errors_as_api_errors(serve_pipe: Pipeline, tiny_package: Path) -> None:
    with running_service(serve_pipe, tiny_package) as (url, _):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="not-checked", max_retries=0)
        with pytest.raises(openai.UnprocessableEntityError) as refused:
            client.images.generate(prompt="a fox", size="60x64", response_format="b64_json")
    assert "width 60 is not a multiple of 8" in str(refused.value)


def test_a1111_txt2img_gets_the_pipelines_images_and_seeds(serve_pipe: Pipeline, tiny_package: Path) -> None:
    body = {"prompt": "a lighthouse", "negative_prompt": "fog", "steps": 3, "cfg_scale": 6, "width": 64, "height": 64,
            "seed": 40, "sampler_name": "DPM++ 2M", "scheduler": "Karras", "batch_size": 2, "n_iter": 2,
            "restore_faces": False, "override_settings": {}}
    with running_service(serve_pipe, tiny_package) as (url, _):
        response = httpx.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=120)
        samplers = httpx.get(f"{url}/sdapi/v1/samplers").json()
    assert response.status_code == 200, response.text
    answer = response.json()
    info = json.loads(answer["info"])
    expected = serve_pipe("a lighthouse", negative_prompt="fog", num_inference_steps=3, guidance_scale=6, seed=40,
                          scheduler="DPM++ 2M Karras", num_images_per_prompt=4, height=64, width=64)
    assert info["all_seeds"] == [40, 41, 42, 43] == expected.seeds
    assert info["infotexts"][0].startswith("a lighthouse\nNegative prompt: fog\nSteps: 3, Sampler: DPM++ 2M Karras")
    for b64, image in zip(answer["images"], expected.images, strict=True):
        np.testing.assert_array_equal(decode(b64)[0], image)
    assert answer["parameters"] == body
    assert {"name": "DPM++ 2M Karras", "aliases": ["dpmpp_2m_karras"], "options": {}} in samplers


def png_b64(image: Image.Image) -> str:
    encoded = io.BytesIO()
    image.save(encoded, format="PNG")
    return base64.b64encode(encoded.getvalue()).decode("ascii")


@pytest.mark.parametrize("masked", [False, True], ids=["img2img", "inpaint"])
def test_a1111_img2img_gets_the_pipelines_images(serve_pipe: Pipeline, tiny_package: Path, masked: bool) -> None:
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (72, 64, 3), dtype=np.uint8))
    mask = Image.fromarray(np.where(np.hypot(*np.mgrid[-36:36, -32:32]) < 20, 255, 0).astype(np.uint8))
    body: dict[str, Any] = {"prompt": "an oil painting", "init_images": [png_b64(picture)], "denoising_strength": 0.6,
                            "steps": 5, "cfg_scale": 7.5, "seed": 3, "sampler_name": "Euler a", "mask_blur": 4}
    python: dict[str, Any] = {"strength": 0.6}
    if masked:
        body |= {"mask": "data:image/png;base64," + png_b64(Image.fromarray(255 - np.asarray(mask))),
                 "inpainting_mask_invert": 1, "inpaint_full_res": True, "inpaint_full_res_padding": 8}
        python |= {"mask_image": mask, "padding_mask_crop": 8}
    with running_service(serve_pipe, tiny_package) as (url, _):
        response = httpx.post(f"{url}/sdapi/v1/img2img", json=body, timeout=120)
    assert response.status_code == 200, response.text
    expected = serve_pipe("an oil painting", image=picture, num_inference_steps=5, guidance_scale=7.5, seed=3,
                          scheduler="Euler a", **python)
    pixels, recorded = decode(response.json()["images"][0])
    np.testing.assert_array_equal(pixels, expected.images[0])
    assert recorded["task"] == ("inpaint" if masked else "img2img") and recorded["strength"] == 0.6
    assert response.json()["parameters"]["init_images"] is None  # not echoed back


@pytest.mark.parametrize(
    ("path", "body", "python_call"),
    [
        ("/v1/images/generations", {"prompt": "a", "steps": 0}, {"num_inference_steps": 0}),
        ("/v1/images/generations", {"prompt": "a", "scheduler": "karras_magic"}, {"scheduler": "karras_magic"}),
        ("/sdapi/v1/txt2img", {"prompt": "a", "width": 65}, {"width": 65}),
        ("/sdapi/v1/txt2img", {"prompt": "a", "cfg_scale": -1}, {"guidance_scale": -1}),
    ],
)
def test_invalid_input_answers_422_with_the_python_apis_message(
    serve_pipe: Pipeline, tiny_package: Path, path: str, body: dict[str, Any], python_call: dict[str, Any]
) -> None:
    with pytest.raises(PipelineInputError) as python_error:
        serve_pipe.prepare("a", **python_call)
    with running_service(serve_pipe, tiny_package) as (url, _):
        response = httpx.post(url + path, json=body)
    assert response.status_code == 422
    assert str(python_error.value) in response.text


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/v1/images/generations", {"prompt": "a", "response_format": "url"}, "response_format must be b64_json"),
        ("/v1/images/generations", {"prompt": "a", "n": 11}, "n must be from 1 to 10"),
        ("/v1/images/generations", {"prompt": "a", "colour": "red"}, "unknown field(s) colour"),
        ("/v1/images/generations", {"n": 1}, "prompt is required"),
        ("/sdapi/v1/txt2img", {"prompt": "a", "restore_faces": True}, "face restoration is not supported"),
        ("/sdapi/v1/txt2img", {"prompt": "a", "sampler_name": "DPM fast"}, "not implemented here"),
        ("/sdapi/v1/txt2img", {"prompt": "a", "steps": "20"}, "steps must be an integer, got a string"),
        ("/sdapi/v1/txt2img", [1, 2], "must be a JSON object"),
        ("/sdapi/v1/img2img", {"prompt": "a"}, "init_images must be a list of exactly one"),
        ("/sdapi/v1/img2img", {"prompt": "a", "init_images": ["bm90IGFuIGltYWdl"]},
         "init_images[0] must be a PNG, JPEG or WebP image"),
    ],
)
def test_request_shape_errors_answer_422_naming_the_field(
    serve_pipe: Pipeline, tiny_package: Path, path: str, body: Any, message: str
) -> None:
    with running_service(serve_pipe, tiny_package) as (url, _):
        response = httpx.post(url + path, json=body)
        broken = httpx.post(url + path, content=b"{not json")
    assert response.status_code == 422 and message in response.text
    assert broken.status_code == 422 and "not valid JSON" in broken.text


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"prompt": "a", "steps": 3, "s_noise": Infinity}', "holds Infinity, which JSON does not have"),
        (b'{"prompt": "a", "cfg_scale": NaN}', "holds NaN"),
        ('{"prompt": "a", "size": "\u00b2x8"}'.encode(), "size must be WIDTHxHEIGHT"),
    ],
)
def test_bodies_python_reads_but_json_forbids_answer_422(serve_pipe: Pipeline, tiny_package: Path, raw: bytes,
                                                          message: str) -> None:
    path = "/v1/images/generations" if b"size" in raw else "/sdapi/v1/txt2img"
    with running_service(serve_pipe, tiny_package) as (url, _):
        response = httpx.post(url + path, content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and message in response.text, response.text


def test_a1111_accepts_line_wrapped_base64(serve_pipe: Pipeline, tiny_package: Path) -> None:
    picture = Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    encoded = png_b64(picture)
    wrapped = "\n".join(encoded[k : k + 76] for k in range(0, len(encoded), 76))  # what `base64 file.png` writes
    body = {"prompt": "a", "init_images": [wrapped], "steps": 2, "seed": 1}
    with running_service(serve_pipe, tiny_package) as (url, _):
        response = httpx.post(f"{url}/sdapi/v1/img2img", json=body, timeout=60)
    assert response.status_code == 200, response.text
    assert json.loads(response.json()["info"])["sampler_name"] == "PLMS"  # the package's PNDM, by the web UI's name


def test_full_queue_answers_429_with_retry_after_and_deadline_504(serve_pipe: Pipeline, tiny_package: Path) -> None:
    release = threading.Event()
    with running_service(serve_pipe, tiny_package, max_batch=1, max_wait_s=0.0, max_queue=1) as (url, service):
        assert service.batcher is not None
        blocker = service.batcher.submit(serve_pipe.prepare("hold", num_inference_steps=2,
                                                            callback=lambda *a: release.wait(60)))
        threading.Timer(50, release.set).start()  # a failing assertion below must not leave the worker held
        wait_for(lambda: service.batcher is not None and service.batcher.running_images == 1)
        body = {"prompt": "a", "steps": 2, "size": "64x64"}
        with httpx.Client(timeout=60) as client:
            late = client.post(f"{url}/v1/images/generations", json=body, headers={"X-Request-Timeout": "0.3"})
            assert late.status_code == 504 and "deadline" in late.text
            queued = threading.Thread(target=lambda: client.post(f"{url}/v1/images/generations", json=body))
            queued.start()
            wait_for(lambda: service.batcher is not None and service.batcher.queue_depth == 1)
            full = client.post(f"{url}/v1/images/generations", json=body)
            release.set()
            queued.join(60)
            metrics = client.get(f"{url}/metrics").text
        blocker.result(60)
    assert full.status_code == 429 and int(full.headers["Retry-After"]) >= 1
    assert "queue is full" in full.json()["error"]["message"]
    assert metric(metrics, "diffship_requests_total", api="openai", outcome="queue_full") == 1
    assert metric(metrics, "diffship_requests_total", api="openai", outcome="deadline") == 1
    assert metric(metrics, "diffship_requests_total", api="openai", outcome="ok") == 1


def test_a_client_that_disconnects_has_its_queued_work_withdrawn(serve_pipe: Pipeline, tiny_package: Path) -> None:
    release = threading.Event()
    with running_service(serve_pipe, tiny_package, max_batch=1, max_wait_s=0.0) as (url, service):
        batcher = service.batcher
        assert batcher is not None
        blocker = batcher.submit(serve_pipe.prepare("hold", num_inference_steps=2, callback=lambda *a: release.wait(60)))
        try:
            wait_for(lambda: batcher.running_images == 1)
            send_and_hang_up(url, "/v1/images/generations", {"prompt": "never drawn", "steps": 2, "size": "64x64"},
                             until=lambda: batcher.queue_depth == 1)
            wait_for(lambda: metric(httpx.get(f"{url}/metrics").text, "diffship_requests_total", api="openai",
                                    outcome="cancelled") == 1)
            assert batcher.queue_depth == 0  # its place is free before the worker comes back
        finally:
            release.set()
        blocker.result(60)
        metrics = httpx.get(f"{url}/metrics").text
    assert metric(metrics, "diffship_batch_calls_count") == 1  # only the blocker ever ran


def test_health_readiness_and_metrics(serve_pipe: Pipeline, tiny_package: Path) -> None:
    with running_service(serve_pipe, tiny_package, warmup=True) as (url, service):
        assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
        ready = httpx.get(f"{url}/readyz")
        ok = httpx.post(f"{url}/v1/images/generations", json={"prompt": "a", "steps": 2, "size": "64x64"}, timeout=60)
        metrics = httpx.get(f"{url}/metrics")
        service.stop()
        draining = httpx.get(f"{url}/readyz")
        refused = httpx.post(f"{url}/v1/images/generations", json={"prompt": "a"})
    assert ready.status_code == 200 and ready.headers["X-Diffship-Replica"] == service.replica
    assert ok.status_code == 200
    text = metrics.text
    assert metrics.headers["content-type"].startswith("text/plain")
    assert metric(text, "diffship_images_total") == 1
    assert metric(text, "diffship_stage_seconds_count", stage="unet") >= 1
    assert metric(text, "diffship_batch_images_count") >= 1 and "diffship_queue_depth 0.0" in text
    assert metric(text, "diffship_images_per_second") > 0
    assert draining.status_code == 503 and "shutting down" in draining.text
    assert refused.status_code == 503 and refused.headers["Retry-After"]


def send_and_hang_up(url: str, path: str, body: dict[str, Any], until: Any) -> None:
    """Send a request on a raw socket and close the connection once ``until()`` holds (a client that went away)."""
    address = urlparse(url)
    payload = json.dumps(body).encode()
    with socket.create_connection((address.hostname, address.port)) as connection:
        connection.sendall(f"POST {path} HTTP/1.1\r\nHost: {address.hostname}\r\nContent-Type: application/json\r\n"
                           f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        wait_for(until)


def test_a_service_that_cannot_start_says_why_on_readyz(tmp_path: Path) -> None:
    from diffship.serve.app import create_app
    from diffship.serve.local import serve_in_thread
    from diffship.serve.service import ImageService, ServeConfig

    with pytest.raises(RuntimeError, match="failed to start: .*manifest"):
        with serve_in_thread(create_app(ImageService(ServeConfig(package=tmp_path, warmup=False)))):
            pass


def test_openai_extensions_carry_the_guidance_schedule(serve_pipe: Pipeline, tiny_package: Path) -> None:
    """``guidance_cutoff`` and ``guidance_interval`` reach the pipeline under the Python API's names (README "Fewer
    FLOPs"); a bad value answers 422 with the Python API's message, which names the same field."""
    schedule = {"guidance_cutoff": 0.5, "guidance_interval": [0.5, 20.0]}
    with running_service(serve_pipe, tiny_package) as (url, _):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="not-checked", max_retries=0)
        response = client.images.generate(prompt="a red fox", size="64x64", response_format="b64_json",
                                          extra_body={"steps": 4, "seed": 3, **schedule})
        with pytest.raises(openai.UnprocessableEntityError) as refused:
            client.images.generate(prompt="a fox", size="64x64", response_format="b64_json",
                                   extra_body={"guidance_cutoff": 2})
    expected = serve_pipe("a red fox", num_inference_steps=4, seed=3, height=64, width=64, guidance_cutoff=0.5,
                          guidance_interval=(0.5, 20.0))
    plain = serve_pipe("a red fox", num_inference_steps=4, seed=3, height=64, width=64)
    assert response.data is not None and response.data[0].b64_json is not None
    pixels, _ = decode(response.data[0].b64_json)
    np.testing.assert_array_equal(pixels, expected.images[0])
    assert not np.array_equal(pixels, plain.images[0])  # the schedule changed the image
    assert "guidance_cutoff" in str(refused.value)
