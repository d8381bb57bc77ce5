"""``cli.py serve --ray`` stopped by SIGTERM or Ctrl-C (SIGINT to its process group, as a terminal sends it) drains
the requests it accepted, as the single process does (tests/serve/test_shutdown.py): a real local Ray instance."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.serve.test_shutdown import ROOT, free_port

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGINT"])
def test_ray_serve_drains_accepted_requests_on_sigterm_and_ctrl_c(tiny_package: Path, stop: str) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "serve", "--package", str(tiny_package), "--port", str(port), "--ray",
         "--max-batch", "1", "--threads", "1", "--no-warmup", "--memory-budget", "off"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.5)
        answers: list[int | str] = []

        def request(seed: int) -> None:
            body = {"prompt": "a red fox", "size": "128x128", "steps": 20, "seed": seed}
            try:
                answers.append(httpx.post(f"{url}/v1/images/generations", json=body, timeout=180).status_code)
            except httpx.TransportError as exc:
                answers.append(type(exc).__name__)

        clients = [threading.Thread(target=request, args=(seed,)) for seed in range(6)]
        for client in clients:
            client.start()
        time.sleep(2.0)  # every request accepted: one running in the replica, the rest queued
        os.killpg(server.pid, getattr(signal, stop))  # the whole group, as a terminal's Ctrl-C
        for client in clients:
            client.join(240)
        output, _ = server.communicate(timeout=240)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
    assert answers == [200] * 6, f"accepted requests must all finish: {answers}\n{output[-3000:]}"
    assert "finishing the requests accepted" in output
