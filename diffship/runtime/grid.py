"""Parameter sweeps into one labelled contact sheet: the comparison people make first (steps x guidance, samplers).

    axes = [parse_axis("steps=5,10,20"), parse_axis("guidance=1,4,7.5")]
    grid = sweep(pipe, "a red fox", axes, {"seed": 42})
    save_png(grid.sheet, "grid.png", grid.parameters)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from diffship.runtime.errors import PipelineInputError
from diffship.runtime.images import contact_sheet
from diffship.runtime.schedule_guidance import parse_interval
from diffship.runtime.timing import Timings


def _interval(text: str) -> tuple[float, float]:
    """A grid value of ``interval``: ``LOW:HIGH`` (the comma separates the axis' values)."""
    try:
        return parse_interval(text)
    except PipelineInputError:
        raise ValueError(text) from None


_interval.__name__ = "LOW:HIGH pairs (sigma ranges, e.g. 0.28:5.42)"

GRID_KEYS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "steps": ("num_inference_steps", int),
    "guidance": ("guidance_scale", float),
    "scheduler": ("scheduler", str),
    "seed": ("seed", int),
    "strength": ("strength", float),
    "cutoff": ("guidance_cutoff", float),
    "interval": ("guidance_interval", _interval),
    "cache": ("cache_interval", int),
}
"""Sweepable keys: their ``Pipeline.__call__`` argument and value type."""
UNSET_UNSHOWN = frozenset({"cutoff", "interval", "cache"})
"""Keys a sheet's title leaves out when they are not set (most calls never set them)."""


def _label(value: Any) -> str:
    return ":".join(f"{v:g}" for v in value) if isinstance(value, tuple) else str(value)


@dataclass(frozen=True)
class GridAxis:
    key: str
    values: tuple[Any, ...]

    def labels(self) -> list[str]:
        return [f"{self.key}={_label(value)}" for value in self.values]


@dataclass(frozen=True)
class GridResult:
    sheet: np.ndarray
    """The labelled contact sheet, HxWx3 uint8."""
    timings: Timings
    """All cells' timings summed."""
    parameters: dict[str, Any]
    """What made the sheet (prompt, axes, the fixed settings), for the PNG's metadata."""


def parse_axis(text: str) -> GridAxis:
    """``KEY=V1,V2,...`` -> an axis; a PipelineInputError that says what is allowed otherwise."""
    key, _, items = text.partition("=")
    key = key.strip()
    if key not in GRID_KEYS or not items.strip():
        raise PipelineInputError(f"{text!r}: use KEY=V1,V2,... with KEY one of {', '.join(GRID_KEYS)}")
    kind = GRID_KEYS[key][1]
    try:
        values = tuple(kind(item.strip()) for item in items.split(",") if item.strip())
    except ValueError:
        raise PipelineInputError(f"{text!r}: values of {key} must be {kind.__name__}") from None
    if not values:
        raise PipelineInputError(f"{text!r}: give at least one value after {key}=")
    return GridAxis(key, values)


def check_axes(axes: Sequence[GridAxis]) -> None:
    keys = [axis.key for axis in axes]
    if len(axes) > 2:
        raise PipelineInputError("at most two grid axes (rows and columns)")
    if len(set(keys)) != len(keys):
        raise PipelineInputError(f"{keys[0]} is given twice")


def sweep(
    pipe: Any,
    prompt: str,
    axes: Sequence[GridAxis],
    arguments: Mapping[str, Any],
    cell_callback: Callable[[int, int], Any] | None = None,
) -> GridResult:
    """One image per cell (rows: the first axis; columns: the second, if any), every other argument as given.

    ``cell_callback(index, count)`` may return a step callback for that cell (progress display).
    """
    check_axes(axes)
    rows_axis = axes[0]
    columns_axis = axes[1] if len(axes) > 1 else None
    column_values: tuple[Any, ...] = columns_axis.values if columns_axis else (None,)
    count = len(rows_axis.values) * len(column_values)
    cells, total, described = [], Timings(), []
    for r, row_value in enumerate(rows_axis.values):
        row = []
        for c, column_value in enumerate(column_values):
            cell = {**arguments, GRID_KEYS[rows_axis.key][0]: row_value}
            if columns_axis is not None:
                cell[GRID_KEYS[columns_axis.key][0]] = column_value
            callback = cell_callback(r * len(column_values) + c, count) if cell_callback else None
            result = pipe(prompt, callback=callback, **cell)
            row.append(result.images[0])
            described.append(result.parameters[0])
            total = total.add(result.timings)
        cells.append(row)
    names = {argument: key for key, (argument, _) in GRID_KEYS.items()}
    fixed = {names.get(k, k): v for k, v in arguments.items()
             if names.get(k) in GRID_KEYS and names[k] not in {axis.key for axis in axes}
             and not (names[k] == "strength" and arguments.get("image") is None)  # no strength without an image
             and not (names[k] in UNSET_UNSHOWN and v is None)}
    title = f"{prompt!r}  " + "  ".join(f"{k}={'default' if v is None else _label(v)}" for k, v in fixed.items())
    sheet = contact_sheet(cells, rows_axis.labels(), columns_axis.labels() if columns_axis else [""], title=title)
    return GridResult(sheet, total, grid_parameters(described, axes))


DESCRIBED_AS = {"steps": "steps", "guidance": "guidance_scale", "scheduler": "scheduler", "seed": "seed",
                "strength": "strength", "cutoff": "guidance_cutoff", "interval": "guidance_interval",
                "cache": "cache_interval"}
"""The field of an image's parameters (``GenerationResult.parameters``) that each grid key sets."""


def grid_parameters(described: Sequence[Mapping[str, Any]], axes: Sequence[GridAxis]) -> dict[str, Any]:
    """A sheet's metadata: what every cell shares (model, size, task, backend...: as a single image records it), the
    axes and their values, and the negative prompt if any cell used it."""
    swept = {DESCRIBED_AS[axis.key] for axis in axes}
    shared = {key: value for key, value in described[0].items() if key not in swept and key != "negative_prompt"}
    negative = next((cell["negative_prompt"] for cell in described if "negative_prompt" in cell), None)
    return {**shared, **({"negative_prompt": negative} if negative else {}),
            "grid": {axis.key: [list(v) if isinstance(v, tuple) else v for v in axis.values] for axis in axes}}
