"""Errors the engines layer raises for problems a user can fix (wrong input, missing library, wrong GPU)."""

from diffship.core.errors import DiffshipError, MissingDependencyError


class EngineError(DiffshipError):
    """An engine cannot be built, loaded or run; the message says what is wrong and what to do."""


class MissingLibraryError(EngineError, MissingDependencyError):
    """An optional library (onnxruntime, tensorrt, tensorrt_rtx, cuda-python) is not installed."""


class FeedError(EngineError, ValueError):
    """Inputs given to an engine do not match its specs (names, dtypes, shapes or profile)."""
