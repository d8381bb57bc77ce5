"""``export``: a diffusers pipeline -> a verified ONNX model package (exporter.package)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from diffship.commands.help import Command
from diffship.commands.options import checkpoint_source_options, parse_dtypes
from diffship.runtime.tables import format_table

if TYPE_CHECKING:
    from diffship.exporter.package import ExportResult


@click.command(cls=Command, short_help="Export a diffusers model or checkpoint to an ONNX package.")
@click.option("--model", help="Preset: shapes (trained here, ships in models/), tiny, tiny-v, tiny-inpaint, tiny-xl, "
              "tiny-xl-refiner (local, random weights), sd15, sd21-base, sd21, sd15-inpaint, sd2-inpaint, sdxl, "
              "sdxl-refiner, sdxl-turbo, sd-turbo (hub ids).")
@click.option(
    "--model-path",
    type=click.Path(path_type=Path),
    help="A local diffusers folder (e.g. a save_pretrained output) instead of --model: a StableDiffusion(Img2Img|"
    "Inpaint)Pipeline or a StableDiffusionXL(Img2Img)Pipeline; or a single-file checkpoint (.safetensors in the "
    "original layout: SD 1.x, SD 2.x, SDXL base or refiner, inpainting variants), e.g. --model-path "
    "~/models/dreamshaper_8.safetensors.",
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
@click.option("--cache-branch", type=click.IntRange(min=0),
              help="Also export DeepCache's two UNet graphs split at this branch (0: the shallowest, most reuse; "
              "block x (layers per block + 1) + layer, as the DeepCache authors number them), so that generate "
              "--cache-interval N runs one full UNet step in N. E.g. --cache-branch 0.")
@checkpoint_source_options()
def export(model: str | None, model_path: Path | None, out: Path, random_weights: bool, seed: int, dtypes: str,
           exporter: str, opset: int, force: bool, clip_skip: int, cache_branch: int | None, vae: Path | None,
           variant: str | None, prediction_type: str | None, config_preset: str | None, allow_pickle: bool) -> None:
    """Export a diffusers pipeline to a self-describing, verified ONNX model package.

    \b
    Examples:
      {prog} export --model shapes --out packages/shapes
      {prog} export --model tiny --out packages/tiny
      {prog} export --model sd15 --random-weights --out packages/sd15-random
      {prog} export --model-path /path/to/diffusers/dir --out packages/mine
      {prog} export --model tiny --dtype fp16 --out packages/tiny-fp16
      {prog} export --model sdxl --random-weights --dtype fp16 --out packages/sdxl-random
      {prog} export --model-path /models/anime-sd15 --clip-skip 1 --out packages/anime
      {prog} export --model-path ~/models/dreamshaper_8.safetensors --out packages/dreamshaper
      {prog} export --model-path ~/models/v2-1_768-ema-pruned.safetensors --prediction-type v_prediction --out packages/sd21
      {prog} export --model-path ~/models/sd15-inpainting.safetensors --vae ~/models/vae-ft-mse-840000.safetensors --out packages/inpaint
      {prog} export --model sd15 --random-weights --cache-branch 0 --out packages/sd15-random

    Every component is checked with onnx.checker and compared with its torch module in ONNX Runtime at two shapes;
    the export fails if any misses the parity bars. Re-running with identical inputs is skipped unless --force.
    """
    from diffship.exporter.onnx_export import ExportOptions
    from diffship.exporter.package import ExportRequest, export_package
    from diffship.exporter.sources import SourceOptions, check_source_arguments

    try:
        options = ExportOptions(exporter=exporter, opset=opset)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--opset") from None
    if (model is None) == (model_path is None):
        raise click.UsageError("give exactly one of --model NAME or --model-path DIR")
    sources = SourceOptions(vae=vae, variant=variant, prediction_type=prediction_type, config=config_preset,
                            allow_pickle=allow_pickle)
    check_source_arguments(model, model_path, random_weights, sources)
    if model_path is not None and model_path.is_file():
        from diffship.exporter.single_file import plan_load

        click.echo(plan_load(model_path, sources).describe())  # refusals come from here, before anything is written
    result = export_package(ExportRequest(out=out, model=model, model_path=model_path, random_weights=random_weights,
                                          seed=seed, dtypes=parse_dtypes(dtypes), options=options, force=force,
                                          clip_skip=clip_skip, source_options=sources))
    if result.skipped:
        click.echo(f"{out}: up to date, nothing exported (use --force to re-export)")
    else:
        click.echo(_report_table(result))
    if cache_branch is not None:
        from diffship.exporter.cache_graphs import add_cache_graphs, has_cache_graphs

        if result.skipped and not force and has_cache_graphs(out, cache_branch):
            click.echo(f"{out}: DeepCache graphs at branch {cache_branch} up to date")
        else:
            add_cache_graphs(out, cache_branch, opset, progress=click.echo)
    if result.skipped:
        return
    click.echo(f"package: {out}   total {result.seconds:.1f}s   peak memory {result.peak_rss_bytes / 2**30:.2f} GiB")


def _report_table(result: ExportResult) -> str:
    """One row per exported component and precision: size, parity against torch, time."""
    rows = []
    for r in result.reports:
        worst = r.verification.worst()
        rows.append([r.component, r.dtype, f"{r.file_bytes / 1e6:,.1f} MB", f"{worst['max_abs_diff']:.2e}",
                     f"{worst['rel_l2']:.2e}", f"{worst['psnr_db']:.1f}" if "psnr_db" in worst else "-",
                     "pass" if r.verification.passed else "FAIL", f"{sum(r.seconds.values()):.1f}s"])
    return format_table(["component", "dtype", "size", "max abs diff", "rel L2", "PSNR dB", "parity", "time"], rows)
