"""Stable Diffusion 1.x and 2.x: CLIP text encoder, UNet, VAE; the two differ only in constants (read at export).

SD 2.x models (``sd2``) predict ``v`` where SD 1.x predict noise, use a wider OpenCLIP text encoder and pad with
``!``; the I/O contract is the same, so both share one description.
"""

from __future__ import annotations

from dataclasses import replace

from diffship.core.families.base import Family
from diffship.core.specs import ComponentSpec, PipelineConstants, TensorSpec

COMPONENTS = ("text_encoder", "unet", "vae_decoder", "vae_encoder")


def io_contract(constants: PipelineConstants) -> dict[str, ComponentSpec]:
    """The fp32 I/O contract of every component, with symbolic batch and spatial dimensions."""
    width = constants.text_encoder("text_encoder").hidden_size
    hidden = ("batch", constants.text_max_length, width)
    text_encoder = ComponentSpec(
        "text_encoder",
        inputs=(TensorSpec("input_ids", "int64", ("batch", constants.text_max_length)),),
        outputs=(
            TensorSpec("last_hidden_state", "float32", hidden),
            TensorSpec("pooler_output", "float32", ("batch", width)),
        ),
    )
    return {"text_encoder": text_encoder, **latent_contract(constants)}


def latent_contract(constants: PipelineConstants) -> dict[str, ComponentSpec]:
    """The UNet (latents, timestep and the text states) and the VAE, which every SD-layout family shares."""
    latent = ("batch", constants.latent_channels, "latent_height", "latent_width")
    unet_input = ("batch", constants.unet_channels, "latent_height", "latent_width")
    image = ("batch", 3, "image_height", "image_width")
    # The UNet reads any number of text windows: a long prompt is encoded window by window and concatenated.
    unet_text = ("batch", "text_length", constants.unet_text_size)
    specs = [
        ComponentSpec(
            "unet",
            inputs=(
                TensorSpec("sample", "float32", unet_input),
                TensorSpec("timestep", "float32", ("batch",)),
                TensorSpec("encoder_hidden_states", "float32", unet_text),
            ),
            outputs=(TensorSpec("model_output", "float32", latent),),
        ),
        ComponentSpec(
            "vae_decoder",
            inputs=(TensorSpec("latent_sample", "float32", latent),),
            outputs=(TensorSpec("sample", "float32", image),),
        ),
        ComponentSpec(
            "vae_encoder",
            inputs=(TensorSpec("sample", "float32", image),),
            outputs=(
                TensorSpec(
                    "latent_parameters", "float32", ("batch", 2 * constants.latent_channels, "latent_height", "latent_width")
                ),
            ),
        ),
    ]
    return {spec.name: spec for spec in specs}


SD_PREVIEW_FACTORS = ((0.298, 0.207, 0.208), (0.187, 0.286, 0.173), (-0.158, 0.189, 0.264), (-0.184, -0.271, -0.473))
"""The web UI's "Approx cheap" latent -> RGB factors for SD 1.x/2.x latents (modules/sd_vae_approx.py,
``cheap_approximation``); SD 2.x shares SD 1.x's VAE, so its latents read the same."""

SD1 = Family(
    name="sd1",
    description="Stable Diffusion 1.x (CLIP ViT-L text encoder, epsilon prediction)",
    components=COMPONENTS,
    txt2img=("text_encoder", "unet", "vae_decoder"),
    guided=frozenset({"text_encoder", "unet"}),
    io_contract=io_contract,
    default_scheduler="PNDMScheduler",
    text_side="sd",
    text_encoders=("text_encoder",),
    adapters={"unet": ("unet", "lora_unet"), "text_encoder": ("text_encoder", "lora_te")},
    embeddings=("text_encoder",),
    preview_factors=SD_PREVIEW_FACTORS,
)

SD2 = replace(
    SD1,
    name="sd2",
    description="Stable Diffusion 2.x (OpenCLIP ViT-H text encoder, v or epsilon prediction)",
    default_scheduler="DDIMScheduler",
)
