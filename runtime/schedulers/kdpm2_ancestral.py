"""KDPM2AncestralDiscreteScheduler: not implemented yet (being written)."""

from __future__ import annotations

from runtime.schedulers.common import BETA_DEFAULTS, Scheduler, SchedulerError


class KDPM2Ancestral(Scheduler):
    class_name = "KDPM2AncestralDiscreteScheduler"
    DEFAULTS = BETA_DEFAULTS

    def _schedule(self, count: int) -> None:
        raise SchedulerError(f"{self.class_name} is not implemented yet")
