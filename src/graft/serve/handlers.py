"""Exception handlers: every error is `{"detail": one line, "code": ...}`; client mistakes never become a 500."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from graft.serve.guards import API_HEADERS
from graft.serve.limits import Problem, problem_response

log = logging.getLogger("graft.serve")


async def on_problem(_: Request, error: Problem) -> Response:
    """A refusal raised by a route, a dependency (the token) or the upload limit."""
    return error.response()


async def on_invalid(_: Request, error: RequestValidationError) -> Response:
    """FastAPI's validation errors (query, JSON body) as one line instead of its list of dicts."""
    parts = []
    for issue in error.errors():
        if issue.get("type") == "json_invalid":
            parts.append("the request body is not valid JSON")
            continue
        where = ".".join(str(p) for p in issue.get("loc", ()) if p not in ("query", "body"))
        parts.append(f"{where}: {issue.get('msg')}" if where else str(issue.get("msg")))
    return problem_response(422, "invalid_request", "; ".join(parts) or "invalid request")


async def on_http_error(_: Request, error: StarletteHTTPException) -> Response:
    """Starlette's own errors (unknown path, wrong method, malformed multipart) in the same JSON shape."""
    code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "bad_request")
    return problem_response(error.status_code, code, str(error.detail), getattr(error, "headers", None))


async def on_disconnect(request: Request, _: ClientDisconnect) -> Response:
    """The client hung up while sending its request (flaky Wi-Fi): one quiet line, no traceback; the answer
    goes nowhere."""
    client = request.client.host if request.client else "a client"
    log.info("%s hung up while sending %s %s", client, request.method, request.url.path)
    return problem_response(400, "client_disconnected", "the client closed the connection during the request")


async def on_crash(_: Request, error: Exception) -> Response:
    """A bug: logged with its traceback; the client gets a JSON 500 that leaks nothing.

    Starlette runs this handler in its outermost middleware, outside `guards.SecurityHeaders`, so the 500 sets
    the security headers itself."""
    log.exception("unexpected error", exc_info=error)
    return problem_response(500, "internal_error", "internal server error (see the server log)", dict(API_HEADERS))


def install_error_handlers(app: FastAPI) -> None:
    """Handlers by exception type; `Exception` goes to Starlette's outermost middleware, so it catches the rest."""
    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(ClientDisconnect, on_disconnect)
    app.add_exception_handler(RequestValidationError, on_invalid)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_crash)
