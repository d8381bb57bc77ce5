"""What a call returns: the images, their timings, and what made each one (recorded in every PNG it saves)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diffship.core.package import ModelPackage
from diffship.runtime.conditioning import ImageTask
from diffship.runtime.errors import PipelineInputError
from diffship.runtime.images import save_png
from diffship.runtime.lora import LoraRequest
from diffship.runtime.requests import Request
from diffship.runtime.timing import Timings


@dataclass
class GenerationResult:
    images: list[np.ndarray]
    """HxWx3 uint8 arrays, prompt-major (all images of the first prompt, then the second's...); empty with
    ``output_type="latent"``."""
    timings: Timings
    parameters: list[dict[str, Any]]
    """What made each image (prompt, negative prompt, seed, steps, guidance, scheduler, size, package, backend)."""
    latents: np.ndarray | None = None
    """[images, C, h, w] float32 final latents, with ``output_type="latent"`` only (a refiner's ``image``)."""

    @property
    def seeds(self) -> list[int]:
        return [p["seed"] for p in self.parameters]

    def save(self, path: str | os.PathLike[str], prefix: str = "image", overwrite: bool = False) -> list[Path]:
        """Write every image as a PNG, its parameters in a text chunk, and return the paths. ``path`` ending in
        ``.png``: that file for one image, ``<name>-00.png``, ``<name>-01.png``, ... for several; any other path is a
        folder, created if needed, with ``<prefix>-<index>-<seed>.png`` in it. An existing file is an error unless
        ``overwrite``; nothing is written then."""
        if not isinstance(path, (str, os.PathLike)):
            raise PipelineInputError(f"save takes a folder or a .png path, got {type(path).__name__}")
        targets = self._targets(Path(path), prefix)
        existing = [str(target) for target in targets if target.exists()]
        if existing and not overwrite:
            raise PipelineInputError(f"{', '.join(existing[:3])}{' ...' if len(existing) > 3 else ''} already "
                                     "exist; pass overwrite=True to replace them, or choose another path")
        return [save_png(image, target, params)
                for target, image, params in zip(targets, self.images, self.parameters, strict=True)]

    def _targets(self, path: Path, prefix: str) -> list[Path]:
        if path.suffix.lower() == ".png":
            if len(self.images) == 1:
                return [path]
            return [path.with_name(f"{path.stem}-{index:02d}.png") for index in range(len(self.images))]
        if path.is_file():
            raise PipelineInputError(f"{path} is a file; give a folder, or a path ending in .png")
        return [path / f"{prefix}-{index:02d}-{params['seed']}.png" for index, params in enumerate(self.parameters)]


def describe_images(package: ModelPackage, request: Request, scheduler: str, task: ImageTask | None,
                    loras: tuple[LoraRequest, ...], backend: str, precision: str) -> list[dict[str, Any]]:
    """What made each image. The model is named by its identity, not by where it lies on this machine, and a
    negative prompt is recorded only when guidance used it."""
    source, export = package.manifest.source, package.manifest.export
    model = {"family": package.manifest.family, "weights_sha256": source.get("weights_sha256"),
             "export_key": export.get("key"), "name": source.get("model") or source.get("hub_id")}
    shared = {
        "steps": request.steps,
        "guidance_scale": request.guidance_scale,
        **({"guidance_rescale": request.guidance_rescale} if request.guidance_rescale else {}),
        **request.guidance_schedule.describe(),
        **(request.feature_caching.describe() if request.feature_caching is not None else {}),
        **(request.text_options.describe() if request.text_options is not None else {}),
        "scheduler": request.scheduler or scheduler,
        **({"eta": request.eta} if request.eta else {}),
        **({"long_prompts": True, "prompt_weighting": request.prompt_weighting} if request.long_prompts else {}),
        "height": request.height,
        "width": request.width,
        **({"vae_tile": request.vae_tile} if request.vae_tile else {}),
        **_image_task(request, task),
        **{k: v for k, v in asdict(request.handoff).items() if v is not None and v != "image"},
        **({"injected": sorted(request.injected)} if request.injected else {}),
        "model": model,
        **({"loras": [f"{r.path.name}:{r.scale:g}" for r in loras]} if loras else {}),
        "backend": backend,
        "precision": precision,
    }
    described = []
    for index, seed in enumerate(request.seeds):
        prompt_index = index // request.images_per_prompt
        negative = request.negative_prompts[prompt_index] if request.negative_prompts else ""
        described.append({"prompt": request.prompts[prompt_index],
                          **({"negative_prompt": negative} if request.guided and negative else {}),
                          "seed": seed, **shared})
    return described


def _image_task(request: Request, task: ImageTask | None) -> dict[str, Any]:
    if task is None:
        return {}
    return {
        "task": task.inputs.task, **({"image": "latents"} if task.inputs.latents is not None else {}),
        **({"strength": task.strength} if request.handoff.noises_start else {}),
        **({"sample_mode": task.inputs.sample_mode} if task.inputs.latents is None else {}),
        **({"padding_mask_crop": task.inputs.padding_mask_crop} if task.crop_box is not None else {}),
    }
