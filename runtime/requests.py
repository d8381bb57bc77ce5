"""What a generation request may be: every argument checked, with what is allowed, before any engine runs.

``Limits`` bounds the work one call may ask for (steps, pixels, images, prompt length) so that a typo cannot keep a
service busy for hours or run it out of memory; raise them on purpose (``Pipeline(..., limits=Limits(...))``).
"""

from __future__ import annotations

import math
import numbers
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.specs import PipelineConstants
from runtime.errors import PipelineInputError
from runtime.schedulers import SchedulerError, resolve_scheduler, scheduler_names

MAX_SEED = 2**63 - 1
DECODE_BYTES_PER_PIXEL = 3072
"""Rough working memory of the VAE decoder per output pixel (its full-resolution blocks: 128 float32 channels, a few
tensors alive at once): 0.8 GB for one 512x512 image, 51 GB for 4096x4096."""


@dataclass(frozen=True)
class Limits:
    """The most one call may ask for. Defaults suit an interactive service; raise them where you mean to."""

    max_steps: int = 1000
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
    latents: np.ndarray | None = field(repr=False)

    @property
    def batch(self) -> int:
        return len(self.prompts) * self.images_per_prompt


def latent_shape(constants: PipelineConstants, height: int, width: int, batch: int = 1) -> tuple[int, int, int, int]:
    factor = constants.vae_scale_factor
    return (batch, constants.latent_channels, height // factor, width // factor)


def validate_request(
    constants: PipelineConstants,
    size_limits: tuple[int, int | None],
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
    latents: Any,
    callback: Any,
) -> Request:
    """A checked request, or a PipelineInputError saying what was wrong and what is allowed."""
    prompts = _prompt_list(prompt, "prompt", limits)
    negatives = None if negative_prompt is None else _prompt_list(negative_prompt, "negative_prompt", limits)
    if negatives is not None and isinstance(negative_prompt, str):
        negatives = negatives * len(prompts)
    if negatives is not None and len(negatives) != len(prompts):
        raise PipelineInputError(
            f"negative_prompt has {len(negatives)} entries but prompt has {len(prompts)}; give one per prompt or one string"
        )
    steps = _integer(steps, "num_inference_steps", 1, limits.max_steps)
    guidance = _guidance(guidance_scale)
    if scheduler is not None:
        if not isinstance(scheduler, str):
            raise PipelineInputError(f"scheduler must be a name (a string), got {type(scheduler).__name__}")
        try:
            resolve_scheduler(scheduler)
        except SchedulerError:
            raise PipelineInputError(f"unknown scheduler {scheduler!r}; known: {', '.join(scheduler_names())}") from None
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
    if latents is not None:
        latents = _latents(constants, latents, height, width, batch, len(prompts), images_per_prompt)
    if callback is not None and not callable(callback):
        raise PipelineInputError(f"callback must be callable (step, timestep, latents), got {type(callback).__name__}")
    return Request(prompts, negatives, steps, guidance, scheduler, int(height), int(width), images_per_prompt,
                   [seed + k for k in range(batch)], latents)


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


def _check_size(constants: PipelineConstants, size_limits: tuple[int, int | None], limits: Limits, height: Any,
                width: Any, batch: int) -> None:
    multiple = constants.spatial_multiple
    low, high = size_limits
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise PipelineInputError(f"{name} must be an integer number of pixels, got {value!r:.60}")
        if value % multiple:
            raise PipelineInputError(
                f"{name} {value} is not a multiple of {multiple} pixels (this model's VAE factor "
                f"{constants.vae_scale_factor} x its UNet's down-sampling); try {max(multiple, round(value / multiple) * multiple)}"
            )
        if value < low or (high is not None and value > high):
            upper = f"{high}" if high is not None else "unlimited"
            raise PipelineInputError(f"{name} {value} is outside what the loaded engines accept ({low}..{upper})")
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


def _latents(constants: PipelineConstants, latents: Any, height: int, width: int, batch: int, prompts: int,
             images_per_prompt: int) -> np.ndarray:
    expected = latent_shape(constants, height, width, batch)
    if not isinstance(latents, np.ndarray) or latents.shape != expected or not np.issubdtype(latents.dtype, np.floating):
        got = (f"{latents.dtype} array of shape {latents.shape}" if isinstance(latents, np.ndarray)
               else type(latents).__name__)
        raise PipelineInputError(
            f"latents must be a numpy array of floats of shape {expected} (batch {prompts} prompts x "
            f"{images_per_prompt} images, latent channels, height/{constants.vae_scale_factor}, "
            f"width/{constants.vae_scale_factor}), got {got}"
        )
    if not np.all(np.isfinite(latents)):
        raise PipelineInputError("latents contain NaN or infinite values")
    converted: np.ndarray = latents.astype(np.float32)
    if not np.all(np.isfinite(converted)):
        raise PipelineInputError("latents overflow float32 (values beyond 3.4e38)")
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
