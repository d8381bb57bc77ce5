"""Live previews and per-step progress: what ``Pipeline.prepare(progress=..., preview_every=...)`` hands a progress
callback after each step (``core.progress.StepEvent``).

A preview is the web UI's "Approx cheap" picture: each latent pixel mapped to RGB by one small matrix, the family's
``preview_factors`` (its description's data; no VAE run), so it costs a few microseconds per step and is 1/8 of the
image's size. The step callback of old (``callback(step, timestep, latents)``) is called as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from diffship.core.progress import ProgressCallback, StepEvent
from diffship.runtime.errors import PipelineInputError
from diffship.runtime.requests import StepCallback


def cheap_preview(latents: np.ndarray, factors: Sequence[Sequence[float]]) -> list[np.ndarray]:
    """[B, C, h, w] model latents -> B uint8 [h, w, 3] pictures, as the web UI's ``cheap_approximation`` (its einsum
    over the channels, ``(x + 1) / 2`` clamped to [0, 1], times 255 and truncated)."""
    weights = np.asarray(factors, dtype=np.float32)
    if weights.shape != (latents.shape[1], 3):
        raise PipelineInputError(f"preview factors are {weights.shape[0]} rows for {latents.shape[1]} latent channels")
    rgb = np.einsum("bchw,cr->bhwr", latents.astype(np.float32, copy=False), weights)
    scaled = np.clip((rgb + 1.0) / 2.0, 0.0, 1.0) * 255.0
    return list(scaled.astype(np.uint8))


def check_preview_every(value: object, factors: Sequence[Sequence[float]], family: str) -> int:
    """``preview_every``: 0 (no previews) or a whole number of steps; a family without factors takes only 0."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise PipelineInputError(f"preview_every must be a whole number of steps >= 0 (0: no previews), got {value!r:.60}")
    if value and not factors:
        raise PipelineInputError(f"the {family} family has no cheap latent preview (no preview_factors in its "
                                 "description); give preview_every 0")
    return int(value)


class StepReporter:
    """The step callback a call runs with when it asks for progress: calls the caller's own ``callback`` as before,
    then ``progress`` with a ``StepEvent`` (a preview every ``preview_every`` steps and at the last)."""

    def __init__(self, callback: StepCallback | None, progress: ProgressCallback, steps: int, preview_every: int,
                 factors: Sequence[Sequence[float]]) -> None:
        self.callback, self.progress, self.steps = callback, progress, steps
        self.preview_every, self.factors = preview_every, factors

    def __call__(self, step: int, timestep: float, latents: np.ndarray) -> None:
        if self.callback is not None:
            self.callback(step, timestep, latents)
        done = step + 1
        wants = self.preview_every and (done % self.preview_every == 0 or done == self.steps)
        preview = tuple(cheap_preview(latents, self.factors)) if wants else None
        self.progress(StepEvent(done, self.steps, timestep, preview=preview))


def in_pass(progress: ProgressCallback, name: str, index: int, passes: int) -> ProgressCallback:
    """``progress`` told which pass its events come from (a hires-fix call's first or second)."""
    return lambda event: progress(replace(event, pass_name=name, pass_index=index, passes=passes))
