"""``bench``: the runtime against diffusers on the same weights, settings and latents (bench.harness)."""

from __future__ import annotations

from pathlib import Path

import click

from diffship.commands.help import Command
from diffship.commands.options import (
    device_option,
    guidance_option,
    json_option,
    package_option,
    parse_list,
    scheduler_option,
    size_option,
    steps_list_option,
    threads_option,
)


@click.command(cls=Command, short_help="Latency, stages and cold start against diffusers.")
@package_option()
@size_option()
@click.option("--height", type=int, help="Image height (overrides --size).")
@click.option("--width", type=int, help="Image width (overrides --size).")
@steps_list_option("1,4,20")
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(1), help="Measured runs per setting.")
@guidance_option(7.5, help="Guidance scale for both sides.")
@scheduler_option("Scheduler for both sides (default: the package's own).")
@click.option("--prompt", default="a photograph of an astronaut riding a horse, highly detailed", show_default=True,
              help="The prompt of every run, both sides.")
@click.option("--backends", default="ort", show_default=True,
              help="Runtime contenders, comma-separated, each BACKEND[-PRECISION][-graphs]: ort, ort-fp16, "
              "ort-fp16-graphs (CUDA graphs), ort-int8 (build-ort --precision int8), trt, trt-graphs.")
@device_option("cpu", "cpu, or cuda for ONNX Runtime's CUDA provider and diffusers in fp16 on the GPU.")
@threads_option("Threads for both ONNX Runtime and torch (default: their own defaults).")
@json_option("bench-out/bench.json")
@click.option("--plots", "plot_dir", type=click.Path(path_type=Path), help="Folder for PNG plots (default: beside --json).")
@click.option("--cold-start/--no-cold-start", default=True, show_default=True,
              help="Also measure import time, process start to first image and peak memory in fresh processes.")
@click.option("--task", type=click.Choice(["txt2img", "img2img"]), default="txt2img", show_default=True,
              help="img2img: both sides start from the same generated picture (VAE encoder, strength) with the same "
                   "draws.")
@click.option("--strength", default=0.75, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="img2img: share of the schedule run (steps run = int(steps x strength)).")
@click.option("--quick", is_flag=True, help="A one-minute sanity run: steps 1,2 (img2img: 2,4), one repeat.")
def bench(package: Path, size: int | None, height: int | None, width: int | None, steps_text: str, repeats: int,
          guidance: float, scheduler: str | None, prompt: str, backends: str, device: str, threads: int | None,
          json_path: Path, plot_dir: Path | None, cold_start: bool, task: str, strength: float, quick: bool) -> None:
    """Benchmark the runtime against diffusers on the same weights, settings and latents, interleaved.

    \b
    Examples:
      {prog} bench --package packages/sd15-random --size 256 --steps 1,4,20 --repeats 3 --json bench.json
      {prog} bench --package packages/tiny --quick
      {prog} bench --package packages/sd15 --device cuda --backends ort,trt --size 512 --steps 20,50
      {prog} bench --package packages/sd15 --device cuda --backends ort-fp16,ort-fp16-graphs --size 512
      {prog} bench --package packages/sd15-random --task img2img --strength 0.75 --size 256 --steps 20

    Prints latency (median, min, max; ratio to diffusers), the per-stage breakdown, the runtime's time outside its
    engines, and cold start; writes every raw figure to --json and PNG plots beside it.
    """
    from diffship.bench.harness import BackendChoice, BenchSettings, bench_to_files, format_tables
    from diffship.bench.plots import check_plotting
    from diffship.core.package import ModelPackage

    check_plotting("bench's plots")  # refused now, not after the measurements

    constants = ModelPackage.open(package).constants
    steps = _step_counts(steps_text, quick, task, strength)
    contenders = parse_list(backends, str, "--backends")
    for contender in contenders:
        try:
            BackendChoice.parse(contender)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--backends") from None
    settings = BenchSettings(
        package=package, height=height or size or constants.default_height,
        width=width or size or constants.default_width, steps=steps, repeats=1 if quick else repeats,
        guidance=guidance, scheduler=scheduler, prompt=prompt, backends=tuple(contenders), threads=threads,
        device=device, cold_start=cold_start, task=task, strength=strength,
    )
    # Written as it goes: a late failure (a cold-start process, minutes in) loses none of the figures measured.
    result, written = bench_to_files(settings, json_path, plot_dir or json_path.parent,
                                     progress=lambda line: click.echo(line, err=True))
    click.echo(format_tables(result))
    click.echo("wrote " + ", ".join(str(p) for p in written))


def _step_counts(steps_text: str, quick: bool, task: str, strength: float) -> tuple[int, ...]:
    """--steps, or --quick's; each must run at least one step (img2img runs int(steps x strength))."""
    steps = ((1, 2) if task == "txt2img" else (2, 4)) if quick else tuple(parse_list(steps_text, int, "--steps"))
    if any(s < 1 for s in steps):
        raise click.BadParameter("step counts must be >= 1", param_hint="--steps")
    if task == "img2img" and any(int(s * strength) < 1 for s in steps):
        raise click.BadParameter(f"img2img runs int(steps x strength) steps: {min(steps)} x {strength:g} runs none; "
                                 "give more steps or a higher --strength", param_hint="--steps")
    return steps
