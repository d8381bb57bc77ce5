"""Images out of the pipeline: diffusers' post-processing, PNGs with their generation parameters, contact sheets."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from diffship.core.files import write_bytes_atomic
from diffship.runtime.errors import PipelineError

PARAMETERS_KEY = "diffship"
"""The PNG text chunk holding diffship's generation parameters as JSON."""
INFOTEXT_KEY = "parameters"
"""The PNG text chunk holding the web UI's infotext (``runtime.infotext``), which its PNG-info tab, model sites and
other tools read; PNGs written before diffship 43 hold the JSON there (``read_parameters`` still reads them)."""


def to_uint8(images: np.ndarray) -> list[np.ndarray]:
    """[B, 3, H, W] decoder output in [-1, 1] -> B HxWx3 uint8 arrays, exactly as diffusers' VaeImageProcessor."""
    scaled = np.clip(images / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1)
    return list((scaled * 255).round().astype(np.uint8))


def save_png(image: np.ndarray, path: Path, parameters: Mapping[str, Any] | None = None) -> Path:
    """Write ``image`` as a PNG carrying ``parameters`` in a text chunk; atomically (no half-written file)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, png_bytes(image, parameters))
    except OSError as exc:
        raise ImageWriteError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def png_bytes(image: np.ndarray, parameters: Mapping[str, Any] | None = None) -> bytes:
    """``image`` encoded as PNG, ``parameters`` as the web UI's infotext and as JSON in a chunk of its own (what
    ``read_parameters`` reads)."""
    from PIL import Image, PngImagePlugin

    from diffship.runtime.infotext import infotext

    info = PngImagePlugin.PngInfo()
    if parameters:
        if "prompt" in parameters and "seed" in parameters:  # one image's (a contact sheet's are not)
            info.add_text(INFOTEXT_KEY, infotext(parameters))
        info.add_text(PARAMETERS_KEY, json.dumps(parameters, ensure_ascii=False, sort_keys=True))
    encoded = io.BytesIO()
    Image.fromarray(image).save(encoded, format="PNG", pnginfo=info)
    return encoded.getvalue()


class ImageWriteError(PipelineError):
    """An image cannot be written where it was asked to go."""


def read_parameters(path: Path | IO[bytes]) -> dict[str, Any]:
    """The generation parameters stored in a PNG written by ``save_png`` or ``png_bytes`` (a path or a file object),
    or by diffship before the infotext (JSON in ``parameters``)."""
    from PIL import Image

    with Image.open(path) as image:
        text = image.text  # type: ignore[attr-defined]
    return json.loads(text[PARAMETERS_KEY] if PARAMETERS_KEY in text else text[INFOTEXT_KEY])


def contact_sheet(
    cells: Sequence[Sequence[np.ndarray]],
    row_labels: Sequence[str],
    column_labels: Sequence[str],
    title: str = "",
    min_cell: int = 128,
) -> np.ndarray:
    """A labelled grid (rows x columns of equally sized HxWx3 images) as one HxWx3 uint8 array.

    Images smaller than ``min_cell`` pixels are enlarged (nearest neighbour) so that small models stay legible.
    """
    from PIL import Image, ImageDraw, ImageFont

    rows, columns = len(cells), len(cells[0])
    height, width = cells[0][0].shape[:2]
    zoom = max(1, -(-min_cell // min(height, width)))
    height, width = height * zoom, width * zoom
    font = ImageFont.load_default()
    pad = 6
    label_width = max([_text_width(font, t) for t in row_labels] + [0]) + 2 * pad
    cell_width = max([width] + [_text_width(font, t) + 2 * pad for t in column_labels])
    header = 14 + 2 * pad
    title_height = header if title else 0
    sheet_width = max(label_width + columns * (cell_width + pad), _text_width(font, title) + 2 * pad)
    sheet = Image.new("RGB", (sheet_width, title_height + header + rows * (height + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad, pad), title, fill="black", font=font)
    for column, label in enumerate(column_labels):
        draw.text((label_width + column * (cell_width + pad) + pad, title_height + pad), label, fill="black", font=font)
    for row in range(rows):
        top = title_height + header + row * (height + pad)
        draw.text((pad, top + height // 2 - 6), row_labels[row], fill="black", font=font)
        for column in range(columns):
            image = Image.fromarray(cells[row][column])
            if zoom > 1:
                image = image.resize((width, height), Image.Resampling.NEAREST)
            sheet.paste(image, (label_width + column * (cell_width + pad) + (cell_width - width) // 2, top))
    return np.asarray(sheet)


def _text_width(font: Any, text: str) -> int:
    left, _, right, _ = font.getbbox(text)
    return int(right - left)
