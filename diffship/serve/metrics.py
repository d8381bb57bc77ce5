"""What ``GET /metrics`` reports, in Prometheus' text format (one registry per service, so that two services in one
process, as in the tests, keep their own counts).

    diffship_queue_depth                      calls waiting for a batch
    diffship_running_images                   images in the batch running now
    diffship_batch_images / _batch_calls      histograms: images and calls per batch
    diffship_queue_wait_seconds               histogram: submit -> its batch starts
    diffship_stage_seconds{stage}             histogram: per batch, text encoder / unet / scheduler / vae_decode ...
    diffship_request_seconds{api}             histogram: request received -> answered (successful ones)
    diffship_requests_total{api,outcome}      counter: ok, invalid, queue_full, deadline, cancelled,
                                              failed, closed, replica_lost
    diffship_errors_total{kind}               counter: every non-ok outcome by kind
    diffship_images_total                     counter: images returned (images/s = rate(diffship_images_total[1m]))
    diffship_images_per_second                gauge: images returned over the last 60 s / 60
    diffship_retries_total                    counter: requests sent again after their replica died (Ray gateway)
    diffship_run_images                       histogram: images per denoising loop run under memory admission (a
                                              batch over the budget runs as several)
    diffship_disconnects_total{stage}         counter: clients that hung up: upload (sending the body), waiting
                                              (queued or running: the call withdrawn)

Under Ray the batches run in the replicas: each replica keeps its batch and stage observations since its last answer
(``keep_deltas``) and sends them with the answer (``MetricDeltas``), which the gateway replays into its own registry
(``apply``), so that the gateway's ``/metrics`` sums every replica's batches. A batch ending just after the answers it
served rides on the replica's next answer.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE  # noqa: N811 - re-exported under our name
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from diffship.runtime.batching import BatchReport

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80, 160, 320)
RATE_WINDOW_S = 60.0


@dataclass(frozen=True)
class MetricDeltas:
    """A replica's batch observations since its last answer (data: crosses Ray's process boundary)."""

    batches: tuple[BatchReport, ...] = ()
    runs: tuple[int, ...] = ()
    """Images per loop run under memory admission (``diffship_run_images``)."""


class ServiceMetrics:
    def __init__(self, max_batch: int, keep_deltas: bool = False) -> None:
        self.keep_deltas = keep_deltas
        """Also keep each batch observation for ``take_deltas`` (a Ray replica)."""
        self._batches: list[BatchReport] = []
        self._runs: list[int] = []
        self.registry = CollectorRegistry()
        registry = self.registry
        self.queue_depth = Gauge("diffship_queue_depth", "Calls waiting for a batch", registry=registry)
        self.running_images = Gauge("diffship_running_images", "Images in the batch running now", registry=registry)
        size_buckets = tuple(sorted({1, 2, 4, 8, 16, 32, max_batch}))
        self.batch_images = Histogram("diffship_batch_images", "Images per batch", buckets=size_buckets,
                                      registry=registry)
        self.batch_calls = Histogram("diffship_batch_calls", "Calls per batch", buckets=size_buckets, registry=registry)
        self.queue_wait = Histogram("diffship_queue_wait_seconds", "Submit to batch start", buckets=LATENCY_BUCKETS,
                                    registry=registry)
        self.stage_seconds = Histogram("diffship_stage_seconds", "Seconds per stage of a batch", ["stage"],
                                       buckets=LATENCY_BUCKETS, registry=registry)
        self.request_seconds = Histogram("diffship_request_seconds", "Received to answered, successful requests",
                                         ["api"], buckets=LATENCY_BUCKETS, registry=registry)
        self.requests = Counter("diffship_requests", "Requests by API and outcome", ["api", "outcome"],
                                registry=registry)
        self.errors = Counter("diffship_errors", "Requests that did not succeed, by kind", ["kind"], registry=registry)
        self.images = Counter("diffship_images", "Images returned", registry=registry)
        self.retries = Counter("diffship_retries", "Requests sent again after their replica died (Ray)",
                               registry=registry)
        self.run_images = Histogram("diffship_run_images", "Images per loop run under memory admission",
                                    buckets=size_buckets, registry=registry)
        self.disconnects = Counter("diffship_disconnects", "Clients that hung up, by stage (upload, waiting)",
                                   ["stage"], registry=registry)
        self.images_per_second = Gauge("diffship_images_per_second", "Images returned over the last 60 s / 60",
                                       registry=registry)
        self.images_per_second.set_function(self._recent_rate)
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self._lock = threading.Lock()

    def observe_batch(self, report: BatchReport) -> None:
        if self.keep_deltas:
            with self._lock:
                self._batches.append(report)
        self.batch_images.observe(report.images)
        self.batch_calls.observe(report.calls)
        for wait in report.queue_waits_s:
            self.queue_wait.observe(wait)
        for stage, seconds in report.stage_seconds.items():
            self.stage_seconds.labels(stage).observe(seconds)

    def observe_run(self, images: int) -> None:
        """One denoising loop of ``images`` run under memory admission."""
        if self.keep_deltas:
            with self._lock:
                self._runs.append(images)
        self.run_images.observe(images)

    def take_deltas(self) -> MetricDeltas:
        """The batch observations since the last call (``keep_deltas``), handed over once."""
        with self._lock:
            deltas = MetricDeltas(tuple(self._batches), tuple(self._runs))
            self._batches, self._runs = [], []
        return deltas

    def apply(self, deltas: MetricDeltas) -> None:
        """A replica's observations, counted here as if this service had run its batches (the Ray gateway)."""
        for report in deltas.batches:
            self.observe_batch(report)
        for images in deltas.runs:
            self.observe_run(images)

    def observe_request(self, api: str, outcome: str, seconds: float, images: int = 0) -> None:
        self.requests.labels(api, outcome).inc()
        if outcome != "ok":
            self.errors.labels(outcome).inc()
            return
        self.request_seconds.labels(api).observe(seconds)
        self.images.inc(images)
        with self._lock:
            self._recent.append((time.monotonic(), images))

    def _recent_rate(self) -> float:
        cutoff = time.monotonic() - RATE_WINDOW_S
        with self._lock:
            while self._recent and self._recent[0][0] < cutoff:
                self._recent.popleft()
            return sum(count for _, count in self._recent) / RATE_WINDOW_S

    def render(self, queue_depth: int, running_images: int) -> bytes:
        self.queue_depth.set(queue_depth)
        self.running_images.set(running_images)
        return generate_latest(self.registry)


__all__ = ["CONTENT_TYPE", "MetricDeltas", "ServiceMetrics"]
