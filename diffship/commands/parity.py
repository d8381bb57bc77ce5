"""``parity``: an end-to-end parity report against diffusers (bench.parity)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from diffship.commands.help import Command
from diffship.commands.options import (
    backend_option,
    cuda_graphs_option,
    device_option,
    out_dir_option,
    package_option,
    parse_list,
    precision_option,
    scheduler_names,
    size_option,
    steps_option,
)
from diffship.runtime.tables import format_table

if TYPE_CHECKING:
    from diffship.bench.parity import ParityReport


@click.command(cls=Command, short_help="End-to-end parity against diffusers; exits 1 on any miss.")
@package_option()
@click.option("--schedulers", default="all", show_default=True, help="'all' or comma-separated scheduler names.")
@click.option("--guidance", "guidance_text", default="1,7.5", show_default=True, help="Comma-separated guidance scales.")
@steps_option(20, help="Denoising steps per case.")
@size_option()
@backend_option("Runtime backend under test: ort, trt (engines built with build-trt), or a registered one.")
@precision_option(help="ONNX precision for ort (default fp32; int8: build-ort --precision int8 engines, bar PSNR >= "
                  "25 dB).")
@device_option("cpu", "Where ONNX Runtime runs (cuda: onnxruntime-gpu's CUDA provider).")
@cuda_graphs_option("Run the engines as captured CUDA graphs.")
@click.option("--reference-device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where diffusers runs the fp32 reference (cuda: fp32 with TF32 off).")
@out_dir_option("parity-out", "Folder for parity.json and the worst case's side-by-side image.")
def parity(package: Path, schedulers: str, guidance_text: str, steps: int, size: int | None, backend: str,
           precision: str | None, device: str, cuda_graphs: bool, reference_device: str, out_dir: Path) -> None:
    """End-to-end parity report against diffusers (same weights, same injected latents); exits 1 on any miss.

    \b
    Examples:
      {prog} parity --package packages/tiny --schedulers all
      {prog} parity --package packages/tiny --precision fp16 --schedulers euler_a,dpmpp_2m --guidance 7.5
      {prog} parity --package packages/sd15 --device cuda --precision fp16 --reference-device cuda
      {prog} parity --package packages/sd15-random --precision int8 --schedulers euler_a --size 256

    Bars: fp32 ONNX Runtime, max pixel difference <= 2/255; fp16 and TensorRT, PSNR >= 30 dB against diffusers fp32;
    int8 (build-ort --precision int8), PSNR >= 25 dB.
    """
    from diffship.bench.parity import parity_report

    names = scheduler_names(schedulers, "--schedulers")
    report = parity_report(
        package, names, parse_list(guidance_text, float, "--guidance"), out_dir, steps=steps, backend=backend,
        precision=precision, height=size, width=size, device=device, cuda_graphs=cuda_graphs,
        reference_device=reference_device,
    )
    click.echo(_case_table(report))
    click.echo(f"worst case: {report.worst_image}   report: {out_dir / 'parity.json'}")
    if not report.passed:
        failed = sum(not c.passed for c in report.cases)
        click.echo(f"error: {failed} of {len(report.cases)} cases miss the bar ({report.bar})", err=True)
        sys.exit(1)
    click.echo(f"all {len(report.cases)} cases pass ({report.bar})")


def _case_table(report: ParityReport) -> str:
    rows = [[c.scheduler, f"{c.guidance:g}", f"{c.max_pixel_diff}/255", f"{c.psnr_db:.1f}", f"{c.ssim:.4f}",
             "pass" if c.passed else "FAIL", f"{c.seconds:.1f}s"] for c in report.cases]
    return format_table(["scheduler", "guidance", "max diff", "PSNR dB", "SSIM", f"bar: {report.bar}", "time"], rows)
