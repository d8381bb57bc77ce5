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
    "DESCRIPTIONS",
    "NOT_IMPLEMENTED",
    "SCHEDULER_CLASSES",
    "SHORT_NAMES",
    "Scheduler",
    "SchedulerError",
    "UnsupportedConfigError",
    "make_scheduler",
    "resolve_scheduler",
    "scheduler_names",
    "start_index",
    "WEB_UI_NAMES",
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


WEB_UI_NAMES: dict[str, str] = {
    "DDIM": "ddim",
    "PLMS": "pndm",
    "Euler": "euler",
    "Euler a": "euler_a",
    "DPM++ 2M": "dpmpp_2m",
    "DPM++ 2M Karras": "dpmpp_2m_karras",
    "LCM": "lcm",
    "UniPC": "unipc",
}
"""AUTOMATIC1111's sampler names for the schedulers here (the mapping of diffusers' scheduler overview), matched
without regard to case."""

NOT_IMPLEMENTED: dict[str, str] = {
    "DPM++ 2M SDE": "DPMSolverMultistepScheduler(algorithm_type='sde-dpmsolver++')",
    "DPM++ 2M SDE Karras": "DPMSolverMultistepScheduler(algorithm_type='sde-dpmsolver++', use_karras_sigmas=True)",
    "DPM++ SDE": "DPMSolverSinglestepScheduler",
    "DPM++ SDE Karras": "DPMSolverSinglestepScheduler(use_karras_sigmas=True)",
    "DPM2": "KDPM2DiscreteScheduler",
    "DPM2 Karras": "KDPM2DiscreteScheduler(use_karras_sigmas=True)",
    "DPM2 a": "KDPM2AncestralDiscreteScheduler",
    "DPM2 a Karras": "KDPM2AncestralDiscreteScheduler(use_karras_sigmas=True)",
    "Heun": "HeunDiscreteScheduler",
    "LMS": "LMSDiscreteScheduler",
    "LMS Karras": "LMSDiscreteScheduler(use_karras_sigmas=True)",
    "DEIS": "DEISMultistepScheduler",
    "TCD": "TCDScheduler",
}
"""Web UI and diffusers names people ask for that this runtime does not implement (yet): refused by name."""

DESCRIPTIONS: dict[str, str] = {
    "ddim": "deterministic, first-order; the SD 2.x configs' own; typically 20-50 steps",
    "pndm": "pseudo-linear multistep (PLMS); the SD 1.x configs' own; steps + 1 UNet calls; typically 30-50",
    "euler": "deterministic first-order Euler over sigmas; typically 20-30 steps",
    "euler_a": "ancestral Euler: fresh noise every step, so the picture changes with the step count; typically 20-30",
    "dpmpp_2m": "DPM-Solver++ second-order multistep; typically 15-25 steps",
    "dpmpp_2m_karras": "DPM++ 2M on Karras sigmas, a common web UI choice; typically 15-25 steps",
    "lcm": "for latent-consistency (LCM/LCM-LoRA) models only: 2-8 steps, guidance about 1-2",
    "unipc": "UniPC multistep predictor-corrector; typically 10-20 steps",
}
"""What each scheduler is good for, one line each (``generate --scheduler list``)."""


def scheduler_names() -> list[str]:
    """Every name ``make_scheduler`` accepts: the short names, the web UI names, then the diffusers class names."""
    return [*SHORT_NAMES, *WEB_UI_NAMES, *SCHEDULER_CLASSES]


def resolve_scheduler(name: str) -> tuple[type[Scheduler], dict[str, Any]]:
    """The class and the config overrides a short, web UI or class name stands for."""
    web_ui = {key.lower(): short for key, short in WEB_UI_NAMES.items()}
    short_name = web_ui.get(name.lower(), name)
    if short_name in SHORT_NAMES:
        class_name, overrides = SHORT_NAMES[short_name]
        return SCHEDULER_CLASSES[class_name], dict(overrides)
    if name in SCHEDULER_CLASSES:
        return SCHEDULER_CLASSES[name], {}
    missing = {key.lower(): value for key, value in NOT_IMPLEMENTED.items()}
    missing.update({value.split("(")[0].lower(): value.split("(")[0] for value in NOT_IMPLEMENTED.values()})
    if name.lower() in missing:
        raise SchedulerError(
            f"scheduler {name!r} (diffusers' {missing[name.lower()]}) is not implemented in this runtime yet; known: "
            f"{', '.join(scheduler_names())}"
        )
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
