"""The synthetic captioned data set the ``shapes`` model is trained on: one shape on a plain background per image.

A scene is five attributes (shape, colour, size, position, background) drawn at random; ``render`` paints it at 4x and
averages down (smooth edges), with a little jitter in place, size, angle and hue so that no two images are alike;
``caption`` words it as a user would ("a small red star on a blue background, top left"), sometimes leaving attributes
out so the model also learns the short forms. Some (shape, colour, position) triples never appear in training: the
quality prompts are made of them, so a score measures what the model composes, not what it memorised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 215, 30),
    "green": (30, 160, 60),
    "blue": (35, 75, 215),
    "purple": (135, 50, 185),
    "white": (240, 240, 240),
    "black": (20, 20, 20),
}
SIZES = {"small": 0.15, "large": 0.26}
"""Circumradius as a fraction of the image side."""
POSITIONS = {
    "top left": (0.31, 0.31),
    "top right": (0.69, 0.31),
    "bottom left": (0.31, 0.69),
    "bottom right": (0.69, 0.69),
    "center": (0.5, 0.5),
}
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "colour": tuple(COLOURS),
    "size": tuple(SIZES),
    "position": tuple(POSITIONS),
    "background": tuple(COLOURS),
}
SCORED = ("shape", "colour", "position")
"""What the quality metric judges: the prompt's shape, its colour and where it is."""

HELD_OUT_SEED = 1234
HELD_OUT_TRIPLES = 20
"""(shape, colour, position) triples kept out of training (of 5 x 8 x 5 = 200)."""


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    size: str
    position: str
    background: str

    def labels(self) -> dict[str, int]:
        return {name: ATTRIBUTES[name].index(getattr(self, name)) for name in ATTRIBUTES}

    @property
    def triple(self) -> tuple[str, str, str]:
        return (self.shape, self.colour, self.position)


def held_out_triples() -> frozenset[tuple[str, str, str]]:
    rng = np.random.default_rng(HELD_OUT_SEED)
    triples = [(s, c, p) for s in SHAPES for c in COLOURS for p in POSITIONS]
    chosen = rng.choice(len(triples), size=HELD_OUT_TRIPLES, replace=False)
    return frozenset(triples[int(k)] for k in chosen)


def random_scene(rng: np.random.Generator, exclude: frozenset[tuple[str, str, str]] = frozenset()) -> Scene:
    while True:
        colour = ATTRIBUTES["colour"][rng.integers(len(ATTRIBUTES["colour"]))]
        background = rng.choice([c for c in ATTRIBUTES["colour"] if c != colour])
        scene = Scene(
            shape=SHAPES[rng.integers(len(SHAPES))],
            colour=colour,
            size=ATTRIBUTES["size"][rng.integers(len(ATTRIBUTES["size"]))],
            position=ATTRIBUTES["position"][rng.integers(len(ATTRIBUTES["position"]))],
            background=str(background),
        )
        if scene.triple not in exclude:
            return scene


def caption(scene: Scene, rng: np.random.Generator | None = None) -> str:
    """The full caption, or (with ``rng``) one with the size, background and/or position sometimes left out."""
    keep_size = rng is None or rng.random() > 0.25
    keep_background = rng is None or rng.random() > 0.25
    keep_position = rng is None or rng.random() > 0.2
    words = ([scene.size] if keep_size else []) + [scene.colour, scene.shape]
    text = f"{_article(words[0])} {' '.join(words)}"
    if keep_background:
        text += f" on {_article(scene.background)} {scene.background} background"
    if keep_position:
        text += f", {scene.position}"
    return text


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _jitter_colour(rgb: tuple[int, int, int], rng: np.random.Generator, amount: int) -> tuple[int, int, int]:
    return tuple(int(np.clip(v + rng.integers(-amount, amount + 1), 0, 255)) for v in rgb)  # type: ignore[return-value]


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        points = [(r * math.cos(a), r * math.sin(a)) for a in (math.pi / 4 + k * math.pi / 2 for k in range(4))]
    elif shape == "triangle":
        points = [(r * math.cos(a), r * math.sin(a)) for a in (-math.pi / 2 + k * 2 * math.pi / 3 for k in range(3))]
    elif shape == "star":
        points = [((r if k % 2 == 0 else 0.45 * r) * math.cos(-math.pi / 2 + k * math.pi / 5),
                   (r if k % 2 == 0 else 0.45 * r) * math.sin(-math.pi / 2 + k * math.pi / 5)) for k in range(10)]
    elif shape == "cross":
        w = 0.33 * r
        points = [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w),
                  (-w, -w)]
    else:
        raise ValueError(f"no polygon for {shape!r}")
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in points]


def render(scene: Scene, rng: np.random.Generator, size: int = 64, supersample: int = 4) -> np.ndarray:
    """The scene as an HxWx3 uint8 image."""
    side = size * supersample
    image = Image.new("RGB", (side, side), _jitter_colour(COLOURS[scene.background], rng, 12))
    draw = ImageDraw.Draw(image)
    fx, fy = POSITIONS[scene.position]
    cx = (fx + rng.uniform(-0.03, 0.03)) * side
    cy = (fy + rng.uniform(-0.03, 0.03)) * side
    r = SIZES[scene.size] * rng.uniform(0.9, 1.08) * side
    fill = _jitter_colour(COLOURS[scene.colour], rng, 14)
    if scene.shape == "circle":
        r *= 0.9  # same visual weight as the polygons of that circumradius
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon(_polygon(scene.shape, cx, cy, r, rng.uniform(-0.2, 0.2)), fill=fill)
    return np.asarray(image.resize((size, size), Image.Resampling.BOX))


def batch(rng: np.random.Generator, count: int, exclude: frozenset[tuple[str, str, str]] = frozenset(),
          size: int = 64) -> tuple[np.ndarray, list[Scene]]:
    """``count`` random scenes: images as float32 NCHW in [-1, 1], and the scenes."""
    scenes = [random_scene(rng, exclude) for _ in range(count)]
    images = np.stack([render(s, rng, size) for s in scenes]).astype(np.float32)
    return images.transpose(0, 3, 1, 2) / 127.5 - 1.0, scenes


def quality_prompts(seeds_per_prompt: int = 2) -> list[dict[str, object]]:
    """The held-out prompt set: each held-out triple in three sizes/backgrounds, each with fixed seeds."""
    rng = np.random.default_rng(HELD_OUT_SEED + 1)
    prompts: list[dict[str, object]] = []
    for shape, colour, position in sorted(held_out_triples()):
        for variant in range(3):
            background = str(rng.choice([c for c in ATTRIBUTES["colour"] if c != colour]))
            scene = Scene(shape, colour, ATTRIBUTES["size"][variant % len(ATTRIBUTES["size"])], position, background)
            for _seed in range(seeds_per_prompt):
                prompts.append({"prompt": caption(scene), "seed": len(prompts),
                                **{name: getattr(scene, name) for name in ATTRIBUTES}})
    return prompts
