"""diffship command line: export | build-ort | build-trt | generate | serve | bench | parity | verify.

Each command maps its options onto the library's request dataclasses and calls one function; the logic lives in
exporter/, engines/ and runtime/. Errors a user can fix are printed as one line (no traceback) with exit status 2.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from runtime.tables import format_table

EXIT_USAGE = 2


def _user_error_types() -> tuple[type[BaseException], ...]:
    """The one error root meant for the user (core.errors is light: torch must not load for `generate`)."""
    from core.errors import DiffshipError

    return (DiffshipError,)


def _list_schedulers(ctx: click.Context) -> None:
    """``generate --scheduler list``: every name, what it stands for and what it is for; then exit."""
    from runtime.schedulers import DESCRIPTIONS, NOT_IMPLEMENTED, SHORT_NAMES, WEB_UI_NAMES

    web_ui = {short: name for name, short in WEB_UI_NAMES.items()}
    rows = []
    for short, (class_name, overrides) in SHORT_NAMES.items():
        arguments = ", ".join(f"{key}={value!r}" for key, value in overrides.items())
        diffusers = f"{class_name}({arguments})" if arguments else class_name
        rows.append([short, web_ui.get(short, "-"), diffusers, DESCRIPTIONS[short]])
    click.echo(format_table(["name", "web UI name", "diffusers", "for"], rows))
    click.echo("\nNot implemented (refused by name): " + ", ".join(NOT_IMPLEMENTED))
    ctx.exit(0)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s" if not verbose else "%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Libraries we drive are chatty at INFO; our own progress is what the user wants to see.
    for noisy in ("torch", "onnxscript", "onnx_ir", "diffusers", "transformers", "httpx", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose else logging.ERROR)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging, including what the libraries underneath say.")
def cli(verbose: bool) -> None:
    """diffship: diffusion pipelines from diffusers to ONNX / TensorRT engines, served without PyTorch.

    \b
    Typical flow:
      python cli.py export   --model tiny --out packages/tiny
      python cli.py build-trt --package packages/tiny --fp16 --backend trt-rtx --arch sm89
      python cli.py generate --package packages/tiny --prompt "a red fox" --out fox.png
      python cli.py bench    --package packages/tiny --quick
    """
    _setup_logging(verbose)


def _parse_dtypes(value: str) -> tuple[str, ...]:
    parts = tuple(dict.fromkeys(p.strip() for p in value.split(",") if p.strip()))
    bad = [p for p in parts if p not in ("fp32", "fp16")]
    if not parts or bad:
        raise click.BadParameter(f"{value!r}: give fp32, fp16 or fp32,fp16", param_hint="--dtype")
    return parts


@cli.command()
@click.option("--model", help="Preset: shapes (trained here, ships in models/), tiny, tiny-v, tiny-inpaint, tiny-xl, "
              "tiny-xl-refiner (local, random weights), sd15, sd21-base, sd21, sd15-inpaint, sd2-inpaint, sdxl, "
              "sdxl-refiner, sdxl-turbo, sd-turbo (hub ids).")
@click.option(
    "--model-path",
    type=click.Path(file_okay=False, path_type=Path),
    help="A local diffusers folder (e.g. a save_pretrained output) instead of --model: a StableDiffusion(Img2Img|"
    "Inpaint)Pipeline or a StableDiffusionXL(Img2Img)Pipeline.",
)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Package folder to write.")
@click.option(
    "--random-weights", is_flag=True, help="Full-size preset architecture with seeded random weights (no download)."
)
@click.option("--seed", default=0, show_default=True, help="Seed for random weights (tiny models and --random-weights).")
@click.option("--dtype", "dtypes", default="fp32", show_default=True, help="fp32, fp16, or fp32,fp16 for both in one package.")
@click.option(
    "--exporter",
    type=click.Choice(["dynamo", "legacy"]),
    default="dynamo",
    show_default=True,
    help="torch.onnx's dynamo exporter, or the legacy TorchScript one (faster on full-size models; fp32 only). "
    "Modules over 2 GiB (SDXL's UNet) are traced by the legacy tracer without their weights either way.",
)
@click.option("--opset", default=18, show_default=True, help="ONNX opset (18 or newer).")
@click.option("--force", is_flag=True, help="Re-export even when the package is up to date.")
@click.option("--clip-skip", type=click.IntRange(min=0), default=0, show_default=True,
              help="Text-encoder layers to skip from the end, as diffusers' clip_skip (0: the model's own layer; SDXL "
              "reads the penultimate one). Built into the text encoder graphs; generate then uses it for every image.")
def export(
    model: str | None,
    model_path: Path | None,
    out: Path,
    random_weights: bool,
    seed: int,
    dtypes: str,
    exporter: str,
    opset: int,
    force: bool,
    clip_skip: int,
) -> None:
    """Export a diffusers pipeline to a self-describing, verified ONNX model package.

    \b
    Examples:
      python cli.py export --model shapes --out packages/shapes
      python cli.py export --model tiny --out packages/tiny
      python cli.py export --model sd15 --random-weights --out packages/sd15-random
      python cli.py export --model-path /path/to/diffusers/dir --out packages/mine
      python cli.py export --model tiny --dtype fp16 --out packages/tiny-fp16
      python cli.py export --model sdxl --random-weights --dtype fp16 --out packages/sdxl-random
      python cli.py export --model-path /models/anime-sd15 --clip-skip 1 --out packages/anime

    Every component is checked with onnx.checker and compared with its torch module in ONNX Runtime at two shapes;
    the export fails if any misses the parity bars. Re-running with identical inputs is skipped unless --force.
    """
    from exporter.onnx_export import ExportOptions
    from exporter.package import ExportRequest, export_package

    try:
        options = ExportOptions(exporter=exporter, opset=opset)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--opset") from None
    if (model is None) == (model_path is None):
        raise click.UsageError("give exactly one of --model NAME or --model-path DIR")
    request = ExportRequest(
        out=out,
        model=model,
        model_path=model_path,
        random_weights=random_weights,
        seed=seed,
        dtypes=_parse_dtypes(dtypes),
        options=options,
        force=force,
        clip_skip=clip_skip,
    )
    result = export_package(request)
    if result.skipped:
        click.echo(f"{out}: up to date, nothing exported (use --force to re-export)")
        return
    rows = [
        [
            r.component,
            r.dtype,
            f"{r.file_bytes / 1e6:,.1f} MB",
            f"{r.verification.worst()['max_abs_diff']:.2e}",
            f"{r.verification.worst()['rel_l2']:.2e}",
            f"{r.verification.worst()['psnr_db']:.1f}" if "psnr_db" in r.verification.worst() else "-",
            "pass" if r.verification.passed else "FAIL",
            f"{sum(r.seconds.values()):.1f}s",
        ]
        for r in result.reports
    ]
    click.echo(
        format_table(["component", "dtype", "size", "max abs diff", "rel L2", "PSNR dB", "parity", "time"], rows)
    )
    click.echo(f"package: {out}   total {result.seconds:.1f}s   peak memory {result.peak_rss_bytes / 2**30:.2f} GiB")

BYTE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "k": 2**10, "kib": 2**10, "m": 2**20,
              "mib": 2**20, "g": 2**30, "gib": 2**30}


def _parse_bytes(text: str | None) -> int | None:
    if text is None:
        return None
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in BYTE_UNITS:
        raise click.BadParameter(f"{text!r}: give a size such as 4GiB, 512MiB or 1000000", param_hint="--workspace")
    return int(float(match.group(1)) * BYTE_UNITS[match.group(2).lower()])


def _parse_components(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(c.strip() for c in text.split(",") if c.strip())


@cli.command("build-trt")
@click.option("--package", required=True, type=click.Path(path_type=Path), help="Model package folder (from export).")
@click.option("--fp16/--fp32", "fp16", default=True, show_default=True, help="Engine precision.")
@click.option(
    "--backend",
    type=click.Choice(["auto", "trt", "trt-rtx"]),
    default="auto",
    show_default=True,
    help="trt: full TensorRT, for the GPU present. trt-rtx: TensorRT-RTX, ahead of time for --arch targets, no GPU "
    "needed. auto: full TensorRT when it and a GPU are here, else TensorRT-RTX.",
)
@click.option("--arch", "archs", help="Compute capabilities for TensorRT-RTX, e.g. sm86,sm89,sm120 (default: this GPU's).")
@click.option("--height", type=int, help="Optimal (or, with --static, the only) image height; default: the model's.")
@click.option("--width", type=int, help="Optimal (or, with --static, the only) image width; default: the model's.")
@click.option("--min-size", type=int, help="Smallest height/width the engines accept (dynamic shapes).")
@click.option("--max-size", type=int, help="Largest height/width the engines accept (dynamic shapes).")
@click.option("--batch", default=None, help="Images per call: N or MIN-MAX (default 1-4; with --static, 1).")
@click.option("--static", is_flag=True, help="One shape only (fastest engines; enables CUDA graph replay at run time).")
@click.option("--prompt-chunks", default="1", show_default=True,
              help="Text windows of 75 tokens the UNet engine accepts: N or MIN-MAX, e.g. 1-3 for --long-prompts up to "
                   "225 tokens (1: the 77-token window, as diffusers).")
@click.option("--opt-level", default=3, show_default=True, type=click.IntRange(0, 5), help="Builder optimisation level.")
@click.option("--workspace", help="Builder workspace limit, e.g. 4GiB (default: the library's).")
@click.option("--components", help="Comma-separated components (default: all, the VAE encoder for image input included).")
@click.option("--refittable", is_flag=True,
              help="Mark the weights a LoRA can change refittable, so LoRAs are refitted into the engines at load time "
                   "instead of rebuilding (needs the package's weight maps, and an NVIDIA GPU to build).")
@click.option("--force", is_flag=True, help="Rebuild even when an engine with the same inputs exists.")
def build_trt(
    package: Path,
    fp16: bool,
    backend: str,
    archs: str | None,
    height: int | None,
    width: int | None,
    min_size: int | None,
    max_size: int | None,
    batch: str | None,
    static: bool,
    prompt_chunks: str,
    opt_level: int,
    workspace: str | None,
    components: str | None,
    refittable: bool,
    force: bool,
) -> None:
    """Build TensorRT or TensorRT-RTX engines for a package, into PACKAGE/engines/<backend>-<archs>-<precision>/.

    \b
    Examples:
      python cli.py build-trt --package packages/tiny --fp16
      python cli.py build-trt --package packages/tiny --fp16 --backend trt-rtx --arch sm86,sm89,sm120
      python cli.py build-trt --package packages/sd15 --fp16 --height 512 --width 512 --batch 1 --static
      python cli.py build-trt --package packages/sd15 --fp16 --min-size 256 --max-size 1024 --batch 1-4
      python cli.py build-trt --package packages/sd15 --fp16 --refittable      # LoRA by refit (GPU machine)
      python cli.py build-trt --package packages/sd15 --fp16 --prompt-chunks 1-3  # --long-prompts up to 225 tokens

    Each engine comes with a per-layer precision report (<component>.layers.json) taken from the builder's own log;
    an engine whose inputs (ONNX digest, shapes, precision, targets, library version, settings) did not change is
    not rebuilt.
    """
    from core.package import ModelPackage
    from core.profiles import parse_range, shape_request, size_ranges
    from core.specs import BuildConfig
    from engines.tensorrt.api import available_backends, local_gpu_arch
    from engines.tensorrt.build import BuildRequest, build_engines, describe_summary, read_layer_summary

    constants = ModelPackage.open(package).constants
    if backend == "auto":
        backend = "trt" if "trt" in available_backends() and local_gpu_arch() is not None else "trt-rtx"
    batch_range = parse_range(batch or ("1" if static else "1-4"), "--batch")
    if static and batch_range.min != batch_range.max:
        raise click.UsageError("--static builds one shape: give --batch N (one number)")
    heights, widths = size_ranges(constants, height, width, min_size, max_size, static)
    chunk_range = parse_range(prompt_chunks, "--prompt-chunks")
    if static and chunk_range.min != chunk_range.max:
        raise click.UsageError("--static builds one shape: give --prompt-chunks N (one number)")
    config = BuildConfig(
        backend=backend,
        precision="fp16" if fp16 else "fp32",
        archs=tuple(a for a in (archs or "").split(",") if a.strip()),
        optimization_level=opt_level,
        workspace_bytes=_parse_bytes(workspace),
    )
    request = BuildRequest(
        package=package,
        config=config,
        shapes=shape_request(constants, batch_range, heights, widths, chunk_range),
        components=_parse_components(components),
        force=force,
        refittable=refittable,
    )
    outcome = build_engines(request)  # progress lines reach stderr through logging, as export's do
    built = ModelPackage.open(package)
    rows = []
    for c in outcome.components:
        plan = built.path(c.entry.files[0])
        summary = c.details.get("summary") or read_layer_summary(built, c.entry)
        rows.append([c.component, c.details.get("route", "-"), f"{plan.stat().st_size / 1e6:,.1f} MB",
                     "up to date" if c.skipped else f"{c.seconds:.1f}s", describe_summary(summary) if summary else "-"])
    click.echo(format_table(["component", "from", "plan", "build", "precision (builder report)"], rows))
    shapes = request.shapes
    click.echo(
        f"engines: {outcome.folder}  ({config.backend}, {config.precision}, batch {shapes.batch.min}-{shapes.batch.max}, "
        f"{shapes.height.min}-{shapes.height.max} x {shapes.width.min}-{shapes.width.max} px)"
    )


@cli.command("build-ort")
@click.option("--package", required=True, type=click.Path(path_type=Path), help="Model package folder (from export).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True,
              help="int8: the UNet statically quantized for the CPU (calibrated on the package's own runs); the other "
              "components as fp32. Runs only when asked for (--precision int8).")
@click.option("--components", help="Comma-separated components (default: all, the VAE encoder for image input included).")
@click.option("--force", is_flag=True, help="Rebuild even when an engine with the same inputs exists.")
@click.option("--target", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="cpu: optimised for this CPU and saved; cuda: attention fused for ONNX Runtime's CUDA provider "
              "(flash / memory-efficient attention), built on any machine.")
@click.option("--calibration-prompts", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="int8: a text file of prompts, one per line, to calibrate on (default: two built-in prompts).")
@click.option("--calibration-steps", type=click.IntRange(1, 100), default=8, show_default=True,
              help="int8: denoising steps per calibration prompt (each one guided UNet call recorded).")
@click.option("--calibration-size", type=click.IntRange(64, 2048), default=None,
              help="int8: image side of the calibration runs in pixels (default: the model's, capped at 256).")
@click.option("--threads", type=click.IntRange(1, 512), help="ONNX Runtime threads for the calibration runs.")
def build_ort(package: Path, precision: str, components: str | None, force: bool, target: str,
              calibration_prompts: Path | None, calibration_steps: int, calibration_size: int | None,
              threads: int | None) -> None:
    """Build ONNX Runtime engines: attention fused; for the CPU, graphs also optimised for this CPU once and saved.

    \b
    Examples:
      python cli.py build-ort --package packages/sd15-random
      python cli.py build-ort --package packages/sd15-random --precision fp16 --target cuda
      python cli.py build-ort --package packages/sd15-random --precision int8 --calibration-steps 8

    The runtime then loads these (the cpu set on a CPU of the same family, the cuda set on the CUDA provider, with the
    same onnxruntime) instead of the plain ONNX: faster sessions, less memory, faster UNet steps (see BENCHMARKS.md).
    Each graph is checked against the exported one (int8: relative L2 <= 0.15 per UNet call). int8 needs the fp32
    export; `generate --precision int8` runs it; LoRAs need fp32 or fp16.
    """
    from engines.ort.build import build_ort_engines

    calibration, calibration_key = None, ""
    if precision == "int8":
        from runtime.calibration import DEFAULT_PROMPTS, CalibrationPlan, prompts_from_file, record_unet_inputs

        try:
            prompts = tuple(prompts_from_file(calibration_prompts)) if calibration_prompts else DEFAULT_PROMPTS[:2]
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--calibration-prompts") from exc
        plan = CalibrationPlan(prompts=prompts, steps=calibration_steps, size=calibration_size)
        calibration_key = plan.key()

        def calibration() -> list[dict[str, Any]]:
            return list(record_unet_inputs(package, plan, threads, progress=click.echo))

    outcome = build_ort_engines(package, precision, _parse_components(components), force, target=target,
                                calibration=calibration if precision == "int8" else None,
                                calibration_key=calibration_key)
    rows = [[c.component, "up to date" if c.skipped else f"{c.seconds:.1f}s",
             str(c.details.get("fused_attention", "-")),
             f"{c.details['verification']['load_seconds']:.1f}s" if "verification" in c.details else "-"]
            for c in outcome.components]
    click.echo(format_table(["component", "build", "attention blocks fused", "session load"], rows))
    click.echo(f"engines: {outcome.folder}")


@cli.command()
@click.option("--package", required=True, type=click.Path(path_type=Path), help="Model package folder.")
@click.option("--strict", is_flag=True, help="Hash every file, trusting no record of earlier checks (DIFFSHIP_VERIFY=always).")
def verify(package: Path, strict: bool) -> None:
    """Check every file of a package against the manifest's sha256 and size (what loading does file by file).

    \b
    Examples:
      python cli.py verify --package packages/tiny
      python cli.py verify --package packages/sd15 --strict      # at a service's start-up: trusts nothing

    Exits 1 when any file is missing, changed or incomplete, listing each.
    """
    import time

    from core.integrity import VERIFY_ENV
    from core.package import ModelPackage

    if strict:
        os.environ[VERIFY_ENV] = "always"
    opened = ModelPackage.open(package)
    started = time.perf_counter()
    problems = opened.verify_all()
    seconds = time.perf_counter() - started
    size = sum(entry.bytes for entry in opened.manifest.files.values())
    for problem in problems:
        click.echo(f"error: {problem}", err=True)
    if problems:
        sys.exit(1)
    mode = "hashed every file" if strict else "unchanged files trusted from the verification record"
    click.echo(f"all {len(opened.manifest.files)} files intact ({size / 1e9:.2f} GB in {seconds:.1f}s; {mode})")


def _parse_grid(values: tuple[str, ...]) -> list[Any]:
    from runtime.errors import PipelineInputError
    from runtime.grid import check_axes, parse_axis

    try:
        axes = [parse_axis(value) for value in values]
        check_axes(axes)
    except PipelineInputError as exc:
        raise click.BadParameter(str(exc), param_hint="--grid") from None
    return axes


class _StepProgress:
    """A one-line step counter on stderr (only when it is a terminal)."""

    def __init__(self, label: str = "") -> None:
        self.label = label
        self.enabled = sys.stderr.isatty()

    def __call__(self, step: int, timestep: float, latents: Any) -> None:
        if self.enabled:
            click.echo(f"\r{self.label}step {step + 1} (t={timestep:g})   ", err=True, nl=False)

    def cell(self, index: int, count: int) -> _StepProgress:
        """The counter for grid cell ``index`` of ``count``."""
        self.label = f"[cell {index + 1}/{count}] "
        return self

    def done(self) -> None:
        if self.enabled:
            click.echo("\r" + " " * 60 + "\r", err=True, nl=False)


def _timingformat_table(timings: Any, images: int) -> str:
    stages = timings.stage_seconds()
    steps = len(timings.unet_steps)
    rows = []
    for name, seconds in [*stages.items(), ("other", timings.other), ("total", timings.total)]:
        share = f"{100 * seconds / timings.total:5.1f}%" if timings.total else "-"
        note = f"{steps} UNet calls, {timings.unet / steps * 1000:.1f} ms each" if name == "unet" and steps else ""
        rows.append([name, f"{seconds:.3f}s", share, note])
    return format_table(["stage", "time", "share", ""], rows) + f"\n{images} image(s)"


def _pair_option(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    """``A,B`` -> (A, B) as integers; the pipeline checks the ranges."""
    if value is None:
        return None
    parts = value.split(",")
    try:
        first, second = (int(part.strip()) for part in parts)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not two integers; give {param.metavar} such as 1024,1024") from None
    return first, second


@cli.command()
@click.option("--package", required=True, type=click.Path(path_type=Path), help="Model package folder (from export).")
@click.option("--prompt", "prompts", required=True, multiple=True, help="Prompt; repeat for a batch of prompts.")
@click.option("--negative-prompt", help="What to steer away from (used when guidance > 1).")
@click.option("--steps", default=50, show_default=True, help="Denoising steps.")
@click.option("--guidance", default=7.5, show_default=True, help="Classifier-free guidance scale (<= 1 disables it).")
@click.option(
    "--scheduler",
    is_eager=True,
    callback=lambda ctx, param, value: _list_schedulers(ctx) if value == "list" else value,
    help="A short name (euler_a, dpmpp_2m_karras, heun, dpmpp_2m_sde_karras, ...), a web UI name ('DPM++ 2M Karras', "
    "'Euler a', 'PLMS', ...) or a diffusers class name (default: the package's own scheduler). "
    "'--scheduler list' prints them all with what each is for.",
)
@click.option("--height", type=int, help="Pixels (default: the model's native size).")
@click.option("--width", type=int, help="Pixels (default: the model's native size).")
@click.option("--seed", type=int, help="Image k uses seed + k (numpy's generator; default: random, printed).")
@click.option("--images", "images_per_prompt", default=1, show_default=True, help="Images per prompt.")
@click.option(
    "--grid",
    multiple=True,
    help="Sweep KEY=V1,V2,... (KEY: steps, guidance, scheduler, seed, strength) into one labelled contact sheet; "
    "give it twice for rows x columns.",
)
@click.option("--out", default="generated.png", show_default=True, type=click.Path(path_type=Path),
              help="PNG path; several images become NAME-00.png, NAME-01.png, ...")
@click.option("--backend", type=click.Choice(["ort", "trt"]), default="ort", show_default=True,
              help="ONNX Runtime, or TensorRT engines built with build-trt (NVIDIA GPU).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]),
              help="Which engines ONNX Runtime loads (default fp32; int8 needs build-ort --precision int8).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="ONNX Runtime device (cuda needs onnxruntime-gpu).")
@click.option("--threads", type=int, help="ONNX Runtime intra-op threads (default: one per core).")
@click.option("--engines", "engine_set", help="TensorRT engine folder under engines/ (default: the one for this GPU).")
@click.option("--cuda-graphs", is_flag=True,
              help="Replay each engine's run as a CUDA graph (ort on the CUDA provider; trt with static engines).")
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
@click.option("--lora", "loras", multiple=True, metavar="FILE[:SCALE]",
              help="Apply a LoRA (.safetensors: diffusers/peft or kohya/web-UI format) at SCALE (default 1.0); repeat "
                   "to stack. Merged into the loaded engines: nothing is re-exported or rebuilt.")
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
@click.option("--original-size", callback=_pair_option, metavar="HEIGHT,WIDTH",
              help="SDXL: the size the model is told the training image had (default: the output size).")
@click.option("--target-size", callback=_pair_option, metavar="HEIGHT,WIDTH",
              help="SDXL base: the size the model is told to aim for (default: the output size).")
@click.option("--crop-top-left", callback=_pair_option, metavar="TOP,LEFT",
              help="SDXL: the crop corner the model is told of (default 0,0; larger values draw cropped-looking images).")
@click.option("--negative-original-size", callback=_pair_option, metavar="HEIGHT,WIDTH",
              help="SDXL: original size for the unconditional side (with --negative-target-size on base models).")
@click.option("--negative-target-size", callback=_pair_option, metavar="HEIGHT,WIDTH",
              help="SDXL base: target size for the unconditional side.")
@click.option("--negative-crop-top-left", callback=_pair_option, metavar="TOP,LEFT",
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
def generate(
    package: Path,
    prompts: tuple[str, ...],
    negative_prompt: str | None,
    steps: int,
    guidance: float,
    scheduler: str | None,
    height: int | None,
    width: int | None,
    seed: int | None,
    images_per_prompt: int,
    grid: tuple[str, ...],
    out: Path,
    backend: str,
    precision: str | None,
    device: str,
    threads: int | None,
    engine_set: str | None,
    cuda_graphs: bool,
    init_image: Path | None,
    mask_image: Path | None,
    strength: float | None,
    padding_mask_crop: int | None,
    sample_mode: str,
    loras: tuple[str, ...],
    eta: float,
    long_prompts: bool,
    prompt_weighting: str,
    guidance_rescale: float,
    original_size: tuple[int, int] | None,
    target_size: tuple[int, int] | None,
    crop_top_left: tuple[int, int] | None,
    negative_original_size: tuple[int, int] | None,
    negative_target_size: tuple[int, int] | None,
    negative_crop_top_left: tuple[int, int] | None,
    aesthetic_score: float | None,
    negative_aesthetic_score: float | None,
    refiner: Path | None,
    denoising_end: float | None,
    overwrite: bool,
) -> None:
    """Generate images from a model package, without PyTorch: from a prompt, from a picture (--image) or repainting
    part of one (--image with --mask).

    \b
    Examples:
      python cli.py generate --package packages/tiny --prompt "a red fox" --steps 20 --guidance 7.5 \\
          --scheduler euler_a --seed 1 --out fox.png
      python cli.py generate --package packages/tiny --prompt "a red fox" --prompt "a cat" --images 2 --out batch.png
      python cli.py generate --package packages/tiny --prompt "a red fox" \\
          --grid steps=5,10,20,50 --grid guidance=1,3,7.5,15 --out grid.png
      python cli.py generate --package packages/tiny --prompt "oil painting" --image in.png --strength 0.6 \\
          --out painted.png
      python cli.py generate --package packages/tiny --prompt "a cat" --image in.png --mask mask.png --out cat.png
      python cli.py generate --package packages/tiny --prompt "oil painting" --image in.png \\
          --grid strength=0.2,0.4,0.6,0.8 --out strengths.png
      python cli.py generate --package packages/tiny --prompt "a fox" --lora loras/pixel-art.safetensors:0.8 \\
          --lora loras/detail.safetensors:0.3 --out fox.png
      python cli.py generate --package packages/tiny --long-prompts \\
          --prompt "a (red:1.3) fox in [deep] snow, ((golden hour)) BREAK film grain, 35mm" --out weighted.png
      python cli.py generate --package packages/tiny --prompt "a red fox" --steps 20 \\
          --grid scheduler=euler,heun,dpm2,"DPM++ 2M SDE Karras",lms,deis --out samplers.png
      python cli.py generate --package packages/sdxl-turbo --prompt "a red fox" --steps 1 --guidance 0 --out fox.png
      python cli.py generate --package packages/sdxl --prompt "a red fox" --steps 30 --guidance 5 \\
          --original-size 1024,1024 --target-size 1024,1024 --crop-top-left 0,0 --out fox.png
      python cli.py generate --package packages/sdxl --refiner packages/sdxl-refiner --prompt "a red fox" \\
          --steps 40 --guidance 5 --denoising-end 0.8 --out fox.png

    PNGs carry their generation parameters (JSON) in a "parameters" text chunk. A timing table per stage ends the run.
    """
    import secrets

    from runtime import Pipeline
    from runtime.grid import sweep
    from runtime.images import save_png

    axes = _parse_grid(grid)
    if denoising_end is not None and refiner is None:
        raise click.UsageError("--denoising-end is where --refiner takes over: give --refiner PACKAGE too")
    if refiner is not None and (axes or init_image is not None or mask_image is not None):
        raise click.UsageError("--refiner finishes a text-to-image run: it takes no --grid, --image or --mask (refine "
                               "a picture with --package REFINER --image PICTURE)")
    if axes and (len(prompts) > 1 or images_per_prompt > 1):
        raise click.UsageError("--grid takes one --prompt and one image per cell")
    if out.suffix.lower() != ".png":
        raise click.BadParameter(f"{out}: give a .png path", param_hint="--out")
    count = len(prompts) * images_per_prompt
    targets = [out] if axes or count == 1 else [out.with_name(f"{out.stem}-{k:02d}.png") for k in range(count)]
    _check_outputs(targets, overwrite)
    seed = secrets.randbelow(2**31) if seed is None else seed
    opening: dict[str, Any] = {"backend": backend, "precision": precision, "threads": threads, "device": device,
               "engine_set": engine_set, "cuda_graphs": cuda_graphs}
    with Pipeline.from_package(package, loras=loras, **opening) as pipe:
        arguments: dict[str, Any] = {
            "negative_prompt": negative_prompt, "num_inference_steps": steps, "guidance_scale": guidance,
            "scheduler": scheduler, "height": height, "width": width, "seed": seed, "image": init_image,
            "mask_image": mask_image, "strength": strength, "padding_mask_crop": padding_mask_crop,
            "sample_mode": sample_mode, "eta": eta, "long_prompts": long_prompts,
            "prompt_weighting": prompt_weighting, "guidance_rescale": guidance_rescale,
        }
        micro = {"original_size": original_size, "target_size": target_size, "crops_coords_top_left": crop_top_left,
                 "negative_original_size": negative_original_size, "negative_target_size": negative_target_size,
                 "negative_crops_coords_top_left": negative_crop_top_left, "aesthetic_score": aesthetic_score,
                 "negative_aesthetic_score": negative_aesthetic_score}
        arguments.update({name: value for name, value in micro.items() if value is not None})
        if refiner is not None:
            handed = _run_base(pipe, list(prompts), images_per_prompt, arguments, denoising_end)
        elif not axes:
            progress = _StepProgress()
            result = pipe(list(prompts), num_images_per_prompt=images_per_prompt, callback=progress, **arguments)
            progress.done()
            for path, image, params in zip(targets, result.images, result.parameters, strict=True):
                save_png(image, path, params)
                click.echo(f"wrote {path}  (seed {params['seed']})")
            click.echo(_timingformat_table(result.timings, len(result.images)))
            return
        else:
            progress = _StepProgress()
            grid_result = sweep(pipe, prompts[0], axes, arguments, cell_callback=progress.cell)
            progress.done()
            save_png(grid_result.sheet, out, grid_result.parameters)
            counts = [len(axis.values) for axis in axes]
            click.echo(f"wrote {out}  ({' x '.join(map(str, counts))} grid, seed {seed})")
            click.echo(_timingformat_table(grid_result.timings, math.prod(counts)))
            return
    # The base is closed before the refiner opens: two full-size SDXL UNets need not share memory.
    with Pipeline.from_package(refiner, **opening) as second:
        click.echo(f"refining in {refiner} from {handed.parameters[0]['denoising_end']:g} of the schedule")
        progress = _StepProgress()
        result = second(list(prompts), num_images_per_prompt=images_per_prompt, callback=progress,
                        image=handed.latents, denoising_start=handed.parameters[0]["denoising_end"],
                        **_refiner_arguments(arguments))
        progress.done()
    for path, image, params in zip(targets, result.images, result.parameters, strict=True):
        save_png(image, path, {**params, "base": handed.parameters[0]["model"]})
        click.echo(f"wrote {path}  (seed {params['seed']})")
    click.echo("base:\n" + _timingformat_table(handed.timings, len(result.images)))
    click.echo("refiner:\n" + _timingformat_table(result.timings, len(result.images)))


BASE_ONLY = ("height", "width", "image", "mask_image", "strength", "padding_mask_crop", "sample_mode", "target_size",
             "negative_target_size", "aesthetic_score", "negative_aesthetic_score")
"""Arguments of generate that the base of a hand-off takes and the refiner does not (the aesthetic scores go the
other way); the size comes to the refiner with the latents."""


def _run_base(pipe: Any, prompts: list[str], images_per_prompt: int, arguments: dict[str, Any],
              denoising_end: float | None) -> Any:
    """The base's part of a hand-off: its latents at ``denoising_end`` (default 0.8)."""
    progress = _StepProgress()
    base_arguments = {k: v for k, v in arguments.items() if k not in ("aesthetic_score", "negative_aesthetic_score")}
    handed = pipe(prompts, num_images_per_prompt=images_per_prompt, callback=progress, output_type="latent",
                  denoising_end=0.8 if denoising_end is None else denoising_end, **base_arguments)
    progress.done()
    return handed


def _refiner_arguments(arguments: dict[str, Any]) -> dict[str, Any]:
    kept = {k: v for k, v in arguments.items() if k not in BASE_ONLY or k.endswith("aesthetic_score")}
    return {k: v for k, v in kept.items() if v is not None or k == "negative_prompt"}


def _check_outputs(paths: list[Path], overwrite: bool) -> None:
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


def _parse_list(text: str, kind: type, what: str) -> list[Any]:
    try:
        values = [kind(item.strip()) for item in text.split(",") if item.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r}: give comma-separated {kind.__name__} values", param_hint=what) from None
    if not values:
        raise click.BadParameter("give at least one value", param_hint=what)
    return values


def _parse_backends(values: list[str], parse: Any) -> tuple[str, ...]:
    for value in values:
        try:
            parse(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--backends") from None
    return tuple(values)


@cli.command()
@click.option("--package", required=True, type=click.Path(path_type=Path), help="Model package folder (from export).")
@click.option("--size", type=int, help="Image height and width (default: the model's native size).")
@click.option("--height", type=int, help="Image height (overrides --size).")
@click.option("--width", type=int, help="Image width (overrides --size).")
@click.option("--steps", "steps_text", default="1,4,20", show_default=True, help="Comma-separated step counts.")
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(1), help="Measured runs per setting.")
@click.option("--guidance", default=7.5, show_default=True, help="Guidance scale for both sides.")
@click.option("--scheduler", help="Scheduler for both sides (default: the package's own).")
@click.option("--prompt", default="a photograph of an astronaut riding a horse, highly detailed", show_default=True)
@click.option("--backends", default="ort", show_default=True,
              help="Runtime contenders, comma-separated, each BACKEND[-PRECISION][-graphs]: ort, ort-fp16, "
              "ort-fp16-graphs (CUDA graphs), ort-int8 (build-ort --precision int8), trt, trt-graphs.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="cpu", show_default=True,
              help="cpu, or cuda for ONNX Runtime's CUDA provider and diffusers in fp16 on the GPU.")
@click.option("--threads", type=int, help="Threads for both ONNX Runtime and torch (default: their own defaults).")
@click.option("--json", "json_path", default="bench-out/bench.json", show_default=True, type=click.Path(path_type=Path))
@click.option("--plots", "plot_dir", type=click.Path(path_type=Path), help="Folder for PNG plots (default: beside --json).")
@click.option("--cold-start/--no-cold-start", default=True, show_default=True,
              help="Also measure import time, process start to first image and peak memory in fresh processes.")
@click.option("--task", type=click.Choice(["txt2img", "img2img"]), default="txt2img", show_default=True,
              help="img2img: both sides start from the same generated picture (VAE encoder, strength) with the same "
                   "draws.")
@click.option("--strength", default=0.75, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="img2img: share of the schedule run (steps run = int(steps x strength)).")
@click.option("--quick", is_flag=True, help="A one-minute sanity run: steps 1,2 (img2img: 2,4), one repeat.")
def bench(
    package: Path,
    size: int | None,
    height: int | None,
    width: int | None,
    steps_text: str,
    repeats: int,
    guidance: float,
    scheduler: str | None,
    prompt: str,
    backends: str,
    device: str,
    threads: int | None,
    json_path: Path,
    plot_dir: Path | None,
    cold_start: bool,
    task: str,
    strength: float,
    quick: bool,
) -> None:
    """Benchmark the runtime against diffusers on the same weights, settings and latents, interleaved.

    \b
    Examples:
      python cli.py bench --package packages/sd15-random --size 256 --steps 1,4,20 --repeats 3 --json bench.json
      python cli.py bench --package packages/tiny --quick
      python cli.py bench --package packages/sd15 --device cuda --backends ort,trt --size 512 --steps 20,50
      python cli.py bench --package packages/sd15 --device cuda --backends ort-fp16,ort-fp16-graphs --size 512
      python cli.py bench --package packages/sd15-random --task img2img --strength 0.75 --size 256 --steps 20

    Prints latency (median, min, max; ratio to diffusers), the per-stage breakdown, the runtime's time outside its
    engines, and cold start; writes every raw figure to --json and PNG plots beside it.
    """
    from bench.harness import BackendChoice, BenchSettings, format_tables, run_bench, write_outputs
    from core.package import ModelPackage

    constants = ModelPackage.open(package).constants
    steps = ((1, 2) if task == "txt2img" else (2, 4)) if quick else tuple(_parse_list(steps_text, int, "--steps"))
    if any(s < 1 for s in steps):
        raise click.BadParameter("step counts must be >= 1", param_hint="--steps")
    if task == "img2img" and any(int(s * strength) < 1 for s in steps):
        raise click.BadParameter(f"img2img runs int(steps x strength) steps: {min(steps)} x {strength:g} runs none; "
                                 "give more steps or a higher --strength", param_hint="--steps")
    settings = BenchSettings(
        package=package,
        height=height or size or constants.default_height,
        width=width or size or constants.default_width,
        steps=steps,
        repeats=1 if quick else repeats,
        guidance=guidance,
        scheduler=scheduler,
        prompt=prompt,
        backends=_parse_backends(_parse_list(backends, str, "--backends"), BackendChoice.parse),
        threads=threads,
        device=device,
        cold_start=cold_start,
        task=task,
        strength=strength,
    )
    result = run_bench(settings, progress=lambda line: click.echo(line, err=True))
    written = write_outputs(result, json_path, plot_dir or json_path.parent)
    click.echo(format_tables(result))
    click.echo("wrote " + ", ".join(str(p) for p in written))


@cli.command()
@click.option("--package", required=True, type=click.Path(path_type=Path), help="Model package folder (from export).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--backend", type=click.Choice(["ort", "trt"]), default="ort", show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]),
              help="Which engines ONNX Runtime loads (default fp32; int8 needs build-ort --precision int8).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--threads", type=int, help="ONNX Runtime intra-op threads (default: one per core).")
@click.option("--lora", "loras", multiple=True, metavar="FILE[:SCALE]", help="Serve with this LoRA; repeatable.")
@click.option("--max-batch", default=4, show_default=True, type=click.IntRange(1),
              help="Most images in one batched denoising loop (1: no batching).")
@click.option("--max-wait-ms", default=0.0, show_default=True, type=click.FloatRange(0, 10_000),
              help="How long a request waits for companions when the engines are free (0: batches form from the "
                   "requests that queue while a batch runs).")
@click.option("--max-queue", default=64, show_default=True, type=click.IntRange(1),
              help="Requests waiting beyond the running batch; more get 429 with Retry-After.")
@click.option("--timeout", "timeout_s", default=300.0, show_default=True, type=click.FloatRange(0.1),
              help="Seconds a request may take, queued and running; after it: 504.")
@click.option("--no-warmup", is_flag=True, help="Report ready without the warm-up generation.")
@click.option("--ray", "use_ray", is_flag=True, help="Run as a Ray Serve deployment (see --replicas, README 'Serving').")
@click.option("--replicas", default=1, show_default=True, type=click.IntRange(1), help="Ray Serve replicas.")
@click.option("--ray-address", help="Ray cluster to join (default: start a local one).")
def serve(package: Path, host: str, port: int, backend: str, precision: str | None, device: str, threads: int | None,
          loras: tuple[str, ...], max_batch: int, max_wait_ms: float, max_queue: int, timeout_s: float,
          no_warmup: bool, use_ray: bool, replicas: int, ray_address: str | None) -> None:
    """Serve a package over HTTP: OpenAI's Images API and AUTOMATIC1111's txt2img API, with request batching.

    \b
    Examples:
      python cli.py serve --package packages/tiny --port 8000 --max-batch 4 --max-queue 64
      curl -s localhost:8000/v1/images/generations -d '{"prompt": "a red fox", "size": "64x64"}'
      curl -s localhost:8000/sdapi/v1/txt2img -d '{"prompt": "a red fox", "steps": 20, "cfg_scale": 7}'
      python cli.py serve --package packages/tiny --ray --replicas 2

    \b
    Endpoints: POST /v1/images/generations, POST /sdapi/v1/txt2img, GET /sdapi/v1/samplers, GET /healthz,
    GET /readyz (engines loaded and warmed up), GET /metrics (Prometheus). SIGTERM (or Ctrl-C) stops taking
    connections and finishes the requests accepted before exiting.
    """
    from core.package import ModelPackage
    from runtime.batching import BatchSettings
    from serve.service import ServeConfig

    ModelPackage.open(package)  # a wrong path is one clear line here, not a stack trace from the server's startup
    package = package.resolve()  # Ray replicas may run in another working directory
    config = ServeConfig(package=package, backend=backend, precision=precision, threads=threads, device=device,
                         loras=loras, batch=BatchSettings(max_batch, max_wait_ms / 1000, max_queue),
                         timeout_s=timeout_s, warmup=not no_warmup)
    if use_ray:
        from serve.ray_app import run_on_ray

        run_on_ray(config, replicas, host, port, ray_address, lambda line: click.echo(line, err=True))
        return
    import signal

    import uvicorn

    from serve.app import create_app
    from serve.service import ImageService

    def stop_on_failure(error: BaseException) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # uvicorn shuts down; the error is in the log above

    click.echo(f"serving {package} on http://{host}:{port} (max batch {max_batch}, queue {max_queue}); /readyz says "
               "when the engines are loaded", err=True)
    uvicorn.run(create_app(ImageService(config), on_start_failure=stop_on_failure), host=host, port=port,
                log_level="warning", timeout_graceful_shutdown=int(timeout_s) + 5)


@cli.command("bench-lora")
@click.option("--package", required=True, type=click.Path(path_type=Path), help="Model package folder (from export).")
@click.option("--lora", "loras", required=True, multiple=True, type=click.Path(path_type=Path, dir_okay=False),
              help="A LoRA file (give two: the swaps go none -> A -> B -> none).")
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(1), help="Swap rounds per process.")
@click.option("--processes", default=2, show_default=True, type=click.IntRange(1),
              help="Fresh processes per side, alternated diffship / diffusers.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--json", "json_path", default="bench-lora.json", show_default=True, type=click.Path(path_type=Path))
def bench_lora(package: Path, loras: tuple[Path, ...], rounds: int, processes: int, device: str,
               json_path: Path) -> None:
    """Time and memory of swapping LoRAs on a loaded pipeline, against diffusers' load + fuse on the same weights.

    \b
    Example:
      python scripts/make_lora.py DIFFUSERS_DIR loras/a.safetensors --rank 8
      python cli.py bench-lora --package packages/sd15-random --lora loras/a.safetensors --lora loras/b.safetensors

    diffusers loads a save_pretrained copy of the package's weights (made once, in the cache folder).
    """
    from bench.coldstart import pretrained_copy
    from bench.lora import format_lora_table, measure_lora_swaps
    from bench.machine import describe_machine
    from core.files import write_json_atomic
    from core.package import ModelPackage

    opened = ModelPackage.open(package)
    result = measure_lora_swaps(package, pretrained_copy(opened), list(loras), rounds, processes, device,
                                lambda line: click.echo(line, err=True))
    result["machine"] = describe_machine()
    write_json_atomic(json_path, result)
    click.echo(format_lora_table(result))
    click.echo(f"wrote {json_path}")


@cli.command("bench-serve")
@click.option("--package", required=True, type=click.Path(path_type=Path), help="Model package folder (from export).")
@click.option("--concurrency", "concurrency_text", default="1,2,4,8", show_default=True,
              help="Comma-separated numbers of concurrent clients.")
@click.option("--max-batch", default=4, show_default=True, type=click.IntRange(2), help="Batch limit of 'batching on'.")
@click.option("--steps", default=4, show_default=True, type=click.IntRange(1), help="Steps per request.")
@click.option("--size", default=256, show_default=True, type=click.IntRange(8), help="Image height and width.")
@click.option("--requests-per-client", default=2, show_default=True, type=click.IntRange(1))
@click.option("--rounds", default=1, show_default=True, type=click.IntRange(1), help="Rounds over all cases (median).")
@click.option("--threads", type=int, help="ONNX Runtime intra-op threads (default: one per core).")
@click.option("--ray-replicas", default=0, show_default=True, type=click.IntRange(0),
              help="Also measure this many Ray Serve replicas (0: skip Ray).")
@click.option("--json", "json_path", default="bench-serve.json", show_default=True, type=click.Path(path_type=Path))
@click.option("--plot", "plot_path", default="bench-serve.png", show_default=True, type=click.Path(path_type=Path))
def bench_serve(package: Path, concurrency_text: str, max_batch: int, steps: int, size: int, requests_per_client: int,
                rounds: int, threads: int | None, ray_replicas: int, json_path: Path, plot_path: Path) -> None:
    """Throughput and latency of the HTTP service against concurrent clients, batching off vs on (and Ray replicas).

    \b
    Example:
      python cli.py bench-serve --package packages/tiny --size 64 --steps 4 --concurrency 1,2,4,8 --ray-replicas 2
      python cli.py bench-serve --package packages/sd15-random --size 256 --steps 2 --concurrency 1,2,4
    """
    from bench.machine import describe_machine
    from bench.serving import format_serving_table, measure_serving, plot_serving
    from core.files import write_json_atomic
    from core.package import ModelPackage

    ModelPackage.open(package)
    levels = _parse_list(concurrency_text, int, "--concurrency")
    result = measure_serving(package, levels, max_batch, steps, size, rounds, requests_per_client, threads,
                             ray_replicas, progress=lambda line: click.echo(line, err=True))
    result["machine"] = describe_machine()
    result["package"] = str(package)
    write_json_atomic(json_path, result)
    plot_serving(result, plot_path)
    click.echo(format_serving_table(result))
    click.echo(f"wrote {json_path} and {plot_path}")


@cli.command("bench-samplers")
@click.option("--package", required=True, type=click.Path(path_type=Path), help="Model package folder (from export).")
@click.option("--samplers", default="all", show_default=True,
              help="'all' (every short name) or comma-separated scheduler names.")
@click.option("--steps", "steps_text", default="10,20", show_default=True, help="Comma-separated step counts.")
@click.option("--size", default=256, show_default=True, type=click.IntRange(8), help="Image height and width.")
@click.option("--rounds", default=1, show_default=True, type=click.IntRange(1), help="Rounds over all cases (median).")
@click.option("--threads", type=int, help="ONNX Runtime intra-op threads (default: one per core).")
@click.option("--json", "json_path", default="bench-samplers.json", show_default=True,
              type=click.Path(path_type=Path))
def bench_samplers(package: Path, samplers: str, steps_text: str, size: int, rounds: int, threads: int | None,
                   json_path: Path) -> None:
    """Time per image by sampler and step count (ONNX Runtime, CPU), with UNet calls per image and the sampler's own
    arithmetic time.

    \b
    Example:
      python cli.py bench-samplers --package packages/sd15-random --steps 10,20 --size 256
    """
    from bench.machine import describe_machine
    from bench.samplers import format_sampler_table, measure_samplers
    from core.files import write_json_atomic
    from runtime import Pipeline
    from runtime.schedulers import SHORT_NAMES, resolve_scheduler

    names = list(SHORT_NAMES) if samplers == "all" else [n.strip() for n in samplers.split(",") if n.strip()]
    for name in names:
        try:
            resolve_scheduler(name)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--samplers") from None
    step_counts = _parse_list(steps_text, int, "--steps")
    with Pipeline.from_package(package, backend="ort", device="cpu", threads=threads) as pipe:
        result = measure_samplers(pipe, names, step_counts, size, rounds, lambda line: click.echo(line, err=True))
    result["machine"] = describe_machine()
    result["package"] = str(package)
    write_json_atomic(json_path, result)
    click.echo(format_sampler_table(result))
    click.echo(f"wrote {json_path}")


@cli.command()
@click.option("--package", required=True, type=click.Path(path_type=Path),
              help="Package exported from the shapes model (export --model shapes).")
@click.option("--model-dir", type=click.Path(path_type=Path),
              help="Folder with quality_prompts.json and the classifier (default: models/shapes).")
@click.option("--steps", default=20, show_default=True, type=click.IntRange(1), help="Denoising steps.")
@click.option("--guidance", default=2.0, show_default=True, type=float, help="Classifier-free guidance scale.")
@click.option("--scheduler", help="Scheduler name (default: the package's own; see generate --scheduler list).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True)
@click.option("--grid", "grid_values", multiple=True, metavar="KEY=V1,V2,...",
              help="Sweep steps, guidance, scheduler or precision; several --grid give every combination.")
@click.option("--prompts", "prompt_limit", type=click.IntRange(1), help="Score only the first N prompts (default all).")
@click.option("--threads", type=int, help="ONNX Runtime intra-op threads (default: one per core).")
@click.option("--out", "out_dir", default="quality-out", show_default=True, type=click.Path(path_type=Path),
              help="Folder for quality.json, quality.png (a plot, when steps or guidance vary) and samples.png.")
def quality(package: Path, model_dir: Path | None, steps: int, guidance: float, scheduler: str | None, precision: str,
            grid_values: tuple[str, ...], prompt_limit: int | None, threads: int | None, out_dir: Path) -> None:
    """Score generated images for the prompt's shape, colour and position (shapes model, held-out prompts).

    A classifier trained with the model (scripts/train_tiny.py) judges each image; accuracies come with 95% Wilson
    intervals, and "all / s" (all three right, per second of generation) is the quality-per-speed summary.

    \b
    Examples:
      python cli.py quality --package packages/shapes
      python cli.py quality --package packages/shapes --grid steps=1,2,4,8,16,32 --grid scheduler=euler,dpmpp_2m,ddim
      python cli.py quality --package packages/shapes --grid guidance=1,2,4,7.5,12
      python cli.py quality --package packages/shapes --grid precision=fp32,fp16 --grid steps=4,20
    """
    from bench.machine import describe_machine
    from bench.quality import (
        DEFAULT_MODEL_DIR,
        QualityError,
        QualitySet,
        format_quality_table,
        grid_cases,
        measure_quality,
        parse_quality_axis,
        plot_quality,
    )
    from core.files import write_json_atomic
    from runtime import Pipeline
    from runtime.images import contact_sheet, save_png
    from runtime.schedulers import resolve_scheduler

    try:
        axes = [parse_quality_axis(value) for value in grid_values]
    except QualityError as exc:
        raise click.BadParameter(str(exc), param_hint="--grid") from None
    fixed = {"steps": steps, "guidance": guidance, "scheduler": scheduler, "precision": precision}
    cases = grid_cases(axes, fixed)
    for name in {case["scheduler"] for case in cases} - {None}:
        try:
            resolve_scheduler(name)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--scheduler/--grid") from None
    quality_set = QualitySet.load(model_dir or DEFAULT_MODEL_DIR, prompt_limit)
    samples: list[tuple[str, list[Any]]] = []

    def open_pipeline(chosen: str) -> Any:
        return Pipeline.from_package(package, backend="ort", precision=chosen, device="cpu", threads=threads)

    result = measure_quality(open_pipeline, quality_set, cases, lambda line: click.echo(line, err=True),
                             lambda row, images: samples.append((f"{row['scheduler']} {row['steps']} "
                                                                 f"g{row['guidance']:g} {row['precision']}",
                                                                 images[:8])))
    result.update(machine=describe_machine(), package=str(package))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "quality.json", result)
    width = max(len(images) for _, images in samples)
    sheet = contact_sheet([images + [images[0] * 0] * (width - len(images)) for _, images in samples],
                          [label for label, _ in samples], [p["prompt"][:24] for p in quality_set.prompts[:width]])
    save_png(sheet, out_dir / "samples.png", {"cases": [label for label, _ in samples]})
    plot = plot_quality(result, out_dir / "quality.png")
    click.echo(format_quality_table(result))
    click.echo(f"wrote {out_dir / 'quality.json'}, {out_dir / 'samples.png'}" + (f", {plot}" if plot else ""))


@cli.command()
@click.option("--package", required=True, type=click.Path(path_type=Path), help="Model package folder (from export).")
@click.option("--schedulers", default="all", show_default=True, help="'all' or comma-separated scheduler names.")
@click.option("--guidance", "guidance_text", default="1,7.5", show_default=True, help="Comma-separated guidance scales.")
@click.option("--steps", default=20, show_default=True, type=click.IntRange(1), help="Denoising steps per case.")
@click.option("--size", type=int, help="Image height and width (default: the model's native size).")
@click.option("--backend", type=click.Choice(["ort", "trt"]), default="ort", show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]),
              help="ONNX precision for ort (default fp32; int8: build-ort --precision int8 engines, bar PSNR >= 25 dB).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="cpu", show_default=True,
              help="Where ONNX Runtime runs (cuda: onnxruntime-gpu's CUDA provider).")
@click.option("--cuda-graphs", is_flag=True, help="Run the engines as captured CUDA graphs.")
@click.option("--reference-device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where diffusers runs the fp32 reference (cuda: fp32 with TF32 off).")
@click.option("--out", "out_dir", default="parity-out", show_default=True, type=click.Path(path_type=Path),
              help="Folder for parity.json and the worst case's side-by-side image.")
def parity(
    package: Path,
    schedulers: str,
    guidance_text: str,
    steps: int,
    size: int | None,
    backend: str,
    precision: str | None,
    device: str,
    cuda_graphs: bool,
    reference_device: str,
    out_dir: Path,
) -> None:
    """End-to-end parity report against diffusers (same weights, same injected latents); exits 1 on any miss.

    \b
    Examples:
      python cli.py parity --package packages/tiny --schedulers all
      python cli.py parity --package packages/tiny --precision fp16 --schedulers euler_a,dpmpp_2m --guidance 7.5
      python cli.py parity --package packages/sd15 --device cuda --precision fp16 --reference-device cuda
      python cli.py parity --package packages/sd15-random --precision int8 --schedulers euler_a --size 256

    Bars: fp32 ONNX Runtime, max pixel difference <= 2/255; fp16 and TensorRT, PSNR >= 30 dB against diffusers fp32;
    int8 (build-ort --precision int8), PSNR >= 25 dB.
    """
    from bench.parity import parity_report
    from runtime.schedulers import SHORT_NAMES, resolve_scheduler

    names = list(SHORT_NAMES) if schedulers.strip() == "all" else _parse_list(schedulers, str, "--schedulers")
    for name in names:
        try:
            resolve_scheduler(name)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--schedulers") from None
    report = parity_report(
        package, names, _parse_list(guidance_text, float, "--guidance"), out_dir, steps=steps, backend=backend,
        precision=precision, height=size, width=size, device=device, cuda_graphs=cuda_graphs,
        reference_device=reference_device,
    )
    rows = [[c.scheduler, f"{c.guidance:g}", f"{c.max_pixel_diff}/255", f"{c.psnr_db:.1f}", f"{c.ssim:.4f}",
             "pass" if c.passed else "FAIL", f"{c.seconds:.1f}s"] for c in report.cases]
    click.echo(format_table(["scheduler", "guidance", "max diff", "PSNR dB", "SSIM", f"bar: {report.bar}", "time"], rows))
    click.echo(f"worst case: {report.worst_image}   report: {out_dir / 'parity.json'}")
    if not report.passed:
        failed = sum(not c.passed for c in report.cases)
        click.echo(f"error: {failed} of {len(report.cases)} cases miss the bar ({report.bar})", err=True)
        sys.exit(1)
    click.echo(f"all {len(report.cases)} cases pass ({report.bar})")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that work folders are removed on the way out."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; errors meant for the user become one line on stderr and a non-zero exit, never a traceback."""
    import signal

    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        result = cli.main(args=argv, prog_name="cli.py", standalone_mode=False)
    except Terminated:
        click.echo("terminated", err=True)
        return 143
    except click.exceptions.Abort as exc:  # click turns a KeyboardInterrupt (ours for SIGTERM too) into Abort
        if isinstance(exc.__cause__ or exc.__context__, Terminated):
            click.echo("terminated", err=True)
            return 143
        click.echo("interrupted", err=True)
        return 130
    except click.ClickException as exc:
        hint = " (see --help)" if isinstance(exc, click.UsageError) else ""
        click.echo(f"error: {exc.format_message()}{hint}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except ModuleNotFoundError as exc:
        from core.errors import EXTRAS

        root = (exc.name or "").split(".")[0]
        if root not in EXTRAS:
            raise
        click.echo(f"error: this command needs {root}, which is not installed: pip install 'diffship[{EXTRAS[root]}]'",
                   err=True)
        return EXIT_USAGE
    except Exception as exc:
        if isinstance(exc, _user_error_types()):
            click.echo(f"error: {exc}", err=True)
            return EXIT_USAGE
        raise
    return result if isinstance(result, int) else 0


def run() -> None:
    """Console-script entry point (``diffship ...``)."""
    sys.exit(main())


if __name__ == "__main__":
    run()
