"""The phone page: one static HTML file shipped in the package, inline CSS and JS, nothing fetched from elsewhere."""

from __future__ import annotations

from functools import cache
from importlib import resources

# The page loads nothing from other sites and talks only to this server; the policy makes that a rule.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' blob: data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@cache
def page_html() -> str:
    return resources.files("graft.serve").joinpath("static", "index.html").read_text(encoding="utf-8")
