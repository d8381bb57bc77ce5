"""What describes a model family: components, their I/O contract, the guided ones, what txt2img opens."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from core.specs import ComponentSpec, PipelineConstants


@dataclass(frozen=True)
class Family:
    """One model family (``sd1``, ``sd2``, ...): everything about it that is not weights."""

    name: str
    description: str
    components: tuple[str, ...]
    """Every component a package of this family holds, in export order."""
    txt2img: tuple[str, ...]
    """The components a text-to-image pipeline opens."""
    guided: frozenset[str]
    """Components called on the ``[unconditional; conditional]`` batch under classifier-free guidance."""
    io_contract: Callable[[PipelineConstants], Mapping[str, ComponentSpec]]
    """The fp32 I/O contract of every component, from the pipeline constants."""
    default_scheduler: str
    """The diffusers scheduler class to use when a package's scheduler config names none."""
    img2img_strength: float = 0.8
    """Image-to-image's default strength (diffusers' img2img pipeline default for the family)."""
    adapters: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Components a LoRA can change -> the prefixes of their keys in LoRA files (diffusers/peft first, then kohya's)."""

    def specs(self, constants: PipelineConstants) -> dict[str, ComponentSpec]:
        return dict(self.io_contract(constants))
