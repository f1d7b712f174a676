"""KV requests and responses ⇄ the plain maps of the native protocol (docs/protocol.md).

Decoding validates every field (type, enum name) and raises ``ClientError`` naming the field,
so a member refuses a bad request before proposing it. The same decoder runs again when the
entry is applied, on every member alike, so applying stays deterministic.
"""

from __future__ import annotations

import enum
from typing import Any, TypeVar

from discoverd.errors import ClientError
from discoverd.kv.requests import (
    CompactionRequest,
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    DeleteRangeResponse,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeResponse,
    RequestOp,
    ResponseOp,
    SortOrder,
    SortTarget,
    TxnRequest,
    TxnResponse,
)
from discoverd.kv.revision import KeyValue

E = TypeVar("E", bound=enum.IntEnum)

WRITE_OPS = ("put", "delete_range", "txn", "compact")


def _get(req: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    if name not in req or req[name] is None:
        return default
    value = req[name]
    if kind is bytes and isinstance(value, str):
        return value.encode()
    if kind is bytes and isinstance(value, bytes | bytearray):
        return bytes(value)
    if kind in (int, bool) and type(value) is kind:
        return value
    raise ClientError(f"field {name!r} must be {kind.__name__}, got {type(value).__name__}")


def _enum(req: dict[str, Any], name: str, cls: type[E], default: E) -> E:
    if name not in req or req[name] is None:
        return default
    value = req[name]
    try:
        if isinstance(value, str):
            return cls[value.upper()]
        if type(value) is int:
            return cls(value)
    except (KeyError, ValueError):
        pass
    choices = "|".join(m.name for m in cls)
    raise ClientError(f"field {name!r} must be one of {choices}, got {value!r}")


def _key(req: dict[str, Any]) -> bytes:
    if "key" not in req:
        raise ClientError("missing field 'key'")
    key: bytes = _get(req, "key", bytes, b"")
    return key


def decode_range(req: dict[str, Any]) -> RangeRequest:
    return RangeRequest(
        key=_key(req),
        range_end=_get(req, "range_end", bytes, b""),
        limit=_get(req, "limit", int, 0),
        revision=_get(req, "revision", int, 0),
        sort_order=_enum(req, "sort_order", SortOrder, SortOrder.NONE),
        sort_target=_enum(req, "sort_target", SortTarget, SortTarget.KEY),
        serializable=_get(req, "serializable", bool, False),
        keys_only=_get(req, "keys_only", bool, False),
        count_only=_get(req, "count_only", bool, False),
        min_mod_revision=_get(req, "min_mod_revision", int, 0),
        max_mod_revision=_get(req, "max_mod_revision", int, 0),
        min_create_revision=_get(req, "min_create_revision", int, 0),
        max_create_revision=_get(req, "max_create_revision", int, 0),
    )


def decode_put(req: dict[str, Any]) -> PutRequest:
    return PutRequest(
        key=_key(req),
        value=_get(req, "value", bytes, b""),
        lease=_get(req, "lease", int, 0),
        prev_kv=_get(req, "prev_kv", bool, False),
        ignore_value=_get(req, "ignore_value", bool, False),
        ignore_lease=_get(req, "ignore_lease", bool, False),
    )


def decode_delete_range(req: dict[str, Any]) -> DeleteRangeRequest:
    return DeleteRangeRequest(
        key=_key(req),
        range_end=_get(req, "range_end", bytes, b""),
        prev_kv=_get(req, "prev_kv", bool, False),
    )


def decode_compact(req: dict[str, Any]) -> CompactionRequest:
    if "revision" not in req:
        raise ClientError("missing field 'revision'")
    return CompactionRequest(
        revision=_get(req, "revision", int, 0), physical=_get(req, "physical", bool, False)
    )


def _decode_compare(c: Any) -> Compare:
    if not isinstance(c, dict):
        raise ClientError("each compare must be a map")
    target = _enum(c, "target", CompareTarget, CompareTarget.VERSION)
    return Compare(
        key=_key(c),
        target=target,
        result=_enum(c, "result", CompareResult, CompareResult.EQUAL),
        range_end=_get(c, "range_end", bytes, b""),
        version=_get(c, "version", int, 0),
        create_revision=_get(c, "create_revision", int, 0),
        mod_revision=_get(c, "mod_revision", int, 0),
        value=_get(c, "value", bytes, b""),
        lease=_get(c, "lease", int, 0),
    )


def _decode_op(o: Any) -> RequestOp:
    if not isinstance(o, dict) or len(o) != 1:
        raise ClientError("each txn operation must be a map with exactly one request_* field")
    (kind, body), = o.items()
    if not isinstance(body, dict):
        raise ClientError(f"{kind} must be a map")
    if kind == "request_range":
        return RequestOp(request_range=decode_range(body))
    if kind == "request_put":
        return RequestOp(request_put=decode_put(body))
    if kind == "request_delete_range":
        return RequestOp(request_delete_range=decode_delete_range(body))
    if kind == "request_txn":
        return RequestOp(request_txn=decode_txn(body))
    raise ClientError(f"unknown txn operation {kind!r}")


def _list(req: dict[str, Any], name: str) -> list[Any]:
    value = req.get(name) or []
    if not isinstance(value, list | tuple):
        raise ClientError(f"field {name!r} must be a list")
    return list(value)


def decode_txn(req: dict[str, Any]) -> TxnRequest:
    return TxnRequest(
        compare=tuple(_decode_compare(c) for c in _list(req, "compare")),
        success=tuple(_decode_op(o) for o in _list(req, "success")),
        failure=tuple(_decode_op(o) for o in _list(req, "failure")),
    )


DECODERS = {
    "range": decode_range,
    "put": decode_put,
    "delete_range": decode_delete_range,
    "txn": decode_txn,
    "compact": decode_compact,
}


def decode_request(op: str, req: dict[str, Any]) -> Any:
    decoder = DECODERS.get(op)
    if decoder is None:
        raise ClientError(f"unknown op {op!r}")
    return decoder(req)


# ----------------------------------------------------------------------------- responses


def encode_kv(kv: KeyValue) -> dict[str, Any]:
    return {
        "key": kv.key, "value": kv.value, "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision, "version": kv.version, "lease": kv.lease,
    }


def encode_response(resp: Any) -> dict[str, Any]:
    """A kv response as the protocol's map (without the header, which the server adds)."""
    if isinstance(resp, RangeResponse):
        return {"kvs": [encode_kv(kv) for kv in resp.kvs], "more": resp.more,
                "count": resp.count}
    if isinstance(resp, PutResponse):
        out: dict[str, Any] = {}
        if resp.prev_kv is not None:
            out["prev_kv"] = encode_kv(resp.prev_kv)
        return out
    if isinstance(resp, DeleteRangeResponse):
        return {"deleted": resp.deleted, "prev_kvs": [encode_kv(kv) for kv in resp.prev_kvs]}
    if isinstance(resp, TxnResponse):
        return {"succeeded": resp.succeeded,
                "responses": [_encode_response_op(r) for r in resp.responses]}
    return {}


def _encode_response_op(r: ResponseOp) -> dict[str, Any]:
    for name in ("response_range", "response_put", "response_delete_range", "response_txn"):
        inner = getattr(r, name)
        if inner is not None:
            return {name: {**encode_response(inner),
                           "header": {"revision": inner.header_revision}}}
    return {}
