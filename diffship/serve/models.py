"""The packages one server may serve (``serve --package A --package B``), one at a time: the web UI's checkpoints
(``/sdapi/v1/sd-models``; ``POST /sdapi/v1/options {"sd_model_checkpoint": ...}`` switches), and the model list of
OpenAI's ``/v1/models``. A package is known by its folder's name (never its path: clients see it)."""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from diffship.runtime.errors import PipelineInputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Served:
    """The package served now and every package this server may serve (names), as a request sees them."""

    current: str
    names: tuple[str, ...]


SERVED: contextvars.ContextVar[Served | None] = contextvars.ContextVar("diffship_served", default=None)
"""Set for each request by ``ServedModels`` (unset under Ray, where requests are parsed in the replicas)."""


class ModelSetError(PipelineInputError):
    """A model name that is not served here, or a switch this server cannot make (422)."""


@dataclass(frozen=True)
class ModelSet:
    """Packages by name, in the order given; the first is served at start."""

    packages: tuple[Path, ...]

    def __post_init__(self) -> None:
        names = [path.name for path in self.packages]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ModelSetError(f"two packages are named {', '.join(twice)}: packages are known by their folder's "
                                f"name, so give folders distinct names")

    @property
    def names(self) -> list[str]:
        return [path.name for path in self.packages]

    def find(self, name: str) -> Path:
        """The package a client names: its folder's name, or the web UI's ``title`` (``name [hash]``)."""
        wanted = name.split(" [", 1)[0].strip()
        for path in self.packages:
            if path.name == wanted or path.name == Path(wanted).stem:
                return path
        raise ModelSetError(f"sd_model_checkpoint {name!r:.80} is not served here; this server has "
                            f"{', '.join(self.names)} (GET /sdapi/v1/sd-models)")


def current_package(backend: Any) -> Path | None:
    """The package a backend serves (None: not an in-process service, such as the Ray gateway)."""
    config = getattr(backend, "config", None)
    package = getattr(config, "package", None)
    return package if isinstance(package, Path) else None


_switching = threading.Lock()


def switch(backend: Any, package: Path) -> None:
    """Serve ``package`` from now on. The new pipeline opens beside the old one (with the server's own options and
    LoRAs) and replaces it between batches: the batch running finishes on the old one; calls already queued run on
    the new one, as the web UI runs its queued jobs on the model chosen meanwhile. Slow (engines open): call it off
    the event loop."""
    from diffship.runtime.pipeline import Pipeline

    config = getattr(backend, "config", None)
    batcher = getattr(backend, "batcher", None)
    if config is None or batcher is None:
        raise ModelSetError("sd_model_checkpoint: switching models needs the single-process server (cli.py serve "
                            "without --ray) once it is ready")
    with _switching:
        if backend.config.package.resolve() == package.resolve():
            return
        started = time.perf_counter()
        pipeline = Pipeline.from_package(package, backend=config.backend, precision=config.precision,
                                         threads=config.threads, device=config.device, loras=config.loras)
        from diffship.serve.prompt_loras import LoraRunner

        # the worker reads it per batch; tagged LoRAs keep their runner
        batcher.runner = LoraRunner(pipeline) if isinstance(batcher.runner, LoraRunner) else pipeline
        backend.pipeline = pipeline
        backend.config = replace(config, package=package)
        log.info("switched to %s in %.1fs", package.name, time.perf_counter() - started)
    # The old pipeline is not closed here: a batch may still run on it; it goes when its last batch lets go of it.


class ServedModels:
    """ASGI middleware: each request is parsed knowing which package is served now (``SERVED``)."""

    def __init__(self, app: ASGIApp, current: Callable[[], str], models: ModelSet) -> None:
        self.app, self.current, self.models = app, current, models

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = SERVED.set(Served(self.current(), tuple(self.models.names)))
        try:
            await self.app(scope, receive, send)
        finally:
            SERVED.reset(token)
