"""The image service on Ray Serve: a light gateway (the same Starlette app as ``cli.py serve``) in front of image
replicas, each one ``ImageService`` (pipeline, batcher, metrics) with one GPU, or one CPU here.

    python cli.py serve --package packages/sd15 --ray --replicas 2          # a local Ray instance, or --ray-address

or from Python: ``serve.run(application(ServeConfig(package=Path("packages/sd15")), replicas=2), route_prefix="/")``.

- Batching is ours, inside each replica, not Ray Serve's ``@serve.batch``: ours groups only the calls that can share a
  loop (size, steps, scheduler), keeps each call's seed, deadline and cancellation, and is the same code with or
  without Ray. A replica takes ``max_batch + max_queue`` requests at once, so that its batcher sees enough of them;
  beyond that Ray's router holds up to ``max_queue`` more per replica, then the gateway answers 429.
- A replica that dies (killed, out of memory, GPU fault) while running or holding a request answers it 500 naming the
  cause, and the request is not sent again: it may be what killed the replica, and would kill the next one. A request
  that found its replica already gone before it was taken (``ReplicaUnavailableError``) is sent to a live one, up to
  ``RETRIES`` times, and answered 503 only when every try failed. Ray starts a replacement replica.
- SIGTERM and Ctrl-C drain: the gateway refuses new requests (503) and waits for the ones it accepted, then Serve and
  Ray shut down (``run_on_ray``), as the single process does.
- A client that disconnects has its request cancelled in the replica (Ray propagates the cancellation).
- ``GET /metrics`` on the gateway counts requests, outcomes, latency, retries and disconnects, and the batch and stage
  metrics of every replica summed: each replica sends its batch observations since its last answer with the answer
  (``serve.metrics.MetricDeltas``) and the gateway adds them to its own. The queue depth and running images gauges
  stay per replica (``ImageReplica.metrics_text``), as do Ray's own metrics.
- Every node runs replicas from its own install: diffship importable (installed, or this repository at the same path,
  which ``PYTHONPATH`` names) and the package at the same absolute path (shared storage), as Ray does not ship them.
- Autoscaling: pass ``autoscaling`` (Ray's ``autoscaling_config``: ``min_replicas``, ``max_replicas``,
  ``target_ongoing_requests`` about ``max_batch``) instead of a fixed replica count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from ray import serve
from ray.exceptions import RayActorError
from ray.serve.config import HTTPOptions
from ray.serve.exceptions import BackPressureError, ReplicaUnavailableError

from diffship.runtime.errors import PipelineError
from diffship.serve.apis import API_FORMATS
from diffship.serve.app import create_app
from diffship.serve.metrics import ServiceMetrics
from diffship.serve.service import Disconnected, ImageService, Reply, ServeConfig, replica_id

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
"""The folder that holds the ``diffship`` package (replicas import it from there)."""
RETRIES = 2
"""Times a request whose replica died is sent again."""
DISCONNECT_POLL_S = 0.1


@serve.deployment(name="diffship-images", health_check_period_s=5)
class ImageReplica:
    """One replica: opens and warms its pipeline before Ray routes it any request."""

    def __init__(self, config: ServeConfig) -> None:
        self.service = ImageService(config, keep_deltas=True)
        self.service.start()

    async def respond(self, api: str, raw: bytes, timeout_s: float | None) -> Reply:
        reply = await self.service.respond(api, raw, timeout_s)
        return replace(reply, metrics=self.service.metrics.take_deltas())  # summed at the gateway

    def metrics_text(self) -> bytes:
        return self.service.metrics_text()

    def check_health(self) -> None:
        if not self.service.ready and not self.service.draining:
            raise RuntimeError("the pipeline is not ready")

    def __del__(self) -> None:
        # Ray calls this on graceful shutdown: finish what this replica accepted.
        service = getattr(self, "service", None)
        if service is not None:
            service.stop(drain=True)


class RayBackend:
    """The gateway's side of ``serve.app.Backend``: every request goes to an image replica through Ray."""

    def __init__(self, images: Any, config: ServeConfig) -> None:
        self.images = images
        self.config = config
        self.metrics = ServiceMetrics(config.batch.max_batch)
        self.ready = True  # Ray routes to the gateway only once the replicas it depends on are up
        self.draining = False
        self.in_flight = 0
        self.replica = f"gateway-{replica_id().removeprefix('replica-')}"

    def start(self) -> None:
        pass

    def stop(self, drain: bool = True) -> None:
        self.ready, self.draining = False, True

    def model_name(self) -> str:
        return self.config.package.name

    def metrics_text(self) -> bytes:
        return self.metrics.render(0, 0)

    async def respond(self, api: str, raw: bytes, timeout_s: float | None = None,
                      disconnected: Disconnected | None = None) -> Reply:
        received = time.perf_counter()
        if self.draining:
            reply = Reply(503, API_FORMATS[api].error("the service is shutting down", "closed"), {"Retry-After": "5"},
                          "closed")
        else:
            self.in_flight += 1
            try:
                reply = await self._forward(api, raw, timeout_s, disconnected)
            finally:
                self.in_flight -= 1
        self.metrics.observe_request(api, reply.outcome, time.perf_counter() - received, reply.images)
        return reply

    async def _forward(self, api: str, raw: bytes, timeout_s: float | None, disconnected: Disconnected | None) -> Reply:
        error_body = API_FORMATS[api].error
        # One deadline for the whole request: Ray's queue and every retry count against it.
        deadline = time.monotonic() + self.config.limit_s(timeout_s)
        lost: list[str] = []
        for _ in range(1 + RETRIES):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return _deadline_reply(error_body)
            response = self.images.respond.remote(api, raw, remaining)
            try:
                reply = await _unless_disconnected(response, disconnected, error_body, deadline)
                if reply.metrics is not None:
                    self.metrics.apply(reply.metrics)
                if reply.outcome == "cancelled":
                    self.metrics.disconnects.labels("waiting").inc()
                return reply
            except RayActorError as exc:
                # Died holding this request: perhaps because of it. Sent again, it could kill the next replica too.
                log.warning("an image replica died holding a request; answered 500, not sent again (%s)",
                            type(exc).__name__)
                message = (f"the image replica running this request died ({type(exc).__name__}: out of memory, "
                           "killed, or a device fault); not sent again, as it may be what killed it")
                return Reply(500, error_body(message, "replica_lost"), {}, "replica_lost")
            except ReplicaUnavailableError as exc:
                lost.append(type(exc).__name__)
                self.metrics.retries.inc()
                log.warning("an image replica died with a request (%s); sending it again", type(exc).__name__)
            except BackPressureError:
                return Reply(429, error_body("every replica's queue is full; retry later", "queue_full"),
                             {"Retry-After": "5"}, "queue_full")
        message = f"the image replicas taking this request died {len(lost)} times ({', '.join(lost)}); retry later"
        return Reply(503, error_body(message, "replica_lost"), {"Retry-After": "5"}, "replica_lost")


async def _unless_disconnected(response: Any, disconnected: Disconnected | None,
                               error_body: Callable[[str, str], Any], deadline: float) -> Reply:
    """The replica's reply, unless the client goes away or the deadline passes first (the call is then cancelled)."""
    async def result() -> Reply:
        return await response  # type: ignore[no-any-return]

    waiting = asyncio.ensure_future(result())
    waiting.add_done_callback(lambda future: future.cancelled() or future.exception())
    while True:
        done, _ = await asyncio.wait({waiting}, timeout=DISCONNECT_POLL_S)
        if done:
            return waiting.result()
        gone = disconnected is not None and await disconnected()
        if gone or time.monotonic() >= deadline:
            response.cancel()
            waiting.cancel()
            if gone:
                return Reply(499, error_body("the client went away", "cancelled"), {}, "cancelled")
            return _deadline_reply(error_body)


def _deadline_reply(error_body: Callable[[str, str], Any]) -> Reply:
    return Reply(504, error_body("deadline passed (queued at Ray or in a replica, retries included)", "deadline"), {},
                 "deadline")


@serve.deployment(name="diffship")
@serve.ingress()
class Gateway:
    """The HTTP ingress: the Starlette app over a ``RayBackend``."""

    def __init__(self, images: Any, config: ServeConfig) -> None:
        self.backend = RayBackend(images, config)

    def __serve_build_asgi_app__(self) -> Any:
        return create_app(self.backend, manage_backend=False)

    async def drain(self, timeout_s: float) -> int:
        """Refuse new requests (503) and wait, up to ``timeout_s``, for the accepted ones; how many are left."""
        self.backend.stop()
        deadline = time.monotonic() + timeout_s
        while self.backend.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.backend.in_flight


def application(config: ServeConfig, replicas: int = 1, gpus_per_replica: float = 0.0,
                autoscaling: dict[str, Any] | None = None) -> Any:
    """The bound application: a gateway over ``replicas`` image replicas (or ``autoscaling``), each with
    ``gpus_per_replica`` GPUs (0: one CPU each, ONNX Runtime's threads split between the replicas)."""
    if not gpus_per_replica and config.threads is None:
        # CPU replicas on one machine would each start one thread per core: split the cores instead.
        config = replace(config, threads=max(1, (os.cpu_count() or 1) // replicas))
    environment = {"env_vars": _forwarded_environment()}
    options: dict[str, Any] = {
        "ray_actor_options": {"num_gpus": gpus_per_replica, "num_cpus": 0 if gpus_per_replica else 1,
                              "runtime_env": environment},
        "max_ongoing_requests": config.batch.max_batch + config.batch.max_queue,
        "max_queued_requests": config.batch.max_queue,
        "graceful_shutdown_timeout_s": config.timeout_s + 30,  # a draining replica finishes what it accepted
    }
    if autoscaling is not None:
        options["autoscaling_config"] = autoscaling
    else:
        options["num_replicas"] = replicas
    images = ImageReplica.options(**options).bind(config)  # type: ignore[attr-defined]
    most = (autoscaling or {}).get("max_replicas", replicas)
    return Gateway.options(  # type: ignore[attr-defined]
        max_ongoing_requests=most * (config.batch.max_batch + 2 * config.batch.max_queue) + 8,
        ray_actor_options={"num_cpus": 0, "runtime_env": environment}).bind(images, config)


def _forwarded_environment() -> dict[str, str]:
    """What replicas need from the driver's environment: this repository on their path, the same cache folder."""
    forwarded = {"PYTHONPATH": str(ROOT)}
    if "DIFFSHIP_CACHE" in os.environ:  # absolute: replicas run in another working directory
        forwarded["DIFFSHIP_CACHE"] = str(Path(os.environ["DIFFSHIP_CACHE"]).resolve())
    return forwarded


@contextlib.contextmanager
def ray_serve(host: str = "127.0.0.1", port: int = 0, address: str | None = None,
              num_cpus: int | None = None) -> Iterator[str]:
    """Ray (a local instance, or the cluster at ``address``) with Serve's HTTP proxy on ``host:port`` (0: a free port):
    yields the proxy's base URL, and shuts Serve and Ray down after."""
    import signal
    import socket

    import ray

    if port == 0:
        with socket.socket() as probe:
            probe.bind((host, 0))
            port = probe.getsockname()[1]
    main_thread = threading.current_thread() is threading.main_thread()
    on_sigterm = signal.getsignal(signal.SIGTERM) if main_thread else None
    ray.init(address=address, num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": _forwarded_environment()})
    if main_thread:
        # Ray's driver installs a SIGTERM handler that dumps a stack and exits on the spot; ours drains first.
        signal.signal(signal.SIGTERM, on_sigterm)
    try:
        serve.start(http_options=HTTPOptions(host=host, port=port))
        yield f"http://{host}:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def run_on_ray(config: ServeConfig, replicas: int, host: str, port: int, address: str | None,
               echo: Callable[[str], None]) -> None:
    """Start (or join) Ray, deploy, and serve until interrupted; then shut the deployment down (replicas drain)."""
    import ray

    with ray_serve(host, port, address) as url:
        available = ray.cluster_resources().get("GPU", 0)
        if 0 < available < replicas:
            raise PipelineError(f"the Ray cluster has {available:g} GPU(s) for {replicas} replicas, one GPU each: "
                                f"ask for at most {int(available)} replicas")
        gpus = 1.0 if available else 0.0
        echo(f"deploying {replicas} replica(s) of {config.package} ({'1 GPU' if gpus else '1 CPU'} each) on Ray")
        serve.run(application(config, replicas, gpus), name="diffship", route_prefix="/")
        echo(f"serving on {url} (Ctrl-C stops)")
        _until_signalled()
        echo("shutting down: finishing the requests accepted")
        left = serve.get_app_handle("diffship").drain.remote(config.timeout_s + 5).result()
        if left:
            echo(f"{left} request(s) still running after {config.timeout_s + 5:g}s; stopping anyway")


def _until_signalled() -> None:
    """Wait for SIGTERM or SIGINT (Ctrl-C), then return, as uvicorn does before it drains."""
    import signal

    stop = threading.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
