"""Stable Diffusion XL (base, refiner, Turbo): two CLIP text encoders, a UNet that also reads a pooled prompt
embedding and micro-conditioning numbers, and the SD VAE layout.

The UNet's text input is both encoders' penultimate hidden states side by side (the sum of their widths);
``text_embeds`` is the second encoder's projected pooled output; ``time_ids`` holds the micro-conditioning (original
size, crop corner, target size; the refiner has an aesthetic score in place of the target size). Only the second
encoder's pooled output is read, as in diffusers' ``StableDiffusionXLPipeline``.

The refiner (``sdxl-refiner``) is the same contract without the first text encoder, as diffusers'
``StableDiffusionXLImg2ImgPipeline`` runs it (``text_encoder=None``): it does image-to-image only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from diffship.core.errors import PackageError
from diffship.core.families.base import Family
from diffship.core.families.stable_diffusion import latent_contract
from diffship.core.specs import ComponentSpec, FamilyConstants, PipelineConstants, TensorSpec

COMPONENTS = ("text_encoder", "text_encoder_2", "unet", "vae_decoder", "vae_encoder")
REFINER_COMPONENTS = COMPONENTS[1:]
"""The refiner has no first text encoder: its UNet reads the second encoder's hidden states alone."""


@dataclass(frozen=True)
class XLConstants(FamilyConstants):
    """SDXL's own constants, read from the UNet's and the second encoder's configs at export."""

    pooled_size: int
    """Width of the pooled, projected prompt embedding the UNet reads as ``text_embeds``."""
    time_ids: int
    """How many micro-conditioning numbers the UNet reads as ``time_ids`` (6: original size, crop corner, target size;
    5 for the refiner: original size, crop corner, aesthetic score)."""
    force_zeros_for_empty_prompt: bool = False
    """Guidance with no negative prompt uses zero embeddings, not the encoded empty prompt (the pipeline's
    ``force_zeros_for_empty_prompt``)."""

    def __post_init__(self) -> None:
        if self.pooled_size < 1:
            raise ValueError(f"pooled_size must be >= 1, got {self.pooled_size}")
        if self.time_ids not in (5, 6):
            raise ValueError(f"time_ids must be 5 (refiner) or 6 (base), got {self.time_ids}")

    @staticmethod
    def of(constants: PipelineConstants) -> XLConstants:
        if not isinstance(constants.family, XLConstants):
            raise PackageError("an sdxl package's constants need their sdxl part (pooled_size, time_ids); re-export "
                               "the package")
        return constants.family


def io_contract(constants: PipelineConstants) -> dict[str, ComponentSpec]:
    """SD's VAE boundaries; the text encoders and the UNet with SDXL's added conditioning."""
    xl = XLConstants.of(constants)
    specs = latent_contract(constants)
    tokens = ("batch", constants.text_max_length)
    for encoder in constants.text_encoders:
        hidden = TensorSpec("hidden_states", "float32", ("batch", constants.text_max_length, encoder.hidden_size))
        # Only the second encoder's pooled output is read (as diffusers' StableDiffusionXLPipeline).
        pooled = (TensorSpec("text_embeds", "float32", ("batch", xl.pooled_size)),) \
            if encoder.component == "text_encoder_2" else ()
        specs[encoder.component] = ComponentSpec(encoder.component, inputs=(TensorSpec("input_ids", "int64", tokens),),
                                                 outputs=(hidden, *pooled))
    specs["unet"] = ComponentSpec(
        "unet",
        inputs=(
            specs["unet"].input("sample"),
            specs["unet"].input("timestep"),
            TensorSpec("encoder_hidden_states", "float32", ("batch", "text_length", constants.unet_text_size)),
            TensorSpec("text_embeds", "float32", ("batch", xl.pooled_size)),
            TensorSpec("time_ids", "float32", ("batch", xl.time_ids)),
        ),
        outputs=specs["unet"].outputs,
    )
    return {name: specs[name] for name in COMPONENTS if name in specs}


def time_ids_rule(count: int, what: str) -> Callable[[PipelineConstants], str | None]:
    """The number of micro-conditioning numbers a UNet of this family reads."""

    def rule(constants: PipelineConstants) -> str | None:
        found = XLConstants.of(constants).time_ids
        return None if found == count else f"family.time_ids is {found}; {what} reads {count}"

    return rule


XL_PREVIEW_FACTORS = ((0.3448, 0.4168, 0.4395), (-0.1953, -0.0290, 0.0250), (0.1074, 0.0886, -0.0163),
                      (-0.3730, -0.2499, -0.2088))
"""The web UI's "Approx cheap" latent -> RGB factors for SDXL's VAE latents (modules/sd_vae_approx.py)."""

SDXL = Family(
    name="sdxl",
    description="Stable Diffusion XL (two CLIP text encoders, pooled-prompt and micro-conditioning inputs)",
    components=COMPONENTS,
    txt2img=("text_encoder", "text_encoder_2", "unet", "vae_decoder"),
    guided=frozenset({"text_encoder", "text_encoder_2", "unet"}),
    io_contract=io_contract,
    default_scheduler="EulerDiscreteScheduler",
    text_side="sdxl",
    text_encoders=("text_encoder", "text_encoder_2"),
    constants_type=XLConstants,
    tasks=("txt2img", "img2img"),
    refusals={"inpaint": "inpainting is not available for SDXL packages yet (text-to-image and image-to-image are)"},
    handoff=True,
    img2img_strength=0.3,
    adapters={"unet": ("unet", "lora_unet")},
    embeddings=("text_encoder", "text_encoder_2"),
    constants_rule=time_ids_rule(6, "an SDXL base UNet (original size, crop corner, target size)"),
    preview_factors=XL_PREVIEW_FACTORS,
)

SDXL_REFINER = replace(
    SDXL,
    name="sdxl-refiner",
    description="Stable Diffusion XL refiner (image-to-image only: the second text encoder, aesthetic-score "
                "conditioning)",
    components=REFINER_COMPONENTS,
    txt2img=SDXL.txt2img[1:],
    guided=SDXL.guided - {"text_encoder"},
    text_side="sdxl-refiner",
    text_encoders=("text_encoder_2",),
    tasks=("img2img",),
    refusals={"txt2img": "this package is an SDXL refiner, which does image-to-image only: give image (a picture, or "
                         "a base model's latents with denoising_start)",
              "inpaint": "inpainting is not available for SDXL packages yet (the refiner does image-to-image)"},
    embeddings=("text_encoder_2",),
    constants_rule=time_ids_rule(5, "an SDXL refiner's UNet (original size, crop corner, aesthetic score)"),
)
