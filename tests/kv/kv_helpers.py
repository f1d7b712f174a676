"""Small helpers shared by the kv tests (etcdctl's spellings of common requests)."""

from __future__ import annotations

from discoverd.kv import (
    DeleteRangeRequest,
    KeyValue,
    MvccStore,
    PutRequest,
    RangeRequest,
)


def prefix_end(prefix: bytes) -> bytes:
    """etcd's ``GetPrefixRangeEnd``: the smallest key after every key starting with prefix."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\x00"  # every byte was 0xff: no upper bound


def put(store: MvccStore, key: bytes, value: bytes, lease: int = 0) -> int:
    response, _ = store.put(PutRequest(key=key, value=value, lease=lease))
    return response.header_revision


def delete(store: MvccStore, key: bytes, range_end: bytes = b"") -> int:
    response, _ = store.delete_range(DeleteRangeRequest(key=key, range_end=range_end))
    return response.deleted


def get(store: MvccStore, key: bytes, **options: object) -> list[tuple[bytes, bytes]]:
    response = store.range(RangeRequest(key, **options))  # type: ignore[arg-type]
    return [(kv.key, kv.value) for kv in response.kvs]


def one(store: MvccStore, key: bytes, revision: int = 0) -> KeyValue | None:
    kvs = store.range(RangeRequest(key, revision=revision)).kvs
    return kvs[0] if kvs else None
