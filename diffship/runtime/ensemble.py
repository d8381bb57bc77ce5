"""SDXL's ensemble of experts: the base denoises the start of the schedule and hands its latents to the refiner, which
finishes it (diffusers' "ensemble of experts"; the hand-off arithmetic is runtime.handoff's).

``run_ensemble`` drives the two pipelines through their public API: the base with ``output_type="latent"`` and
``denoising_end``, the refiner with ``image=latents`` and ``denoising_start`` at the same fraction. The base is closed
before the refiner opens, so that two full-size SDXL UNets never share memory.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from diffship.runtime.errors import PipelineInputError

if TYPE_CHECKING:
    from diffship.runtime.pipeline import GenerationResult, Pipeline

DEFAULT_DENOISING_END = 0.8
"""diffusers' example fraction for the base (its SDXL documentation's "high_noise_frac")."""

REFINER_ONLY = ("aesthetic_score", "negative_aesthetic_score")
BASE_ONLY = ("height", "width", "image", "mask_image", "strength", "padding_mask_crop", "sample_mode", "target_size",
             "negative_target_size")
"""Arguments the base takes and the refiner does not (the size comes to the refiner with the latents); the aesthetic
scores go the other way (``REFINER_ONLY``)."""


@dataclass(frozen=True)
class EnsembleResult:
    """The base's result (latents only, ``latents`` set) and the refiner's (the images)."""

    base: GenerationResult
    refined: GenerationResult

    @property
    def handoff(self) -> float:
        """The fraction of the schedule at which the refiner took over."""
        return float(self.base.parameters[0]["denoising_end"])

    @property
    def parameters(self) -> list[dict[str, Any]]:
        """What made each image: the refiner's parameters, with the base's model under ``base``."""
        return [{**params, "base": self.base.parameters[0]["model"]} for params in self.refined.parameters]


def base_arguments(arguments: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in arguments.items() if name not in REFINER_ONLY}


def refiner_arguments(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The refiner's share of ``arguments``; unset ones (None) are left to its own defaults."""
    kept = {name: value for name, value in arguments.items() if name not in BASE_ONLY}
    return {name: value for name, value in kept.items() if value is not None or name == "negative_prompt"}


def run_ensemble(
    base: Pipeline,
    open_refiner: Callable[[], Pipeline],
    prompts: Sequence[str],
    arguments: Mapping[str, Any] | None = None,
    images_per_prompt: int = 1,
    denoising_end: float | None = None,
    callback: Callable[[int, float, Any], None] | None = None,
) -> EnsembleResult:
    """Run ``prompts`` through ``base`` up to ``denoising_end`` (default 0.8), close it, then finish them with the
    pipeline ``open_refiner()`` opens (closed when done). ``arguments`` are ``Pipeline.__call__``'s, for both sides:
    each gets its share (``base_arguments``, ``refiner_arguments``). ``callback`` sees the steps of both."""
    arguments = arguments or {}
    if not base.family.handoff:
        base.close()
        raise PipelineInputError(f"the base -> refiner hand-off takes an SDXL base package; {base.package.root} is "
                                 f"{base.family.name} ({base.family.description})")
    try:
        handed = base(list(prompts), num_images_per_prompt=images_per_prompt, callback=callback, output_type="latent",
                      denoising_end=DEFAULT_DENOISING_END if denoising_end is None else denoising_end,
                      **base_arguments(arguments))
    finally:
        base.close()
    with open_refiner() as refiner:
        refined = refiner(list(prompts), num_images_per_prompt=images_per_prompt, callback=callback,
                          image=handed.latents, denoising_start=handed.parameters[0]["denoising_end"],
                          **refiner_arguments(arguments))
    return EnsembleResult(handed, refined)
