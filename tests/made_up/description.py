"""The made-up family's description: its components, their I/O contract and what it does (core, numpy only)."""

from __future__ import annotations

from diffship.core.families import FAMILIES, Family, register_family
from diffship.core.specs import ComponentSpec, PipelineConstants, TensorSpec, TextEncoderConstants

NAME = "pooled-toy"

CONSTANTS = PipelineConstants(
    latent_channels=4, vae_scale_factor=4, scaling_factor=0.5, prediction_type="epsilon", default_height=32,
    default_width=32, text_max_length=77, spatial_multiple=4,
    text_encoders=(TextEncoderConstants("text_encoder", "tokenizer", 16, "<|endoftext|>", 49408),),
)


def io_contract(constants: PipelineConstants) -> dict[str, ComponentSpec]:
    width = constants.text_encoder("text_encoder").hidden_size
    latent = ("batch", constants.latent_channels, "latent_height", "latent_width")
    return {
        "text_encoder": ComponentSpec(
            "text_encoder", (TensorSpec("input_ids", "int64", ("batch", constants.text_max_length)),),
            (TensorSpec("hidden_states", "float32", ("batch", constants.text_max_length, width)),)),
        "unet": ComponentSpec(
            "unet", (TensorSpec("sample", "float32", latent), TensorSpec("timestep", "float32", ("batch",)),
                     TensorSpec("prompt_vector", "float32", ("batch", width))),
            (TensorSpec("model_output", "float32", latent),)),
        "vae_decoder": ComponentSpec(
            "vae_decoder", (TensorSpec("latent_sample", "float32", latent),),
            (TensorSpec("sample", "float32", ("batch", 3, "image_height", "image_width")),)),
    }


FAMILY = Family(
    name=NAME,
    description="a made-up family: one pooled prompt vector per image, text-to-image only",
    components=("text_encoder", "unet", "vae_decoder"),
    txt2img=("text_encoder", "unet", "vae_decoder"),
    guided=frozenset({"text_encoder", "unet"}),
    io_contract=io_contract,
    default_scheduler="DDIMScheduler",
    text_side=NAME,
    text_encoders=("text_encoder",),
    tasks=("txt2img",),
)


def register() -> None:
    if NAME not in FAMILIES:
        register_family(FAMILY)
