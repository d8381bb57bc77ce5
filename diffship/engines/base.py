"""What every backend's engine is (``EngineBase``: named numpy arrays in, named numpy arrays out) and the feed checks
they share."""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType

import numpy as np

from diffship.core.specs import ComponentSpec, ShapeProfile, TensorSpec
from diffship.engines.errors import FeedError


class EngineBase:
    """A compiled component: ``engine(feeds) -> outputs``, both dicts of numpy arrays named as in ``spec``.

    Backends subclass it; ``profile`` is the set of shapes the engine accepts (TensorRT's optimisation profile), None
    when any shape the spec allows will do.
    """

    spec: ComponentSpec
    profile: ShapeProfile | None = None

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self.spec.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self.spec.outputs

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    @property
    def runs_on(self) -> str:
        """Where the engine computes: ``cpu`` or ``cuda`` (what it got, e.g. ``cpu`` after a fallback from CUDA)."""
        return "cpu"

    def max_batch(self) -> int | None:
        """The largest batch one call accepts, or None when unlimited."""
        if self.profile is None:
            return None
        return self.profile.batch_range(self.spec.inputs[0].name)[1]

    def min_batch(self) -> int:
        """The smallest batch one call accepts (a static profile built for the guided batch takes only that)."""
        if self.profile is None:
            return 1
        return self.profile.batch_range(self.spec.inputs[0].name)[0]

    def close(self) -> None:
        pass

    def __enter__(self) -> EngineBase:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def check_feeds(spec: ComponentSpec, feeds: Mapping[str, np.ndarray], profile: ShapeProfile | None = None) -> dict[str, np.ndarray]:
    """Feeds as contiguous arrays after checking names, dtypes, shapes, shared dimensions and the profile."""
    expected = {t.name for t in spec.inputs}
    missing = sorted(expected - set(feeds))
    unexpected = sorted(set(feeds) - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected)}")
        raise FeedError(f"{spec.name}: {'; '.join(parts)} (inputs are {', '.join(t.name for t in spec.inputs)})")
    checked: dict[str, np.ndarray] = {}
    bound: dict[str, tuple[int, str]] = {}
    for tensor in spec.inputs:
        array = feeds[tensor.name]
        if not isinstance(array, np.ndarray):
            raise FeedError(f"{spec.name} input {tensor.name!r} must be a numpy array, got {type(array).__name__}")
        if array.dtype != np.dtype(tensor.dtype):
            raise FeedError(f"{spec.name} input {tensor.name!r} must be {tensor.dtype}, got {array.dtype}")
        if (problem := tensor.mismatch(array.shape)) is not None:
            raise FeedError(f"{spec.name} input {tensor.name!r}: {problem}")
        for dim, size in zip(tensor.shape, array.shape, strict=True):
            if isinstance(dim, str):
                if dim in bound and bound[dim][0] != size:
                    other_size, other = bound[dim]
                    raise FeedError(
                        f"{spec.name} input {tensor.name!r} has {dim}={size} but {other!r} has {dim}={other_size}"
                    )
                bound[dim] = (size, tensor.name)
        if profile is not None and (problem := profile.violation(tensor.name, array.shape)) is not None:
            raise FeedError(problem)
        checked[tensor.name] = np.ascontiguousarray(array)
    return checked
