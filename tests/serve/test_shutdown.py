"""``cli.py serve`` as a user runs it, in a subprocess: SIGTERM stops taking connections and finishes the requests
it accepted before exiting; nothing accepted is lost."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.serve.conftest import metric

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.slow
def test_sigterm_drains_accepted_requests_and_refuses_new_ones(tiny_package: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "serve", "--package", str(tiny_package), "--port", str(port),
         "--max-batch", "1", "--threads", "1", "--no-warmup"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.1)

        answers: list[int | str] = []

        def request(seed: int) -> None:
            body = {"prompt": "a red fox", "size": "128x128", "steps": 20, "seed": seed}  # about a second each
            try:
                answers.append(httpx.post(f"{url}/v1/images/generations", json=body, timeout=120).status_code)
            except httpx.TransportError as exc:
                answers.append(type(exc).__name__)

        clients = [threading.Thread(target=request, args=(seed,)) for seed in range(4)]
        for client in clients:
            client.start()
        while metric(httpx.get(f"{url}/metrics").text, "diffship_queue_depth") < 2:  # one running, more queued
            assert time.monotonic() < deadline
            time.sleep(0.02)
        server.send_signal(signal.SIGTERM)
        time.sleep(1.0)  # uvicorn closes its listening socket first thing
        with pytest.raises(httpx.TransportError):
            httpx.post(f"{url}/v1/images/generations", json={"prompt": "too late"}, timeout=5)
        for client in clients:
            client.join(120)
        output, _ = server.communicate(timeout=120)
    finally:
        if server.poll() is None:
            os.kill(server.pid, signal.SIGKILL)
    assert answers == [200] * 4, f"accepted requests must all finish: {answers}\n{output}"
    assert server.returncode in (0, 143), output
