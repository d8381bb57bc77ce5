"""Write an inpainting mask: a white disc or rectangle (the region to repaint) on black, as a PNG.

    python -m diffship.tools.make_mask mask.png --size 512x512 --disc 0.5,0.45,0.25      # centre x, y and radius, as fractions
    python -m diffship.tools.make_mask mask.png --size 768x512 --rect 0.2,0.3,0.6,0.8    # left, top, right, bottom fractions

Masks from any paint program work the same way: the image's size, white = repaint, black = keep (grey levels are
binarised at half, as diffusers does).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m diffship.tools.make_mask", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the .png to write")
    parser.add_argument("--size", default="512x512", type=_numbers("x", 2, int),
                        help="WIDTHxHEIGHT in pixels (the image's size)")
    shape = parser.add_mutually_exclusive_group()
    shape.add_argument("--disc", default="0.5,0.5,0.25", type=_numbers(",", 3, float),
                       help="centre x, centre y, radius (fractions of the width)")
    shape.add_argument("--rect", type=_numbers(",", 4, float),
                       help="left, top, right, bottom (fractions of width and height)")
    parser.add_argument("--overwrite", action="store_true", help="replace the file if it exists")
    args = parser.parse_args()
    if args.out.suffix.lower() != ".png":
        parser.error(f"{args.out}: a mask is a .png (a lossy format would blur its edge)")
    if args.out.exists() and not args.overwrite:
        parser.error(f"{args.out} exists; pass --overwrite to replace it")
    (width, height), inside = args.size, None
    if width < 1 or height < 1:
        parser.error(f"--size {width}x{height}: both must be at least 1 pixel")
    y, x = np.mgrid[0:height, 0:width] + 0.5
    if args.rect:
        left, top, right, bottom = args.rect
        inside = (x >= left * width) & (x < right * width) & (y >= top * height) & (y < bottom * height)
    else:
        cx, cy, radius = args.disc
        inside = (x - cx * width) ** 2 + (y - cy * height) ** 2 <= (radius * width) ** 2
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.where(inside, 255, 0).astype(np.uint8)).save(args.out)
    except OSError as exc:
        parser.exit(2, f"error: cannot write {args.out}: {exc.strerror or exc}\n")
    print(f"wrote {args.out} ({width}x{height}, {int(inside.sum())} pixels to repaint)")


def _numbers(separator: str, count: int, kind: type) -> Callable[[str], tuple[Any, ...]]:
    """An argparse type: ``count`` numbers of ``kind`` joined by ``separator``, or a message saying so."""

    def parse(text: str) -> tuple[Any, ...]:
        parts = text.lower().split(separator)
        try:
            values = tuple(kind(part) for part in parts)
        except ValueError:
            values = ()
        if len(values) != count:
            raise argparse.ArgumentTypeError(f"{text!r}: give {count} {kind.__name__} values joined by "
                                             f"{separator!r}")
        return values

    return parse


if __name__ == "__main__":
    main()
