"""The README's prompt-weight grid: one prompt with a weighted phrase at 0.5 / 1.0 / 1.5, under both weightings.

    python scripts/make_weight_grid.py packages/tiny docs/images/prompt-weights.png

Rows: the weight of "(red fox:W)"; columns: ``prompt_weighting`` webui and compel. Same seed everywhere, so only the
weighting changes between cells. On the tiny test model (random weights) the pictures are texture, not foxes: the grid
shows that and how much a weight moves the image, not what a trained model draws.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffship.runtime import Pipeline  # noqa: E402
from diffship.runtime.images import contact_sheet, save_png  # noqa: E402

WEIGHTS = (0.5, 1.0, 1.5)
WEIGHTINGS = ("webui", "compel")
TEMPLATE = "a ({phrase}:{weight}) standing in deep snow, golden hour, detailed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--phrase", default="red fox")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    cells, described = [], []
    with Pipeline.from_package(args.package, backend="ort", device="cpu") as pipe:
        for weight in WEIGHTS:
            row = []
            for weighting in WEIGHTINGS:
                result = pipe(TEMPLATE.format(phrase=args.phrase, weight=weight), num_inference_steps=args.steps,
                              height=args.size, width=args.size, seed=args.seed, scheduler="dpmpp_2m_karras",
                              long_prompts=True, prompt_weighting=weighting)
                row.append(result.images[0])
                described.append(result.parameters[0])
            cells.append(row)
    sheet = contact_sheet(cells, [f"weight {w}" for w in WEIGHTS], [f"prompt_weighting={w}" for w in WEIGHTINGS],
                          title=TEMPLATE.format(phrase=args.phrase, weight="W"))
    save_png(sheet, args.out, {"cells": described})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
