"""Benchmarks that measure in fresh processes run ``python -m diffship.bench.<module>`` from the repository root (where ``bench``
imports from). Whatever they hand a child must mean the same there as here: paths absolute, and the same cache
folder, so a relative ``--package`` or ``DIFFSHIP_CACHE`` given from another working directory still works."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
"""The folder that holds the ``diffship`` package: where a child process finds it."""
CACHE_ENV = "DIFFSHIP_CACHE"


def absolute(path: str | os.PathLike[str]) -> str:
    """``path`` as this process means it (relative to its working directory), for a child that runs elsewhere."""
    return str(Path(path).resolve())


def child_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    environment = {**os.environ, **(extra or {})}
    if environment.get(CACHE_ENV):
        environment[CACHE_ENV] = absolute(environment[CACHE_ENV])
    return environment


def run_module(module: str, arguments: Sequence[str], extra_environment: Mapping[str, str] | None = None,
               timeout_s: float | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m module ARGUMENTS`` in the repository root; its output captured as text."""
    return subprocess.run([sys.executable, "-m", module, *arguments], capture_output=True, text=True, cwd=ROOT,
                          env=child_environment(extra_environment), timeout=timeout_s, check=False)
