"""GET /: the phone page (see `graft.serve.page`); public, as it asks for the token itself when one is set."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from graft.serve.page import PAGE_HEADERS, page_html

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
async def page() -> HTMLResponse:
    return HTMLResponse(page_html(), headers=PAGE_HEADERS)


@router.get("/favicon.ico")
async def favicon() -> Response:
    """No icon: answered so that browsers do not log a 404 on every visit."""
    return Response(status_code=204)
