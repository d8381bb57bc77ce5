"""Options shared by several commands, each defined once, and the parsers of option values.

A command states which options it takes (``@package_option()``, ``@threads_option()``, ...); the name, type and
default of each live here, so that ``--threads`` is the same integer range everywhere and ``--backend`` offers every
backend ``engines.backend`` knows when the command line is parsed, one added with ``register_backend`` included.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

FC = TypeVar("FC", bound=Callable[..., Any])

PRECISIONS = ("fp32", "fp16", "int8")
DEVICES = ("auto", "cpu", "cuda")
THREADS = click.IntRange(1, 512)
STEPS = click.IntRange(1)
SIDE = click.IntRange(8)


class RuntimeBackend(click.Choice):  # type: ignore[type-arg]
    """The runtime backends registered when an option is parsed or its help is shown (``backend_names()``); read
    late, so that ``engines.backend`` (and numpy under it) is imported only by a command that takes ``--backend``."""

    def __init__(self) -> None:
        super().__init__(())

    @property  # type: ignore[override]
    def choices(self) -> tuple[str, ...]:
        from diffship.engines.backend import backend_names

        return tuple(backend_names())

    @choices.setter
    def choices(self, value: Any) -> None:
        """click.Choice sets the choices it was given; these come from the registry instead."""


def package_option(help: str = "Model package folder (from export).") -> Callable[[FC], FC]:
    return click.option("--package", required=True, type=click.Path(path_type=Path), help=help)


def threads_option(help: str = "ONNX Runtime intra-op threads (default: one per core).") -> Callable[[FC], FC]:
    return click.option("--threads", type=THREADS, help=help)


def backend_option(help: str = "ONNX Runtime (ort), TensorRT engines built with build-trt (trt, NVIDIA GPU), or a "
                   "backend registered in-process with diffship.engines.backend.register_backend.") -> Callable[[FC], FC]:
    return click.option("--backend", type=RuntimeBackend(), default="ort", show_default=True, help=help)


def precision_option(
    default: str | None = None,
    help: str = "Which engines ONNX Runtime loads (default fp32; int8 needs build-ort --precision int8).",
) -> Callable[[FC], FC]:
    return click.option("--precision", type=click.Choice(PRECISIONS), default=default, show_default=default is not None,
                        help=help)


def device_option(default: str, help: str, choices: tuple[str, ...] = DEVICES) -> Callable[[FC], FC]:
    return click.option("--device", type=click.Choice(choices), default=default, show_default=True, help=help)


def cuda_graphs_option(help: str) -> Callable[[FC], FC]:
    return click.option("--cuda-graphs", is_flag=True, help=help)


def _check_loras(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    """A malformed ``FILE:SCALE`` is refused while parsing, before any model loads (the files are read later)."""
    from diffship.runtime.lora import LoraError, LoraRequest

    for value in values:
        try:
            LoraRequest.parse(value)
        except LoraError as exc:
            raise click.BadParameter(str(exc)) from None
    return values


def lora_option(help: str) -> Callable[[FC], FC]:
    """``--lora FILE[:SCALE]``, repeatable, as ``runtime.lora.LoraRequest.parse`` reads it."""
    return click.option("--lora", "loras", multiple=True, metavar="FILE[:SCALE]", callback=_check_loras, help=help)


def json_option(default: str, help: str = "Where to write every raw figure (JSON).") -> Callable[[FC], FC]:
    return click.option("--json", "json_path", default=default, show_default=True, type=click.Path(path_type=Path),
                        help=help)


def out_dir_option(default: str, help: str) -> Callable[[FC], FC]:
    return click.option("--out", "out_dir", default=default, show_default=True, type=click.Path(path_type=Path),
                        help=help)


def steps_option(default: int, help: str = "Denoising steps.") -> Callable[[FC], FC]:
    return click.option("--steps", default=default, show_default=True, type=STEPS, help=help)


def steps_list_option(default: str) -> Callable[[FC], FC]:
    """``--steps 1,4,20``: several step counts (read with ``parse_list``)."""
    return click.option("--steps", "steps_text", default=default, show_default=True,
                        help="Comma-separated step counts.")


def size_option(default: int | None = None) -> Callable[[FC], FC]:
    """``--size``: height and width at once; without a default, the model's native size."""
    if default is None:
        return click.option("--size", type=int, help="Image height and width (default: the model's native size).")
    return click.option("--size", default=default, show_default=True, type=SIDE, help="Image height and width.")


def rounds_option() -> Callable[[FC], FC]:
    return click.option("--rounds", default=1, show_default=True, type=click.IntRange(1),
                        help="Rounds over all cases (median).")


def scheduler_option(help: str) -> Callable[[FC], FC]:
    return click.option("--scheduler", help=help)


def guidance_option(default: float, help: str = "Classifier-free guidance scale (<= 1 disables it).") -> Callable[[FC], FC]:
    return click.option("--guidance", default=default, show_default=True, type=float, help=help)


def components_option() -> Callable[[FC], FC]:
    return click.option("--components",
                        help="Comma-separated components (default: all, the VAE encoder for image input included).")


def force_option() -> Callable[[FC], FC]:
    return click.option("--force", is_flag=True, help="Rebuild even when an engine with the same inputs exists.")


# ---------------------------------------------------------------------------------------------------- value parsers


def parse_list(text: str, kind: type, what: str) -> list[Any]:
    """``"1,4,20"`` -> [1, 4, 20] (``kind`` per item); a bad or empty list is a usage error naming ``what``."""
    try:
        values = [kind(item.strip()) for item in text.split(",") if item.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r}: give comma-separated {kind.__name__} values", param_hint=what) from None
    if not values:
        raise click.BadParameter("give at least one value", param_hint=what)
    return values


def parse_components(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(c.strip() for c in text.split(",") if c.strip())


def parse_dtypes(value: str) -> tuple[str, ...]:
    parts = tuple(dict.fromkeys(p.strip() for p in value.split(",") if p.strip()))
    bad = [p for p in parts if p not in ("fp32", "fp16")]
    if not parts or bad:
        raise click.BadParameter(f"{value!r}: give fp32, fp16 or fp32,fp16", param_hint="--dtype")
    return parts


BYTE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "k": 2**10, "kib": 2**10, "m": 2**20,
              "mib": 2**20, "g": 2**30, "gib": 2**30}


def parse_bytes(text: str | None, what: str = "--workspace") -> int | None:
    """``4GiB``, ``512MiB``, ``1000000`` -> bytes."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in BYTE_UNITS:
        raise click.BadParameter(f"{text!r}: give a size such as 4GiB, 512MiB or 1000000", param_hint=what)
    return int(float(match.group(1)) * BYTE_UNITS[match.group(2).lower()])


def parse_pair(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    """``A,B`` -> (A, B) as integers (a ``callback=``); the pipeline checks the ranges."""
    if value is None:
        return None
    try:
        first, second = (int(part.strip()) for part in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not two integers; give {param.metavar} such as 1024,1024") from None
    return first, second


def check_schedulers(names: list[str], what: str) -> list[str]:
    """``names`` when every one is a scheduler the runtime has; else a usage error naming ``what``."""
    from diffship.runtime.schedulers import resolve_scheduler

    for name in names:
        try:
            resolve_scheduler(name)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint=what) from None
    return names


def scheduler_names(text: str, what: str) -> list[str]:
    """``all`` (every short name) or comma-separated scheduler names, each checked."""
    from diffship.runtime.schedulers import SHORT_NAMES

    names = list(SHORT_NAMES) if text.strip() == "all" else parse_list(text, str, what)
    return check_schedulers(names, what)


def _check_vae_tiles(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from diffship.runtime.errors import PipelineInputError
    from diffship.runtime.vae_tiling import VaeTiles

    try:
        VaeTiles.parse(value)
    except PipelineInputError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


def vae_tiles_option() -> Callable[[FC], FC]:
    """``--vae-tiles auto|off|SIZE`` (runtime/vae_tiling.py), checked while parsing."""
    return click.option("--vae-tiles", default="auto", show_default=True, callback=_check_vae_tiles,
                        metavar="auto|off|SIZE",
                        help="Decode (and encode) in overlapping tiles as diffusers' enable_vae_tiling: auto tiles at "
                             "the model's native size when the picture is over 1024x1024, beyond the VAE engine's "
                             "profile or too big for memory; SIZE (a multiple of 32, such as 512) tiles whenever the "
                             "picture is larger than SIZE; off never. Example: --vae-tiles 512")


def hires_scale_option() -> Callable[[FC], FC]:
    """``--hires-scale`` on the builders: engines that also take a hires fix's second pass."""
    return click.option("--hires-scale", type=click.FloatRange(1.0, 8.0),
                        help="Also cover a hires fix's second pass (generate --hires-scale): --height/--width (default: "
                             "the model's size) times this, in the same engines. Example: --hires-scale 2")
