"""The MVCC key-value store, with etcd v3.4's semantics — pure.

Owns: revisions and versions of keys (``revision``), the key → generations index
(``index``), the store with range/put/delete_range/txn/compact and snapshots, and the write
hooks that may refuse or extend a write before it commits (``store``),
txn checks, compares and op dispatch (``txn``), and the request/response dataclasses with
etcd's field names (``requests``), and the watch hub (``watch``) that routes the ``Event``
lists the writes return to watchers, with bounded buffers and catch-up from history.

May import: the standard library, ``sortedcontainers`` and ``discoverd.errors`` — nothing
else. No clock, no I/O, no threads, no randomness: the store is applied on every member in
Raft log order and must reach the same state from the same entries. Serialization is the
caller's (``to_obj``/``restore`` exchange plain data).

Usage::

    store = MvccStore()
    response, events = store.put(PutRequest(key=b"foo", value=b"bar"))
    store.range(RangeRequest(key=b"foo")).kvs[0].value  # b"bar"
"""

from discoverd.kv.index import KeyIndex, TreeIndex
from discoverd.kv.requests import (
    CompactionRequest,
    CompactionResponse,
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
from discoverd.kv.revision import Event, EventType, KeyValue, Revision
from discoverd.kv.store import DEFAULT_MAX_TXN_OPS, LeaseCheck, MvccStore, WriteHook, WriteView
from discoverd.kv.watch import BatchKind, WatchBatch, WatchFilter, WatchHub, WatchRequest

__all__ = [
    "DEFAULT_MAX_TXN_OPS",
    "BatchKind",
    "CompactionRequest",
    "CompactionResponse",
    "Compare",
    "CompareResult",
    "CompareTarget",
    "DeleteRangeRequest",
    "DeleteRangeResponse",
    "Event",
    "EventType",
    "KeyIndex",
    "KeyValue",
    "LeaseCheck",
    "MvccStore",
    "PutRequest",
    "PutResponse",
    "RangeRequest",
    "RangeResponse",
    "RequestOp",
    "ResponseOp",
    "Revision",
    "SortOrder",
    "SortTarget",
    "TreeIndex",
    "TxnRequest",
    "TxnResponse",
    "WatchBatch",
    "WatchFilter",
    "WatchHub",
    "WatchRequest",
    "WriteHook",
    "WriteView",
]
