"""Model families as data: one description per family, chosen by the manifest's ``family`` (docs/design.md).

A family says which components a package of it holds and their I/O contract, which of them take the guidance batch,
and what a text-to-image pipeline opens. The exporter pairs each description with torch wrappers
(``exporter/families``); profiles, builders and the runtime read only the description.
"""

from __future__ import annotations

from diffship.core.errors import PackageError
from diffship.core.families.base import Family
from diffship.core.families.sdxl import SDXL, SDXL_REFINER
from diffship.core.families.stable_diffusion import SD1, SD2

FAMILIES: dict[str, Family] = {family.name: family for family in (SD1, SD2, SDXL, SDXL_REFINER)}

__all__ = ["FAMILIES", "SD1", "SD2", "SDXL", "SDXL_REFINER", "Family", "get_family", "register_family"]


def register_family(family: Family) -> None:
    """Make packages whose manifest names ``family.name`` readable (docs/design.md, "Adding a family")."""
    FAMILIES[family.name] = family


def get_family(name: str) -> Family:
    """The description of family ``name``, or a PackageError listing the families this diffship knows."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise PackageError(
            f"model family {name!r} is not known to this diffship (it knows {', '.join(FAMILIES)}); "
            "update diffship or re-export the package"
        ) from None
