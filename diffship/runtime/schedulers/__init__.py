"""Schedulers over numpy float32, one file each, matching diffusers' classes of the same name.

``make_scheduler(name, config, num_inference_steps)`` builds one from a package's ``scheduler_config.json`` the way
diffusers users swap schedulers: ``NewScheduler.from_config(pipe.scheduler.config)`` (the new class's defaults,
overridden by the keys the config file sets), plus ``use_karras_sigmas=True`` for the ``_karras`` names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from diffship.runtime.schedulers.common import (
    Scheduler,
    SchedulerError,
    UnsupportedConfigError,
    handoff_start,
    handoff_stop,
    start_index,
)
from diffship.runtime.schedulers.ddim import DDIM
from diffship.runtime.schedulers.deis import DEIS
from diffship.runtime.schedulers.dpm_sde import DPMSolverSDE
from diffship.runtime.schedulers.dpm_solver import DPMSolverMultistep
from diffship.runtime.schedulers.euler import Euler
from diffship.runtime.schedulers.euler_ancestral import EulerAncestral
from diffship.runtime.schedulers.heun import Heun
from diffship.runtime.schedulers.kdpm2 import KDPM2
from diffship.runtime.schedulers.kdpm2_ancestral import KDPM2Ancestral
from diffship.runtime.schedulers.lcm import LCM
from diffship.runtime.schedulers.lms import LMS
from diffship.runtime.schedulers.pndm import PNDM
from diffship.runtime.schedulers.tcd import TCD
from diffship.runtime.schedulers.unipc import UniPC

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
    "handoff_start",
    "handoff_stop",
    "start_index",
    "WEB_UI_NAMES",
]

SCHEDULER_CLASSES: dict[str, type[Scheduler]] = {
    cls.class_name: cls
    for cls in (DDIM, PNDM, Euler, EulerAncestral, Heun, LMS, KDPM2, KDPM2Ancestral, DPMSolverMultistep, DPMSolverSDE,
                DEIS, UniPC, LCM, TCD)
}
KARRAS = {"use_karras_sigmas": True}
SDE = {"algorithm_type": "sde-dpmsolver++"}
SHORT_NAMES: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_karras": ("EulerDiscreteScheduler", KARRAS),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "lms_karras": ("LMSDiscreteScheduler", KARRAS),
    "dpm2": ("KDPM2DiscreteScheduler", {}),
    "dpm2_karras": ("KDPM2DiscreteScheduler", KARRAS),
    "dpm2_a": ("KDPM2AncestralDiscreteScheduler", {}),
    "dpm2_a_karras": ("KDPM2AncestralDiscreteScheduler", KARRAS),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", KARRAS),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", SDE),
    "dpmpp_2m_sde_karras": ("DPMSolverMultistepScheduler", {**SDE, **KARRAS}),
    "dpmpp_sde": ("DPMSolverSDEScheduler", {}),
    "dpmpp_sde_karras": ("DPMSolverSDEScheduler", KARRAS),
    "deis": ("DEISMultistepScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "lcm": ("LCMScheduler", {}),
    "tcd": ("TCDScheduler", {}),
}


WEB_UI_NAMES: dict[str, str] = {
    "DDIM": "ddim",
    "PLMS": "pndm",
    "Euler": "euler",
    "Euler a": "euler_a",
    "Heun": "heun",
    "LMS": "lms",
    "LMS Karras": "lms_karras",
    "DPM2": "dpm2",
    "DPM2 Karras": "dpm2_karras",
    "DPM2 a": "dpm2_a",
    "DPM2 a Karras": "dpm2_a_karras",
    "DPM++ 2M": "dpmpp_2m",
    "DPM++ 2M Karras": "dpmpp_2m_karras",
    "DPM++ 2M SDE": "dpmpp_2m_sde",
    "DPM++ 2M SDE Karras": "dpmpp_2m_sde_karras",
    "DPM++ SDE": "dpmpp_sde",
    "DPM++ SDE Karras": "dpmpp_sde_karras",
    "DEIS": "deis",
    "UniPC": "unipc",
    "LCM": "lcm",
    "TCD": "tcd",
}
"""AUTOMATIC1111's sampler names for the schedulers here (the mapping of diffusers' scheduler overview), matched
without regard to case."""

NOT_IMPLEMENTED: dict[str, str] = {
    "DPM fast": "no diffusers scheduler",
    "DPM adaptive": "no diffusers scheduler",
    "DPM++ 2S a": "no diffusers scheduler (DPMSolverSinglestepScheduler is close but not the same sampler)",
    "DPM++ 3M SDE": "not mapped: diffusers' overview names no class for it; DPMSolverMultistepScheduler's third-order "
                    "SDE solver (dpmpp_2m_sde with solver_order 3 in the config) is implemented, but is not known to "
                    "be the web UI's sampler",
    "DPMSolverSinglestepScheduler": "DPMSolverSinglestepScheduler",
}
"""Web UI and diffusers names people ask for that this runtime does not implement: refused by name."""

DESCRIPTIONS: dict[str, str] = {
    "ddim": "deterministic, first-order; the SD 2.x configs' own; typically 20-50 steps; eta > 0 adds fresh noise",
    "pndm": "pseudo-linear multistep (PLMS); the SD 1.x configs' own; steps + 1 UNet calls; typically 30-50",
    "euler": "deterministic first-order Euler over sigmas; typically 20-30 steps",
    "euler_karras": "Euler on Karras sigmas (denser near the end); typically 20-30 steps",
    "euler_a": "ancestral Euler: fresh noise every step, so the picture changes with the step count; typically 20-30",
    "heun": "second-order Heun: 2 UNet calls per step (2 x steps - 1), sharper at few steps; typically 10-20",
    "lms": "linear multistep (order 4) over sigmas; typically 30-50 steps",
    "lms_karras": "LMS on Karras sigmas; typically 30-50 steps",
    "dpm2": "KDPM2, second-order: 2 UNet calls per step; typically 15-25 steps",
    "dpm2_karras": "KDPM2 on Karras sigmas: 2 UNet calls per step; typically 15-25 steps",
    "dpm2_a": "ancestral KDPM2: 2 UNet calls per step, fresh noise every step; typically 20-30 steps",
    "dpm2_a_karras": "ancestral KDPM2 on Karras sigmas: 2 UNet calls per step; typically 20-30 steps",
    "dpmpp_2m": "DPM-Solver++ second-order multistep; typically 15-25 steps",
    "dpmpp_2m_karras": "DPM++ 2M on Karras sigmas, a common web UI choice; typically 15-25 steps",
    "dpmpp_2m_sde": "stochastic DPM++ 2M (fresh noise each step): more detail, changes with steps; typically 20-30",
    "dpmpp_2m_sde_karras": "DPM++ 2M SDE on Karras sigmas, a popular web UI choice; typically 20-30 steps",
    "dpmpp_sde": "DPM++ SDE: second-order, 2 UNet calls per step, Brownian noise; typically 10-20 steps",
    "dpmpp_sde_karras": "DPM++ SDE on Karras sigmas: 2 UNet calls per step; typically 10-20 steps",
    "deis": "DEIS exponential-integrator multistep (order 3); good at 10-20 steps",
    "unipc": "UniPC multistep predictor-corrector; typically 10-20 steps",
    "lcm": "for latent-consistency (LCM/LCM-LoRA) models only: 2-8 steps, guidance about 1-2",
    "tcd": "for TCD/LCM-distilled models only: 2-8 steps; --eta (gamma) adds fresh noise: 0 by default, 0.3 in TCD's paper",
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
    if name.lower() in missing:
        raise SchedulerError(
            f"scheduler {name!r} ({missing[name.lower()]}) is not implemented in this runtime; known: "
            f"{', '.join(scheduler_names())}"
        )
    raise SchedulerError(f"unknown scheduler {name!r}; known: {', '.join(scheduler_names())}")


def make_scheduler(
    name: str | None,
    config: Mapping[str, Any],
    num_inference_steps: int,
    generator: np.random.Generator | None = None,
    eta: float = 0.0,
) -> Scheduler:
    """A scheduler ``name`` (None: the config's own ``_class_name``) set up for ``num_inference_steps`` steps;
    ``eta`` as diffusers' pipelines pass it to the step of DDIM and TCD."""
    if name is None:
        name = config.get("_class_name")
        if not isinstance(name, str):
            raise SchedulerError("the scheduler config names no _class_name; pass a scheduler name")
    scheduler_class, overrides = resolve_scheduler(name)
    return scheduler_class({**config, **overrides}, num_inference_steps, generator, eta)
