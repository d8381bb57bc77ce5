"""Where denoising starts, for each task, as diffusers' pipelines prepare it: text-to-image from noise; image-to-image
from the image's latents noised to the step ``strength`` gives; inpainting from noise (strength 1) or the noised image,
with the mask and the masked image's latents as extra UNet input (9-channel UNets) or the known region put back after
every step (4-channel UNets). Also which random draws each task makes, in diffusers' order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from diffship.core.specs import PipelineConstants
from diffship.runtime.conditioning import ImageTask
from diffship.runtime.schedulers import Scheduler

Encode = Callable[[np.ndarray, "np.ndarray | None", int], np.ndarray]
"""(preprocessed image [1, 3, H, W], per-image noise or None for the mean, batch) -> scaled latents [batch, C, h, w]."""


def draw_order(constants: PipelineConstants, task: str, strength: float, sample_mode: str,
               latents_given: bool = False, noised: bool = True) -> tuple[str, ...]:
    """The random draws a call of ``task`` makes per image before the step noise, in diffusers' order.
    ``latents_given``: the image is latents (nothing to encode); ``noised`` False: a hand-off's ``denoising_start``,
    whose latents are not noised again."""
    if task == "txt2img":
        return ("latents",)
    sampled = sample_mode == "sample" and not latents_given
    masked = task == "inpaint" and constants.inpainting_unet
    return (*(("image_noise",) if encodes_image(constants, task != "img2img", strength) and sampled else ()),
            *(("start_noise",) if noised else ()), *(("masked_image_noise",) if masked and sampled else ()))


def encodes_image(constants: PipelineConstants, masked: bool, strength: float) -> bool:
    """Whether the image itself is encoded: not by an inpainting UNet at strength 1, which starts from pure noise and
    reads the image only through the masked image (as diffusers)."""
    return not (masked and constants.inpainting_unet) or strength < 1


@dataclass(frozen=True)
class Start:
    """Where the denoising loop starts, and what its steps condition on."""

    latents: np.ndarray
    condition: np.ndarray | None = None
    """Extra UNet input channels (inpainting UNets: the latent mask and the masked image's latents)."""
    known: np.ndarray | None = None
    """The image's latents, kept outside the mask after each step (inpainting with a 4-channel UNet)."""
    noise: np.ndarray | None = None
    """The starting noise, with which ``known`` is re-noised to each step's level."""
    mask: np.ndarray | None = None
    """[batch, 1, h, w] latent mask, 1 = repaint."""

    def keep_known(self, latents: np.ndarray, sampler: Scheduler, i: int) -> np.ndarray:
        """diffusers' blend after step ``i``: the known region noised to the next step's level (clean after the last)."""
        assert self.known is not None and self.noise is not None and self.mask is not None
        known = self.known if i + 1 == len(sampler.timesteps) else sampler.add_noise(self.known, self.noise, i + 1)
        return ((1 - self.mask) * known + self.mask * latents).astype(np.float32, copy=False)


def starting_point(constants: PipelineConstants, task: ImageTask | None, draws: dict[str, np.ndarray],
                   sampler: Scheduler, first: int, batch: int, encode: Encode) -> Start:
    """The first sample (at step ``first``, where ``sampler`` begins) and what the steps condition on. Without a
    ``start_noise`` draw (a hand-off's ``denoising_start``) the image's latents are the first sample as they are."""
    noise = draws.get("start_noise", draws.get("latents"))
    if task is None:
        assert noise is not None
        return Start(noise * np.float32(sampler.init_noise_sigma))
    masked = task.mask is not None
    if task.inputs.latents is not None:  # latents given as the image: used as they are, as diffusers' img2img
        given = task.inputs.latents
        encoded = given if len(given) == batch else np.repeat(given, batch, axis=0)
    elif encodes_image(constants, masked, task.strength):
        assert task.image is not None
        encoded = encode(task.image, draws.get("image_noise"), batch)
    else:
        encoded = None
    if not masked:
        assert encoded is not None
        return Start(encoded if noise is None else sampler.add_noise(encoded, noise, first))
    assert noise is not None
    if task.strength == 1.0:  # diffusers starts inpainting at full strength from pure noise
        latents = noise * np.float32(sampler.init_noise_sigma)
    else:
        assert encoded is not None
        latents = sampler.add_noise(encoded, noise, first)
    mask = np.repeat(task.latent_mask(constants.vae_scale_factor), batch, axis=0)
    if constants.inpainting_unet:
        masked_latents = encode(task.masked_image(), draws.get("masked_image_noise"), batch)
        return Start(latents, condition=np.concatenate([mask, masked_latents], axis=1))
    assert encoded is not None
    return Start(latents, known=encoded, noise=noise, mask=mask)
