"""``runtime.Pipeline``: Stable Diffusion text-to-image, image-to-image and inpainting over compiled engines, with no
torch, diffusers or transformers.

    pipe = Pipeline.from_package("packages/tiny", backend="ort")
    result = pipe("a red fox in the snow", num_inference_steps=20, seed=42)                      # text-to-image
    result = pipe("an oil painting", image="photo.png", strength=0.6, seed=1)                    # image-to-image
    result = pipe("a red fox", image="photo.png", mask_image="mask.png", seed=1)                 # inpainting
    result.save("out/")
    results = pipe.run_batch([pipe.prepare("a fox", seed=1), pipe.prepare("a cat", seed=2)])     # one loop, two calls

The pipeline holds the algorithm (prepare -> encode -> loop -> decode) and asks the package's family for the rest: its
text side turns prompts into the UNet's conditioning (``runtime.text``), its description says which tasks it does
(docs/design.md, "Families").

Calls may come from many threads at once; ``cancel=event.is_set`` stops one between steps (``PipelineCancelled``);
``runtime.batching.Batcher`` gathers concurrent calls into batches (runtime/calls.py says which may share a loop).

Seeds: image ``k`` of a call (prompt-major, as diffusers orders them) makes its random draws from
``numpy.random.default_rng(seed + k)``: first the ones ``draw_order`` names (text-to-image: the starting latents;
image tasks: the VAE draw for the image, the noise added at the starting step, the VAE draw for the masked image), then
the per-step noise of ancestral samplers. So ``num_images_per_prompt=2`` with seed 42 gives the same two images as two
calls with seeds 42 and 43. numpy's generator is not torch's, so the same seed does not give diffusers' picture: inject
the draws for that (``latents``; ``start_noise``, ``image_noise``, ``masked_image_noise``), each
[batch, latent channels, height/8, width/8] float32; an injected draw is not drawn.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

import numpy as np

from diffship.core.errors import PackageError, command
from diffship.core.package import ModelPackage
from diffship.core.progress import ProgressCallback
from diffship.engines.backend import Backend, OpenRequest, OpenSettings, Selection, get_backend
from diffship.engines.base import EngineBase
from diffship.runtime.calls import FINISH_EARLY, Call, Cancel, guidance_scales, image_slices
from diffship.runtime.conditioning import (
    TASKS,
    ImageInput,
    ImageInputs,
    ImageTask,
    check_sample_mode,
    check_strength,
    latent_sample,
    prepare_task,
    read_image_inputs,
)
from diffship.runtime.errors import PipelineCancelled, PipelineError, PipelineInputError
from diffship.runtime.feature_cache import FULL, SHALLOW, FeatureCache
from diffship.runtime.gate import EngineGate, holds_engines
from diffship.runtime.guidance import ClassifierFreeGuidance, run_engine
from diffship.runtime.handoff import Handoff, check_handoff
from diffship.runtime.images import to_uint8
from diffship.runtime.lora import LoraRequest, lora_weights
from diffship.runtime.previews import StepReporter, check_preview_every
from diffship.runtime.requests import (
    Limits,
    Request,
    SizeLimits,
    StepCallback,
    check_clip_skip,
    latent_shape,
    validate_request,
)
from diffship.runtime.results import GenerationResult, describe_images
from diffship.runtime.schedulers import Scheduler, SchedulerError, make_scheduler, scheduler_names, start_index
from diffship.runtime.starts import draw_order, starting_point
from diffship.runtime.text import Conditioning, Size, TextSide, open_text_side
from diffship.runtime.timing import StageTimer, Timings
from diffship.runtime.tokenizer import CLIPTokenizer
from diffship.runtime.vae_tiling import VaeTiles, choose_tile, tiled

if TYPE_CHECKING:
    from diffship.engines.ort import OrtOptions

log = logging.getLogger(__name__)

LoraLike = str | os.PathLike[str] | tuple[str | os.PathLike[str], float] | LoraRequest

P = ParamSpec("P")
R = TypeVar("R")


def _arguments_of(
    source: Callable[Concatenate[Any, P], Any],
) -> Callable[[Callable[..., R]], Callable[Concatenate[Any, P], R]]:
    """Give a method ``source``'s parameters (signature and types): ``__call__`` takes exactly ``prepare``'s."""

    def decorate(method: Callable[..., R]) -> Callable[Concatenate[Any, P], R]:
        method.__signature__ = inspect.signature(source)  # type: ignore[attr-defined]
        return method

    return decorate


class Pipeline:
    """Text-to-image, image-to-image and inpainting over a model package's engines (see the module docstring for what
    a seed means). The VAE encoder is opened on the first call that gives an image."""

    def __init__(
        self,
        package: ModelPackage,
        engines: dict[str, EngineBase],
        text: TextSide,
        scheduler_config: dict[str, Any],
        backend: Backend,
        selection: Selection,
        open_request: OpenRequest,
        limits: Limits | None = None,
        loras: Sequence[LoraRequest] = (),
    ) -> None:
        self.package = package
        self.constants = package.constants
        self.family = package.family
        self.engines = engines
        self.text = text
        """The family's text side: prompts -> the UNet's conditioning."""
        self._conditioning = frozenset(self.family.unet_conditioning(self.constants))
        """The UNet inputs the text side fills (every one but the latents and timestep)."""
        self.scheduler_config = scheduler_config
        self.limits = limits or Limits()
        self._backend = backend
        self._selection = selection
        """What the backend chose to run (engine set, precision): every engine, opened now or later, comes from it."""
        self._open_request = open_request
        self._open_lock = threading.Lock()
        self._gate = EngineGate()
        self.loras: tuple[LoraRequest, ...] = tuple(loras)
        """The LoRAs the engines run with (``set_loras``)."""

    @property
    def backend(self) -> str:
        return self._selection.backend

    @property
    def precision(self) -> str:
        return self._selection.precision

    @property
    def tokenizer(self) -> CLIPTokenizer:
        """The tokenizer prompts are read with: the family's first (SDXL's refiner: its only one)."""
        return self._tokenizers()[0]

    @property
    def tokenizer_2(self) -> CLIPTokenizer | None:
        """The tokenizer of ``text_encoder_2`` (SDXL's, with its own pad token); None for families without one."""
        return dict(zip(getattr(self.text, "encoders", ()), self._tokenizers(), strict=False)).get("text_encoder_2")

    def _tokenizers(self) -> tuple[CLIPTokenizer, ...]:
        found = getattr(self.text, "tokenizers", None) or (getattr(self.text, "tokenizer", None),)
        if not all(isinstance(tokenizer, CLIPTokenizer) for tokenizer in found):
            raise AttributeError(f"the {self.family.name} family's text side reads its prompts without a CLIP tokenizer")
        return tuple(found)

    @property
    def device(self) -> str:
        """Where the denoising runs: the UNet engine's device (``cpu`` or ``cuda``)."""
        return self.engines["unet"].runs_on

    @property
    def selection(self) -> Selection:
        """The engine set (or exported ONNX) and precision the engines come from."""
        return self._selection

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
        limits: Limits | None = None,
        loras: Sequence[LoraLike] = (),
    ) -> Pipeline:
        """Open a package: its family's text side and the scheduler config from its folders, engines of ``backend``
        (``ort``, ``trt``, or any registered with ``engines.backend.register_backend``).

        ``precision``: ``fp32``/``fp16`` (``ort`` default: fp32 when exported). ``threads``/``device``: ONNX Runtime
        intra-op threads and ``cpu``/``cuda``/``auto``. ``engine_set``: which ``engines/`` folder (default: the
        backend's choice for this machine). ``cuda_graphs``: capture each engine's run into a CUDA graph per input
        shape and replay it (``trt`` with static engines; ``ort`` on the CUDA provider, one static-shape session per
        shape). ``ort_options`` overrides the ONNX Runtime settings above. ``limits``: the most one call may ask for
        (``runtime.requests.Limits``). ``loras``: LoRA files to run with, each ``path``, ``"path:scale"`` or
        ``(path, scale)`` (see ``set_loras``).
        """
        if not isinstance(path, (str, os.PathLike)):
            raise PipelineInputError(f"from_package takes the path of a package folder (str or os.PathLike), got "
                                     f"{type(path).__name__} {path!r:.60}")
        package = ModelPackage.open(path)
        chosen_backend = get_backend(backend)
        options = chosen_backend.options(OpenSettings(device=device, threads=threads, cuda_graphs=cuda_graphs,
                                                      options=ort_options))
        request = OpenRequest(precision=precision, engine_set=engine_set, options=options)
        text = open_text_side(package)
        scheduler_config = _read_scheduler_config(package)
        selection = chosen_backend.select(package, request)
        lora_requests = [LoraRequest.parse(lora) for lora in loras]
        _, weights = lora_weights(package, selection, lora_requests)
        request = replace(request, precision=selection.precision, weights=weights)
        engines = chosen_backend.open(package, selection, package.family.txt2img, request)
        return cls(package, engines, text, scheduler_config, chosen_backend, selection, request, limits,
                   lora_requests)

    def set_loras(self, loras: Sequence[LoraLike]) -> None:
        """Run with ``loras`` from now on (each ``path``, ``"path:scale"`` or ``(path, scale)``), in place of the ones
        before; ``[]`` gives back the package's own weights. Nothing is re-exported or rebuilt: the merged weights
        replace the engines' own (ONNX Runtime: a new session of each component a LoRA touches, or touched; TensorRT:
        a refit). Every file is read and checked first: on any error the pipeline keeps running as it was. Waits for
        calls in flight, and holds new ones until the swap is done (never call it from a step callback)."""
        requests = [LoraRequest.parse(lora) for lora in loras]
        _, weights = lora_weights(self.package, self._selection, requests)
        with self._gate.exclusive():
            previous = self._open_request
            changed = [c for c in self.engines if weights.get(c) or previous.weights.get(c)]
            request = replace(previous, weights=weights)
            tick = time.perf_counter()
            # Old sessions go before new ones open: the component's weights are never held twice.
            for component in changed:
                self.engines[component].close()
            try:
                reopened = self._open(changed, request)
            except BaseException:
                self.engines = {**self.engines, **self._open(changed, previous)}
                raise
            self.engines = {**self.engines, **reopened}
            self._open_request, self.loras = request, tuple(requests)
            log.info("LoRAs set (%s): %s reopened in %.2fs", ", ".join(f"{r.path.name}:{r.scale:g}" for r in requests)
                     or "none", ", ".join(changed) or "nothing", time.perf_counter() - tick)

    def _open(self, components: Sequence[str], request: OpenRequest) -> dict[str, EngineBase]:
        """``components`` from the selection made when the pipeline opened (never chosen again)."""
        return self._backend.open(self.package, self._selection, components, request)

    def close(self) -> None:
        for engine in self.engines.values():
            engine.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ calls

    def prepare(
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
        image: ImageInput | None = None,
        mask_image: ImageInput | None = None,
        strength: float | None = None,
        padding_mask_crop: int | None = None,
        sample_mode: str = "sample",
        start_noise: np.ndarray | None = None,
        image_noise: np.ndarray | None = None,
        masked_image_noise: np.ndarray | None = None,
        eta: float = 0.0,
        long_prompts: bool = False,
        prompt_weighting: str = "webui",
        cancel: Cancel | None = None,
        guidance_rescale: float = 0.0,
        original_size: Size | None = None,
        crops_coords_top_left: Size | None = None,
        target_size: Size | None = None,
        negative_original_size: Size | None = None,
        negative_crops_coords_top_left: Size | None = None,
        negative_target_size: Size | None = None,
        aesthetic_score: float | None = None,
        negative_aesthetic_score: float | None = None,
        denoising_start: float | None = None,
        denoising_end: float | None = None,
        output_type: str = "image",
        clip_skip: int | None = None,
        family_options: Mapping[str, Any] | None = None,
        guidance_cutoff: float | None = None,
        guidance_interval: tuple[float, float] | None = None,
        cache_interval: int | None = None,
        cache_schedule: str = "uniform",
        cache_center: int | None = None,
        progress: ProgressCallback | None = None,
        preview_every: int = 0,
        vae_tiles: str | int = "auto",
    ) -> Call:
        """Check a call's arguments (the same as ``__call__``'s) without running it: a ``Call`` for ``run_batch``, or
        a PipelineInputError saying what was wrong. Opens the VAE encoder if the call gives an image. README "Python
        API" documents each argument; the ones some families take (SDXL's micro-conditioning and refiner score) may
        also come in ``family_options``, checked by the family's text side; ``clip_skip`` is fixed at export. Where the
        rest are handled: the SDXL hand-off (``denoising_start``/``_end``) runtime/handoff.py; ``guidance_cutoff``/
        ``_interval`` runtime/schedule_guidance.py; ``cache_*`` (DeepCache) runtime/feature_cache.py; ``progress``,
        ``preview_every`` core/progress.py, runtime/previews.py; ``vae_tiles`` runtime/vae_tiling.py."""
        family_arguments = _family_arguments(family_options, (
            original_size, crops_coords_top_left, target_size, negative_original_size, negative_crops_coords_top_left,
            negative_target_size, aesthetic_score, negative_aesthetic_score))
        check_clip_skip(self.constants, clip_skip)
        inputs = read_image_inputs(image, mask_image, strength, sample_mode, padding_mask_crop,
                                   self.family.img2img_strength)
        handoff = check_handoff(self.family, denoising_start, denoising_end, output_type, inputs is not None,
                                strength is not None)
        height, width = self._task_size(inputs, height, width)
        tiles = VaeTiles.parse(vae_tiles)
        request = validate_request(
            self.constants, self.size_limits(vae=tiles.mode == "off"), replace(self.limits, check_memory=False),
            prompt, negative_prompt, num_inference_steps,
            guidance_scale, scheduler, height, width, seed, num_images_per_prompt,
            dict(zip(INJECTED_DRAWS, (latents, start_noise, image_noise, masked_image_noise), strict=True)), callback,
            draws=self._draw_order(inputs, handoff),
            strength=inputs.strength if inputs is not None and handoff.noises_start else None,
            eta=eta, long_prompts=long_prompts, prompt_weighting=prompt_weighting, guidance_rescale=guidance_rescale,
            guidance_cutoff=guidance_cutoff, guidance_interval=guidance_interval, cache_interval=cache_interval,
            cache_schedule=cache_schedule, cache_center=cache_center,
        )
        text_options = self.text.check(family_arguments, inputs is not None, long_prompts)
        request = replace(request, handoff=handoff, text_options=text_options, vae_tile=self._vae_tile(request, tiles))
        self._check_call(request, inputs, cancel)
        return Call(request, inputs, self._reporter(request, inputs, callback, progress, preview_every), cancel)

    def _task_size(self, inputs: ImageInputs | None, height: int | None, width: int | None
                   ) -> tuple[int | None, int | None]:
        """The package can do the task (``_check_task``); an image task's size defaults to its image's."""
        self._check_task(inputs)
        if inputs is None:
            return height, width
        sized = inputs.default_size(self.constants.vae_scale_factor,
                                    (self.constants.default_height, self.constants.default_width))
        return sized[0] if height is None else height, sized[1] if width is None else width

    def _reporter(self, request: Request, inputs: ImageInputs | None, callback: StepCallback | None,
                  progress: ProgressCallback | None, preview_every: Any) -> StepCallback | None:
        """The step callback the call runs with: the caller's, or with ``progress`` a ``StepReporter`` around it."""
        every = check_preview_every(preview_every, self.family.preview_factors, self.family.name)
        if progress is None:
            if every:
                raise PipelineInputError("preview_every needs a progress callback to send the previews to")
            return callback
        if not callable(progress):
            raise PipelineInputError(f"progress must be callable (it gets a StepEvent), got {type(progress).__name__}")
        sampler = self._make_scheduler(request)
        first, stop = request.handoff.window(
            sampler, start_index(request.steps, inputs.strength, sampler.order) if inputs is not None else 0)
        return StepReporter(callback, progress, stop - first, every, self.family.preview_factors)

    def _check_call(self, request: Request, inputs: ImageInputs | None, cancel: Cancel | None) -> None:
        """What can only be checked with the whole request: the hand-off window, given latents, ``cancel``."""
        if request.handoff != Handoff(output_type=request.handoff.output_type):
            request.handoff.window(self._make_scheduler(request), 0)  # a fraction that leaves no step fails here
        if inputs is not None and inputs.latents is not None:
            self._check_given_latents(inputs.latents, request)
        if cancel is not None and not callable(cancel):
            raise PipelineInputError(f"cancel must be callable (returning True to stop), got {type(cancel).__name__}")
        if request.feature_caching is not None:
            if self.loras:
                raise PipelineInputError("cache_interval with LoRAs is not supported yet: the DeepCache graphs have no "
                                         "LoRA weight maps; run without cache_interval, or without LoRAs")
            self._open_cache_graphs()

    def _open_cache_graphs(self) -> None:
        """The DeepCache graphs, opened on the first call that asks for them (runtime/feature_cache.py)."""
        if FULL in self.engines:
            return
        missing = [c for c in (FULL, SHALLOW) if c not in self.package.manifest.components]
        if missing:
            raise PipelineInputError(f"{self.package.root} has no DeepCache graphs ({', '.join(missing)}), which "
                                     f"cache_interval needs; export them with {command('export ... --cache-branch 0')}")
        with self._open_lock:
            if FULL not in self.engines:
                self.engines = {**self.engines, **self._open([FULL, SHALLOW], self._open_request)}

    @holds_engines
    @_arguments_of(prepare)
    def __call__(self, *args: Any, **kwargs: Any) -> GenerationResult:
        """Generate images: from text alone, from ``image`` (image-to-image, ``strength`` default 0.8), or repainting
        the white part of ``mask_image`` (inpainting, ``strength`` default 1). ``callback(step, timestep, latents)``
        sees each step; ``cancel()`` returning True stops the call between steps (``PipelineCancelled``). See the
        module docstring for seeds and injected draws, README for every argument. Safe from many threads at once."""
        outcome = self._run([self.prepare(*args, **kwargs)])[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    @holds_engines
    def run_batch(self, calls: Sequence[Call]) -> list[GenerationResult | PipelineError]:
        """Run prepared calls that share a ``batch_key`` in one denoising loop; each gets exactly the images it would
        get alone, or its own error (cancelled, or NaN in its images) while the others go on."""
        if not calls:
            return []
        keys = {call.batch_key() for call in calls}
        if len(calls) > 1 and (None in keys or len(keys) > 1):
            raise PipelineInputError("run_batch takes calls with one batch_key (same size, steps, scheduler, eta, "
                                     "guided or not; no image tasks, long prompts or injected draws)")
        return self._run(list(calls))

    # ------------------------------------------------------------------ the algorithm

    def _run(self, calls: list[Call]) -> list[GenerationResult | PipelineError]:
        """One denoising loop over every image of ``calls`` (one call, or several with one batch key)."""
        request = calls[0].request  # what the calls share: size, steps, scheduler, eta, guided or not
        inputs = calls[0].inputs
        task = prepare_task(inputs, request.height, request.width) if inputs is not None else None
        timer = StageTimer()

        embeddings = [self.text.encode(self.engines, call.request, task is not None, timer) for call in calls]
        cond = _stack([cond for cond, _ in embeddings])
        if set(cond) != self._conditioning:  # a family's text side and its contract disagree: name both
            raise PipelineError(f"the {self.family.name} text side gave {', '.join(sorted(cond))}; the UNet reads "
                                f"{', '.join(sorted(self._conditioning))}")
        uncond = _stack([uncond for _, uncond in embeddings if uncond is not None]) if request.guided else None

        generators = [np.random.default_rng(s) for call in calls for s in call.request.seeds]
        draws = self._initial_draws(calls, generators)
        sampler = self._make_scheduler(request)
        first, stop = request.handoff.window(
            sampler, start_index(request.steps, task.strength, sampler.order) if task is not None else 0)
        sampler.begin(first)
        with timer.stage("vae_encode") if task is not None else contextlib.nullcontext():
            start = starting_point(self.constants, task, draws, sampler, first, len(generators),
                                   functools.partial(self._encode_image, tile=request.vae_tile))
        latents = start.latents
        caching = request.feature_caching
        denoise = ClassifierFreeGuidance(
            self.engines["unet"], cond, uncond, guidance_scales(calls), request.guidance_rescale,
            None if caching is None else FeatureCache(self.engines[FULL], self.engines[SHALLOW],
                                                      caching.full_steps(stop - first)))
        rows = image_slices(calls)
        outcomes: list[GenerationResult | PipelineError | None] = [None] * len(calls)
        guided = request.guidance_schedule.guided_steps(sampler, first, stop)
        held: dict[int, np.ndarray] = {}
        """Latents of calls that finish early (``FINISH_EARLY``), as they were when asked; decoded with the rest."""

        for i in range(first, stop):
            self._stop_cancelled(calls, outcomes, i, sampler, first, held, latents, rows)
            if all(outcome is not None or index in held for index, outcome in enumerate(outcomes)):
                break
            timestep = float(sampler.timesteps[i])
            with timer.stage("scheduler"):
                model_input = sampler.scale_model_input(latents, i)
                if start.condition is not None:  # an inpainting UNet also reads the mask and the masked image
                    model_input = np.concatenate([model_input, start.condition], axis=1)
            with timer.stage("unet"):
                model_output = denoise(model_input, timestep, guided[i - first])
            with timer.stage("scheduler"):
                noise = _draw(generators, latents.shape[1:]) if sampler.noise_at(i) else None
                latents = sampler.step(model_output, i, latents, noise=noise)
                if start.known is not None:  # a 4-channel UNet inpaints: the known region is put back each step
                    latents = start.keep_known(latents, sampler, i)
            for index, (call, row) in enumerate(zip(calls, rows, strict=True)):
                if outcomes[index] is None and index not in held:
                    outcomes[index] = self._check_finite(latents[row], i, call.request, sampler)
                    if outcomes[index] is None and call.callback is not None:
                        call.callback(i - first, timestep, latents[row])

        if held:
            latents = latents.copy()
            for index, early in held.items():
                latents[rows[index]] = early
        self._finish_all(calls, outcomes, latents, rows, task, sampler, timer)
        return [outcome for outcome in outcomes if outcome is not None]

    # ------------------------------------------------------------------ stages

    def _finish_all(self, calls: list[Call], outcomes: list[GenerationResult | PipelineError | None],
                    latents: np.ndarray, rows: list[slice], task: ImageTask | None, sampler: Scheduler,
                    timer: StageTimer) -> None:
        """Every call still running gets its result: its latents (``output_type="latent"``), or its decoded images
        (one VAE run for all)."""
        running = [index for index, outcome in enumerate(outcomes) if outcome is None]
        if running and calls[0].request.handoff.output_type == "latent":
            timings = timer.finish()
            for index in running:
                outcomes[index] = GenerationResult([], timings, self._describe(calls[index].request, sampler, task),
                                                   latents[rows[index]].copy())
        elif running:
            with timer.stage("vae_decode"):
                pixels = self._decode(np.concatenate([latents[rows[index]] for index in running]),
                                      calls[0].request.vae_tile)
            timings = timer.finish()
            ends = np.cumsum([calls[index].images for index in running])[:-1]
            for index, decoded in zip(running, np.split(pixels, ends), strict=True):
                outcomes[index] = self._finish(calls[index], decoded, task, sampler, timings)

    def _stop_cancelled(self, calls: list[Call], outcomes: list[Any], i: int, sampler: Scheduler, first: int,
                        held: dict[int, np.ndarray], latents: np.ndarray, rows: list[slice]) -> None:
        """Calls whose ``cancel`` says so stop: ``PipelineCancelled``, or with ``FINISH_EARLY`` after a step was
        taken, their latents held to be decoded as they are now."""
        for index, call in enumerate(calls):
            if outcomes[index] is not None or index in held:
                continue
            stop = call.cancelled()
            if stop is FINISH_EARLY and i > first:
                held[index] = latents[rows[index]].copy()
                log.info("call finished early before step %d of %d: its images decoded as they are",
                         i + 1, len(sampler.timesteps))
            elif stop:
                outcomes[index] = PipelineCancelled(f"cancelled before step {i + 1} of {len(sampler.timesteps)}")

    def _finish(self, call: Call, pixels: np.ndarray, task: ImageTask | None, sampler: Scheduler,
                timings: Timings) -> GenerationResult | PipelineError:
        if not np.isfinite(pixels).all():
            # Finite but huge latents (guidance 1e38) overflow inside the VAE: a black image, unless checked here.
            return PipelineError(
                f"the VAE decoder returned NaN or infinite pixels; {self._overflow_hint(call.request)}")
        images = to_uint8(pixels)
        if task is not None:
            images = [task.finish(generated) for generated in images]
        return GenerationResult(images, timings, self._describe(call.request, sampler, task))

    def _make_scheduler(self, request: Request) -> Scheduler:
        # The package's own scheduler unless one is asked for; its family's when the config names none.
        name = request.scheduler or self.scheduler_config.get("_class_name") or self.family.default_scheduler
        try:
            return make_scheduler(name, self.scheduler_config, request.steps, eta=request.eta)
        except SchedulerError as exc:
            raise PipelineInputError(str(exc)) from None

    def draw_order(self, task: str = "txt2img", strength: float = 1.0, sample_mode: str = "sample") -> tuple[str, ...]:
        """The random draws a call of ``task`` (``txt2img``, ``img2img``, ``inpaint``) makes for each image before the
        step noise, in the order its generator makes them (diffusers' order); an injected draw is not drawn."""
        if task not in TASKS:
            raise PipelineInputError(f"task must be one of {', '.join(TASKS)}, got {task!r:.60}")
        check_sample_mode(sample_mode)
        if self.constants.inpainting_unet and task != "inpaint":
            raise PipelineInputError(f"this package's UNet is an inpainting UNet: it does inpaint only, not {task}")
        return draw_order(self.constants, task, check_strength(strength), sample_mode)

    def _draw_order(self, inputs: ImageInputs | None, handoff: Handoff) -> tuple[str, ...]:
        if inputs is None:
            return draw_order(self.constants, "txt2img", 1.0, "sample")
        return draw_order(self.constants, inputs.task, inputs.strength, inputs.sample_mode,
                          latents_given=inputs.latents is not None, noised=handoff.noises_start)

    def _initial_draws(self, calls: list[Call], generators: list[np.random.Generator]) -> dict[str, np.ndarray]:
        """Each draw the task makes for every image, in its generator's order; a call's injected draw is not drawn
        (calls that inject draws run alone)."""
        request = calls[0].request
        shape = latent_shape(self.constants, request.height, request.width)[1:]
        injected = request.injected if len(calls) == 1 else {}
        return {name: injected[name] if name in injected else _draw(generators, shape)
                for name in self._draw_order(calls[0].inputs, request.handoff)}

    def _encode_image(self, pixels: np.ndarray, noise: np.ndarray | None, batch: int,
                      tile: int | None = None) -> np.ndarray:
        """Scaled latents of one preprocessed image for each of ``batch`` images: one encoder run (or one per
        ``tile``), one draw per image from its distribution (``noise`` None: its mean, repeated)."""

        def run(part: np.ndarray) -> np.ndarray:
            return run_engine(self.engines["vae_encoder"], {"sample": part})["latent_parameters"]

        factor = self.constants.vae_scale_factor
        parameters = run(pixels) if tile is None else tiled(run, pixels, tile, tile // factor)
        latents = latent_sample(parameters, noise)
        if noise is None:
            latents = np.repeat(latents, batch, axis=0)
        if self.constants.shift_factor is not None:
            latents = latents - np.float32(self.constants.shift_factor)
        return (latents * np.float32(self.constants.scaling_factor)).astype(np.float32)

    def _check_task(self, inputs: ImageInputs | None) -> None:
        """The package can do what is asked (its family does the task; an inpainting UNet needs a mask; an image needs
        a VAE encoder, opened here on first use)."""
        refusal = self.family.refusal("txt2img" if inputs is None else inputs.task)
        if refusal is not None:
            raise PipelineInputError(refusal)
        if self.constants.inpainting_unet and (inputs is None or inputs.mask is None):
            raise PipelineInputError(
                f"this package's UNet is an inpainting UNet ({self.constants.unet_channels} input channels: latents, "
                "mask, masked image): give image and mask_image"
            )
        if inputs is None or inputs.latents is not None or "vae_encoder" in self.engines:
            return
        if "vae_encoder" not in self.package.manifest.components:
            raise PipelineInputError(
                f"{self.package.root} has no VAE encoder, which image-to-image and inpainting need; re-export the "
                f"package with this version of diffship ({command('export ...')}) to add it"
            )
        with self._open_lock:
            if "vae_encoder" not in self.engines:
                self.engines = {**self.engines, **self._open(["vae_encoder"], self._open_request)}

    def _check_given_latents(self, latents: np.ndarray, request: Request) -> None:
        expected = latent_shape(self.constants, request.height, request.width)[1:]
        if latents.shape[1:] != expected or len(latents) not in (1, request.batch):
            raise PipelineInputError(
                f"the latents given as image are {latents.shape}; this call needs [1 or {request.batch}, "
                f"{', '.join(map(str, expected))}] ({self.constants.latent_channels} latent channels at "
                f"{request.height}x{request.width} pixels, one per image or one for all)")

    def _check_finite(self, latents: np.ndarray, i: int, request: Request, sampler: Scheduler) -> PipelineError | None:
        # NaN latents decode to a black image without a word; a clear error at the step it happened is kinder.
        if np.isfinite(latents).all():
            return None
        return PipelineError(
            f"latents became NaN or infinite at step {i + 1} of {len(sampler.timesteps)} "
            f"({type(sampler).class_name}, guidance_scale {request.guidance_scale:g}); {self._overflow_hint(request)}"
        )

    def _overflow_hint(self, request: Request) -> str:
        """The likeliest cause of values that overflowed, for the error message."""
        for name, value in request.injected.items():
            if float(np.abs(value).max()) > 1e3:
                return (f"the injected {name} are far outside a unit normal draw (max |{name}| "
                        f"{float(np.abs(value).max()):.3g}); pass seeded noise or scale them")
        if request.guidance_scale > 100:
            return f"guidance_scale {request.guidance_scale:g} is extreme; diffusers' pipelines use 1 to 15"
        if self.precision == "fp16":
            return ("an fp16 engine overflowing is the usual cause: try fp32 (ONNX Runtime: --precision fp32; "
                    "TensorRT: build-trt --fp32)")
        return "check guidance_scale and the scheduler config"

    def _decode(self, latents: np.ndarray, tile: int | None = None) -> np.ndarray:
        scaled = latents / self.constants.scaling_factor
        if self.constants.shift_factor is not None:
            scaled = scaled + self.constants.shift_factor

        def run(part: np.ndarray) -> np.ndarray:
            return run_engine(self.engines["vae_decoder"], {"latent_sample": part})["sample"]

        factor = self.constants.vae_scale_factor
        return run(scaled) if tile is None else tiled(run, scaled, tile // factor, tile)

    def _vae_tile(self, request: Request, tiles: VaeTiles) -> int | None:
        """The tile side the call's VAE runs with (None: untiled); see runtime/vae_tiling.py."""
        bounds = self.size_limits(components=("vae_decoder",))
        fits = all(low <= value and (high is None or value <= high)
                   for value, (low, high) in ((request.height, bounds.height), (request.width, bounds.width)))
        native = max(self.constants.default_height, self.constants.default_width)
        return choose_tile(tiles, native, request.height, request.width, request.batch, fits, self.limits.check_memory)

    # ------------------------------------------------------------------ checks and bookkeeping

    def size_limits(self, vae: bool = True, components: Sequence[str] | None = None) -> SizeLimits:
        """The pixel heights and widths the loaded engines accept (from their shape profiles); ``vae`` False: the
        VAE's left out (a tiled VAE takes any size), ``components``: only these."""
        factor = self.constants.vae_scale_factor
        bounds: list[list[Any]] = [[self.constants.spatial_multiple, None], [self.constants.spatial_multiple, None]]
        for component, input_name, latent in SIZED_INPUTS:
            if (components is not None and component not in components) or (not vae and component.startswith("vae_")):
                continue
            engine = self.engines.get(component)
            profile = engine.profile if engine is not None else None
            if profile is None:
                continue
            scale = factor if latent else 1
            minimum, _, maximum = profile.shapes[input_name]
            for axis, bound in ((2, bounds[0]), (3, bounds[1])):
                bound[0] = max(bound[0], minimum[axis] * scale)
                bound[1] = maximum[axis] * scale if bound[1] is None else min(bound[1], maximum[axis] * scale)
        return SizeLimits(height=(bounds[0][0], bounds[0][1]), width=(bounds[1][0], bounds[1][1]))

    def _describe(self, request: Request, scheduler: Scheduler, task: ImageTask | None) -> list[dict[str, Any]]:
        return describe_images(self.package, request, scheduler.class_name, task, self.loras, self.backend,
                               self.precision)


FAMILY_ARGUMENTS = ("original_size", "crops_coords_top_left", "target_size", "negative_original_size",
                    "negative_crops_coords_top_left", "negative_target_size", "aesthetic_score",
                    "negative_aesthetic_score")
"""``prepare``'s named arguments that only some families take (SDXL's micro-conditioning), in its order; any other
family's come in ``family_options``. The family's text side checks them all (``TextSide.check``)."""


def _family_arguments(family_options: Mapping[str, Any] | None, named: Sequence[Any]) -> dict[str, Any]:
    """The call's family arguments by name: ``prepare``'s named ones and ``family_options``, each given once."""
    arguments = dict(zip(FAMILY_ARGUMENTS, named, strict=True))
    if family_options is None:
        return arguments
    if not isinstance(family_options, Mapping) or not all(isinstance(name, str) for name in family_options):
        raise PipelineInputError(f"family_options must be a mapping of argument names to values, got "
                                 f"{type(family_options).__name__}")
    twice = sorted(name for name, value in family_options.items() if arguments.get(name) is not None
                   and value is not None)
    if twice:
        raise PipelineInputError(f"{', '.join(twice)}: given as an argument and in family_options; give it once")
    return {**arguments, **{name: value for name, value in family_options.items() if value is not None
                            or name not in arguments}}

INJECTED_DRAWS = ("latents", "start_noise", "image_noise", "masked_image_noise")
"""``prepare``'s random draws a caller may give instead of their being drawn."""

SIZED_INPUTS = (("unet", "sample", True), ("vae_decoder", "latent_sample", True), ("vae_encoder", "sample", False))
"""The inputs whose profile bounds the request's size: (component, input, whether its size is in latents)."""


def _read_scheduler_config(package: ModelPackage) -> dict[str, Any]:
    """The package's scheduler config, checked against the manifest and against the scheduler it names."""
    config_path = package.verify_file("scheduler/scheduler_config.json")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackageError(f"{config_path} is not valid UTF-8 JSON ({exc})") from None
    if not isinstance(config, dict):
        raise PackageError(f"{config_path} must be a JSON object")
    name = config.get("_class_name")
    if isinstance(name, str) and name in scheduler_names():
        try:
            make_scheduler(name, config, 1)  # a hand-edited config fails here, not in the middle of a request
        except SchedulerError as exc:
            raise PackageError(f"{config_path}: {exc}") from None
    return config


def _stack(parts: list[Conditioning]) -> Conditioning:
    """The calls' conditioning, one batch: each input's rows in call order."""
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def _draw(generators: list[np.random.Generator], shape: tuple[int, ...]) -> np.ndarray:
    """One standard-normal draw of ``shape`` per image, each from that image's own generator."""
    return np.stack([g.standard_normal(shape, dtype=np.float32) for g in generators])


__all__ = ["Call", "GenerationResult", "Pipeline", "PipelineCancelled", "PipelineError", "PipelineInputError", "StepCallback"]
