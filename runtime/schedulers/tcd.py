"""TCDScheduler: not implemented yet (being written)."""

from __future__ import annotations

from runtime.schedulers.common import BETA_DEFAULTS, Scheduler, SchedulerError


class TCD(Scheduler):
    class_name = "TCDScheduler"
    DEFAULTS = BETA_DEFAULTS

    def _schedule(self, count: int) -> None:
        raise SchedulerError(f"{self.class_name} is not implemented yet")
