"""Classifier-free guidance: the one place that knows about the doubled UNet batch (samplers never see it)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from engines.base import EngineBase


def run_engine(engine: EngineBase, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One logical call: inputs cast to the engine's dtypes, split into chunks the engine accepts, float32 out."""
    batch = len(next(iter(feeds.values())))
    limit = engine.max_batch() or batch
    typed = {t.name: np.ascontiguousarray(feeds[t.name], dtype=t.dtype) for t in engine.inputs}
    chunks = [
        engine({name: array[start : start + limit] for name, array in typed.items()}) for start in range(0, batch, limit)
    ]
    return {
        t.name: np.concatenate([chunk[t.name] for chunk in chunks]).astype(np.float32, copy=False)
        for t in engine.outputs
    }


class ClassifierFreeGuidance:
    """Model output for a batch of latents, guided: ``uncond + w * (cond - uncond)`` from ONE UNet call on [uncond; cond].

    With ``guidance_scale <= 1`` (or no unconditional embeddings) it is a plain conditional call on the batch, as
    diffusers does.
    """

    def __init__(
        self,
        unet: EngineBase,
        cond_embeddings: np.ndarray,
        uncond_embeddings: np.ndarray | None,
        guidance_scale: float,
    ) -> None:
        self.unet = unet
        self.guidance_scale = guidance_scale
        self.enabled = uncond_embeddings is not None and guidance_scale > 1.0
        # Embeddings are the same every step: concatenate once.
        self.embeddings = (
            np.concatenate([uncond_embeddings, cond_embeddings]) if self.enabled and uncond_embeddings is not None
            else cond_embeddings
        )

    def __call__(self, sample: np.ndarray, timestep: float) -> np.ndarray:
        batch = np.concatenate([sample, sample]) if self.enabled else sample
        output = run_engine(
            self.unet,
            {
                "sample": batch,
                "timestep": np.full((len(batch),), timestep, dtype=np.float32),
                "encoder_hidden_states": self.embeddings,
            },
        )["model_output"]
        if not self.enabled:
            return output
        uncond, cond = np.split(output, 2)
        return uncond + self.guidance_scale * (cond - uncond)
