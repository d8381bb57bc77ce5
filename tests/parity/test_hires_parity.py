"""The hires fix (runtime/hires.py) against diffusers composed the same way: StableDiffusion(XL)Pipeline with
``output_type="latent"``, torch's ``interpolate`` on the latents (the web UI's latent upscalers), then the img2img
pipeline on the upscaled latents, over the same ``tiny`` / ``tiny-xl`` weights with the same injected draws (the first
pass's starting latents, the second's start noise). Bar: 2/255."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

diffusers = pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")

from diffship.bench.reference import ImageDraws, Reference, run_reference, run_reference_image_task  # noqa: E402
from diffship.runtime import Pipeline  # noqa: E402
from diffship.runtime.hires import UPSCALERS, HiresFix, run_hires  # noqa: E402
from tests.parity import test_sdxl_parity as text_suite  # noqa: E402

pytestmark = pytest.mark.export
PROMPTS = ["a castle on a hill", "a red fox in the snow"]
NEGATIVES = ["blurry", "low quality"]
SEED = 31

xl = text_suite.ours
xl_reference = text_suite.reference


@pytest.fixture(scope="module")
def tiny(tiny_package: Path) -> Pipeline:
    return Pipeline.from_package(tiny_package, backend="ort", precision="fp32", device="cpu")


def worst(ours: Pipeline, reference: Reference, hires: HiresFix, size: tuple[int, int], steps: int,
          scheduler: str, guidance: float) -> int:
    """The largest pixel difference between our hires fix and diffusers' composition of it."""
    height, width = size
    high, wide = int(height * hires.scale), int(width * hires.scale)
    rng = np.random.default_rng(height + width)
    start = rng.standard_normal((len(PROMPTS), 4, height // 8, width // 8), dtype=np.float32)
    hires_noise = rng.standard_normal((len(PROMPTS), 4, high // 8, wide // 8), dtype=np.float32)
    seeds = [SEED + k for k in range(len(PROMPTS))]
    mine = run_hires(ours, PROMPTS, hires, {"negative_prompt": NEGATIVES, "num_inference_steps": steps, "seed": SEED,
                                            "guidance_scale": guidance, "scheduler": scheduler, "latents": start,
                                            "height": height, "width": width}, hires_noise=hires_noise)
    first = np.stack(run_reference(reference, PROMPTS, start, seeds, NEGATIVES, steps, guidance, scheduler,
                                   extra={"output_type": "latent"}))
    mode, antialias = UPSCALERS[hires.upscaler] or ("", False)
    upscaled = torch.nn.functional.interpolate(torch.from_numpy(first), size=(high // 8, wide // 8), mode=mode,
                                               antialias=antialias)
    expected = run_reference_image_task(reference, PROMPTS, upscaled, ImageDraws(hires_noise), seeds,
                                        strength=hires.strength, negative_prompts=NEGATIVES, steps=hires.steps or steps,
                                        guidance=guidance, scheduler=hires.scheduler or scheduler)
    actual, wanted = np.stack(mine.images), np.stack(expected)
    assert actual.shape == wanted.shape == (len(PROMPTS), high, wide, 3)
    return int(np.abs(actual.astype(int) - wanted.astype(int)).max())


@pytest.mark.parametrize("upscaler,scale,scheduler,second", [
    ("latent", 2.0, "euler", None), ("latent-bicubic-antialiased", 1.5, "dpmpp_2m", "euler_a"),
    ("latent-nearest-exact", 2.0, "ddim", "unipc"),
])
def test_sd_hires_matches_diffusers(tiny: Pipeline, reference_pipelines: dict[str, Reference], upscaler: str,
                                    scale: float, scheduler: str, second: str | None) -> None:
    hires = HiresFix(scale=scale, upscaler=upscaler, strength=0.55, steps=5, scheduler=second)
    assert worst(tiny, reference_pipelines["tiny"], hires, (48, 64), 4, scheduler, 7.5) <= 2


@pytest.mark.parametrize("upscaler,scheduler", [("latent-bicubic", "euler"), ("latent-antialiased", "dpmpp_2m")])
def test_sdxl_hires_matches_diffusers(xl: Pipeline, xl_reference: Reference, upscaler: str, scheduler: str) -> None:
    hires = HiresFix(scale=2.0, upscaler=upscaler, strength=0.6, steps=4)
    assert worst(xl, xl_reference, hires, (text_suite.HEIGHT, text_suite.WIDTH), 4, scheduler, 5.0) <= 2
