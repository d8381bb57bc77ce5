"""SDXL's base -> refiner hand-off: stop denoising part-way (``denoising_end``) and hand the latents over, then
continue from them (``denoising_start``) with another model, as diffusers' StableDiffusionXLPipeline and
StableDiffusionXLImg2ImgPipeline do ("ensemble of expert denoisers")::

    latents = base(prompt, num_inference_steps=40, denoising_end=0.8, output_type="latent").latents
    image = refiner(prompt, image=latents, num_inference_steps=40, denoising_start=0.8).images[0]

Both sides build the same schedule from the same step count; the fraction is of the training timesteps (0.8: the
base runs while the timestep is at or above 200 of 1000, the refiner from below 200). With ``denoising_start`` the
given latents are not noised again (they are already at that step's level) and ``strength`` does not apply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from diffship.core.families import Family
from diffship.runtime.errors import PipelineInputError
from diffship.runtime.schedulers import Scheduler, handoff_start, handoff_stop

OUTPUT_TYPES = ("image", "latent")
"""``image``: decoded HxWx3 uint8 images; ``latent``: the final latents, not decoded (for a refiner's ``image``)."""


@dataclass(frozen=True)
class Handoff:
    """Where a call starts and stops in its schedule, and what it returns (defaults: the whole schedule, images)."""

    denoising_start: float | None = None
    denoising_end: float | None = None
    output_type: str = "image"

    @property
    def noises_start(self) -> bool:
        """Whether the starting latents get the start noise (not when continuing a hand-off: they carry it)."""
        return self.denoising_start is None

    def window(self, sampler: Scheduler, first: int) -> tuple[int, int]:
        """(first step run, one past the last) of ``sampler``'s steps; ``first`` is where strength would start."""
        train = int(sampler.config["num_train_timesteps"])
        if self.denoising_start is not None:
            first = handoff_start(sampler.timesteps, train, sampler.order, self.denoising_start)
        stop = len(sampler.timesteps)
        if self.denoising_end is not None:
            stop = handoff_stop(sampler.timesteps, train, first, self.denoising_end)
        if stop <= first:
            which = (f"denoising_start {self.denoising_start:g}" if self.denoising_start is not None
                     else f"denoising_end {self.denoising_end:g}")
            raise PipelineInputError(f"{which} leaves none of the {len(sampler.timesteps)} steps to run; give more "
                                     "num_inference_steps or move the fraction")
        return first, stop


def check_handoff(family: Family, denoising_start: Any, denoising_end: Any, output_type: Any,
                  has_image: bool, strength_given: bool) -> Handoff:
    """The call's hand-off settings checked (``family.handoff``: whether it takes them at all), or a
    PipelineInputError saying what is allowed."""
    if output_type not in OUTPUT_TYPES:
        raise PipelineInputError(f"output_type must be one of {', '.join(OUTPUT_TYPES)} (latent: undecoded latents, "
                                 f"for a refiner), got {output_type!r:.60}")
    for name, value in (("denoising_start", denoising_start), ("denoising_end", denoising_end)):
        if value is None:
            continue
        if not family.handoff:
            raise PipelineInputError(f"{name} is SDXL's base -> refiner hand-off, and this package is not an SDXL "
                                     f"model ({family.name}); use strength for how much of the schedule "
                                     "image-to-image runs")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise PipelineInputError(f"{name} must be a fraction of the schedule strictly between 0 and 1 (0.8: the "
                                     f"base denoises 80%, the refiner the rest), got {value!r:.60}")
    if denoising_start is not None:
        if not has_image:
            raise PipelineInputError("denoising_start continues a hand-off: give image (the latents a base model "
                                     "returned with denoising_end and output_type='latent', or an image)")
        if strength_given:
            raise PipelineInputError("give strength or denoising_start, not both: denoising_start sets where the "
                                     "schedule starts")
        if denoising_end is not None and denoising_start >= denoising_end:
            raise PipelineInputError(f"denoising_start {denoising_start:g} must be below denoising_end "
                                     f"{denoising_end:g}")
    return Handoff(None if denoising_start is None else float(denoising_start),
                   None if denoising_end is None else float(denoising_end), str(output_type))
