"""Reading a JSON request body: each field's type checked, with a message that names the field and what it takes
(the same words the Python API uses where the value reaches it)."""

from __future__ import annotations

import re
from typing import Any

from diffship.runtime.errors import PipelineInputError


class ApiInputError(PipelineInputError):
    """A request body that is not what the API takes (422)."""


def take(body: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
    """``body[name]`` if present and not null, checked against ``kind`` (bool is not a number here)."""
    value = body.get(name)
    if value is None:
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        names = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
        raise ApiInputError(f"{name} must be {names}, got {_json_type(value)}")
    return value


def size_pair(value: str, name: str = "size") -> tuple[int, int]:
    """``"WxH"`` -> (width, height)."""
    parts = value.lower().split("x")
    if len(parts) != 2 or not all(re.fullmatch("[0-9]{1,6}", part) for part in parts):
        raise ApiInputError(f"{name} must be WIDTHxHEIGHT in pixels such as \"512x512\", got {value!r:.40}")
    return int(parts[0]), int(parts[1])


def check_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiInputError(f"the request body must be a JSON object, got {_json_type(body)}")
    return body


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list",
               dict: "an object"}


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    for kind, name in ((str, "a string"), (int, "an integer"), (float, "a number"), (list, "a list"),
                       (dict, "an object")):
        if isinstance(value, kind):
            return f"{name} ({value!r:.40})" if kind in (str, int, float) else name
    return "null"
