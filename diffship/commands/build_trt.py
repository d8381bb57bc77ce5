"""``build-trt``: TensorRT or TensorRT-RTX engines for a package (engines.tensorrt.build)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from diffship.commands.help import Command
from diffship.commands.options import (
    components_option,
    force_option,
    hires_scale_option,
    package_option,
    parse_bytes,
    parse_components,
)
from diffship.runtime.tables import format_table

if TYPE_CHECKING:
    from diffship.core.specs import ShapeRequest
    from diffship.engines.build import BuildOutcome


@click.command("build-trt", cls=Command, short_help="Build TensorRT or TensorRT-RTX engines for a package.")
@package_option()
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
@components_option()
@click.option("--refittable", is_flag=True,
              help="Mark the weights a LoRA can change refittable, so LoRAs are refitted into the engines at load time "
                   "instead of rebuilding (needs the package's weight maps, and an NVIDIA GPU to build).")
@force_option()
@hires_scale_option()
def build_trt(package: Path, fp16: bool, backend: str, archs: str | None, height: int | None, width: int | None,
              min_size: int | None, max_size: int | None, batch: str | None, static: bool, prompt_chunks: str,
              opt_level: int, workspace: str | None, components: str | None, refittable: bool, force: bool,
              hires_scale: float | None) -> None:
    """Build TensorRT or TensorRT-RTX engines for a package, into PACKAGE/engines/<backend>-<archs>-<precision>/.

    \b
    Examples:
      {prog} build-trt --package packages/tiny --fp16
      {prog} build-trt --package packages/tiny --fp16 --backend trt-rtx --arch sm86,sm89,sm120
      {prog} build-trt --package packages/sd15 --fp16 --height 512 --width 512 --batch 1 --static
      {prog} build-trt --package packages/sd15 --fp16 --min-size 256 --max-size 1024 --batch 1-4
      {prog} build-trt --package packages/sd15 --fp16 --refittable      # LoRA by refit (GPU machine)
      {prog} build-trt --package packages/sd15 --fp16 --prompt-chunks 1-3  # --long-prompts up to 225 tokens
      {prog} build-trt --package packages/sd15 --fp16 --height 512 --width 512 --hires-scale 2  # 512 and 1024

    Each engine comes with a per-layer precision report (<component>.layers.json) taken from the builder's own log;
    an engine whose inputs (ONNX digest, shapes, precision, targets, library version, settings) did not change is
    not rebuilt.
    """
    from diffship.core.specs import BuildConfig
    from diffship.engines.tensorrt.api import available_backends, local_gpu_arch
    from diffship.engines.tensorrt.build import BuildRequest, build_engines

    shapes = _shapes(package, batch, static, (height, width), (min_size, max_size), prompt_chunks)
    if hires_scale is not None:
        from diffship.core.package import ModelPackage
        from diffship.core.profiles import cover_hires

        shapes = cover_hires(shapes, ModelPackage.open(package).constants, hires_scale, (height, width))
    if backend == "auto":
        backend = "trt" if "trt" in available_backends() and local_gpu_arch() is not None else "trt-rtx"
    config = BuildConfig(backend=backend, precision="fp16" if fp16 else "fp32",
                         archs=tuple(a for a in (archs or "").split(",") if a.strip()), optimization_level=opt_level,
                         workspace_bytes=parse_bytes(workspace))
    request = BuildRequest(package=package, config=config, shapes=shapes, components=parse_components(components),
                           force=force, refittable=refittable)
    outcome = build_engines(request)  # progress lines reach stderr through logging, as export's do
    click.echo(_engine_table(package, outcome))
    click.echo(
        f"engines: {outcome.folder}  ({config.backend}, {config.precision}, batch {shapes.batch.min}-{shapes.batch.max}, "
        f"{shapes.height.min}-{shapes.height.max} x {shapes.width.min}-{shapes.width.max} px)"
    )


def _shapes(package: Path, batch: str | None, static: bool, size: tuple[int | None, int | None],
            limits: tuple[int | None, int | None], prompt_chunks: str) -> ShapeRequest:
    """The shapes the engines accept, from the options and the package's own sizes."""
    from diffship.core.package import ModelPackage
    from diffship.core.profiles import parse_range, shape_request, size_ranges
    from diffship.engines.tensorrt.sets import default_shape_request

    constants = ModelPackage.open(package).constants
    if batch is None and not static and size == (None, None) and limits == (None, None) and prompt_chunks == "1":
        return default_shape_request(constants)  # the set keeps its plain name (engines/tensorrt/sets.py)
    batch_range = parse_range(batch or ("1" if static else "1-4"), "--batch")
    if static and batch_range.min != batch_range.max:
        raise click.UsageError("--static builds one shape: give --batch N (one number)")
    heights, widths = size_ranges(constants, *size, *limits, static)
    chunk_range = parse_range(prompt_chunks, "--prompt-chunks")
    if static and chunk_range.min != chunk_range.max:
        raise click.UsageError("--static builds one shape: give --prompt-chunks N (one number)")
    return shape_request(constants, batch_range, heights, widths, chunk_range)


def _engine_table(package: Path, outcome: BuildOutcome) -> str:
    """One row per engine: where it came from, its plan's size, build time and the builder's precision report."""
    from diffship.core.package import ModelPackage
    from diffship.engines.tensorrt.layers import describe_summary, read_layer_summary

    built = ModelPackage.open(package)
    rows = []
    for c in outcome.components:
        plan = built.path(c.entry.files[0])
        summary = c.details.summary if c.details is not None else read_layer_summary(built, c.entry)
        rows.append([c.component, c.details.route if c.details is not None else "-",
                     f"{plan.stat().st_size / 1e6:,.1f} MB",
                     "up to date" if c.skipped else f"{c.seconds:.1f}s", describe_summary(summary) if summary else "-"])
    return format_table(["component", "from", "plan", "build", "precision (builder report)"], rows)
