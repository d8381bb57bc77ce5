"""What describes a model family: components and their I/O contract, which runtime text side reads its prompts, the
tasks it does, what LoRAs and embeddings may touch, and the type of its own constants (docs/design.md, "Families")."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from diffship.core.specs import ComponentSpec, FamilyConstants, PipelineConstants

TASKS = ("txt2img", "img2img", "inpaint")
"""What a pipeline can be asked to do: from text alone, from an image, repainting the masked part of an image."""

UNET_LATENT_INPUTS = ("sample", "timestep")
"""What the denoising loop itself feeds the UNet; its other inputs are the text side's conditioning."""


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
    text_side: str
    """The runtime text side that turns prompts into the UNet's conditioning (``runtime.text``: ``sd``, ``sdxl``,
    ``sdxl-refiner``)."""
    text_encoders: tuple[str, ...]
    """The components that encode text, in the order their hidden states are joined for the UNet."""
    constants_type: type[FamilyConstants] = FamilyConstants
    """The type of the family's own part of the constants (``PipelineConstants.family``)."""
    tasks: tuple[str, ...] = TASKS
    """What a pipeline of this family does (of ``TASKS``)."""
    refusals: Mapping[str, str] = field(default_factory=dict)
    """Task -> what a user asking for it is told, for tasks the family does not do (else a message from ``tasks``)."""
    handoff: bool = False
    """Takes ``denoising_start``/``denoising_end``: a base model hands its latents to a refiner mid-schedule."""
    img2img_strength: float = 0.8
    """Image-to-image's default strength (diffusers' img2img pipeline default for the family)."""
    adapters: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Components a LoRA can change -> the prefixes of their keys in LoRA files (diffusers/peft first, then kohya's)."""
    embeddings: tuple[str, ...] = ()
    """Text encoders whose token embeddings a textual-inversion embedding extends (the order its vectors come in)."""
    constants_rule: Callable[[PipelineConstants], str | None] | None = None
    """What else the family's constants must satisfy (SDXL: how many time ids); the reason they do not, or None."""
    preview_factors: tuple[tuple[float, float, float], ...] = ()
    """Live previews: one (R, G, B) weight row per latent channel, the web UI's "Approx cheap" latent -> RGB map
    (``rgb = latents . factors``, then ``(rgb + 1) / 2``); empty: the family has no cheap preview."""

    def check_constants(self, constants: PipelineConstants) -> str | None:
        """Why ``constants`` (a manifest's) cannot be this family's, or None: its text encoders, in its order, the
        type of its own part, and its rule."""
        encoders = tuple(encoder.component for encoder in constants.text_encoders)
        if encoders != self.text_encoders:
            return (f"text_encoders are {', '.join(encoders) or 'none'}; a {self.name} package has "
                    f"{', '.join(self.text_encoders)}, in that order")
        if not isinstance(constants.family, self.constants_type):
            return f"family must be {self.name}'s {self.constants_type.__name__}"
        return self.constants_rule(constants) if self.constants_rule is not None else None

    def specs(self, constants: PipelineConstants) -> dict[str, ComponentSpec]:
        return dict(self.io_contract(constants))

    def unet_conditioning(self, constants: PipelineConstants) -> tuple[str, ...]:
        """The UNet inputs the text side fills: every input of the contract's UNet but the latents and timestep."""
        unet = self.io_contract(constants)["unet"]
        return tuple(spec.name for spec in unet.inputs if spec.name not in UNET_LATENT_INPUTS)

    def refusal(self, task: str) -> str | None:
        """Why a pipeline of this family cannot do ``task``; None when it can."""
        if task in self.tasks:
            return None
        return self.refusals.get(task) or f"a {self.name} package does {', '.join(self.tasks)}, not {task}"
