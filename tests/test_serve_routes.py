"""The serve API's authorisation as declared on its routes: every /v1 route depends on the token check, the
public ones do not, and a missing or wrong token gets the same 401 JSON reason on every protected route."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts

from graft.serve import create_app

PUBLIC = {"/", "/favicon.ico", "/healthz", "/readyz"}
PROTECTED = {
    "/v1/predict", "/v1/model", "/v1/reload", "/v1/samples", "/v1/samples/video", "/v1/rounds", "/v1/training",
}  # fmt: skip
# Routes that change what the server holds: without a token, only clients on this machine may call them.
LOCAL_OR_TOKEN = {
    ("POST", "/v1/reload"), ("POST", "/v1/samples"), ("POST", "/v1/samples/video"), ("POST", "/v1/rounds"),
}  # fmt: skip
NEEDS = "this server needs a token: Authorization: Bearer TOKEN"
BAD_TOKENS = [
    ({}, NEEDS),
    ({"authorization": "Bearer wrong"}, "wrong token"),
    ({"authorization": "Bearer s3cret-and-more"}, "wrong token"),
    ({"authorization": "s3cret"}, NEEDS),  # no scheme
    ({"authorization": "Basic czNjcmV0"}, NEEDS),
    ({"authorization": "Bearer   "}, NEEDS),
]


def _calls(dependant: Dependant) -> set:
    """Every callable in a route's dependency tree."""
    found = set()
    for sub in dependant.dependencies:
        found |= {sub.call, *_calls(sub)}
    return found


def _routes(app) -> dict[tuple[str, str], RouteContext]:
    """The app's API routes by (method, full path), as served: `app.routes` holds included routers unflattened,
    and `iter_route_contexts` gives each route with its router's prefix and dependencies."""
    contexts = [c for c in iter_route_contexts(app.routes) if isinstance(c.original_route, APIRoute)]
    return {(method, context.path): context for context in contexts for method in context.original_route.methods}


@pytest.fixture(scope="module")
def token_app(serve_bundle):
    return create_app(serve_bundle, engine="torch", token="s3cret")


def _request(app, method: str, path: str, **kwargs) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=("192.168.1.20", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://192.168.1.10:8000") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


def test_every_v1_route_depends_on_the_token_check_and_no_public_one_does(token_app):
    from graft.serve.api.auth import check_reload_origin, check_token

    routes = _routes(token_app)
    assert {path for _, path in routes} == PUBLIC | PROTECTED  # a new route must be placed in one on purpose
    for (method, path), route in routes.items():
        calls = _calls(route.dependant)
        assert (check_token in calls) == path.startswith("/v1"), path
        assert (check_reload_origin in calls) == ((method, path) in LOCAL_OR_TOKEN), (method, path)


@pytest.mark.parametrize(("headers", "detail"), BAD_TOKENS)
def test_a_missing_or_wrong_token_is_the_same_401_on_every_protected_route(token_app, headers, detail):
    before, routes = token_app.state.holder.current, _routes(token_app)
    assert {path for _, path in routes} == PUBLIC | PROTECTED
    for method, path in routes:
        response = _request(token_app, method, path, headers=headers)
        if path in PUBLIC:
            assert response.status_code != 401, (method, path)
            continue
        assert response.status_code == 401, (method, path, response.text)
        assert response.json() == {"detail": detail, "code": "unauthorized"}
        assert response.headers["www-authenticate"] == "Bearer"
    assert token_app.state.holder.current is before  # no reload ran


def test_the_token_is_checked_before_the_request_itself(token_app):
    """A client without the token learns that it needs one, not what else is wrong with its request (before the
    token check was a dependency, these were 422s)."""
    bad_k = _request(token_app, "POST", "/v1/predict", params={"top_k": "0"}, content=b"x")
    assert (bad_k.status_code, bad_k.json()["code"]) == (401, "unauthorized")
    not_json = _request(token_app, "POST", "/v1/reload", content=b"not json")
    assert (not_json.status_code, not_json.json()["code"]) == (401, "unauthorized")
    good = {"authorization": "Bearer s3cret"}
    bad_k = _request(token_app, "POST", "/v1/predict", params={"top_k": "0"}, content=b"x", headers=good)
    assert (bad_k.status_code, bad_k.json()["code"]) == (422, "invalid_request")
