"""etcd v3's HTTP/JSON gateway (grpc-gateway) on the client port: ``/v3/...``, ``/version``,
``/health``, ``/metrics``.

Each route decodes etcd's JSON into the native request map (``wire/etcd_json``), runs the
member's native op through ``GatewayContext.call``, and encodes the answer back, so etcd
clients (etcd3gw, curl) meet exactly the rules native clients meet. Paths, fields and errors
follow etcd 3.4's gateway; the deliberate differences are listed in docs/http.md.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import trio

from discoverd.errors import DiscoverdError, Unavailable
from discoverd.server.http import etcd_auth
from discoverd.server.http.etcd_responses import (
    JSON_HEADERS,
    etcd_error,
    json_response,
    stream_error_chunk,
)
from discoverd.server.http.etcd_watch import watch
from discoverd.server.http.router import (
    GatewayContext,
    Handler,
    HttpRequest,
    HttpResponse,
    Router,
    StreamingResponse,
)
from discoverd.wire import etcd_json as ej

HEALTH_TIMEOUT = 2.0
"""How long ``/health`` waits for its quorum read before answering false."""

_Decode = Callable[[Any], dict[str, Any]]
_Encode = Callable[[Mapping[str, Any]], dict[str, Any]]


def _unary(op: str, decode: _Decode, encode: _Encode) -> Handler:
    async def handle(req: HttpRequest, ctx: GatewayContext) -> HttpResponse:
        try:
            answer = await ctx.call(op, decode(ej.parse_json_body(req.body)))
        except DiscoverdError as e:
            return etcd_error(e)
        return json_response(200, encode(answer))
    return handle


def _ignore_body(obj: Any) -> dict[str, Any]:
    ej.as_object(obj, "request body")
    return {}


UNARY: dict[str, tuple[str, _Decode, _Encode]] = {
    "/v3/kv/range": ("range", ej.decode_range, ej.encode_range),
    "/v3/kv/put": ("put", ej.decode_put, ej.encode_put),
    "/v3/kv/deleterange": ("delete_range", ej.decode_delete_range, ej.encode_delete_range),
    "/v3/kv/txn": ("txn", ej.decode_txn, ej.encode_txn),
    "/v3/kv/compaction": ("compact", ej.decode_compaction, ej.encode_header_only),
    "/v3/lease/grant": ("lease_grant", ej.decode_lease_grant, ej.encode_lease_grant),
    "/v3/lease/revoke": ("lease_revoke", ej.decode_lease_id, ej.encode_header_only),
    "/v3/lease/timetolive": ("lease_timetolive", ej.decode_lease_timetolive,
                             ej.encode_lease_timetolive),
    "/v3/lease/leases": ("lease_leases", _ignore_body, ej.encode_lease_leases),
    "/v3/cluster/member/list": ("member_list", _ignore_body, ej.encode_member_list),
    "/v3/maintenance/status": ("status", _ignore_body, ej.encode_status),
    **etcd_auth.ROUTES,  # /v3/auth/...
}
ALIASES = {
    # etcd's older lease paths, still served by 3.4 (etcd3gw revokes and reads TTLs there)
    "/v3/kv/lease/revoke": "/v3/lease/revoke",
    "/v3/kv/lease/timetolive": "/v3/lease/timetolive",
    "/v3/kv/lease/leases": "/v3/lease/leases",
}


async def keepalive(req: HttpRequest, ctx: GatewayContext) -> HttpResponse | StreamingResponse:
    """``/v3/lease/keepalive``: a stream in etcd that ends when the request body does, so
    one ``{"ID"}`` in gives exactly one ``{"result":…}`` out (etcd3gw reads it with
    ``resp.json()``); several objects in the body give one result each."""
    try:
        requests = [ej.decode_lease_id(v) for v in ej.parse_json_stream(req.body)]
    except DiscoverdError as e:
        return etcd_error(e)
    chunks: list[bytes] = []
    for native in requests:
        try:
            answer = await ctx.call("lease_keepalive", native)
        except DiscoverdError as e:
            if not chunks:
                return etcd_error(e)
            chunks.append(stream_error_chunk(e))
            break
        chunks.append(ej.dumps({"result": ej.encode_lease_keepalive(answer)}) + b"\n")

    async def send() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    return StreamingResponse(200, list(JSON_HEADERS), send)


async def version(req: HttpRequest, ctx: GatewayContext) -> HttpResponse:
    return json_response(200, {"etcdserver": ej.ETCD_SERVER_VERSION,
                               "etcdcluster": ej.ETCD_CLUSTER_VERSION})


async def health(req: HttpRequest, ctx: GatewayContext) -> HttpResponse:
    """etcd's ``/health``: true when the member knows a leader, no alarm is active (a
    NOSPACE member refuses writes) and a linearizable read completes — a quorum answers —
    in time. The read is ``auth_status``, which needs no credentials, so a member with
    authentication on is not reported unhealthy for it."""
    healthy = False
    with trio.move_on_after(HEALTH_TIMEOUT):
        try:
            status = await ctx.call("status", {})
            if status.get("leader") and not status.get("errors"):
                # A linearizable read that anyone may make, auth on or off: it completes
                # only after a ReadIndex round, i.e. when a quorum answers.
                await ctx.call("auth_status", {})
                healthy = True
        except DiscoverdError:
            healthy = False
    if healthy:
        return json_response(200, {"health": "true"})
    return json_response(503, {"health": "false"})


async def metrics(req: HttpRequest, ctx: GatewayContext) -> HttpResponse:
    try:
        body, content_type = ctx.metrics_text()
    except Unavailable as e:
        return HttpResponse(503, f"{e}\n".encode(), [("content-type", "text/plain")])
    return HttpResponse(200, body, [("content-type", content_type)])


def add_routes(router: Router) -> None:
    """Every route of the etcd gateway."""
    for path, (op, decode, encode) in UNARY.items():
        router.add("POST", path, _unary(op, decode, encode))
    for alias, path in ALIASES.items():
        op, decode, encode = UNARY[path]
        router.add("POST", alias, _unary(op, decode, encode))
    router.add("POST", "/v3/lease/keepalive", keepalive)
    router.add("POST", "/v3/watch", watch)
    router.add("GET", "/version", version)
    router.add("GET", "/health", health)
    router.add("GET", "/metrics", metrics)
