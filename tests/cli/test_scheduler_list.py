"""``generate --scheduler list``: every scheduler by every name it answers to, without a package or a prompt."""

from __future__ import annotations

import pytest

from diffship.runtime.schedulers import NOT_IMPLEMENTED, SHORT_NAMES, WEB_UI_NAMES
from tests.conftest import run_cli


@pytest.mark.slow  # starts a process
def test_scheduler_list_prints_every_name_and_exits_zero() -> None:
    result = run_cli("generate", "--scheduler", "list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for short, (class_name, _) in SHORT_NAMES.items():
        assert any(line.startswith(short + " ") and class_name in line for line in lines), short
    for web_ui_name, short in WEB_UI_NAMES.items():
        assert any(line.startswith(short + " ") and web_ui_name in line for line in lines), web_ui_name
    assert all(name in result.stdout for name in NOT_IMPLEMENTED)
