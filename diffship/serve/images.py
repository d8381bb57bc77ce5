"""Images a client uploads, decoded safely: PNG, JPEG or WebP only, known by their first bytes before PIL sees them
(PIL would open BMP, TIFF, ICO, DDS, EPS -- the last through Ghostscript where installed); the pixel count read from
the header and refused before decoding; decoding is CPU-bound, so callers run it off the event loop.

The API modules decode through ``decode_base64_image`` (a field name for the messages)."""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

from diffship.serve.fields import ApiInputError
from diffship.serve.limits import DoorLimits

FORMATS = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG"}
"""Magic bytes -> PIL format name; WebP is ``RIFF....WEBP``."""
ALLOWED = "PNG, JPEG or WebP"


def image_format(data: bytes) -> str | None:
    """PIL's name for the format ``data`` starts as, if it is one this service takes."""
    for magic, name in FORMATS.items():
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def decode_image(data: bytes, name: str, max_pixels: int = DoorLimits().max_image_pixels) -> Any:
    """``data`` (an uploaded file) as a loaded PIL image; ApiInputError naming ``name`` otherwise."""
    from PIL import Image, UnidentifiedImageError

    kind = image_format(data)
    if kind is None:
        raise ApiInputError(f"{name} must be a {ALLOWED} image; its first bytes are not one")
    try:
        with Image.open(io.BytesIO(data), formats=[kind]) as image:  # reads the header only
            width, height = image.size
            if width * height > max_pixels:
                raise ApiInputError(f"{name} is {width}x{height} pixels; at most {max_pixels} pixels "
                                    f"({_side(max_pixels)}x{_side(max_pixels)}) are taken")
            image.load()
            return image.copy()
    except ApiInputError:
        raise
    except Image.DecompressionBombError:  # PIL's own check, from the header: over twice its MAX_IMAGE_PIXELS
        raise ApiInputError(f"{name} is over {2 * (Image.MAX_IMAGE_PIXELS or 0)} pixels; at most {max_pixels} pixels "
                            f"({_side(max_pixels)}x{_side(max_pixels)}) are taken") from None
    except (ValueError, UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ApiInputError(f"{name} is not a readable {ALLOWED} image ({type(exc).__name__})") from None


def decode_base64_image(value: str, name: str, max_pixels: int = DoorLimits().max_image_pixels) -> Any:
    """A base64 image (a ``data:image/...;base64,`` prefix and wrapped lines allowed) as a loaded PIL image."""
    encoded = "".join((value.split(",", 1)[1] if value.startswith("data:") else value).split())
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ApiInputError(f"{name} is not base64-encoded ({ALLOWED} image expected)") from None
    return decode_image(data, name, max_pixels)


def _side(pixels: int) -> int:
    return int(pixels**0.5)
