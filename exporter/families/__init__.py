"""The torch side of each model family: boundary modules and the constants read from the models' configs.

Adding a family means a description in ``core/families`` and a module here with
``boundary_module(component, source, clip_skip)`` and ``derive_constants(source)`` (docs/design.md, "Adding a family").
"""

from __future__ import annotations

from types import ModuleType

from core.errors import PackageError
from exporter.families import sdxl, stable_diffusion

WRAPPERS: dict[str, ModuleType] = {"sd1": stable_diffusion, "sd2": stable_diffusion, "sdxl": sdxl, "sdxl-refiner": sdxl}


def family_wrappers(family: str) -> ModuleType:
    try:
        return WRAPPERS[family]
    except KeyError:
        raise PackageError(f"the exporter has no wrappers for model family {family!r} (it has {', '.join(WRAPPERS)})") from None
