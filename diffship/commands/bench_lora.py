"""``bench-lora``: swapping LoRAs on a loaded pipeline against diffusers' load + fuse (bench.lora)."""

from __future__ import annotations

from pathlib import Path

import click

from diffship.commands.help import Command
from diffship.commands.options import device_option, json_option, package_option


@click.command("bench-lora", cls=Command, short_help="Time and memory of LoRA swaps, against diffusers.")
@package_option()
@click.option("--lora", "loras", required=True, multiple=True, type=click.Path(path_type=Path, dir_okay=False),
              help="A LoRA file (give two: the swaps go none -> A -> B -> none).")
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(1), help="Swap rounds per process.")
@click.option("--processes", default=2, show_default=True, type=click.IntRange(1),
              help="Fresh processes per side, alternated diffship / diffusers.")
@device_option("cpu", "ONNX Runtime device of diffship's side (diffusers' side runs on the CPU).",
               choices=("cpu", "cuda"))
@json_option("bench-lora.json")
def bench_lora(package: Path, loras: tuple[Path, ...], rounds: int, processes: int, device: str,
               json_path: Path) -> None:
    """Time and memory of swapping LoRAs on a loaded pipeline, against diffusers' load + fuse on the same weights.

    \b
    Example:
      python -m diffship.tools.make_lora DIFFUSERS_DIR loras/a.safetensors --rank 8
      {prog} bench-lora --package packages/sd15-random --lora loras/a.safetensors --lora loras/b.safetensors

    diffusers loads a save_pretrained copy of the package's weights (made once, in the cache folder).
    """
    from diffship.bench.coldstart import pretrained_copy
    from diffship.bench.lora import format_lora_table, measure_lora_swaps
    from diffship.bench.machine import describe_machine
    from diffship.core.files import write_json_atomic
    from diffship.core.package import ModelPackage

    opened = ModelPackage.open(package)
    result = measure_lora_swaps(package, pretrained_copy(opened), list(loras), rounds, processes, device,
                                lambda line: click.echo(line, err=True))
    result["machine"] = describe_machine()
    write_json_atomic(json_path, result)
    click.echo(format_lora_table(result))
    click.echo(f"wrote {json_path}")
