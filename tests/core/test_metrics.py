"""core.metrics.ssim against scikit-image's structural_similarity (Wang et al.'s settings), the reference."""

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from diffship.core.metrics import ssim


def _reference(actual: np.ndarray, reference: np.ndarray) -> float:
    return float(np.mean([
        structural_similarity(a, r, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255,
                              channel_axis=-1) for a, r in zip(actual, reference, strict=True)]))


@pytest.mark.parametrize("noise", [2, 30, 120])
def test_ssim_matches_scikit_image(noise: int) -> None:
    rng = np.random.default_rng(noise)
    # A smooth picture (SSIM's structure term needs some) plus noise of three strengths.
    ramp = np.linspace(0, 255, 64)
    picture = np.stack([np.add.outer(ramp, ramp[:48]) / 2, np.outer(ramp, np.ones(48)), rng.uniform(0, 255, (64, 48))],
                       axis=-1)
    actual = np.stack([picture, picture[::-1]]).astype(np.uint8)
    noisy = np.clip(actual + rng.integers(-noise, noise + 1, actual.shape), 0, 255).astype(np.uint8)
    assert ssim(noisy, actual, 255.0) == pytest.approx(_reference(noisy, actual), abs=1e-12)


def test_ssim_of_identical_images_is_one_and_of_a_single_grey_image_too() -> None:
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3)).astype(np.uint8)
    assert ssim(image, image, 255.0) == pytest.approx(1.0)
    assert ssim(image[..., 0], image[..., 0], 255.0) == pytest.approx(1.0)


def test_ssim_refuses_images_smaller_than_its_window_and_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="smaller than the 11x11 window"):
        ssim(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)), 255.0)
    with pytest.raises(ValueError, match="shapes differ"):
        ssim(np.zeros((16, 16, 3)), np.zeros((16, 17, 3)), 255.0)
