"""runtime.conditioning against diffusers' own code: VaeImageProcessor's preprocessing of images and masks (resizing,
normalising, binarising), its crop region, fill and crop resizing and overlay for ``padding_mask_crop``, and the VAE's
DiagonalGaussianDistribution. Then what read_image_inputs refuses, and how."""

from __future__ import annotations

import numpy as np
import pytest

from diffship.runtime.conditioning import (
    latent_sample,
    load_image,
    mask_crop_box,
    overlay,
    preprocess_image,
    preprocess_mask,
    read_image_inputs,
    resize_crop,
    resize_fill,
)
from diffship.runtime.errors import PipelineInputError

diffusers = pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")

from diffusers.image_processor import VaeImageProcessor  # noqa: E402

IMAGE_PROCESSOR = VaeImageProcessor(vae_scale_factor=8)
MASK_PROCESSOR = VaeImageProcessor(vae_scale_factor=8, do_normalize=False, do_binarize=True, do_convert_grayscale=True)


def picture(height: int, width: int, seed: int = 0, mode: str = "RGB") -> object:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) % 64 * 4], axis=-1)
    array = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(array).convert(mode)


def blob_mask(height: int, width: int, box: tuple[int, int, int, int], seed: int = 0) -> object:
    """Grey levels inside ``box`` (left, top, right, bottom), black elsewhere: binarising and cropping both matter."""
    array = np.zeros((height, width), dtype=np.uint8)
    left, top, right, bottom = box
    array[top:bottom, left:right] = np.random.default_rng(seed).integers(1, 256, (bottom - top, right - left))
    return Image.fromarray(array)


@pytest.mark.parametrize("source,target", [((64, 72), (64, 72)), ((77, 100), (64, 96)), ((40, 48), (96, 64)),
                                           ((513, 301), (512, 296))])
def test_image_preprocessing_matches_vae_image_processor(source: tuple[int, int], target: tuple[int, int]) -> None:
    image = picture(*source)
    expected = IMAGE_PROCESSOR.preprocess(image, height=target[0], width=target[1]).numpy()
    np.testing.assert_array_equal(preprocess_image(image, *target), expected)


@pytest.mark.parametrize("source,target", [((64, 72), (64, 72)), ((77, 100), (64, 96)), ((40, 48), (96, 64))])
def test_mask_preprocessing_matches_diffusers_mask_processor(source: tuple[int, int], target: tuple[int, int]) -> None:
    mask = blob_mask(*source, (source[1] // 4, source[0] // 3, source[1] // 2 + 5, source[0] - 3))
    expected = MASK_PROCESSOR.preprocess(mask, height=target[0], width=target[1]).numpy()
    ours = preprocess_mask(mask, *target)
    assert set(np.unique(ours)) <= {0.0, 1.0}
    np.testing.assert_array_equal(ours, expected)


CROP_CASES = [
    # (image height, width), mask box (left, top, right, bottom), working (height, width), pad
    ((80, 96), (30, 20, 60, 50), (64, 64), 4),
    ((80, 96), (0, 0, 10, 70), (64, 64), 0),       # touching the left and top edges
    ((80, 96), (80, 60, 96, 80), (64, 128), 8),    # bottom-right corner, wide target
    ((120, 64), (10, 50, 60, 60), (128, 64), 3),   # flat mask, tall target
    ((100, 100), (40, 40, 41, 41), (64, 72), 100),  # padding beyond the image
]


@pytest.mark.parametrize("size,box,target,pad", CROP_CASES)
def test_mask_crop_box_matches_get_crop_region(size, box, target, pad) -> None:
    mask = blob_mask(*size, box)
    expected = VaeImageProcessor.get_crop_region(mask, target[1], target[0], pad=pad)
    assert mask_crop_box(mask, target[0], target[1], pad) == tuple(expected)


@pytest.mark.parametrize("size,box,target,pad", CROP_CASES)
def test_cropped_preprocessing_and_overlay_match_diffusers(size, box, target, pad) -> None:
    image, mask = picture(*size, seed=1), blob_mask(*size, box, seed=2)
    crop = mask_crop_box(mask, target[0], target[1], pad)
    expected_image = IMAGE_PROCESSOR.preprocess(image, height=target[0], width=target[1], crops_coords=crop,
                                                resize_mode="fill").numpy()
    expected_mask = MASK_PROCESSOR.preprocess(mask, height=target[0], width=target[1], crops_coords=crop,
                                              resize_mode="fill").numpy()
    np.testing.assert_array_equal(preprocess_image(image, *target, crop), expected_image)
    np.testing.assert_array_equal(preprocess_mask(mask, *target, crop), expected_mask)
    generated = np.asarray(picture(*target, seed=3))
    expected = IMAGE_PROCESSOR.apply_overlay(mask, image, Image.fromarray(generated), crop)
    np.testing.assert_array_equal(overlay(mask, image, generated, crop), np.asarray(expected))


@pytest.mark.parametrize("source,target", [((50, 90), (64, 64)), ((90, 50), (64, 64)), ((64, 64), (32, 96))])
def test_fill_and_crop_resizing_match_diffusers(source: tuple[int, int], target: tuple[int, int]) -> None:
    image = picture(*source, seed=4)
    np.testing.assert_array_equal(np.asarray(resize_fill(image, *target)),
                                  np.asarray(IMAGE_PROCESSOR._resize_and_fill(image, target[1], target[0])))
    np.testing.assert_array_equal(np.asarray(resize_crop(image, *target)),
                                  np.asarray(IMAGE_PROCESSOR._resize_and_crop(image, target[1], target[0])))


def test_latent_sample_and_mean_match_diagonal_gaussian() -> None:
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    rng = np.random.default_rng(0)
    parameters = rng.standard_normal((2, 8, 5, 7)).astype(np.float32) * 3
    parameters[:, 4:] *= 20  # log-variances beyond the clamp at -30 and 20
    noise = rng.standard_normal((2, 4, 5, 7)).astype(np.float32)
    distribution = DiagonalGaussianDistribution(torch.from_numpy(parameters))
    expected = distribution.mean + distribution.std * torch.from_numpy(noise)  # sample() with this noise drawn
    # numpy's and torch's exp differ in the last bit now and then: equal to float32 rounding, not bit for bit.
    np.testing.assert_allclose(latent_sample(parameters, noise), expected.numpy(), rtol=1e-6, atol=0)
    np.testing.assert_array_equal(latent_sample(parameters, None), distribution.mode().numpy())


def test_default_size_rounds_down_to_the_vae_factor_as_diffusers() -> None:
    inputs = read_image_inputs(picture(77, 100), None, None, "sample", None)
    assert inputs is not None
    assert inputs.default_size(8, (512, 512)) == tuple(IMAGE_PROCESSOR.get_default_height_width(picture(77, 100)))
    assert inputs.strength == 0.8  # diffusers' img2img default
    masked = read_image_inputs(picture(77, 100), blob_mask(77, 100, (1, 1, 9, 9)), None, "sample", 2)
    assert masked is not None and masked.strength == 1.0 and masked.default_size(8, (512, 512)) == (512, 512)


def test_images_arrive_as_arrays_pil_or_paths(tmp_path) -> None:
    rgba = np.zeros((16, 24, 4), dtype=np.uint8)
    assert load_image(rgba, "image").size == (24, 16)
    mask = np.zeros((16, 24, 1), dtype=np.uint8)
    assert load_image(mask, "mask_image", mask=True).mode == "L"
    path = tmp_path / "in.png"
    picture(16, 24).save(path)
    assert load_image(str(path), "image").size == (24, 16) and load_image(path, "image").size == (24, 16)


def test_a_path_is_read_upright_as_diffusers_load_image_reads_it(tmp_path) -> None:
    from diffusers.utils import load_image as diffusers_load_image

    path = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to view
    picture(48, 64).save(path, exif=exif, quality=95)
    ours, theirs = load_image(path, "image").convert("RGB"), diffusers_load_image(str(path))
    assert ours.size == theirs.size == (48, 64)
    assert np.array_equal(np.asarray(ours), np.asarray(theirs))


@pytest.mark.parametrize("arguments,message", [
    ({"image": np.zeros((8, 8), np.uint8)}, "HxWx3 or HxWx4 uint8 array"),
    ({"image": np.zeros((8, 8, 3), np.float32)}, "uint8"),
    ({"image": 3}, "a path, a PIL image or a uint8 array"),
    ({"image": "/nonexistent/x.png"}, "cannot read"),
    ({"image": "MASK", "mask_image": np.zeros((8, 8, 3), np.uint8)}, "HxW or HxWx1"),
    ({"mask_image": "MASK"}, "mask_image needs image"),
    ({"strength": 0.5}, "strength is for image-to-image"),
    ({"image": "IMAGE", "strength": 0.0}, r"strength must be a number in \(0, 1\]"),
    ({"image": "IMAGE", "strength": 1.01}, r"strength must be a number in \(0, 1\]"),
    ({"image": "IMAGE", "strength": True}, r"strength must be a number in \(0, 1\]"),
    ({"image": "IMAGE", "sample_mode": "mean"}, "sample_mode must be one of sample, argmax"),
    ({"image": "IMAGE", "padding_mask_crop": 4}, "padding_mask_crop needs mask_image"),
    ({"image": "IMAGE", "mask_image": "BLACK", "padding_mask_crop": 4}, "at least one non-black pixel"),
    ({"image": "IMAGE", "mask_image": "MASK", "padding_mask_crop": -1}, "padding_mask_crop must be"),
    ({"image": "IMAGE", "mask_image": "SMALL"}, "mask_image is 24x16 but image is 24x24; they must be the same size"),
])
def test_bad_image_inputs_say_what_is_allowed(arguments, message) -> None:
    stand_ins = {"IMAGE": picture(24, 24), "MASK": blob_mask(24, 24, (2, 2, 9, 9)),
                 "BLACK": Image.new("L", (24, 24)), "SMALL": Image.new("L", (24, 16))}
    given = {"image": None, "mask_image": None, "strength": None, "sample_mode": "sample", "padding_mask_crop": None,
             **{k: stand_ins.get(v, v) if isinstance(v, str) else v for k, v in arguments.items()}}
    with pytest.raises(PipelineInputError, match=message):
        read_image_inputs(given["image"], given["mask_image"], given["strength"], given["sample_mode"],
                          given["padding_mask_crop"])
