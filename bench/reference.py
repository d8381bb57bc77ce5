"""The diffusers side of every comparison: the same weights as a package, driven the way diffusers users drive it.

``reference_pipeline`` rebuilds the package's source (``manifest.source``) and checks its weights digest against
the manifest, so "same weights" is proven, not assumed. ``run_reference`` swaps schedulers the way users do
(``Class.from_config(loaded_config)``, plus ``use_karras_sigmas`` for the ``_karras`` names), injects the caller's
starting latents, and feeds ancestral/LCM samplers the same per-image noise runtime.Pipeline draws (image ``k``:
``numpy.random.default_rng(seed + k)``).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.errors import DiffshipError
from core.package import ModelPackage

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


def reference_pipeline(package: ModelPackage, device: str = "cpu", dtype: str = "fp32") -> Reference:
    """diffusers' StableDiffusionPipeline over the package's own weights (digest-checked)."""
    import torch

    from exporter.sources import SourceError, load_source_from_info

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
    pipe: Any = source.diffusers_pipeline()  # diffusers' stubs omit DiffusionPipeline's own methods
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(device=device, dtype=torch.float16) if dtype == "fp16" else pipe.to(device)
    return Reference(pipe, pipe.scheduler.config, device, dtype, package.constants.vae_scale_factor)


def use_scheduler(reference: Reference, name: str | None) -> None:
    """Swap in scheduler ``name`` from the scheduler as loaded (None keeps the package's own)."""
    import diffusers

    from runtime.schedulers import resolve_scheduler

    config = reference.loaded_scheduler_config
    if name is None:
        reference.pipe.scheduler = getattr(diffusers, config["_class_name"]).from_config(config)
        return
    scheduler_class, overrides = resolve_scheduler(name)
    reference.pipe.scheduler = getattr(diffusers, scheduler_class.class_name).from_config(config, **overrides)


@contextlib.contextmanager
def shared_noise(reference: Reference, seeds: Sequence[int]) -> Iterator[None]:
    """Make the scheduler's random draws the same per-image numpy draws runtime.Pipeline makes."""
    import torch

    module: Any = importlib.import_module(type(reference.pipe.scheduler).__module__)
    original = getattr(module, "randn_tensor", None)
    if original is None:
        yield
        return
    generators = [np.random.default_rng(seed) for seed in seeds]

    def draws(shape: Sequence[int], generator: Any = None, device: Any = None, dtype: Any = None, layout: Any = None) -> Any:
        noise = np.stack([g.standard_normal(tuple(shape[1:]), dtype=np.float32) for g in generators])
        return torch.from_numpy(noise).to(device=device or reference.device, dtype=dtype or torch.float32)

    module.randn_tensor = draws
    try:
        yield
    finally:
        module.randn_tensor = original


def run_reference(
    reference: Reference,
    prompts: Sequence[str],
    latents: np.ndarray,
    seeds: Sequence[int],
    negative_prompts: Sequence[str] | None = None,
    steps: int = 20,
    guidance: float = 7.5,
    scheduler: str | None = None,
) -> list[np.ndarray]:
    """diffusers' images (HxWx3 uint8, as its PIL output) for injected ``latents`` and per-image noise ``seeds``."""
    import torch

    use_scheduler(reference, scheduler)
    height, width = latents.shape[2] * reference.vae_scale_factor, latents.shape[3] * reference.vae_scale_factor
    dtype = torch.float16 if reference.dtype == "fp16" else torch.float32
    with shared_noise(reference, seeds), torch.inference_mode():
        images = reference.pipe(
            list(prompts),
            negative_prompt=list(negative_prompts) if negative_prompts is not None else None,
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=height,
            width=width,
            latents=torch.from_numpy(latents.copy()).to(device=reference.device, dtype=dtype),
            output_type="np",
        ).images
    return list((np.asarray(images, dtype=np.float32) * 255).round().astype(np.uint8))
