"""The one root of every error a user can fix, and the refusal for a missing optional library.

Each layer subclasses ``DiffshipError`` (keeping ``ValueError`` where the error is one), so a caller, and the CLI,
catch one type; the message says what is wrong and what to do.
"""

from __future__ import annotations

import importlib
from types import ModuleType

PROGRAM = ["diffship"]
"""How the user starts the command line, for the commands that messages suggest: ``diffship`` when installed; the
CLI sets what was really run (``python cli.py`` from a checkout) with ``set_program``."""


def set_program(name: str) -> None:
    PROGRAM[0] = name


def command(arguments: str) -> str:
    """``arguments`` as a command line to run, e.g. ``command("build-ort --package p")``."""
    return f"{PROGRAM[0]} {arguments}"


class DiffshipError(Exception):
    """A problem the user can fix; the message says what is wrong and what to do about it."""


class PackageError(DiffshipError):
    """A model package is missing, malformed, or does not match its manifest."""


class MissingDependencyError(DiffshipError):
    """An optional library is not installed; the message names the ``pip install`` line that brings it."""


EXTRAS = {
    "onnx": "export",
    "onnxscript": "export",
    "torch": "export",
    "diffusers": "export",
    "transformers": "export",
    "onnx_graphsurgeon": "trt-rtx",
    "onnxruntime": "ort",
    "tensorrt": "trt",
    "tensorrt_rtx": "trt-rtx",
    "matplotlib": "bench",
    "cuda": "cuda",
    "starlette": "serve",
    "uvicorn": "serve",
    "prometheus_client": "serve",
    "ray": "ray",
}


def require(module: str, purpose: str) -> ModuleType:
    """``import module``, or a ``MissingDependencyError`` naming the extra that installs it (never an ImportError)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        extra = EXTRAS.get(module.split(".")[0])
        hint = f"pip install 'diffship[{extra}]'" if extra else f"pip install {module.split('.')[0]}"
        raise MissingDependencyError(f"{purpose} needs {module.split('.')[0]}, which is not installed: {hint}") from None
