"""A bounded load test on localhost: hundreds of requests at once, mixed valid and invalid, some with short
deadlines, some whose clients hang up. Every request is accounted for: each client that waits gets exactly one answer
of the kind its request calls for, the server's own counts agree, and what succeeded is the right image."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest
from PIL import Image

from diffship.runtime import Pipeline
from tests.serve.conftest import metric, running_service, wait_for

REQUESTS = 240
CLIENTS = 24
OUTCOMES = {200: "ok", 422: "invalid", 429: "queue_full", 504: "deadline"}


def kind_of(index: int) -> str:
    return ("invalid", "invalid", "hang_up", "short_deadline", "valid", "valid", "valid", "valid", "valid",
            "a1111")[index % 10]


def body_of(index: int) -> dict[str, Any]:
    kind = kind_of(index)
    if kind == "invalid":
        return {"prompt": "a red fox", "size": "64x60"} if index % 20 else {"prompt": "a", "steps": 5000}
    if kind == "a1111":
        return {"prompt": f"a lighthouse {index}", "width": 64, "height": 64, "steps": 3, "seed": index}
    return {"prompt": f"a red fox {index % 7}", "size": "64x64", "steps": 3, "seed": index}


def send(url: str, index: int) -> int | str:
    """The status the client got, or ``hung up`` for the clients that leave without waiting."""
    kind = kind_of(index)
    path = "/sdapi/v1/txt2img" if kind == "a1111" else "/v1/images/generations"
    if kind == "hang_up":
        address = urlparse(url)
        payload = json.dumps(body_of(index)).encode()
        with socket.create_connection((address.hostname, address.port)) as connection:
            connection.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
                               f"{len(payload)}\r\n\r\n".encode() + payload)
            time.sleep(0.02)
        return "hung up"
    headers = {"X-Request-Timeout": "0.05"} if kind == "short_deadline" else {}
    response = httpx.post(url + path, json=body_of(index), headers=headers, timeout=120)
    if response.status_code == 200 and index % 25 == 4:
        RESPONSES[index] = response.json()
    return response.status_code


RESPONSES: dict[int, Any] = {}


def server_outcomes(text: str) -> Counter[str]:
    """The server's own count of requests by outcome, both APIs together."""
    return Counter({outcome: int(sum(metric(text, "diffship_requests_total", api=api, outcome=outcome)
                                     for api in ("openai", "a1111")))
                    for outcome in ("ok", "invalid", "queue_full", "deadline", "cancelled", "failed", "closed")})


@pytest.mark.slow
def test_hundreds_of_mixed_requests_are_each_answered_once(serve_pipe: Pipeline, tiny_package: Path) -> None:
    statuses: dict[int, int | str] = {}
    failures: list[BaseException] = []
    next_index = iter(range(REQUESTS))
    lock = threading.Lock()

    def client(url: str) -> None:
        while True:
            with lock:
                index = next(next_index, None)
            if index is None:
                return
            try:
                statuses[index] = send(url, index)
            except BaseException as exc:  # noqa: BLE001 - a request without an answer is what this test looks for
                failures.append(exc)

    with running_service(serve_pipe, tiny_package, max_batch=4, max_wait_s=0.01, max_queue=16) as (url, service):
        threads = [threading.Thread(target=client, args=(url,)) for _ in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        # Hung-up clients' requests may still be on their way through the server: wait until it has answered all.
        wait_for(lambda: server_outcomes(httpx.get(f"{url}/metrics").text).total() == REQUESTS)
        text = httpx.get(f"{url}/metrics").text

    assert not failures, failures[:3]
    assert len(statuses) == REQUESTS
    counts = Counter(statuses.values())
    for index, status in statuses.items():
        allowed = {"invalid": {422}, "hang_up": {"hung up"}, "short_deadline": {200, 429, 504}}.get(
            kind_of(index), {200, 429})
        assert status in allowed, (index, kind_of(index), status)
    server = server_outcomes(text)
    hung_up = counts["hung up"]  # the server still answers these (ok, 429, cancelled...), to nobody
    for status, outcome in OUTCOMES.items():
        assert counts[status] <= server[outcome] <= counts[status] + hung_up, (status, server)
    assert server["cancelled"] <= hung_up and server["failed"] == server["closed"] == 0
    assert sum(server.values()) == REQUESTS, f"the server saw {sum(server.values())} of {REQUESTS} requests: {server}"
    assert counts[200] >= REQUESTS // 5, counts
    print(f"\nload: sent {REQUESTS}; client side {dict(counts)}; server side {server}; lost 0")

    for index, answer in RESPONSES.items():  # what succeeded under load is the image a call alone gives
        b64 = answer["images"][0] if "images" in answer else answer["data"][0]["b64_json"]
        with Image.open(io.BytesIO(base64.b64decode(b64))) as image:
            pixels = np.asarray(image.convert("RGB"))
        body = body_of(index)
        expected = serve_pipe(body["prompt"], height=64, width=64, num_inference_steps=3, seed=body["seed"],
                              guidance_scale=7.0 if "images" in answer else 7.5)
        np.testing.assert_array_equal(pixels, expected.images[0])
