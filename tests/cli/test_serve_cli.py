"""``cli.py serve`` and ``bench-serve`` refuse bad input with one line and exit status 2, before starting anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "--package", "/nonexistent/package"], "/nonexistent/package"),
        (["serve", "--package", "packages/tiny", "--max-batch", "0"], "--max-batch"),
        (["serve", "--package", "packages/tiny", "--timeout", "0"], "--timeout"),
        (["bench-serve", "--package", "/nonexistent/package"], "/nonexistent/package"),
        (["serve", "--package", "packages/tiny", "--memory-budget", "lots"], "--memory-budget"),
        (["serve", "--package", "packages/tiny", "--max-body-mb", "0"], "--max-body-mb"),
        (["serve", "--package", "packages/tiny", "--read-timeout", "0"], "--read-timeout"),
    ],
)
def test_serve_bad_options_are_one_line_errors(args: list[str], message: str, tmp_path: Path) -> None:
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error:") and message in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_help_shows_examples() -> None:
    result = run_cli("serve", "--help")
    assert result.returncode == 0
    assert "/v1/images/generations" in result.stdout and "--max-queue" in result.stdout and "--ray" in result.stdout
    assert "--memory-budget" in result.stdout and "--max-body-mb" in result.stdout and "--read-timeout" in result.stdout


def test_serve_warns_when_listening_beyond_loopback_without_credentials(capsys: pytest.CaptureFixture[str]) -> None:
    from diffship.commands.serve import _security

    open_policy = _security("0.0.0.0", None, (), (), (), False)
    assert "warning: listening on 0.0.0.0 without credentials" in capsys.readouterr().err
    assert open_policy.allowed_hosts is None and not open_policy.authenticates
    keyed = _security("0.0.0.0", None, ("me:secret",), (), ("images.example",), False)
    local = _security("127.0.0.1", None, (), (), (), False)
    assert capsys.readouterr().err == ""
    assert keyed.allowed_hosts == ("images.example",) and local.allowed_hosts == ("localhost", "127.0.0.1", "::1")
