"""Classifier-free guidance: the one place that knows about the doubled UNet batch (samplers never see it)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from diffship.engines.base import EngineBase


def is_guided(guidance_scale: float | np.ndarray) -> bool:
    """The one rule for when classifier-free guidance runs: a scale above 1 (every image's, for a batch of calls).
    At 1 or below the guided formula is the conditional output, so the UNet runs on the conditional half alone, as
    diffusers' ``do_classifier_free_guidance`` decides."""
    return bool(np.all(np.asarray(guidance_scale) > 1.0))


def run_engine(engine: EngineBase, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One logical call: inputs cast to the engine's dtypes, float32 out; a batch the engine's profile does not take
    in one call is split into chunks it takes, and a chunk below its smallest batch (a static engine built for the
    guided batch, called unguided) is padded with copies of its last item, whose outputs are dropped."""
    batch = len(next(iter(feeds.values())))
    limit = engine.max_batch() or batch
    least = engine.min_batch()
    typed = {t.name: np.ascontiguousarray(feeds[t.name], dtype=t.dtype) for t in engine.inputs}
    chunks = []
    for start in range(0, batch, limit):
        chunk = {name: array[start : start + limit] for name, array in typed.items()}
        size = len(next(iter(chunk.values())))
        if size < least:
            chunk = {name: np.concatenate([array, np.repeat(array[-1:], least - size, axis=0)])
                     for name, array in chunk.items()}
        outputs = engine(chunk)
        chunks.append({name: value[:size] for name, value in outputs.items()})
    return {
        t.name: np.concatenate([chunk[t.name] for chunk in chunks]).astype(np.float32, copy=False)
        for t in engine.outputs
    }


class ClassifierFreeGuidance:
    """Model output for a batch of latents, guided: ``uncond + w * (cond - uncond)`` from ONE UNet call on [uncond; cond].

    ``cond`` / ``uncond``: what the UNet reads besides latents and timestep, one row per image
    (``encoder_hidden_states``; SDXL adds ``text_embeds`` and ``time_ids``). With ``guidance_scale <= 1`` (or no
    unconditional side) it is a plain conditional call on the batch, as diffusers does. A batch of calls gives each
    image its own scale: an array [images, 1, 1, 1], all above 1 or none. ``guidance_rescale`` > 0 pulls the guided
    output's standard deviation back toward the conditional one's (diffusers' ``rescale_noise_cfg``, from "Common
    Diffusion Noise Schedules and Sample Steps are Flawed", section 3.4).

    A call with ``guided=False`` (a step outside the guidance schedule, runtime/schedule_guidance.py) runs the UNet
    on the conditional half alone (batch 1 per image, SDXL's added conditioning too) and returns its output, as
    diffusers does once its CFG cutoff callback has set the scale to 0.
    """

    def __init__(
        self,
        unet: EngineBase,
        cond: Mapping[str, np.ndarray],
        uncond: Mapping[str, np.ndarray] | None,
        guidance_scale: float | np.ndarray,
        guidance_rescale: float = 0.0,
        runner: Callable[[Mapping[str, np.ndarray]], np.ndarray] | None = None,
    ) -> None:
        self.unet = unet
        self.runner = runner
        """What runs the UNet on a batch's feeds (default: ``unet``; DeepCache: runtime/feature_cache.py)."""
        self.guidance_scale = guidance_scale
        self.guidance_rescale = guidance_rescale
        self.enabled = uncond is not None and is_guided(guidance_scale)
        self.cond = dict(cond)
        # The conditioning is the same every step: concatenate once.
        self.conditioning = (
            {name: np.concatenate([uncond[name], value]) for name, value in cond.items()}
            if self.enabled and uncond is not None else dict(cond)
        )

    def __call__(self, sample: np.ndarray, timestep: float, guided: bool = True) -> np.ndarray:
        if self.enabled and not guided:
            return self._run(sample, timestep, self.cond)
        batch = np.concatenate([sample, sample]) if self.enabled else sample
        output = self._run(batch, timestep, self.conditioning)
        if not self.enabled:
            return output
        uncond, cond = np.split(output, 2)
        mixed = uncond + self.guidance_scale * (cond - uncond)
        if self.guidance_rescale > 0:
            mixed = rescale_guidance(mixed, cond, self.guidance_rescale)
        return mixed

    def _run(self, batch: np.ndarray, timestep: float, conditioning: Mapping[str, np.ndarray]) -> np.ndarray:
        feeds = {"sample": batch, "timestep": np.full((len(batch),), timestep, dtype=np.float32), **conditioning}
        if self.runner is not None:
            return self.runner(feeds)
        return run_engine(self.unet, feeds)["model_output"]


def rescale_guidance(guided: np.ndarray, cond: np.ndarray, rescale: float) -> np.ndarray:
    """diffusers' ``rescale_noise_cfg``: each image's guided output scaled to the conditional output's standard
    deviation (torch's unbiased estimate), blended with the unscaled one by ``rescale``."""
    axes = tuple(range(1, guided.ndim))
    ratio = cond.std(axis=axes, ddof=1, keepdims=True) / guided.std(axis=axes, ddof=1, keepdims=True)
    return (rescale * (guided * ratio) + (1 - rescale) * guided).astype(np.float32)
