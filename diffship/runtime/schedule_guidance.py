"""Classifier-free guidance on part of the schedule only: the steps outside run the batch-1 (conditional) UNet.

Two rules, either or both (a step is guided where both allow it):

- ``cutoff`` (0..1): diffusers' ``SDCFGCutoffCallback`` / ``SDXLCFGCutoffCallback`` with ``cutoff_step_ratio``: of the
  ``n`` steps a call runs, steps ``0 .. int(n * cutoff)`` are guided and the rest are not (the callback switches
  guidance off at the end of step ``int(n * cutoff)``). 1 guides every step; 0 guides the first only.
- ``interval`` (low, high): the guidance interval of Kynkäänniemi et al. 2024 ("Applying guidance in a limited
  interval improves sample and distribution quality in diffusion models"): a step is guided where its noise level
  sigma lies in ``(low, high]``. A step's sigma is the variance-exploding sigma ``sqrt((1 - a) / a)`` of the
  cumulative alpha at its timestep (interpolated in log-sigma for fractional timesteps), so it means the same for every scheduler:
  the web UI's sigmas, 14.6 at the start of SD 1.5's schedule and about 0.03 at the end.

Off (both None), every step is guided as before; the loop is unchanged (docs/design.md, "Fewer FLOPs: guidance
schedule and feature caching").
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from diffship.runtime.errors import PipelineInputError
from diffship.runtime.schedulers import Scheduler
from diffship.runtime.schedulers.common import train_sigmas


@dataclass(frozen=True)
class GuidanceSchedule:
    """Where in the schedule classifier-free guidance applies (see the module docstring); the default: everywhere."""

    cutoff: float | None = None
    interval: tuple[float, float] | None = None

    @property
    def active(self) -> bool:
        return self.cutoff is not None or self.interval is not None

    def guided_steps(self, sampler: Scheduler, first: int, stop: int) -> list[bool]:
        """For each step ``first .. stop - 1`` the call runs: whether it is guided."""
        count = stop - first
        flags = []
        for i in range(first, stop):
            guided = True
            if self.cutoff is not None:
                guided = i - first <= int(count * self.cutoff)
            if self.interval is not None:
                low, high = self.interval
                guided = guided and low < step_sigma(sampler, i) <= high
            flags.append(guided)
        return flags

    def describe(self) -> dict[str, Any]:
        """The PNG parameters' record: only what was set."""
        return {**({"guidance_cutoff": self.cutoff} if self.cutoff is not None else {}),
                **({"guidance_interval": list(self.interval)} if self.interval is not None else {})}


def step_sigma(sampler: Scheduler, i: int) -> float:
    """The variance-exploding noise level of step ``i``: the training sigma at its timestep, interpolated in
    log-sigma between train timesteps for fractional ones (the inverse of diffusers' ``_sigma_to_t``, so a Karras
    schedule gets its own sigmas back)."""
    log_sigmas = np.log(train_sigmas(sampler.alphas_cumprod).astype(np.float64))
    return float(np.exp(np.interp(float(sampler.timesteps[i]), np.arange(len(log_sigmas)), log_sigmas)))


def check_guidance_schedule(cutoff: Any, interval: Any) -> GuidanceSchedule:
    """A checked schedule, or a PipelineInputError that says what is allowed."""
    if cutoff is not None:
        if isinstance(cutoff, bool) or not isinstance(cutoff, numbers.Real) or not 0.0 <= float(cutoff) <= 1.0:
            raise PipelineInputError(f"guidance_cutoff must be a number from 0 to 1 (the fraction of the steps after "
                                     f"which guidance stops, as diffusers' CFG cutoff callbacks), got {cutoff!r:.60}")
        cutoff = float(cutoff)
    if interval is not None:
        interval = _interval(interval)
    return GuidanceSchedule(cutoff, interval)


def _interval(value: Any) -> tuple[float, float]:
    wrong = PipelineInputError(
        f"guidance_interval must be two numbers (low, high) with 0 <= low < high: the sigma range (low, high] in which "
        f"guidance applies (SD 1.5's sigmas run from 14.6 down to 0.03; e.g. (0.28, 5.42)), got {value!r:.60}")
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise wrong
    low, high = value
    for bound in (low, high):
        if isinstance(bound, bool) or not isinstance(bound, numbers.Real) or math.isnan(float(bound)):
            raise wrong
    if not 0.0 <= float(low) < float(high):
        raise wrong
    return float(low), float(high)


def parse_interval(text: str) -> tuple[float, float]:
    """``"LOW,HIGH"`` (or ``LOW:HIGH``; ``inf`` allowed as HIGH) -> a checked (low, high)."""
    parts = text.replace(":", ",").split(",")
    try:
        numbers_given = tuple(float(part) for part in parts)
    except ValueError:
        numbers_given = ()
    return _interval(numbers_given if len(numbers_given) == 2 else text)
