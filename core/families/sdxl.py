"""Stable Diffusion XL (base, refiner, Turbo): two CLIP text encoders, a UNet that also reads a pooled prompt
embedding and micro-conditioning numbers, and the SD VAE layout.

The UNet's text input is both encoders' penultimate hidden states side by side (``text_hidden_size`` +
``text_hidden_size_2`` wide); ``text_embeds`` is the second encoder's projected pooled output; ``time_ids`` holds the
micro-conditioning (original size, crop corner, target size; the refiner has an aesthetic score in place of the
target size). Only the second encoder's pooled output is read, as in diffusers' ``StableDiffusionXLPipeline``.

The refiner (``sdxl-refiner``) is the same contract without the first text encoder, as diffusers'
``StableDiffusionXLImg2ImgPipeline`` runs it (``text_encoder=None``): it does image-to-image only.
"""

from __future__ import annotations

from dataclasses import replace

from core.errors import PackageError
from core.families.base import Family
from core.families.stable_diffusion import io_contract as sd_io_contract
from core.specs import ComponentSpec, PipelineConstants, TensorSpec

COMPONENTS = ("text_encoder", "text_encoder_2", "unet", "vae_decoder", "vae_encoder")
REFINER_COMPONENTS = COMPONENTS[1:]
"""The refiner has no first text encoder: its UNet reads the second encoder's hidden states alone."""


def _xl_sizes(constants: PipelineConstants) -> tuple[int, int, int]:
    if constants.text_hidden_size_2 is None or constants.pooled_size is None or constants.time_ids is None:
        raise PackageError("an sdxl package's constants need text_hidden_size_2, pooled_size and time_ids; "
                           "re-export the package")
    return constants.text_hidden_size_2, constants.pooled_size, constants.time_ids


def io_contract(constants: PipelineConstants) -> dict[str, ComponentSpec]:
    """SD's VAE boundaries; the two text encoders and the UNet with SDXL's added conditioning."""
    hidden_2, pooled, time_ids = _xl_sizes(constants)
    specs = sd_io_contract(constants)
    tokens = ("batch", constants.text_max_length)
    unet = specs["unet"]
    return {
        "text_encoder": ComponentSpec(
            "text_encoder",
            inputs=(TensorSpec("input_ids", "int64", tokens),),
            outputs=(TensorSpec("hidden_states", "float32",
                                ("batch", constants.text_max_length, constants.text_hidden_size)),),
        ),
        "text_encoder_2": ComponentSpec(
            "text_encoder_2",
            inputs=(TensorSpec("input_ids", "int64", tokens),),
            outputs=(
                TensorSpec("hidden_states", "float32", ("batch", constants.text_max_length, hidden_2)),
                TensorSpec("text_embeds", "float32", ("batch", pooled)),
            ),
        ),
        "unet": ComponentSpec(
            "unet",
            inputs=(
                unet.input("sample"),
                unet.input("timestep"),
                TensorSpec("encoder_hidden_states", "float32", ("batch", "text_length", constants.unet_text_size)),
                TensorSpec("text_embeds", "float32", ("batch", pooled)),
                TensorSpec("time_ids", "float32", ("batch", time_ids)),
            ),
            outputs=unet.outputs,
        ),
        "vae_decoder": specs["vae_decoder"],
        "vae_encoder": specs["vae_encoder"],
    }


def refiner_io_contract(constants: PipelineConstants) -> dict[str, ComponentSpec]:
    """The base's contract without the first text encoder (``unet_text_size`` is then the second's width)."""
    return {name: spec for name, spec in io_contract(constants).items() if name in REFINER_COMPONENTS}


SDXL = Family(
    name="sdxl",
    description="Stable Diffusion XL (two CLIP text encoders, pooled-prompt and micro-conditioning inputs)",
    components=COMPONENTS,
    txt2img=("text_encoder", "text_encoder_2", "unet", "vae_decoder"),
    guided=frozenset({"text_encoder", "text_encoder_2", "unet"}),
    io_contract=io_contract,
    default_scheduler="EulerDiscreteScheduler",
    img2img_strength=0.3,
    adapters={"unet": ("unet", "lora_unet")},
)

SDXL_REFINER = replace(
    SDXL,
    name="sdxl-refiner",
    description="Stable Diffusion XL refiner (image-to-image only: the second text encoder, aesthetic-score "
                "conditioning)",
    components=REFINER_COMPONENTS,
    txt2img=SDXL.txt2img[1:],
    guided=SDXL.guided - {"text_encoder"},
    io_contract=refiner_io_contract,
)
