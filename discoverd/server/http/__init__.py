"""HTTP/1.1 on the client port (DESIGN §8): a connection whose first bytes are not the native
magic ``DSC1`` is served here. ``server`` speaks HTTP (h11 on trio), ``router`` maps paths to
handlers, and each API is a module of handlers that translate to the member's native ops
(``etcd_gateway``: etcd v3's grpc-gateway JSON). docs/http.md is the user's view."""

from discoverd.server.http import etcd_gateway, rest_routes
from discoverd.server.http.router import (
    GatewayContext,
    Handler,
    HttpRequest,
    HttpResponse,
    Router,
    StreamingResponse,
)
from discoverd.server.http.server import HttpServer


def gateway_router() -> Router:
    """Every HTTP route a member's client port serves."""
    router = Router()
    etcd_gateway.add_routes(router)
    rest_routes.add_routes(router)  # /v1 registry REST + SSE, /, /openapi.json
    return router


__all__ = [
    "GatewayContext",
    "Handler",
    "HttpRequest",
    "HttpResponse",
    "HttpServer",
    "Router",
    "StreamingResponse",
    "gateway_router",
]
