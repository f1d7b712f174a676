"""``GET /``: the status page — members, leader, services and their health, config
documents and their generations — for an operator with nothing but a browser.

One static file (``status_page.html``, inline CSS and JavaScript: members run where there may
be no internet, so no CDN, no build step) that lists through ``/v1/services`` and
``/v1/config``, follows changes through ``/v1/watch`` (SSE) and polls ``/v1/status``. The
server only hands the file out; the page does the rest with the public API, so whatever it
shows a script can get the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from importlib import resources

from discoverd.server.http.router import GatewayContext, HttpRequest, HttpResponse

HEADERS = [
    ("content-type", "text/html; charset=utf-8"),
    ("cache-control", "no-cache"),
    # Everything the page needs is inline or on this origin; nothing else may load.
    ("content-security-policy", "default-src 'none'; script-src 'unsafe-inline'; "
     "style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:"),
    ("x-content-type-options", "nosniff"),
]


@cache
def html() -> bytes:
    return resources.files("discoverd.server.http").joinpath("status_page.html").read_bytes()


async def page(req: HttpRequest, ctx: GatewayContext, params: Mapping[str, str]
               ) -> HttpResponse:
    return HttpResponse(200, html(), list(HEADERS))
