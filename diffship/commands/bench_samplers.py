"""``bench-samplers``: time per image by sampler and step count (bench.samplers)."""

from __future__ import annotations

from pathlib import Path

import click

from diffship.commands.help import Command
from diffship.commands.options import (
    json_option,
    package_option,
    parse_list,
    rounds_option,
    scheduler_names,
    size_option,
    steps_list_option,
    threads_option,
)


@click.command("bench-samplers", cls=Command, short_help="Time per image by sampler and step count.")
@package_option()
@click.option("--samplers", default="all", show_default=True,
              help="'all' (every short name) or comma-separated scheduler names.")
@steps_list_option("10,20")
@size_option(256)
@rounds_option()
@threads_option()
@json_option("bench-samplers.json")
def bench_samplers(package: Path, samplers: str, steps_text: str, size: int, rounds: int, threads: int | None,
                   json_path: Path) -> None:
    """Time per image by sampler and step count (ONNX Runtime, CPU), with UNet calls per image and the sampler's own
    arithmetic time.

    \b
    Example:
      {prog} bench-samplers --package packages/sd15-random --steps 10,20 --size 256
    """
    from diffship.bench.machine import describe_machine
    from diffship.bench.samplers import format_sampler_table, measure_samplers
    from diffship.core.files import write_json_atomic
    from diffship.runtime import Pipeline

    names = scheduler_names(samplers, "--samplers")
    step_counts = parse_list(steps_text, int, "--steps")
    with Pipeline.from_package(package, backend="ort", device="cpu", threads=threads) as pipe:
        result = measure_samplers(pipe, names, step_counts, size, rounds, lambda line: click.echo(line, err=True))
    result["machine"] = describe_machine()
    result["package"] = str(package)
    write_json_atomic(json_path, result)
    click.echo(format_sampler_table(result))
    click.echo(f"wrote {json_path}")
