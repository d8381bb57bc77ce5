"""``quality``: shapes-model images scored for shape, colour and position (bench.quality)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from diffship.commands.help import Command
from diffship.commands.options import (
    check_schedulers,
    guidance_option,
    out_dir_option,
    package_option,
    precision_option,
    scheduler_option,
    steps_option,
    threads_option,
)

if TYPE_CHECKING:
    from diffship.runtime.pipeline import Pipeline


@click.command(cls=Command, short_help="Score shapes-model images for shape, colour and position.")
@package_option("Package exported from the shapes model (export --model shapes).")
@click.option("--model-dir", type=click.Path(path_type=Path),
              help="Folder with quality_prompts.json and the classifier (default: diffship/models/shapes).")
@steps_option(20)
@guidance_option(2.0, help="Classifier-free guidance scale.")
@scheduler_option("Scheduler name (default: the package's own; see generate --scheduler list).")
@precision_option("fp32", help="Which engines ONNX Runtime runs (int8 needs build-ort --precision int8).")
@click.option("--grid", "grid_values", multiple=True, metavar="KEY=V1,V2,...",
              help="Sweep steps, guidance, scheduler, precision, cache (DeepCache's interval: a package exported with "
                   "--cache-branch) or cutoff (the guidance cutoff); several --grid give every combination, e.g. "
                   "--grid cache=1,3,5 --grid cutoff=1,0.5.")
@click.option("--prompts", "prompt_limit", type=click.IntRange(1), help="Score only the first N prompts (default all).")
@threads_option()
@out_dir_option("quality-out", "Folder for quality.json, quality.png (a plot, when steps or guidance vary) and "
                "samples.png.")
def quality(package: Path, model_dir: Path | None, steps: int, guidance: float, scheduler: str | None, precision: str,
            grid_values: tuple[str, ...], prompt_limit: int | None, threads: int | None, out_dir: Path) -> None:
    """Score generated images for the prompt's shape, colour and position (shapes model, held-out prompts).

    A classifier trained with the model (scripts/train_tiny.py) judges each image; accuracies come with 95% Wilson
    intervals, and "all / s" (all three right, per second of generation) is the quality-per-speed summary.

    \b
    Examples:
      {prog} quality --package packages/shapes
      {prog} quality --package packages/shapes --grid steps=1,2,4,8,16,32 --grid scheduler=euler,dpmpp_2m,ddim
      {prog} quality --package packages/shapes --grid guidance=1,2,4,7.5,12
      {prog} quality --package packages/shapes --grid precision=fp32,fp16 --grid steps=4,20
    """
    from diffship.bench.machine import describe_machine
    from diffship.bench.plots import check_plotting
    from diffship.bench.quality import (
        DEFAULT_MODEL_DIR,
        QualityError,
        QualitySet,
        SampleSheet,
        format_quality_table,
        grid_cases,
        measure_quality,
        parse_quality_axis,
        write_quality_report,
    )
    from diffship.runtime import Pipeline

    try:
        axes = [parse_quality_axis(value) for value in grid_values]
    except QualityError as exc:
        raise click.BadParameter(str(exc), param_hint="--grid") from None
    if any(key in ("steps", "guidance") for key, _ in axes):
        check_plotting("quality's plot of steps or guidance")  # refused now, not after minutes of scoring
    cases = grid_cases(axes, {"steps": steps, "guidance": guidance, "scheduler": scheduler, "precision": precision})
    check_schedulers(sorted({case["scheduler"] for case in cases} - {None}), "--scheduler/--grid")
    quality_set = QualitySet.load(model_dir or DEFAULT_MODEL_DIR, prompt_limit)

    def open_pipeline(chosen: str) -> Pipeline:
        return Pipeline.from_package(package, backend="ort", precision=chosen, device="cpu", threads=threads)

    samples = SampleSheet()
    result = measure_quality(open_pipeline, quality_set, cases, lambda line: click.echo(line, err=True), samples.keep)
    result.update(machine=describe_machine(), package=str(package))
    written = write_quality_report(result, samples, quality_set, out_dir)
    click.echo(format_quality_table(result))
    click.echo("wrote " + ", ".join(str(path) for path in written))
