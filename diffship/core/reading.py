"""Reading JSON that someone else wrote: every problem becomes one PackageError line naming where it is.

``typed_fields(cls, data, where)`` checks the keys of a JSON object against a dataclass's annotations (an ``int`` field
takes an integer and not a bool, a ``float`` a finite number, ``X | None`` also null, ``tuple[X, ...]`` a list of X)
and returns the known ones; keys a newer writer added are ignored. ``build`` turns a dataclass's own refusal
(``__post_init__``) into the same kind of error. ``relative_path`` refuses a path that could lead out of a package.
"""

from __future__ import annotations

import functools
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, fields, is_dataclass
from pathlib import PurePosixPath
from typing import Any, TypeVar

from diffship.core.errors import PackageError

T = TypeVar("T")


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def obj(value: Any, where: str) -> Mapping[str, Any]:
    """``value`` when it is a JSON object, else an error naming ``where``."""
    if not isinstance(value, Mapping):
        raise PackageError(f"{where} must be an object, got {_type_name(value)}")
    return value


def relative_path(value: Any, where: str) -> str:
    """A path relative to the package root that stays inside it (no absolute paths, no ``..``)."""
    if not isinstance(value, str) or not value:
        raise PackageError(f"{where} must be a path inside the package, got {value!r}")
    path = PurePosixPath(value)
    if path.is_absolute() or value.startswith("\\") or ".." in path.parts or ":" in path.parts[0]:
        raise PackageError(f"{where} names {value!r}, which lies outside the package")
    return value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _conforms(value: Any, hint: Any) -> bool:
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint in (str, bool):
        return isinstance(value, hint)
    if hint is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, option) for option in arguments)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and arguments and arguments[-1] is not Ellipsis:
            return len(value) == len(arguments) and all(_conforms(v, a) for v, a in zip(value, arguments, strict=True))
        return all(_conforms(v, arguments[0]) for v in value) if arguments else True
    if origin in (dict, Mapping) or hint in (dict, Mapping) or origin is not None and issubclass(origin, Mapping):
        return isinstance(value, Mapping)
    if isinstance(hint, type) and is_dataclass(hint):
        return isinstance(value, Mapping)
    return True


def _describe(hint: Any) -> str:
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if hint is int:
        return "an integer"
    if hint is float:
        return "a finite number"
    if hint is str:
        return "a string"
    if hint is bool:
        return "true or false"
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in arguments)
    if origin in (tuple, list):
        return f"a list of {_describe(arguments[0])}s" if arguments else "a list"
    return "an object"


def typed_fields(cls: type, data: Any, where: str, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields of dataclass ``cls`` found in ``data``, each checked against its annotation; missing required ones
    and wrongly typed ones are errors naming ``where``. ``skip``: fields the caller reads itself."""
    data = obj(data, where)
    found: dict[str, Any] = {}
    for field in fields(cls):
        if field.name in skip:
            continue
        if field.name not in data:
            if field.default is MISSING and field.default_factory is MISSING:
                raise PackageError(f"{where}.{field.name} is missing")
            continue
        value, hint = data[field.name], _hints(cls)[field.name]
        if not _conforms(value, hint):
            raise PackageError(f"{where}.{field.name} must be {_describe(hint)}, got {value!r:.80}")
        if typing.get_origin(hint) is tuple or hint is tuple:
            value = tuple(value)
        found[field.name] = value
    return found


def build(cls: type[T], where: str, **values: Any) -> T:
    """``cls(**values)``, with the dataclass's own refusal (a ValueError) reported at ``where``."""
    try:
        return cls(**values)
    except (ValueError, TypeError) as exc:
        raise PackageError(f"{where}: {exc}") from None
