"""Shape profiles: CFG doubling, latent sizes from the VAE factor, static shapes, and what users may ask for."""

from __future__ import annotations

import pytest

from diffship.core.families import SD1
from diffship.core.profiles import ProfileError, parse_range, shape_profiles, shape_request, size_ranges
from diffship.core.specs import PipelineConstants, Range, TextEncoderConstants

SD15 = PipelineConstants(
    latent_channels=4, vae_scale_factor=8, scaling_factor=0.18215, prediction_type="epsilon", default_height=512,
    default_width=512, text_max_length=77, spatial_multiple=64,
    text_encoders=(TextEncoderConstants("text_encoder", "tokenizer", 768, "<|endoftext|>", 49408),),
)


def test_profiles_double_the_guided_batch_and_scale_latents() -> None:
    request = shape_request(SD15, Range(1, 1, 4), Range(256, 512, 1024), Range(256, 768, 1024))
    profiles = shape_profiles(request, SD15, SD1.specs(SD15), SD1.guided)
    assert profiles["unet"].shapes["sample"] == ((1, 4, 32, 32), (2, 4, 64, 96), (8, 4, 128, 128))
    assert profiles["unet"].shapes["timestep"] == ((1,), (2,), (8,))
    assert profiles["unet"].shapes["encoder_hidden_states"] == ((1, 77, 768), (2, 77, 768), (8, 77, 768))
    assert profiles["text_encoder"].shapes["input_ids"] == ((1, 77), (2, 77), (8, 77))
    assert profiles["vae_decoder"].shapes["latent_sample"] == ((1, 4, 32, 32), (1, 4, 64, 96), (4, 4, 128, 128))
    assert profiles["vae_encoder"].shapes["sample"] == ((1, 3, 256, 256), (1, 3, 512, 768), (4, 3, 1024, 1024))


def test_static_profile_is_one_shape_with_the_guided_batch() -> None:
    request = shape_request(SD15, Range.fixed(1), Range.fixed(512), Range.fixed(512))
    assert request.static
    profiles = shape_profiles(request, SD15, SD1.specs(SD15), SD1.guided)
    assert profiles["unet"].shapes["sample"] == ((2, 4, 64, 64),) * 3
    assert profiles["vae_decoder"].shapes["latent_sample"] == ((1, 4, 64, 64),) * 3


def test_profile_names_its_range_when_a_shape_is_outside() -> None:
    request = shape_request(SD15, Range(1, 1, 2), Range.fixed(512), Range.fixed(512))
    profile = shape_profiles(request, SD15, SD1.specs(SD15), SD1.guided)["unet"]
    assert profile.violation("sample", (2, 4, 64, 64)) is None
    problem = profile.violation("sample", (6, 4, 64, 64))
    assert problem is not None and "(1, 4, 64, 64)" in problem and "(4, 4, 64, 64)" in problem


def test_sizes_must_be_multiples_of_the_model_spatial_multiple() -> None:
    with pytest.raises(ProfileError, match="not a multiple of 64"):
        shape_request(SD15, Range.fixed(1), Range(256, 500, 1024))


@pytest.mark.parametrize("text,expected", [("4", Range(4, 4, 4)), ("1-4", Range(1, 1, 4))])
def test_parse_range(text: str, expected: Range) -> None:
    assert parse_range(text, "--batch") == expected


@pytest.mark.parametrize("text", ["0", "4-1", "x", "1-"])
def test_parse_range_rejects_nonsense(text: str) -> None:
    with pytest.raises(ProfileError, match="--batch"):
        parse_range(text, "--batch")


def test_size_ranges_default_from_half_to_twice_the_model_size() -> None:
    assert size_ranges(SD15, None, None, None, None, static=False) == (Range(256, 512, 1024), Range(256, 512, 1024))
    assert size_ranges(SD15, 768, None, None, None, static=True) == (Range.fixed(768), Range.fixed(512))
    with pytest.raises(ProfileError, match="static"):
        size_ranges(SD15, None, None, 256, None, static=True)
    with pytest.raises(ProfileError, match="min-size"):
        size_ranges(SD15, None, None, 1024, 512, static=False)
