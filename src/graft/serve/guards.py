"""Browser-facing guards on every response: the `Host` check (DNS rebinding) and the security headers.

DNS rebinding: a web page on evil.example can make its own name resolve to 127.0.0.1 (or a LAN address) and
then read this server's answers as same-origin — /v1/model with its absolute paths — and POST /v1/reload,
even though the server only listens on loopback. Such a request always carries the attacker's name in `Host`.
So a request is answered only when `Host` is an IP address (a page whose origin is the address itself is
this server's own), `localhost`, this machine's own name, or a name given with --allowed-host; otherwise 421.

Every response also gets `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer`, a
Content-Security-Policy that allows nothing (JSON needs no scripts; framing is refused) and
`Cache-Control: no-store` (predictions, model details and errors are not for caches), unless the route set its
own (the phone page, and /docs when enabled, which needs its CDN).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from graft.serve.limits import problem_response

API_HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "cache-control": "no-store",
}

# /docs and /redoc (only with --docs) load Swagger UI and ReDoc from jsDelivr: allowed, and nothing else foreign.
DOCS_CSP = (
    "default-src 'none'; script-src 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
    "font-src https://fonts.gstatic.com; img-src 'self' data: https://fastapi.tiangolo.com https://cdn.redoc.ly; "
    "connect-src 'self'; worker-src blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
DOCS_PATHS = ("/docs", "/redoc", "/docs/oauth2-redirect")


def own_names() -> set[str]:
    """This machine's names as a phone on the LAN might reach it: its hostname and that name's mDNS `.local` form.

    (Not `socket.getfqdn()`: a reverse DNS lookup can take seconds on a badly configured network.)"""
    names = {"localhost"}
    name = socket.gethostname().strip().lower().rstrip(".")
    if name:
        names |= {name, name.split(".")[0] + ".local"}
    return names


def host_name(header: str) -> str:
    """The name or address of a `Host` header value, without port or IPv6 brackets, lower case."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


def host_allowed(header: str | None, names: set[str]) -> bool:
    """Whether a request's `Host` is this server's: an IP address, one of `names`, or none given (HTTP/1.0)."""
    if header is None:
        return True
    name = host_name(header).rstrip(".")
    if name in names:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostCheck:
    """ASGI middleware: 421 with a JSON reason for a `Host` that is not this server's (see the module)."""

    def __init__(self, app: ASGIApp, allowed: Iterable[str] = ()) -> None:
        extra = {host.strip().lower().rstrip(".") for host in allowed}
        self.app, self.any_host = app, "*" in extra
        self.names = own_names() | extra

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.any_host:
            await self.app(scope, receive, send)
            return
        raw = dict(scope.get("headers") or []).get(b"host")
        header = raw.decode("latin-1") if raw is not None else None
        if host_allowed(header, self.names):
            await self.app(scope, receive, send)
            return
        shown = host_name(header or "")[:100]
        detail = (
            f"this server does not answer to the name {shown!r} (a DNS rebinding guard); "
            f"start it with --allowed-host {shown} if that name is really this computer"
        )
        await problem_response(421, "unknown_host", detail, dict(API_HEADERS))(scope, receive, send)


class SecurityHeaders:
    """ASGI middleware: the headers of `API_HEADERS` on every response that did not set its own."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        docs = scope.get("path") in DOCS_PATHS

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in API_HEADERS.items():
                    if name not in headers:
                        headers[name] = DOCS_CSP if docs and name == "content-security-policy" else value
            await send(message)

        await self.app(scope, receive, with_headers)
