"""OpenAI's ``images.edit`` sends multipart form data (files and text fields); the service speaks JSON (it crosses
Ray's process boundary as bytes). This ASGI middleware turns such a request to ``/v1/images/edits`` into the JSON the
edit format reads (``serve/openai_api.py``): files as base64 strings, ``image[]`` as ``image``, numbers as numbers.
It parses with the standard library's MIME parser, on a worker thread."""

from __future__ import annotations

import asyncio
import base64
import json
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as AsgiMessage

from diffship.serve import openai_api

NUMBERS: dict[str, type] = {"n": int, "output_compression": int, "steps": int, "seed": int, "partial_images": int,
                            "guidance_scale": float, "strength": float}
"""Form fields that are numbers in the JSON body (a form sends every value as text)."""


class FormError(ValueError):
    """A multipart body this server cannot read (422 in OpenAI's error shape)."""


def form_to_json(content_type: str, raw: bytes) -> bytes:
    """A ``multipart/form-data`` body as the JSON body of the edit format."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = BytesParser(policy=HTTP).parsebytes(head + raw)
    if not message.is_multipart():
        raise FormError("the multipart body could not be read (no parts for its boundary)")
    body: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            raise FormError("a form part has no name")
        field = name.removesuffix("[]")
        value = _value(part, field)
        if field in body:
            body[field] = (body[field] if isinstance(body[field], list) else [body[field]]) + [value]
        else:
            body[field] = [value] if name.endswith("[]") else value
    return json.dumps(body).encode()


def _value(part: Message, field: str) -> Any:
    payload = part.get_payload(decode=True)
    data = payload if isinstance(payload, bytes) else b""
    if part.get_filename() is not None:
        return base64.b64encode(data).decode("ascii")
    text = data.decode(part.get_content_charset() or "utf-8", errors="strict")
    if field in NUMBERS:
        try:
            return NUMBERS[field](text)
        except ValueError:
            raise FormError(f"{field} must be a number, got {text!r:.40}") from None
    return text


class MultipartEdits:
    """ASGI middleware: a multipart ``POST /v1/images/edits`` reaches the app as its JSON equivalent."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes  # the door's body limit (serve/limits.py) holds before the form is read

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        content_type = _header(scope, b"content-type")
        if (scope["type"] != "http" or scope.get("path") != openai_api.EDITS.path or scope.get("method") != "POST"
                or not content_type.lower().startswith("multipart/form-data")):
            await self.app(scope, receive, send)
            return
        raw = await _read(receive, self.max_bytes) if _declared(scope) <= self.max_bytes else None
        if raw is None:
            message = f"the request body is over {self.max_bytes} bytes, the most taken"
            await JSONResponse(openai_api.error(message, "invalid"), status_code=413)(scope, receive, send)
            return
        try:
            converted = await asyncio.to_thread(form_to_json, content_type, raw)
        except (FormError, UnicodeDecodeError, ValueError) as exc:
            answer = JSONResponse(openai_api.error(f"the form could not be read: {exc}", "invalid"), status_code=422)
            await answer(scope, receive, send)
            return
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(converted)).encode())]
        await self.app({**scope, "headers": headers}, _replay(converted, receive), send)


def _header(scope: Scope, name: bytes) -> str:
    return next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == name), "")


def _declared(scope: Scope) -> int:
    length = _header(scope, b"content-length")
    return int(length) if length.isdigit() else 0


async def _read(receive: Receive, max_bytes: int) -> bytes | None:
    """The body, or None once it is over ``max_bytes``."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > max_bytes:
            return None
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The converted body once, then the client's own messages (a disconnect is still seen)."""
    sent = False

    async def replay() -> AsgiMessage:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
