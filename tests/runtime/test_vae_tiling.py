"""runtime/vae_tiling.py without a model: the tile grid covers the picture exactly once (a VAE that only upsamples
gives the untiled picture back, whatever the size), the blend is diffusers' (its own ``blend_v``/``blend_h`` in torch),
``vae_tiles`` is checked with what is allowed, and the pipeline records the tile it decoded with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from diffship.engines.backend import register_backend
from diffship.runtime import Pipeline
from diffship.runtime.errors import PipelineInputError
from diffship.runtime.vae_tiling import VaeTiles, blend_h, blend_v, tiled
from tests.cli.test_cli_errors import assert_one_line_error
from tests.conftest import run_cli
from tests.fakes import NumpyBackend, write_package


def upsample(latents: np.ndarray) -> np.ndarray:
    return latents.repeat(8, axis=2).repeat(8, axis=3)


@pytest.mark.parametrize("size", [(8, 8), (24, 40), (13, 29), (64, 9)])
def test_tiles_cover_the_picture_once(size: tuple[int, int]) -> None:
    latents = np.random.default_rng(0).standard_normal((2, 4, *size), dtype=np.float32)
    assert np.allclose(tiled(upsample, latents, 8, 64), upsample(latents), atol=1e-6)
    pixels = upsample(latents)
    assert np.allclose(tiled(lambda x: x[:, :, ::8, ::8], pixels, 64, 8), latents, atol=1e-6)


def test_blends_are_diffusers() -> None:
    from diffusers import AutoencoderKL

    a, b = (np.random.default_rng(k).standard_normal((1, 3, 20, 20), dtype=np.float32) for k in (1, 2))
    vae = AutoencoderKL.__new__(AutoencoderKL)  # blend_v/blend_h read nothing from the model
    for ours, theirs in ((blend_v, vae.blend_v), (blend_h, vae.blend_h)):
        expected = theirs(torch.from_numpy(a.copy()), torch.from_numpy(b.copy()), 16).numpy()
        assert np.array_equal(ours(a.copy(), b.copy(), 16), expected)


@pytest.mark.parametrize("value", ["big", 100, 32, 0, True, "12x"])
def test_vae_tiles_refuses_what_it_does_not_take(value: object) -> None:
    with pytest.raises(PipelineInputError, match="vae_tiles must be auto, off or a tile side in pixels, a multiple of 32"):
        VaeTiles.parse(value)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    register_backend("numpy", NumpyBackend)
    return Pipeline.from_package(write_package(tmp_path_factory.mktemp("fake") / "pkg"), backend="numpy")


def test_a_call_records_its_tile_and_decodes_every_pixel(pipe: Pipeline) -> None:
    tiled_result = pipe("a fox", num_inference_steps=2, seed=1, height=192, width=128, vae_tiles=64)
    assert tiled_result.parameters[0]["vae_tile"] == 64 and tiled_result.images[0].shape == (192, 128, 3)
    plain = pipe("a fox", num_inference_steps=2, seed=1, height=192, width=128, vae_tiles="off")
    assert "vae_tile" not in plain.parameters[0]
    assert "vae_tile" not in pipe("a fox", num_inference_steps=1, seed=1).parameters[0]  # auto: small stays whole


def test_generate_refuses_a_bad_vae_tiles_in_one_line(tmp_path: Path) -> None:
    result = run_cli("generate", "--package", str(tmp_path / "none"), "--prompt", "a", "--vae-tiles", "100",
                     "--out", str(tmp_path / "o.png"))
    assert_one_line_error(result, "--vae-tiles", "a multiple of 32 from 64 (such as 512), got '100'")
