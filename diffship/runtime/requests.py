"""What a generation request may be: every argument checked, with what is allowed, before any engine runs.

``Limits`` bounds the work one call may ask for (steps, pixels, images, prompt length) so that a typo cannot keep a
service busy for hours or run it out of memory; raise them on purpose (``Pipeline(..., limits=Limits(...))``).
"""

from __future__ import annotations

import math
import numbers
import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from diffship.core.errors import command
from diffship.core.specs import PipelineConstants
from diffship.runtime.errors import PipelineInputError
from diffship.runtime.feature_cache import FeatureCaching, check_feature_caching
from diffship.runtime.guidance import is_guided
from diffship.runtime.handoff import Handoff
from diffship.runtime.prompts import WEIGHTINGS
from diffship.runtime.schedule_guidance import GuidanceSchedule, check_guidance_schedule
from diffship.runtime.schedulers import SchedulerError, resolve_scheduler
from diffship.runtime.text.base import TextOptions

MAX_SEED = 2**63 - 1
DECODE_BYTES_PER_PIXEL = 3072
"""Rough working memory of the VAE decoder per output pixel (its full-resolution blocks: 128 float32 channels, a few
tensors alive at once): 0.8 GB for one 512x512 image, 51 GB for 4096x4096."""


@dataclass(frozen=True)
class Limits:
    """The most one call may ask for. Defaults suit an interactive service; raise them where you mean to."""

    max_steps: int = 999
    """999, not 1000: at num_train_timesteps steps DDIM's and PNDM's leading spacing overruns the last train timestep
    and DPM-Solver's, DEIS' and UniPC's repeats one (diffusers 0.42 fails there too); 999 is what every scheduler
    runs (tests/runtime/test_scheduler_steps.py)."""
    max_pixels: int = 2048 * 2048
    """Per image (height x width)."""
    max_images: int = 32
    """Images per call (prompts x images per prompt)."""
    max_prompt_chars: int = 20_000
    check_memory: bool = True
    """Refuse a size whose decoding cannot fit in this machine's available memory (the estimate above)."""


@dataclass(frozen=True)
class Request:
    prompts: list[str]
    negative_prompts: list[str] | None
    steps: int
    guidance_scale: float
    scheduler: str | None
    height: int
    width: int
    images_per_prompt: int
    seeds: list[int]
    injected: dict[str, np.ndarray] = field(repr=False)
    """Random draws given by the caller instead of drawn (``latents``, ``start_noise``, ``image_noise``, ...)."""
    eta: float = 0.0
    long_prompts: bool = False
    prompt_weighting: str = "webui"
    guidance_rescale: float = 0.0
    text_options: TextOptions | None = None
    """The family's own text arguments, checked by its text side (SDXL: ``MicroConditioning``); None: none."""
    handoff: Handoff = Handoff()
    """Where in the schedule the call starts and stops, and whether it returns images or latents."""
    guidance_schedule: GuidanceSchedule = GuidanceSchedule()
    """The steps classifier-free guidance applies at (``guidance_cutoff``, ``guidance_interval``); default: all."""
    feature_caching: FeatureCaching | None = None
    """DeepCache (``cache_interval``, ``cache_schedule``, ``cache_center``): None, the plain UNet every step."""
    vae_tile: int | None = None
    """The tile side in pixels the VAE decodes and encodes with (runtime/vae_tiling.py); None: one untiled run."""

    @property
    def batch(self) -> int:
        return len(self.prompts) * self.images_per_prompt

    @property
    def guided(self) -> bool:
        """Whether the UNet runs on the [unconditional; conditional] batch (``runtime.guidance.is_guided``)."""
        return is_guided(self.guidance_scale)

    @property
    def latents(self) -> np.ndarray | None:
        return self.injected.get("latents")


DRAW_HELP = {
    "latents": "the starting latents of text-to-image",
    "start_noise": "the noise added to the image's latents at the starting step (at strength 1 on an inpainting "
                   "UNet: the starting latents)",
    "image_noise": "the draw from the VAE encoder's distribution for the image",
    "masked_image_noise": "the draw from the VAE encoder's distribution for the masked image (inpainting UNets)",
}
"""Every random draw a caller may inject, each [batch, latent channels, height/8, width/8] float32."""


@dataclass(frozen=True)
class SizeLimits:
    """The pixel heights and widths the loaded engines accept, inclusive (None: no upper bound)."""

    height: tuple[int, int | None]
    width: tuple[int, int | None]


def latent_shape(constants: PipelineConstants, height: int, width: int, batch: int = 1) -> tuple[int, int, int, int]:
    factor = constants.vae_scale_factor
    return (batch, constants.latent_channels, height // factor, width // factor)


def check_clip_skip(constants: PipelineConstants, clip_skip: Any) -> None:
    """``clip_skip`` is built into the package's text encoder graphs at export: a call may only restate it."""
    if clip_skip is None:
        return
    if isinstance(clip_skip, bool) or not isinstance(clip_skip, (int, np.integer)) or clip_skip < 0:
        raise PipelineInputError(f"clip_skip must be a whole number >= 0 or None, got {clip_skip!r:.60}")
    if clip_skip != constants.clip_skip:
        raise PipelineInputError(
            f"clip_skip {clip_skip}: this package's text encoders were exported with clip_skip {constants.clip_skip} "
            f"(it is part of the graph); re-export with {command(f'export --clip-skip {clip_skip}')} to use it")


def validate_request(
    constants: PipelineConstants,
    size_limits: SizeLimits,
    limits: Limits,
    prompt: Any,
    negative_prompt: Any,
    steps: Any,
    guidance_scale: Any,
    scheduler: Any,
    height: Any,
    width: Any,
    seed: Any,
    images_per_prompt: Any,
    injected: Mapping[str, Any],
    callback: Any,
    draws: Sequence[str] = ("latents",),
    strength: float | None = None,
    eta: Any = 0.0,
    long_prompts: Any = False,
    prompt_weighting: Any = "webui",
    guidance_rescale: Any = 0.0,
    text_options: TextOptions | None = None,
    guidance_cutoff: Any = None,
    guidance_interval: Any = None,
    cache_interval: Any = None,
    cache_schedule: Any = "uniform",
    cache_center: Any = None,
) -> Request:
    """A checked request, or a PipelineInputError saying what was wrong and what is allowed.

    ``injected``: caller-given random draws by name (None values ignored); ``draws``: the ones this call makes (any
    other given is an error, not silently unused). ``strength``: the share of the schedule an image task runs."""
    prompts, negatives = _prompts(prompt, negative_prompt, limits)
    steps = _integer(steps, "num_inference_steps", 1, limits.max_steps)
    if strength is not None and int(steps * strength) < 1:
        raise PipelineInputError(
            f"strength {strength:g} of {steps} steps runs no step (int({steps} x {strength:g}) = 0, as diffusers "
            f"counts); raise strength to at least {least_strength(steps):g} or give more steps"
        )
    guidance = _guidance(guidance_scale)
    _check_scheduler(scheduler)
    images_per_prompt = _integer(images_per_prompt, "num_images_per_prompt", 1, limits.max_images)
    batch = len(prompts) * images_per_prompt
    if batch > limits.max_images:
        raise PipelineInputError(f"{len(prompts)} prompts x {images_per_prompt} images is {batch} images; one call "
                                 f"makes at most {limits.max_images} (Limits.max_images)")
    height = constants.default_height if height is None else height
    width = constants.default_width if width is None else width
    _check_size(constants, size_limits, limits, height, width, batch)
    if seed is None:
        seed = secrets.randbelow(2**31)
    seed = _integer(seed, "seed", 0, MAX_SEED - batch + 1, "(or None for a random one)")
    checked = {}
    for name, value in injected.items():
        if value is None:
            continue
        if name not in draws:
            raise PipelineInputError(_unused_draw(name, draws))
        checked[name] = _noise(constants, name, value, height, width, batch, len(prompts), images_per_prompt)
    _check_options(callback, eta, long_prompts, prompt_weighting, guidance_rescale)
    schedule = check_guidance_schedule(guidance_cutoff, guidance_interval)
    caching = check_feature_caching(cache_interval, cache_schedule, cache_center)
    return Request(prompts, negatives, steps, guidance, scheduler, int(height), int(width), images_per_prompt,
                   [seed + k for k in range(batch)], checked, float(eta), long_prompts, prompt_weighting,
                   float(guidance_rescale), text_options, guidance_schedule=schedule, feature_caching=caching)


def _prompts(prompt: Any, negative_prompt: Any, limits: Limits) -> tuple[list[str], list[str] | None]:
    """The prompts, and one negative prompt per prompt (one string is every prompt's) or None."""
    from diffship.runtime.prompt_tags import refuse_tags

    prompts = _prompt_list(prompt, "prompt", limits)
    negatives = None if negative_prompt is None else _prompt_list(negative_prompt, "negative_prompt", limits)
    refuse_tags(prompts)  # <lora:...> would reach the text encoder as words (runtime/prompt_tags.py applies them)
    refuse_tags(negatives or (), "negative_prompt")
    if negatives is not None and isinstance(negative_prompt, str):
        negatives = negatives * len(prompts)
    if negatives is not None and len(negatives) != len(prompts):
        raise PipelineInputError(
            f"negative_prompt has {len(negatives)} entries but prompt has {len(prompts)}; give one per prompt or one string"
        )
    return prompts, negatives


def _check_scheduler(scheduler: Any) -> None:
    if scheduler is None:
        return
    if not isinstance(scheduler, str):
        raise PipelineInputError(f"scheduler must be a name (a string), got {type(scheduler).__name__}")
    try:
        resolve_scheduler(scheduler)
    except SchedulerError as exc:
        raise PipelineInputError(str(exc)) from None


def _check_options(callback: Any, eta: Any, long_prompts: Any, prompt_weighting: Any, guidance_rescale: Any) -> None:
    if callback is not None and not callable(callback):
        raise PipelineInputError(f"callback must be callable (step, timestep, latents), got {type(callback).__name__}")
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= eta <= 1.0:
        raise PipelineInputError(f"eta must be a number from 0 to 1 (the share of fresh noise DDIM and TCD add at each "
                                 f"step), got {eta!r:.60}")
    if not isinstance(long_prompts, bool):
        raise PipelineInputError(f"long_prompts must be true or false, got {long_prompts!r:.60}")
    if prompt_weighting not in WEIGHTINGS:
        raise PipelineInputError(f"prompt_weighting must be one of {', '.join(WEIGHTINGS)}, got {prompt_weighting!r:.60}")
    if isinstance(guidance_rescale, bool) or not isinstance(guidance_rescale, (int, float)) \
            or not 0.0 <= guidance_rescale <= 1.0:
        raise PipelineInputError(f"guidance_rescale must be a number from 0 to 1 (0: plain guidance; diffusers "
                                 f"suggests 0.7 for zero-terminal-SNR models), got {guidance_rescale!r:.60}")


def _unused_draw(name: str, draws: Sequence[str]) -> str:
    if name == "latents":
        return ("latents are the starting point of text-to-image; with an image, inject start_noise (and image_noise) "
                "instead")
    if name not in DRAW_HELP:
        return f"unknown random draw {name!r}; known: {', '.join(DRAW_HELP)}"
    return (f"{name} ({DRAW_HELP[name]}) is not drawn by this call; it draws {', '.join(draws)} "
            "(image-to-image and inpainting draw image_noise only with sample_mode 'sample'; an inpainting UNet at "
            "strength 1 starts from noise and does not encode the image; masked_image_noise is for inpainting UNets)")


def _integer(value: Any, name: str, low: int, high: int, note: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise PipelineInputError(f"{name} must be an integer from {low} to {high}{' ' + note if note else ''}, "
                                 f"got {value!r:.60}")
    return int(value)


def _guidance(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise PipelineInputError(f"guidance_scale must be a number, got {type(value).__name__}")
    try:
        scale = float(value)
    except OverflowError:
        scale = math.inf
    if not math.isfinite(scale) or scale < 0:
        raise PipelineInputError(f"guidance_scale must be finite and >= 0, got {value!r:.60}")
    return scale


def _prompt_list(value: Any, name: str, limits: Limits) -> list[str]:
    if isinstance(value, str):
        texts = [value]
    elif isinstance(value, (list, tuple)):
        if not value:
            raise PipelineInputError(f"{name} is an empty list; give at least one prompt")
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise PipelineInputError(f"{name}[{index}] must be a string, got {type(item).__name__}")
        texts = list(value)
    else:
        raise PipelineInputError(f"{name} must be a string or a list of strings, got {type(value).__name__}")
    for index, text in enumerate(texts):
        where = name if isinstance(value, str) else f"{name}[{index}]"
        if len(text) > limits.max_prompt_chars:
            raise PipelineInputError(f"{where} has {len(text)} characters; at most {limits.max_prompt_chars} "
                                     "(Limits.max_prompt_chars)")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise PipelineInputError(f"{where} is not valid Unicode text: character {exc.start} is a lone surrogate "
                                     f"({text[exc.start]!r}), as undecodable bytes become") from None
    return texts


def _check_size(constants: PipelineConstants, size_limits: SizeLimits, limits: Limits, height: Any, width: Any,
                batch: int) -> None:
    multiple = constants.spatial_multiple
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise PipelineInputError(f"{name} must be an integer number of pixels, got {value!r:.60}")
        if value % multiple:
            raise PipelineInputError(f"{name} {value} is not a multiple of {multiple} pixels ({constants.size_rule}); "
                                     f"try {max(multiple, round(value / multiple) * multiple)}")
    (low_h, high_h), (low_w, high_w) = size_limits.height, size_limits.width
    if (low_h, low_w) == (high_h, high_w) and (height, width) != (low_h, low_w):
        raise PipelineInputError(f"the loaded engines take {low_w}x{low_h} (width x height) only: they were built with a "
                                 f"static profile; ask for that size or build engines with a size range")
    for name, value, (low, high) in (("height", height, size_limits.height), ("width", width, size_limits.width)):
        if value < low or (high is not None and value > high):
            raise PipelineInputError(f"{name} {value} is outside what the loaded engines accept "
                                     f"({low}..{'unlimited' if high is None else high})")
    if height * width > limits.max_pixels:
        raise PipelineInputError(f"{height}x{width} is {height * width:,} pixels per image; at most "
                                 f"{limits.max_pixels:,} (Limits.max_pixels)")
    needed = DECODE_BYTES_PER_PIXEL * height * width * batch
    available = available_memory()
    if limits.check_memory and available is not None and needed > available:
        raise PipelineInputError(
            f"{batch} image(s) of {height}x{width} need about {needed / 2**30:.1f} GiB to decode and this machine has "
            f"{available / 2**30:.1f} GiB available; ask for a smaller size or fewer images"
        )


def least_strength(steps: int) -> float:
    """The smallest strength, in thousandths, that runs at least one of ``steps`` (what an error may advise: 1/steps
    itself, printed rounded, can round down to a value that still runs none)."""
    thousandths = math.ceil(1000 / steps)
    while int(steps * (thousandths / 1000)) < 1:
        thousandths += 1
    return thousandths / 1000


def _noise(constants: PipelineConstants, name: str, value: Any, height: int, width: int, batch: int, prompts: int,
           images_per_prompt: int) -> np.ndarray:
    expected = latent_shape(constants, height, width, batch)
    if not isinstance(value, np.ndarray) or value.shape != expected or not np.issubdtype(value.dtype, np.floating):
        got = f"{value.dtype} array of shape {value.shape}" if isinstance(value, np.ndarray) else type(value).__name__
        raise PipelineInputError(
            f"{name} must be a numpy array of floats of shape {expected} (batch {prompts} prompts x "
            f"{images_per_prompt} images, latent channels, height/{constants.vae_scale_factor}, "
            f"width/{constants.vae_scale_factor}), got {got}"
        )
    if not np.all(np.isfinite(value)):
        raise PipelineInputError(f"{name} contains NaN or infinite values")
    converted: np.ndarray = value.astype(np.float32)
    if not np.all(np.isfinite(converted)):
        raise PipelineInputError(f"{name} overflow float32 (values beyond 3.4e38)")
    return converted


def available_memory() -> int | None:
    """Bytes this machine can still give (MemAvailable), or None where that cannot be read."""
    try:
        with open("/proc/meminfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


StepCallback = Callable[[int, float, np.ndarray], None]
PromptInput = str | Sequence[str]
