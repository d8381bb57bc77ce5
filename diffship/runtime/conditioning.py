"""Images into the pipeline: loading, diffusers' preprocessing, and the crop and overlay of ``padding_mask_crop``.

Preprocessing is diffusers' ``VaeImageProcessor`` for PIL input, step for step: resize to the target size with Pillow's
Lanczos filter, to [0, 1], then to [-1, 1] for images; masks are resized the same way, made grayscale and binarised at
0.5. Arrays (HxWx3 or HxWx4 uint8; HxW or HxWx1 for masks) and paths are turned into PIL images first, so every input
takes that one path (diffusers resizes numpy input with torch instead; give it PIL images to compare).

With ``padding_mask_crop``, as diffusers: the smallest box holding every non-zero mask pixel, padded and widened to the
target's aspect ratio, is cropped from image and mask and resized to the target size ("fill": aspect kept, borders
stretched from the edge pixels); the result is scaled back into the box and the unmasked pixels of the original image
are laid over it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diffship.runtime.errors import PipelineInputError

ImageInput = Any
"""A path, a PIL image, or a uint8 array (HxWx3 / HxWx4 for images, HxW / HxWx1 for masks); for image-to-image also
latents, a float array [n, latent channels, h, w] (an SDXL base model's ``output_type="latent"`` result)."""

SAMPLE_MODES = ("sample", "argmax")
"""How an image becomes latents: a draw from the VAE encoder's distribution, or its mean (diffusers' names)."""
TASKS = ("txt2img", "img2img", "inpaint")


def load_image(value: ImageInput, what: str, mask: bool = False) -> Any:
    """``value`` as a PIL image, or a PipelineInputError saying what is accepted."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(value, Image.Image):
        return value
    if isinstance(value, (str, os.PathLike)):
        if not str(value):
            raise PipelineInputError(f"{what}: the path is empty")
        try:
            with Image.open(Path(value)) as opened:
                opened.load()
                # Upright as viewers show it (a phone photo's EXIF rotation), as diffusers.utils.load_image does.
                return ImageOps.exif_transpose(opened)
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
            raise PipelineInputError(f"{what}: cannot read {value}: {exc}") from None
    if isinstance(value, np.ndarray):
        shapes = "HxW or HxWx1" if mask else "HxWx3 or HxWx4"
        array = value[..., 0] if mask and value.ndim == 3 and value.shape[-1] == 1 else value
        good = array.ndim == 2 if mask else (array.ndim == 3 and array.shape[-1] in (3, 4))
        if array.dtype != np.uint8 or not good or min(array.shape[:2]) < 1:
            raise PipelineInputError(f"{what} must be a {shapes} uint8 array, got {value.dtype} of shape {value.shape}")
        return Image.fromarray(np.ascontiguousarray(array))
    raise PipelineInputError(f"{what} must be a path, a PIL image or a uint8 array, got {type(value).__name__}")


@dataclass(frozen=True)
class ImageInputs:
    """What an image-to-image or inpainting call was given, loaded and checked, before any resizing."""

    image: Any
    """PIL image, or None when the call gives latents."""
    mask: Any | None
    """PIL image, or None for image-to-image."""
    strength: float
    sample_mode: str
    padding_mask_crop: int | None
    latents: np.ndarray | None = None
    """[n, C, h, w] float32 latents given in place of an image (used as they are: not encoded, not scaled)."""

    @property
    def task(self) -> str:
        return "inpaint" if self.mask is not None else "img2img"

    def default_size(self, multiple: int, native: tuple[int, int]) -> tuple[int, int]:
        """Height and width when the caller gives none: the image's own size rounded down to ``multiple`` pixels (as
        diffusers' img2img), or the model's native size for a masked crop (the crop is worked at full resolution)."""
        if self.padding_mask_crop is not None:
            return native
        if self.latents is not None:
            return self.latents.shape[2] * multiple, self.latents.shape[3] * multiple
        height, width = self.image.height - self.image.height % multiple, self.image.width - self.image.width % multiple
        if height < multiple or width < multiple:
            raise PipelineInputError(
                f"the image is {self.image.width}x{self.image.height}; it needs at least {multiple} pixels a side"
            )
        return height, width

    def crop_box(self, height: int, width: int) -> tuple[int, int, int, int] | None:
        """The (left, top, right, bottom) box ``padding_mask_crop`` works on, or None."""
        if self.padding_mask_crop is None or self.mask is None:
            return None
        return mask_crop_box(self.mask, height, width, self.padding_mask_crop)


def read_image_inputs(
    image: ImageInput | None,
    mask_image: ImageInput | None,
    strength: Any,
    sample_mode: Any,
    padding_mask_crop: Any,
    img2img_strength: float = 0.8,
) -> ImageInputs | None:
    """The image task's inputs checked (None without an image), or a PipelineInputError saying what is allowed.
    ``img2img_strength``: the default strength of image-to-image (diffusers': 0.8 for SD, 0.3 for SDXL)."""
    if image is None:
        if mask_image is not None:
            raise PipelineInputError("mask_image needs image: the mask says which part of the image to repaint")
        if padding_mask_crop is not None:
            raise PipelineInputError("padding_mask_crop is for inpainting: give image and mask_image")
        if strength is not None:
            raise PipelineInputError("strength is for image-to-image and inpainting: give image (and mask_image)")
        if sample_mode != "sample":
            raise PipelineInputError(
                f"sample_mode {sample_mode!r:.60} is for image-to-image and inpainting (how the image is encoded): "
                "give image"
            )
        return None
    if isinstance(image, np.ndarray) and image.ndim == 4:
        return _read_latents(image, mask_image, strength, sample_mode, padding_mask_crop, img2img_strength)
    loaded = load_image(image, "image")
    mask = load_image(mask_image, "mask_image", mask=True) if mask_image is not None else None
    if mask is not None and mask.size != loaded.size:
        raise PipelineInputError(
            f"mask_image is {mask.width}x{mask.height} but image is {loaded.width}x{loaded.height}; they must be the "
            "same size (the mask marks pixels of the image: white = repaint, black = keep)"
        )
    default_strength = 1.0 if mask is not None else img2img_strength  # diffusers' inpaint and img2img defaults
    value = check_strength(default_strength if strength is None else strength)
    check_sample_mode(sample_mode)
    if padding_mask_crop is not None:
        if mask is None:
            raise PipelineInputError("padding_mask_crop needs mask_image (it crops around the masked region)")
        if isinstance(padding_mask_crop, bool) or not isinstance(padding_mask_crop, (int, np.integer)) \
                or padding_mask_crop < 0:
            raise PipelineInputError(f"padding_mask_crop must be a number of pixels >= 0, got {padding_mask_crop!r:.60}")
        if not np.asarray(mask.convert("L")).any():
            raise PipelineInputError("padding_mask_crop needs a mask with at least one non-black pixel")
    return ImageInputs(loaded, mask, value, str(sample_mode),
                       None if padding_mask_crop is None else int(padding_mask_crop))


def _read_latents(latents: np.ndarray, mask_image: Any, strength: Any, sample_mode: Any, padding_mask_crop: Any,
                  img2img_strength: float) -> ImageInputs:
    """Latents given as the image (diffusers' img2img takes a 4-channel image as latents): image-to-image only."""
    if mask_image is not None or padding_mask_crop is not None:
        raise PipelineInputError("image is latents (a 4-d array): inpainting needs a picture (path, PIL image or "
                                 "HxWx3 uint8 array) for mask_image to mark")
    if latents.dtype not in (np.float32, np.float16) or min(latents.shape) < 1:
        raise PipelineInputError(f"latents given as image must be a float32 or float16 [n, channels, height/8, "
                                 f"width/8] array, got {latents.dtype} of shape {latents.shape}")
    if not np.isfinite(latents).all():
        raise PipelineInputError("the latents given as image hold NaN or infinite values")
    if sample_mode != "sample":
        raise PipelineInputError(f"sample_mode {sample_mode!r:.60} says how an image is encoded; latents are not "
                                 "encoded")
    value = check_strength(img2img_strength if strength is None else strength)
    return ImageInputs(None, None, value, "sample", None, np.ascontiguousarray(latents, dtype=np.float32))


def check_strength(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) or not 0 < value <= 1:
        raise PipelineInputError(f"strength must be a number in (0, 1] (how much of the schedule is run), got {value!r:.60}")
    return float(value)


def check_sample_mode(value: Any) -> None:
    if not isinstance(value, str) or value not in SAMPLE_MODES:
        raise PipelineInputError(f"sample_mode must be one of {', '.join(SAMPLE_MODES)}, got {value!r:.60}")


@dataclass(frozen=True)
class ImageTask:
    """An image-to-image or inpainting call's inputs, preprocessed at the request's size."""

    inputs: ImageInputs
    image: np.ndarray | None
    """[1, 3, H, W] in [-1, 1]; None when the call gives latents (``inputs.latents``)."""
    mask: np.ndarray | None
    """[1, 1, H, W] in {0, 1} (1 = repaint), or None for image-to-image."""
    crop_box: tuple[int, int, int, int] | None

    @property
    def strength(self) -> float:
        return self.inputs.strength

    def masked_image(self) -> np.ndarray:
        """The image with the region to repaint blanked (diffusers: ``image * (mask < 0.5)``)."""
        assert self.mask is not None and self.image is not None
        return (self.image * (self.mask < 0.5)).astype(np.float32)

    def latent_mask(self, factor: int) -> np.ndarray:
        """The mask at latent size by nearest neighbour (torch's ``interpolate`` default): every ``factor``-th pixel."""
        assert self.mask is not None
        return np.ascontiguousarray(self.mask[:, :, ::factor, ::factor])

    def finish(self, generated: np.ndarray) -> np.ndarray:
        """A generated HxWx3 uint8 image as the caller gets it: with ``padding_mask_crop``, scaled back into the crop
        box and under the original's unmasked pixels (diffusers' ``apply_overlay``); otherwise as generated."""
        if self.crop_box is None:
            return generated
        return overlay(self.inputs.mask, self.inputs.image, generated, self.crop_box)


def prepare_task(inputs: ImageInputs, height: int, width: int) -> ImageTask:
    """Image and mask resized and normalised for a ``height`` x ``width`` request."""
    if inputs.latents is not None:
        return ImageTask(inputs, None, None, None)
    box = inputs.crop_box(height, width)
    image = preprocess_image(inputs.image, height, width, box)
    mask = preprocess_mask(inputs.mask, height, width, box) if inputs.mask is not None else None
    return ImageTask(inputs, image, mask, box)


def _resize(image: Any, height: int, width: int, box: tuple[int, int, int, int] | None, mode: str) -> Any:
    from PIL import Image

    if box is not None:
        return resize_fill(image.crop(box), height, width, mode)
    return image.resize((width, height), resample=Image.Resampling.LANCZOS, reducing_gap=None)


def preprocess_image(image: Any, height: int, width: int, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """[1, 3, H, W] float32 in [-1, 1], as diffusers' VaeImageProcessor makes it from a PIL image."""
    resized = _resize(image.convert("RGB"), height, width, box, "RGB")
    array = np.asarray(resized).astype(np.float32) / np.float32(255.0)
    return (np.float32(2.0) * array.transpose(2, 0, 1)[None] - np.float32(1.0)).astype(np.float32)


def preprocess_mask(mask: Any, height: int, width: int, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """[1, 1, H, W] float32 in {0, 1} (1 = repaint), as diffusers' mask processor makes it from a PIL image."""
    resized = _resize(mask, height, width, box, "RGB")
    array = np.asarray(resized.convert("L")).astype(np.float32) / np.float32(255.0)
    return np.where(array < 0.5, np.float32(0.0), np.float32(1.0))[None, None].astype(np.float32)


def latent_sample(parameters: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
    """A draw from the VAE encoder's diagonal Gaussian (mean and log-variance stacked on channels), as diffusers'
    ``DiagonalGaussianDistribution.sample``: log-variance clamped to [-30, 20], mean + std * noise; ``noise`` None:
    the mean (``mode()``, sample_mode "argmax")."""
    mean, logvar = np.split(parameters.astype(np.float32), 2, axis=1)
    if noise is None:
        return np.ascontiguousarray(mean)
    std = np.exp(np.float32(0.5) * np.clip(logvar, np.float32(-30.0), np.float32(20.0)))
    return (mean + std * noise).astype(np.float32)


def mask_crop_box(mask: Any, height: int, width: int, pad: int) -> tuple[int, int, int, int]:
    """diffusers' ``get_crop_region``: the box around every non-zero mask pixel, ``pad`` pixels wider, widened to the
    aspect ratio of ``width`` x ``height`` and kept inside the image."""
    array = np.asarray(mask.convert("L"))
    rows, columns = np.flatnonzero(array.any(axis=1)), np.flatnonzero(array.any(axis=0))
    h, w = array.shape
    x1, y1 = max(int(columns[0]) - pad, 0), max(int(rows[0]) - pad, 0)
    x2, y2 = min(int(columns[-1]) + 1 + pad, w), min(int(rows[-1]) + 1 + pad, h)
    if (x2 - x1) / (y2 - y1) > width / height:
        y1, y2 = _widen(y1, y2, int((x2 - x1) / (width / height) - (y2 - y1)), h)
    else:
        x1, x2 = _widen(x1, x2, int((y2 - y1) * (width / height) - (x2 - x1)), w)
    return x1, y1, x2, y2


def _widen(low: int, high: int, grow: int, limit: int) -> tuple[int, int]:
    # Half on each side, then shifted back inside [0, limit] (diffusers' order of corrections, kept exactly).
    low, high = low - grow // 2, high + grow - grow // 2
    if high >= limit:
        low, high = low - (high - limit), limit
    if low < 0:
        low, high = 0, high - low
    return low, min(high, limit)


def resize_fill(image: Any, height: int, width: int, mode: str = "RGB") -> Any:
    """diffusers' ``resize_mode="fill"``: fit inside ``width`` x ``height`` keeping the aspect ratio, centred, the
    empty bands filled by stretching the edge rows or columns."""
    from PIL import Image

    lanczos = Image.Resampling.LANCZOS
    ratio, source_ratio = width / height, image.width / image.height
    src_w = width if ratio < source_ratio else image.width * height // image.height
    src_h = height if ratio >= source_ratio else image.height * width // image.width
    resized = image.resize((src_w, src_h), resample=lanczos)
    filled = Image.new(mode, (width, height))
    filled.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    if ratio < source_ratio:
        band = height // 2 - src_h // 2
        if band > 0:
            filled.paste(resized.resize((width, band), box=(0, 0, width, 0)), box=(0, 0))
            filled.paste(resized.resize((width, band), box=(0, resized.height, width, resized.height)),
                         box=(0, band + src_h))
    elif ratio > source_ratio:
        band = width // 2 - src_w // 2
        if band > 0:
            filled.paste(resized.resize((band, height), box=(0, 0, 0, height)), box=(0, 0))
            filled.paste(resized.resize((band, height), box=(resized.width, 0, resized.width, height)),
                         box=(band + src_w, 0))
    return filled


def resize_crop(image: Any, height: int, width: int) -> Any:
    """diffusers' ``resize_mode="crop"``: cover ``width`` x ``height`` keeping the aspect ratio, centred, cropped."""
    from PIL import Image

    ratio, source_ratio = width / height, image.width / image.height
    src_w = width if ratio > source_ratio else image.width * height // image.height
    src_h = height if ratio <= source_ratio else image.height * width // image.width
    resized = image.resize((src_w, src_h), resample=Image.Resampling.LANCZOS)
    cropped = Image.new("RGB", (width, height))
    cropped.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    return cropped


def overlay(mask: Any, original: Any, generated: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """diffusers' ``apply_overlay``: the generated image scaled into ``box`` of an image of the original's size, the
    original's pixels laid over it where the mask is not white (its grey levels blend)."""
    from PIL import Image, ImageOps

    size = original.size
    kept = Image.new("RGBa", size)
    kept.paste(original.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    left, top, right, bottom = box
    base = Image.new("RGBA", size)
    base.paste(resize_crop(Image.fromarray(generated), bottom - top, right - left), (left, top))
    result = base.convert("RGB").convert("RGBA")
    result.alpha_composite(kept.convert("RGBA"))
    return np.asarray(result.convert("RGB"))
