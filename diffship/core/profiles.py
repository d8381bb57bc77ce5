"""Shape profiles as data: from what a user asks for (images per call, pixel sizes) to min/opt/max of every input.

The runtime calls the text encoder and the UNet on [unconditional; conditional] batches under classifier-free
guidance, so their batch range runs from the smallest request unguided to twice the largest request guided.
Latent sizes follow from the VAE scale factor. ``--static`` is the case where every range is one value.
"""

from __future__ import annotations

from collections.abc import Mapping

from diffship.core.errors import DiffshipError
from diffship.core.specs import ComponentSpec, PipelineConstants, Range, ShapeProfile, ShapeRequest, symbolic_dims


class ProfileError(DiffshipError, ValueError):
    """A requested shape range cannot be built (sizes not multiples of the model's, min > max, ...)."""


def shape_request(
    constants: PipelineConstants,
    batch: Range,
    height: Range | None = None,
    width: Range | None = None,
    prompt_chunks: Range | None = None,
) -> ShapeRequest:
    """A request with sizes defaulting to the model's native size, checked against the model's spatial multiple."""
    height = height or Range.fixed(constants.default_height)
    width = width or Range.fixed(constants.default_width)
    multiple = constants.spatial_multiple
    for name, span in (("height", height), ("width", width)):
        for label, value in (("min", span.min), ("opt", span.opt), ("max", span.max)):
            if value % multiple:
                raise ProfileError(
                    f"{name} {label} {value} is not a multiple of {multiple} pixels, which this model needs "
                    f"({constants.size_rule})"
                )
    return ShapeRequest(batch=batch, height=height, width=width, prompt_chunks=prompt_chunks or Range(1, 1, 1))


def component_batch(component: str, batch: Range, static: bool, guided: frozenset[str]) -> Range:
    """The batch range a component sees for requests of ``batch`` images (``guided``: the family's CFG components).

    A static profile holds the guided batch only; the runtime pads an unguided call up to it (docs/design.md).
    """
    if component not in guided:
        return batch
    if static:
        return Range.fixed(2 * batch.opt)
    return Range(batch.min, 2 * batch.opt, 2 * batch.max)


def shape_profiles(
    request: ShapeRequest, constants: PipelineConstants, specs: Mapping[str, ComponentSpec], guided: frozenset[str]
) -> dict[str, ShapeProfile]:
    """The min/opt/max shape of every input of every component in ``specs``."""
    factor = constants.vae_scale_factor
    profiles = {}
    for name, spec in specs.items():
        batch = component_batch(name, request.batch, request.static, guided)
        chunks, window = request.prompt_chunks, constants.text_max_length
        corners = [
            symbolic_dims(b, h, w, factor, c * window)
            for b, h, w, c in (
                (batch.min, request.height.min, request.width.min, chunks.min),
                (batch.opt, request.height.opt, request.width.opt, chunks.opt),
                (batch.max, request.height.max, request.width.max, chunks.max),
            )
        ]
        profiles[name] = ShapeProfile(
            component=name,
            shapes={
                tensor.name: (tensor.resolve(corners[0]), tensor.resolve(corners[1]), tensor.resolve(corners[2]))
                for tensor in spec.inputs
            },
        )
    return profiles


def parse_range(text: str, what: str) -> Range:
    """``"4"`` -> 4..4, ``"1-4"`` -> 1..4 (opt = min); for CLI values."""
    try:
        if "-" in text:
            low, high = (int(part) for part in text.split("-", 1))
            return Range(low, low, high)
        value = int(text)
        return Range.fixed(value)
    except ValueError as exc:
        raise ProfileError(f"{what} {text!r}: give N or MIN-MAX with 1 <= MIN <= MAX ({exc})") from None


def size_ranges(
    constants: PipelineConstants,
    height: int | None,
    width: int | None,
    min_size: int | None,
    max_size: int | None,
    static: bool,
) -> tuple[Range, Range]:
    """Height and width ranges for a build: the one size when static, else ``min_size``..``max_size`` around the
    optimal size (default: half the model's size, rounded down to its spatial multiple, to twice the larger side)."""
    opt_height = height or constants.default_height
    opt_width = width or constants.default_width
    if static:
        if min_size or max_size:
            raise ProfileError("a static build has one shape: give --height/--width, not --min-size/--max-size")
        return Range.fixed(opt_height), Range.fixed(opt_width)
    multiple = constants.spatial_multiple
    low = min_size or max(multiple, (min(opt_height, opt_width) // 2) // multiple * multiple)
    high = max_size or 2 * max(opt_height, opt_width)
    try:
        return Range(low, min(max(opt_height, low), high), high), Range(low, min(max(opt_width, low), high), high)
    except ValueError as exc:
        raise ProfileError(f"--min-size/--max-size: {exc}") from None


def cover_hires(request: ShapeRequest, constants: PipelineConstants, scale: float,
                base: tuple[int | None, int | None] = (None, None)) -> ShapeRequest:
    """``request`` widened to take a hires fix's second pass too: ``base`` (height, width; default the request's
    optimal size) times ``scale``, as the runtime computes it (``runtime.hires``, the web UI's ``int(side * scale)``).
    A static request has one shape and cannot hold both passes: refused, naming both sizes."""
    height = base[0] or request.height.opt
    width = base[1] or request.width.opt
    high, wide = hires_size(constants, height, width, scale)
    if request.static:
        raise ProfileError(f"a static build has one shape and the hires fix runs two ({width}x{height}, then "
                           f"{wide}x{high}); build without --static to cover both")
    return ShapeRequest(batch=request.batch, prompt_chunks=request.prompt_chunks,
                        height=Range(min(request.height.min, height), request.height.opt, max(request.height.max, high)),
                        width=Range(min(request.width.min, width), request.width.opt, max(request.width.max, wide)))


def hires_size(constants: PipelineConstants, height: int, width: int, scale: float) -> tuple[int, int]:
    """The second pass's (height, width) for ``scale``, or a ProfileError when the model cannot take it."""
    if not 1.0 <= scale <= 8.0:
        raise ProfileError(f"--hires-scale must be from 1 to 8, got {scale:g}")
    high, wide = int(height * scale), int(width * scale)
    multiple = constants.spatial_multiple
    if high % multiple or wide % multiple:
        raise ProfileError(f"--hires-scale {scale:g} of {width}x{height} gives {wide}x{high} (width x height), not a "
                           f"multiple of {multiple} pixels ({constants.size_rule})")
    return high, wide
