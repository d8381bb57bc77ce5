"""SDXL's micro-conditioning and guidance rescale on their own: what is accepted, what is refused and why, the layout of
the refiner's time ids, and ``rescale_guidance`` against diffusers' ``rescale_noise_cfg``. (The base model's time ids
and everything end to end: tests/parity/test_sdxl_parity.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from diffship.runtime.errors import PipelineInputError
from diffship.runtime.guidance import rescale_guidance
from diffship.runtime.requests import Limits, SizeLimits, validate_request
from diffship.runtime.text.sd import refuse_extra_arguments
from diffship.runtime.text.sdxl import MicroConditioning, check_micro_conditioning
from tests.fakes import TINY


def test_xl_micro_conditioning_refused_for_one_encoder_packages() -> None:
    with pytest.raises(PipelineInputError, match="original_size, target_size: SDXL micro-conditioning.*not an SDXL"):
        refuse_extra_arguments({"original_size": (512, 512), "target_size": (512, 512)})
    refuse_extra_arguments({"original_size": None})


@pytest.mark.parametrize("name,value,fragment", [
    ("original_size", (0, 512), "pair of positive integers"),
    ("target_size", (512.0, 512), "pair of positive integers"),
    ("original_size", "1024", "pair of positive integers"),
    ("target_size", (1, 2, 3), "pair of positive integers"),
    ("crops_coords_top_left", (-1, 0), "pair of integers >= 0"),
    ("negative_crops_coords_top_left", (True, 0), "pair of integers >= 0"),
])
def test_xl_micro_conditioning_bad_pairs_say_what_is_allowed(name: str, value: object, fragment: str) -> None:
    with pytest.raises(PipelineInputError, match=f"{name} must be a {fragment}"):
        check_micro_conditioning(refiner=False, given={name: value})


def test_xl_aesthetic_score_is_the_refiners_and_target_size_the_bases() -> None:
    with pytest.raises(PipelineInputError, match="aesthetic_score conditions the SDXL refiner"):
        check_micro_conditioning(refiner=False, given={"aesthetic_score": 6.0})
    with pytest.raises(PipelineInputError, match="target_size conditions the SDXL base model"):
        check_micro_conditioning(refiner=True, given={"target_size": (1024, 1024)})
    with pytest.raises(PipelineInputError, match="finite number"):
        check_micro_conditioning(refiner=True, given={"negative_aesthetic_score": float("nan")})


def test_xl_time_ids_layout_for_base_and_refiner() -> None:
    micro = check_micro_conditioning(refiner=False, given={"original_size": [768, 512], "crops_coords_top_left": (8, 16)})
    assert micro == MicroConditioning(original_size=(768, 512), crops_coords_top_left=(8, 16))
    positive, negative = micro.time_ids(64, 96, refiner=False)
    assert positive.tolist() == [768, 512, 8, 16, 64, 96] and negative.tolist() == positive.tolist()
    refiner = check_micro_conditioning(refiner=True, given={"aesthetic_score": 7, "negative_original_size": (256, 256)})
    positive, negative = refiner.time_ids(64, 96, refiner=True)
    assert positive.tolist() == [64, 96, 0, 0, 7.0] and negative.tolist() == [256, 256, 0, 0, 2.5]


def test_xl_guidance_rescale_range_is_checked() -> None:
    sizes = SizeLimits((8, None), (8, None))
    for bad in (-0.1, 1.5, "0.7", True):
        with pytest.raises(PipelineInputError, match="guidance_rescale must be a number from 0 to 1"):
            validate_request(TINY, sizes, Limits(), "a fox", None, 4, 5.0, None, 64, 64, 1, 1, {}, None,
                             guidance_rescale=bad)
    micro = check_micro_conditioning({"target_size": (64, 64)}, refiner=False)
    request = validate_request(TINY, sizes, Limits(), "a fox", None, 4, 5.0, None, 64, 64, 1, 1, {}, None,
                               guidance_rescale=0.7, text_options=micro)
    assert request.guidance_rescale == 0.7 and request.text_options == MicroConditioning(target_size=(64, 64))


def test_xl_rescale_guidance_matches_diffusers() -> None:
    torch = pytest.importorskip("torch")
    sd_pipeline = pytest.importorskip("diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion")
    rng = np.random.default_rng(0)
    guided, cond = (rng.standard_normal((3, 4, 8, 12)).astype(np.float32) * scale for scale in (3.0, 1.0))
    for rescale in (0.0, 0.3, 0.7, 1.0):
        expected = sd_pipeline.rescale_noise_cfg(torch.from_numpy(guided), torch.from_numpy(cond), rescale).numpy()
        np.testing.assert_allclose(rescale_guidance(guided, cond, rescale), expected, rtol=1e-5, atol=1e-6)
