"""runtime/upscale.py's numpy interpolation against torch.nn.functional.interpolate itself (every latent mode the web
UI's upscalers use, antialiased or not, up and down, odd sizes), and the Lanczos pixel upscaler against PIL."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffship.runtime.upscale import interpolate, lanczos

CASES = [("nearest", False), ("nearest-exact", False), ("bilinear", False), ("bilinear", True), ("bicubic", False),
         ("bicubic", True)]
SIZES = [((8, 8), (16, 16)), ((9, 13), (18, 26)), ((8, 12), (13, 19)), ((16, 16), (24, 40)), ((20, 14), (9, 7))]


@pytest.mark.parametrize("mode,antialias", CASES, ids=[f"{m}{'-aa' if a else ''}" for m, a in CASES])
@pytest.mark.parametrize("source,target", SIZES, ids=[f"{s[0]}x{s[1]}-{t[0]}x{t[1]}" for s, t in SIZES])
def test_interpolate_matches_torch(mode: str, antialias: bool, source: tuple[int, int], target: tuple[int, int]) -> None:
    x = np.random.default_rng(0).standard_normal((2, 4, *source), dtype=np.float32)
    expected = torch.nn.functional.interpolate(torch.from_numpy(x), size=target, mode=mode,
                                               antialias=antialias).numpy()
    ours = interpolate(x, target, mode, antialias)
    assert ours.shape == expected.shape and ours.dtype == np.float32
    assert np.abs(ours - expected).max() <= 1e-5 * max(1.0, float(np.abs(expected).max()))


def test_lanczos_is_pils() -> None:
    from PIL import Image

    image = np.random.default_rng(1).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(image).resize((80, 48), Image.Resampling.LANCZOS))
    assert np.array_equal(lanczos(image, (48, 80)), expected)
