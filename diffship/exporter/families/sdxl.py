"""Stable Diffusion XL on the torch side: the two text encoders' boundaries, the UNet with its added conditioning,
and the constants (``core.families.sdxl`` holds the I/O contract). The VAE boundaries are SD's."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from diffship.core.families.sdxl import COMPONENTS, XLConstants
from diffship.core.specs import PipelineConstants
from diffship.exporter.families import stable_diffusion
from diffship.exporter.families.base import tokenizer_folder
from diffship.exporter.sources import SourceError

if TYPE_CHECKING:
    from diffship.exporter.sources import SourceModels


class XLTextEncoderBoundary(nn.Module):
    """input_ids -> the penultimate layer's hidden states (what SDXL reads; diffusers' ``clip_skip`` None), or with
    ``clip_skip`` k the hidden states k layers before that (no final layer norm, as diffusers), and for the second
    encoder its projected pooled output (``text_embeds``, from the last layer whatever ``clip_skip``)."""

    def __init__(self, text_encoder: Any, pooled: bool, clip_skip: int = 0) -> None:
        super().__init__()
        self.text_encoder = text_encoder
        self.pooled = pooled
        self.clip_skip = clip_skip

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        output = self.text_encoder(input_ids=input_ids, output_hidden_states=True, return_dict=True)
        hidden = output.hidden_states[-(self.clip_skip + 2)]
        if self.pooled:
            return hidden, output.text_embeds
        return hidden  # type: ignore[no-any-return]


class XLUNetBoundary(stable_diffusion.UNetBoundary):
    """(sample, timestep, encoder_hidden_states, text_embeds, time_ids) -> model output; up-sampling as SD's boundary
    (any multiple of the VAE factor)."""

    def forward(  # type: ignore[override]
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
        text_embeds: torch.Tensor, time_ids: torch.Tensor,
    ) -> torch.Tensor:
        added = {"text_embeds": text_embeds, "time_ids": time_ids}
        return self.unet(sample, timestep, encoder_hidden_states, added_cond_kwargs=added, return_dict=False)[0]


def derive_constants(source: SourceModels) -> PipelineConstants:
    """SD's constants with every text encoder the source has (the refiner: the second alone), the VAE's
    ``force_upcast``, and SDXL's own part: the pooled prompt's width and the UNet's number of micro-conditioning
    numbers, read from the configs."""
    base = stable_diffusion.derive_constants(source)
    unet_config = source.unet.config
    pooled = int(source.text_encoders["text_encoder_2"].config.projection_dim)
    time_ids, remainder = divmod(int(unet_config.projection_class_embeddings_input_dim) - pooled,
                                 int(unet_config.addition_time_embed_dim))
    if unet_config.addition_embed_type != "text_time" or remainder:
        raise ValueError(f"the UNet is not an SDXL text_time UNet for a {pooled}-wide pooled prompt "
                         f"(addition_embed_type {unet_config.addition_embed_type!r})")
    xl = XLConstants(pooled_size=pooled, time_ids=time_ids, force_zeros_for_empty_prompt=bool(
        source.pipeline_options.get("force_zeros_for_empty_prompt", True)))
    return replace(base, force_upcast=bool(source.vae.config.get("force_upcast", False)), family=xl)


class XLExporter:
    """SDXL base and refiner (``core.families.sdxl``): a refiner's folder has no first text encoder."""

    pipeline_classes: tuple[str, ...] = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline")

    def family_of_folder(self, folder: Path, index: Mapping[str, Any]) -> str:
        # model_index.json names a refiner's absent first encoder null; its folder has none.
        return "sdxl" if (folder / "text_encoder").is_dir() else "sdxl-refiner"

    def text_encoder_class(self, component: str) -> str:
        # Only the second encoder's projected pooled output is read (text_embeds).
        return "CLIPTextModelWithProjection" if component == "text_encoder_2" else "CLIPTextModel"

    def boundary_module(self, component: str, source: SourceModels, clip_skip: int = 0) -> nn.Module:
        """The module exported as ``component``; ``clip_skip`` as diffusers' (0: its None) for both text encoders."""
        if component in source.text_encoders:
            return XLTextEncoderBoundary(source.text_encoders[component], pooled=component == "text_encoder_2",
                                         clip_skip=clip_skip).eval()
        if component == "unet":
            return XLUNetBoundary(source.unet).eval()
        if component in ("vae_decoder", "vae_encoder"):
            return stable_diffusion.vae_or_unet_boundary(component, source)
        raise ValueError(f"unknown component {component!r}; components are {', '.join(COMPONENTS)}")

    def adapter_root(self, component: str, source: SourceModels) -> nn.Module | None:
        return {"unet": source.unet}.get(component)

    def derive_constants(self, source: SourceModels) -> PipelineConstants:
        return derive_constants(source)

    def max_clip_skip(self, source: SourceModels) -> int:
        # SDXL already reads the penultimate layer of each encoder.
        return min(int(e.config.num_hidden_layers) for e in source.text_encoders.values()) - 2

    def reference_pipeline(self, source: SourceModels, task: str) -> Any:
        import diffusers
        from transformers import CLIPTokenizer

        refiner = source.family == "sdxl-refiner"
        if task == "inpaint" or (refiner and task == "txt2img"):
            raise SourceError(f"no {task} reference for {source.family} packages (SDXL: text-to-image and "
                              "image-to-image; the refiner: image-to-image)")
        tokenizers = {tokenizer_folder(component): CLIPTokenizer.from_pretrained(str(folder))
                      for component, folder in source.tokenizers.items()}
        parts = {
            "vae": source.vae, "text_encoder": source.text_encoders.get("text_encoder"),
            "text_encoder_2": source.text_encoders["text_encoder_2"], "tokenizer": tokenizers.get("tokenizer"),
            "tokenizer_2": tokenizers["tokenizer_2"], "unet": source.unet, "scheduler": source.diffusers_scheduler(),
            "add_watermarker": False,
            "force_zeros_for_empty_prompt": bool(source.pipeline_options.get("force_zeros_for_empty_prompt", True)),
        }
        if task == "txt2img":
            return diffusers.StableDiffusionXLPipeline(**parts)
        return diffusers.StableDiffusionXLImg2ImgPipeline(**parts, requires_aesthetics_score=refiner)


EXPORTER = XLExporter()
