"""Stable Diffusion XL on the torch side: the two text encoders' boundaries, the UNet with its added conditioning,
and the constants (``core.families.sdxl`` holds the I/O contract). The VAE boundaries are SD's."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn

from core.families.sdxl import COMPONENTS
from core.specs import PipelineConstants
from exporter.families import stable_diffusion
from exporter.sources import SourceModels


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


def boundary_module(component: str, source: SourceModels, clip_skip: int = 0) -> nn.Module:
    """The module exported as ``component``; ``clip_skip`` as diffusers' (0: its None) for both text encoders."""
    if component == "text_encoder":
        return XLTextEncoderBoundary(source.text_encoder, pooled=False, clip_skip=clip_skip).eval()
    if component == "text_encoder_2":
        return XLTextEncoderBoundary(source.text_encoder_2, pooled=True, clip_skip=clip_skip).eval()
    if component == "unet":
        return XLUNetBoundary(source.unet).eval()
    if component in ("vae_decoder", "vae_encoder"):
        return stable_diffusion.boundary_module(component, source)
    raise ValueError(f"unknown component {component!r}; components are {', '.join(COMPONENTS)}")


def adapter_root(component: str, source: SourceModels) -> nn.Module | None:
    return {"unet": source.unet}.get(component)


def derive_constants(source: SourceModels) -> PipelineConstants:
    """SD's constants plus what the second encoder and the UNet's added conditioning need, read from the configs (the
    refiner, with no first encoder: ``text_hidden_size`` 0, the text length and pad token of the second)."""
    assert source.text_encoder_2 is not None and source.tokenizer_2_dir is not None
    refiner = source.text_encoder is None
    base = stable_diffusion.derive_constants(source, source.text_encoder_2, source.tokenizer_2_dir) if refiner \
        else stable_diffusion.derive_constants(source)
    unet_config = source.unet.config
    pooled = int(source.text_encoder_2.config.projection_dim)
    time_ids, remainder = divmod(int(unet_config.projection_class_embeddings_input_dim) - pooled,
                                 int(unet_config.addition_time_embed_dim))
    if unet_config.addition_embed_type != "text_time" or remainder:
        raise ValueError(f"the UNet is not an SDXL text_time UNet for a {pooled}-wide pooled prompt "
                         f"(addition_embed_type {unet_config.addition_embed_type!r})")
    return replace(
        base,
        text_hidden_size=0 if refiner else base.text_hidden_size,
        text_hidden_size_2=int(source.text_encoder_2.config.hidden_size),
        pad_token_2=stable_diffusion.read_pad_token(source.tokenizer_2_dir),
        pooled_size=pooled,
        time_ids=time_ids,
        force_zeros_for_empty_prompt=bool(source.pipeline_options.get("force_zeros_for_empty_prompt", True)),
        force_upcast=bool(source.vae.config.get("force_upcast", False)),
    )
