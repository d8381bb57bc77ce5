"""Who may talk to the service (docs/design.md, "Serving"; README "Security model"): API keys or HTTP basic auth on
every route but ``/healthz`` (and ``/metrics`` where it is made public), a CORS allow-list (none by default: a page on
another origin can neither read answers nor send the "simple" cross-origin POSTs, such as ``text/plain``, that
browsers send without asking), and a Host allow-list against DNS rebinding. A pure ASGI middleware: it answers
refusals itself, as JSON in both APIs' shapes, before the app reads a byte of the body."""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import os
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffship.core.errors import DiffshipError

log = logging.getLogger(__name__)

KEYS_VARIABLE = "DIFFSHIP_API_KEYS"
"""Comma-separated API keys, beside or instead of ``--api-key-file``."""
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
OPEN_PATHS = ("/healthz",)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class SecurityError(DiffshipError, ValueError):
    """A key file or credential option that cannot be used."""


@dataclass(frozen=True)
class SecurityPolicy:
    api_keys: frozenset[str] = frozenset()
    """``Authorization: Bearer KEY`` (what the OpenAI client sends)."""
    basic: frozenset[str] = frozenset()
    """``user:password`` pairs for HTTP basic auth (the web UI's ``--api-auth``)."""
    cors_origins: tuple[str, ...] = ()
    """Origins (``https://app.example``) whose pages may call the API; ``*`` any. Default none."""
    allowed_hosts: tuple[str, ...] | None = None
    """Host header names answered (``cli.py serve`` on loopback: the loopback names); None: any."""
    public_metrics: bool = False
    """Serve ``/metrics`` without credentials (a scraper inside the network)."""

    @property
    def authenticates(self) -> bool:
        return bool(self.api_keys or self.basic)


def load_keys(key_file: Path | None, environ: MutableMapping[str, str] | None = None) -> frozenset[str]:
    """Keys from ``key_file`` (one per line; blank lines and ``#`` comments skipped) and ``$DIFFSHIP_API_KEYS``."""
    environ = os.environ if environ is None else environ
    keys = {key.strip() for key in environ.get(KEYS_VARIABLE, "").split(",") if key.strip()}
    if key_file is not None:
        try:
            lines = key_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise SecurityError(f"--api-key-file {key_file}: cannot read it ({exc.__class__.__name__})") from None
        keys |= {line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")}
        if not keys:
            raise SecurityError(f"--api-key-file {key_file} holds no key (one per line)")
    return frozenset(keys)


def parse_basic(values: tuple[str, ...]) -> frozenset[str]:
    """``--api-auth user:pass`` (repeatable, or comma-separated as the web UI takes it)."""
    pairs = {pair.strip() for value in values for pair in value.split(",") if pair.strip()}
    for pair in pairs:
        user, _, password = pair.partition(":")
        if not user or not password:
            raise SecurityError("--api-auth takes user:password (a non-empty name and password)")
    return frozenset(pairs)


class SecurityMiddleware:
    """``app`` behind ``policy`` (Starlette's ``add_middleware(SecurityMiddleware, policy=...)``)."""

    def __init__(self, app: App, policy: SecurityPolicy) -> None:
        self.app, self.policy = app, policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _guarded(self.app, self.policy, scope, receive, send)


async def _guarded(app: App, policy: SecurityPolicy, scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        await app(scope, receive, send)
        return
    headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
    refusal = _host_refusal(headers, policy)
    origin = headers.get("origin")
    cross = origin is not None and not _same_origin(origin, headers, scope)
    cors = _cors_headers(origin, policy) if origin is not None and cross else None
    if refusal is None and cross and cors is None:
        refusal = (403, f"origin {str(origin)[:80]} may not call this API (not in --cors-origin)")
    if refusal is None and scope["method"] == "OPTIONS" and cors is not None:
        await _answer(send, 204, None, cors)  # a preflight from an allowed origin
        return
    if refusal is None and not _open(scope["path"], policy) and not _authorized(headers, policy):
        challenge = 'Bearer realm="diffship"' + (', Basic realm="diffship"' if policy.basic else "")
        await _answer(send, 401, "missing or wrong credentials: send Authorization: Bearer KEY"
                      + (" or HTTP basic auth" if policy.basic else ""), {"www-authenticate": challenge})
        return
    if refusal is not None:
        await _answer(send, refusal[0], refusal[1], cors or {})
        return
    await app(scope, receive, _with_headers(send, cors) if cors else send)


def _host_refusal(headers: dict[str, str], policy: SecurityPolicy) -> tuple[int, str] | None:
    if policy.allowed_hosts is None or "*" in policy.allowed_hosts:
        return None
    host = headers.get("host", "")
    name = host[1:host.index("]")] if host.startswith("[") and "]" in host else host.rsplit(":", 1)[0] if \
        host.count(":") == 1 else host
    if name.lower() in policy.allowed_hosts:
        return None
    return 400, f"Host {host[:80]!r} is not served here (--allowed-host: {', '.join(policy.allowed_hosts)})"


def _same_origin(origin: str, headers: dict[str, str], scope: Scope) -> bool:
    return origin == f"{scope.get('scheme', 'http')}://{headers.get('host', '')}"


def _cors_headers(origin: str, policy: SecurityPolicy) -> dict[str, str] | None:
    if "*" not in policy.cors_origins and origin not in policy.cors_origins:
        return None
    return {"access-control-allow-origin": origin, "vary": "Origin",
            "access-control-allow-methods": "GET, POST, OPTIONS",
            "access-control-allow-headers": "authorization, content-type, x-request-timeout",
            "access-control-max-age": "600"}


def _open(path: str, policy: SecurityPolicy) -> bool:
    return not policy.authenticates or path in OPEN_PATHS or (policy.public_metrics and path == "/metrics")


def _authorized(headers: dict[str, str], policy: SecurityPolicy) -> bool:
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer":
        return any(hmac.compare_digest(credentials.encode(), key.encode()) for key in policy.api_keys)
    if scheme.lower() == "basic":
        try:
            pair = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            return False
        return any(hmac.compare_digest(pair.encode(), allowed.encode()) for allowed in policy.basic)
    return False


async def _answer(send: Send, status: int, message: str | None, headers: dict[str, str]) -> None:
    body = b"" if message is None else json.dumps(
        {"detail": message, "error": {"message": message, "type": "unauthorized" if status == 401 else "forbidden",
                                      "param": None, "code": None}}).encode()
    fields = [(key.encode(), value.encode()) for key, value in headers.items()]
    if message is not None:
        fields.append((b"content-type", b"application/json"))
    fields.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": fields})
    await send({"type": "http.response.body", "body": body})


def _with_headers(send: Send, extra: dict[str, str]) -> Send:
    async def sending(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []),
                                              *((k.encode(), v.encode()) for k, v in extra.items())]}
        await send(message)

    return sending
