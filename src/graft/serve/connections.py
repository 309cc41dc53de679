"""Connections the server accepts: a header deadline and a cap, which uvicorn does not have.

uvicorn waits forever for a request's headers (its keep-alive timer runs only between requests, and any byte
cancels it), so a client that connects and sends nothing, or trickles its headers a byte at a time, holds a
connection and its memory for as long as it likes; and it accepts any number of connections (its
`limit_concurrency` answers 503 only once a request's headers are complete, and keeps the connection). This
protocol, uvicorn's h11 one with two additions, closes a connection that has not sent a request's complete
headers within `header_timeout_s` of connecting or of its previous response, and answers a connection beyond
`max_connections` with 503 and closes it at once. A request's body is bounded elsewhere (predict by
--timeout, every body by --max-upload-mb).
"""

from __future__ import annotations

import asyncio
import json
import logging

from uvicorn.protocols.http.h11_impl import H11Protocol

from graft.serve.settings import ServeSettings

log = logging.getLogger("graft.serve")

_BUSY_BODY = json.dumps(
    {"detail": "the server has too many open connections (--max-connections); retry shortly", "code": "overloaded"}
).encode()
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
    b"x-content-type-options: nosniff\r\ncache-control: no-store\r\nconnection: close\r\n"
    b"content-length: " + str(len(_BUSY_BODY)).encode() + b"\r\n\r\n" + _BUSY_BODY
)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for headers and a cap on open connections (see the module)."""

    header_timeout_s: float = 10.0
    max_connections: int = 256

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.write(_BUSY)
            transport.close()
            return
        self._await_headers()

    def on_response_complete(self) -> None:
        self._await_headers()  # before the next request (pipelined ones start inside the call below)
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        super().connection_lost(exc)

    def _await_headers(self) -> None:
        """Close the connection unless a new request's headers are complete within the deadline."""
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_overdue, self.cycle)

    def _headers_overdue(self, cycle_then: object) -> None:
        if self.cycle is cycle_then and not self.transport.is_closing():  # no new request began since
            log.debug("closing a connection that sent no complete request within %g s", self.header_timeout_s)
            self.transport.close()


def guarded_protocol(settings: ServeSettings) -> type[GuardedH11Protocol]:
    """The protocol class uvicorn instantiates per connection, with this server's header deadline and cap."""
    return type(
        "GuardedH11Protocol",
        (GuardedH11Protocol,),
        {"header_timeout_s": settings.header_timeout_s, "max_connections": settings.max_connections},
    )
