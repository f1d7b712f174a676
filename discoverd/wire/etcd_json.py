"""etcd v3's grpc-gateway JSON ⇄ the native protocol's maps (docs/http.md). Pure: no I/O.

The gateway is a translation layer: a JSON body becomes the very map a native client would
send, the member's op handler judges it, and the answer map becomes etcd's JSON. So this
module only translates *encodings* — base64 bytes, int64 as strings, enum names, proto vs.
lowerCamelCase field names, omitted defaults — and leaves every semantic check (empty key,
limits, leases, registry rules) to the handlers, which is what keeps both paths identical.

What it does check is what the native maps cannot express: a JSON type that is not the
field's (``"limit": true``), base64 that is not base64, an enum name that does not exist.
Those are refused here with ``ClientError`` naming the field, before anything reaches a
handler, as etcd's gateway refuses them before they reach etcd's gRPC server.

Unknown input fields are ignored (etcd 3.6 sets ``DiscardUnknown``; 3.4's jsonpb does the same
for these messages); ``null`` means "not set". Output follows etcd 3.4's marshaller: proto
field names, fields in proto field-number order, zero values left out, compact separators and
Go's HTML-safe string escaping, so answers can be compared with etcd's byte for byte.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from discoverd.errors import ClientError
from discoverd.kv.requests import CompareResult, CompareTarget, SortOrder, SortTarget
from discoverd.kv.watch import WatchFilter

ETCD_SERVER_VERSION = "3.4.0"
"""What ``/version`` and ``/v3/maintenance/status`` report: the etcd API level discoverd
speaks. Clients pick their API prefix from it (etcd3gw: ≥ 3.4 → ``/v3/``)."""
ETCD_CLUSTER_VERSION = "3.4.0"

MAX_JSON_DEPTH = 64
"""Objects and arrays nested deeper than this are refused: the decoders below and the kv
code after them recurse once per nested txn, and a request must never reach a recursion
limit inside a member. 64 levels still allow ~30 nested txns."""

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_INT_STRING = re.compile(r"\s*[-+]?[0-9]+\s*")


# ----------------------------------------------------------------------------- JSON text


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_JSON_DEPTH:
            return deepest
        stack.extend((child, level + 1) for child in children)
    return deepest


def parse_json_stream(body: bytes) -> list[Any]:
    """Every JSON value in ``body``, in order (the gateway decodes a stream's request body as
    a sequence: ``{"create_request":…}{"create_request":…}``). An empty body is no values.

    Raises:
        ClientError: not UTF-8, not JSON, ``NaN``/``Infinity``, or nested too deeply.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ClientError(f"request body is not UTF-8: {e.reason} at byte {e.start}") from None
    decoder = json.JSONDecoder(parse_constant=_reject_constant)
    values: list[Any] = []
    pos, end = 0, len(text)
    try:
        while True:
            while pos < end and text[pos] in " \t\r\n":
                pos += 1
            if pos == end:
                break
            value, pos = decoder.raw_decode(text, pos)
            values.append(value)
    except RecursionError:
        raise ClientError("invalid JSON: nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, or an integer too long to convert
        raise ClientError(f"invalid JSON: {e}") from None
    for value in values:
        if _depth(value) > MAX_JSON_DEPTH:
            raise ClientError(f"invalid JSON: nested deeper than {MAX_JSON_DEPTH} levels")
    return values


def parse_json_body(body: bytes) -> dict[str, Any]:
    """The one JSON object of a unary request; an empty body or ``null`` is ``{}`` (as in
    etcd, where it then fails the op's own checks, e.g. "key is not provided").

    Raises:
        ClientError: not exactly one JSON value, or not an object.
    """
    values = parse_json_stream(body)
    if len(values) > 1:
        raise ClientError("invalid JSON: more than one value in the request body")
    return as_object(values[0] if values else None, "request body")


def as_object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ClientError(f"{what} must be a JSON object, got {_json_type(value)}")
    return value


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def dumps(value: Any) -> bytes:
    """JSON as Go's ``encoding/json`` writes it: compact, UTF-8, ``<``, ``>``, ``&``, U+2028
    and U+2029 escaped; a lone surrogate (possible in an echoed error message) becomes
    U+FFFD, as Go writes invalid UTF-8."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    text = (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))
    return _LONE_SURROGATE.sub("\ufffd", text).encode("utf-8")


# ----------------------------------------------------------------------------- scalars in


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _int64(value: Any, name: str) -> int:
    """A JSON number or a decimal string (etcd writes int64s as strings and accepts both)."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _INT_STRING.fullmatch(value):
        number = int(value)
    else:
        raise ClientError(f"field {name!r} must be an integer (a number or a decimal "
                          f"string), got {_json_type(value)} {_short(value)}")
    if not _INT64_MIN <= number <= _INT64_MAX:
        raise ClientError(f"field {name!r} is out of the int64 range")
    return number


def _bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ClientError(f"field {name!r} must be true or false, got {_json_type(value)}")
    return value


def _b64(value: Any, name: str) -> bytes:
    """Standard base64 with padding, as etcd's gateway expects for ``bytes`` fields."""
    if not isinstance(value, str):
        raise ClientError(f"field {name!r} must be a base64 string, got {_json_type(value)}")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        raise ClientError(f"field {name!r} is not valid base64: {_short(value)}") from None


def _enum(value: Any, name: str, cls: type[enum.IntEnum]) -> str:
    """An enum given by its name or its proto number (etcd3gw sends numbers); the native
    map carries the name."""
    if isinstance(value, str) and value in cls.__members__:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        for member in cls:
            if member.value == value:
                return member.name
    choices = "|".join(m.name for m in cls)
    raise ClientError(f"field {name!r} must be one of {choices} (or its number), "
                      f"got {_short(value)}")


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if value is not None else "null"
    return text if len(text) <= 40 else text[:37] + "..."


# ----------------------------------------------------------------------------- messages in

Decode = Callable[[Any, str], Any]


def _camel(proto_name: str) -> str:
    head, *rest = proto_name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


@dataclass(frozen=True)
class _Field:
    """One field of an etcd request message: its proto name (also accepted in
    lowerCamelCase), the native map's name for it, and how to decode its JSON value."""

    proto: str
    native: str
    decode: Decode


def _fields(*specs: tuple[str, Decode] | tuple[str, str, Decode]) -> tuple[_Field, ...]:
    out = []
    for spec in specs:
        if len(spec) == 2:
            out.append(_Field(spec[0], spec[0], spec[1]))
        else:
            out.append(_Field(spec[0], spec[1], spec[2]))
    return tuple(out)


def _enum_of(cls: type[enum.IntEnum]) -> Decode:
    return lambda value, name: _enum(value, name, cls)


def _decode_message(
    obj: Any, fields: tuple[_Field, ...], what: str, *, defaults: Mapping[str, Any] = {},
) -> dict[str, Any]:
    """A JSON object → the native map: only fields that are set, plus ``defaults`` for those
    the native decoder insists on (``key``: so an absent key reaches the handler as empty
    and is refused there with etcd's own "key is not provided")."""
    src = as_object(obj, what)
    out = dict(defaults)
    for f in fields:
        value = src.get(f.proto)
        if value is None:
            value = src.get(_camel(f.proto))
        if value is not None:
            out[f.native] = f.decode(value, f.proto)
    return out


RANGE_FIELDS = _fields(
    ("key", _b64), ("range_end", _b64), ("limit", _int64), ("revision", _int64),
    ("sort_order", _enum_of(SortOrder)), ("sort_target", _enum_of(SortTarget)),
    ("serializable", _bool), ("keys_only", _bool), ("count_only", _bool),
    ("min_mod_revision", _int64), ("max_mod_revision", _int64),
    ("min_create_revision", _int64), ("max_create_revision", _int64),
)
PUT_FIELDS = _fields(
    ("key", _b64), ("value", _b64), ("lease", _int64), ("prev_kv", _bool),
    ("ignore_value", _bool), ("ignore_lease", _bool),
)
DELETE_RANGE_FIELDS = _fields(("key", _b64), ("range_end", _b64), ("prev_kv", _bool))
COMPACTION_FIELDS = _fields(("revision", _int64), ("physical", _bool))
COMPARE_FIELDS = _fields(
    ("result", _enum_of(CompareResult)), ("target", _enum_of(CompareTarget)),
    ("key", _b64), ("range_end", _b64), ("version", _int64),
    ("create_revision", _int64), ("mod_revision", _int64), ("value", _b64),
    ("lease", _int64),
)
LEASE_GRANT_FIELDS = _fields(("TTL", "ttl", _int64), ("ID", "lease", _int64))
LEASE_ID_FIELDS = _fields(("ID", "lease", _int64))
LEASE_TIMETOLIVE_FIELDS = _fields(("ID", "lease", _int64), ("keys", _bool))
WATCH_CREATE_FIELDS = _fields(
    ("key", _b64), ("range_end", _b64), ("start_revision", _int64),
    ("progress_notify", _bool), ("prev_kv", _bool),
)
_KEY = {"key": b""}


def decode_range(obj: Any) -> dict[str, Any]:
    return _decode_message(obj, RANGE_FIELDS, "a range request", defaults=_KEY)


def decode_put(obj: Any) -> dict[str, Any]:
    return _decode_message(obj, PUT_FIELDS, "a put request", defaults=_KEY)


def decode_delete_range(obj: Any) -> dict[str, Any]:
    return _decode_message(obj, DELETE_RANGE_FIELDS, "a delete request", defaults=_KEY)


def decode_compaction(obj: Any) -> dict[str, Any]:
    return _decode_message(obj, COMPACTION_FIELDS, "a compaction request",
                           defaults={"revision": 0})


def _list(value: Any, name: str) -> list[Any]:
    if not isinstance(value, list):
        raise ClientError(f"field {name!r} must be an array, got {_json_type(value)}")
    return value


_REQUEST_OPS: dict[str, Callable[[Any], dict[str, Any]]] = {}


def _decode_request_op(obj: Any) -> dict[str, Any]:
    """A ``RequestOp`` (a proto oneof): exactly one of its ``request_*`` fields."""
    src = as_object(obj, "a txn operation")
    found: list[tuple[str, Any]] = []
    for proto, decode in _REQUEST_OPS.items():
        value = src.get(proto)
        if value is None:
            value = src.get(_camel(proto))
        if value is not None:
            found.append((proto, decode(value)))
    if len(found) > 1:
        raise ClientError("a txn operation must set only one of "
                          + ", ".join(name for name, _ in found))
    return dict(found)  # {} is refused by the handler ("exactly one request_* field")


def decode_txn(obj: Any) -> dict[str, Any]:
    src = as_object(obj, "a txn request")
    out: dict[str, Any] = {}
    for name, decode in (("compare", _decode_compare), ("success", _decode_request_op),
                         ("failure", _decode_request_op)):
        value = src.get(name)
        if value is not None:
            out[name] = [decode(item) for item in _list(value, name)]
    return out


def _decode_compare(obj: Any) -> dict[str, Any]:
    return _decode_message(obj, COMPARE_FIELDS, "a compare", defaults=_KEY)


_REQUEST_OPS.update({
    "request_range": decode_range,
    "request_put": decode_put,
    "request_delete_range": decode_delete_range,
    "request_txn": decode_txn,
})


def decode_lease_grant(obj: Any) -> dict[str, Any]:
    """``{TTL, ID}`` → ``{ttl, lease}``; an absent TTL is 0 (raised to the minimum, as etcd)."""
    return _decode_message(obj, LEASE_GRANT_FIELDS, "a lease grant", defaults={"ttl": 0})


def decode_lease_id(obj: Any) -> dict[str, Any]:
    """``{ID}`` (revoke, keep-alive) → ``{lease}``; an absent ID is 0, which is never a lease."""
    return _decode_message(obj, LEASE_ID_FIELDS, "a lease request", defaults={"lease": 0})


def decode_lease_timetolive(obj: Any) -> dict[str, Any]:
    return _decode_message(obj, LEASE_TIMETOLIVE_FIELDS, "a lease request",
                           defaults={"lease": 0})


# -- watch requests


@dataclass(frozen=True)
class WatchCreate:
    """``create_request``: ``native`` is the native watch request; ``watch_id`` the id the
    client asked for (0: the gateway numbers its watches 0, 1, … per stream, as etcd)."""

    native: dict[str, Any]
    watch_id: int = 0


@dataclass(frozen=True)
class WatchCancel:
    watch_id: int


@dataclass(frozen=True)
class WatchProgress:
    pass


WatchRequest = WatchCreate | WatchCancel | WatchProgress


_FILTERS = ("NOPUT", "NODELETE")  # proto numbers 0 and 1
assert set(_FILTERS) == {f.name for f in WatchFilter}


def _filters(value: Any, name: str) -> list[str]:
    out = []
    for item in _list(value, name):
        if isinstance(item, str) and item in _FILTERS:
            out.append(item)
        elif isinstance(item, int) and not isinstance(item, bool) and 0 <= item < 2:
            out.append(_FILTERS[item])
        else:
            raise ClientError(f"field {name!r} must list NOPUT or NODELETE (or 0, 1), "
                              f"got {_short(item)}")
    return out


def decode_watch_request(obj: Any) -> WatchRequest:
    """One ``WatchRequest``: exactly one of ``create_request``, ``cancel_request``,
    ``progress_request``."""
    src = as_object(obj, "a watch request")
    kinds = {}
    for proto in ("create_request", "cancel_request", "progress_request"):
        value = src.get(proto)
        if value is None:
            value = src.get(_camel(proto))
        if value is not None:
            kinds[proto] = value
    if len(kinds) != 1:
        raise ClientError("a watch request must set exactly one of create_request, "
                          "cancel_request, progress_request")
    (kind, body), = kinds.items()
    if kind == "cancel_request":
        body = as_object(body, "cancel_request")
        raw = body.get("watch_id", body.get("watchId"))
        return WatchCancel(_int64(raw, "watch_id") if raw is not None else 0)
    if kind == "progress_request":
        as_object(body, "progress_request")
        return WatchProgress()
    native = _decode_message(body, WATCH_CREATE_FIELDS, "create_request")
    src = as_object(body, "create_request")
    filters = src.get("filters")
    if filters is not None:
        native["filters"] = _filters(filters, "filters")
    raw_id = src.get("watch_id", src.get("watchId"))
    watch_id = _int64(raw_id, "watch_id") if raw_id is not None else 0
    if watch_id < 0:
        raise ClientError("field 'watch_id' must not be negative")
    fragment = src.get("fragment")
    if fragment is not None:
        _bool(fragment, "fragment")  # accepted; events are never fragmented
    return WatchCreate(native, watch_id)


# ----------------------------------------------------------------------------- answers out


def _i64(value: Any) -> str:
    return str(int(value))


def _set(out: dict[str, Any], name: str, value: Any) -> None:
    """``omitempty``: proto3 JSON leaves zero values out."""
    if value not in (None, 0, False, "", b"", [], {}):
        out[name] = value


def encode_header(h: Mapping[str, Any], *, revision: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("cluster_id", "member_id", "revision", "raft_term"):
        if name == "revision" and not revision:
            continue
        if h.get(name):
            out[name] = _i64(h[name])
    return out


def b64(data: bytes) -> str:
    return base64.b64encode(bytes(data)).decode("ascii")


def encode_kv(kv: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    _set(out, "key", b64(kv["key"]) if kv.get("key") else "")
    for name in ("create_revision", "mod_revision", "version"):
        _set(out, name, _i64(kv[name]) if kv.get(name) else None)
    _set(out, "value", b64(kv["value"]) if kv.get("value") else "")
    _set(out, "lease", _i64(kv["lease"]) if kv.get("lease") else None)
    return out


def _kvs(items: Any) -> list[dict[str, Any]]:
    return [encode_kv(kv) for kv in items or ()]


def encode_range(resp: Mapping[str, Any]) -> dict[str, Any]:
    out = {"header": encode_header(resp.get("header", {}))}
    _set(out, "kvs", _kvs(resp.get("kvs")))
    _set(out, "more", bool(resp.get("more")))
    _set(out, "count", _i64(resp["count"]) if resp.get("count") else None)
    return out


def encode_put(resp: Mapping[str, Any]) -> dict[str, Any]:
    out = {"header": encode_header(resp.get("header", {}))}
    if resp.get("prev_kv"):
        out["prev_kv"] = encode_kv(resp["prev_kv"])
    return out


def encode_delete_range(resp: Mapping[str, Any]) -> dict[str, Any]:
    out = {"header": encode_header(resp.get("header", {}))}
    _set(out, "deleted", _i64(resp["deleted"]) if resp.get("deleted") else None)
    _set(out, "prev_kvs", _kvs(resp.get("prev_kvs")))
    return out


def encode_txn(resp: Mapping[str, Any], *, nested: bool = False) -> dict[str, Any]:
    """A txn answer. etcd fills only ``revision`` in a sub-response's header, and nothing in
    a nested txn's own header (it prints ``"header":{}``); we do the same."""
    out = {"header": {} if nested else encode_header(resp.get("header", {}))}
    _set(out, "succeeded", bool(resp.get("succeeded")))
    _set(out, "responses", [_encode_response_op(r) for r in resp.get("responses") or ()])
    return out


def _encode_response_op(op: Mapping[str, Any]) -> dict[str, Any]:
    for name, body in op.items():
        if name == "response_txn":
            return {name: encode_txn(body, nested=True)}
        encoder = _SUB_RESPONSES.get(name)
        if encoder is not None:
            return {name: encoder(body)}
    return {}


_SUB_RESPONSES: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "response_range": encode_range,
    "response_put": encode_put,
    "response_delete_range": encode_delete_range,
}


def encode_header_only(resp: Mapping[str, Any]) -> dict[str, Any]:
    """Compaction and lease revoke answers: just the header."""
    return {"header": encode_header(resp.get("header", {}))}


def encode_lease_grant(resp: Mapping[str, Any]) -> dict[str, Any]:
    out = {"header": encode_header(resp.get("header", {}))}
    _set(out, "ID", _i64(resp["id"]) if resp.get("id") else None)
    _set(out, "TTL", _i64(resp["ttl"]) if resp.get("ttl") else None)
    return out


encode_lease_keepalive = encode_lease_grant
"""Same fields: ``ID``, ``TTL`` (absent when 0, i.e. the lease is gone — etcd3gw's
``refresh()`` reads that as -1)."""


def encode_lease_timetolive(resp: Mapping[str, Any]) -> dict[str, Any]:
    out = encode_lease_grant(resp)
    _set(out, "grantedTTL", _i64(resp["granted_ttl"]) if resp.get("granted_ttl") else None)
    _set(out, "keys", [b64(k) for k in resp.get("keys") or ()])
    return out


def encode_lease_leases(resp: Mapping[str, Any]) -> dict[str, Any]:
    out = {"header": encode_header(resp.get("header", {}))}
    _set(out, "leases", [{"ID": _i64(item["id"])} for item in resp.get("leases") or ()])
    return out


def encode_status(resp: Mapping[str, Any]) -> dict[str, Any]:
    """``StatusResponse`` (camelCase JSON names, as in etcd's proto). ``version`` is the etcd
    API level; ``dbSizeInUse`` equals ``dbSize`` (the store has no free pages)."""
    out: dict[str, Any] = {"header": encode_header(resp.get("header", {})),
                           "version": ETCD_SERVER_VERSION}
    db_size = resp.get("db_size") or 0
    _set(out, "dbSize", _i64(db_size) if db_size else None)
    _set(out, "leader", _i64(resp["leader"]) if resp.get("leader") else None)
    _set(out, "raftIndex", _i64(resp["raft_index"]) if resp.get("raft_index") else None)
    _set(out, "raftTerm", _i64(resp["raft_term"]) if resp.get("raft_term") else None)
    applied = resp.get("raft_applied_index")
    _set(out, "raftAppliedIndex", _i64(applied) if applied else None)
    _set(out, "errors", list(resp.get("errors") or ()))
    _set(out, "dbSizeInUse", _i64(db_size) if db_size else None)
    _set(out, "isLearner", bool(resp.get("is_learner")))
    return out


def encode_member_list(resp: Mapping[str, Any]) -> dict[str, Any]:
    """``MemberListResponse``; its header carries no revision in etcd (the cluster API is
    not part of the keyspace)."""
    out = {"header": encode_header(resp.get("header", {}), revision=False)}
    members = []
    for m in resp.get("members") or ():
        one: dict[str, Any] = {}
        _set(one, "ID", _i64(m["id"]) if m.get("id") else None)
        _set(one, "name", m.get("name", ""))
        _set(one, "peerURLs", list(m.get("peer_urls") or ()))
        _set(one, "clientURLs", list(m.get("client_urls") or ()))
        _set(one, "isLearner", bool(m.get("is_learner")))
        members.append(one)
    _set(out, "members", members)
    return out


def encode_event(event: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if event.get("type") == "DELETE":
        out["type"] = "DELETE"  # PUT is enum value 0: left out
    out["kv"] = encode_kv(event.get("kv") or {})
    if event.get("prev_kv"):
        out["prev_kv"] = encode_kv(event["prev_kv"])
    return out


def encode_watch_response(frame: Mapping[str, Any], watch_id: int) -> dict[str, Any]:
    """One native watch frame → etcd's ``{"result": WatchResponse}``, with the stream's own
    ``watch_id`` (the gateway numbers watches per HTTP stream, as etcd does per gRPC
    stream)."""
    result = {"header": encode_header(frame.get("header", {}))}
    _set(result, "watch_id", _i64(watch_id) if watch_id else None)
    _set(result, "created", bool(frame.get("created")))
    _set(result, "canceled", bool(frame.get("canceled")))
    compact = frame.get("compact_revision")
    _set(result, "compact_revision", _i64(compact) if compact else None)
    _set(result, "cancel_reason", frame.get("cancel_reason", ""))
    _set(result, "events", [encode_event(e) for e in frame.get("events") or ()])
    return {"result": result}


# ----------------------------------------------------------------------------- errors


class GrpcCode(enum.IntEnum):
    OK = 0
    CANCELED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


_HTTP_STATUS = {
    # grpc-gateway v1.9's HTTPStatusFromCode, the version etcd 3.4 ships: etcd3gw maps 412
    # to PreconditionFailedError, so FailedPrecondition stays 412 (not v2's 400).
    GrpcCode.OK: 200, GrpcCode.CANCELED: 408, GrpcCode.UNKNOWN: 500,
    GrpcCode.INVALID_ARGUMENT: 400, GrpcCode.DEADLINE_EXCEEDED: 408,
    GrpcCode.NOT_FOUND: 404, GrpcCode.ALREADY_EXISTS: 409,
    GrpcCode.PERMISSION_DENIED: 403, GrpcCode.UNAUTHENTICATED: 401,
    GrpcCode.RESOURCE_EXHAUSTED: 403, GrpcCode.FAILED_PRECONDITION: 412,
    GrpcCode.ABORTED: 409, GrpcCode.OUT_OF_RANGE: 400, GrpcCode.UNIMPLEMENTED: 501,
    GrpcCode.INTERNAL: 500, GrpcCode.UNAVAILABLE: 503, GrpcCode.DATA_LOSS: 500,
}

_G = GrpcCode
_ERRORS: dict[str, tuple[GrpcCode, str | None]] = {
    # native error code → (gRPC code, etcd's own message when it words it differently)
    "invalid_argument": (_G.INVALID_ARGUMENT, None),
    "bad_request": (_G.INVALID_ARGUMENT, None),
    "bad_frame": (_G.INVALID_ARGUMENT, None),
    "empty_key": (_G.INVALID_ARGUMENT, None),
    "key_not_found": (_G.INVALID_ARGUMENT, None),
    "value_provided": (_G.INVALID_ARGUMENT, None),
    "lease_provided": (_G.INVALID_ARGUMENT, None),
    "too_many_ops": (_G.INVALID_ARGUMENT, None),
    "duplicate_key": (_G.INVALID_ARGUMENT, None),
    "request_too_large": (_G.INVALID_ARGUMENT, "etcdserver: request is too large"),
    "compacted": (_G.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted"),
    "future_revision": (_G.OUT_OF_RANGE,
                        "etcdserver: mvcc: required revision is a future revision"),
    "lease_not_found": (_G.NOT_FOUND, None),
    "lease_exists": (_G.FAILED_PRECONDITION, None),
    "lease_ttl_too_large": (_G.OUT_OF_RANGE, None),
    "watch_not_found": (_G.INVALID_ARGUMENT, None),
    "too_many_watches": (_G.RESOURCE_EXHAUSTED, None),
    "key_too_large": (_G.INVALID_ARGUMENT, None),
    "value_too_large": (_G.INVALID_ARGUMENT, None),
    "too_many_streams": (_G.RESOURCE_EXHAUSTED, None),
    "too_many_requests": (_G.RESOURCE_EXHAUSTED, "etcdserver: too many requests"),
    "validation_failed": (_G.FAILED_PRECONDITION, None),
    "not_leader": (_G.UNAVAILABLE, None),
    "proposal_dropped": (_G.UNAVAILABLE, None),
    "timeout": (_G.UNAVAILABLE, None),
    "unavailable": (_G.UNAVAILABLE, None),
    "snapshot_unavailable": (_G.UNAVAILABLE, None),
    "no_space": (_G.RESOURCE_EXHAUSTED, None),
    "disk_full": (_G.UNAVAILABLE, None),
    "member_not_found": (_G.NOT_FOUND, None),
    "member_exists": (_G.FAILED_PRECONDITION, None),
    "peer_url_exists": (_G.FAILED_PRECONDITION, None),
    "member_not_learner": (_G.FAILED_PRECONDITION, None),
    "learner_not_ready": (_G.FAILED_PRECONDITION, None),
    "too_many_learners": (_G.FAILED_PRECONDITION, None),
    "not_enough_started": (_G.FAILED_PRECONDITION, None),
    "bad_leader_transferee": (_G.FAILED_PRECONDITION, None),
    "unhealthy_cluster": (_G.UNAVAILABLE, None),
    "conf_change_in_progress": (_G.UNAVAILABLE, None),
    "peer_error": (_G.INTERNAL, None),
    "corrupt": (_G.DATA_LOSS, None),
    # auth (etcd's rpctypes words; 401/403 so HTTP clients can tell them apart)
    "unauthenticated": (_G.UNAUTHENTICATED, None),
    "invalid_auth_token": (_G.UNAUTHENTICATED, "etcdserver: invalid auth token"),
    "auth_failed": (_G.UNAUTHENTICATED,
                    "etcdserver: authentication failed, invalid user ID or password"),
    "permission_denied": (_G.PERMISSION_DENIED, "etcdserver: permission denied"),
    "auth_not_enabled": (_G.FAILED_PRECONDITION, "etcdserver: authentication is not enabled"),
    "auth_old_revision": (_G.INVALID_ARGUMENT, "etcdserver: revision of auth store is old"),
    "user_exists": (_G.FAILED_PRECONDITION, None),
    "user_not_found": (_G.FAILED_PRECONDITION, None),
    "role_exists": (_G.FAILED_PRECONDITION, None),
    "role_not_found": (_G.FAILED_PRECONDITION, None),
    "role_not_granted": (_G.FAILED_PRECONDITION, None),
    "permission_not_granted": (_G.FAILED_PRECONDITION, None),
    "root_user_not_exist": (_G.FAILED_PRECONDITION, None),
    "root_role_not_exist": (_G.FAILED_PRECONDITION, None),
    "user_empty": (_G.INVALID_ARGUMENT, None),
    "role_empty": (_G.INVALID_ARGUMENT, None),
    "invalid_auth_mgmt": (_G.INVALID_ARGUMENT, None),
}


def grpc_code(code: str) -> GrpcCode:
    """The gRPC code etcd would answer with for a native error ``code``."""
    return _ERRORS.get(code, (GrpcCode.UNKNOWN, None))[0]


def http_status(grpc: GrpcCode) -> int:
    return _HTTP_STATUS.get(grpc, 500)


def error_response(err: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
    """A native error map (``{"code", "message", ...}``, ``api_server.error_body``) →
    (HTTP status, etcd's unary error body ``{"error", "message", "code"}``).

    A refused registry write (``validation_failed``) is FailedPrecondition — the store's
    rules for the key were not met, as a failed compare is — and keeps its violations in
    ``details`` (grpc-gateway v1's error body has that field), so a client can act on them
    without parsing the message.
    """
    code = str(err.get("code", "unknown"))
    grpc, wording = _ERRORS.get(code, (GrpcCode.UNKNOWN, None))
    message = wording or str(err.get("message") or code)
    body: dict[str, Any] = {"error": message, "message": message, "code": int(grpc)}
    if code == "validation_failed":
        body["details"] = [{"@type": "discoverd/validation_failed",
                            "violations": list(err.get("violations") or ())}]
    return http_status(grpc), body


_STATUS_TEXT = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
                408: "Request Timeout", 409: "Conflict", 412: "Precondition Failed",
                500: "Internal Server Error", 501: "Not Implemented",
                503: "Service Unavailable"}


def stream_error(err: Mapping[str, Any]) -> dict[str, Any]:
    """An error after a stream's first result (grpc-gateway v1's ``{"error": {...}}``)."""
    status, unary = error_response(err)
    return {"error": {"grpc_code": unary["code"], "http_code": status,
                      "message": unary["message"],
                      "http_status": _STATUS_TEXT.get(status, "Error")}}


def plain_error(grpc: GrpcCode, message: str) -> bytes:
    """An error in etcd's shape that no op produced (unknown path, wrong method)."""
    return dumps({"error": message, "message": message, "code": int(grpc)})
