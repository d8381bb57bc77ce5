"""Backends as the unit of extension: one protocol, one registry (docs/design.md, "Adding a backend").

A backend picks the engine set to run on this machine (``select``), opens engines from it (``open``), and may build
engine sets (``build``, importing its build-time code only when called). ``runtime.Pipeline`` and the CLI reach every
backend through ``get_backend(name)``; the run-time modules of a backend never import its build-time ones.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from core.manifest import EngineSet
from core.package import ModelPackage
from engines.base import EngineBase
from engines.errors import EngineError


@dataclass(frozen=True)
class OpenRequest:
    """What a caller asks of a backend when opening a package's engines."""

    precision: str | None = None
    """``fp32``/``fp16``; None: the backend's default for the package."""
    engine_set: str | None = None
    """An ``engines/`` folder by name; None: the backend's choice for this machine."""
    device: str = "auto"
    threads: int | None = None
    cuda_graphs: bool = False
    options: Any = None
    """Backend-specific options (``OrtOptions`` for ``ort``) that override the fields above where they overlap."""
    weights: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Per component, weights (numpy arrays by the graph's name, as its weight map gives them) that replace the
    engine's own: LoRA-merged weights. A backend that cannot take them for a component raises EngineError."""


@dataclass(frozen=True)
class Selection:
    """What a backend decided to run: the precision and the engine set (None: the package's exported ONNX)."""

    backend: str
    precision: str
    engine_set: EngineSet | None = None

    def describe(self) -> str:
        source = f"engines/{self.engine_set.name}" if self.engine_set is not None else "the exported ONNX"
        return f"{self.backend} {self.precision} ({source})"


class Backend(Protocol):
    name: str

    def select(self, package: ModelPackage, request: OpenRequest) -> Selection:
        """The engine set (or exported ONNX) and precision to run on this machine; an error that says what to
        build when there is none."""
        ...

    def open(
        self, package: ModelPackage, selection: Selection, components: Sequence[str], request: OpenRequest
    ) -> dict[str, EngineBase]:
        """``components`` as engines, each file checked against its sha256 first."""
        ...


_BUILTIN = {"ort": "engines.ort:OrtBackend", "trt": "engines.tensorrt:TensorRTBackend"}
_FACTORIES: dict[str, Callable[[], Backend]] = {}


def register_backend(name: str, factory: Callable[[], Backend]) -> None:
    """Make ``get_backend(name)`` (and so ``Pipeline.from_package(backend=name)``) use ``factory()``."""
    _FACTORIES[name] = factory


def backend_names() -> list[str]:
    return [*_BUILTIN, *(name for name in _FACTORIES if name not in _BUILTIN)]


def get_backend(name: str) -> Backend:
    if name in _FACTORIES:
        return _FACTORIES[name]()
    if name not in _BUILTIN:
        raise EngineError(f"unknown backend {name!r}; choose {', '.join(backend_names())}")
    module_name, _, attribute = _BUILTIN[name].partition(":")
    backend: Backend = getattr(importlib.import_module(module_name), attribute)()
    return backend


def open_engines(
    package: ModelPackage, components: Sequence[str], backend: str = "ort", request: OpenRequest | None = None
) -> tuple[dict[str, EngineBase], Selection]:
    """``components`` of ``package`` on ``backend``, and what was chosen; every file is checked against its sha256."""
    chosen = get_backend(backend)
    request = request or OpenRequest()
    selection = chosen.select(package, request)
    return chosen.open(package, selection, components, request), selection


def close_all(engines: dict[str, EngineBase]) -> None:
    for engine in engines.values():
        engine.close()
