"""``runtime.Pipeline``: Stable Diffusion text-to-image over compiled engines, with no torch, diffusers or transformers.

    pipe = Pipeline.from_package("packages/tiny", backend="ort")
    result = pipe("a red fox in the snow", num_inference_steps=20, seed=42)
    result.save("out/")

Seeds: image ``k`` of a call (prompt-major, as diffusers orders them) draws its starting noise, and for ancestral
samplers its per-step noise, from ``numpy.random.default_rng(seed + k)``. So ``num_images_per_prompt=2`` with seed 42
gives the same two images as two calls with seeds 42 and 43; numpy's generator is not torch's, so the same seed does
not give diffusers' picture (inject ``latents`` for that).
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.package import ModelPackage
from engines.backend import OpenRequest, open_engines
from engines.base import EngineBase
from runtime.errors import PipelineError, PipelineInputError
from runtime.guidance import ClassifierFreeGuidance, run_engine
from runtime.images import save_png, to_uint8
from runtime.schedulers import Scheduler, SchedulerError, make_scheduler, resolve_scheduler, scheduler_names
from runtime.timing import StageTimer, Timings
from runtime.tokenizer import CLIPTokenizer

if TYPE_CHECKING:
    from engines.ort import OrtOptions

log = logging.getLogger(__name__)

StepCallback = Callable[[int, float, np.ndarray], None]


@dataclass
class GenerationResult:
    images: list[np.ndarray]
    """HxWx3 uint8 arrays, prompt-major (all images of the first prompt, then the second's...)."""
    timings: Timings
    parameters: list[dict[str, Any]]
    """What made each image (prompt, negative prompt, seed, steps, guidance, scheduler, size, package, backend)."""

    @property
    def seeds(self) -> list[int]:
        return [p["seed"] for p in self.parameters]

    def save(self, folder: str | os.PathLike[str], prefix: str = "image") -> list[Path]:
        """Write every image as ``<prefix>-<index>-<seed>.png`` in ``folder``, parameters in a PNG text chunk."""
        out = Path(folder)
        return [
            save_png(image, out / f"{prefix}-{index:02d}-{params['seed']}.png", params)
            for index, (image, params) in enumerate(zip(self.images, self.parameters, strict=True))
        ]


@dataclass(frozen=True)
class _Request:
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


class Pipeline:
    """Text-to-image over a model package's engines (see the module docstring for what a seed means)."""

    def __init__(
        self,
        package: ModelPackage,
        engines: dict[str, EngineBase],
        tokenizer: CLIPTokenizer,
        scheduler_config: dict[str, Any],
        backend: str,
        precision: str,
    ) -> None:
        self.package = package
        self.constants = package.constants
        self.engines = engines
        self.tokenizer = tokenizer
        self.scheduler_config = scheduler_config
        self.backend = backend
        self.precision = precision

    @classmethod
    def from_package(
        cls,
        path: str | os.PathLike[str],
        backend: str = "ort",
        precision: str | None = None,
        threads: int | None = None,
        device: str = "auto",
        engine_set: str | None = None,
        ort_options: OrtOptions | None = None,
        cuda_graphs: bool = False,
    ) -> Pipeline:
        """Open a package: tokenizer and scheduler config from its folders, engines of ``backend`` (``ort``, ``trt``,
        or any registered with ``engines.backend.register_backend``).

        ``precision``: ``fp32``/``fp16`` (``ort`` default: fp32 when exported). ``threads``/``device``: ONNX Runtime
        intra-op threads and ``cpu``/``cuda``/``auto``. ``engine_set``: which ``engines/`` folder (default: the
        backend's choice for this machine). ``cuda_graphs``: capture each engine's run into a CUDA graph per input
        shape and replay it (``trt`` with static engines; ``ort`` on the CUDA provider, one static-shape session per
        shape). ``ort_options`` overrides the ONNX Runtime settings above.
        """
        package = ModelPackage.open(path)
        request = OpenRequest(precision=precision, engine_set=engine_set, device=device, threads=threads,
                              cuda_graphs=cuda_graphs, options=ort_options if backend == "ort" else None)
        engines, selection = open_engines(package, package.family.txt2img, backend, request)
        try:
            tokenizer = CLIPTokenizer.from_dir(package.path("tokenizer"), max_length=package.constants.text_max_length)
            config_path = package.verify_file("scheduler/scheduler_config.json")
            scheduler_config = json.loads(config_path.read_text(encoding="utf-8"))
        except BaseException:
            for engine in engines.values():
                engine.close()
            raise
        return cls(package, engines, tokenizer, scheduler_config, selection.backend, selection.precision)

    def close(self) -> None:
        for engine in self.engines.values():
            engine.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ the algorithm

    def __call__(
        self,
        prompt: str | Sequence[str],
        negative_prompt: str | Sequence[str] | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        scheduler: str | None = None,
        height: int | None = None,
        width: int | None = None,
        seed: int | None = None,
        num_images_per_prompt: int = 1,
        latents: np.ndarray | None = None,
        callback: StepCallback | None = None,
    ) -> GenerationResult:
        """Generate images; see the module docstring for seeds, README for every argument."""
        request = self._validate(
            prompt, negative_prompt, num_inference_steps, guidance_scale, scheduler, height, width, seed,
            num_images_per_prompt, latents,
        )
        timer = StageTimer()
        guided = request.guidance_scale > 1.0

        with timer.stage("tokenize"):
            cond_ids = self._tokenize(request.prompts)
            uncond_ids = self._tokenize(request.negative_prompts or [""] * len(request.prompts)) if guided else None

        with timer.stage("text_encoder"):
            cond_embeddings, uncond_embeddings = self._encode_text(cond_ids, uncond_ids, request.images_per_prompt)

        generators = [np.random.default_rng(s) for s in request.seeds]
        sampler = self._make_scheduler(request)
        latents = self._initial_latents(request, generators) * np.float32(sampler.init_noise_sigma)
        denoise = ClassifierFreeGuidance(self.engines["unet"], cond_embeddings, uncond_embeddings, request.guidance_scale)

        for i, timestep in enumerate(sampler.timesteps):
            with timer.stage("scheduler"):
                model_input = sampler.scale_model_input(latents, i)
            with timer.stage("unet"):
                model_output = denoise(model_input, float(timestep))
            with timer.stage("scheduler"):
                noise = _draw(generators, latents.shape[1:]) if sampler.stochastic else None
                latents = sampler.step(model_output, i, latents, noise=noise)
            self._check_finite(latents, i, request, sampler)
            if callback is not None:
                callback(i, float(timestep), latents)

        with timer.stage("vae_decode"):
            pixels = self._decode(latents)
        images = to_uint8(pixels)
        return GenerationResult(images, timer.finish(), self._describe(request, sampler))

    # ------------------------------------------------------------------ stages

    def _tokenize(self, texts: list[str]) -> np.ndarray:
        batch = self.tokenizer.encode(texts)
        for text, dropped in zip(texts, batch.truncated, strict=True):
            if dropped:
                log.warning(
                    "prompt truncated: the text encoder reads %d tokens, %d were dropped from %r",
                    self.tokenizer.max_length, dropped, text if len(text) < 80 else text[:77] + "...",
                )
        return batch.input_ids

    def _encode_text(
        self, cond_ids: np.ndarray, uncond_ids: np.ndarray | None, images_per_prompt: int
    ) -> tuple[np.ndarray, np.ndarray | None]:
        ids = cond_ids if uncond_ids is None else np.concatenate([uncond_ids, cond_ids])
        hidden = run_engine(self.engines["text_encoder"], {"input_ids": ids})["last_hidden_state"]
        # diffusers repeats each prompt's embedding num_images_per_prompt times in place (prompt-major).
        hidden = np.repeat(hidden, images_per_prompt, axis=0)
        if uncond_ids is None:
            return hidden, None
        uncond, cond = np.split(hidden, 2)
        return cond, uncond

    def _make_scheduler(self, request: _Request) -> Scheduler:
        # The package's own scheduler unless one is asked for; its family's when the config names none.
        name = request.scheduler or self.scheduler_config.get("_class_name") or self.package.family.default_scheduler
        try:
            return make_scheduler(name, self.scheduler_config, request.steps)
        except SchedulerError as exc:
            raise PipelineInputError(str(exc)) from None

    def _check_finite(self, latents: np.ndarray, i: int, request: _Request, sampler: Scheduler) -> None:
        # NaN latents decode to a black image without a word; a clear error at the step it happened is kinder.
        if np.isfinite(latents).all():
            return
        hint = (
            "an fp16 UNet overflowing is the usual cause: try fp32 (ONNX Runtime: --precision fp32; "
            "TensorRT: build-trt --fp32)"
            if self.precision == "fp16"
            else "check guidance_scale and the scheduler config"
        )
        raise PipelineError(
            f"latents became NaN or infinite at step {i + 1} of {len(sampler.timesteps)} "
            f"({type(sampler).class_name}, guidance_scale {request.guidance_scale:g}); {hint}"
        )

    def _initial_latents(self, request: _Request, generators: list[np.random.Generator]) -> np.ndarray:
        if request.latents is not None:
            return request.latents
        return _draw(generators, self._latent_shape(request.height, request.width)[1:])

    def _decode(self, latents: np.ndarray) -> np.ndarray:
        scaled = latents / self.constants.scaling_factor
        if self.constants.shift_factor is not None:
            scaled = scaled + self.constants.shift_factor
        return run_engine(self.engines["vae_decoder"], {"latent_sample": scaled})["sample"]

    # ------------------------------------------------------------------ checks and bookkeeping

    def _latent_shape(self, height: int, width: int, batch: int = 1) -> tuple[int, int, int, int]:
        factor = self.constants.vae_scale_factor
        return (batch, self.constants.latent_channels, height // factor, width // factor)

    def size_limits(self) -> tuple[int, int | None]:
        """The smallest and largest height/width (pixels) the loaded engines accept; None: no upper limit."""
        low, high = self.constants.spatial_multiple, None
        factor = self.constants.vae_scale_factor
        for component, input_name in (("unet", "sample"), ("vae_decoder", "latent_sample")):
            profile = self.engines[component].profile
            if profile is None:
                continue
            minimum, _, maximum = profile.shapes[input_name]
            low = max(low, minimum[2] * factor, minimum[3] * factor)
            limit = min(maximum[2], maximum[3]) * factor
            high = limit if high is None else min(high, limit)
        return low, high

    def _validate(
        self,
        prompt: str | Sequence[str],
        negative_prompt: str | Sequence[str] | None,
        steps: int,
        guidance_scale: float,
        scheduler: str | None,
        height: int | None,
        width: int | None,
        seed: int | None,
        images_per_prompt: int,
        latents: np.ndarray | None,
    ) -> _Request:
        prompts = _as_prompt_list(prompt, "prompt")
        negatives = None if negative_prompt is None else _as_prompt_list(negative_prompt, "negative_prompt")
        if negatives is not None and isinstance(negative_prompt, str):
            negatives = negatives * len(prompts)
        if negatives is not None and len(negatives) != len(prompts):
            raise PipelineInputError(
                f"negative_prompt has {len(negatives)} entries but prompt has {len(prompts)}; give one per prompt or one string"
            )
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
            raise PipelineInputError(f"num_inference_steps must be an integer >= 1, got {steps!r}")
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float, np.floating, np.integer)):
            raise PipelineInputError(f"guidance_scale must be a number, got {type(guidance_scale).__name__}")
        if not math.isfinite(float(guidance_scale)) or guidance_scale < 0:
            raise PipelineInputError(f"guidance_scale must be finite and >= 0, got {guidance_scale!r}")
        if scheduler is not None:
            try:
                resolve_scheduler(scheduler)
            except SchedulerError:
                raise PipelineInputError(
                    f"unknown scheduler {scheduler!r}; known: {', '.join(scheduler_names())}"
                ) from None
        if isinstance(images_per_prompt, bool) or not isinstance(images_per_prompt, (int, np.integer)) or images_per_prompt < 1:
            raise PipelineInputError(f"num_images_per_prompt must be an integer >= 1, got {images_per_prompt!r}")
        height = self.constants.default_height if height is None else height
        width = self.constants.default_width if width is None else width
        self._check_size(height, width)
        batch = len(prompts) * int(images_per_prompt)
        if seed is None:
            seed = secrets.randbelow(2**31)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise PipelineInputError(f"seed must be an integer >= 0 (or None for a random one), got {seed!r}")
        if latents is not None:
            expected = self._latent_shape(height, width, batch)
            if not isinstance(latents, np.ndarray) or latents.shape != expected:
                got = latents.shape if isinstance(latents, np.ndarray) else type(latents).__name__
                raise PipelineInputError(
                    f"latents must be a numpy array of shape {expected} (batch {len(prompts)} prompts x "
                    f"{images_per_prompt} images, latent channels, height/{self.constants.vae_scale_factor}, "
                    f"width/{self.constants.vae_scale_factor}), got {got}"
                )
            if not np.all(np.isfinite(latents)):
                raise PipelineInputError("latents contain NaN or infinite values")
            latents = latents.astype(np.float32)
        return _Request(
            prompts=prompts,
            negative_prompts=negatives,
            steps=int(steps),
            guidance_scale=float(guidance_scale),
            scheduler=scheduler,
            height=int(height),
            width=int(width),
            images_per_prompt=int(images_per_prompt),
            seeds=[int(seed) + k for k in range(batch)],
            latents=latents,
        )

    def _check_size(self, height: object, width: object) -> None:
        multiple = self.constants.spatial_multiple
        low, high = self.size_limits()
        for name, value in (("height", height), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise PipelineInputError(f"{name} must be an integer number of pixels, got {value!r}")
            if value % multiple:
                raise PipelineInputError(
                    f"{name} {value} is not a multiple of {multiple} pixels (this model's VAE factor "
                    f"{self.constants.vae_scale_factor} x its UNet's down-sampling); try {max(multiple, round(value / multiple) * multiple)}"
                )
            if value < low or (high is not None and value > high):
                upper = f"{high}" if high is not None else "unlimited"
                raise PipelineInputError(f"{name} {value} is outside what the loaded engines accept ({low}..{upper})")

    def _describe(self, request: _Request, scheduler: Scheduler) -> list[dict[str, Any]]:
        negatives = request.negative_prompts or [""] * len(request.prompts)
        described = []
        for index, seed in enumerate(request.seeds):
            prompt_index = index // request.images_per_prompt
            described.append(
                {
                    "prompt": request.prompts[prompt_index],
                    "negative_prompt": negatives[prompt_index],
                    "seed": seed,
                    "steps": request.steps,
                    "guidance_scale": request.guidance_scale,
                    "scheduler": request.scheduler or scheduler.class_name,
                    "height": request.height,
                    "width": request.width,
                    "latents": "injected" if request.latents is not None else "seeded",
                    "package": str(self.package.root),
                    "backend": self.backend,
                    "precision": self.precision,
                }
            )
        return described


def _as_prompt_list(value: object, name: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return list(value)
    if isinstance(value, (list, tuple)) and not value:
        raise PipelineInputError(f"{name} is an empty list; give at least one prompt")
    raise PipelineInputError(f"{name} must be a string or a list of strings, got {type(value).__name__}")


def _draw(generators: list[np.random.Generator], shape: tuple[int, ...]) -> np.ndarray:
    """One standard-normal draw of ``shape`` per image, each from that image's own generator."""
    return np.stack([g.standard_normal(shape, dtype=np.float32) for g in generators])


__all__ = ["GenerationResult", "Pipeline", "PipelineError", "PipelineInputError", "StepCallback"]
