"""What the web UI's ``/sdapi/v1/progress``, ``/interrupt`` and ``/skip`` see: the web-UI jobs this process is
answering, each one step counter fed by the pipeline's step callback and one flag its ``cancel`` reads.

A job begins when a ``txt2img``/``img2img`` request arrives (``JobTracking``, an ASGI middleware, so that it ends
however the request ends) and its request's context carries it to ``a1111_api.parse``, which hands the pipeline
``Job.step_done`` and ``Job.stopped`` (and, where the family has cheap previews, ``Job.progressed`` with a preview
every ``PREVIEW_EVERY`` steps: the job keeps the latest, and ``/progress`` sends it as ``current_image``, a base64 PNG
encoded only when a poll asks for it). Under Ray the requests are parsed in the replicas: the gateway then counts the
jobs but sees no steps (docs/design.md, "Serving")."""

from __future__ import annotations

import base64
import contextvars
import io
import itertools
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from diffship.core.progress import StepEvent
from diffship.runtime.calls import FINISH_EARLY, FinishEarly

PREVIEW_EVERY = 5
"""Steps between a web-UI job's live previews (its ``show_progress_every_n_steps``): each is the runtime's cheap latent
preview (runtime/previews.py, a few microseconds), made only for web-UI jobs, which a client may poll."""

CURRENT_JOB: contextvars.ContextVar[Job | None] = contextvars.ContextVar("diffship_web_ui_job", default=None)
"""The job of the request being handled (None outside a tracked request)."""


@dataclass
class Job:
    """One web-UI request: its steps as the pipeline reports them, and whether it was asked to stop."""

    number: int
    kind: str
    model: str = ""
    """The model served when the request arrived (what ``override_settings.sd_model_checkpoint`` must name)."""
    started: float = field(default_factory=time.monotonic)
    steps: int = 0
    """Sampling steps the call runs (img2img: the part ``denoising_strength`` keeps)."""
    step: int = 0
    """Steps done so far."""
    sampling_started: bool = False
    interrupted: bool = False
    skipped: bool = False
    preview_every: int = 0
    """Steps between previews (0: the served family has no cheap preview)."""
    preview: tuple[Any, ...] | None = None
    """The latest preview (``StepEvent.preview``: uint8 [h, w, 3] arrays), one per image of the piece that made it."""

    def step_done(self, step: int, timestep: float, latents: Any) -> None:
        """The pipeline's step callback (called on its worker thread, once per image row: the highest step wins)."""
        self.sampling_started = True
        self.step = max(self.step, step + 1)
        if step + 1 >= self.steps:
            self.skipped = False  # a skip that came after the piece's last check has nothing left to end

    def progressed(self, event: StepEvent) -> None:
        """The pipeline's progress callback: keeps the latest preview (the step counter is ``step_done``'s)."""
        if event.preview is not None:
            self.preview = event.preview

    def stopped(self) -> bool | FinishEarly:
        """The pipeline's ``cancel``, as the web UI's interrupt and skip: ``FINISH_EARLY`` (the images sampled so far
        are decoded and answered). ``/interrupt`` holds for the rest of the job (a piece of it not yet begun ends
        with nothing, and the answer has the images done); ``/skip`` ends the piece sampling now and is then spent,
        so the job's later pieces run in full (the web UI's skip goes on to the next batch)."""
        if self.interrupted:
            return FINISH_EARLY
        if self.skipped:
            self.skipped = False
            return FINISH_EARLY
        return False


class Progress:
    """The jobs in flight, oldest first (the one the web UI's progress bar follows)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: list[Job] = []
        self._numbers = itertools.count(1)
        self._interrupted = self._skipped = False
        self._last_timestamp = ""

    def begin(self, kind: str, model: str = "", preview_every: int = 0) -> Job:
        with self._lock:
            job = Job(next(self._numbers), kind, model, preview_every=preview_every)
            if not self._jobs:
                self._interrupted = self._skipped = False  # the web UI's flags describe the current run of jobs
                self._last_timestamp = time.strftime("%Y%m%d%H%M%S")
            self._jobs.append(job)
            return job

    def end(self, job: Job) -> None:
        with self._lock:
            if job in self._jobs:
                self._jobs.remove(job)

    def stop(self, skip: bool) -> int:
        """``/interrupt`` (or ``/skip``): the jobs that are sampling stop at their next step, as in the web UI (a job
        that has not begun sampling runs); how many were stopped."""
        with self._lock:
            running = [job for job in self._jobs if job.sampling_started]
            for job in running:
                if skip:
                    job.skipped = True
                else:
                    job.interrupted = True
            if running:
                self._skipped |= skip
                self._interrupted |= not skip
            return len(running)

    def snapshot(self, skip_current_image: bool = False) -> dict[str, Any]:
        """``GET /sdapi/v1/progress`` in the web UI's shape: ``current_image`` is the followed job's latest preview
        (a grid of its images, as the web UI's), a base64 PNG; None before the first or with ``skip_current_image``."""
        with self._lock:
            jobs = list(self._jobs)
            job = next((j for j in jobs if j.sampling_started), jobs[0] if jobs else None)
            progress = min(job.step / job.steps, 1.0) if job is not None and job.steps else 0.0
            elapsed = time.monotonic() - job.started if job is not None else 0.0
            state = {
                "skipped": self._skipped, "interrupted": self._interrupted, "stopping_generation": False,
                "job": f"{job.kind}({job.number})" if job is not None else "", "job_count": len(jobs),
                "job_timestamp": self._last_timestamp if jobs else "0", "job_no": 0,
                "sampling_step": job.step if job is not None else 0,
                "sampling_steps": job.steps if job is not None else 0,
            }
        eta = elapsed / progress - elapsed if progress > 0 else 0.0  # the web UI's own estimate
        preview = job.preview if job is not None and not skip_current_image else None
        return {"progress": progress, "eta_relative": eta, "state": state,
                "current_image": None if preview is None else png_base64(grid(preview)), "textinfo": None}


def grid(pictures: Sequence[Any]) -> Any:
    """Pictures of one size side by side (a PIL image), as the web UI's ``image_grid`` lays out a batch: about as
    many rows as columns (rows: the square root, rounded), filled row by row, black where the last row is short."""
    from PIL import Image

    rows = max(1, round(math.sqrt(len(pictures))))
    columns = math.ceil(len(pictures) / rows)
    height, width = pictures[0].shape[:2]
    out = Image.new("RGB", (columns * width, rows * height))
    for index, picture in enumerate(pictures):
        row, column = divmod(index, columns)
        out.paste(Image.fromarray(picture), (column * width, row * height))
    return out


def png_base64(picture: Any) -> str:
    """A PIL picture as the web UI's API sends one: base64 of the PNG file, no ``data:`` prefix."""
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class JobTracking:
    """ASGI middleware: a web-UI generation request is a ``Job`` of ``progress`` from arrival to its answer."""

    def __init__(self, app: ASGIApp, progress: Progress, paths: dict[str, str], model: Callable[[], str],
                 previews: Callable[[], int] = lambda: 0) -> None:
        self.app, self.progress, self.paths, self.model, self.previews = app, progress, paths, model, previews

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = self.paths.get(scope.get("path", "")) if scope["type"] == "http" else None
        if kind is None or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        job = self.progress.begin(kind, self.model(), self.previews())
        token = CURRENT_JOB.set(job)
        try:
            await self.app(scope, receive, send)
        finally:
            CURRENT_JOB.reset(token)
            self.progress.end(job)
