"""Lease and watch requests ⇄ the plain maps of the native protocol (docs/protocol.md).

As in ``kv_codec``, every field is checked (type, range) and a bad one raises
``ClientError`` naming it, before anything is proposed; lease commands are decoded again
when their entry is applied, by the same functions, on every member alike.
"""

from __future__ import annotations

from typing import Any

from discoverd.errors import ClientError
from discoverd.kv.revision import Event, EventType
from discoverd.kv.watch import WatchFilter, WatchRequest
from discoverd.wire.kv_codec import encode_kv

MAX_INT64 = (1 << 63) - 1


def _int(req: dict[str, Any], name: str, default: int | None = None, *, low: int = 0) -> int:
    value = req.get(name)
    if value is None:
        if default is None:
            raise ClientError(f"field {name!r} is required")
        return default
    if type(value) is not int:
        raise ClientError(f"field {name!r} must be int, got {type(value).__name__}")
    if not low <= value <= MAX_INT64:
        raise ClientError(f"field {name!r} must be in {low}..{MAX_INT64}")
    return value


def _bool(req: dict[str, Any], name: str) -> bool:
    value = req.get(name)
    if value is None:
        return False
    if type(value) is not bool:
        raise ClientError(f"field {name!r} must be bool, got {type(value).__name__}")
    return value


def _bytes(req: dict[str, Any], name: str) -> bytes:
    value = req.get(name)
    if value is None:
        return b""
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    raise ClientError(f"field {name!r} must be bytes, got {type(value).__name__}")


# ----------------------------------------------------------------------------- leases


def decode_lease_grant(req: dict[str, Any]) -> tuple[int, int]:
    """``(lease id, ttl)``; id 0 means "the member picks one". The lease id travels as
    ``lease``: a request's ``id`` is its frame id."""
    ttl = req.get("ttl")
    if type(ttl) is not int:
        raise ClientError("field 'ttl' must be an int (seconds)")
    return _int(req, "lease", 0), ttl


def decode_lease_id(req: dict[str, Any]) -> int:
    """Any int64: a lease id that cannot exist (0, negative) is simply not found, as in
    etcd (``lease_not_found``, keep-alive TTL 0, time-to-live -1)."""
    return _int(req, "lease", low=-MAX_INT64 - 1)


def decode_checkpoints(req: dict[str, Any]) -> list[tuple[int, int]]:
    items = req.get("leases")
    if not isinstance(items, list):
        raise ClientError("field 'leases' must be a list")
    out: list[tuple[int, int]] = []
    for item in items:
        if (not isinstance(item, list) or len(item) != 2
                or not all(type(v) is int and v >= 0 for v in item)):
            raise ClientError("a checkpoint is [lease id, remaining ms]")
        out.append((item[0], item[1]))
    return out


def decode_lease_ids(req: dict[str, Any]) -> list[int]:
    ids = req.get("ids")
    if not isinstance(ids, list) or not all(type(v) is int and v > 0 for v in ids):
        raise ClientError("field 'ids' must be a list of lease ids")
    return ids


# ----------------------------------------------------------------------------- watches


def decode_watch(req: dict[str, Any]) -> WatchRequest:
    key = _bytes(req, "key")
    if not key:
        raise ClientError("etcdserver: key is not provided")
    filters_raw = req.get("filters") or []
    if not isinstance(filters_raw, list):
        raise ClientError("field 'filters' must be a list")
    filters: set[WatchFilter] = set()
    for f in filters_raw:
        name = f.upper() if isinstance(f, str) else f
        try:
            filters.add(WatchFilter[name] if isinstance(name, str) else list(WatchFilter)[name])
        except (KeyError, IndexError, TypeError):
            raise ClientError(f"unknown watch filter {f!r} (NOPUT or NODELETE)") from None
    return WatchRequest(
        key=key,
        range_end=_bytes(req, "range_end"),
        start_revision=_int(req, "start_revision", 0),
        prev_kv=_bool(req, "prev_kv"),
        filters=frozenset(filters),
        progress_notify=_bool(req, "progress_notify"),
    )


def encode_event(event: Event) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": "PUT" if event.type is EventType.PUT else "DELETE",
        "kv": encode_kv(event.kv),
    }
    if event.prev_kv is not None:
        out["prev_kv"] = encode_kv(event.prev_kv)
    return out
