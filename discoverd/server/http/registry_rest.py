"""The registry over plain HTTP (DESIGN §8, docs/http.md "Registry REST"): services,
leases, config documents and schemas for clients without the SDK — curl, shell scripts,
other languages, the status page.

Each handler checks the whole request first (``wire/rest_json``), then runs the member's
native ops through ``GatewayContext.call``, so the members judge a registry write exactly as
they judge one from the SDK or the CLI (validation at apply, on every member), and a
refused request has written nothing: a registration is checked before its lease is granted,
and the lease is revoked again if writing the record then fails.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import trio

from discoverd.errors import DiscoverdError
from discoverd.server.http.rest_responses import error, not_found, ok, rest_error
from discoverd.server.http.router import GatewayContext, HttpRequest, HttpResponse
from discoverd.wire import rest_json as rj
from discoverd.wire.registry_codec import DEFAULT_HEALTH, Health

Params = Mapping[str, str]
RestHandler = Callable[[HttpRequest, GatewayContext, Params], Awaitable[HttpResponse]]

REVOKE_TIMEOUT = 2.0
"""How long a registration whose record could not be written spends revoking its lease."""


def _native_errors(handler: RestHandler) -> RestHandler:
    """A ``DiscoverdError`` from a decoder or an op becomes this API's error answer (the
    server's own safety net would answer in etcd's shape)."""
    async def handle(req: HttpRequest, ctx: GatewayContext, params: Params) -> HttpResponse:
        try:
            return await handler(req, ctx, params)
        except DiscoverdError as e:
            return rest_error(e)
    handle.__name__ = handler.__name__
    handle.__doc__ = handler.__doc__
    return handle


def _revision(answer: Mapping[str, Any]) -> int:
    return int(answer["header"]["revision"])


# ------------------------------------------------------------------------------ status


@_native_errors
async def status(req: HttpRequest, ctx: GatewayContext, params: Params) -> HttpResponse:
    """``GET /v1/status``: what the status page polls (members, leader)."""
    rj.check_query(req.query, ())
    st = await ctx.call("status", {})
    members = await ctx.call("member_list", {})
    return ok(rj.encode_status(st, members))


# ------------------------------------------------------------------------------ services


@_native_errors
async def list_services(req: HttpRequest, ctx: GatewayContext, params: Params
                        ) -> HttpResponse:
    """``GET /v1/services``: the catalog — every instance of every service, whatever its
    health unless ``?health=`` says otherwise (an operator listing wants the critical and
    draining ones too; discovery of one service defaults to passing)."""
    rj.check_query(req.query, rj.FILTER_PARAMS)
    filters = rj.parse_filters(req.query, default=Health)
    answer = await ctx.call("range", rj.services_range())
    instances = filters.apply(rj.decode_instances(answer.get("kvs", ())))
    return ok(rj.encode_services(instances, _revision(answer)))


@_native_errors
async def get_service(req: HttpRequest, ctx: GatewayContext, params: Params) -> HttpResponse:
    """``GET /v1/services/{name}``: discovery, as the SDK's ``discover`` (passing only by
    default). A linearizable read, so an instance just registered is in the answer."""
    name = params["name"]
    rj.check_query(req.query, rj.FILTER_PARAMS)
    filters = rj.parse_filters(req.query, default=DEFAULT_HEALTH)
    answer = await ctx.call("range", rj.services_range(name))
    instances = filters.apply(rj.decode_instances(answer.get("kvs", ())))
    return ok(rj.encode_instances(name, instances, _revision(answer)))


@_native_errors
async def register(req: HttpRequest, ctx: GatewayContext, params: Params) -> HttpResponse:
    """``PUT /v1/services/{name}``: grant a lease, put the record on it; the caller keeps
    the lease alive (``PUT /v1/leases/{id}/keepalive``) or lets it expire."""
    rj.check_query(req.query, ())
    reg = rj.parse_registration(params["name"], req.body, now=time.time())
    grant = await ctx.call("lease_grant", {"ttl": reg.ttl, "lease": reg.lease})
    lease, ttl = int(grant["id"]), int(grant["ttl"])
    try:
        put = await ctx.call("put", {"key": reg.instance.key, "value": reg.instance.to_json(),
                                     "lease": lease})
    except DiscoverdError:
        await _revoke_quietly(ctx, lease)
        raise
    return ok(rj.encode_registered(reg.instance, lease, ttl, _revision(put)))


async def _revoke_quietly(ctx: GatewayContext, lease: int) -> None:
    """Best effort: a lease left behind holds no key and expires within its TTL anyway."""
    with (trio.CancelScope(shield=True), trio.move_on_after(REVOKE_TIMEOUT),
          contextlib.suppress(DiscoverdError)):
        await ctx.call("lease_revoke", {"lease": lease})


# ------------------------------------------------------------------------------ leases


@_native_errors
async def keepalive(req: HttpRequest, ctx: GatewayContext, params: Params) -> HttpResponse:
    """``PUT /v1/leases/{id}/keepalive``: one renewal. The native answer's TTL 0 ("gone")
    becomes a 404, so a script's ``curl -f`` notices it must register again."""
    rj.check_query(req.query, ())
    lease = rj.parse_lease_id(params["id"])
    answer = await ctx.call("lease_keepalive", {"lease": lease})
    ttl = int(answer.get("ttl") or 0)
    if ttl <= 0:
        return error({"code": "lease_not_found",
                      "message": f"lease {rj.format_lease_id(lease)} not found (expired or "
                                 "revoked): register again"})
    return ok({"lease": rj.format_lease_id(lease), "ttl": ttl})


@_native_errors
async def revoke(req: HttpRequest, ctx: GatewayContext, params: Params) -> HttpResponse:
    """``DELETE /v1/leases/{id}``: deregister at once (every key on the lease goes, in one
    revision), instead of waiting for the TTL."""
    rj.check_query(req.query, ())
    lease = rj.parse_lease_id(params["id"])
    answer = await ctx.call("lease_revoke", {"lease": lease})
    return ok({"lease": rj.format_lease_id(lease), "revision": _revision(answer)})


# ------------------------------------------------------------------------------ config


@_native_errors
async def list_configs(req: HttpRequest, ctx: GatewayContext, params: Params
                       ) -> HttpResponse:
    """``GET /v1/config``: every document's name, generation and revision (no bodies)."""
    rj.check_query(req.query, ())
    answer = await ctx.call("txn", rj.config_list())
    return ok({"revision": _revision(answer), "configs": rj.decode_config_list(answer)})


@_native_errors
async def get_config(req: HttpRequest, ctx: GatewayContext, params: Params) -> HttpResponse:
    """``GET /v1/config/{name}``: the document with its generation (also as the ``ETag``
    that ``If-Match`` takes back)."""
    rj.check_query(req.query, ())
    name = params["name"]
    state = rj.decode_config_read(name, await ctx.call("txn", rj.config_read(name)))
    if state.document is None:
        gone = f" (generation {state.generation} deleted it)" if state.generation else ""
        return not_found(f"config {name!r} does not exist{gone}")
    return ok(rj.encode_config(state), [("etag", rj.etag(state.generation))])


@_native_errors
async def put_config(req: HttpRequest, ctx: GatewayContext, params: Params) -> HttpResponse:
    """``PUT /v1/config/{name}``: write the document (validated against its schema when
    applied); with ``If-Match: <generation>`` only if nobody wrote it meanwhile (412)."""
    rj.check_query(req.query, ())
    name = params["name"]
    value = rj.parse_document(req.body)
    expected = rj.parse_if_match(req.headers.get("if-match"))
    op, native = rj.config_write(name, value, expected)
    answer = await ctx.call(op, native)
    revision = _revision(answer)
    if expected is not None:
        if not answer.get("succeeded"):
            actual = rj.decode_conflict(name, answer)
            return error({"code": "generation_mismatch", "expected": expected,
                          "generation": actual,
                          "message": f"config {name!r} is at generation {actual}, not "
                                     f"{expected}: it was written meanwhile; read it again "
                                     "and retry"})
        generation = expected + 1
    else:
        found = await ctx.call("range", rj.generation_read(name, revision))
        generation = rj.decode_generation(name, found, revision)
    state = rj.ConfigState(name, value, generation, revision)
    return ok(rj.encode_config(state), [("etag", rj.etag(generation))])


@_native_errors
async def get_schema(req: HttpRequest, ctx: GatewayContext, params: Params) -> HttpResponse:
    rj.check_query(req.query, ())
    name = params["name"]
    answer = await ctx.call("range", {"key": rj.schema_key_of(name)})
    kvs = answer.get("kvs") or ()
    if not kvs:
        return not_found(f"config {name!r} has no schema")
    return ok(rj.encode_schema(name, bytes(kvs[0]["value"]), int(kvs[0]["mod_revision"])))


@_native_errors
async def put_schema(req: HttpRequest, ctx: GatewayContext, params: Params) -> HttpResponse:
    """``PUT /v1/schemas/{name}``: members refuse (422) a schema that is not one, or that
    the current document would not satisfy."""
    rj.check_query(req.query, ())
    name = params["name"]
    value = rj.parse_document(req.body, "the schema")
    answer = await ctx.call("put", {"key": rj.schema_key_of(name), "value": value})
    return ok(rj.encode_schema(name, value, _revision(answer)))
