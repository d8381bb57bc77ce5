"""DeepCache (Ma et al., CVPR 2024) on the torch side: the UNet split at a branch into a full step that also returns
the cached feature and a shallow step that takes it, over diffusers' own UNet modules (docs/design.md, "Fewer FLOPs:
guidance schedule and feature caching").

A branch is ``(block, layer)``: block ``b`` of the down path and its mirror in the up path, layer ``l`` of that up
block counted from the skip connection nearest the output (0) inwards, as the DeepCache authors' ``DeepCacheSDHelper``
numbers them (``cache_branch_id = block * 3 + layer`` for UNets with two layers per block; here ``block * (layers
per block + 1) + layer``). A shallow step runs conv_in and the time embedding, the down path up to the branch (blocks
before ``b``, and layers before ``l`` of block ``b``), then the up path from the branch out, starting from the cached
feature: the hidden state that entered up layer ``l`` of block ``b`` at the last full step. Every skip connection the
shallow up path reads comes from its own fresh down path, so the cached feature is the only state kept: exactly what
``DeepCacheSDHelper`` computes with its module-output cache (tests/exporter/test_deepcache.py compares the two).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from diffship.core.specs import CACHE_COMPONENTS, ComponentSpec, TensorSpec

FULL, SHALLOW = CACHE_COMPONENTS
"""The two components a package exported with ``--cache-branch`` holds beside ``unet``."""
FEATURE = "cached_feature"


@dataclass(frozen=True)
class Branch:
    block: int
    layer: int

    @classmethod
    def from_id(cls, branch_id: int, unet_config: Any) -> Branch:
        """``export --cache-branch N``: block ``N // (layers + 1)``, layer ``N % (layers + 1)`` (module docstring)."""
        layers = int(unet_config.layers_per_block) + 1
        blocks = len(unet_config.down_block_types)
        if isinstance(branch_id, bool) or not isinstance(branch_id, int) or not 0 <= branch_id < blocks * layers:
            raise ValueError(f"cache branch {branch_id!r}: this UNet has {blocks} blocks of {layers} up layers, so a "
                             f"branch from 0 (the shallowest: most reuse, most speed) to {blocks * layers - 1}")
        return cls(branch_id // layers, branch_id % layers)

    def describe(self) -> dict[str, int]:
        return {"block": self.block, "layer": self.layer}


class CachedUNet(nn.Module):
    """diffusers' ``UNet2DConditionModel.forward`` for the SD / SDXL configurations (no ControlNet, adapters, masks
    or class labels), with the up path split at ``branch``. ``unet`` is the export boundary's UNet (its up-sampling
    to the skip connection's size, exporter/families/stable_diffusion.py)."""

    def __init__(self, unet: Any, branch: Branch) -> None:
        super().__init__()
        config = unet.config
        unsupported = [name for name, value in (
            ("center_input_sample", config.center_input_sample), ("class_embed_type", config.class_embed_type),
            ("time_cond_proj_dim", config.time_cond_proj_dim), ("encoder_hid_dim_type", config.encoder_hid_dim_type),
            ("addition_embed_type", config.addition_embed_type not in (None, "text_time"))) if value]
        if unsupported:
            raise ValueError(f"DeepCache graphs are made for SD and SDXL UNets; this one sets {', '.join(unsupported)}")
        self.unet, self.branch = unet, branch

    def _prelude(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor | None,
                 added: dict[str, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        unet = self.unet
        emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), None)
        aug = unet.get_aug_embed(emb=emb, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added or {})
        emb = emb + aug if aug is not None else emb
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
        states = unet.process_encoder_hidden_states(encoder_hidden_states=encoder_hidden_states,
                                                    added_cond_kwargs=added or {})
        return unet.conv_in(sample), emb, states

    def _down_layer(self, block: Any, index: int, hidden: torch.Tensor, emb: torch.Tensor,
                    states: torch.Tensor) -> torch.Tensor:
        hidden = block.resnets[index](hidden, emb)
        if getattr(block, "attentions", None) is not None and len(block.attentions) > index:
            hidden = block.attentions[index](hidden, encoder_hidden_states=states, return_dict=False)[0]
        return hidden  # type: ignore[no-any-return]

    def _down(self, hidden: torch.Tensor, emb: torch.Tensor, states: torch.Tensor,
              stop: Branch | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The down path (to its end, or up to ``stop``'s layer of ``stop``'s block); the skip connections."""
        skips = [hidden]
        for b, block in enumerate(self.unet.down_blocks):
            for index in range(len(block.resnets)):
                if stop is not None and (b, index) == (stop.block, stop.layer):
                    return hidden, skips
                hidden = self._down_layer(block, index, hidden, emb, states)
                skips.append(hidden)
            if stop is not None and b == stop.block:
                return hidden, skips
            if block.downsamplers is not None:
                for downsampler in block.downsamplers:
                    hidden = downsampler(hidden)
                skips.append(hidden)
        return hidden, skips

    def _up_block(self, block: Any, first: int, hidden: torch.Tensor, skips: list[torch.Tensor], emb: torch.Tensor,
                  states: torch.Tensor, size: Any, record: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Up block from its resnet ``first`` on; the hidden state entering resnet ``record``, when asked."""
        recorded = None
        for index in range(first, len(block.resnets)):
            if index == record:
                recorded = hidden
            hidden = torch.cat([hidden, skips.pop()], dim=1)
            hidden = block.resnets[index](hidden, emb)
            if getattr(block, "attentions", None) is not None:
                hidden = block.attentions[index](hidden, encoder_hidden_states=states, return_dict=False)[0]
        if block.upsamplers is not None:
            for upsampler in block.upsamplers:
                hidden = upsampler(hidden, size)
        return hidden, recorded

    def _up(self, hidden: torch.Tensor, skips: list[torch.Tensor], emb: torch.Tensor, states: torch.Tensor,
            start: Branch | None, record: Branch | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        count = len(self.unet.up_blocks)
        recorded = None
        for i, block in enumerate(self.unet.up_blocks):
            b = count - 1 - i  # the mirrored down block
            if start is not None and b > start.block:
                continue
            layers = len(block.resnets)
            first = layers - 1 - start.layer if start is not None and b == start.block else 0
            ahead = skips[:-(layers - first)] if layers - first else skips
            size = ahead[-1].shape[2:] if i < count - 1 else None  # up-sample to the next skip's size
            want = layers - 1 - record.layer if record is not None and b == record.block else None
            hidden, seen = self._up_block(block, first, hidden, skips, emb, states, size, want)
            recorded = seen if seen is not None else recorded
        unet = self.unet
        if unet.conv_norm_out is not None:
            hidden = unet.conv_act(unet.conv_norm_out(hidden))
        return unet.conv_out(hidden), recorded

    def shallow_reads_text(self) -> bool:
        """Whether any layer of the shallow step attends to the text (SDXL's outer blocks do not: its shallow step
        reads the prompt only through the added conditioning)."""
        branch, count = self.branch, len(self.unet.up_blocks)
        for b, block in enumerate(self.unet.down_blocks[: branch.block + 1]):
            layers = len(block.resnets) if b < branch.block else branch.layer
            if layers and getattr(block, "attentions", None) is not None:
                return True
        return any(getattr(block, "attentions", None) is not None
                   for i, block in enumerate(self.unet.up_blocks) if count - 1 - i <= branch.block)

    def full(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
             added: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole UNet: (model output, the feature at the branch)."""
        hidden, emb, states = self._prelude(sample, timestep, encoder_hidden_states, added)
        hidden, skips = self._down(hidden, emb, states, None)
        hidden = self.unet.mid_block(hidden, emb, encoder_hidden_states=states)
        output, feature = self._up(hidden, skips, emb, states, None, self.branch)
        assert feature is not None
        return output, feature

    def shallow(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor | None,
                feature: torch.Tensor, added: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The layers outside the branch, from ``feature`` (a full step's, at the same or an earlier step)."""
        hidden, emb, states = self._prelude(sample, timestep, encoder_hidden_states, added)
        _, skips = self._down(hidden, emb, states, self.branch)
        output, _ = self._up(feature, skips, emb, states, self.branch, None)
        return output


ADDED = ("text_embeds", "time_ids")
"""SDXL's added conditioning, the UNet contract's inputs after the text states."""


def _added(tensors: Any) -> dict[str, torch.Tensor] | None:
    """SDXL's added conditioning by name; None for SD (no added inputs)."""
    return dict(zip(ADDED, tensors, strict=True)) if len(tensors) else None


class CacheFullBoundary(nn.Module):
    """The UNet contract's inputs -> (model_output, cached_feature)."""

    def __init__(self, cached: CachedUNet) -> None:
        super().__init__()
        self.cached = cached

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                *added: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cached.full(sample, timestep, encoder_hidden_states, _added(added))


class CacheShallowBoundary(nn.Module):
    """The UNet contract's inputs (without the text states where no shallow layer reads them) and cached_feature
    (last) -> model_output."""

    def __init__(self, cached: CachedUNet) -> None:
        super().__init__()
        self.cached = cached
        self.text = cached.shallow_reads_text()

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        states = rest[0] if self.text else None
        *added, feature = rest[1:] if self.text else rest
        return self.cached.shallow(sample, timestep, states, feature, _added(added))


def cache_specs(unet: ComponentSpec, channels: int, shallow_text: bool = True) -> dict[str, ComponentSpec]:
    """The two graphs' contracts from the UNet's: the feature is [batch, channels, cache_height, cache_width] (the
    branch block's resolution: the latent size halved, rounded up, once per block before it); the shallow graph
    takes the text states only where it reads them (``CachedUNet.shallow_reads_text``)."""
    feature = TensorSpec(FEATURE, "float32", ("batch", channels, "cache_height", "cache_width"))
    shallow = tuple(t for t in unet.inputs if shallow_text or t.name != "encoder_hidden_states")
    return {FULL: ComponentSpec(FULL, inputs=unet.inputs, outputs=(*unet.outputs, feature)),
            SHALLOW: ComponentSpec(SHALLOW, inputs=(*shallow, feature), outputs=unet.outputs)}


def feature_channels(unet: Any, branch: Branch) -> int:
    """Channels of the hidden state entering up layer ``branch.layer`` of the branch's up block."""
    block = unet.up_blocks[len(unet.up_blocks) - 1 - branch.block]
    resnet = block.resnets[len(block.resnets) - 1 - branch.layer]
    skip_channels = _skip_channels(unet, branch)
    return int(resnet.conv1.in_channels) - skip_channels


def _skip_channels(unet: Any, branch: Branch) -> int:
    """Channels of the skip connection up layer ``branch.layer`` of the branch's up block joins."""
    if branch.layer == 0:  # the block's entry: conv_in's output, or the previous block's down-sampled output
        if branch.block == 0:
            return int(unet.conv_in.out_channels)
        return int(unet.config.block_out_channels[branch.block - 1])
    return int(unet.config.block_out_channels[branch.block])


def cache_dims(dims: dict[str, int], branch: Branch) -> dict[str, int]:
    """``dims`` with the feature's size: the latent size halved (rounded up, as the strided convolutions do) once
    per block before the branch's."""
    height, width = dims["latent_height"], dims["latent_width"]
    for _ in range(branch.block):
        height, width = -(-height // 2), -(-width // 2)
    return {**dims, "cache_height": height, "cache_width": width}
