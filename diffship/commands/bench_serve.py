"""``bench-serve``: the HTTP service under concurrent clients, batching off and on, and Ray replicas (bench.serving)."""

from __future__ import annotations

from pathlib import Path

import click

from diffship.commands.help import Command
from diffship.commands.options import (
    json_option,
    package_option,
    parse_list,
    rounds_option,
    size_option,
    steps_option,
    threads_option,
)


@click.command("bench-serve", cls=Command, short_help="Throughput and latency of the HTTP service under load.")
@package_option()
@click.option("--concurrency", "concurrency_text", default="1,2,4,8", show_default=True,
              help="Comma-separated numbers of concurrent clients.")
@click.option("--max-batch", default=4, show_default=True, type=click.IntRange(2), help="Batch limit of 'batching on'.")
@steps_option(4, help="Steps per request.")
@size_option(256)
@click.option("--requests-per-client", default=2, show_default=True, type=click.IntRange(1),
              help="Requests each client sends, one after another.")
@rounds_option()
@threads_option()
@click.option("--ray-replicas", default=0, show_default=True, type=click.IntRange(0),
              help="Also measure this many Ray Serve replicas (0: skip Ray).")
@json_option("bench-serve.json")
@click.option("--plot", "plot_path", default="bench-serve.png", show_default=True, type=click.Path(path_type=Path),
              help="PNG plot of throughput and latency against concurrency.")
def bench_serve(package: Path, concurrency_text: str, max_batch: int, steps: int, size: int, requests_per_client: int,
                rounds: int, threads: int | None, ray_replicas: int, json_path: Path, plot_path: Path) -> None:
    """Throughput and latency of the HTTP service against concurrent clients, batching off vs on (and Ray replicas).

    \b
    Example:
      {prog} bench-serve --package packages/tiny --size 64 --steps 4 --concurrency 1,2,4,8 --ray-replicas 2
      {prog} bench-serve --package packages/sd15-random --size 256 --steps 2 --concurrency 1,2,4
    """
    from diffship.bench.machine import describe_machine
    from diffship.bench.serving import format_serving_table, measure_serving, plot_serving
    from diffship.core.files import write_json_atomic
    from diffship.core.package import ModelPackage

    ModelPackage.open(package)
    levels = parse_list(concurrency_text, int, "--concurrency")
    result = measure_serving(package, levels, max_batch, steps, size, rounds, requests_per_client, threads,
                             ray_replicas, progress=lambda line: click.echo(line, err=True))
    result["machine"] = describe_machine()
    result["package"] = str(package)
    write_json_atomic(json_path, result)
    plot_serving(result, plot_path)
    click.echo(format_serving_table(result))
    click.echo(f"wrote {json_path} and {plot_path}")
