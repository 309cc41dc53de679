"""Limits and refusals: upload size, admission (bounded queue), the loopback rule, and the JSON error they all give.

Every refusal is a `Problem`: an HTTP status, a short machine-readable code and one human line, sent as
`{"detail": ..., "code": ...}`. Client mistakes are 4xx, overload 503 with Retry-After, never a 500.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

RETRY_AFTER_S = 1


class Problem(Exception):
    """A refusal with its HTTP status; the app turns it into a JSON response."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers or {}

    def response(self) -> JSONResponse:
        return problem_response(self.status, self.code, self.detail, self.headers)


def problem_response(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail, "code": code}, status_code=status, headers=headers)


def too_large(limit: int) -> Problem:
    return Problem(413, "upload_too_large", f"upload is larger than the limit of {_size(limit)} (--max-upload-mb)")


def _size(count: int) -> str:
    return f"{count / 2**20:g} MB" if count >= 2**20 else f"{count} bytes"


class BodyLimit:
    """ASGI middleware: refuse bodies over `limit` bytes without holding more than `limit` of them, and bodies
    that have not fully arrived `timeout_s` after the request began.

    A declared Content-Length over the limit is answered at once, before the body is read; a body without one
    (chunked) raises `Problem(413)` from `receive` as soon as it passes the limit, and the handler reading it
    answers 413. (FastAPI's own `max_body_size` answers the first case in plain text; clients here get JSON.)
    A body still incomplete at the deadline raises `Problem(408)` the same way: without it a client trickling
    the body of any POST (FastAPI reads it before the route's token check) would hold a connection forever.
    """

    def __init__(self, app: ASGIApp, limit: int, timeout_s: float = 30.0) -> None:
        self.app, self.limit, self.timeout_s = app, limit, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.limit
            except ValueError:
                await problem_response(400, "bad_request", "Content-Length is not a number")(scope, receive, send)
                return
            if too_big:
                await too_large(self.limit).response()(scope, receive, send)
                return
        received, complete = 0, False
        deadline = asyncio.get_running_loop().time() + self.timeout_s

        async def limited() -> Message:
            nonlocal received, complete
            if complete:  # the body is in: a later receive waits for the client to leave, for as long as it takes
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                detail = f"the request body did not arrive within {self.timeout_s:g} s"
                raise Problem(408, "body_timeout", detail) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise too_large(self.limit)
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, limited, send)


class Admission:
    """At most `limit` predict requests held at once; one more is refused with 503 and Retry-After.

    A request holds its place until its work has stopped, not only its response: a request that timed out while
    its upload was being decoded keeps the place until the decoding thread returns (`release_after`), so
    repeated slow requests cannot pile up work beyond `limit`. Used from the event loop only, so a plain counter
    is enough (a thread releases through the loop).
    """

    def __init__(self, limit: int) -> None:
        self.limit, self.active = limit, 0

    def enter(self) -> None:
        """Take a place, or raise the 503."""
        if self.active >= self.limit:
            raise Problem(
                503,
                "overloaded",
                f"the server is busy ({self.active} requests in progress, --max-queue {self.limit}); retry shortly",
                {"Retry-After": str(RETRY_AFTER_S)},
            )
        self.active += 1

    def release(self) -> None:
        self.active -= 1

    def release_after(self, work: concurrent.futures.Future | None) -> None:
        """Give the place back now, or when `work` (a thread still running for this request) finishes."""
        if work is None or work.done():
            self.release()
            return
        loop = asyncio.get_running_loop()
        work.add_done_callback(lambda _: loop.call_soon_threadsafe(self.release))


def is_loopback(host: str | None) -> bool:
    """Whether a client address is this machine (127.0.0.0/8, ::1, and IPv4 loopback as an IPv6 dual-stack
    socket reports it, ::ffff:127.0.0.1); unknown or unparsable counts as not."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback
