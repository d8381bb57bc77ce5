"""Progress for long operations: lines stamped with the seconds since they started (export, engine builds), and a
per-step bar for denoising passes (``ProgressBar``, fed ``StepEvent`` records by ``Pipeline``)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    import numpy as np


class ElapsedLog:
    """``progress("unet: built")`` logs ``[   12.3s] unet: built`` and passes the line to ``on_progress`` if given."""

    def __init__(self, logger: logging.Logger, on_progress: Callable[[str], None] | None = None) -> None:
        self.logger, self.on_progress = logger, on_progress
        self.started = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def __call__(self, message: str) -> None:
        line = f"[{self.elapsed:7.1f}s] {message}"
        self.logger.info(line)
        if self.on_progress is not None:
            self.on_progress(line)


@dataclass(frozen=True)
class StepEvent:
    """One denoising step done, as a progress callback sees it (``Pipeline.prepare(progress=...)``).

    ``step`` counts from 1 to ``steps`` within the pass; a hires-fix call has two passes (``pass_index`` 0 and 1 of
    ``passes``), each with its own count. ``preview``: a cheap RGB picture of the latents ([H/8, W/8, 3] uint8 per
    image, one array per image) on the steps ``preview_every`` asks for, else None."""

    step: int
    steps: int
    timestep: float
    pass_name: str = "generate"
    pass_index: int = 0
    passes: int = 1
    preview: tuple[np.ndarray, ...] | None = None


ProgressCallback = Callable[[StepEvent], None]


class ProgressBar:
    """A per-pass progress bar (``[####......]  12/30  3.41 it/s  ETA 5s``) redrawn in place on ``stream`` (stderr),
    only when that stream is a terminal: piped or logged output gets nothing extra."""

    WIDTH = 24

    def __init__(self, stream: TextIO | None = None, enabled: bool | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.enabled = _is_terminal(self.stream) if enabled is None else enabled
        self.clock = clock
        self.label = ""
        """A prefix for every line (a grid's cell)."""
        self._pass: tuple[str, int] | None = None
        self._started = 0.0
        self._first = 0
        self._drawn = False

    def __call__(self, event: StepEvent) -> None:
        if not self.enabled:
            return
        key = (event.pass_name, event.pass_index)
        if key != self._pass:
            # The pass's clock starts at its first step's end: rates count the steps after it (the first one also
            # pays for warm-up, and when it began is not seen here).
            self._end_line()
            self._pass, self._started, self._first = key, self.clock(), event.step
        self.stream.write("\r" + self.render(event, self.clock() - self._started, self._first))
        self.stream.flush()
        self._drawn = True
        if event.step >= event.steps:
            self._end_line()

    def render(self, event: StepEvent, elapsed: float, first: int = 0) -> str:
        """The bar's text for ``event``, ``elapsed`` seconds after step ``first`` of its pass ended."""
        filled = self.WIDTH * event.step // max(event.steps, 1)
        rate = (event.step - first) / elapsed if elapsed > 0 and event.step > first else None
        remaining = (event.steps - event.step) / rate if rate else None
        name = f"{event.pass_name} {event.pass_index + 1}/{event.passes} " if event.passes > 1 else ""
        speed = "-- it/s" if rate is None else f"{rate:.2f} it/s"
        eta = "ETA --" if remaining is None else f"ETA {_duration(remaining)}"
        return (f"{self.label}{name}[{'#' * filled}{'.' * (self.WIDTH - filled)}] {event.step:>{len(str(event.steps))}}"
                f"/{event.steps}  {speed}  {eta}  ")

    def _end_line(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
        self._pass = None

    def done(self) -> None:
        """Ends a bar left open (a cancelled or failed pass), so that what follows starts on its own line."""
        if self.enabled:
            self._end_line()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or file-less stream
        return False


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}m{seconds:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"
