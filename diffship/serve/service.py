"""One pipeline, its batcher and its metrics, for any front end (the HTTP app, a Ray Serve replica): open, warm up,
answer an API request (parse, check, queue with a deadline, watch for a client that went away, format), drain on
shutdown. Everything an HTTP answer needs comes back as a ``Reply`` (data: it crosses Ray's process boundary)."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from diffship.runtime.batching import Batcher, BatcherClosed, BatchSettings, DeadlineExceeded, QueueFull, Ticket
from diffship.runtime.calls import Call
from diffship.runtime.errors import PipelineCancelled, PipelineError, PipelineInputError
from diffship.runtime.pipeline import GenerationResult, Pipeline
from diffship.serve import hires_fields
from diffship.serve.apis import API_FORMATS
from diffship.serve.limits import BodyTooLarge, DoorLimits, ReadTimeout, read_json
from diffship.serve.memory import Admission, MemoryModel, TooLarge, default_budget, measure, memory_note, merge, split
from diffship.serve.security import SecurityPolicy

if TYPE_CHECKING:
    from diffship.serve.metrics import MetricDeltas

log = logging.getLogger(__name__)

DISCONNECT_POLL_S = 0.1
Disconnected = Callable[[], Awaitable[bool]]


@dataclass(frozen=True)
class Reply:
    """An HTTP answer as data: status, JSON body, extra headers; ``outcome`` and ``images`` for metrics."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    outcome: str = "ok"
    images: int = 0
    metrics: MetricDeltas | None = None
    """A Ray replica's batch observations since its last answer, for the gateway's ``/metrics``."""


def _never_disconnected() -> Awaitable[bool]:
    future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    future.set_result(False)
    return future


@dataclass(frozen=True)
class ServeConfig:
    package: Path
    backend: str = "ort"
    precision: str | None = None
    threads: int | None = None
    device: str = "auto"
    loras: tuple[str, ...] = ()
    batch: BatchSettings = field(default_factory=BatchSettings)
    timeout_s: float = 300.0
    """Deadline of a request from its arrival, queued and running (504 after it)."""
    warmup: bool = True
    """Run one guided step at the default size before reporting ready (first-call costs are paid at start)."""
    door: DoorLimits = field(default_factory=DoorLimits)
    """Body size, read timeouts, JSON shape, uploaded image pixels (serve/limits.py)."""
    memory_budget: int | Literal["auto"] | None = None
    """Bytes a batch may grow the process by (serve/memory.py): "auto", a share of the memory available once the
    engines are loaded (``cli.py serve``'s default); None: no admission by memory (the runtime's own decode check
    only)."""
    security: SecurityPolicy = field(default_factory=SecurityPolicy)
    """API keys, basic auth, CORS and Host allow-lists (serve/security.py); default: open, as a library."""
    memory_model: MemoryModel | None = None
    """A model measured before (tests, a restarted replica); None: measured at start when a budget is set."""

    def limit_s(self, requested_s: float | None) -> float:
        """A request's time limit: the one it asked for (``X-Request-Timeout``), at most ``timeout_s``."""
        return self.timeout_s if requested_s is None else min(requested_s, self.timeout_s)


class ImageService:
    def __init__(self, config: ServeConfig, pipeline: Pipeline | None = None, keep_deltas: bool = False) -> None:
        from diffship.serve.metrics import ServiceMetrics

        self.config = config
        self.pipeline = pipeline
        self.metrics = ServiceMetrics(config.batch.max_batch, keep_deltas)
        self.batcher: Batcher | None = None
        self.admission: Admission | None = None
        self.ready = False
        self.draining = False
        self.replica = replica_id()
        """Who answered: sent as X-Diffship-Replica (with Ray, which replica took the request); opaque, as a client
        has no business knowing the host name and PID (the log at start maps one to the other)."""
        self._start_lock = threading.Lock()

    def start(self) -> None:
        """Open the package (unless a pipeline was given), start the batcher, warm up. Idempotent."""
        with self._start_lock:
            if self.batcher is not None:
                return
            started = time.perf_counter()
            if self.pipeline is None:
                self.pipeline = Pipeline.from_package(
                    self.config.package, backend=self.config.backend, precision=self.config.precision,
                    threads=self.config.threads, device=self.config.device, loras=self.config.loras)
            self.admission = self._admission(self.pipeline)
            runner = self.pipeline if self.admission is None else _AdmittedRunner(self.pipeline, self.admission,
                                                                                  self.metrics.observe_run)
            self.batcher = Batcher(runner, self.config.batch, on_batch=self.metrics.observe_batch)
            if self.config.warmup:
                self.pipeline("warm-up", num_inference_steps=1, guidance_scale=7.5, seed=0)
            self.ready = True
            log.info("serving %s (%s, %s): ready in %.1fs; %s; replica %s is %s:%d", self.config.package,
                     self.pipeline.backend, self.pipeline.precision, time.perf_counter() - started,
                     memory_note(self.admission), self.replica, os.uname().nodename, os.getpid())

    def _admission(self, pipeline: Pipeline) -> Admission | None:
        budget = self.config.memory_budget
        if budget is None:
            return None
        if pipeline.device != "cpu":
            # Peaks are read from the process's resident memory; a GPU's memory is not modelled yet.
            log.warning("memory admission off: the engines run on %s, whose memory is not measured", pipeline.device)
            return None
        model = self.config.memory_model or measure(lambda side: pipeline(
            "memory", num_inference_steps=1, guidance_scale=7.5, seed=0, height=side, width=side))
        budget = default_budget() if budget == "auto" else budget
        if model is None or budget is None:
            return None
        return Admission(model, budget, self.config.batch.max_batch)

    def stop(self, drain: bool = True) -> None:
        """Refuse new calls; with ``drain``, finish every accepted one first."""
        self.draining = True
        self.ready = False
        if self.batcher is not None:
            self.batcher.close(drain=drain)

    def model_name(self) -> str:
        if self.pipeline is None:
            return self.config.package.name
        source = self.pipeline.package.manifest.source
        return str(source.get("model") or source.get("hub_id") or self.config.package.name)

    def metrics_text(self) -> bytes:
        batcher = self.batcher
        return self.metrics.render(batcher.queue_depth if batcher else 0, batcher.running_images if batcher else 0)

    async def respond(self, api: str, raw: bytes, timeout_s: float | None = None,
                      disconnected: Disconnected = _never_disconnected) -> Reply:
        """Answer one request of ``api`` (an ``ApiFormat``'s name: ``openai``, ``a1111``, ``a1111_img2img``) whose body
        is ``raw`` JSON; metrics recorded."""
        received = time.perf_counter()
        reply = await self._reply(api, raw, timeout_s, disconnected)
        self.metrics.observe_request(api, reply.outcome, time.perf_counter() - received, reply.images)
        return replace(reply, headers={**reply.headers, "X-Diffship-Replica": self.replica})

    async def _reply(self, api: str, raw: bytes, timeout_s: float | None, disconnected: Disconnected) -> Reply:
        spoken = API_FORMATS[api]
        try:
            if not self.ready:
                raise BatcherClosed("the service is shutting down" if self.draining else
                                    "the service is starting (engines loading or warming up); retry shortly")
            # Off the event loop: JSON parsing, image decoding (in parse) and opening the VAE encoder are CPU-bound.
            body = await asyncio.to_thread(read_json, raw, self.config.door)
            arguments = await asyncio.to_thread(spoken.parse, body)
            if hires_fields.HIRES in arguments:  # two passes, each through the queue
                result = await hires_fields.generate(self, arguments, disconnected, timeout_s)
            else:
                call = await asyncio.to_thread(self.prepare, arguments)  # an image call may open the VAE encoder
                result = await self.generate(call, disconnected, timeout_s)
            payload = await asyncio.to_thread(spoken.response, result, body, self.model_name())
        except Exception as exc:  # noqa: BLE001 - every failure becomes a status and a message
            status, outcome, headers = classify(exc)
            message = str(exc) if outcome != "failed" or isinstance(exc, PipelineError) else "internal error (logged)"
            return Reply(status, spoken.error(self._public(message), outcome), headers, outcome)
        return Reply(200, payload, images=len(result.images))

    def _public(self, message: str) -> str:
        """``message`` without the package's absolute path (runtime messages name it for the operator; a client
        sees the package by name)."""
        for root in {str(self.config.package.resolve()), str(self.config.package)}:
            message = message.replace(root, f"package {self.config.package.name!r}")
        return message

    def prepare(self, arguments: dict[str, Any]) -> Call:
        """A checked call (raises PipelineInputError with the Python API's message)."""
        assert self.pipeline is not None, "start() first"
        return self.pipeline.prepare(**arguments)

    async def generate(self, call: Call, disconnected: Disconnected, timeout_s: float | None = None) -> GenerationResult:
        """Queue ``call`` (in pieces that fit one batch's memory, with admission on) and wait for it, up to
        ``timeout_s`` (at most the configured timeout); a client that goes away has its call withdrawn. Raises
        QueueFull, BatcherClosed, DeadlineExceeded, PipelineCancelled, TooLarge, or the call's own error."""
        assert self.batcher is not None, "start() first"
        most = self.config.batch.max_batch
        if self.admission is not None:
            pieces = self.admission.pieces(call)
        elif call.images > most and call.batch_key() is not None:
            pieces = split(call, most)  # max_batch holds across batch_size x n_iter too
        else:
            pieces = [call]
        limit_s = self.config.limit_s(timeout_s)
        tickets: list[Ticket] = []
        try:
            for piece in pieces:
                tickets.append(self.batcher.submit(piece, limit_s))
        except Exception:
            for ticket in tickets:
                ticket.cancel()
            raise
        results = await self._wait(tickets, disconnected)
        return results[0] if len(results) == 1 else merge(results)

    async def _wait(self, tickets: list[Ticket], disconnected: Disconnected) -> list[GenerationResult]:
        waiting = [asyncio.wrap_future(ticket.future) for ticket in tickets]
        for future in waiting:
            # Settled after we stopped waiting (a cancelled request task): mark its outcome read, or asyncio logs it.
            future.add_done_callback(lambda done: done.cancelled() or done.exception())
        withdrawn = False
        try:
            while True:
                _, pending = await asyncio.wait(set(waiting), timeout=DISCONNECT_POLL_S)
                failed = [future for future in waiting if future.done() and future.exception() is not None]
                if failed or not pending:
                    if failed:
                        for ticket in tickets:
                            ticket.cancel()  # one piece failed: the others' images are not wanted
                        if not withdrawn and _stopped_by_its_cancel(failed):
                            done = [t.future.result() for t in tickets if t.future.exception() is None]
                            if done:
                                return done  # interrupted (the web UI's /interrupt): the images as far as they got
                    return [future.result() for future in waiting]
                for ticket in tickets:
                    ticket.check_deadline()
                if not withdrawn and await disconnected():
                    log.info("client went away: request withdrawn")
                    self.metrics.disconnects.labels("waiting").inc()
                    for ticket in tickets:
                        ticket.cancel()
                    withdrawn = True
        except asyncio.CancelledError:
            for ticket in tickets:
                ticket.cancel()  # the server dropped the request task (client gone, or shutdown timed out)
            raise


def _stopped_by_its_cancel(failed: list[asyncio.Future[GenerationResult]]) -> bool:
    """Every failure is the call's own cancel (no deadline, no client gone: those are the ticket's): a request
    interrupted between its pieces, whose finished pieces stand (``runtime.calls.FINISH_EARLY``)."""
    return all(type(future.exception()) is PipelineCancelled for future in failed)


class _AdmittedRunner:
    """The pipeline, its batches run in groups that fit the memory budget."""

    def __init__(self, pipeline: Pipeline, admission: Admission, observe: Callable[[int], None]) -> None:
        self.pipeline, self.admission, self.observe = pipeline, admission, observe

    def run_batch(self, calls: list[Call]) -> list[GenerationResult | PipelineError]:
        return self.admission.run_batch(self.pipeline, calls, self.observe)


def classify(exc: BaseException) -> tuple[int, str, dict[str, str]]:
    """(HTTP status, outcome label for metrics, extra headers) for an error."""
    if isinstance(exc, (BodyTooLarge, TooLarge)):
        return 413, "invalid", {}
    if isinstance(exc, ReadTimeout):
        return 408, "invalid", {}
    if isinstance(exc, PipelineInputError):
        return 422, "invalid", {}
    if isinstance(exc, QueueFull):
        return 429, "queue_full", {"Retry-After": str(math.ceil(exc.retry_after_s))}
    if isinstance(exc, BatcherClosed):
        return 503, "closed", {"Retry-After": "5"}
    if isinstance(exc, DeadlineExceeded):
        return 504, "deadline", {}
    if isinstance(exc, PipelineCancelled):
        return 499, "cancelled", {}  # the client went away (or interrupted a piece before its first step)
    if not isinstance(exc, PipelineError):
        log.error("request failed", exc_info=exc)
    return 500, "failed", {}


def replica_id() -> str:
    """An opaque name for this process (X-Diffship-Replica)."""
    return f"replica-{secrets.token_hex(4)}"
