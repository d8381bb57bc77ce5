"""A running image service over the tiny package, shared by the serve tests (uvicorn in a thread, a real socket)."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from diffship.runtime import Pipeline
from diffship.runtime.batching import BatchSettings
from diffship.serve.app import create_app
from diffship.serve.limits import DoorLimits
from diffship.serve.local import serve_in_thread
from diffship.serve.security import SecurityPolicy
from diffship.serve.service import ImageService, ServeConfig


@pytest.fixture(scope="session")
def serve_pipe(tiny_package: Path) -> Pipeline:
    return Pipeline.from_package(tiny_package, device="cpu", threads=1)


@contextlib.contextmanager
def running_service(pipe: Pipeline, package: Path, **settings: object) -> Iterator[tuple[str, ImageService]]:
    batch = BatchSettings(**{k: v for k, v in settings.items() if k in ("max_batch", "max_wait_s", "max_queue")})
    door = settings.get("door", DoorLimits())
    assert isinstance(door, DoorLimits)
    config = ServeConfig(package=package, batch=batch, timeout_s=float(settings.get("timeout_s", 60.0)),  # type: ignore[arg-type]
                         warmup=bool(settings.get("warmup", False)), door=door,
                         memory_budget=settings.get("memory_budget"),  # type: ignore[arg-type]
                         memory_model=settings.get("memory_model"),  # type: ignore[arg-type]
                         security=settings.get("security", SecurityPolicy()))  # type: ignore[arg-type]
    service = ImageService(config, pipeline=pipe)
    keys = sorted(config.security.api_keys)
    headers = {"authorization": f"Bearer {keys[0]}"} if keys else None
    with serve_in_thread(create_app(service), read_timeout_s=door.read_timeout_s, headers=headers) as url:
        yield url, service


def metric(text: str, name: str, **labels: str) -> float:
    """One sample's value from Prometheus text (0 when absent)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if wanted else "") + r" (\S+)$"
    for line in text.splitlines():
        found = re.match(pattern, line)
        if found:
            return float(found.group(1))
    return 0.0


def wait_for(condition: object, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)
