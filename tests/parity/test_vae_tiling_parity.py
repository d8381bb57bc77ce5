"""Tiled VAE (runtime/vae_tiling.py) against diffusers' ``AutoencoderKL`` with ``enable_tiling``: the tiled decode
and the tiled encode of ONNX Runtime's engines (fp32, CPU) against ``tiled_decode`` / ``_tiled_encode`` on the same
weights, tiles of the same side; and one text-to-image call, tiled on both sides. Bar: 2/255 in pixels, the
component bar (1e-4 x the largest value) for the encoder's latent distribution."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

diffusers = pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")

from diffship.bench.reference import Reference, run_reference  # noqa: E402
from diffship.runtime import Pipeline  # noqa: E402
from diffship.runtime.vae_tiling import VaeTiles, choose_tile  # noqa: E402

pytestmark = pytest.mark.export
TILE = 64
"""Pixels: 8 latents at the tiny VAE's factor 8, its own ``sample_size`` too."""
SIZE = (200, 136)
"""(height, width): 4 x 3 tiles, the last ones cut short (not multiples of the tile's stride)."""


@pytest.fixture(scope="module")
def tiny(tiny_package: Path) -> Pipeline:
    return Pipeline.from_package(tiny_package, backend="ort", precision="fp32", device="cpu")


def tiled_vae(pretrained_dirs: dict[str, Path]) -> Any:
    vae = diffusers.AutoencoderKL.from_pretrained(str(pretrained_dirs["tiny"] / "vae")).eval()
    vae.enable_tiling()
    vae.tile_sample_min_size, vae.tile_latent_min_size = TILE, TILE // 8
    return vae


def to_pixels(decoded: np.ndarray) -> np.ndarray:
    return np.clip(decoded / 2 + 0.5, 0, 1) * 255


def test_tiled_decode_matches_diffusers(tiny: Pipeline, pretrained_dirs: dict[str, Path]) -> None:
    vae = tiled_vae(pretrained_dirs)
    latents = np.random.default_rng(0).standard_normal((2, 4, SIZE[0] // 8, SIZE[1] // 8), dtype=np.float32)
    ours = tiny._decode(latents * np.float32(tiny.constants.scaling_factor), tile=TILE)
    with torch.inference_mode():
        expected = vae.tiled_decode(torch.from_numpy(latents)).sample.numpy()
    assert ours.shape == expected.shape == (2, 3, *SIZE)
    assert np.abs(to_pixels(ours) - to_pixels(expected)).max() <= 2
    untiled = tiny._decode(latents * np.float32(tiny.constants.scaling_factor))
    assert np.abs(to_pixels(untiled) - to_pixels(ours)).max() > 2  # the tiles are really there


def test_tiled_encode_matches_diffusers(tiny: Pipeline, pretrained_dirs: dict[str, Path]) -> None:
    vae = tiled_vae(pretrained_dirs)
    pixels = np.random.default_rng(1).uniform(-1, 1, (1, 3, *SIZE)).astype(np.float32)
    tiny("a castle", image=np.zeros((64, 64, 3), np.uint8), num_inference_steps=1, strength=1.0)  # opens the encoder
    noise = np.random.default_rng(2).standard_normal((1, 4, SIZE[0] // 8, SIZE[1] // 8), dtype=np.float32)
    ours = tiny._encode_image(pixels, noise, 1, tile=TILE)
    with torch.inference_mode():
        moments = vae._tiled_encode(torch.from_numpy(pixels))
        mean, logvar = moments.chunk(2, dim=1)
        std = torch.exp(0.5 * torch.clamp(logvar, -30.0, 20.0))
        expected = ((mean + std * torch.from_numpy(noise)) * tiny.constants.scaling_factor).numpy()
    assert ours.shape == expected.shape
    assert np.abs(ours - expected).max() <= 1e-4 * np.abs(expected).max()


def test_tiled_text_to_image_matches_diffusers(tiny: Pipeline, reference_pipelines: dict[str, Reference]) -> None:
    reference = reference_pipelines["tiny"]
    vae = reference.pipe.vae
    vae.enable_tiling()
    vae.tile_sample_min_size, vae.tile_latent_min_size = TILE, TILE // 8
    try:
        latents = np.random.default_rng(3).standard_normal((1, 4, SIZE[0] // 8, SIZE[1] // 8), dtype=np.float32)
        ours = tiny("a castle", num_inference_steps=3, latents=latents, seed=5, scheduler="euler",
                    height=SIZE[0], width=SIZE[1], vae_tiles=TILE)
        expected = run_reference(reference, ["a castle"], latents, [5], steps=3, scheduler="euler")
    finally:
        vae.disable_tiling()
        vae.tile_sample_min_size, vae.tile_latent_min_size = vae.config.sample_size, vae.config.sample_size // 8
    assert ours.parameters[0]["vae_tile"] == TILE
    assert np.abs(ours.images[0].astype(int) - expected[0].astype(int)).max() <= 2


def test_auto_tiles_large_pictures_at_the_native_size() -> None:
    auto = VaeTiles.parse("auto")
    assert choose_tile(auto, 512, 512, 512, 1, True, False) is None
    assert choose_tile(auto, 512, 2048, 2048, 1, True, False) == 512
    assert choose_tile(auto, 512, 768, 768, 1, False, False) == 512  # beyond the VAE engine's profile
    assert choose_tile(VaeTiles.parse("off"), 512, 2048, 2048, 1, True, False) is None
    assert choose_tile(VaeTiles.parse("256"), 512, 512, 320, 1, True, False) == 256
    assert choose_tile(VaeTiles.parse(256), 512, 256, 256, 1, True, False) is None  # one tile: diffusers' rule


def test_tiled_decode_matches_diffusers_on_sdxl(tiny_xl_package: Path, tiny_xl_dir: Path) -> None:
    xl = Pipeline.from_package(tiny_xl_package, backend="ort", precision="fp32", device="cpu")
    vae = diffusers.AutoencoderKL.from_pretrained(str(tiny_xl_dir / "vae")).eval()
    vae.enable_tiling()
    vae.tile_sample_min_size, vae.tile_latent_min_size = TILE, TILE // 8
    latents = np.random.default_rng(4).standard_normal((1, 4, SIZE[1] // 8, SIZE[0] // 8), dtype=np.float32)
    ours = xl._decode(latents * np.float32(xl.constants.scaling_factor), tile=TILE)
    with torch.inference_mode():
        expected = vae.tiled_decode(torch.from_numpy(latents)).sample.numpy()
    assert ours.shape == expected.shape == (1, 3, SIZE[1], SIZE[0])
    assert np.abs(to_pixels(ours) - to_pixels(expected)).max() <= 2
