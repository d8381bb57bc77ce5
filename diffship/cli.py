"""diffship command line: the Click group, logging, and the error handling every command shares.

Each command lives in its own module of ``commands/`` (the developer tools too) and maps its options onto the
library's functions; options several commands take are defined once, in ``commands/options.py``. Errors a user can
fix are printed as one line (no traceback) with exit status 2.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from diffship.commands.bench import bench
from diffship.commands.bench_lora import bench_lora
from diffship.commands.bench_samplers import bench_samplers
from diffship.commands.bench_serve import bench_serve
from diffship.commands.bench_vae import bench_vae
from diffship.commands.build_ort import build_ort
from diffship.commands.build_trt import build_trt
from diffship.commands.export import export
from diffship.commands.generate import generate
from diffship.commands.help import SectionedGroup, program_name
from diffship.commands.parity import parity
from diffship.commands.quality import quality
from diffship.commands.serve import serve
from diffship.commands.verify import verify
from diffship.core.errors import set_program

EXIT_USAGE = 2


def _user_error_types() -> tuple[type[BaseException], ...]:
    """The one error root meant for the user (core.errors is light: torch must not load for `generate`)."""
    from diffship.core.errors import DiffshipError

    return (DiffshipError,)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s" if not verbose else "%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Libraries we drive are chatty at INFO; our own progress is what the user wants to see.
    for noisy in ("torch", "onnxscript", "onnx_ir", "diffusers", "transformers", "httpx", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose else logging.ERROR)


@click.group(cls=SectionedGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="diffship", message="%(prog)s %(version)s")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging, including what the libraries underneath say.")
def cli(verbose: bool) -> None:
    """diffship: diffusion pipelines from diffusers to ONNX / TensorRT engines, served without PyTorch.

    \b
    Typical flow:
      {prog} export   --model tiny --out packages/tiny
      {prog} build-trt --package packages/tiny --fp16 --backend trt-rtx --arch sm89
      {prog} generate --package packages/tiny --prompt "a red fox" --out fox.png
      {prog} bench    --package packages/tiny --quick
    """
    _setup_logging(verbose)


cli.add_section("Commands", [export, build_ort, build_trt, generate, serve, verify])
cli.add_section("Developer tools", [bench, bench_lora, bench_serve, bench_samplers, bench_vae, quality, parity])


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that work folders are removed on the way out."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; errors meant for the user become one line on stderr and a non-zero exit, never a traceback."""
    import signal

    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        program = program_name(sys.argv[0])
        set_program(program)  # the commands the library's messages suggest are written as the user runs them
        result = cli.main(args=argv, prog_name=program, standalone_mode=False)
    except Terminated:
        click.echo("terminated", err=True)
        return 143
    except click.exceptions.Abort as exc:  # click turns a KeyboardInterrupt (ours for SIGTERM too) into Abort
        if isinstance(exc.__cause__ or exc.__context__, Terminated):
            click.echo("terminated", err=True)
            return 143
        click.echo("interrupted", err=True)
        return 130
    except click.exceptions.NoArgsIsHelpError as exc:  # `diffship` alone: the help, not an error
        click.echo(exc.ctx.get_help() if exc.ctx is not None else exc.format_message())
        return 0
    except click.ClickException as exc:
        hint = " (see --help)" if isinstance(exc, click.UsageError) else ""
        click.echo(f"error: {exc.format_message()}{hint}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except ModuleNotFoundError as exc:
        return _missing_library(exc)
    except Exception as exc:
        if isinstance(exc, _user_error_types()):
            click.echo(f"error: {exc}", err=True)
            return EXIT_USAGE
        raise
    return result if isinstance(result, int) else 0


def _missing_library(exc: ModuleNotFoundError) -> int:
    """An optional library a command needs is absent: the pip line that installs it (others are bugs: re-raised)."""
    from diffship.core.errors import EXTRAS

    root = (exc.name or "").split(".")[0]
    if root not in EXTRAS:
        raise exc
    click.echo(f"error: this command needs {root}, which is not installed: pip install 'diffship[{EXTRAS[root]}]'",
               err=True)
    return EXIT_USAGE


def run() -> None:
    """Console-script entry point (``diffship ...``)."""
    sys.exit(main())


if __name__ == "__main__":
    run()
