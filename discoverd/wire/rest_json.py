"""discoverd's own REST API (``/v1/...``, docs/http.md "Registry REST") ⇄ the native
protocol's maps. Pure: no I/O, no clock (the caller passes ``now``).

It is a codec separate from ``etcd_json`` because the conventions differ on purpose: etcd's
gateway must look like etcd (base64 bytes, int64 as decimal strings, gRPC error codes),
while this API is for curl, shell scripts and browsers reading the registry, whose keys and
values are JSON text already. So values are plain JSON, lease and member ids are hex strings
(as ``discoverd lease`` and the logs print them, and because a 63-bit id does not survive a
JavaScript number), and errors are ``{"error": <native code>, "message", ...}`` with an HTTP
status of their own (``error_response``).

The registry's formats come from ``registry_codec`` (the one definition members validate
against), and the generation rules from docs/protocol.md "Registry validation": a
document's generation is the history entry written in the document's own revision, and a
write guarded by generation G succeeds exactly when history entry G exists and G+1 does not.
Every check a member would make again is made here first, so a request that would be
refused never costs a lease grant or a proposal.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from discoverd.errors import ClientError, ValidationError
from discoverd.wire import etcd_json as ej
from discoverd.wire.registry_codec import (
    CONFIG_HISTORY_PREFIX,
    CONFIG_PREFIX,
    Health,
    JsonProblem,
    ServiceInstance,
    config_key,
    decode_document,
    filter_instances,
    history_key,
    history_prefix,
    history_range,
    instance_violations,
    json_type,
    parse_generation,
    parse_json,
    prefix_end,
    schema_key,
    service_key,
    service_prefix,
    sort_violations,
)

MAX_INT64 = (1 << 63) - 1
_HEX_ID = re.compile(r"[0-9a-fA-F]{1,16}")

# ------------------------------------------------------------------------------ ids


def format_lease_id(lease: int) -> str:
    """16 hex digits, as ``discoverd lease grant`` (and etcdctl) print a lease id."""
    return f"{lease:016x}"


def parse_lease_id(text: str) -> int:
    """A lease id as ``format_lease_id`` writes it (leading zeros optional).

    Raises:
        ClientError: not 1-16 hex digits, or not a positive int64.
    """
    if not _HEX_ID.fullmatch(text):
        raise ClientError(f"a lease id is 1 to 16 hex digits, not {text!r}")
    lease = int(text, 16)
    if not 0 < lease <= MAX_INT64:
        raise ClientError(f"lease id {text!r} is out of range (1..7fffffffffffffff)")
    return lease


def format_member_id(member: int) -> str:
    """Hex without padding, as the member's log and ``discoverd member list`` print it."""
    return f"{member:x}"


# ------------------------------------------------------------------------------ errors

_STATUS: dict[str, int] = {
    # native codes whose gRPC mapping (etcd_json) would be a poor HTTP answer here
    "validation_failed": 422,  # gRPC's FailedPrecondition is 412, which is If-Match's
    "request_too_large": 413,
    "lease_exists": 409,
    "too_many_watches": 429,
    "key_too_large": 413,
    "value_too_large": 413,
    "too_many_streams": 429,
    "too_many_requests": 429,
    # codes of this API only
    "not_found": 404,
    "method_not_allowed": 405,
    "generation_mismatch": 412,
}


def error_status(code: str) -> int:
    """The HTTP status of a native error ``code`` (or one of this API's own)."""
    return _STATUS.get(code) or ej.http_status(ej.grpc_code(code))


def error_response(err: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
    """A native error map (``api_server.error_body``) → (HTTP status, body).

    The body is ``{"error": <code>, "message": ...}`` plus what the error carries: the
    ``violations`` of a refused registry write, the ``leader`` (hex) a member named.
    """
    code = str(err.get("code") or "unknown")
    body: dict[str, Any] = {"error": code, "message": str(err.get("message") or code)}
    if "violations" in err:
        body["violations"] = [dict(v) for v in err["violations"]]
    leader = err.get("leader")
    if isinstance(leader, int) and leader:
        body["leader"] = format_member_id(leader)
    for name in ("expected", "generation", "retry_after"):
        if name in err:
            body[name] = err[name]
    return error_status(code), body


# ------------------------------------------------------------------------------ JSON in


def parse_object(body: bytes, what: str) -> dict[str, Any]:
    """``body`` as one strict JSON object (``registry_codec.parse_json``'s rules: UTF-8, no
    ``NaN``, no duplicate keys, bounded depth — the rules stored values must meet anyway).

    Raises:
        ClientError: empty, not strict JSON, or not an object.
    """
    if not body.strip():
        raise ClientError(f"{what} is missing: send a JSON object")
    try:
        value = parse_json(body)
    except JsonProblem as e:
        raise ClientError(f"{what} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ClientError(f"{what} must be a JSON object, got {json_type(value)}")
    result: dict[str, Any] = value
    return result


def parse_document(body: bytes, what: str = "the document") -> bytes:
    """The value to store for a config document or schema: the request body itself,
    checked to be one JSON object, without the whitespace around it. Stored verbatim (as
    the SDK stores JSON text), so history keeps the writer's formatting."""
    parse_object(body, what)
    return body.strip()


def _one(query: Mapping[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise ClientError(f"query parameter {name!r} is given {len(values)} times")
    return values[0]


def check_query(query: Mapping[str, list[str]], allowed: Iterable[str]) -> None:
    """Refuse parameters the route does not know: a typo (``?heath=any``) must not be
    silently ignored into a different answer."""
    unknown = sorted(set(query) - set(allowed))
    if unknown:
        raise ClientError(f"unknown query parameter(s): {', '.join(unknown)} "
                          f"(allowed: {', '.join(sorted(allowed)) or 'none'})")


def query_bool(query: Mapping[str, list[str]], name: str) -> bool:
    value = _one(query, name)
    if value is None:
        return False
    if value.lower() in ("", "true", "1"):
        return True
    if value.lower() in ("false", "0"):
        return False
    raise ClientError(f"query parameter {name!r} must be true or false, not {value!r}")


def parse_decimal(text: str) -> int | None:
    """A non-negative int64 written in ASCII decimal digits, else ``None`` (``isdigit``
    alone would let ``"²"`` through to ``int()``, and 5,000 digits past its limit)."""
    if not (0 < len(text) <= 19 and text.isascii() and text.isdigit()):
        return None
    number = int(text)
    return number if number <= MAX_INT64 else None


def query_int(query: Mapping[str, list[str]], name: str, default: int) -> int:
    value = _one(query, name)
    if value is None or value == "":
        return default
    number = parse_decimal(value)
    if number is None:
        raise ClientError(f"query parameter {name!r} must be an integer >= 0, not {value!r}")
    return number


# ------------------------------------------------------------------------------ services


def _service_prefix(service: str | None) -> bytes:
    try:
        return service_prefix(service)
    except ValueError as e:
        raise ClientError(str(e)) from None


def services_range(service: str | None = None) -> dict[str, Any]:
    """The native ``range`` of every instance (of ``service``, or of every service).

    Raises:
        ClientError: ``service`` is not a valid service name.
    """
    prefix = _service_prefix(service)
    return {"key": prefix, "range_end": prefix_end(prefix)}


def decode_instances(kvs: Iterable[Mapping[str, Any]]) -> list[ServiceInstance]:
    """The instances in a range answer's ``kvs``. A malformed record (written before
    validation existed, or by a newer writer) is skipped, as the SDK skips it: one bad
    record must not take discovery down for everybody."""
    out: list[ServiceInstance] = []
    for kv in kvs:
        try:
            out.append(ServiceInstance.from_json(bytes(kv["key"]), bytes(kv["value"])))
        except ValidationError:
            continue
    return out


ANY_HEALTH = "any"
FILTER_PARAMS = ("health", "tag", "meta")


@dataclass(frozen=True, slots=True)
class Filters:
    """What ``?health=&tag=&meta=`` ask for: the SDK's ``discover`` filters."""

    health: frozenset[Health]
    tags: tuple[str, ...] = ()
    meta: tuple[tuple[str, str], ...] = ()

    def apply(self, instances: Iterable[ServiceInstance]) -> list[ServiceInstance]:
        return filter_instances(instances, tags=self.tags, meta=dict(self.meta),
                                health=self.health)


def parse_filters(query: Mapping[str, list[str]], default: Iterable[Health]) -> Filters:
    """``health`` — comma-separated and/or repeated health names, or ``any`` (every
    health); ``default`` when absent. ``tag`` — repeated: an instance must have each.
    ``meta`` — repeated ``key=value``: an instance must have each pair.

    Raises:
        ClientError: an unknown health, or a ``meta`` without ``=``.
    """
    names = [n.strip() for v in query.get("health", []) for n in v.split(",") if n.strip()]
    if not names:
        health = frozenset(default)
    elif ANY_HEALTH in names:
        health = frozenset(Health)
    else:
        try:
            health = frozenset(Health(n) for n in names)
        except ValueError:
            raise ClientError(
                f"health must be {ANY_HEALTH} or a comma-separated list of "
                f"{', '.join(h.value for h in Health)}, not {','.join(names)!r}") from None
    meta: list[tuple[str, str]] = []
    for item in query.get("meta", []):
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise ClientError(f"a meta filter is key=value, not {item!r}")
        meta.append((k, v))
    return Filters(health, tuple(query.get("tag", [])), tuple(meta))


def encode_services(instances: Iterable[ServiceInstance], revision: int) -> dict[str, Any]:
    """``GET /v1/services``: every service's instances, services and ids in key order."""
    services: dict[str, list[dict[str, Any]]] = {}
    for inst in sorted(instances, key=lambda i: i.key):
        services.setdefault(inst.service, []).append(inst.to_obj())
    return {"revision": revision, "services": services}


def encode_instances(service: str, instances: Iterable[ServiceInstance], revision: int
                     ) -> dict[str, Any]:
    """``GET /v1/services/{name}``: the matching instances, by id."""
    return {"service": service, "revision": revision,
            "instances": [i.to_obj() for i in sorted(instances, key=lambda i: i.key)]}


REGISTRATION_FIELDS = frozenset({
    "ttl", "lease", "service", "id", "address", "port", "tags", "meta", "weight", "zone",
    "version", "health", "registered_at"})


@dataclass(frozen=True, slots=True)
class Registration:
    """A checked ``PUT /v1/services/{name}``: the record to write, the TTL of its lease,
    and the lease id asked for (0: the member picks one)."""

    instance: ServiceInstance
    ttl: int
    lease: int = 0


def parse_registration(service: str, body: bytes, *, now: float) -> Registration:
    """The registration in a request body: ``ttl`` (seconds, required), ``id`` (required),
    optionally ``lease`` (a hex id to grant) and every ``ServiceInstance`` field;
    ``service``, when given, must be the path's; ``registered_at`` defaults to ``now``.

    Raises:
        ClientError: bad JSON, a bad name or id, an unknown field, a bad ``ttl``/``lease``.
        ValidationError: the instance fields break the record rules (the violations the
            members would report for the same record).
    """
    _service_prefix(service)
    obj = parse_object(body, "the registration")
    unknown = sorted(set(obj) - REGISTRATION_FIELDS)
    if unknown:
        raise ClientError(f"unknown field(s) in the registration: {', '.join(unknown)} "
                          f"(allowed: {', '.join(sorted(REGISTRATION_FIELDS))})")
    ttl = obj.pop("ttl", None)
    if type(ttl) is not int or ttl < 1:
        raise ClientError(f"field 'ttl' is required: the lease TTL in whole seconds (>= 1), "
                          f"got {json.dumps(ttl)}")
    lease_text = obj.pop("lease", None)
    if lease_text is not None and not isinstance(lease_text, str):
        raise ClientError(f"field 'lease' must be a hex string, got {json_type(lease_text)}")
    lease = parse_lease_id(lease_text) if lease_text is not None else 0
    instance_id = obj.get("id")
    if not isinstance(instance_id, str):
        raise ClientError("field 'id' is required: the instance id (a string)")
    try:
        key = service_key(service, instance_id)
    except ValueError as e:
        raise ClientError(str(e)) from None
    obj.setdefault("service", service)
    if obj.get("registered_at") is None:
        obj["registered_at"] = now
    problems = instance_violations(key, obj)
    if problems:
        raise ValidationError(violations=sort_violations(problems))
    instance = ServiceInstance.from_json(key, json.dumps(obj).encode())
    return Registration(instance, ttl, lease)


def encode_registered(instance: ServiceInstance, lease: int, ttl: int, revision: int
                      ) -> dict[str, Any]:
    """``PUT /v1/services/{name}``'s answer: what to keep alive, and where."""
    lease_hex = format_lease_id(lease)
    return {"instance": instance.to_obj(), "lease": lease_hex, "ttl": ttl,
            "revision": revision, "keepalive": f"/v1/leases/{lease_hex}/keepalive"}


# ------------------------------------------------------------------------------ config


def _name_key(make: Any, name: str) -> bytes:
    try:
        key: bytes = make(name)
    except ValueError as e:
        raise ClientError(str(e)) from None
    return key


def document_key(name: str) -> bytes:
    """``/config/<name>``. Raises ``ClientError`` for a bad name."""
    return _name_key(config_key, name)


def schema_key_of(name: str) -> bytes:
    """``/schemas/<name>``. Raises ``ClientError`` for a bad name."""
    return _name_key(schema_key, name)


def _range(key: bytes, range_end: bytes = b"", **extra: Any) -> dict[str, Any]:
    req: dict[str, Any] = {"key": key, **extra}
    if range_end:
        req["range_end"] = range_end
    return req


def _ranges(resp: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [r["response_range"] for r in resp.get("responses", ()) if "response_range" in r]


def _generations(name: str, kvs: Iterable[Mapping[str, Any]]) -> list[tuple[int, int]]:
    """``(generation, mod_revision)`` of ``name``'s history keys among ``kvs`` (the range
    may hold entries of names below ``name``: skipped)."""
    prefix = history_prefix(name)
    return [(g, int(kv["mod_revision"])) for kv in kvs
            if (g := parse_generation(prefix, bytes(kv["key"]))) is not None]


def config_read(name: str) -> dict[str, Any]:
    """One read-only txn reading the document and its history keys, so that the two
    agree (a write between two reads could pair a document with another's generation)."""
    key = document_key(name)
    start, end = history_range(name)
    return {"success": [{"request_range": _range(key)},
                        {"request_range": _range(start, end, keys_only=True)}]}


@dataclass(frozen=True, slots=True)
class ConfigState:
    """A config document as read: ``document`` ``None`` when there is none (``generation``
    then says which generation deleted it, 0 if it never existed); ``revision`` the revision
    that wrote it (or deleted it)."""

    name: str
    document: bytes | None
    generation: int
    revision: int


def decode_config_read(name: str, resp: Mapping[str, Any]) -> ConfigState:
    doc_resp, hist_resp = _ranges(resp)
    generations = _generations(name, hist_resp.get("kvs", ()))
    newest = max(generations, default=(0, 0))
    kvs = doc_resp.get("kvs") or ()
    if not kvs:
        return ConfigState(name, None, newest[0], newest[1])
    kv = kvs[0]
    mod = int(kv["mod_revision"])
    mine = [g for g, rev in generations if rev == mod]
    return ConfigState(name, bytes(kv["value"]), mine[0] if mine else newest[0], mod)


def encode_config(state: ConfigState) -> dict[str, Any]:
    """``GET|PUT /v1/config/{name}``'s answer (``document`` must be set)."""
    assert state.document is not None
    document = decode_document(document_key(state.name), state.document)
    return {"name": state.name, "document": document,
            "generation": state.generation, "revision": state.revision}


def etag(generation: int) -> str:
    return f'"{generation}"'


def parse_if_match(value: str | None) -> int | None:
    """The generation an ``If-Match`` header names: ``3`` or the ETag ``"3"`` (what
    ``GET`` answered); ``0`` means "never written". ``None``: no header.

    Raises:
        ClientError: anything else (``*``, a list, a weak tag): a guard that cannot be
            understood must not turn into an unguarded write.
    """
    if value is None:
        return None
    text = value.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1]
    generation = parse_decimal(text)
    if generation is None:
        raise ClientError(f"If-Match must be one generation (as the ETag of GET "
                          f"/v1/config/{{name}}, e.g. \"3\"), not {value!r}")
    return generation


def config_write(name: str, value: bytes, expected: int | None) -> tuple[str, dict[str, Any]]:
    """The native op writing ``value`` at ``/config/<name>``: a plain ``put``, or with
    ``expected`` a ``txn`` that puts only if the document is still at that generation
    (0: has never been written), and otherwise reads the history keys to say where it is.
    The compare is on history *keys*, which cannot be rewritten by clients and are never
    reused, so no extra counter is needed (the SDK's ``expect_generation`` rule).
    """
    key = document_key(name)
    if expected is None:
        return "put", {"key": key, "value": value}
    start, end = history_range(name)
    if expected == 0:
        compare = [{"key": start, "range_end": end, "target": "VERSION", "result": "EQUAL",
                    "version": 0}]
    else:
        compare = [
            {"key": history_key(name, expected), "target": "VERSION", "result": "GREATER",
             "version": 0},
            {"key": history_key(name, expected + 1), "target": "VERSION", "result": "EQUAL",
             "version": 0},
        ]
    return "txn", {"compare": compare,
                   "success": [{"request_put": {"key": key, "value": value}}],
                   "failure": [{"request_range": _range(start, end, keys_only=True)}]}


def decode_conflict(name: str, resp: Mapping[str, Any]) -> int:
    """The generation a failed guarded write found (its failure branch's history read)."""
    (hist,) = _ranges(resp)
    return max((g for g, _ in _generations(name, hist.get("kvs", ()))), default=0)


def generation_read(name: str, revision: int) -> dict[str, Any]:
    """The native ``range`` finding the history entry an unguarded put made at
    ``revision`` (entries are written in the document's revision and never changed)."""
    document_key(name)
    start, end = history_range(name)
    return _range(start, end, keys_only=True, min_mod_revision=revision,
                  max_mod_revision=revision)


def decode_generation(name: str, resp: Mapping[str, Any], revision: int) -> int:
    """The generation written at ``revision``; 0 if its entry is gone already (50 newer
    generations were written meanwhile)."""
    return next((g for g, rev in _generations(name, resp.get("kvs", ())) if rev == revision),
                0)


def config_list() -> dict[str, Any]:
    """One read-only txn reading every document (keys only) and every history key."""
    return {"success": [
        {"request_range": _range(CONFIG_PREFIX, prefix_end(CONFIG_PREFIX), keys_only=True)},
        {"request_range": _range(CONFIG_HISTORY_PREFIX, prefix_end(CONFIG_HISTORY_PREFIX),
                                 keys_only=True)}]}


def decode_config_list(resp: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``[{"name", "generation", "revision"}]`` by name: the generation of each document
    is the history key of its name written in the document's revision."""
    docs, hist = _ranges(resp)
    by_revision: dict[int, list[bytes]] = {}
    for kv in hist.get("kvs", ()):
        by_revision.setdefault(int(kv["mod_revision"]), []).append(bytes(kv["key"]))
    out: list[dict[str, Any]] = []
    for kv in docs.get("kvs", ()):
        try:
            name = bytes(kv["key"])[len(CONFIG_PREFIX):].decode("utf-8")
            prefix = history_prefix(name)
        except (UnicodeDecodeError, ValueError):
            continue  # not a name the registry accepts: written before validation existed
        mod = int(kv["mod_revision"])
        generation = next((g for key in by_revision.get(mod, ())
                           if (g := parse_generation(prefix, key)) is not None), 0)
        out.append({"name": name, "generation": generation, "revision": mod})
    return out


def encode_schema(name: str, value: bytes, revision: int) -> dict[str, Any]:
    """Raises ``ValidationError`` if the stored value is not a JSON object (written before
    the members validated schemas): an answer, never a crash."""
    return {"name": name, "schema": decode_document(schema_key_of(name), value),
            "revision": revision}


def encode_status(status: Mapping[str, Any], members: Mapping[str, Any]) -> dict[str, Any]:
    """``GET /v1/status``: this member, the leader it knows, and the membership (native
    ``status`` and ``member_list`` answers). Only this member's own role is known here;
    the others are the leader, a voter or a learner as the membership says."""
    header = status["header"]
    leader = int(status.get("leader") or 0)
    return {
        "member": {"id": format_member_id(int(header["member_id"])), "name": status["name"],
                   "role": status["role"], "version": status["version"]},
        "leader": format_member_id(leader) if leader else None,
        "cluster_id": format_member_id(int(header["cluster_id"])),
        "raft_term": int(status["raft_term"]),
        "revision": int(header["revision"]),
        "members": [{"id": format_member_id(int(m["id"])), "name": m["name"],
                     "peer_urls": list(m.get("peer_urls", ())),
                     "client_urls": list(m.get("client_urls", ())),
                     "is_learner": bool(m["is_learner"]), "is_leader": int(m["id"]) == leader}
                    for m in members.get("members", ())],
    }


__all__ = [
    "ANY_HEALTH",
    "FILTER_PARAMS",
    "REGISTRATION_FIELDS",
    "ConfigState",
    "Filters",
    "Registration",
    "check_query",
    "config_list",
    "config_read",
    "config_write",
    "decode_config_list",
    "decode_config_read",
    "decode_conflict",
    "decode_generation",
    "decode_instances",
    "document_key",
    "encode_config",
    "encode_instances",
    "encode_registered",
    "encode_schema",
    "encode_services",
    "encode_status",
    "error_response",
    "error_status",
    "etag",
    "format_lease_id",
    "format_member_id",
    "generation_read",
    "parse_decimal",
    "parse_document",
    "parse_filters",
    "parse_if_match",
    "parse_lease_id",
    "parse_object",
    "parse_registration",
    "query_bool",
    "query_int",
    "schema_key_of",
    "services_range",
]
