"""The limits at the service's door on a real socket (serve/limits.py, serve/protocol.py): bodies over the limit
413, JSON too deep, too wide or with huge integers 422 naming the place, never a 500 or a logged traceback; slow
headers and bodies cut off; a client hanging up mid-upload counted and logged as one line; unknown routes answer
JSON; nothing in an answer names the host, the PID or the package's absolute path."""

from __future__ import annotations

import base64
import io
import logging
import os
import socket
import time
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest
from PIL import Image

from diffship.core.package import ModelPackage
from diffship.engines.backend import register_backend
from diffship.runtime import Pipeline
from diffship.serve.app import create_app
from diffship.serve.limits import DoorLimits
from diffship.serve.local import serve_in_thread
from diffship.serve.service import ImageService, ServeConfig
from tests.fakes import TINY, NumpyBackend, write_package
from tests.serve.conftest import metric, running_service, wait_for

SMALL = DoorLimits(max_body_bytes=64 * 1024, read_timeout_s=1.0)


def connect(url: str) -> socket.socket:
    parsed = urlparse(url)
    return socket.create_connection((parsed.hostname, parsed.port), timeout=10)


def test_a_body_over_the_limit_answers_413(serve_pipe: Pipeline, tiny_package: Path) -> None:
    with running_service(serve_pipe, tiny_package, door=SMALL) as (url, _):
        declared = httpx.post(f"{url}/v1/images/generations", content=b"x" * (SMALL.max_body_bytes + 1),
                              headers={"content-type": "application/json"})

        def chunks():
            yield b'{"prompt": "' + b"x" * SMALL.max_body_bytes
            yield b'"}'

        streamed = httpx.post(f"{url}/v1/images/generations", content=chunks())  # chunked: no Content-Length
    for answer in (declared, streamed):
        assert answer.status_code == 413, answer.text
        assert f"at most {SMALL.max_body_bytes}" in answer.text or "over 65536 bytes" in answer.text


@pytest.mark.parametrize("raw,fragment", [
    (b'{"prompt": "a fox", "seed": ' + b"7" * 5000 + b"}", "seed is an integer of 5000 digits"),
    (b'{"prompt": "a fox", "n": ' + b"[" * 2000 + b"]" * 2000 + b"}", "too deep"),
    (b'{"prompt": "a fox", "extra": ' + b"[" * 20 + b"]" * 20 + b"}", "nests arrays and objects 17 deep"),
    (b'{"prompt": "a fox", "extra": [' + b",".join([b"1"] * 5000) + b"]}", "extra has 5000 entries"),
    (b'{"prompt": "a fox", "extra": {"list": [0, 1e999]}}', "extra.list[1] is a number too large"),
])
def test_hostile_json_answers_422_naming_the_place(serve_pipe: Pipeline, tiny_package: Path, raw: bytes,
                                                   fragment: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO), running_service(serve_pipe, tiny_package) as (url, _):
        answer = httpx.post(f"{url}/v1/images/generations", content=raw, headers={"content-type": "application/json"})
    assert answer.status_code == 422, answer.text
    assert fragment in answer.json()["error"]["message"]
    assert not [record for record in caplog.records if record.exc_info]  # no traceback logged


def test_unknown_routes_answer_json_404(serve_pipe: Pipeline, tiny_package: Path) -> None:
    with running_service(serve_pipe, tiny_package) as (url, _):
        missing = httpx.get(f"{url}/sdapi/v1/no-such-route")
        wrong_method = httpx.get(f"{url}/v1/images/generations")
    assert missing.status_code == 404 and missing.json()["detail"] == "Not Found"
    assert "/sdapi/v1/no-such-route" in missing.json()["error"]["message"]
    assert wrong_method.status_code == 405 and wrong_method.json()["detail"] == "Method Not Allowed"


def test_answers_name_no_host_pid_or_absolute_path(tmp_path: Path) -> None:
    root = write_package(tmp_path / "pkg", replace(TINY, spatial_multiple=8))
    package = ModelPackage.open(root)
    components = {k: v for k, v in package.manifest.components.items() if k != "vae_encoder"}
    package.write_manifest(replace(package.manifest, components=components))
    backend = NumpyBackend()
    register_backend("numpy", lambda: backend)
    pipe = Pipeline.from_package(root, backend="numpy")
    service = ImageService(ServeConfig(package=root, warmup=False), pipeline=pipe)
    png = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(png, format="PNG")
    body = {"prompt": "x", "steps": 2, "init_images": [base64.b64encode(png.getvalue()).decode()]}
    with serve_in_thread(create_app(service)) as url:
        answer = httpx.post(f"{url}/sdapi/v1/img2img", json=body)
    assert answer.status_code == 422 and "no VAE encoder" in answer.text
    assert str(tmp_path) not in answer.text and "package 'pkg'" in answer.text
    replica = answer.headers["X-Diffship-Replica"]
    assert os.uname().nodename not in replica and str(os.getpid()) not in replica


def test_a_client_hanging_up_mid_upload_is_counted_and_logged_as_one_line(
        serve_pipe: Pipeline, tiny_package: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO), running_service(serve_pipe, tiny_package) as (url, service):
        with connect(url) as client:
            client.sendall(b"POST /v1/images/generations HTTP/1.1\r\nHost: localhost\r\n"
                           b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"prompt\": \"a")
            time.sleep(0.3)
        wait_for(lambda: metric(service.metrics_text().decode(), "diffship_disconnects_total", stage="upload") == 1)
    assert not [record for record in caplog.records if record.exc_info]
    assert len([record for record in caplog.records if "hung up" in record.getMessage()]) == 1


def test_slow_headers_and_bodies_are_cut_off(serve_pipe: Pipeline, tiny_package: Path) -> None:
    with running_service(serve_pipe, tiny_package, door=SMALL) as (url, _):
        with connect(url) as slow_headers:
            slow_headers.sendall(b"POST /v1/images/generations HTTP/1.1\r\nHost: local")
            started = time.monotonic()
            assert slow_headers.recv(1024) == b""  # closed by the server, nothing answered
            assert time.monotonic() - started < 5 * SMALL.read_timeout_s
        with connect(url) as slow_body:
            slow_body.sendall(b"POST /v1/images/generations HTTP/1.1\r\nHost: localhost\r\n"
                              b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"prompt\": ")
            answer = slow_body.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"not sent within 1s" in answer


def test_uploads_in_other_formats_are_refused_on_every_image_route(serve_pipe: Pipeline, tiny_package: Path) -> None:
    """The web UI's img2img and OpenAI's edits decode through serve/images.py: a BMP (which PIL opens) is 422 naming
    the client's field, and a multipart edit or an options body over the body limit is 413 before it is read."""
    bmp = io.BytesIO()
    Image.new("RGB", (64, 64)).save(bmp, format="BMP")
    encoded = base64.b64encode(bmp.getvalue()).decode()
    with running_service(serve_pipe, tiny_package, door=SMALL) as (url, _):
        img2img = httpx.post(f"{url}/sdapi/v1/img2img", json={"prompt": "a fox", "init_images": [encoded],
                                                              "width": 64, "height": 64, "steps": 2})
        edit = httpx.post(f"{url}/v1/images/edits", data={"prompt": "a fox"},
                          files={"image": ("fox.bmp", bmp.getvalue(), "image/bmp")})
        big_form = httpx.post(f"{url}/v1/images/edits", data={"prompt": "a fox"},
                              files={"image": ("fox.png", b"x" * (SMALL.max_body_bytes + 1), "image/png")})
        big_options = httpx.post(f"{url}/sdapi/v1/options", content=b"x" * (SMALL.max_body_bytes + 1))
    assert img2img.status_code == 422 and "init_images[0] must be a PNG, JPEG or WebP image" in img2img.text
    assert edit.status_code == 422 and "image must be a PNG, JPEG or WebP image" in edit.text, edit.text
    assert big_form.status_code == 413 and "65536 bytes" in big_form.text, big_form.text
    assert big_options.status_code == 413, big_options.text
