"""Uploaded images (serve/images.py): PNG, JPEG and WebP decode as PIL decodes them; every other format PIL would
open is refused by its first bytes; a picture over the pixel limit is refused from its header, before decoding."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from diffship.serve.fields import ApiInputError
from diffship.serve.images import decode_base64_image, decode_image

PIXELS = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)


def encoded(format: str, **options: object) -> bytes:
    out = io.BytesIO()
    Image.fromarray(PIXELS).save(out, format=format, **options)
    return out.getvalue()


@pytest.mark.parametrize("format,options", [("PNG", {}), ("JPEG", {"quality": 90}), ("WEBP", {"lossless": True})])
def test_png_jpeg_and_webp_decode_as_pil_decodes_them(format: str, options: dict) -> None:
    data = encoded(format, **options)
    with Image.open(io.BytesIO(data)) as reference:
        expected = np.asarray(reference.convert("RGB"))
    decoded = decode_base64_image("data:image/x;base64," + base64.b64encode(data).decode(), "init_images[0]")
    np.testing.assert_array_equal(np.asarray(decoded.convert("RGB")), expected)


@pytest.mark.parametrize("format", ["BMP", "TIFF", "ICO", "GIF", "PPM", "TGA"])
def test_formats_pil_would_open_are_refused_by_their_first_bytes(format: str) -> None:
    data = encoded(format)
    with Image.open(io.BytesIO(data)):  # PIL itself opens every one of them
        pass
    with pytest.raises(ApiInputError, match=r"mask must be a PNG, JPEG or WebP image"):
        decode_image(data, "mask")


def test_an_eps_file_is_refused_before_pil_sees_it() -> None:
    with pytest.raises(ApiInputError, match="init_images\\[0\\] must be a PNG, JPEG or WebP image"):
        decode_image(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "init_images[0]")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header says ``width`` x ``height`` (one empty data chunk): decoding it would allocate it all."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [12000, 20000])
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_a_picture_over_the_pixel_limit_is_refused_from_its_header(side: int) -> None:
    with pytest.raises(ApiInputError, match=r"init_images\[0\] is (12000x12000|over \d+) pixels; at most 16777216 pixels"):
        decode_image(png_header_only(side, side), "init_images[0]")


def test_a_truncated_image_is_a_clear_error() -> None:
    with pytest.raises(ApiInputError, match="mask is not a readable PNG, JPEG or WebP image"):
        decode_image(encoded("PNG")[:60], "mask")
    with pytest.raises(ApiInputError, match="mask is not base64-encoded"):
        decode_base64_image("not base64!", "mask")
