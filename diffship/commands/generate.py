"""``generate``: images from a package without PyTorch (runtime.Pipeline; a grid with runtime.grid, a base -> refiner
hand-off with runtime.ensemble). Imports nothing from the build side: tests/runtime/test_without_torch.py."""

from __future__ import annotations

import math
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from diffship.commands.display import scheduler_table, timing_table
from diffship.commands.help import Command
from diffship.commands.options import (
    backend_option,
    cache_options,
    cuda_graphs_option,
    device_option,
    guidance_option,
    guidance_schedule_options,
    lora_option,
    package_option,
    parse_pair,
    precision_option,
    threads_option,
    vae_tiles_option,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy as np

    from diffship.core.progress import ProgressBar, ProgressCallback, StepEvent
    from diffship.runtime.grid import GridAxis
    from diffship.runtime.hires import HiresFix
    from diffship.runtime.pipeline import Pipeline
    from diffship.runtime.results import GenerationResult


def _list_schedulers(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--scheduler list``: print every scheduler name and exit."""
    if value == "list":
        click.echo(scheduler_table())
        ctx.exit(0)
    return value


def _seed(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    """-1 is the web UI's "random", as no --seed is; other negative numbers are refused."""
    if value is not None and value < -1:
        raise click.BadParameter(f"{value} is not a seed: give 0 or more, or -1 for a random one")
    return None if value == -1 else value


def _grid(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[GridAxis, ...]:
    from diffship.runtime.errors import PipelineInputError
    from diffship.runtime.grid import check_axes, parse_axis

    try:
        axes = tuple(parse_axis(value) for value in values)
        check_axes(axes)
    except PipelineInputError as exc:
        raise click.BadParameter(str(exc)) from None
    return axes


PASSED_ON = ("scheduler", "height", "width", "mask_image", "strength", "padding_mask_crop", "sample_mode", "eta",
             "long_prompts", "prompt_weighting", "guidance_rescale", "guidance_cutoff", "guidance_interval",
             "cache_interval", "cache_schedule", "cache_center", "vae_tiles")
"""Options that are ``Pipeline.__call__`` arguments of the same name."""
MICRO_CONDITIONING = {"original_size": "original_size", "target_size": "target_size",
                      "crops_coords_top_left": "crop_top_left", "negative_original_size": "negative_original_size",
                      "negative_target_size": "negative_target_size",
                      "negative_crops_coords_top_left": "negative_crop_top_left", "aesthetic_score": "aesthetic_score",
                      "negative_aesthetic_score": "negative_aesthetic_score"}
"""SDXL's micro-conditioning: ``Pipeline.__call__`` argument -> option."""


@dataclass(frozen=True)
class GenerateOptions:
    """``generate``'s options as Click parsed them (the field names are the options' parameter names)."""

    package: Path
    prompts: tuple[str, ...]
    negative_prompts: tuple[str, ...]
    steps: int
    guidance: float
    scheduler: str | None
    height: int | None
    width: int | None
    seed: int | None
    images_per_prompt: int
    grid: tuple[GridAxis, ...]
    out: Path
    backend: str
    precision: str | None
    device: str
    threads: int | None
    engine_set: str | None
    cuda_graphs: bool
    init_image: Path | None
    mask_image: Path | None
    strength: float | None
    padding_mask_crop: int | None
    sample_mode: str
    loras: tuple[str, ...]
    eta: float
    long_prompts: bool
    prompt_weighting: str
    guidance_rescale: float
    guidance_cutoff: float | None
    guidance_interval: tuple[float, float] | None
    cache_interval: int | None
    cache_schedule: str
    cache_center: int | None
    original_size: tuple[int, int] | None
    target_size: tuple[int, int] | None
    crop_top_left: tuple[int, int] | None
    negative_original_size: tuple[int, int] | None
    negative_target_size: tuple[int, int] | None
    negative_crop_top_left: tuple[int, int] | None
    aesthetic_score: float | None
    negative_aesthetic_score: float | None
    refiner: Path | None
    denoising_end: float | None
    overwrite: bool
    vae_tiles: str
    hires_scale: float | None
    hires_upscaler: str
    hires_strength: float
    hires_steps: int | None
    hires_scheduler: str | None
    hires_prompt: str | None
    hires_negative_prompt: str | None
    preview_every: int
    preview_dir: Path | None
    lora_dir: Path | None = None

    def hires(self) -> HiresFix | None:
        """The second pass of the hires fix, if --hires-scale asks for one."""
        from diffship.runtime.hires import HiresFix

        if self.hires_scale is None:
            return None
        return HiresFix(scale=self.hires_scale, upscaler=self.hires_upscaler, strength=self.hires_strength,
                        steps=self.hires_steps, scheduler=self.hires_scheduler, prompt=self.hires_prompt,
                        negative_prompt=self.hires_negative_prompt)

    def opening(self) -> dict[str, Any]:
        """``Pipeline.from_package``'s arguments, LoRAs apart (the refiner of a hand-off takes none)."""
        return {"backend": self.backend, "precision": self.precision, "threads": self.threads, "device": self.device,
                "engine_set": self.engine_set, "cuda_graphs": self.cuda_graphs}

    def arguments(self, seed: int) -> dict[str, Any]:
        """``Pipeline.__call__``'s arguments but the prompts; SDXL's micro-conditioning only where given."""
        # In this order: a grid's title lists the fixed arguments as given here.
        arguments = {"negative_prompt": self.negative_prompt(), "num_inference_steps": self.steps,
                     "guidance_scale": self.guidance, "scheduler": self.scheduler, "height": self.height,
                     "width": self.width, "seed": seed, "image": self.init_image}
        arguments |= {name: getattr(self, name) for name in PASSED_ON if name not in arguments}
        micro = {name: getattr(self, option) for name, option in MICRO_CONDITIONING.items()}
        return arguments | {name: value for name, value in micro.items() if value is not None}

    def negative_prompt(self) -> str | list[str] | None:
        """One negative prompt for every prompt, one per prompt, or none."""
        given, prompts = self.negative_prompts, self.prompts
        if len(given) > 1 and len(given) != len(prompts):
            raise click.UsageError(f"{len(given)} --negative-prompt for {len(prompts)} --prompt: give one for every "
                                   "prompt, or one per --prompt in the same order")
        return None if not given else given[0] if len(given) == 1 else list(given)

    def targets(self) -> list[Path]:
        """The PNGs to write: --out itself for one image or a grid, else NAME-00.png, NAME-01.png, ..."""
        count = len(self.prompts) * self.images_per_prompt
        if self.grid or count == 1:
            return [self.out]
        return [self.out.with_name(f"{self.out.stem}-{k:02d}.png") for k in range(count)]


@click.command(cls=Command, short_help="Generate images from a package, without PyTorch.")
@package_option()
@click.option("--prompt", "prompts", required=True, multiple=True, help="Prompt; repeat for a batch of prompts.")
@click.option("--negative-prompt", "negative_prompts", multiple=True,
              help="What to steer away from (used when guidance > 1): give it once for every prompt, or once per "
                   "--prompt, in the same order.")
@click.option("--steps", default=50, show_default=True, help="Denoising steps.")
@guidance_option(7.5)
@click.option("--scheduler", is_eager=True, callback=_list_schedulers,
              help="A short name (euler_a, dpmpp_2m_karras, heun, dpmpp_2m_sde_karras, ...), a web UI name ('DPM++ 2M "
                   "Karras', 'Euler a', 'PLMS', ...) or a diffusers class name (default: the package's own scheduler). "
                   "'--scheduler list' prints them all with what each is for.")
@click.option("--height", type=int, help="Pixels (default: the model's native size).")
@click.option("--width", type=int, help="Pixels (default: the model's native size).")
@click.option("--seed", type=int, callback=_seed,
              help="Image k uses seed + k (numpy's generator; default, or -1: random, printed).")
@click.option("--images", "images_per_prompt", default=1, show_default=True, help="Images per prompt.")
@click.option("--grid", multiple=True, callback=_grid,
              help="Sweep KEY=V1,V2,... (KEY: steps, guidance, scheduler, seed, strength, cutoff, interval, cache) into "
                   "one labelled contact sheet; give it twice for rows x columns. interval values are LOW:HIGH, e.g. "
                   "--grid cutoff=1,0.5,0.2 --grid interval=0:inf,0.28:5.42.")
@click.option("--out", default="generated.png", show_default=True, type=click.Path(path_type=Path),
              help="PNG path; several images become NAME-00.png, NAME-01.png, ...")
@backend_option()
@precision_option()
@device_option("auto", "ONNX Runtime device (cuda needs onnxruntime-gpu).")
@threads_option()
@click.option("--engines", "engine_set", help="TensorRT engine folder under engines/ (default: the one for this GPU).")
@cuda_graphs_option("Replay each engine's run as a CUDA graph (ort on the CUDA provider; trt with static engines).")
@click.option("--image", "init_image", type=click.Path(path_type=Path, dir_okay=False),
              help="Start from this picture (image-to-image; with --mask, inpainting). Size: the image's own, rounded "
                   "down to a multiple of 8, unless --height/--width say otherwise.")
@click.option("--mask", "mask_image", type=click.Path(path_type=Path, dir_okay=False),
              help="Inpainting mask, the image's size: white = repaint, black = keep.")
@click.option("--strength", type=float,
              help="How much of the schedule to run from the image, in (0, 1] (default 0.8, SDXL 0.3; 1.0 with "
                   "--mask). Low keeps the image, 1.0 repaints it fully.")
@click.option("--padding-mask-crop", type=int,
              help="Inpaint only a crop around the mask (grown by this many pixels) at the working size, then paste "
                   "it back: detail for small masks in big images.")
@click.option("--sample-mode", type=click.Choice(["sample", "argmax"]), default="sample", show_default=True,
              help="Image latents: a draw from the VAE encoder's distribution, or its mean.")
@lora_option("Apply a LoRA (.safetensors: diffusers/peft or kohya/web-UI format) at SCALE (default 1.0); repeat to "
             "stack. Merged into the loaded engines: nothing is re-exported or rebuilt.")
@click.option("--lora-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Folder that the web UI's <lora:NAME:WEIGHT> prompt tags name LoRA files in (NAME.safetensors); "
                   "the tags are taken out of the prompt and applied as --lora. Without it a tag is an error. "
                   "Example: --prompt \"a fox <lora:pixel-art:0.8>\" --lora-dir loras/")
@click.option("--eta", default=0.0, show_default=True, type=click.FloatRange(0.0, 1.0),
              help="Fresh noise per step for DDIM and TCD (0: deterministic DDIM; TCD's paper uses 0.3); others ignore it.")
@click.option("--long-prompts", is_flag=True,
              help="Read prompts past 77 tokens (encoded in 75-token chunks) and the web UI's weights: (word) x1.1, "
                   "((word)) x1.21, [word] /1.1, (word:1.3) x1.3, \\( \\) literal brackets, BREAK starts a new chunk. "
                   "Off: diffusers' truncation, no syntax.")
@click.option("--prompt-weighting", type=click.Choice(["webui", "compel"]), default="webui", show_default=True,
              help="With --long-prompts: webui scales token states and keeps each chunk's mean (AUTOMATIC1111); compel "
                   "scales them about the empty prompt and blends down-weighted words out (compel's REMOVE mode).")
@click.option("--guidance-rescale", default=0.0, show_default=True, type=float,
              help="Pull the guided prediction's spread back toward the conditional one's, 0 to 1 (diffusers' "
                   "guidance_rescale; 0.7 suits zero-terminal-SNR models).")
@guidance_schedule_options()
@cache_options()
@click.option("--original-size", callback=parse_pair, metavar="HEIGHT,WIDTH",
              help="SDXL: the size the model is told the training image had (default: the output size).")
@click.option("--target-size", callback=parse_pair, metavar="HEIGHT,WIDTH",
              help="SDXL base: the size the model is told to aim for (default: the output size).")
@click.option("--crop-top-left", callback=parse_pair, metavar="TOP,LEFT",
              help="SDXL: the crop corner the model is told of (default 0,0; larger values draw cropped-looking images).")
@click.option("--negative-original-size", callback=parse_pair, metavar="HEIGHT,WIDTH",
              help="SDXL: original size for the unconditional side (with --negative-target-size on base models).")
@click.option("--negative-target-size", callback=parse_pair, metavar="HEIGHT,WIDTH",
              help="SDXL base: target size for the unconditional side.")
@click.option("--negative-crop-top-left", callback=parse_pair, metavar="TOP,LEFT",
              help="SDXL: crop corner for the unconditional side (default 0,0).")
@click.option("--aesthetic-score", type=float, help="SDXL refiner: aesthetic score conditioning (default 6).")
@click.option("--negative-aesthetic-score", type=float,
              help="SDXL refiner: aesthetic score of the unconditional side (default 2.5).")
@click.option("--refiner", type=click.Path(path_type=Path),
              help="SDXL: an SDXL refiner package (or any SDXL package) that finishes what --package starts: the base "
                   "denoises up to --denoising-end and hands its latents over, as diffusers' ensemble of experts.")
@click.option("--denoising-end", type=float,
              help="With --refiner: the fraction of the schedule the base runs before handing over, strictly between "
                   "0 and 1 (default 0.8).")
@click.option("--overwrite", is_flag=True, help="Replace PNGs that already exist (otherwise that is an error).")
@vae_tiles_option()
@click.option("--hires-scale", type=float,
              help="Hires fix (the web UI's): generate at --height/--width, upscale by this factor (1 to 8; the "
                   "result must be a multiple of 8 pixels), then run image-to-image at the larger size. Example: "
                   "--hires-scale 2")
@click.option("--hires-upscaler", default="latent", show_default=True,
              type=click.Choice(["latent", "latent-antialiased", "latent-bicubic", "latent-bicubic-antialiased",
                                 "latent-nearest", "latent-nearest-exact", "lanczos"]),
              help="With --hires-scale: resize the latents (torch's interpolate modes, as the web UI's Latent "
                   "upscalers) or the decoded picture (lanczos, then encoded again). Example: --hires-upscaler "
                   "latent-bicubic")
@click.option("--hires-strength", default=0.7, show_default=True, type=float,
              help="With --hires-scale: how much of the second pass's schedule runs, in (0, 1] (the web UI's "
                   "denoising strength). Example: --hires-strength 0.55")
@click.option("--hires-steps", type=click.IntRange(1),
              help="With --hires-scale: the second pass's steps (default: --steps). Example: --hires-steps 15")
@click.option("--hires-scheduler", help="With --hires-scale: the second pass's scheduler (default: --scheduler's).")
@click.option("--hires-prompt", help="With --hires-scale: the second pass's prompt (default: --prompt).")
@click.option("--hires-negative-prompt", help="With --hires-scale: the second pass's negative prompt (default: "
              "--negative-prompt).")
@click.option("--preview-every", default=0, show_default=True, type=click.IntRange(0),
              help="Write a cheap preview of the latents (the web UI's 'Approx cheap', 1/8 size) every N steps and at "
                   "each pass's last, into --preview-dir; 0: none. Example: --preview-every 5 --preview-dir previews/")
@click.option("--preview-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Folder for --preview-every's PNGs: PASS-STEP-IMAGE.png (such as 1-0005-00.png).")
def generate(**options: Any) -> None:
    """Generate images from a model package, without PyTorch: from a prompt, from a picture (--image) or repainting
    part of one (--image with --mask).

    \b
    Examples:
      {prog} generate --package packages/tiny --prompt "a red fox" --steps 20 --guidance 7.5 \\
          --scheduler euler_a --seed 1 --out fox.png
      {prog} generate --package packages/tiny --prompt "a red fox" --prompt "a cat" --images 2 --out batch.png
      {prog} generate --package packages/tiny --prompt "a red fox" --negative-prompt "blurry" \\
          --prompt "a cat" --negative-prompt "dogs" --seed -1 --out pair.png
      {prog} generate --package packages/tiny --prompt "a red fox" \\
          --grid steps=5,10,20,50 --grid guidance=1,3,7.5,15 --out grid.png
      {prog} generate --package packages/tiny --prompt "oil painting" --image in.png --strength 0.6 \\
          --out painted.png
      {prog} generate --package packages/tiny --prompt "a cat" --image in.png --mask mask.png --out cat.png
      {prog} generate --package packages/tiny --prompt "oil painting" --image in.png \\
          --grid strength=0.2,0.4,0.6,0.8 --out strengths.png
      {prog} generate --package packages/tiny --prompt "a fox" --lora loras/pixel-art.safetensors:0.8 \\
          --lora loras/detail.safetensors:0.3 --out fox.png
      {prog} generate --package packages/tiny --long-prompts \\
          --prompt "a (red:1.3) fox in [deep] snow, ((golden hour)) BREAK film grain, 35mm" --out weighted.png
      {prog} generate --package packages/tiny --prompt "a red fox" --steps 20 \\
          --grid scheduler=euler,heun,dpm2,"DPM++ 2M SDE Karras",lms,deis --out samplers.png
      {prog} generate --package packages/sdxl-turbo --prompt "a red fox" --steps 1 --guidance 0 --out fox.png
      {prog} generate --package packages/sdxl --prompt "a red fox" --steps 30 --guidance 5 \\
          --original-size 1024,1024 --target-size 1024,1024 --crop-top-left 0,0 --out fox.png
      {prog} generate --package packages/tiny --prompt "a red fox" --steps 30 --guidance-cutoff 0.4 \\
          --out fox-cutoff.png
      {prog} generate --package packages/tiny --prompt "a red fox" --steps 30 --guidance-interval 0.28,5.42 \\
          --grid cutoff=1,0.6,0.3 --out cutoffs.png
      {prog} generate --package packages/sd15-random --prompt "a red fox" --steps 50 --cache-interval 5 \\
          --cache-schedule nonuniform --cache-center 15 --out fox-cached.png
      {prog} generate --package packages/sd15-random --prompt "a red fox" --steps 50 \\
          --grid cache=1,3,5 --grid cutoff=1,0.5 --out cache-grid.png
      {prog} generate --package packages/sdxl --refiner packages/sdxl-refiner --prompt "a red fox" \\
          --steps 40 --guidance 5 --denoising-end 0.8 --out fox.png
      {prog} generate --package packages/sdxl --prompt "a castle" --height 2048 --width 2048 \\
          --vae-tiles auto --out big.png
      {prog} generate --package packages/sd15 --prompt "a castle" --height 512 --width 512 \\
          --hires-scale 2 --hires-upscaler latent-bicubic --hires-strength 0.55 --hires-steps 15 \\
          --out castle-1024.png
      {prog} generate --package packages/tiny --prompt "a fox" --steps 30 --preview-every 5 \\
          --preview-dir previews/

    PNGs carry the web UI's infotext in a "parameters" text chunk and diffship's JSON in a "diffship" one. A timing
    table per stage ends the run.
    """
    run_generate(GenerateOptions(**options))


def run_generate(options: GenerateOptions) -> None:
    """Check everything that needs no model, open the package, then run one batch, a grid or a hand-off."""
    from diffship.core.progress import ProgressBar
    from diffship.runtime import Pipeline

    _check_combination(options)
    options = _with_prompt_tags(options)
    seed = secrets.randbelow(2**31) if options.seed is None else options.seed
    bar = ProgressBar()  # stderr, and only when it is a terminal
    arguments = {**options.arguments(seed), "progress": progress_of(bar, options.preview_dir),
                 **({"preview_every": options.preview_every} if options.preview_every else {})}
    hires = options.hires()
    targets = options.targets()
    check_outputs(targets, options.overwrite)
    pipe = Pipeline.from_package(options.package, loras=options.loras, **options.opening())
    if options.refiner is not None:
        _refine(pipe, options, arguments, targets, bar)
        return
    with pipe:
        if options.grid:
            _sweep(pipe, options, arguments, seed, bar)
        else:
            try:
                result = _generate(pipe, options, arguments, hires)
            finally:
                bar.done()
            _write_images(targets, result.images, result.parameters)
            click.echo(timing_table(result.timings, len(result.images)))


def _with_prompt_tags(options: GenerateOptions) -> GenerateOptions:
    """The prompts' <lora:NAME:WEIGHT> tags taken out and added to --lora (runtime/prompt_tags.py)."""
    from dataclasses import replace

    from diffship.runtime.prompt_tags import lora_tags

    tagged = lora_tags(options.prompts, options.lora_dir, options.negative_prompts)
    if not tagged.loras:
        return options
    extra = tuple(f"{lora.path}:{lora.scale:g}" for lora in tagged.loras)
    return replace(options, prompts=tagged.prompts, loras=(*options.loras, *extra))


def _generate(pipe: Pipeline, options: GenerateOptions, arguments: dict[str, Any],
              hires: HiresFix | None) -> GenerationResult:
    """One batch, or with --hires-scale the two passes of the hires fix."""
    from diffship.runtime.hires import run_hires

    arguments = {**arguments, "num_images_per_prompt": options.images_per_prompt}
    if hires is None:
        return pipe(list(options.prompts), **arguments)
    return run_hires(pipe, list(options.prompts), hires, arguments)


def progress_of(bar: ProgressBar, preview_dir: Path | None) -> ProgressCallback:
    """The bar, and with --preview-dir each preview written as PASS-STEP-IMAGE.png."""
    if preview_dir is None:
        return bar

    def report(event: StepEvent) -> None:
        bar(event)
        if event.preview is not None:
            from diffship.runtime.images import save_png

            for index, picture in enumerate(event.preview):
                save_png(picture, preview_dir / f"{event.pass_index + 1}-{event.step:04d}-{index:02d}.png",
                         {"preview": event.pass_name, "step": event.step, "steps": event.steps})

    return report


def _check_combination(options: GenerateOptions) -> None:
    """Options that do not go together, refused before any work."""
    if options.hires_scale is not None and (options.grid or options.refiner is not None
                                            or options.init_image is not None):
        raise click.UsageError("--hires-scale starts from text: it takes no --grid, --refiner or --image")
    if (options.preview_every > 0) != (options.preview_dir is not None):
        raise click.UsageError("--preview-every N and --preview-dir DIR go together: give both")
    if options.denoising_end is not None and options.refiner is None:
        raise click.UsageError("--denoising-end is where --refiner takes over: give --refiner PACKAGE too")
    if options.refiner is not None and (options.grid or options.init_image is not None or options.mask_image is not None):
        raise click.UsageError("--refiner finishes a text-to-image run: it takes no --grid, --image or --mask (refine "
                               "a picture with --package REFINER --image PICTURE)")
    if options.grid and (len(options.prompts) > 1 or options.images_per_prompt > 1):
        raise click.UsageError("--grid takes one --prompt and one image per cell")
    if options.out.suffix.lower() != ".png":
        raise click.BadParameter(f"{options.out}: give a .png path", param_hint="--out")


def _sweep(pipe: Pipeline, options: GenerateOptions, arguments: dict[str, Any], seed: int, bar: ProgressBar) -> None:
    from diffship.runtime.grid import sweep
    from diffship.runtime.images import save_png

    def cell(index: int, count: int) -> None:
        bar.label = f"[cell {index + 1}/{count}] "

    try:
        grid = sweep(pipe, options.prompts[0], options.grid, arguments, cell_callback=cell)
    finally:
        bar.done()
    save_png(grid.sheet, options.out, grid.parameters)
    counts = [len(axis.values) for axis in options.grid]
    click.echo(f"wrote {options.out}  ({' x '.join(map(str, counts))} grid, seed {seed})")
    click.echo(timing_table(grid.timings, math.prod(counts)))


def _refine(base: Pipeline, options: GenerateOptions, arguments: dict[str, Any], targets: list[Path],
            bar: ProgressBar) -> None:
    """The SDXL hand-off: ``base`` (closed by run_ensemble before the refiner opens) -> the --refiner package."""
    from diffship.runtime import Pipeline
    from diffship.runtime.ensemble import DEFAULT_DENOISING_END, run_ensemble

    refiner = options.refiner
    assert refiner is not None
    handoff = DEFAULT_DENOISING_END if options.denoising_end is None else options.denoising_end

    def open_refiner() -> Pipeline:
        bar.done()
        opened = Pipeline.from_package(refiner, **options.opening())
        click.echo(f"refining in {refiner} from {handoff:g} of the schedule")
        return opened

    result = run_ensemble(base, open_refiner, options.prompts, arguments, options.images_per_prompt,
                          options.denoising_end)
    bar.done()
    _write_images(targets, result.refined.images, result.parameters)
    click.echo("base:\n" + timing_table(result.base.timings, len(result.refined.images)))
    click.echo("refiner:\n" + timing_table(result.refined.timings, len(result.refined.images)))


def _write_images(targets: Sequence[Path], images: Sequence[np.ndarray], parameters: Sequence[dict[str, Any]]) -> None:
    from diffship.runtime.images import save_png

    for path, image, params in zip(targets, images, parameters, strict=True):
        save_png(image, path, params)
        click.echo(f"wrote {path}  (seed {params['seed']})")


def check_outputs(paths: Sequence[Path], overwrite: bool) -> None:
    """Refuse, before any work, outputs that cannot be written: an existing file (without --overwrite), a folder, a
    parent that is a file or not writable."""
    for path in paths:
        if path.is_dir():
            raise click.BadParameter(f"{path} is a folder; give a .png file path", param_hint="--out")
        if path.exists() and not overwrite:
            raise click.BadParameter(f"{path} exists; pass --overwrite to replace it, or choose another name",
                                     param_hint="--out")
        existing = path.parent
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise click.BadParameter(f"cannot write {path}: {existing} is a file, not a folder", param_hint="--out")
        try:  # a real probe: permission bits say nothing for root, or on /proc and read-only mounts
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=path.parent):
                pass
        except OSError as exc:
            raise click.BadParameter(f"cannot write {path}: {exc.strerror or exc}", param_hint="--out") from None

