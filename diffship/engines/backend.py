"""Backends as the unit of extension: one protocol, one registry (docs/design.md, "Adding a backend").

A backend turns what the user asked for into its own options (``options``: refusing what it does not take), picks the
engine set to run on this machine (``select``) and opens engines from it (``open``); its build-time code lives in its
``build`` module, which only the build commands import. ``runtime.Pipeline`` and the CLI reach every backend through
``get_backend(name)``; the run-time modules of a backend never import its build-time ones.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from diffship.core.manifest import EngineSet
from diffship.core.package import ModelPackage
from diffship.engines.base import EngineBase
from diffship.engines.errors import EngineError


class BackendOptions:
    """Base of every backend's own options record (``OrtOptions`` for ``ort``, ``TrtOptions`` for ``trt``): what
    ``OpenRequest.options`` carries, as the backend's ``options(settings)`` built it."""


OptionsT = TypeVar("OptionsT", bound=BackendOptions)


@dataclass(frozen=True)
class OpenSettings:
    """What a user asks of any backend when opening engines (the CLI's ``--device``, ``--threads``,
    ``--cuda-graphs``). Each backend turns them into its own options and refuses, with the reason, what it does not
    take: a setting is never silently ignored."""

    device: str = "auto"
    """``auto``, ``cpu`` or ``cuda``."""
    threads: int | None = None
    """Intra-op threads; None: the backend's default."""
    cuda_graphs: bool = False
    options: BackendOptions | None = None
    """The backend's own options record, given whole (e.g. ``OrtOptions``); it overrides the fields above where they
    overlap. Another backend's record is refused."""


@dataclass(frozen=True)
class OpenRequest:
    """What a caller asks of a backend when opening a package's engines."""

    precision: str | None = None
    """``fp32``/``fp16``; None: the backend's default for the package."""
    engine_set: str | None = None
    """An ``engines/`` folder by name; None: the backend's choice for this machine."""
    options: BackendOptions | None = None
    """The backend's own options (``Backend.options`` builds them from ``OpenSettings``); None: its defaults for
    ``OpenSettings()``. Another backend's record is refused."""
    weights: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Per component, weights (numpy arrays by the graph's name, as its weight map gives them) that replace the
    engine's own: LoRA-merged weights. A backend that cannot take them for a component raises EngineError."""


def own_options(backend: str, kind: type[OptionsT], given: BackendOptions | None) -> OptionsT | None:
    """``given`` when it is ``backend``'s own options record (``kind``); None when none was given; else an error."""
    if given is None or isinstance(given, kind):
        return given
    raise EngineError(f"the {backend} backend takes {kind.__name__}, not {type(given).__name__} (another backend's "
                      "options)")


def refuse_settings(backend: str, settings: OpenSettings, devices: tuple[str, ...], why: str,
                    threads: bool = False, cuda_graphs: bool = False) -> None:
    """Refuse the generic settings ``backend`` does not take (``why`` says where it runs and what to use instead)."""
    if settings.device not in devices:
        raise EngineError(f"the {backend} backend does not run on device {settings.device!r} ({why}); it takes "
                          f"device {' or '.join(repr(d) for d in devices)}")
    if settings.threads is not None and not threads:
        raise EngineError(f"the {backend} backend takes no thread count (threads={settings.threads}): {why}")
    if settings.cuda_graphs and not cuda_graphs:
        raise EngineError(f"the {backend} backend does not capture CUDA graphs: {why}")


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

    def options(self, settings: OpenSettings) -> BackendOptions:
        """This backend's options for what the user asked (``OpenSettings``); an EngineError that says why for
        whatever it does not take (``--threads`` on TensorRT, ``--device cpu`` on a GPU-only backend, ...)."""
        ...

    def select(self, package: ModelPackage, request: OpenRequest) -> Selection:
        """The engine set (or exported ONNX) and precision to run on this machine; an error that says what to
        build when there is none."""
        ...

    def open(
        self, package: ModelPackage, selection: Selection, components: Sequence[str], request: OpenRequest
    ) -> dict[str, EngineBase]:
        """``components`` as engines, each file checked against its sha256 first."""
        ...


_BUILTIN = {"ort": "diffship.engines.ort:OrtBackend", "trt": "diffship.engines.tensorrt:TensorRTBackend"}
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

