"""Resizing latents in numpy exactly as ``torch.nn.functional.interpolate(x, size=..., mode=..., antialias=...)``
does (``align_corners=False``), which the web UI's latent upscalers call: nearest, nearest-exact, bilinear and bicubic,
each with or without torch's antialiasing (its separable ``_upsample_*_aa`` kernels: PIL's filters, bicubic with
a = -0.5 where the plain bicubic uses -0.75). Every mode is one weight matrix per axis: ``out = Wh @ x @ Ww.T``.
"""

from __future__ import annotations

import math

import numpy as np

MODES = ("nearest", "nearest-exact", "bilinear", "bicubic")


def interpolate(x: np.ndarray, size: tuple[int, int], mode: str, antialias: bool = False) -> np.ndarray:
    """[B, C, H, W] float32 -> [B, C, size[0], size[1]], as torch's interpolate with ``size`` and
    ``align_corners=False`` (antialias only for bilinear and bicubic, as torch allows)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    rows = _weights(x.shape[2], size[0], mode, antialias)
    columns = _weights(x.shape[3], size[1], mode, antialias)
    out = np.einsum("oh,bchw->bcow", rows, x.astype(np.float32, copy=False))
    return np.einsum("pw,bcow->bcop", columns, out).astype(np.float32)


def _weights(source: int, target: int, mode: str, antialias: bool) -> np.ndarray:
    """[target, source] float32: output index -> weights over the input indices."""
    scale = np.float32(source) / np.float32(target)  # torch's area_pixel_compute_scale, in the tensor's float32
    weights = np.zeros((target, source), dtype=np.float64)
    out = np.arange(target)
    if mode in ("nearest", "nearest-exact"):
        offset = 0.5 if mode == "nearest-exact" else 0.0
        index = np.floor((out.astype(np.float32) + np.float32(offset)) * scale).astype(np.int64)
        weights[out, np.minimum(index, source - 1)] = 1.0
    elif antialias:
        _antialiased(weights, float(scale), source, 2 if mode == "bilinear" else 4, _triangle if mode == "bilinear"
                     else _cubic_half)
    elif mode == "bilinear":
        real = np.maximum(scale * (out.astype(np.float32) + np.float32(0.5)) - np.float32(0.5), np.float32(0))
        low = np.floor(real).astype(np.int64)
        high = np.minimum(low + 1, source - 1)
        fraction = (real - low).astype(np.float64)
        np.add.at(weights, (out, low), 1.0 - fraction)
        np.add.at(weights, (out, high), fraction)
    else:  # bicubic, A = -0.75, indices clamped at the edges
        real = scale * (out.astype(np.float32) + np.float32(0.5)) - np.float32(0.5)
        low = np.floor(real).astype(np.int64)
        t = (real - low).astype(np.float64)
        for k, coefficient in enumerate(_cubic_coefficients(t)):
            np.add.at(weights, (out, np.clip(low - 1 + k, 0, source - 1)), coefficient)
    return weights.astype(np.float32)


def _cubic_coefficients(t: np.ndarray, a: float = -0.75) -> tuple[np.ndarray, ...]:
    def near(x: np.ndarray) -> np.ndarray:
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: np.ndarray) -> np.ndarray:
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)


def _triangle(x: float) -> float:
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


def _cubic_half(x: float, a: float = -0.5) -> float:
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    if x < 2.0:
        return (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return 0.0


def _antialiased(weights: np.ndarray, scale: float, source: int, interp_size: int, kernel: object) -> None:
    """torch's ``_compute_index_ranges_weights`` for the antialiased kernels (PIL's resampling)."""
    assert callable(kernel)
    support = interp_size / 2 * scale if scale >= 1.0 else interp_size / 2
    inverse = 1.0 / scale if scale >= 1.0 else 1.0
    for i in range(weights.shape[0]):
        center = scale * (i + 0.5)
        low = max(int(center - support + 0.5), 0)
        high = min(int(center + support + 0.5), source)
        row = [kernel((j + low - center + 0.5) * inverse) for j in range(high - low)]
        total = sum(row)
        if total != 0:
            weights[i, low:high] = [w / total for w in row]


def lanczos(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An HxWx3 uint8 picture resized to ``size`` (height, width) with PIL's Lanczos filter (the web UI's pixel
    "Lanczos" upscaler)."""
    from PIL import Image

    resized = Image.fromarray(image).resize((size[1], size[0]), resample=Image.Resampling.LANCZOS)
    return np.asarray(resized)


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """The web UI's target size for ``hr_scale``: each side times ``scale``, rounded down (its ``int(w * scale)``)."""
    return int(math.floor(height * scale)), int(math.floor(width * scale))
