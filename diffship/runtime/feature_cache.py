"""DeepCache at run time (Ma et al., CVPR 2024): full UNet steps that also return the deep feature at the package's
cache branch, and shallow steps in between that run only the outer layers from it (docs/design.md, "Fewer FLOPs:
guidance schedule and feature caching"). The package holds the two graphs (``export --cache-branch``); a call asks
for ``cache_interval`` N: one full step in N, uniformly (steps 0, N, 2N, ...) or non-uniformly, denser around
``cache_center`` as the authors' ``sample_from_quad_center`` places them (their pipeline's ``uniform=False``).

Off (no ``cache_interval``, or 1), the plain UNet runs every step and nothing here is used.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from diffship.core.specs import CACHE_COMPONENTS
from diffship.engines.base import EngineBase
from diffship.runtime.errors import PipelineInputError
from diffship.runtime.guidance import run_engine

FULL, SHALLOW = CACHE_COMPONENTS
"""The package components of the two graphs (exporter/deepcache.py writes them)."""
FEATURE = "cached_feature"
SCHEDULES = ("uniform", "nonuniform")
DEFAULT_POWER = 1.4
"""The authors' exponent for the non-uniform schedule (their scripts' ``--pow 1.4``)."""


@dataclass(frozen=True)
class FeatureCaching:
    """One full step in ``interval`` (``schedule``: where they fall; ``center``: the step the non-uniform schedule
    is densest around, default 30% of the steps as the authors' 15 of 50)."""

    interval: int
    schedule: str = "uniform"
    center: int | None = None
    power: float = DEFAULT_POWER

    def full_steps(self, count: int) -> list[bool]:
        """For each of ``count`` UNet calls: whether it is a full step (the first always is)."""
        if self.interval <= 1 or count <= 1:
            return [True] * count
        if self.schedule == "uniform":
            chosen = set(range(0, count, self.interval))
        else:
            slow = -(-count // self.interval)
            center = round(0.3 * count) if self.center is None else self.center
            chosen = set(quad_center_steps(count, slow, min(center, count - 1), self.power))
        return [i in chosen for i in range(count)]

    def describe(self) -> dict[str, Any]:
        return {"cache_interval": self.interval,
                **({"cache_schedule": self.schedule} if self.schedule != "uniform" else {}),
                **({"cache_center": self.center} if self.center is not None else {})}


def quad_center_steps(total: int, samples: int, center: int, power: float = DEFAULT_POWER) -> list[int]:
    """The full steps of DeepCache's non-uniform schedule: the authors' ``sample_from_quad_center`` (their
    pipeline_stable_diffusion.py), the same arithmetic (a negative base to a fractional power is complex there too);
    where no exponent above 1 gives ``samples`` distinct steps, the uniform ones."""
    while power > 1:
        # Python's float power, as theirs: complex for the negative base, float for the other end.
        low: Any = (-center) ** (1 / power)
        high: Any = (total - center) ** (1 / power)
        values = np.linspace(low, high, samples + 1) ** power
        with np.errstate(all="ignore"):
            steps = [0] + [int(x) + center for x in np.unique(values.real.astype(np.int32))[1:-1]]
        if len(steps) == samples:
            return steps
        power -= 0.02
    return list(range(0, total, -(-total // samples)))


def check_feature_caching(interval: Any, schedule: Any, center: Any) -> FeatureCaching | None:
    """The checked settings, None when off; a PipelineInputError that says what is allowed otherwise."""
    if interval is None and schedule == "uniform" and center is None:
        return None
    if isinstance(interval, bool) or not isinstance(interval, (int, np.integer)) or not 1 <= interval <= 1000:
        raise PipelineInputError(f"cache_interval must be a whole number from 1 (off) up: one full UNet step in N, the "
                                 f"others reuse its deep features (DeepCache; 3 to 5 is usual), got {interval!r:.60}")
    if schedule not in SCHEDULES:
        raise PipelineInputError(f"cache_schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r:.60}")
    if center is not None and (isinstance(center, bool) or not isinstance(center, numbers.Integral) or center < 1):
        raise PipelineInputError(f"cache_center must be a step number >= 1 (where the non-uniform schedule is "
                                 f"densest), got {center!r:.60}")
    if center is not None and schedule != "nonuniform":
        raise PipelineInputError("cache_center places the non-uniform schedule: give cache_schedule='nonuniform' too")
    return None if interval == 1 else FeatureCaching(int(interval), schedule, None if center is None else int(center))


class FeatureCache:
    """The UNet call of one denoising loop under DeepCache: ``__call__(feeds)`` runs the full graph (keeping its
    feature) or the shallow one (from the kept feature), in the order of ``full_steps``, one entry per call.

    A shallow call needs a feature for its rows: the kept one, or the conditional half of a guided full step's for an
    unguided step (the guidance schedule); otherwise (an unguided full step before a guided one) it runs full."""

    def __init__(self, full: EngineBase, shallow: EngineBase, full_steps: list[bool]) -> None:
        self.full, self.shallow, self.full_steps = full, shallow, full_steps
        self.calls = 0
        self.feature: np.ndarray | None = None

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        step, self.calls = self.calls, self.calls + 1
        rows = len(feeds["sample"])
        feature = self.feature
        if feature is not None and len(feature) == 2 * rows:
            feature = feature[rows:]  # a guided step's [uncond; cond] feature, for the conditional call
        if step < len(self.full_steps) and not self.full_steps[step] and feature is not None and len(feature) == rows:
            return run_engine(self.shallow, {**feeds, FEATURE: feature})["model_output"]
        outputs = run_engine(self.full, feeds)
        self.feature = outputs[FEATURE]
        return outputs["model_output"]
