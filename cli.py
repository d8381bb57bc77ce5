"""diffship command line: export | build-trt | generate | bench | parity.

Each command maps its options onto the library's request dataclasses and calls one function; the logic lives in
exporter/, engines/ and runtime/. Errors a user can fix are printed as one line (no traceback) with exit status 2.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

EXIT_USAGE = 2


def _user_error_types() -> tuple[type[BaseException], ...]:
    """Exception types whose message is meant for the user (imported lazily: torch must not load for `generate`)."""
    from engines.errors import EngineError
    from engines.package import PackageError

    types: list[type[BaseException]] = [PackageError, EngineError]
    for module, name in (
        ("exporter.package", "ExportError"),
        ("exporter.sources", "SourceError"),
        ("runtime.errors", "PipelineError"),
    ):
        loaded = sys.modules.get(module)
        if loaded is not None:
            types.append(getattr(loaded, name))
    return tuple(types)


def user_errors(command: F) -> F:
    """Print errors meant for the user as one line and exit non-zero, without a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as exc:
            if isinstance(exc, _user_error_types()):
                click.echo(f"error: {exc}", err=True)
                sys.exit(EXIT_USAGE)
            raise

    return wrapper  # type: ignore[return-value]


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s" if not verbose else "%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Libraries we drive are chatty at INFO; our own progress is what the user wants to see.
    for noisy in ("torch", "onnxscript", "onnx_ir", "diffusers", "transformers", "httpx", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose else logging.ERROR)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging, including what the libraries underneath say.")
def main(verbose: bool) -> None:
    """diffship: diffusion pipelines from diffusers to ONNX / TensorRT engines, served without PyTorch.

    \b
    Typical flow:
      python cli.py export   --model tiny --out packages/tiny
      python cli.py build-trt --package packages/tiny --fp16 --backend trt-rtx --arch sm89
      python cli.py generate --package packages/tiny --prompt "a red fox" --out fox.png
      python cli.py bench    --package packages/tiny --quick
    """
    _setup_logging(verbose)


def _parse_dtypes(value: str) -> tuple[str, ...]:
    parts = tuple(dict.fromkeys(p.strip() for p in value.split(",") if p.strip()))
    bad = [p for p in parts if p not in ("fp32", "fp16")]
    if not parts or bad:
        raise click.BadParameter(f"{value!r}: give fp32, fp16 or fp32,fp16")
    return parts


@main.command()
@click.option("--model", help="Preset: tiny, tiny-v (local, random weights), sd15, sd21-base, sd21 (hub ids).")
@click.option(
    "--model-path",
    type=click.Path(file_okay=False, path_type=Path),
    help="A local diffusers StableDiffusionPipeline folder (e.g. a save_pretrained output) instead of --model.",
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
    help="torch.onnx's dynamo exporter, or the legacy TorchScript one (faster on full-size models).",
)
@click.option("--opset", default=18, show_default=True, help="ONNX opset (18 or newer).")
@click.option("--force", is_flag=True, help="Re-export even when the package is up to date.")
@user_errors
def export(
    model: str | None,
    model_path: Path | None,
    out: Path,
    random_weights: bool,
    seed: int,
    dtypes: str,
    exporter: str,
    opset: int,
    force: bool,
) -> None:
    """Export a diffusers pipeline to a self-describing, verified ONNX model package.

    \b
    Examples:
      python cli.py export --model tiny --out packages/tiny
      python cli.py export --model sd15 --random-weights --out packages/sd15-random
      python cli.py export --model-path /path/to/diffusers/dir --out packages/mine
      python cli.py export --model tiny --dtype fp16 --out packages/tiny-fp16

    Every component is checked with onnx.checker and compared with its torch module in ONNX Runtime at two shapes;
    the export fails if any misses the parity bars. Re-running with identical inputs is skipped unless --force.
    """
    from exporter.onnx_export import ExportOptions
    from exporter.package import ExportRequest, export_package

    try:
        options = ExportOptions(exporter=exporter, opset=opset)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--opset") from None
    if (model is None) == (model_path is None):
        raise click.UsageError("give exactly one of --model NAME or --model-path DIR")
    request = ExportRequest(
        out=out,
        model=model,
        model_path=model_path,
        random_weights=random_weights,
        seed=seed,
        dtypes=_parse_dtypes(dtypes),
        options=options,
        force=force,
    )
    result = export_package(request)
    if result.skipped:
        click.echo(f"{out}: up to date, nothing exported (use --force to re-export)")
        return
    rows = [
        [
            r.component,
            r.dtype,
            f"{r.file_bytes / 1e6:,.1f} MB",
            f"{r.verification.worst()['max_abs_diff']:.2e}",
            f"{r.verification.worst()['rel_l2']:.2e}",
            f"{r.verification.worst()['psnr_db']:.1f}" if "psnr_db" in r.verification.worst() else "-",
            "pass" if r.verification.passed else "FAIL",
            f"{sum(r.seconds.values()):.1f}s",
        ]
        for r in result.reports
    ]
    click.echo(
        _table(["component", "dtype", "size", "max abs diff", "rel L2", "PSNR dB", "parity", "time"], rows)
    )
    click.echo(f"package: {out}   total {result.seconds:.1f}s   peak memory {result.peak_rss_bytes / 2**30:.2f} GiB")


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows, strict=True)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    rule = "  ".join("-" * w for w in widths)
    body = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join([line, rule, *body])


if __name__ == "__main__":
    main()
