"""What the torch side of a model family provides (docs/design.md, "Adding a family"): where its modules come from,
the module exported for each component, the constants read from the models' configs, and diffusers' reference
pipeline over the same modules. ``exporter.sources`` and ``exporter.package`` ask only this."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from diffship.core.specs import PipelineConstants

if TYPE_CHECKING:
    from torch import nn

    from diffship.exporter.sources import SourceModels

def tokenizer_folder(text_encoder: str) -> str:
    """diffusers' folder for a text encoder's tokenizer, in a pipeline folder and so in a package: ``text_encoder`` ->
    ``tokenizer``, ``text_encoder_2`` -> ``tokenizer_2``."""
    return text_encoder.replace("text_encoder", "tokenizer", 1)


class FamilyExporter(Protocol):
    """The torch side of one or more families (SD 1.x and 2.x share one)."""

    pipeline_classes: tuple[str, ...]
    """diffusers pipeline classes (``model_index.json``'s ``_class_name``) whose folders this exporter loads."""

    def family_of_folder(self, folder: Path, index: Mapping[str, Any]) -> str:
        """Which family a diffusers folder of one of ``pipeline_classes`` holds (from its configs)."""
        ...

    def text_encoder_class(self, component: str) -> str:
        """The transformers class of text encoder ``component`` (``CLIPTextModel``, ...)."""
        ...

    def boundary_module(self, component: str, source: SourceModels, clip_skip: int = 0) -> nn.Module:
        """The module exported as ``component``: exactly the contract's inputs and outputs. ``clip_skip`` as
        diffusers' (0: its None), built into the text encoders."""
        ...

    def adapter_root(self, component: str, source: SourceModels) -> nn.Module | None:
        """The diffusers/transformers model whose module paths a LoRA's keys name (components that take one)."""
        ...

    def derive_constants(self, source: SourceModels) -> PipelineConstants:
        """The numbers the runtime needs, read from the models' own configs (never assumed)."""
        ...

    def max_clip_skip(self, source: SourceModels) -> int:
        """The most layers ``clip_skip`` may skip and still leave one to read in every text encoder."""
        ...

    def reference_pipeline(self, source: SourceModels, task: str) -> Any:
        """diffusers' own pipeline of this family over the source's modules, for ``task`` (``txt2img``,
        ``img2img``, ``inpaint``); a SourceError for a task the family has no reference for."""
        ...
