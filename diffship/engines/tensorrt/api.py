"""Which TensorRT library provides the API, and which GPU (if any) this machine has.

Full TensorRT (``tensorrt``) and TensorRT-RTX (``tensorrt_rtx``) expose the same Python API for what we use; the
differences are data (``Library``). Code that drives the API reads it as ``tensorrt_api.trt``: type-checked against
the ``tensorrt`` stubs, bound at run time (``bind``) to whichever library was chosen. Both are imported lazily, so
a missing one is an error naming the extra to install, not an ImportError at start-up.
"""

from __future__ import annotations

import functools
import importlib
import re
import shutil
import subprocess
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from diffship.engines.errors import EngineError, MissingLibraryError

if TYPE_CHECKING:
    import tensorrt as trt  # the API as the tensorrt stubs describe it; see bind()
else:
    trt = None

BACKEND_LIBRARIES = {"trt": "tensorrt", "trt-rtx": "tensorrt_rtx"}
EXTRAS = {"tensorrt": "diffship[trt]", "tensorrt_rtx": "diffship[trt-rtx]"}
RTX_ARCHS = ("sm75", "sm80", "sm86", "sm89", "sm120", "sm121")
"""Compute capabilities TensorRT-RTX builds for (no Hopper/Blackwell datacentre parts such as sm90, sm100)."""


@dataclass(frozen=True)
class Library:
    """One TensorRT library and how it differs."""

    backend: str
    name: str
    version: str
    module: ModuleType
    ahead_of_time: bool
    """Builds for listed compute capabilities without a GPU (TensorRT-RTX); else for the GPU present."""


def is_real_library(module: ModuleType) -> bool:
    """``import tensorrt`` also succeeds as an empty namespace package when only the stubs are installed."""
    return hasattr(module, "Builder") and hasattr(module, "__version__")


def load_library(backend: str) -> Library:
    """Import the library for ``backend`` (``trt`` or ``trt-rtx``), or say which extra installs it."""
    if backend not in BACKEND_LIBRARIES:
        raise EngineError(f"unknown TensorRT backend {backend!r}; choose {' or '.join(BACKEND_LIBRARIES)}")
    name = BACKEND_LIBRARIES[backend]
    try:
        module = importlib.import_module(name)
    except ImportError:
        module = None
    if module is None or not is_real_library(module):
        label = "TensorRT-RTX" if backend == "trt-rtx" else "TensorRT"
        raise MissingLibraryError(
            f"{label} is not installed ({name} {'is only type stubs' if module is not None else 'cannot be imported'}): "
            f"pip install '{EXTRAS[name]}'"
        )
    return Library(
        backend=backend,
        name=name,
        version=str(module.__version__),
        module=module,
        ahead_of_time=backend == "trt-rtx",
    )


def available_backends() -> list[str]:
    found = []
    for backend in BACKEND_LIBRARIES:
        try:
            load_library(backend)
            found.append(backend)
        except EngineError:
            pass
    return found


def bind(library: Library) -> None:
    """Make ``tensorrt_api.trt`` the chosen library's module for the code that drives the API."""
    global trt
    trt = library.module


def capturing_logger() -> Any:
    """A logger of the bound library that keeps every message: builder reports and errors come from it, and a failed
    call's own errors can go into a one-line EngineError instead of stderr."""

    class CapturingLogger(trt.ILogger):  # type: ignore[misc]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[tuple[Any, str]] = []

        def log(self, severity: Any, msg: str) -> None:
            self.messages.append((severity, msg))

    return CapturingLogger()


def logged_errors(logger: Any) -> list[str]:
    """The ERROR and INTERNAL_ERROR messages a ``capturing_logger`` received."""
    bad = {trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR}
    return [message for severity, message in logger.messages if severity in bad]


def normalize_arch(text: str) -> str:
    """``sm89``, ``89``, ``8.9`` -> ``sm89``."""
    cleaned = text.strip().lower().replace("sm_", "sm")
    match = re.fullmatch(r"sm(\d{2,3})|(\d+)\.(\d)|(\d{2,3})", cleaned)
    if not match:
        raise EngineError(f"{text!r} is not a compute capability; write it like sm89 or 8.9")
    if match.group(1):
        return f"sm{match.group(1)}"
    if match.group(2):
        return f"sm{match.group(2)}{match.group(3)}"
    return f"sm{match.group(4)}"


@functools.cache
def local_gpu_arch() -> str | None:
    """Compute capability of GPU 0 (``sm90`` ...), or None without an NVIDIA GPU and driver (asked once per process:
    nvidia-smi takes a fraction of a second)."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        result = subprocess.run(
            ["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    if result.returncode != 0 or not lines:
        return None
    try:
        return normalize_arch(lines[0])
    except EngineError:
        return None
