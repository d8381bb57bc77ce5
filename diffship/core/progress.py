"""Progress lines for long operations (export, engine builds), stamped with the seconds since they started."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


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
