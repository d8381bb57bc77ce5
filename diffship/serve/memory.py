"""Admission by memory, measured not guessed (docs/design.md, "Serving"): how much a batch grows the process, per
image, as a function of its size, fitted at service start from measured peaks; a budget it must fit; calls split
into pieces that fit, or refused naming the largest size that fits.

Why measured at start, not recorded at export: the growth depends on the engine that runs (ONNX Runtime's CPU
kernels, thread count, arena; TensorRT's tactics) and on this machine, none of which the exporter knows. Measured
here, it is the real peak of the process that will serve: each point is one guided one-step call (text encoder,
UNet, scheduler, VAE decoder: every component's peak, the largest of them counting) at a square size, its peak
resident memory (``VmHWM`` after resetting it through ``/proc/self/clear_refs``) over the resident memory before.

The model: growth(images, pixels) = images x (a x pixels + b x pixels^2), a, b >= 0, least squares over the points.
The square is attention's: its score matrices grow with the square of the latent area (on ``tiny``: 192^2 +60 MiB,
256^2 +217 MiB, 320^2 +363 MiB; 512^2 +3.2 GiB, 640^2 +5.3 GiB). Fitted on 192-320 it predicts 512^2 at +4 GiB: over,
not under. Images scale linearly (each image's activations, both halves of its guided batch)."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from diffship.runtime.calls import Call
from diffship.runtime.errors import PipelineError, PipelineInputError
from diffship.runtime.results import GenerationResult
from diffship.runtime.timing import Timings

log = logging.getLogger(__name__)

MEASURE_SIDES = (192, 256, 320)
"""Square sizes measured at start: large enough for attention's square term to show, small enough to cost well
under a second and a few hundred MiB on CPU for SD 1.5."""
DEFAULT_BUDGET_SHARE = 0.8
"""``--memory-budget`` by default: this share of the memory available once the engines are loaded."""
GiB = 2**30
SAFETY_MARGIN = 1.25
"""Predictions are scaled up by this: a peak measured over the resident size before a call reads low by whatever
the allocator kept from earlier calls (on tiny the bare fit predicted 384^2 within 1% of its measured growth, and
under it by a few percent when other calls had run before)."""


class TooLarge(PipelineInputError):
    """A call whose one image does not fit the memory budget (413)."""


@dataclass(frozen=True)
class MemoryModel:
    per_pixel: float
    """Bytes per image per output pixel."""
    per_pixel_squared: float
    """Bytes per image per output pixel squared (attention)."""
    points: tuple[tuple[int, int], ...] = ()
    """The measurements it was fitted on: (pixels, bytes grown)."""
    margin: float = SAFETY_MARGIN

    def need(self, height: int, width: int, images: int = 1) -> int:
        pixels = height * width
        return math.ceil(self.margin * images * (self.per_pixel * pixels + self.per_pixel_squared * pixels**2))

    def most_images(self, height: int, width: int, budget: int) -> int:
        return int(budget // max(1, self.need(height, width)))

    def largest_side(self, budget: int, multiple: int = 8) -> int:
        """The largest square side (a multiple of ``multiple``) of which one image fits ``budget``."""
        side = multiple
        while self.need(side + multiple, side + multiple) <= budget:
            side += multiple
        return side


def fit(points: Sequence[tuple[int, int]]) -> MemoryModel:
    """Least squares of bytes = a x pixels + b x pixels^2 with a, b >= 0 over (pixels, bytes) points (the 2 x 2
    normal equations, in floats: serve/ imports no numpy)."""
    xs = [float(p) for p, _ in points]
    ys = [float(max(0, g)) for _, g in points]
    s2 = sum(x**2 for x in xs)
    s3 = sum(x**3 for x in xs)
    s4 = sum(x**4 for x in xs)
    t1 = sum(x * y for x, y in zip(xs, ys, strict=True))
    t2 = sum(x**2 * y for x, y in zip(xs, ys, strict=True))
    determinant = s2 * s4 - s3 * s3
    a = (t1 * s4 - t2 * s3) / determinant if determinant > 0 else -1.0
    b = (s2 * t2 - s3 * t1) / determinant if determinant > 0 else -1.0
    if b < 0 or determinant <= 0:
        a, b = t1 / s2, 0.0
    elif a < 0:
        a, b = 0.0, t2 / s4
    return MemoryModel(float(a), float(b), tuple((int(p), int(g)) for p, g in points))


def _status(key: str) -> int:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"{key} not in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
        handle.write("5")  # resets VmHWM to the current resident size (Linux 4.0+)


def _trim() -> None:
    """Give freed heap memory back to the system first, so that the next peak counts what the call itself needs."""
    import ctypes
    import ctypes.util

    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


def measure(run: Callable[[int], Any], sides: Sequence[int] = MEASURE_SIDES) -> MemoryModel | None:
    """Fit a model from ``run(side)`` (one guided one-step call at side x side) at each of ``sides``; None where
    peaks cannot be read (not Linux) or no size ran (a static engine profile: only its sizes are ever admitted)."""
    points = []
    try:
        for side in sides:
            _trim()
            before = _status("VmRSS")
            _reset_peak()
            try:
                run(side)
            except PipelineInputError as exc:
                log.info("memory model: %dx%d not measured (%s)", side, side, exc)
                continue
            points.append((side * side, _status("VmHWM") - before))
    except OSError as exc:
        log.warning("memory admission off: peak memory cannot be measured here (%s)", exc)
        return None
    if not points:
        return None
    model = fit(points)
    log.info("memory model: %s -> %.3g B/pixel + %.3g B/pixel^2 per image", ", ".join(
        f"{int(math.sqrt(p))}^2 +{g / 2**20:.0f} MiB" for p, g in points), model.per_pixel, model.per_pixel_squared)
    return model


def default_budget() -> int | None:
    from diffship.runtime.requests import available_memory

    available = available_memory()
    return None if available is None else int(available * DEFAULT_BUDGET_SHARE)


@dataclass(frozen=True)
class Admission:
    """A memory model and the budget calls must fit, with ``max_batch`` images per batch at most."""

    model: MemoryModel
    budget: int
    max_batch: int

    def pieces(self, call: Call) -> list[Call]:
        """``call`` as calls of at most as many images as fit one batch (each image keeps its seed, so the images are
        the ones the whole call would give); TooLarge if one image does not fit."""
        request = call.request
        most = min(self.max_batch, self.model.most_images(request.height, request.width, self.budget))
        if most < 1:
            side = self.model.largest_side(self.budget)
            raise TooLarge(
                f"{request.width}x{request.height} needs about {self.model.need(request.height, request.width) / GiB:.1f}"
                f" GiB for one image and this server's memory budget is {self.budget / GiB:.1f} GiB; the largest "
                f"square size that fits is {side}x{side} ({self.model.most_images(side, side, self.budget)} image(s))")
        if call.images <= most:
            return [call]
        if call.batch_key() is None:  # image tasks, long prompts, injected draws: per-call work, not split
            raise TooLarge(f"{call.images} images of {request.width}x{request.height} in one image-to-image or "
                           f"injected-draw call do not fit this server's memory budget; at most {most} do")
        return split(call, most)

    def run_batch(self, runner: Any, calls: list[Call],
                  observe: Callable[[int], None] = lambda images: None) -> list[GenerationResult | PipelineError]:
        """Run ``calls`` (one batch_key) in groups that fit the budget, one after another; ``observe`` gets each
        group's image count."""
        groups: list[list[Call]] = [[]]
        for call in calls:
            request = call.request
            images = sum(c.images for c in groups[-1]) + call.images
            if groups[-1] and self.model.need(request.height, request.width, images) > self.budget:
                groups.append([])
            groups[-1].append(call)
        results: list[GenerationResult | PipelineError] = []
        for group in groups:
            observe(sum(call.images for call in group))
            results += runner.run_batch(group)
        return results


def split(call: Call, most: int) -> list[Call]:
    """``call`` as calls of at most ``most`` images: per prompt, its images in order with their seeds."""
    request, pieces = call.request, []
    per = request.images_per_prompt
    for index, prompt in enumerate(request.prompts):
        negative = None if request.negative_prompts is None else [request.negative_prompts[index]]
        for start in range(0, per, most):
            seeds = request.seeds[index * per + start: index * per + min(per, start + most)]
            piece = replace(request, prompts=[prompt], negative_prompts=negative, images_per_prompt=len(seeds),
                            seeds=list(seeds))
            pieces.append(replace(call, request=piece))
    return pieces


def merge(results: Sequence[GenerationResult]) -> GenerationResult:
    """The pieces' results as the whole call's: images and parameters in order; times summed."""
    timings = Timings()
    for result in results:
        for name in ("tokenize", "text_encoder", "scheduler", "vae_encode", "vae_decode", "total"):
            setattr(timings, name, getattr(timings, name) + getattr(result.timings, name))
        timings.unet_steps = [*timings.unet_steps, *result.timings.unet_steps]
    return GenerationResult([image for result in results for image in result.images], timings,
                            [parameters for result in results for parameters in result.parameters])


def memory_note(admission: Admission | None) -> str:
    if admission is None:
        return "memory admission off"
    side = admission.model.largest_side(admission.budget)
    return f"memory budget {admission.budget / GiB:.1f} GiB (one image up to {side}x{side})"


__all__ = ["Admission", "MemoryModel", "TooLarge", "default_budget", "fit", "measure", "merge", "split"]
