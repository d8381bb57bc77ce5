"""The web UI's "hires fix": a text-to-image pass at the base size, an upscale, then an image-to-image pass at the
target size with its own strength, steps, sampler and prompt. One call (``run_hires``), one result whose images record
both passes (the first pass's parameters, the second's under ``hires``).

Upscalers, as the web UI names them: the latent ones resize the first pass's latents with torch's interpolate
(runtime/upscale.py: ``Latent`` bilinear, ``Latent (antialiased)``, ``Latent (bicubic)``, ``Latent (bicubic
antialiased)``, ``Latent (nearest)``, ``Latent (nearest-exact)``); ``Lanczos`` decodes the first pass, resizes the
picture with PIL's Lanczos and encodes it again. Both calls are checked (sizes against the engines' profiles
included) before the first one runs, so a profile that does not cover the second pass is refused at once, naming
the size it lacks. Composed the same way, diffusers gives the same images: txt2img with ``output_type="latent"``,
torch's interpolate, img2img (tests/parity/test_hires_parity.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from diffship.core.errors import command
from diffship.core.progress import ProgressCallback
from diffship.runtime.calls import Call
from diffship.runtime.errors import PipelineError, PipelineInputError
from diffship.runtime.previews import in_pass
from diffship.runtime.results import GenerationResult
from diffship.runtime.upscale import interpolate, lanczos

if TYPE_CHECKING:
    from diffship.runtime.pipeline import Pipeline

UPSCALERS: dict[str, tuple[str, bool] | None] = {
    "latent": ("bilinear", False),
    "latent-antialiased": ("bilinear", True),
    "latent-bicubic": ("bicubic", False),
    "latent-bicubic-antialiased": ("bicubic", True),
    "latent-nearest": ("nearest", False),
    "latent-nearest-exact": ("nearest-exact", False),
    "lanczos": None,
}
"""Upscaler -> (torch interpolate mode, antialias) for latent upscalers; None: Lanczos on the decoded picture."""
WEB_UI_UPSCALERS = {"Latent": "latent", "Latent (antialiased)": "latent-antialiased",
                    "Latent (bicubic)": "latent-bicubic", "Latent (bicubic antialiased)": "latent-bicubic-antialiased",
                    "Latent (nearest)": "latent-nearest", "Latent (nearest-exact)": "latent-nearest-exact",
                    "Lanczos": "lanczos"}
"""The web UI's names (its ``hr_upscaler`` values) for the same upscalers."""
SECOND_PASS_DROPS = ("latents", "height", "width", "num_inference_steps", "scheduler", "negative_prompt", "image",
                     "mask_image", "strength", "output_type", "progress", "original_size", "target_size",
                     "negative_original_size", "negative_target_size", "start_noise", "image_noise")
"""First-pass arguments the second pass does not inherit (its size, schedule, prompts and draws are its own; SDXL's
size conditioning defaults to the target size)."""


@dataclass(frozen=True)
class HiresFix:
    """What the second pass does. ``scale`` (or ``size``, (height, width) pixels: the web UI's ``hr_resize_y/x``, a 0
    side following the picture's aspect) gives the target; ``steps``/``scheduler`` None: the first pass's;
    ``prompt``/``negative_prompt`` None: the first pass's (the web UI's ``hr_prompt``)."""

    scale: float = 2.0
    upscaler: str = "latent"
    strength: float = 0.7
    steps: int | None = None
    scheduler: str | None = None
    prompt: str | Sequence[str] | None = None
    negative_prompt: str | Sequence[str] | None = None
    size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        name = WEB_UI_UPSCALERS.get(self.upscaler, self.upscaler)
        if name not in UPSCALERS:
            raise PipelineInputError(f"unknown hires upscaler {self.upscaler!r:.60}; give one of "
                                     f"{', '.join(UPSCALERS)} (or the web UI's {', '.join(WEB_UI_UPSCALERS)})")
        object.__setattr__(self, "upscaler", name)
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or not 1.0 <= self.scale <= 8.0 \
                or not math.isfinite(self.scale):
            raise PipelineInputError(f"hires scale must be a number from 1 to 8, got {self.scale!r:.60}")

    def target(self, height: int, width: int, multiple: int) -> tuple[int, int]:
        """The second pass's (height, width) from the first's, or a PipelineInputError when it is not a multiple of
        the package's ``multiple`` (naming a scale that gives one)."""
        if self.size is not None:
            high, wide = self.size
            if not high and not wide:
                raise PipelineInputError("hires size: give a height or a width (or both), not 0x0")
            high, wide = (high or wide * height // width), (wide or high * width // height)
            what = f"hires size {wide}x{high} (width x height)"
        else:
            high, wide = int(height * self.scale), int(width * self.scale)
            what = f"hires scale {self.scale:g} of {width}x{height} gives {wide}x{high} (width x height), which"
        if high % multiple or wide % multiple:
            good = _good_scale(height, width, multiple, self.scale)
            raise PipelineInputError(f"{what} is not a multiple of {multiple} pixels; "
                                     + (f"try scale {good:g}" if good else "give a size that is"))
        return high, wide

    @property
    def latent(self) -> bool:
        return UPSCALERS[self.upscaler] is not None

    def describe(self, height: int, width: int, steps: int, scheduler: str) -> dict[str, Any]:
        """What the second pass did, for each image's parameters (``hires``)."""
        return {"upscaler": self.upscaler, **({"scale": self.scale} if self.size is None else {}),
                "height": height, "width": width, "strength": self.strength, "steps": steps, "scheduler": scheduler,
                **({"prompt": self.prompt} if self.prompt is not None else {}),
                **({"negative_prompt": self.negative_prompt} if self.negative_prompt is not None else {})}


def _good_scale(height: int, width: int, multiple: int, near: float) -> float | None:
    """The scale nearest ``near`` (two decimals) that gives whole multiples of ``multiple`` on both sides."""
    candidates = [k / 100 for k in range(101, 801) if (height * k) % 100 == 0 and (width * k) % 100 == 0
                  and (height * k // 100) % multiple == 0 and (width * k // 100) % multiple == 0]
    return min(candidates, key=lambda s: abs(s - near)) if candidates else None


@dataclass(frozen=True)
class HiresPlan:
    """A hires-fix call checked and split in its parts, for whoever runs the calls (``run_hires`` directly, the
    service through its queue): ``first`` runs, ``second(done)`` gives the calls of the second pass from its result,
    ``finish`` joins both passes' results into one."""

    pipe: Pipeline
    hires: HiresFix
    prompt: str | Sequence[str]
    first: Call
    second_arguments: dict[str, Any]
    size: tuple[int, int]
    """The second pass's (height, width)."""
    steps: int

    def second(self, done: GenerationResult) -> list[Call]:
        """The second pass's calls: one on the upscaled latents, or one per Lanczos-upscaled picture."""
        if self.hires.latent:
            assert done.latents is not None
            mode, antialias = UPSCALERS[self.hires.upscaler] or ("", False)
            factor = self.pipe.constants.vae_scale_factor
            upscaled = interpolate(done.latents, (self.size[0] // factor, self.size[1] // factor), mode, antialias)
            return [self.pipe.prepare(self.prompt, image=upscaled, **self.second_arguments)]
        return _pixel_calls(self.pipe, self.prompt, done, self.size, self.second_arguments)

    def finish(self, done: GenerationResult, finished: Sequence[GenerationResult]) -> GenerationResult:
        timings = done.timings
        for result in finished:
            timings = timings.add(result.timings)
        name = finished[0].parameters[0]["scheduler"]
        return GenerationResult([image for result in finished for image in result.images], timings,
                                [{**_first_pass(params), "hires": self.hires.describe(*self.size, self.steps, name)}
                                 for params in done.parameters])


def run_hires(pipe: Pipeline, prompt: str | Sequence[str], hires: HiresFix, arguments: Mapping[str, Any] | None = None,
              hires_noise: np.ndarray | None = None) -> GenerationResult:
    """The first pass (``arguments``: ``Pipeline.__call__``'s, text-to-image), the upscale, the second pass. Both
    calls are checked before either runs. ``hires_noise``: the second pass's injected ``start_noise``."""
    plan = plan_hires(pipe, prompt, hires, arguments, hires_noise)
    done = _run(pipe, plan.first)
    return plan.finish(done, [_run(pipe, call) for call in plan.second(done)])


def plan_hires(pipe: Pipeline, prompt: str | Sequence[str], hires: HiresFix, arguments: Mapping[str, Any] | None = None,
               hires_noise: np.ndarray | None = None) -> HiresPlan:
    """Both passes checked (the second with a stand-in for the first's output), nothing run."""
    arguments = dict(arguments or {})
    if arguments.get("image") is not None or arguments.get("mask_image") is not None:
        raise PipelineInputError("the hires fix starts from text: give no image or mask_image (upscale a picture with "
                                 "image-to-image at the size you want)")
    progress: ProgressCallback | None = arguments.get("progress")
    first = pipe.prepare(prompt, **{**arguments, "output_type": "latent" if hires.latent else "image",
                                    **({"progress": in_pass(progress, "first pass", 0, 2)} if progress else {})})
    request = first.request
    high, wide = hires.target(request.height, request.width, pipe.constants.spatial_multiple)
    steps = hires.steps if hires.steps is not None else request.steps
    second_arguments = {**{k: v for k, v in arguments.items() if k not in SECOND_PASS_DROPS},
                        "num_inference_steps": steps, "seed": request.seeds[0], "height": high, "width": wide,
                        "strength": hires.strength, "scheduler": hires.scheduler or arguments.get("scheduler"),
                        "negative_prompt": hires.negative_prompt if hires.negative_prompt is not None
                        else arguments.get("negative_prompt"), "start_noise": hires_noise,
                        **({"progress": in_pass(progress, "hires", 1, 2)} if progress else {})}
    second_prompt = hires.prompt if hires.prompt is not None else prompt
    placeholder = (np.zeros((1, pipe.constants.latent_channels, high // pipe.constants.vae_scale_factor,
                             wide // pipe.constants.vae_scale_factor), np.float32) if hires.latent
                   else np.zeros((high, wide, 3), np.uint8))
    try:
        pipe.prepare(second_prompt, image=placeholder, **second_arguments)
    except PipelineInputError as exc:
        hint = (f" ({command(f'build-trt --hires-scale {high / request.height:g}')} builds engines that cover both "
                "passes)") if "loaded engines" in str(exc) else ""
        raise PipelineInputError(f"the hires pass at {wide}x{high} (width x height): {exc}{hint}") from None
    return HiresPlan(pipe, hires, second_prompt, first, second_arguments, (high, wide), steps)


def _run(pipe: Pipeline, call: Call) -> GenerationResult:
    outcome = pipe.run_batch([call])[0]
    if isinstance(outcome, PipelineError):
        raise outcome
    return outcome


def _pixel_calls(pipe: Pipeline, prompt: str | Sequence[str], done: GenerationResult, size: tuple[int, int],
                 arguments: dict[str, Any]) -> list[Call]:
    """The second pass from Lanczos-upscaled pictures: one image-to-image call per picture (each its own prompt,
    negative prompt and seed), as one image input is one picture."""
    count = len(done.images)
    prompts = [prompt] * count if isinstance(prompt, str) else [p for p in prompt for _ in range(count // len(prompt))]
    negative = arguments.get("negative_prompt")
    negatives = [negative] * count if negative is None or isinstance(negative, str) else \
        [n for n in negative for _ in range(count // len(negative))]
    noise = arguments.get("start_noise")
    return [pipe.prepare(prompts[k], image=lanczos(image, size),
                         **{**arguments, "seed": params["seed"], "negative_prompt": negatives[k],
                            "num_images_per_prompt": 1, "start_noise": None if noise is None else noise[k : k + 1]})
            for k, (image, params) in enumerate(zip(done.images, done.parameters, strict=True))]


def _first_pass(params: Mapping[str, Any]) -> dict[str, Any]:
    """A first-pass image's parameters without what only its latent output meant."""
    return {k: v for k, v in params.items() if k != "output_type"}
