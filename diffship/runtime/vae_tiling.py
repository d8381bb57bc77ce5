"""Tiled VAE decode and encode, as diffusers' ``AutoencoderKL.enable_tiling`` does them: the picture is cut into
overlapping square tiles (``tile`` pixels, ``tile / factor`` latents), each run through the VAE alone, and each tile's
first quarter blended linearly into the tile above it and the one to its left (``blend_v``/``blend_h``); every tile
keeps its first three quarters. So the VAE's working memory is one tile's, whatever the picture's size.

``--vae-tiles auto|off|SIZE`` (``Pipeline.prepare(vae_tiles=...)``): ``off`` never tiles; ``SIZE`` tiles at SIZE
pixels whenever the picture is larger than a tile in either direction (diffusers' rule); ``auto`` tiles at the
model's native size when the picture is larger than ``AUTO_PIXELS`` or than the VAE engine's profile allows. An
untiled decode that cannot fit in this machine's memory is refused, naming the tiles that would.

diffusers blends in place: a tile blended into its left neighbour is then the "above" tile of the row below, already
blended. The rows here are kept two at a time (the one above and the one being made), which gives the same numbers
and holds one row of tiles instead of all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from diffship.runtime.errors import PipelineInputError

OVERLAP = 0.25
"""diffusers' ``tile_overlap_factor``: the share of a tile blended with its neighbour."""
AUTO_PIXELS = 1024 * 1024
"""``auto`` tiles pictures larger than this (per image): from here the untiled decoder's activations run to gigabytes
(``runtime.requests.DECODE_BYTES_PER_PIXEL``)."""
TILE_MULTIPLE = 32
"""Tile sides are multiples of 32 pixels so that a quarter of a tile is whole latents at a VAE factor of 8: other
sizes make diffusers' own arithmetic disagree between latent and pixel strides."""

Run = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class VaeTiles:
    """A call's ``vae_tiles`` setting: ``mode`` auto / off / size, and the tile side in pixels for ``size``."""

    mode: str = "auto"
    size: int | None = None

    @classmethod
    def parse(cls, value: object) -> VaeTiles:
        """``"auto"``, ``"off"``, or a tile side in pixels (int or digits), a multiple of 32 and at least 64."""
        if isinstance(value, VaeTiles):
            return value
        if value in ("auto", "off"):
            return cls(str(value))
        side = int(value) if isinstance(value, str) and value.isdigit() else value
        if isinstance(side, bool) or not isinstance(side, (int, np.integer)) or side < 64 or side % TILE_MULTIPLE:
            raise PipelineInputError(f"vae_tiles must be auto, off or a tile side in pixels, a multiple of "
                                     f"{TILE_MULTIPLE} from 64 (such as 512), got {value!r:.60}")
        return cls("size", int(side))

    def tile_for(self, height: int, width: int, native: int, fits: bool) -> int | None:
        """The tile side this call decodes with, or None for one untiled run. ``native``: the model's own size (auto's
        tile); ``fits``: the VAE engine's profile takes the whole picture."""
        if self.mode == "off":
            return None
        if self.mode == "size":
            assert self.size is not None
            return self.size if max(height, width) > self.size else None
        big = height * width > AUTO_PIXELS or not fits
        return native if big and max(height, width) > native else None


def blend_v(above: np.ndarray, tile: np.ndarray, extent: int) -> np.ndarray:
    """diffusers' ``blend_v``, in place on ``tile``: its first rows fade in from ``above``'s last."""
    extent = min(above.shape[2], tile.shape[2], extent)
    for y in range(extent):
        tile[:, :, y, :] = above[:, :, -extent + y, :] * (1 - y / extent) + tile[:, :, y, :] * (y / extent)
    return tile


def blend_h(left: np.ndarray, tile: np.ndarray, extent: int) -> np.ndarray:
    """diffusers' ``blend_h``, in place on ``tile``: its first columns fade in from ``left``'s last."""
    extent = min(left.shape[3], tile.shape[3], extent)
    for x in range(extent):
        tile[:, :, :, x] = left[:, :, :, -extent + x] * (1 - x / extent) + tile[:, :, :, x] * (x / extent)
    return tile


def tiled(run: Run, source: np.ndarray, tile_in: int, tile_out: int) -> np.ndarray:
    """``run`` over ``source`` [B, C, H, W] in tiles of ``tile_in`` (input units), blended as diffusers does at
    ``tile_out`` (output units: ``tile_in`` x the VAE factor to decode, / the factor to encode)."""
    stride = int(tile_in * (1 - OVERLAP))
    extent = int(tile_out * OVERLAP)
    keep = tile_out - extent
    scale = tile_out / tile_in
    height, width = source.shape[2], source.shape[3]
    out: np.ndarray | None = None
    above: list[np.ndarray] = []
    for top in range(0, height, stride):
        row: list[np.ndarray] = []
        for column, left in enumerate(range(0, width, stride)):
            tile = np.array(run(source[:, :, top : top + tile_in, left : left + tile_in]), dtype=np.float32)
            if above:
                blend_v(above[column], tile, extent)
            if row:
                blend_h(row[-1], tile, extent)
            row.append(tile)
            if out is None:
                out = np.empty((source.shape[0], tile.shape[1], round(height * scale), round(width * scale)),
                               dtype=np.float32)
            kept = tile[:, :, :keep, :keep]
            y, x = top // stride * keep, left // stride * keep
            out[:, :, y : y + kept.shape[2], x : x + kept.shape[3]] = kept
        above = row
    assert out is not None
    return out


def choose_tile(tiles: VaeTiles, native: int, height: int, width: int, batch: int, profile_fits: bool,
                check_memory: bool) -> int | None:
    """The tile side a call of ``batch`` images of ``height`` x ``width`` decodes with (None: untiled), or a
    PipelineInputError when the untiled decode it must do cannot fit in this machine's memory."""
    from diffship.runtime.requests import DECODE_BYTES_PER_PIXEL, available_memory

    available = available_memory() if check_memory else None
    untiled = DECODE_BYTES_PER_PIXEL * height * width * batch
    tile = tiles.tile_for(height, width, native, profile_fits)
    if tile is None and available is not None and untiled > available:
        raise PipelineInputError(
            f"{batch} image(s) of {height}x{width} need about {untiled / 2**30:.1f} GiB to decode and this machine has "
            f"{available / 2**30:.1f} GiB available; ask for a smaller size or fewer images, or decode in tiles "
            f"(vae_tiles auto or a tile side such as {native})")
    if tile is None and not profile_fits:
        raise PipelineInputError(f"{height}x{width} is outside what the loaded VAE engine accepts and vae_tiles is "
                                 f"{tiles.mode}; give vae_tiles auto or a tile side the engine takes")
    return tile
