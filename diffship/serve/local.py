"""Run the app with uvicorn in a background thread of this process, on a free port: for tests, ``bench-serve`` and
notebooks. (``cli.py serve`` runs uvicorn in the foreground, with its signal handling.)"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

from diffship.serve.limits import DoorLimits

STARTUP_TIMEOUT_S = 300.0


@contextlib.contextmanager
def serve_in_thread(app: Any, host: str = "127.0.0.1", port: int = 0,
                    read_timeout_s: float = DoorLimits().read_timeout_s,
                    headers: dict[str, str] | None = None) -> Iterator[str]:
    """Yield the base URL (``http://host:port``) once the app listens and ``/readyz`` says ready; stop it on exit.
    ``read_timeout_s``: the deadline for a request's headers (serve/protocol.py); ``headers``: sent to ``/readyz``
    (credentials, where the app takes keys)."""
    import uvicorn

    from diffship.serve.protocol import header_timeout_protocol

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on",
                                           http=header_timeout_protocol(read_timeout_s)))
    thread = threading.Thread(target=server.run, name="diffship-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the server stopped during startup (see the log above)")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the server did not start within {STARTUP_TIMEOUT_S:.0f}s")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://{host}:{bound}"
    try:
        _wait_ready(url, deadline, headers or {})
        yield url
    finally:
        server.should_exit = True
        thread.join(STARTUP_TIMEOUT_S)


def _wait_ready(url: str, deadline: float, headers: dict[str, str]) -> None:
    import httpx

    while True:
        answer = httpx.get(f"{url}/readyz", timeout=30, headers=headers)
        if answer.status_code == 200:
            return
        if answer.status_code in (400, 401, 403):
            raise RuntimeError(f"/readyz answered {answer.status_code}: {answer.text[:200]} (pass headers=)")
        status = str(answer.json().get("status", ""))
        if status.startswith("failed"):
            raise RuntimeError(f"the service {status}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the service was not ready within {STARTUP_TIMEOUT_S:.0f}s: {status}")
        time.sleep(0.05)
