"""Every scheduler at every step count a call may ask for (1 to ``Limits().max_steps``), from both real configs:
finite samples, no IndexError. The scheduler alone over numpy with a stand-in model output (no UNet), so the grid
is cheap: every count where a schedule's arithmetic changes (1-20: warm-ups and lower-order finals below 15; the
integer step ratios 1000 // n at 100, 333, 500; the top, 997-999) runs the whole loop; parity with diffusers at the
top is test_scheduler_parity.py's."""

from __future__ import annotations

import numpy as np
import pytest

from diffship.runtime.requests import Limits
from diffship.runtime.schedulers import SHORT_NAMES, SchedulerError, make_scheduler
from tests.runtime.scheduler_grid import SD15, SD21

SHAPE = (1, 4, 1, 1)
TOP = Limits().max_steps
COUNTS = (*range(1, 21), 49, 50, 51, 99, 100, 101, 332, 333, 334, 499, 500, 501, TOP - 2, TOP - 1, TOP)
DISTILLED = {"lcm": 50, "tcd": 50}
"""Schedulers for distilled models stop at their config's original_inference_steps (refused by name above it)."""


def run(name: str, config: dict, steps: int) -> np.ndarray:
    scheduler = make_scheduler(name, config, steps, np.random.default_rng(0))
    sample = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32) * np.float32(scheduler.init_noise_sigma)
    for i in range(len(scheduler.timesteps)):
        model_output = np.tanh(scheduler.scale_model_input(sample, i)) * np.float32(0.5)
        sample = scheduler.step(model_output, i, sample)
    return sample


@pytest.mark.parametrize("base", ["sd15", "sd21"])
@pytest.mark.parametrize("name", list(SHORT_NAMES))
def test_scheduler_runs_at_every_step_count_the_limits_allow(name: str, base: str) -> None:
    config = SD15 if base == "sd15" else SD21
    most = DISTILLED.get(name, TOP)
    for steps in (count for count in COUNTS if count <= most):
        with np.errstate(all="raise"):  # a division by zero or an overflow is a failure here, not a warning
            sample = run(name, config, steps)
        assert np.isfinite(sample).all(), f"{name} at {steps} steps"


@pytest.mark.parametrize("name", list(SHORT_NAMES))
def test_scheduler_past_its_maximum_is_refused_by_name(name: str) -> None:
    """One step past what a scheduler runs is a SchedulerError naming its maximum, never an IndexError or a NaN."""
    most = DISTILLED.get(name, TOP)
    try:
        sample = run(name, SD15, most + 1)
    except SchedulerError as refused:
        assert f"at most {DISTILLED.get(name, f'{TOP} steps')}" in str(refused).replace("original_inference_steps=", "")
    else:
        assert np.isfinite(sample).all()
