"""The torch side of each model family, behind one protocol (``exporter.families.base.FamilyExporter``).

Adding a family means a description in ``core/families``, a text side in ``runtime/text`` and an exporter here,
registered by family name (docs/design.md, "Adding a family").
"""

from __future__ import annotations

from diffship.core.errors import PackageError
from diffship.exporter.families.base import FamilyExporter, tokenizer_folder
from diffship.exporter.families.sdxl import EXPORTER as XL_EXPORTER
from diffship.exporter.families.stable_diffusion import EXPORTER as SD_EXPORTER

_EXPORTERS: dict[str, FamilyExporter] = {"sd1": SD_EXPORTER, "sd2": SD_EXPORTER, "sdxl": XL_EXPORTER,
                                         "sdxl-refiner": XL_EXPORTER}

__all__ = ["FamilyExporter", "tokenizer_folder", "exporter_for_pipeline", "family_exporter",
           "register_family_exporter"]


def register_family_exporter(family: str, exporter: FamilyExporter) -> None:
    """Make ``family_exporter(family)`` (and so ``export``) use ``exporter``."""
    _EXPORTERS[family] = exporter


def family_exporter(family: str) -> FamilyExporter:
    try:
        return _EXPORTERS[family]
    except KeyError:
        raise PackageError(f"the exporter has no torch side for model family {family!r} (it has "
                           f"{', '.join(_EXPORTERS)})") from None


def exporter_for_pipeline(class_name: str) -> FamilyExporter | None:
    """The exporter that loads diffusers folders of pipeline class ``class_name``; None when none does."""
    for exporter in dict.fromkeys(_EXPORTERS.values()):
        if class_name in exporter.pipeline_classes:
            return exporter
    return None


def pipeline_classes() -> list[str]:
    return [name for exporter in dict.fromkeys(_EXPORTERS.values()) for name in exporter.pipeline_classes]
