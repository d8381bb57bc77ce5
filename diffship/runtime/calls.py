"""A checked call of the pipeline (``Pipeline.prepare``), and which calls may share one denoising loop.

Calls with the same ``batch_key`` run as one batch (``Pipeline.run_batch``, ``runtime.batching.Batcher``) and each
gets exactly the images it would get alone: every image keeps its own generator (seed), prompt, negative prompt and
guidance scale; the text encoder runs per call, as alone; only the UNet and VAE calls are shared.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass

import numpy as np

from diffship.runtime.conditioning import ImageInputs
from diffship.runtime.requests import Request, StepCallback


class FinishEarly:
    """What a ``cancel`` may return instead of True (``FINISH_EARLY``): stop sampling and decode the images as far as
    they got (the web UI's interrupt). Truthy, so a reader that only asks ``bool(cancel())`` still stops."""

    def __repr__(self) -> str:
        return "FINISH_EARLY"


FINISH_EARLY = FinishEarly()

Cancel = Callable[[], bool | FinishEarly]
"""Asked between steps: True stops the call (``PipelineCancelled``); ``FINISH_EARLY`` ends it with its images decoded
at the step reached (``PipelineCancelled`` still, when no step was taken). ``threading.Event().is_set`` is one."""


@dataclass(frozen=True)
class Call:
    """One call's checked arguments: what ``Pipeline.prepare`` returns and ``Pipeline.run_batch`` runs."""

    request: Request
    inputs: ImageInputs | None = None
    callback: StepCallback | None = None
    cancel: Cancel | None = None

    @property
    def images(self) -> int:
        return self.request.batch

    def batch_key(self) -> Hashable | None:
        """Equal keys may share a loop: same size, steps, scheduler, eta, guided or not, guidance rescale, guidance
        schedule, feature caching and the family's own text arguments (SDXL's micro-conditioning). None: this call runs
        alone (image tasks, long prompts and injected draws are per-call work the loop does not share)."""
        request = self.request
        if self.inputs is not None or request.long_prompts or request.injected:
            return None
        return (request.height, request.width, request.steps, request.scheduler, request.eta,
                request.guided, request.guidance_rescale, request.text_options, request.handoff,
                request.guidance_schedule, request.feature_caching, request.vae_tile)

    def cancelled(self) -> bool | FinishEarly:
        """False, True, or ``FINISH_EARLY`` as the call's ``cancel`` said (kept as is: callers that wrap it pass the
        request to finish early on)."""
        if self.cancel is None:
            return False
        stop = self.cancel()
        return stop if isinstance(stop, FinishEarly) else bool(stop)


def guidance_scales(calls: list[Call]) -> float | np.ndarray:
    """One call: its scale. A batch: each image's scale, shaped to broadcast over [images, C, h, w] (float32, the
    arithmetic a Python float gets against float32 latents)."""
    if len(calls) == 1:
        return calls[0].request.guidance_scale
    scales = [call.request.guidance_scale for call in calls for _ in range(call.images)]
    return np.asarray(scales, dtype=np.float32).reshape(-1, 1, 1, 1)


def image_slices(calls: list[Call]) -> list[slice]:
    """Each call's rows in the batch (calls in order, each call's images prompt-major)."""
    slices, start = [], 0
    for call in calls:
        slices.append(slice(start, start + call.images))
        start += call.images
    return slices
