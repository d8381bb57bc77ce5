"""The diffusers side of every comparison: the same weights as a package, driven the way diffusers users drive it.

``reference_pipeline`` rebuilds the package's source (``manifest.source``) and checks its weights digest against
the manifest, so "same weights" is proven, not assumed. ``run_reference`` swaps schedulers the way users do
(``Class.from_config(loaded_config)``, plus ``use_karras_sigmas`` for the ``_karras`` names), injects the caller's
starting latents, and feeds the stochastic samplers (ancestral, SDE, LCM/TCD) the same per-image noise
runtime.Pipeline draws (image ``k``: ``numpy.random.default_rng(seed + k)``), DPM++ SDE's Brownian tree included.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from diffship.core.errors import DiffshipError
from diffship.core.package import ModelPackage
from diffship.runtime.guidance import is_guided

log = logging.getLogger(__name__)


class ReferenceMismatchError(DiffshipError):
    """The reference pipeline cannot be rebuilt with the package's weights (source gone, or its digest differs)."""


@dataclass
class Reference:
    pipe: Any
    loaded_scheduler_config: Any
    device: str
    dtype: str
    vae_scale_factor: int
    task_pipes: dict[str, Any] = field(default_factory=dict)
    """diffusers' img2img and inpaint pipelines over the same modules, made on first use."""
    clip_skip: int = 0
    """The package's (built into its text encoders): every call passes it to diffusers."""

    @property
    def call_options(self) -> dict[str, Any]:
        return {"clip_skip": self.clip_skip} if self.clip_skip else {}


def task_pipeline(reference: Reference, inpainting: bool) -> Any:
    """StableDiffusionInpaintPipeline or StableDiffusionImg2ImgPipeline over the reference's modules, with the
    scheduler the reference has now."""
    import diffusers

    name = "inpaint" if inpainting else "img2img"
    if isinstance(reference.pipe, diffusers.StableDiffusionXLImg2ImgPipeline):
        return reference.pipe
    if name not in reference.task_pipes:
        pipe: Any
        if isinstance(reference.pipe, diffusers.StableDiffusionXLPipeline):
            if inpainting:
                raise AssertionError("no SDXL inpainting reference: runtime.Pipeline does not inpaint with SDXL yet")
            pipe = diffusers.StableDiffusionXLImg2ImgPipeline(
                **reference.pipe.components, force_zeros_for_empty_prompt=reference.pipe.config.force_zeros_for_empty_prompt,
                add_watermarker=False)
        else:
            task_class = diffusers.StableDiffusionInpaintPipeline if inpainting else diffusers.StableDiffusionImg2ImgPipeline
            pipe = task_class(**reference.pipe.components, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        reference.task_pipes[name] = pipe
    pipe = reference.task_pipes[name]
    pipe.scheduler = reference.pipe.scheduler
    return pipe


def reference_pipeline(package: ModelPackage, device: str = "cpu", dtype: str = "fp32") -> Reference:
    """diffusers' text-to-image pipeline (StableDiffusionPipeline, StableDiffusionXLPipeline) over the package's own
    weights (digest-checked)."""
    import torch

    from diffship.exporter.sources import SourceError, load_source_from_info

    try:
        source = load_source_from_info(dict(package.manifest.source))
    except SourceError as exc:
        raise ReferenceMismatchError(f"cannot rebuild the package's source for diffusers: {exc}") from None
    expected = package.manifest.source.get("weights_sha256")
    if expected and source.weights_sha256() != expected:
        raise ReferenceMismatchError(
            "the weights rebuilt from the manifest's source differ from the exported ones (digest mismatch); "
            "was the source folder changed after export?"
        )
    if device == "cuda" and dtype == "fp32":
        # torch lets cuDNN convolutions use TF32 by default; an fp32 reference must compute in fp32.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    # A family that does no text-to-image (the SDXL refiner) has image-to-image as its one reference pipeline.
    tasks = package.family.tasks
    pipe: Any = source.diffusers_pipeline("txt2img" if "txt2img" in tasks else tasks[0])
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(device=device, dtype=torch.float16) if dtype == "fp16" else pipe.to(device)
    if package.constants.clip_skip:
        alias_text_model(getattr(pipe, "text_encoder", None))
    return Reference(pipe, pipe.scheduler.config, device, dtype, package.constants.vae_scale_factor,
                     clip_skip=package.constants.clip_skip)


def alias_text_model(text_encoder: Any) -> None:
    """Let diffusers' ``clip_skip`` path run on transformers >= 5.6: it reads ``text_encoder.text_model.final_layer_norm``
    (huggingface/diffusers#14124, open), and transformers 5.6 moved CLIPTextModel's layers from ``text_model`` onto
    the model itself. The alias is a plain attribute (not a submodule), so nothing else about the model changes."""
    if text_encoder is not None and not hasattr(text_encoder, "text_model"):
        object.__setattr__(text_encoder, "text_model", text_encoder)


def use_scheduler(reference: Reference, name: str | None) -> None:
    """Swap in scheduler ``name`` from the scheduler as loaded (None keeps the package's own)."""
    import diffusers

    from diffship.runtime.schedulers import resolve_scheduler

    config = reference.loaded_scheduler_config
    if name is None:
        reference.pipe.scheduler = getattr(diffusers, config["_class_name"]).from_config(config)
        return
    scheduler_class, overrides = resolve_scheduler(name)
    reference.pipe.scheduler = getattr(diffusers, scheduler_class.class_name).from_config(config, **overrides)


@contextlib.contextmanager
def shared_noise(reference: Reference, seeds: Sequence[int]) -> Iterator[None]:
    """Make the scheduler's random draws the same per-image numpy draws runtime.Pipeline makes.

    Both kinds of draw a diffusers scheduler makes are fed, from one generator per image, in the order they are made:
    ``randn_tensor`` (ancestral, SDE multistep, LCM, TCD), and the noise sampler of DPMSolverSDEScheduler, whose
    Brownian tree (``BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed)``, called per step as
    ``sampler(sigma, sigma_next)`` for a standard-normal increment) runtime does not reproduce: it draws a standard
    normal per image at those calls instead, so the tree is replaced by the same draws here."""
    import torch

    module: Any = importlib.import_module(type(reference.pipe.scheduler).__module__)
    generators = [np.random.default_rng(seed) for seed in seeds]

    def draws(shape: Sequence[int], generator: Any = None, device: Any = None, dtype: Any = None, layout: Any = None) -> Any:
        if int(shape[0]) != len(generators):
            raise AssertionError(f"diffusers drew noise of shape {tuple(shape)} for {len(generators)} seeded images")
        noise = np.stack([g.standard_normal(tuple(shape[1:]), dtype=np.float32) for g in generators])
        return torch.from_numpy(noise).to(device=device or reference.device, dtype=dtype or torch.float32)

    def noise_sampler(x: Any, *args: Any, **kwargs: Any) -> Any:
        # Per image, stacked along the batch, in x's dtype and device (the tree's increments have them too).
        return lambda sigma, sigma_next: draws(x.shape, device=x.device, dtype=x.dtype)

    replacements = {"randn_tensor": draws, "BrownianTreeNoiseSampler": noise_sampler}
    originals = {name: getattr(module, name) for name in replacements if hasattr(module, name)}
    for name in originals:
        setattr(module, name, replacements[name])
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(module, name, original)


def run_reference(
    reference: Reference,
    prompts: Sequence[str],
    latents: np.ndarray,
    seeds: Sequence[int],
    negative_prompts: Sequence[str] | None = None,
    steps: int = 20,
    guidance: float = 7.5,
    scheduler: str | None = None,
    eta: float = 0.0,
    extra: Mapping[str, Any] | None = None,
) -> list[np.ndarray]:
    """diffusers' images (HxWx3 uint8, as its PIL output) for injected ``latents`` and per-image noise ``seeds``;
    ``eta`` as the pipeline passes it to DDIM's and TCD's step; ``extra``: more keyword arguments of the call
    (``guidance_rescale``, SDXL's micro-conditioning, ``denoising_end``; ``output_type="latent"`` returns each image's
    float32 latents instead)."""
    import torch

    use_scheduler(reference, scheduler)
    height, width = latents.shape[2] * reference.vae_scale_factor, latents.shape[3] * reference.vae_scale_factor
    dtype = torch.float16 if reference.dtype == "fp16" else torch.float32
    arguments = {"output_type": "np", **reference.call_options, **(extra or {})}
    with shared_noise(reference, seeds), torch.inference_mode():
        images = reference.pipe(
            list(prompts),
            **negative_side(reference, reference.pipe, len(prompts), negative_prompts, guidance),
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=height,
            width=width,
            latents=torch.from_numpy(latents.copy()).to(device=reference.device, dtype=dtype),
            eta=eta,
            **arguments,
        ).images
    return _as_output(images, arguments["output_type"])


def negative_side(reference: Reference, pipe: Any, count: int, negative_prompts: Sequence[str] | None,
                  guidance: float) -> dict[str, Any]:
    """The unconditional side of a call: the negative prompts, or with ``clip_skip`` their embeddings.

    diffusers (0.42) applies ``clip_skip`` to the prompt alone and encodes the negative at the model's usual layer
    (huggingface/diffusers#13796 and #13973, closed without a merge, would have changed that). A package's
    ``clip_skip`` is in its text encoder graph, so both sides read the same layer, as classifier-free guidance's
    difference of the two needs and as A1111 does; the reference gets the same by passing diffusers negative
    embeddings from its own ``encode_prompt(..., clip_skip=...)``. Must run inside ``torch.inference_mode()``."""
    negatives = list(negative_prompts) if negative_prompts is not None else None
    xl = getattr(pipe, "text_encoder_2", None) is not None
    zeros = negatives is None and xl and pipe.config.force_zeros_for_empty_prompt  # SDXL's zeros: no layer read
    if not reference.clip_skip or not is_guided(guidance) or zeros:
        return {"negative_prompt": negatives}
    texts = negatives if negatives is not None else [""] * count
    if xl:
        embeds, _, pooled, _ = pipe.encode_prompt(texts, device=reference.device, do_classifier_free_guidance=False,
                                                  clip_skip=reference.clip_skip)
        return {"negative_prompt_embeds": embeds, "negative_pooled_prompt_embeds": pooled}
    embeds, _ = pipe.encode_prompt(texts, reference.device, 1, False, clip_skip=reference.clip_skip)
    return {"negative_prompt_embeds": embeds}


def _as_output(images: Any, output_type: str) -> list[np.ndarray]:
    """diffusers' output as runtime.Pipeline gives it: uint8 images (from ``np`` output) or float32 latents."""
    if output_type == "latent":
        return list(images.float().cpu().numpy())
    return list((np.asarray(images, dtype=np.float32) * 255).round().astype(np.uint8))


@dataclass(frozen=True)
class ImageDraws:
    """The random draws of an image-to-image or inpainting call, as runtime.Pipeline takes them (each
    [batch, latent channels, h, w]); None where the call makes no such draw."""

    start_noise: np.ndarray | None
    """None when the call adds no noise at its start (SDXL's hand-off, ``denoising_start``)."""
    image_noise: np.ndarray | None = None
    masked_image_noise: np.ndarray | None = None


class _RowFeed:
    """``randn_tensor`` for one diffusers module: each call takes the next rows of the queued draws, as many as the
    call asks for (diffusers asks per image with a list of generators, once for the batch otherwise)."""

    def __init__(self, arrays: Sequence[np.ndarray], device: str) -> None:
        self.rows = [row[None] for array in arrays for row in array]
        self.device = device

    def __call__(self, shape: Sequence[int], generator: Any = None, device: Any = None, dtype: Any = None,
                 layout: Any = None) -> Any:
        import torch

        count = int(shape[0])
        if len(self.rows) < count:
            raise AssertionError(f"diffusers drew {count} more rows of shape {tuple(shape)} than were queued")
        taken, self.rows = self.rows[:count], self.rows[count:]
        noise = np.concatenate(taken)
        if noise.shape != tuple(shape):
            raise AssertionError(f"diffusers drew {tuple(shape)}, the queued draw is {noise.shape}")
        return torch.from_numpy(noise).to(device=device or self.device, dtype=dtype or torch.float32)


@contextlib.contextmanager
def _patched(module_name: str, feed: Any) -> Iterator[None]:
    module: Any = importlib.import_module(module_name)
    original = module.randn_tensor
    module.randn_tensor = feed
    try:
        yield
    finally:
        module.randn_tensor = original


def run_reference_image_task(
    reference: Reference,
    prompts: Sequence[str],
    image: Any,
    draws: ImageDraws,
    seeds: Sequence[int],
    mask_image: Any = None,
    strength: float = 0.8,
    negative_prompts: Sequence[str] | None = None,
    steps: int = 20,
    guidance: float = 7.5,
    scheduler: str | None = None,
    height: int | None = None,
    width: int | None = None,
    padding_mask_crop: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> list[np.ndarray]:
    """diffusers' StableDiffusionImg2ImgPipeline (no ``mask_image``) or StableDiffusionInpaintPipeline images (HxWx3
    uint8) over the reference's modules, with ``draws`` fed to its random draws in the order diffusers makes them.

    diffusers' inpainting pipeline encodes the image (and the masked image) once for the whole batch: its draws are
    row 0 of ``image_noise`` and ``masked_image_noise`` (a 4-channel UNet still encodes the masked image, unused: it
    gets zeros). The image-to-image pipeline, given a generator per image, encodes each image with its own draw.
    SDXL references run StableDiffusionXLImg2ImgPipeline (``extra``: micro-conditioning, ``denoising_start``/``_end``,
    ``output_type="latent"``); ``image`` may be a torch tensor of latents there."""
    import torch

    use_scheduler(reference, scheduler)
    inpainting = mask_image is not None
    pipe = task_pipeline(reference, inpainting)
    if inpainting:
        assert draws.start_noise is not None
        zeros = np.zeros_like(draws.start_noise[:1])
        vae_draws = [d[:1] for d in (draws.image_noise,) if d is not None]
        vae_draws.append(draws.masked_image_noise[:1] if draws.masked_image_noise is not None else zeros)
    else:
        vae_draws = [draws.image_noise] if draws.image_noise is not None else []
    arguments: dict[str, Any] = {"strength": strength, "output_type": "np" if padding_mask_crop is None else "pil",
                                 **reference.call_options, **(extra or {})}
    if inpainting:
        arguments.update(mask_image=mask_image, height=height, width=width, padding_mask_crop=padding_mask_crop)
    generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]  # ignored by the fed draws
    with (_patched("diffusers.models.autoencoders.vae", _RowFeed(vae_draws, reference.device)),
          _patched(type(pipe).__module__, _RowFeed([d for d in (draws.start_noise,) if d is not None],
                                                   reference.device)),
          shared_noise(reference, seeds), torch.inference_mode()):
        images = pipe(
            list(prompts),
            image=image,
            **negative_side(reference, pipe, len(prompts), negative_prompts, guidance),
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generators,
            **arguments,
        ).images
    return [np.asarray(image) for image in images] if padding_mask_crop is not None else \
        _as_output(images, arguments["output_type"])
