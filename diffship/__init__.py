"""diffship: Stable Diffusion pipelines from diffusers to compiled engines, and a runtime that serves them without
PyTorch (docs/design.md).

``from diffship import Pipeline`` loads the runtime lazily, so that ``import diffship.core`` (or the exporter) stays
light. The layers are subpackages: ``diffship.core``, ``diffship.engines``, ``diffship.runtime``, ``diffship.serve``,
``diffship.exporter`` (the torch side), ``diffship.bench`` and the command line (``diffship.cli``).
"""

from __future__ import annotations

from importlib import metadata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffship.runtime.pipeline import Pipeline
    from diffship.runtime.results import GenerationResult

__all__ = ["GenerationResult", "Pipeline"]

try:
    __version__ = metadata.version("diffship")
except metadata.PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "source"


def __getattr__(name: str) -> Any:
    if name in __all__:
        from diffship import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module 'diffship' has no attribute {name!r}")
