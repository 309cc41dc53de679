"""Who may call what: the bearer token on every /v1 route, and changes (reload, samples) from other machines.

Both are dependencies, declared on a router or route (`dependencies=[require_token]`), so no route can forget
to call them and a test can read the rule off the app's routes. They run before the route's query parameters
and body are validated (only a malformed JSON body is refused earlier, by FastAPI): a client without the token
learns that it needs one rather than what else is wrong with its request.
"""

from __future__ import annotations

import hmac

from fastapi import Depends, Request

from graft.serve.api.deps import SettingsDep
from graft.serve.limits import Problem, is_loopback

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


async def check_token(request: Request, settings: SettingsDep) -> None:
    """Nothing when no token is set or `Authorization: Bearer <token>` matches (in constant time); else 401."""
    if settings.token is None:
        return
    scheme, _, given = (request.headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise Problem(401, "unauthorized", "this server needs a token: Authorization: Bearer TOKEN", _CHALLENGE)
    if not hmac.compare_digest(given.strip().encode(), settings.token.encode()):
        raise Problem(401, "unauthorized", "wrong token", _CHALLENGE)


async def check_reload_origin(request: Request, settings: SettingsDep) -> None:
    """Without a token set, only clients on this machine may change what the server holds: anyone else could swap
    the model (reload) or fill a project's inbox with mislabelled photos (samples). With a token, the token rules."""
    if settings.token is None and not is_loopback(request.client.host if request.client else None):
        what = "reloading" if request.url.path.endswith("/reload") else f"{request.method} {request.url.path}"
        raise Problem(403, "forbidden", f"{what} from another machine needs the server to run with --token")


require_token = Depends(check_token)
require_local_or_token = Depends(check_reload_origin)
