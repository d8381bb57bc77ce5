"""Write an inpainting mask: a white disc or rectangle (the region to repaint) on black, as a PNG.

    python -m diffship.tools.make_mask mask.png --size 512x512 --disc 0.5,0.45,0.25      # centre x, y and radius, as fractions
    python -m diffship.tools.make_mask mask.png --size 768x512 --rect 0.2,0.3,0.6,0.8    # left, top, right, bottom fractions

Masks from any paint program work the same way: the image's size, white = repaint, black = keep (grey levels are
binarised at half, as diffusers does).
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--size", default="512x512", help="WIDTHxHEIGHT in pixels (the image's size)")
    shape = parser.add_mutually_exclusive_group()
    shape.add_argument("--disc", default="0.5,0.5,0.25", help="centre x, centre y, radius (fractions of the width)")
    shape.add_argument("--rect", help="left, top, right, bottom (fractions of width and height)")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    y, x = np.mgrid[0:height, 0:width] + 0.5
    if args.rect:
        left, top, right, bottom = (float(v) for v in args.rect.split(","))
        inside = (x >= left * width) & (x < right * width) & (y >= top * height) & (y < bottom * height)
    else:
        cx, cy, radius = (float(v) for v in args.disc.split(","))
        inside = (x - cx * width) ** 2 + (y - cy * height) ** 2 <= (radius * width) ** 2
    Image.fromarray(np.where(inside, 255, 0).astype(np.uint8)).save(args.out)
    print(f"wrote {args.out} ({width}x{height}, {int(inside.sum())} pixels to repaint)")


if __name__ == "__main__":
    main()
