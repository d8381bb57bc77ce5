"""Engine profiles for the hires fix (``core.profiles.cover_hires``, ``build-trt --hires-scale``): the UNet's and the
VAE's shapes cover both passes, the optimum stays the first pass's, and what cannot be built is refused by name."""

from __future__ import annotations

import pytest

from diffship.core.families import SD1
from diffship.core.profiles import ProfileError, cover_hires, shape_profiles, shape_request
from diffship.core.specs import Range
from tests.core.test_profiles import SD15


def test_a_hires_request_covers_both_passes() -> None:
    request = shape_request(SD15, Range(1, 1, 2), Range(448, 512, 768), Range(448, 512, 768))
    covered = cover_hires(request, SD15, 2.0)
    assert (covered.height, covered.width) == (Range(448, 512, 1024), Range(448, 512, 1024))
    profiles = shape_profiles(covered, SD15, SD1.specs(SD15), SD1.guided)
    assert profiles["unet"].shapes["sample"] == ((1, 4, 56, 56), (2, 4, 64, 64), (4, 4, 128, 128))
    assert profiles["vae_decoder"].shapes["latent_sample"][2] == (2, 4, 128, 128)


def test_a_hires_request_from_a_small_base_lowers_the_minimum() -> None:
    request = shape_request(SD15, Range(1, 1, 1), Range(512, 768, 1024), Range(512, 768, 1024))
    covered = cover_hires(request, SD15, 1.5, (384, 384))
    assert (covered.height, covered.width) == (Range(384, 768, 1024), Range(384, 768, 1024))


@pytest.mark.parametrize("request_range,scale,fragment", [
    (Range(256, 512, 1024), 1.3, "--hires-scale 1.3 of 512x512 gives 665x665 (width x height), not a multiple of 64"),
    (Range.fixed(512), 2.0, "a static build has one shape and the hires fix runs two (512x512, then 1024x1024)"),
    (Range(256, 512, 1024), 9.0, "--hires-scale must be from 1 to 8, got 9"),
])
def test_hires_requests_that_cannot_be_built_are_refused(request_range: Range, scale: float, fragment: str) -> None:
    batch = Range.fixed(1) if request_range.min == request_range.max else Range(1, 1, 4)
    with pytest.raises(ProfileError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        cover_hires(shape_request(SD15, batch, request_range, request_range), SD15, scale)
