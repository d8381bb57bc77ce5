"""The command line's help: two sections with a summary per command, help text on every option, and examples that
name the program as the user ran it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from diffship.cli import cli
from tests.conftest import ROOT, run_cli

USER_COMMANDS = ["export", "build-ort", "build-trt", "generate", "serve", "verify"]
DEVELOPER_TOOLS = ["bench", "bench-lora", "bench-serve", "bench-samplers", "bench-vae", "quality", "parity"]


def section(text: str, title: str) -> list[str]:
    """The first word of each line of a help section: the commands it lists."""
    body = text.split(f"\n{title}:\n")[1].split("\n\n")[0]
    return [line.split()[0] for line in body.splitlines() if line.startswith("  ") and not line.startswith("   ")]


def test_help_lists_commands_and_developer_tools_apart_each_with_a_one_line_summary() -> None:
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    assert section(result.stdout, "Commands") == USER_COMMANDS
    assert section(result.stdout, "Developer tools") == DEVELOPER_TOOLS
    for name in USER_COMMANDS + DEVELOPER_TOOLS:
        summary = cli.commands[name].get_short_help_str(80)
        assert summary and not summary.endswith("...") and len(summary) <= 60, (name, summary)


def test_help_every_option_of_every_command_has_help_text() -> None:
    missing = [f"{name} {param.opts[0]}" for name, command in {"(group)": cli, **cli.commands}.items()
               for param in command.params if isinstance(param, click.Option) and not (param.help or "").strip()]
    assert missing == [], f"options without help: {missing}"


@pytest.mark.parametrize("name", USER_COMMANDS + DEVELOPER_TOOLS)
def test_help_examples_name_the_program_from_a_checkout(name: str) -> None:
    result = run_cli(name, "--help")
    assert result.returncode == 0, result.stderr
    assert f"Usage: python cli.py {name} [OPTIONS]" in result.stdout
    assert "{prog}" not in result.stdout
    if "Example" in result.stdout:
        assert f"python cli.py {name} --package" in result.stdout or f"python cli.py {name} --model" in result.stdout


def test_help_examples_name_the_console_script_when_installed() -> None:
    # The console script `diffship = "diffship.cli:run"` starts with sys.argv[0] set to the script's path.
    code = "import sys\nsys.argv = ['/opt/venv/bin/diffship', 'generate', '--help']\nimport cli\ncli.run()\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Usage: diffship generate [OPTIONS]" in result.stdout
    assert "diffship generate --package packages/tiny --prompt" in result.stdout
    assert "cli.py" not in result.stdout


@pytest.mark.parametrize("module", ["diffship", "diffship.cli"])
def test_help_and_hints_name_python_m_when_run_as_a_module(module: str, tmp_path: Path) -> None:
    # An installed diffship without the console script on PATH: `python -m diffship` (no cli.py to point at).
    result = subprocess.run([sys.executable, "-m", module, "generate", "--help"], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"Usage: python -m {module} generate [OPTIONS]" in result.stdout and "cli.py" not in result.stdout
    missing = subprocess.run([sys.executable, "-m", module, "verify", "--package", str(tmp_path / "nowhere")],
                             capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert f"export one with `python -m {module} export --model NAME --out" in missing.stderr, missing.stderr


def test_help_group_names_the_program_in_its_typical_flow() -> None:
    result = CliRunner().invoke(cli, ["--help"], prog_name="diffship")
    assert result.exit_code == 0, result.output
    assert "diffship export   --model tiny" in result.output and "cli.py" not in result.output


def test_help_bare_command_prints_the_help_and_version_names_the_release() -> None:
    bare = run_cli()
    assert bare.returncode == 0 and "Commands:" in bare.stdout and "Developer tools:" in bare.stdout
    assert "error:" not in bare.stderr
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("python cli.py ") and version.stdout.split()[-1]
