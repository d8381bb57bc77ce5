"""The limits at the service's door, applied before a request reaches an API's parser (docs/design.md, "Serving"):
a body size, a time to send headers and body, the shape of the JSON (depth, items per array or object, digits per
integer), each refused as 4xx naming where in the body it was, never a 500 or a logged traceback."""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from diffship.serve.fields import ApiInputError

if TYPE_CHECKING:
    from starlette.requests import Request

MiB = 2**20


@dataclass(frozen=True)
class DoorLimits:
    """What one request may send. Defaults fit the largest image request the runtime takes (a 2048 x 2048 PNG and
    its mask in base64 is under 24 MiB)."""

    max_body_bytes: int = 32 * MiB
    """413 above it, known from Content-Length before reading, or counted while reading."""
    max_image_pixels: int = 4096 * 4096
    """Per uploaded image, read from its header before decoding (serve/images.py)."""
    max_depth: int = 16
    """Arrays and objects nested in one another."""
    max_items: int = 4096
    """Entries of one array or object."""
    max_int_digits: int = 40
    """Digits of one integer (a seed has at most 19)."""
    read_timeout_s: float = 30.0
    """Time to send the request headers, and again the body (408 or a closed connection after it)."""


class BodyTooLarge(ApiInputError):
    """A body over ``DoorLimits.max_body_bytes`` (413)."""


class ReadTimeout(ApiInputError):
    """Headers or body not sent within ``DoorLimits.read_timeout_s`` (408)."""


@dataclass(frozen=True)
class _HugeInt:
    digits: int


def read_json(raw: bytes, limits: DoorLimits) -> Any:
    """``raw`` as JSON within ``limits``; ApiInputError naming the place (``init_images[0]``, ``seed``) otherwise.
    CPU-bound: callers run it off the event loop."""

    def integer(text: str) -> int | _HugeInt:
        digits = len(text.lstrip("-"))
        return _HugeInt(digits) if digits > limits.max_int_digits else int(text)

    try:
        body = json.loads(raw, parse_int=integer, parse_constant=_refuse_constant)
    except RecursionError:
        raise ApiInputError(f"the request body nests arrays and objects too deep; at most {limits.max_depth} "
                            "levels") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiInputError(f"the request body is not valid JSON ({exc})") from None
    _check_shape(body, limits)
    return body


def _check_shape(body: Any, limits: DoorLimits) -> None:
    """Depth, items and integers, walked without recursion; the first offender is named by its path."""
    stack: list[tuple[Any, str, int]] = [(body, "", 1)]
    while stack:
        value, path, depth = stack.pop()
        where = path or "the request body"
        if isinstance(value, _HugeInt):
            raise ApiInputError(f"{where} is an integer of {value.digits} digits; at most {limits.max_int_digits}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ApiInputError(f"{where} is a number too large for a double; give a finite number")
        if not isinstance(value, (dict, list)):
            continue
        if depth > limits.max_depth:
            raise ApiInputError(f"{where} nests arrays and objects {depth} deep; at most {limits.max_depth} levels")
        if len(value) > limits.max_items:
            raise ApiInputError(f"{where} has {len(value)} entries; at most {limits.max_items}")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            child = f"{path}.{key}" if isinstance(key, str) and path else key if isinstance(key, str) else f"{path}[{key}]"
            stack.append((item, child, depth + 1))


def _refuse_constant(name: str) -> Any:
    raise ApiInputError(f"the request body holds {name}, which JSON does not have; give finite numbers")


async def read_body(request: Request, max_bytes: int, timeout_s: float) -> bytes:
    """The body, at most ``max_bytes`` (BodyTooLarge: from Content-Length before reading, else counted while
    reading) and sent within ``timeout_s`` (ReadTimeout). Raises ClientDisconnect if the client hangs up."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise BodyTooLarge(f"the request body is {int(declared)} bytes; at most {max_bytes} are taken")

    async def read() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise BodyTooLarge(f"the request body is over {max_bytes} bytes, the most taken")
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(read(), timeout_s)
    except asyncio.TimeoutError:
        raise ReadTimeout(f"the request body was not sent within {timeout_s:g}s") from None
