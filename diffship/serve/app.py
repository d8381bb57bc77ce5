"""The HTTP image service (Starlette, run by uvicorn or as Ray Serve's ingress), its API routes built from the
``ApiFormat`` records of ``serve/apis.py``:

    POST /v1/images/generations   OpenAI Images API (serve/openai_api.py)
    POST /sdapi/v1/txt2img        AUTOMATIC1111's API (serve/a1111_api.py); also /sdapi/v1/img2img (image-to-image
                                  and inpainting); GET /sdapi/v1/samplers, /sdapi/v1/sd-models
    GET  /healthz                 the process answers
    GET  /readyz                  engines loaded and warmed up (503 before, and while draining)
    GET  /metrics                 Prometheus text (serve/metrics.py)

Every route but /healthz (and /metrics where made public) takes credentials where keys are set, and cross-origin
and Host checks apply first (serve/security.py). Status codes: 401 no or wrong credentials, 403 an origin not
allowed, 400 a Host not served, 422 bad input (the Python API's message), 429 queue full (with Retry-After), 503 not ready or shutting
down, 504 deadline passed (the server's ``--timeout``, or a shorter ``X-Request-Timeout: SECONDS`` header), 500 the
generation failed (NaN, engine error), 413 a body over ``--max-body-mb``, 408 a body not sent within
``--read-timeout``, 404 (JSON) an unknown route. A client that disconnects has its call withdrawn; one that hangs up
while sending its body is counted (``diffship_disconnects_total{stage="upload"}``) and logged as one line. Every
response says which process made it in ``X-Diffship-Replica``: an opaque id per process (logged with its host and PID
at start), never the host or PID themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from diffship.runtime.errors import PipelineInputError
from diffship.serve.apis import FORMATS
from diffship.serve.formats import ApiFormat, Listing
from diffship.serve.limits import BodyTooLarge, ReadTimeout, read_body
from diffship.serve.metrics import CONTENT_TYPE, ServiceMetrics
from diffship.serve.security import SecurityMiddleware
from diffship.serve.service import Disconnected, Reply, ServeConfig
from diffship.serve.webui_routes import WebUi

log = logging.getLogger(__name__)


class Backend(Protocol):
    """What answers the requests: an ``ImageService`` in this process, or a gateway to Ray Serve replicas."""

    ready: bool
    draining: bool
    replica: str
    config: ServeConfig
    metrics: ServiceMetrics

    def start(self) -> None: ...
    def stop(self, drain: bool = True) -> None: ...
    def model_name(self) -> str: ...
    def metrics_text(self) -> bytes: ...
    async def respond(self, api: str, raw: bytes, timeout_s: float | None = None,
                      disconnected: Disconnected = ...) -> Reply: ...


def create_app(backend: Backend, manage_backend: bool = True,
               on_start_failure: Callable[[BaseException], None] | None = None, web_ui: WebUi | None = None) -> Starlette:
    """The ASGI app over ``backend``. ``manage_backend``: start it (open, warm up) in the background once the server
    listens, so that /healthz answers and /readyz says 503 while a large model loads, and drain it at shutdown; a host
    that runs it itself passes False. ``on_start_failure``: called if starting fails (``cli.py serve`` exits).
    ``web_ui``: the web UI's other routes (progress, options, models: serve/webui_routes.py); default: over ``backend``
    alone."""
    web_ui = web_ui or WebUi(backend)
    start_error: list[BaseException] = []

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"}, headers=_replica(backend))

    async def readyz(request: Request) -> Response:
        if backend.ready:
            return JSONResponse({"status": "ready"}, headers=_replica(backend))
        why = "shutting down" if backend.draining else "starting: engines loading or warming up"
        if start_error:
            why = f"failed to start: {start_error[0]}"
        return JSONResponse({"status": why}, status_code=503, headers=_replica(backend))

    async def metrics(request: Request) -> Response:
        return Response(backend.metrics_text(), media_type=CONTENT_TYPE)

    def started(task: asyncio.Future[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        error = task.exception()
        assert error is not None
        start_error.append(error)
        log.error("the service could not start: %s", error, exc_info=error)
        if on_start_failure is not None:
            on_start_failure(error)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        starting = asyncio.ensure_future(run_in_threadpool(backend.start)) if manage_backend else None
        if starting is not None:
            starting.add_done_callback(started)
        try:
            yield
        finally:
            if starting is not None:
                await asyncio.wait({starting})  # a thread cannot be interrupted: let the start finish, then stop
                log.info("shutting down: finishing the requests accepted")
                await run_in_threadpool(backend.stop)

    app = Starlette(
        routes=[
            *api_routes(backend, FORMATS),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            *web_ui.routes,
        ],
        lifespan=lifespan,
        middleware=web_ui.middleware,
        exception_handlers={HTTPException: _http_error},
    )
    app.add_middleware(SecurityMiddleware, policy=backend.config.security)  # type: ignore[arg-type]
    return app


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own answers (unknown route 404, wrong method 405) as JSON, as every client here parses them: the
    web UI's ``detail`` and OpenAI's ``error.message``."""
    assert isinstance(exc, HTTPException)
    message = f"{request.method} {request.url.path}: {exc.detail}"
    body = {"detail": exc.detail, "error": {"message": message, "type": "not_found" if exc.status_code == 404
                                            else "invalid_request", "param": None, "code": None}}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


Endpoint = Callable[[Request], Awaitable[Response]]


def api_routes(backend: Backend, formats: tuple[ApiFormat, ...]) -> list[Route]:
    """Each API's route (answered by ``backend`` in the API's own shapes) and its listings, in ``formats`` order."""
    routes = []
    for api in formats:
        routes.append(Route(api.path, _answering(backend, api), methods=[api.method], name=api.name))
        routes += [Route(listing.path, _listing(backend, listing), methods=["GET"]) for listing in api.listings]
    return routes


def _answering(backend: Backend, api: ApiFormat) -> Endpoint:
    async def answer(request: Request) -> Response:
        try:
            timeout_s = _timeout(request)
            raw = await read_body(request, backend.config.door.max_body_bytes, backend.config.door.read_timeout_s)
        except PipelineInputError as exc:
            status = 413 if isinstance(exc, BodyTooLarge) else 408 if isinstance(exc, ReadTimeout) else 422
            backend.metrics.observe_request(api.name, "invalid", 0.0)
            return JSONResponse(api.error(str(exc), "invalid"), status_code=status, headers=_replica(backend))
        except ClientDisconnect:
            backend.metrics.disconnects.labels("upload").inc()
            log.info("client hung up while sending its %s request body", api.name)
            return Response(status_code=499)  # nobody reads it
        reply = await backend.respond(api.name, raw, timeout_s, request.is_disconnected)
        return JSONResponse(reply.body, status_code=reply.status, headers=reply.headers)

    return answer


def _listing(backend: Backend, listing: Listing) -> Endpoint:
    async def answer(request: Request) -> Response:
        return JSONResponse(listing.answer(backend.model_name()))

    return answer


def _timeout(request: Request) -> float | None:
    """``X-Request-Timeout: SECONDS``: a deadline shorter than the server's for this request."""
    value = request.headers.get("x-request-timeout")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not seconds > 0 or math.isinf(seconds):
        raise PipelineInputError(f"X-Request-Timeout must be a positive number of seconds, got {value!r:.40}")
    return seconds


def _replica(backend: Backend) -> dict[str, str]:
    return {"X-Diffship-Replica": backend.replica}
