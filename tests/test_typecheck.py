"""mypy over the whole tree, the full-TensorRT path against the patched tensorrt-stubs; whether or not TensorRT-RTX is
installed (the stubs, not the library, are what the check needs)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_the_tree_passes_mypy_against_tensorrt_stubs() -> None:
    # exporter and bench call the same dataclasses the TensorRT path reads, so the whole tree is checked.
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "diffship", "scripts", "cli.py"],
        capture_output=True, text=True, cwd=ROOT, timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr
