"""Request batching in front of one pipeline: concurrent calls that may share a denoising loop (``Call.batch_key``:
same size, steps, scheduler, eta, guided or not) are gathered, up to ``max_batch`` images, from those that queued
while the previous batch ran (and, with ``max_wait_s`` > 0, that arrive within that long of the oldest), and run as
one batch; each gets exactly the images it would get alone.

    batcher = Batcher(pipe, BatchSettings(max_batch=4, max_queue=64))
    ticket = batcher.submit(pipe.prepare("a red fox", num_inference_steps=20, seed=1), timeout_s=60)
    result = ticket.result()          # GenerationResult, or raises PipelineCancelled / DeadlineExceeded / ...
    batcher.close()                   # refuse new calls, finish the queued ones

One worker thread runs the batches one after another: the engines already use every core, so a second batch at the
same time would only share them. The queue is bounded (``QueueFull`` carries a retry-after estimate); a call whose
deadline passes, queued or running, ends with ``DeadlineExceeded`` and frees its place; ``Ticket.cancel`` drops a
queued call at once and stops a running one at its next step.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, replace
from typing import Protocol

from diffship.runtime.calls import Call, Cancel
from diffship.runtime.errors import PipelineCancelled, PipelineError
from diffship.runtime.pipeline import GenerationResult

log = logging.getLogger(__name__)


class QueueFull(PipelineError):
    """The queue holds ``max_queue`` calls already; try again after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(PipelineCancelled):
    """The call's deadline passed before it finished (queued or running)."""


class BatcherClosed(PipelineError):
    """The batcher is closing or closed: it takes no new calls."""


class BatchRunner(Protocol):
    def run_batch(self, calls: list[Call]) -> list[GenerationResult | PipelineError]: ...


@dataclass(frozen=True)
class BatchSettings:
    max_batch: int = 4
    """Most images in one batch (1: no batching, calls run one by one)."""
    max_wait_s: float = 0.0
    """How long the oldest queued call waits for companions when the worker is free. 0: it starts at once, and
    batches form from the calls that queue up while a batch runs (no latency added at low load)."""
    max_queue: int = 64
    """Most calls waiting (not counting the batch running); more are refused with ``QueueFull``."""

    def __post_init__(self) -> None:
        for name, value, low in (("max_batch", self.max_batch, 1), ("max_queue", self.max_queue, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise PipelineError(f"{name} must be an integer >= {low}, got {value!r:.40}")
        if not 0 <= self.max_wait_s <= 10:
            raise PipelineError(f"max_wait_s must be from 0 to 10 seconds, got {self.max_wait_s!r:.40}")


@dataclass(frozen=True)
class BatchReport:
    """What one batch was, for metrics."""

    calls: int
    images: int
    seconds: float
    queue_waits_s: tuple[float, ...]
    stage_seconds: dict[str, float]


class Ticket:
    """A submitted call: ``result()`` waits for it, ``cancel()`` withdraws it."""

    def __init__(self, call: Call, deadline: float | None,
                 withdraw: Callable[[Ticket], None] | None = None) -> None:
        self.call = call
        self.deadline = deadline
        self.future: Future[GenerationResult] = Future()
        self.submitted = time.monotonic()
        self._cancelled = threading.Event()
        self._withdraw = withdraw

    def cancel(self) -> None:
        """Queued: dropped now. Running: stops before its next step. Finished: nothing."""
        self._cancelled.set()
        self._settle(PipelineCancelled("cancelled by the caller"))
        if self._withdraw is not None:
            self._withdraw(self)

    def result(self, timeout: float | None = None) -> GenerationResult:
        """Wait for the outcome, up to ``timeout`` seconds; past the call's deadline it is ``DeadlineExceeded`` at
        once, without waiting for the worker to come to it."""
        if self.deadline is not None:
            remaining = max(0.0, self.deadline - time.monotonic())
            with contextlib.suppress(FutureTimeout):
                return self.future.result(remaining if timeout is None else min(timeout, remaining))
            self.check_deadline()
            if timeout is not None:
                timeout = max(0.0, timeout - remaining)
        return self.future.result(timeout)

    def check_deadline(self) -> None:
        """Past the deadline: end the call now with ``DeadlineExceeded`` (a running one stops at its next step, a
        queued one leaves the queue), without waiting for the worker."""
        if self.expired() and not self.future.done():
            self._settle(self._stopped_outcome())
            if self._withdraw is not None:
                self._withdraw(self)

    def expired(self, now: float | None = None) -> bool:
        return self.deadline is not None and (now if now is not None else time.monotonic()) >= self.deadline

    def stopping(self) -> bool:
        """Asked between steps: cancelled or past the deadline."""
        return self._cancelled.is_set() or self.expired()

    def _settle(self, outcome: GenerationResult | BaseException) -> None:
        if self.future.done():
            return
        try:
            if isinstance(outcome, BaseException):
                self.future.set_exception(outcome)
            else:
                self.future.set_result(outcome)
        except Exception:  # noqa: BLE001 - set by a racing cancel(): the first outcome stands
            pass

    def _stopped_outcome(self) -> PipelineCancelled:
        if self._cancelled.is_set():
            return PipelineCancelled("cancelled by the caller")
        return DeadlineExceeded(f"deadline passed after {time.monotonic() - self.submitted:.1f}s")


class Batcher:
    """Gathers compatible calls into batches for one pipeline (see the module docstring)."""

    def __init__(self, runner: BatchRunner, settings: BatchSettings | None = None,
                 on_batch: Callable[[BatchReport], None] | None = None) -> None:
        self.runner = runner
        self.settings = settings or BatchSettings()
        self._on_batch = on_batch
        self._queue: list[Ticket] = []
        self._condition = threading.Condition()
        self._closing = False
        self._running: list[Ticket] = []
        self._batch_seconds = 0.0  # moving average, for Retry-After
        self._worker = threading.Thread(target=self._work, name="diffship-batcher", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ callers

    def submit(self, call: Call, timeout_s: float | None = None) -> Ticket:
        """Queue a prepared call (``Pipeline.prepare``); ``timeout_s``: its deadline from now, queued and running."""
        ticket = Ticket(call, None if timeout_s is None else time.monotonic() + timeout_s, self._withdraw)
        with self._condition:
            if self._closing:
                raise BatcherClosed("the service is shutting down and takes no new requests")
            if not self._worker.is_alive():
                raise BatcherClosed("the batcher's worker has stopped (see the log); restart the service")
            self._drop_settled()
            if len(self._queue) >= self.settings.max_queue:
                raise QueueFull(f"the queue is full ({self.settings.max_queue} requests waiting); retry later",
                                self.retry_after_s())
            self._queue.append(ticket)
            self._condition.notify_all()
        return ticket

    def _withdraw(self, ticket: Ticket) -> None:
        """A cancelled or expired call leaves the queue at once (a running one stops at its next step)."""
        with self._condition:
            if ticket in self._queue:
                self._queue.remove(ticket)
                self._condition.notify_all()

    def retry_after_s(self) -> float:
        """A guess of when a place frees up: the batches ahead of a new call times the recent batch time."""
        batches_ahead = 1 + len(self._queue) / self.settings.max_batch
        return max(1.0, batches_ahead * self._batch_seconds)

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def running_images(self) -> int:
        return sum(ticket.call.images for ticket in self._running)

    def close(self, drain: bool = True, timeout_s: float | None = None) -> None:
        """Refuse new calls; ``drain``: finish the queued and running ones (else the queued end with
        ``BatcherClosed``). Waits for the worker up to ``timeout_s``."""
        with self._condition:
            self._closing = True
            if not drain:
                for ticket in self._queue:
                    ticket._settle(BatcherClosed("the service shut down before this request started"))
                self._queue.clear()
            self._condition.notify_all()
        self._worker.join(timeout_s)

    # ------------------------------------------------------------------ the worker

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._run(batch)
            except BaseException as exc:  # noqa: BLE001 - the worker must outlive any one batch
                log.exception("a batch of %d calls failed", len(batch))
                for ticket in batch:
                    ticket._settle(exc)
                with self._condition:
                    self._running = []

    def _next_batch(self) -> list[Ticket] | None:
        """The oldest live call and its companions, once the batch is full or the oldest has waited ``max_wait_s``;
        None when closing with nothing queued."""
        with self._condition:
            while True:
                self._drop_settled()
                if not self._queue:
                    if self._closing:
                        return None
                    self._condition.wait()
                    continue
                head = self._queue[0]
                batch = self._companions(head)
                waited = time.monotonic() - head.submitted
                full = sum(ticket.call.images for ticket in batch) >= self.settings.max_batch
                if full or self._closing or waited >= self.settings.max_wait_s or head.call.batch_key() is None:
                    for ticket in batch:
                        self._queue.remove(ticket)
                    self._running = batch
                    return batch
                self._condition.wait(self.settings.max_wait_s - waited)

    def _companions(self, head: Ticket) -> list[Ticket]:
        key = head.call.batch_key()
        batch, images = [head], head.call.images
        if key is None:
            return batch
        for ticket in self._queue[1:]:
            if ticket.call.batch_key() == key and images + ticket.call.images <= self.settings.max_batch:
                batch.append(ticket)
                images += ticket.call.images
        return batch

    def _drop_settled(self) -> None:
        """Queued calls cancelled or past their deadline leave the queue (their place is free)."""
        now = time.monotonic()
        for ticket in list(self._queue):
            if ticket.expired(now) and not ticket.future.done():
                ticket._settle(ticket._stopped_outcome())
            if ticket.future.done():
                self._queue.remove(ticket)

    def _run(self, batch: list[Ticket]) -> None:
        started = time.monotonic()
        calls = [replace(ticket.call, cancel=_either(ticket.call, ticket)) for ticket in batch]
        outcomes = self.runner.run_batch(calls)  # raising: _work settles every ticket of the batch with the error
        seconds = time.monotonic() - started
        for ticket, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, PipelineCancelled) and ticket.stopping():
                outcome = ticket._stopped_outcome()
            ticket._settle(outcome)
        with self._condition:
            self._running = []
            self._batch_seconds = seconds if not self._batch_seconds else 0.8 * self._batch_seconds + 0.2 * seconds
        if self._on_batch is not None:
            stages = next((o.timings.stage_seconds() for o in outcomes if isinstance(o, GenerationResult)), {})
            try:
                self._on_batch(BatchReport(len(batch), sum(t.call.images for t in batch), seconds,
                                           tuple(started - t.submitted for t in batch), stages))
            except Exception:  # noqa: BLE001 - a metrics failure must not stop the service
                log.exception("the on_batch callback failed")


def _either(call: Call, ticket: Ticket) -> Cancel:
    """The ticket's stop (cancelled, or past its deadline), or the call's own cancel as it said (``FINISH_EARLY`` kept)."""
    return lambda: ticket.stopping() or call.cancelled()
