"""``build-ort``: ONNX Runtime engines for a package (engines.ort.build), int8 calibrated by runtime.calibration."""

from __future__ import annotations

from pathlib import Path

import click

from diffship.commands.help import Command
from diffship.commands.options import (
    components_option,
    force_option,
    hires_scale_option,
    package_option,
    parse_components,
    precision_option,
    threads_option,
)
from diffship.runtime.tables import format_table


@click.command("build-ort", cls=Command, short_help="Build ONNX Runtime engines (fused attention; CPU int8).")
@package_option()
@precision_option("fp32", help="int8: the UNet statically quantized for the CPU (calibrated on the package's own runs); "
                  "the other components as fp32. Runs only when asked for (--precision int8).")
@components_option()
@force_option()
@click.option("--target", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="cpu: optimised for this CPU and saved; cuda: attention fused for ONNX Runtime's CUDA provider "
              "(flash / memory-efficient attention), built on any machine.")
@click.option("--calibration-prompts", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="int8: a text file of prompts, one per line, to calibrate on (default: two built-in prompts).")
@click.option("--calibration-steps", type=click.IntRange(1, 100), default=8, show_default=True,
              help="int8: denoising steps per calibration prompt (each one guided UNet call recorded).")
@click.option("--calibration-size", type=click.IntRange(64, 2048), default=None,
              help="int8: image side of the calibration runs in pixels (default: the model's, capped at 256).")
@threads_option("ONNX Runtime threads for the calibration runs.")
@hires_scale_option()
def build_ort(package: Path, precision: str, components: str | None, force: bool, target: str,
              calibration_prompts: Path | None, calibration_steps: int, calibration_size: int | None,
              threads: int | None, hires_scale: float | None) -> None:
    """Build ONNX Runtime engines: attention fused; for the CPU, graphs also optimised for this CPU once and saved.

    \b
    Examples:
      {prog} build-ort --package packages/sd15-random
      {prog} build-ort --package packages/sd15-random --precision fp16 --target cuda
      {prog} build-ort --package packages/sd15-random --precision int8 --calibration-steps 8
      {prog} build-ort --package packages/sd15-random --hires-scale 2

    The runtime then loads these (the cpu set on a CPU of the same family, the cuda set on the CUDA provider, with the
    same onnxruntime) instead of the plain ONNX: faster sessions, less memory, faster UNet steps (see BENCHMARKS.md).
    Each graph is checked against the exported one (int8: relative L2 <= 0.15 per UNet call). int8 needs the fp32
    export; `generate --precision int8` runs it; LoRAs need fp32 or fp16.
    """
    from diffship.engines.ort.build import build_ort_engines
    from diffship.runtime.calibration import calibration_for

    if hires_scale is not None:
        _check_hires(package, hires_scale)

    calibration = None
    if precision == "int8":
        try:
            calibration = calibration_for(package, calibration_prompts, calibration_steps, calibration_size, threads,
                                          progress=click.echo)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--calibration-prompts") from exc
    outcome = build_ort_engines(package, precision, parse_components(components), force, target=target,
                                calibration=calibration.record if calibration else None,
                                calibration_key=calibration.key if calibration else "")
    rows = [[c.component, "up to date" if c.skipped else f"{c.seconds:.1f}s",
             str(c.details.fused_attention) if c.details is not None else "-",
             f"{c.verification.load_seconds:.1f}s" if c.verification is not None else "-"]
            for c in outcome.components]
    click.echo(format_table(["component", "build", "attention blocks fused", "session load"], rows))
    click.echo(f"engines: {outcome.folder}")


def _check_hires(package: Path, scale: float) -> None:
    """ONNX Runtime engines take any size, so one set covers both passes of a hires fix; what is checked, before
    anything is built, is that the second pass's size is one the model takes."""
    from diffship.core.package import ModelPackage
    from diffship.core.profiles import hires_size

    constants = ModelPackage.open(package).constants
    high, wide = hires_size(constants, constants.default_height, constants.default_width, scale)
    click.echo(f"hires fix x{scale:g}: ONNX Runtime engines take any size, so these cover both passes "
               f"({constants.default_width}x{constants.default_height} and {wide}x{high})")
