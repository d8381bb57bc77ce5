"""TensorRT engine sets by name and by choice (run time and build time alike; no TensorRT import).

A set is ``engines/<backend>-<archs>-<precision>[-<shapes>]/``: plans built by one library for some compute
capabilities at one precision, for one shape request. The request ``build-trt`` makes without shape options
(``default_shape_request``) keeps the plain name, as sets were named before shapes were part of it; any other request
adds what differs from it (``trt-rtx-sm86-fp16-512x512-b1-static``), so builds for different shapes coexist instead
of replacing each other.
"""

from __future__ import annotations

from collections.abc import Sequence

from diffship.core.profiles import shape_request, size_ranges
from diffship.core.specs import PipelineConstants, Range, ShapeRequest

DEFAULT_BATCH = Range(1, 1, 4)
"""Images per call ``build-trt`` builds for without ``--batch`` (1 with ``--static``)."""


def default_shape_request(constants: PipelineConstants) -> ShapeRequest:
    """What ``build-trt`` builds for without shape options: 1-4 images per call, half to twice the model's size
    (tuned for its own), one prompt window (``core.profiles.size_ranges``)."""
    height, width = size_ranges(constants, None, None, None, None, static=False)
    return shape_request(constants, DEFAULT_BATCH, height, width)


def _span(values: Range) -> str:
    """``512``, ``1-4``, or ``256-1024opt512`` when the value engines are tuned for is not the smallest."""
    if values.min == values.max:
        return str(values.min)
    return f"{values.min}-{values.max}" + (f"opt{values.opt}" if values.opt != values.min else "")


def shapes_tag(shapes: ShapeRequest, default: ShapeRequest) -> str:
    """What ``shapes`` asks beyond ``default``, readable in a folder name ('' when nothing): pixel sizes as
    ``<height>x<width>``, then ``b<images per call>``, ``chunks<prompt windows>``, and ``static`` for one-shape plans."""
    parts = []
    if (shapes.height, shapes.width) != (default.height, default.width):
        parts.append(f"{_span(shapes.height)}x{_span(shapes.width)}")
    if shapes.batch != default.batch:
        parts.append(f"b{_span(shapes.batch)}")
    if shapes.prompt_chunks != default.prompt_chunks:
        parts.append(f"chunks{_span(shapes.prompt_chunks)}")
    if parts and shapes.static:
        parts.append("static")
    return "-".join(parts)


def engine_set_name(backend: str, archs: Sequence[str], precision: str, shapes: ShapeRequest | None = None,
                    default: ShapeRequest | None = None) -> str:
    """``<backend>-<archs>-<precision>``, with the shapes tag when ``shapes`` differs from ``default``."""
    name = f"{backend}-{'+'.join(archs)}-{precision}"
    tag = shapes_tag(shapes, default) if shapes is not None and default is not None else ""
    return f"{name}-{tag}" if tag else name


def describe_shapes(shapes: ShapeRequest) -> str:
    """``batch 1-4, 256-1024opt512 x 256-1024opt512 px, 1 prompt window`` (for messages)."""
    windows = _span(shapes.prompt_chunks)
    return (f"batch {_span(shapes.batch)}, {_span(shapes.height)} x {_span(shapes.width)} px, {windows} prompt "
            f"window{'' if windows == '1' else 's'}{', static' if shapes.static else ''}")


def shapes_rank(shapes: ShapeRequest, default: ShapeRequest) -> tuple[bool, int]:
    """Sort key among sets that differ only in shapes, when none is named: the default request's set first, then the
    one that accepts the most (batch, height, width, windows) combinations (a static set pads unguided calls and
    takes one size)."""
    breadth = 1
    for span in (shapes.batch, shapes.height, shapes.width, shapes.prompt_chunks):
        breadth *= span.max - span.min + 1
    return shapes != default, -breadth
