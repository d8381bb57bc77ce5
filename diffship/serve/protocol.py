"""uvicorn's HTTP/1.1 protocol with a deadline for the request headers: a client that opens a connection and sends
its headers slowly, or not at all (slowloris), is closed after ``DoorLimits.read_timeout_s`` instead of holding a
connection and, at shutdown, the server. uvicorn's own keep-alive timeout covers only idle connections between
requests, and stops counting at the first byte. The body's deadline is the app's (serve/app.py)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)


def header_timeout_protocol(timeout_s: float) -> type[H11Protocol]:
    """The protocol class to give ``uvicorn.Config(http=...)``."""

    class HeaderDeadline(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._header_timer is not None and self.cycle is not None and not self.cycle.response_complete:
                # a request's headers arrived
                self._header_timer.cancel()
                self._header_timer = None

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()  # the next request on this connection gets the same deadline

        def connection_lost(self, exc: Exception | None) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            self._header_timer = self.loop.call_later(timeout_s, self._expire)

        def _expire(self) -> None:
            self._header_timer = None
            if self.cycle is None or self.cycle.response_complete:
                if not self.transport.is_closing():
                    log.info("closed a connection that sent no complete request headers within %gs", timeout_s)
                    self.transport.close()

    return HeaderDeadline
