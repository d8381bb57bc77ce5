"""The web UI's hires-fix fields on ``/sdapi/v1/txt2img`` (serve/hires_fields.py), on a real socket over the tiny
package: the images are ``runtime.hires.run_hires``'s for the same request, the infotext says what the second pass
did, and bad fields answer 422 naming the client's field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from diffship.runtime import Pipeline
from diffship.runtime.hires import HiresFix, run_hires
from tests.serve.conftest import running_service
from tests.serve.test_app import decode

pytestmark = pytest.mark.export


def test_txt2img_with_enable_hr_gets_run_hires_images(serve_pipe: Pipeline, tiny_package: Path) -> None:
    body = {"prompt": "a lighthouse", "negative_prompt": "fog", "steps": 3, "cfg_scale": 6, "width": 64, "height": 48,
            "seed": 12, "sampler_name": "Euler", "batch_size": 2, "enable_hr": True, "hr_scale": 2,
            "hr_upscaler": "Latent (bicubic)", "hr_second_pass_steps": 4, "denoising_strength": 0.5,
            "hr_prompt": "a lighthouse, detailed", "hr_sampler_name": "DPM++ 2M", "hr_negative_prompt": ""}
    with running_service(serve_pipe, tiny_package) as (url, _):
        response = httpx.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=120)
    assert response.status_code == 200, response.text
    answer = response.json()
    expected = run_hires(serve_pipe, "a lighthouse", HiresFix(2, "latent-bicubic", 0.5, 4, "DPM++ 2M",
                                                              "a lighthouse, detailed"),
                         {"negative_prompt": "fog", "num_inference_steps": 3, "guidance_scale": 6, "seed": 12,
                          "scheduler": "Euler", "num_images_per_prompt": 2, "height": 48, "width": 64})
    assert len(answer["images"]) == 2
    for b64, image in zip(answer["images"], expected.images, strict=True):
        pixels, parameters = decode(b64)
        assert pixels.shape == (96, 128, 3)
        np.testing.assert_array_equal(pixels, image)
        assert parameters["hires"]["upscaler"] == "latent-bicubic"
    info = json.loads(answer["info"])
    assert ("Size: 64x48, Denoising strength: 0.5, Hires upscale: 2, Hires steps: 4, Hires upscaler: Latent (bicubic)"
            in info["infotexts"][0])


def test_hr_resize_sets_the_target_size(serve_pipe: Pipeline, tiny_package: Path) -> None:
    body = {"prompt": "a fox", "steps": 2, "width": 64, "height": 64, "seed": 1, "enable_hr": True,
            "hr_resize_x": 96, "hr_resize_y": 0, "hr_second_pass_steps": 2, "hr_upscaler": "Lanczos"}
    with running_service(serve_pipe, tiny_package) as (url, _):
        response = httpx.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=120)
    assert response.status_code == 200, response.text
    pixels, parameters = decode(response.json()["images"][0])
    assert pixels.shape == (96, 96, 3) and parameters["hires"]["upscaler"] == "lanczos"


@pytest.mark.parametrize("fields,message", [
    ({"hr_upscaler": "R-ESRGAN 4x+"}, "hr_upscaler 'R-ESRGAN 4x+' is not one of this server's: Latent, "),
    ({"hr_scale": 1.3}, "hr_scale: hires scale 1.3 of 64x64 gives 83x83 (width x height), which is not a multiple "
                        "of 8 pixels; try scale 1.25"),
    ({"hr_scale": 20}, "hr_scale: hires scale must be a number from 1 to 8, got 20"),
    ({"hr_scale": "2"}, "hr_scale must be an integer or a number, got a string"),
    ({"hr_second_pass_steps": -1}, "hr_second_pass_steps must be 0 (the first pass's steps) or more, got -1"),
    ({"denoising_strength": 0}, "strength must be a number in (0, 1]"),
    ({"hr_sampler_name": "DPM fast"}, "sampler_name 'DPM fast' is not implemented here"),
])
def test_bad_hires_fields_answer_422_naming_the_field(serve_pipe: Pipeline, tiny_package: Path,
                                                      fields: dict[str, Any], message: str) -> None:
    body = {"prompt": "a fox", "steps": 2, "width": 64, "height": 64, "enable_hr": True, **fields}
    with running_service(serve_pipe, tiny_package) as (url, _):
        response = httpx.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=60)
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]
