"""Options several commands take are one definition (commands/options.py): the same name, type and range wherever
they appear."""

from __future__ import annotations

from pathlib import Path

import click

from diffship.cli import cli
from tests.cli.test_cli_errors import assert_one_line_error
from tests.conftest import run_cli


def options_named(name: str) -> dict[str, click.Option]:
    return {command_name: param for command_name, command in cli.commands.items() for param in command.params
            if isinstance(param, click.Option) and name in param.opts}


def test_threads_option_is_one_range_everywhere() -> None:
    found = options_named("--threads")
    assert set(found) == {"build-ort", "generate", "serve", "bench", "bench-serve", "bench-samplers", "quality"}
    for command_name, option in found.items():
        assert isinstance(option.type, click.IntRange), command_name
        assert (option.type.min, option.type.max) == (1, 512), command_name


def test_threads_option_refuses_zero_before_any_work(tmp_path: Path) -> None:
    result = run_cli("bench-samplers", "--package", str(tmp_path / "none"), "--threads", "0")
    assert_one_line_error(result, "--threads", "0 is not in the range 1<=x<=512")


def test_backend_option_is_the_runtime_registry_wherever_it_appears() -> None:
    from diffship.engines.backend import backend_names

    found = options_named("--backend")
    runtime = {name: option for name, option in found.items() if name != "build-trt"}  # build-trt: the build library
    assert set(runtime) == {"generate", "serve", "parity"}
    for command_name, option in runtime.items():
        assert isinstance(option.type, click.Choice)
        assert list(option.type.choices) == backend_names(), command_name


def test_build_ort_calibration_prompts_file_without_prompts_is_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "prompts.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    result = run_cli("build-ort", "--package", str(tmp_path / "none"), "--precision", "int8",
                     "--calibration-prompts", str(empty))
    assert_one_line_error(result, "--calibration-prompts", f"{empty} holds no prompts (one per line)")
