"""Stable Diffusion 1.x / 2.x on the torch side: one small module per export boundary, and the constants.

The wrappers fix what crosses into ONNX: plain tensors in, plain tensors out, no dicts, no ``return_dict`` flags, no
optional arguments, exactly the I/O contract of ``core.families.stable_diffusion``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn import functional as F

from diffship.core.families.stable_diffusion import COMPONENTS
from diffship.core.specs import PipelineConstants, TextEncoderConstants
from diffship.exporter.families.base import tokenizer_folder
from diffship.exporter.sources import SourceError

if TYPE_CHECKING:
    from diffship.exporter.sources import SourceModels


class TextEncoderBoundary(nn.Module):
    """input_ids -> (last_hidden_state, pooler_output); no attention mask, as diffusers' SD pipelines call it. With
    ``clip_skip`` k > 0 the first output is, as diffusers' ``encode_prompt`` computes it, the hidden states k layers
    before the last, through the final layer norm."""

    def __init__(self, text_encoder: Any, clip_skip: int = 0) -> None:
        super().__init__()
        self.text_encoder = text_encoder
        self.clip_skip = clip_skip

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output = self.text_encoder(input_ids=input_ids, output_hidden_states=self.clip_skip > 0, return_dict=True)
        if self.clip_skip == 0:
            return output.last_hidden_state, output.pooler_output
        # transformers 5.6 moved the layers of CLIPTextModel from its text_model onto the model itself.
        final_layer_norm = getattr(self.text_encoder, "text_model", self.text_encoder).final_layer_norm
        hidden = final_layer_norm(output.hidden_states[-(self.clip_skip + 1)])
        return hidden, output.pooler_output


UPSAMPLE_TO_SKIP = 62
"""A ``num_upsamplers`` that no latent size is a multiple of 2**it (which still fits the graph's int64), so that the
UNet always up-samples to the size of the skip connection it joins (diffusers' path for sizes that are not multiples of
8 latents) instead of doubling."""


class SkipSizedUpsample(nn.Module):
    """diffusers' ``Upsample2D`` (nearest interpolation, then its convolution) without its two memory workarounds,
    ``contiguous()`` above 64 images or 2**31 elements: they change no number, but their shape tests are branches that
    torch.export cannot keep symbolic (it specialises the batch to < 64, fails, and exports again more slowly)."""

    def __init__(self, upsample: nn.Module) -> None:
        super().__init__()
        self.upsample = upsample

    def forward(self, hidden_states: torch.Tensor, output_size: Any = None, *args: Any, **kwargs: Any) -> torch.Tensor:
        if output_size is None:
            hidden_states = F.interpolate(hidden_states, scale_factor=2.0, mode="nearest")
        else:
            hidden_states = F.interpolate(hidden_states, size=output_size, mode="nearest")
        conv: Any = self.upsample.conv if self.upsample.name == "conv" else self.upsample.Conv2d_0
        return conv(hidden_states)  # type: ignore[no-any-return]


def _plain_upsample(module: nn.Module) -> bool:
    """An ``Upsample2D`` that is nearest interpolation then a convolution, which SkipSizedUpsample reproduces."""
    settings: Any = module
    return bool(type(module).__name__ == "Upsample2D" and getattr(module, "norm", None) is None
                and settings.interpolate and settings.use_conv and not settings.use_conv_transpose)


def _shallow(module: nn.Module) -> nn.Module:
    # A copy that shares parameters and submodules but has its own attributes and child table, so that what is
    # replaced in the copy is not replaced in the source (diffusers' reference keeps its own modules).
    clone = copy.copy(module)
    clone._modules = dict(module._modules)
    return clone


class UNetBoundary(nn.Module):
    """(sample, timestep[batch], encoder_hidden_states) -> model output (noise, or v for v-prediction).

    diffusers doubles at each up-sampling when the latent size is a multiple of 2**num_upsamplers and takes the skip
    connection's size otherwise, a branch on the input's shape that one traced graph cannot hold. The boundary always
    takes the second path, which gives the same numbers at every size (nearest interpolation to the same size), so the
    exported graph serves every size diffusers accepts: any multiple of the VAE's factor. The source UNet is left as
    it was: the boundary holds a shallow copy with the same weights.
    """

    def __init__(self, unet: Any) -> None:
        super().__init__()
        clone: Any = _shallow(unet)
        clone.num_upsamplers = UPSAMPLE_TO_SKIP
        blocks = []
        for block in unet.up_blocks:
            upsamplers = getattr(block, "upsamplers", None)
            if upsamplers is not None and all(_plain_upsample(u) for u in upsamplers):
                block = _shallow(block)
                block.upsamplers = nn.ModuleList([SkipSizedUpsample(u) for u in upsamplers])
            blocks.append(block)
        clone.up_blocks = nn.ModuleList(blocks)
        self.unet = clone

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]


class VaeDecoderBoundary(nn.Module):
    """Scaled latents -> image in [-1, 1] (post_quant_conv and decoder). Unscaling stays in the runtime."""

    def __init__(self, vae: Any) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latent_sample: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent_sample, return_dict=False)[0]


class VaeEncoderBoundary(nn.Module):
    """Image in [-1, 1] -> latent distribution parameters (mean and log-variance stacked on channels)."""

    def __init__(self, vae: Any) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(sample).latent_dist.parameters


def read_pad_token(tokenizer_dir: Path) -> str:
    """The pad token a tokenizer folder's config names (a string, or an AddedToken object's content)."""
    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    pad_token = config.get("pad_token", "<|endoftext|>")
    return str(pad_token["content"] if isinstance(pad_token, dict) else pad_token)


def text_encoder_constants(source: SourceModels, component: str) -> TextEncoderConstants:
    """What the runtime and the builders need of one text encoder, from its config and its tokenizer folder."""
    encoder, tokenizer_dir = source.text_encoders[component], source.tokenizers[component]
    return TextEncoderConstants(component=component, tokenizer=tokenizer_folder(component),
                                hidden_size=int(encoder.config.hidden_size), pad_token=read_pad_token(tokenizer_dir),
                                vocab_size=int(encoder.config.vocab_size))


def derive_constants(source: SourceModels) -> PipelineConstants:
    """The numbers the runtime needs, read from the models' own configs (never assumed). The text window is the
    first text encoder's tokenizer's."""
    unet_config, vae_config = source.unet.config, source.vae.config
    vae_scale_factor = 2 ** (len(vae_config.block_out_channels) - 1)
    first = next(iter(source.text_encoders))
    tokenizer_config = json.loads((source.tokenizers[first] / "tokenizer_config.json").read_text(encoding="utf-8"))
    window = tokenizer_config.get("model_max_length", source.text_encoders[first].config.max_position_embeddings)
    sample_size = unet_config.sample_size
    height, width = (sample_size, sample_size) if isinstance(sample_size, int) else tuple(sample_size)
    return PipelineConstants(
        latent_channels=int(vae_config.latent_channels),
        vae_scale_factor=vae_scale_factor,
        scaling_factor=float(vae_config.scaling_factor),
        shift_factor=getattr(vae_config, "shift_factor", None),
        prediction_type=source.scheduler_config().get("prediction_type", "epsilon"),
        default_height=int(height) * vae_scale_factor,
        default_width=int(width) * vae_scale_factor,
        text_max_length=int(window),
        text_encoders=tuple(text_encoder_constants(source, component) for component in source.text_encoders),
        spatial_multiple=vae_scale_factor,  # the UNet boundary takes any latent size (see UNetBoundary)
        unet_in_channels=int(unet_config.in_channels),
    )

REFERENCE_PIPELINES = {"txt2img": "StableDiffusionPipeline", "img2img": "StableDiffusionImg2ImgPipeline",
                       "inpaint": "StableDiffusionInpaintPipeline"}


class StableDiffusionExporter:
    """SD 1.x and 2.x: one CLIP text encoder, a UNet, the VAE (``core.families.stable_diffusion``)."""

    pipeline_classes: tuple[str, ...] = tuple(REFERENCE_PIPELINES.values())

    def family_of_folder(self, folder: Path, index: Mapping[str, Any]) -> str:
        try:
            unet = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SourceError(f"{folder / 'unet' / 'config.json'} cannot be read: {exc}") from None
        # SD 2.x's UNet projects its attention inputs with linear layers (OpenCLIP); SD 1.x's with 1x1 convolutions.
        return "sd2" if unet.get("use_linear_projection") else "sd1"

    def text_encoder_class(self, component: str) -> str:
        return "CLIPTextModel"

    def boundary_module(self, component: str, source: SourceModels, clip_skip: int = 0) -> nn.Module:
        if component == "text_encoder":
            return TextEncoderBoundary(source.text_encoders["text_encoder"], clip_skip).eval()
        return vae_or_unet_boundary(component, source)

    def adapter_root(self, component: str, source: SourceModels) -> nn.Module | None:
        return {"unet": source.unet, **source.text_encoders}.get(component)

    def derive_constants(self, source: SourceModels) -> PipelineConstants:
        return derive_constants(source)

    def max_clip_skip(self, source: SourceModels) -> int:
        return int(source.text_encoders["text_encoder"].config.num_hidden_layers) - 1

    def reference_pipeline(self, source: SourceModels, task: str) -> Any:
        import diffusers
        from transformers import CLIPTokenizer

        pipeline_class = getattr(diffusers, REFERENCE_PIPELINES[task])
        return pipeline_class(
            vae=source.vae,
            text_encoder=source.text_encoders["text_encoder"],
            tokenizer=CLIPTokenizer.from_pretrained(str(source.tokenizers["text_encoder"])),
            unet=source.unet,
            scheduler=source.diffusers_scheduler(),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )


def vae_or_unet_boundary(component: str, source: SourceModels) -> nn.Module:
    """The boundaries every SD-layout family shares: the UNet (latents, timestep, text states) and the VAE."""
    if component == "unet":
        return UNetBoundary(source.unet).eval()
    if component == "vae_decoder":
        return VaeDecoderBoundary(source.vae).eval()
    if component == "vae_encoder":
        return VaeEncoderBoundary(source.vae).eval()
    raise ValueError(f"unknown component {component!r}; components are {', '.join(COMPONENTS)}")


EXPORTER = StableDiffusionExporter()
