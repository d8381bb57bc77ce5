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


def _guidance_interval(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[float, float] | None:
    from diffship.runtime.errors import PipelineInputError
    from diffship.runtime.schedule_guidance import parse_interval

    if value is None:
        return None
    try:
        return parse_interval(value)
    except PipelineInputError as exc:
        raise click.BadParameter(str(exc)) from None


def guidance_schedule_options() -> Callable[[FC], FC]:
    """``--guidance-cutoff`` and ``--guidance-interval``: classifier-free guidance on part of the schedule only."""
    cutoff = click.option(
        "--guidance-cutoff", type=click.FloatRange(0.0, 1.0),
        help="Stop classifier-free guidance after this fraction of the steps, as diffusers' CFG cutoff callbacks: "
             "steps 0..int(steps x CUTOFF) are guided, the rest run the UNet once on the prompt alone (half the "
             "work). E.g. --guidance-cutoff 0.4. Default: guide every step.")
    interval = click.option(
        "--guidance-interval", callback=_guidance_interval, metavar="LOW,HIGH",
        help="Guide only the steps whose noise level sigma lies in (LOW, HIGH] (Kynkaanniemi et al. 2024; SD 1.5's "
             "sigmas run from 14.6 down to 0.03), e.g. --guidance-interval 0.28,5.42; the others run the UNet once "
             "on the prompt alone. With --guidance-cutoff, a step is guided where both allow it.")

    def decorate(function: FC) -> FC:
        return cutoff(interval(function))

    return decorate


def cache_options() -> Callable[[FC], FC]:
    """``--cache-interval``, ``--cache-schedule`` and ``--cache-center``: DeepCache (packages exported with
    ``--cache-branch``)."""
    interval = click.option(
        "--cache-interval", type=click.IntRange(1),
        help="DeepCache: run the full UNet one step in N and only its outer layers in between, from the deep "
             "feature the last full step kept (packages exported with --cache-branch). E.g. --cache-interval 3. "
             "Default: off (1).")
    schedule = click.option(
        "--cache-schedule", type=click.Choice(["uniform", "nonuniform"]), default="uniform", show_default=True,
        help="Where the full steps fall: every N-th, or the DeepCache authors' non-uniform schedule, denser around "
             "--cache-center (default 30%% of the steps).")
    center = click.option("--cache-center", type=click.IntRange(1),
                          help="With --cache-schedule nonuniform: the step the full steps cluster around, e.g. 15 of 50.")

    def decorate(function: FC) -> FC:
        return interval(schedule(center(function)))

    return decorate


def components_option() -> Callable[[FC], FC]:
    return click.option("--components",
                        help="Comma-separated components (default: all, the VAE encoder for image input included).")


def force_option() -> Callable[[FC], FC]:
    return click.option("--force", is_flag=True, help="Rebuild even when an engine with the same inputs exists.")


def checkpoint_source_options() -> Callable[[FC], FC]:
    """export's options for a --model-path that is a single-file checkpoint or a diffusers folder saved with a
    variant (docs/design.md, "Single-file checkpoints")."""
    options = [
        click.option("--vae", type=click.Path(exists=True, path_type=Path), metavar="FILE_OR_FOLDER",
                     help="Replace the checkpoint's or folder's VAE (or give one to a file that has none): a VAE "
                     ".safetensors in either layout or a diffusers VAE folder, e.g. --vae sdxl-vae-fp16-fix/."),
        click.option("--variant", help="Weights variant of a diffusers folder saved with save_pretrained(variant=...): "
                     "--variant fp16 loads *.fp16.safetensors (found by itself when it is the only one)."),
        click.option("--prediction-type", type=click.Choice(["epsilon", "v_prediction"]),
                     help="What a single-file checkpoint's UNet predicts, e.g. --prediction-type v_prediction for SD 2.x "
                     "768 or v-prediction finetunes (default: the web UI's <file>.yaml beside it, else the detected "
                     "architecture's)."),
        click.option("--config", "config_preset", metavar="PRESET",
                     help="Bundled configs to read a single file with instead of the detected architecture's, for "
                     "models at other widths, e.g. --config tiny-xl."),
        click.option("--allow-pickle", is_flag=True,
                     help="Accept .ckpt (pickle) checkpoints, read with torch.load(weights_only=True) so nothing in "
                     "them runs, e.g. --model-path v1-5-pruned-emaonly.ckpt --allow-pickle."),
    ]

    def apply(f: FC) -> FC:
        for option in reversed(options):
            f = option(f)
        return f

    return apply


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
