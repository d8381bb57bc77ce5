"""The service as a Ray Serve deployment on a real local Ray instance: two CPU replicas of tiny share the requests,
give the images Pipeline gives, and a replica killed during a load run loses no accepted request (each one is
answered: done by the other replica, or failed with a clear status)."""

from __future__ import annotations

import base64
import io
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from diffship.runtime import Pipeline
from diffship.runtime.batching import BatchSettings
from diffship.serve.service import ServeConfig
from tests.serve.conftest import metric

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def ray_url() -> Iterator[str]:
    from diffship.serve.ray_app import ray_serve

    with ray_serve(num_cpus=2) as url:  # replicas get this process's DIFFSHIP_CACHE
        yield url


def replica_pids() -> list[int]:
    """The image replicas' processes, by the title Ray gives them (``ray::ServeReplica:diffship:diffship-images``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            title = (entry / "cmdline").read_bytes() if entry.name.isdigit() else b""
        except OSError:
            continue
        if b"ServeReplica:diffship:diffship-images" in title:
            pids.append(int(entry.name))
    assert pids, "no image replica process found"
    return sorted(pids)


def generate(url: str, seed: int, steps: int = 3) -> httpx.Response:
    body = {"prompt": "a red fox", "size": "64x64", "steps": steps, "seed": seed}
    return httpx.post(f"{url}/v1/images/generations", json=body, timeout=120)


def in_parallel(url: str, seeds: list[int], steps: int, during: Any = None) -> list[httpx.Response | Exception]:
    outcomes: list[httpx.Response | Exception] = [RuntimeError("never ran")] * len(seeds)
    answered = threading.Semaphore(0)

    def run(index: int) -> None:
        try:
            outcomes[index] = generate(url, seeds[index], steps)
        except Exception as exc:  # noqa: BLE001 - recorded: an exception is a request without an answer
            outcomes[index] = exc
        answered.release()

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(seeds))]
    for thread in threads:
        thread.start()
    if during is not None:
        during(answered)
    for thread in threads:
        thread.join(180)
    return outcomes


def test_two_replicas_share_requests_and_a_killed_one_loses_none(
    ray_url: str, tiny_package: Path, serve_pipe: Pipeline
) -> None:
    from ray import serve

    from diffship.serve.ray_app import application

    config = ServeConfig(package=tiny_package, threads=1, warmup=False,
                         batch=BatchSettings(max_batch=2, max_wait_s=0.01, max_queue=32))
    serve.run(application(config, replicas=2), name="diffship", route_prefix="/")

    spread = in_parallel(ray_url, list(range(12)), steps=3)
    assert all(isinstance(r, httpx.Response) and r.status_code == 200 for r in spread), spread
    replicas = {r.headers["X-Diffship-Replica"] for r in spread if isinstance(r, httpx.Response)}
    assert len(replicas) == 2, f"every request went to {replicas}"
    first = spread[0]
    assert isinstance(first, httpx.Response)
    with Image.open(io.BytesIO(base64.b64decode(first.json()["data"][0]["b64_json"]))) as image:
        expected = serve_pipe("a red fox", height=64, width=64, num_inference_steps=3, seed=0).images[0]
        np.testing.assert_array_equal(np.asarray(image.convert("RGB")), expected)
    # The replicas' batches, summed at the gateway: every image and call of the 12 in some batch of at most 2.
    gateway = httpx.get(f"{ray_url}/metrics").text
    batches = metric(gateway, "diffship_batch_images_count")
    assert metric(gateway, "diffship_batch_images_sum") == 12 and metric(gateway, "diffship_batch_calls_sum") == 12
    assert 6 <= batches <= 12 and metric(gateway, "diffship_stage_seconds_count", stage="unet") == batches
    assert metric(gateway, "diffship_queue_wait_seconds_count") == 12

    victim = replica_pids()[0]  # X-Diffship-Replica is opaque: the process titles Ray sets name the replicas

    def kill_one_replica(answered: threading.Semaphore) -> None:
        for _ in range(2):  # two answers in: the load is running and both replicas hold queued requests
            answered.acquire(timeout=120)
        os.kill(victim, signal.SIGKILL)

    outcomes = in_parallel(ray_url, list(range(100, 124)), steps=40, during=kill_one_replica)
    unanswered = [o for o in outcomes if not isinstance(o, httpx.Response)]
    assert not unanswered, f"requests with no answer: {unanswered}"
    answered = [o for o in outcomes if isinstance(o, httpx.Response)]
    statuses = sorted(r.status_code for r in answered)
    assert set(statuses) <= {200, 500, 503}, statuses
    assert statuses.count(200) >= 1
    for response in answered:
        if response.status_code == 200:  # the retried ones too: same seed, same image as the first try would give
            assert response.json()["data"][0]["b64_json"]
    failures = [r.text for r in answered if r.status_code != 200]
    assert all(failures), "a failed request must say why"
    lost = [r for r in answered if r.status_code == 500]
    assert lost, "the kill hit no request in flight: the replica-lost path went untested"
    # The requests the dead replica held are not sent again (any of them may have killed it): 500 naming the cause.
    assert all("not sent again" in r.json()["error"]["message"] for r in lost)
    metrics = httpx.get(f"{ray_url}/metrics").text
    assert metric(metrics, "diffship_requests_total", api="openai", outcome="replica_lost") == len(lost)
    print(f"\nreplica {victim} killed during 24 requests: {statuses.count(200)} succeeded, {len(failures)} failed with "
          f"a status ({sorted(set(statuses))}), 0 unanswered, none sent again")

    deadline = time.monotonic() + 120
    while True:  # Ray replaces the dead replica; the service answers again
        response = generate(ray_url, 7)
        if response.status_code == 200:
            break
        assert time.monotonic() < deadline, response.text
        time.sleep(1)
