"""The routes of discoverd's own HTTP API — the registry REST API, SSE watches, the status
page and its OpenAPI document — as one table of OpenAPI path templates.

Why a table of templates: ``Router`` matches exact paths and prefixes, while the API has path
parameters (``/v1/services/{name}``, ``/v1/leases/{id}/keepalive``). Writing each route once,
as the template the OpenAPI document names, keeps the router, the handlers and the document
in step (tests/http/test_openapi.py holds them to it). A parameter matches one path segment;
a ``greedy`` one (config names, which may contain ``/``) the rest of the path.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from discoverd.server.http import openapi, registry_rest, sse_watch, status_page
from discoverd.server.http.rest_responses import error, not_found
from discoverd.server.http.router import (
    GatewayContext,
    Handler,
    HttpRequest,
    HttpResponse,
    Router,
    StreamingResponse,
)

RestHandler = Callable[[HttpRequest, GatewayContext, Mapping[str, str]],
                       Awaitable[HttpResponse | StreamingResponse]]


@dataclass(frozen=True)
class RestRoute:
    method: str
    path: str
    """An OpenAPI path template."""
    handler: RestHandler
    greedy: bool = False
    """The last parameter may span ``/`` (a config name like ``app/db``)."""

    @property
    def static_prefix(self) -> str:
        return self.path.split("{", 1)[0]

    def pattern(self) -> re.Pattern[str]:
        parts = re.split(r"(\{\w+\})", self.path)
        out = []
        for i, part in enumerate(parts):
            if part.startswith("{"):
                last = i >= len(parts) - 2 and not parts[-1]
                body = ".+" if self.greedy and last else "[^/]+"
                out.append(f"(?P<{part[1:-1]}>{body})")
            else:
                out.append(re.escape(part))
        return re.compile("".join(out))


ROUTES: tuple[RestRoute, ...] = (
    RestRoute("GET", "/", status_page.page),
    RestRoute("GET", "/openapi.json", openapi.serve),
    RestRoute("GET", "/v1/status", registry_rest.status),
    RestRoute("GET", "/v1/services", registry_rest.list_services),
    RestRoute("GET", "/v1/services/{name}", registry_rest.get_service),
    RestRoute("PUT", "/v1/services/{name}", registry_rest.register),
    RestRoute("PUT", "/v1/leases/{id}/keepalive", registry_rest.keepalive),
    RestRoute("DELETE", "/v1/leases/{id}", registry_rest.revoke),
    RestRoute("GET", "/v1/config", registry_rest.list_configs),
    RestRoute("GET", "/v1/config/{name}", registry_rest.get_config, greedy=True),
    RestRoute("PUT", "/v1/config/{name}", registry_rest.put_config, greedy=True),
    RestRoute("GET", "/v1/schemas/{name}", registry_rest.get_schema, greedy=True),
    RestRoute("PUT", "/v1/schemas/{name}", registry_rest.put_schema, greedy=True),
    RestRoute("GET", "/v1/watch", sse_watch.watch),
)


def add_routes(router: Router) -> None:
    """Every route of the table: fixed paths as they are, templates under their static
    prefix with one dispatcher per prefix (which answers 404/405 for paths under the
    prefix that no template matches)."""
    templated: dict[str, list[RestRoute]] = {}
    for route in ROUTES:
        if "{" not in route.path:
            router.add(route.method, route.path, _fixed(route.handler))
        else:
            templated.setdefault(route.static_prefix, []).append(route)
    for prefix, routes in templated.items():
        dispatch = _dispatcher(routes)
        for method in sorted({r.method for r in routes}):
            router.add_prefix(method, prefix, dispatch)


def _fixed(handler: RestHandler) -> Handler:
    async def handle(req: HttpRequest, ctx: GatewayContext
                     ) -> HttpResponse | StreamingResponse:
        return await handler(req, ctx, {})
    return handle


def _dispatcher(routes: list[RestRoute]) -> Handler:
    compiled = [(r, r.pattern()) for r in routes]

    async def dispatch(req: HttpRequest, ctx: GatewayContext
                       ) -> HttpResponse | StreamingResponse:
        method = "GET" if req.method == "HEAD" else req.method
        allowed: set[str] = set()
        for route, pattern in compiled:
            match = pattern.fullmatch(req.path)
            if match is None:
                continue
            if route.method == method:
                return await route.handler(req, ctx, match.groupdict())
            allowed.add(route.method)
        if allowed:
            resp = error({"code": "method_not_allowed",
                          "message": f"method {req.method} not allowed on {req.path}"})
            resp.headers.append(("allow", ", ".join(sorted(allowed))))
            return resp
        return not_found(f"no such path: {req.path}")

    return dispatch
