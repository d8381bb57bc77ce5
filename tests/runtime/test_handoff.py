"""SDXL's base -> refiner hand-off on its own: where ``denoising_start`` starts and ``denoising_end`` stops, against
diffusers' own code (StableDiffusionXLImg2ImgPipeline.get_timesteps and the base pipeline's cut-off) over every
scheduler, and what is refused. End to end: tests/parity/test_sdxl_image_parity.py."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from diffship.core.families import SD1
from diffship.core.families import SDXL as XL
from diffship.runtime.errors import PipelineInputError
from diffship.runtime.handoff import Handoff, check_handoff
from diffship.runtime.schedulers import SHORT_NAMES, make_scheduler, resolve_scheduler

CONFIG = {"_class_name": "EulerDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012,
          "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "steps_offset": 1,
          "timestep_spacing": "leading", "prediction_type": "epsilon"}
"""SDXL base's scheduler config (tests/parity use the package's own; this is the same one, written out)."""


def diffusers_window(name: str, steps: int, start: float | None, end: float | None) -> tuple[int, int]:
    """(first index, one past the last) of diffusers' timesteps for a hand-off, by diffusers' own code."""
    diffusers = pytest.importorskip("diffusers")
    torch = pytest.importorskip("torch")
    scheduler_class, overrides = resolve_scheduler(name)
    scheduler = getattr(diffusers, scheduler_class.class_name).from_config(CONFIG, **overrides)
    scheduler.set_timesteps(steps)
    everything = scheduler.timesteps
    if start is not None:
        pipe = SimpleNamespace(scheduler=scheduler)
        timesteps, _ = diffusers.StableDiffusionXLImg2ImgPipeline.get_timesteps(pipe, steps, 0.3, "cpu", start)
    else:
        timesteps = everything
    first = len(everything) - len(timesteps)
    if end is not None:  # StableDiffusionXLPipeline.__call__'s cut, as written there
        cutoff = int(round(scheduler.config.num_train_timesteps - (end * scheduler.config.num_train_timesteps)))
        timesteps = timesteps[: len(list(filter(lambda ts: ts >= cutoff, timesteps)))]
    assert torch.equal(timesteps, everything[first : first + len(timesteps)])
    return first, first + len(timesteps)


@pytest.mark.parametrize("name", list(SHORT_NAMES))
def test_handoff_window_matches_diffusers_for_every_scheduler(name: str) -> None:
    for steps in (5, 24):
        sampler = make_scheduler(name, CONFIG, steps)
        for fraction in (0.3, 0.8):
            assert Handoff(denoising_end=fraction).window(sampler, 0) == diffusers_window(name, steps, None, fraction)
            expected = diffusers_window(name, steps, fraction, None)
            assert Handoff(denoising_start=fraction).window(sampler, 0) == expected, (steps, fraction)


def test_handoff_window_refuses_a_fraction_that_leaves_no_step() -> None:
    sampler = make_scheduler("euler", CONFIG, 2)
    with pytest.raises(PipelineInputError, match="denoising_end 0.01 leaves none of the 2 steps"):
        Handoff(denoising_end=0.01).window(sampler, 0)
    assert Handoff(denoising_end=0.6).window(sampler, 0) == (0, 1)
    assert Handoff(denoising_start=0.6).window(sampler, 0) == (1, 2)


@pytest.mark.parametrize("arguments,fragment", [
    ({"denoising_end": 1.0}, "denoising_end must be a fraction of the schedule strictly between 0 and 1"),
    ({"denoising_end": 0}, "denoising_end must be a fraction"),
    ({"denoising_start": "0.8", "has_image": True}, "denoising_start must be a fraction"),
    ({"denoising_start": True, "has_image": True}, "denoising_start must be a fraction"),
    ({"denoising_start": 0.8}, "denoising_start continues a hand-off: give image"),
    ({"denoising_start": 0.8, "has_image": True, "strength_given": True}, "give strength or denoising_start"),
    ({"denoising_start": 0.8, "denoising_end": 0.5, "has_image": True}, "denoising_start 0.8 must be below"),
    ({"output_type": "pil"}, "output_type must be one of image, latent"),
])
def test_handoff_bad_arguments_say_what_is_allowed(arguments: dict[str, object], fragment: str) -> None:
    given = {"denoising_start": None, "denoising_end": None, "output_type": "image", "has_image": False,
             "strength_given": False, **arguments}
    with pytest.raises(PipelineInputError, match=fragment):
        check_handoff(XL, given["denoising_start"], given["denoising_end"], given["output_type"],
                      bool(given["has_image"]), bool(given["strength_given"]))


def test_handoff_refused_for_one_encoder_packages() -> None:
    with pytest.raises(PipelineInputError, match="denoising_end is SDXL's base -> refiner hand-off.*strength"):
        check_handoff(SD1, None, 0.8, "image", False, False)
    assert check_handoff(SD1, None, None, "latent", False, False) == Handoff(output_type="latent")


def test_handoff_start_does_not_noise_again() -> None:
    assert Handoff().noises_start and not Handoff(denoising_start=0.5).noises_start
    assert np.isclose(check_handoff(XL, 0.25, 0.75, "latent", True, False).denoising_start or 0, 0.25)
