"""An HTTP API the service speaks, as a record: where its requests arrive, how a body becomes ``Pipeline.prepare``
arguments, how a result and an error are written back, and the read-only routes its clients expect beside it.
``serve/app.py`` builds its routes from these records (``serve/apis.py`` lists them), so adding an API is writing its
module and its record."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffship.runtime.pipeline import GenerationResult

Json = Any
"""A decoded JSON value, as the request body arrives and as a response body leaves."""


@dataclass(frozen=True)
class Listing:
    """A GET route of an API (``/sdapi/v1/samplers``): its JSON answer, from the served model's name."""

    path: str
    answer: Callable[[str], Json]


@dataclass(frozen=True)
class ApiFormat:
    """One API: requests to ``path`` are parsed, queued, generated and answered in this API's own shapes."""

    name: str
    """What the service is told the request speaks (a string: it crosses Ray's process boundary), and the ``api``
    label of the request metrics."""
    path: str
    parse: Callable[[Json], dict[str, Any]]
    """The request body -> ``Pipeline.prepare`` arguments; raises ``serve.fields.ApiInputError`` (422) naming the
    field."""
    response: Callable[[GenerationResult, Json, str], Json]
    """(result, the request body, the served model's name) -> the response body."""
    error: Callable[[str, str], Json]
    """(message, kind such as ``invalid`` or ``queue_full``) -> this API's error body."""
    method: str = "POST"
    listings: tuple[Listing, ...] = ()
