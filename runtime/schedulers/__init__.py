"""Schedulers over numpy float32, one file each, matching diffusers' classes of the same name.

``make_scheduler(name, config, num_inference_steps)`` builds one from a package's ``scheduler_config.json`` the way
diffusers users swap schedulers: ``NewScheduler.from_config(pipe.scheduler.config)`` (the new class's defaults,
overridden by the keys the config file sets), plus ``use_karras_sigmas=True`` for the ``_karras`` names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from runtime.schedulers.common import Scheduler, SchedulerError, UnsupportedConfigError, start_index
from runtime.schedulers.ddim import DDIM
from runtime.schedulers.dpm_solver import DPMSolverMultistep
from runtime.schedulers.euler import Euler
from runtime.schedulers.euler_ancestral import EulerAncestral
from runtime.schedulers.lcm import LCM
from runtime.schedulers.pndm import PNDM
from runtime.schedulers.unipc import UniPC

__all__ = [
    "SCHEDULER_CLASSES",
    "SHORT_NAMES",
    "Scheduler",
    "SchedulerError",
    "UnsupportedConfigError",
    "make_scheduler",
    "resolve_scheduler",
    "scheduler_names",
    "start_index",
]

SCHEDULER_CLASSES: dict[str, type[Scheduler]] = {
    cls.class_name: cls for cls in (DDIM, PNDM, Euler, EulerAncestral, DPMSolverMultistep, LCM, UniPC)
}
SHORT_NAMES: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "lcm": ("LCMScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
}


def scheduler_names() -> list[str]:
    """Every name ``make_scheduler`` accepts: the short names, then the diffusers class names."""
    return [*SHORT_NAMES, *SCHEDULER_CLASSES]


def resolve_scheduler(name: str) -> tuple[type[Scheduler], dict[str, Any]]:
    """The class and the config overrides a short or class name stands for."""
    if name in SHORT_NAMES:
        class_name, overrides = SHORT_NAMES[name]
        return SCHEDULER_CLASSES[class_name], dict(overrides)
    if name in SCHEDULER_CLASSES:
        return SCHEDULER_CLASSES[name], {}
    raise SchedulerError(f"unknown scheduler {name!r}; known: {', '.join(scheduler_names())}")


def make_scheduler(
    name: str | None,
    config: Mapping[str, Any],
    num_inference_steps: int,
    generator: np.random.Generator | None = None,
) -> Scheduler:
    """A scheduler ``name`` (None: the config's own ``_class_name``) set up for ``num_inference_steps`` steps."""
    if name is None:
        name = config.get("_class_name")
        if not isinstance(name, str):
            raise SchedulerError("the scheduler config names no _class_name; pass a scheduler name")
    scheduler_class, overrides = resolve_scheduler(name)
    return scheduler_class({**config, **overrides}, num_inference_steps, generator)
