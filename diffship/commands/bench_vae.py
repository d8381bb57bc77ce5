"""``bench-vae``: peak memory and time of large VAE decodes, whole and tiled, against diffusers' tiled decode
(bench.vae_tiles)."""

from __future__ import annotations

from pathlib import Path

import click

from diffship.commands.help import Command
from diffship.commands.options import json_option, parse_list


@click.command("bench-vae", cls=Command, short_help="Peak memory of VAE decodes, tiled or not, vs diffusers.")
@click.option("--model", default="sd15", show_default=True,
              help="Preset whose VAE architecture is measured, with seeded random weights (sd15, sdxl, tiny, ...).")
@click.option("--sizes", default="1024,2048,3072", show_default=True, help="Comma-separated square sizes in pixels.")
@click.option("--modes", default="untiled,tiled,diffusers-tiled", show_default=True,
              help="Comma-separated: untiled (diffship, one run), tiled (diffship, --vae-tiles), diffusers-tiled "
                   "(AutoencoderKL.enable_tiling).")
@click.option("--tile", default=512, show_default=True, type=click.IntRange(64),
              help="Tile side in pixels, as --vae-tiles SIZE and diffusers' tile_sample_min_size (a multiple of 32).")
@click.option("--work", type=click.Path(path_type=Path, file_okay=False),
              help="Folder for the exported VAE (default: under $DIFFSHIP_CACHE).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(1), help="Seconds one case may run (default: no limit).")
@json_option("bench-vae.json")
def bench_vae(model: str, sizes: str, modes: str, tile: int, work: Path | None, timeout_s: float | None,
              json_path: Path) -> None:
    """Peak resident memory and time of one VAE decode per case, each in a fresh process: diffship's ONNX Runtime
    decoder whole and in tiles, and diffusers' tiled decode, on the same random weights.

    \b
    Examples:
      {prog} bench-vae --model sd15 --sizes 1024,2048,3072
      {prog} bench-vae --model tiny --sizes 256,512 --tile 64 --json /tmp/vae.json
    """
    from diffship.bench.machine import describe_machine
    from diffship.bench.vae_tiles import MODES, format_table, measure, prepare_vae
    from diffship.core.files import write_json_atomic
    from diffship.core.integrity import cache_dir
    from diffship.exporter.sources import PRESETS

    chosen = parse_list(modes, str, "--modes")
    unknown = [mode for mode in chosen if mode not in MODES]
    if unknown:
        raise click.BadParameter(f"{', '.join(unknown)}: give some of {', '.join(MODES)}", param_hint="--modes")
    if tile % 32:
        raise click.BadParameter(f"{tile} is not a multiple of 32", param_hint="--tile")
    if model not in PRESETS:
        raise click.BadParameter(f"unknown preset {model!r}; choose one of {', '.join(PRESETS)}", param_hint="--model")
    folder = prepare_vae(model, work or cache_dir() / "bench-vae" / model)
    result = measure(folder, parse_list(sizes, int, "--sizes"), chosen, tile, lambda line: click.echo(line, err=True),
                     timeout_s)
    result |= {"model": model, "machine": describe_machine()}
    write_json_atomic(json_path, result)
    click.echo(format_table(result))
    click.echo(f"wrote {json_path}")
