"""Errors the runtime raises for problems a caller can fix."""

from diffship.core.errors import DiffshipError


class PipelineError(DiffshipError):
    """The pipeline cannot be built or run as asked; the message says why and what is allowed."""


class PipelineInputError(PipelineError, ValueError):
    """An argument to ``Pipeline.__call__`` is invalid (type, range, shape, unknown name)."""


class PipelineCancelled(PipelineError):
    """A call stopped between steps because its ``cancel`` said so (or a service's deadline passed)."""
