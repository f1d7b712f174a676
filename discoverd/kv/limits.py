"""Key and value size limits (``--max-key-bytes``, ``--max-value-bytes``), pure.

Checked on the decoded request before anything is proposed or read, so an oversized key or
value costs its sender one error and changes nothing: it never reaches the log, where every
member would have to carry it forever. Every place a key or value can enter is walked —
range ends, compares and the ops of nested txns included — because a limit with a side door
is not a limit.
"""

from __future__ import annotations

from discoverd.errors import KeyTooLarge, ValueTooLarge
from discoverd.kv.requests import (
    Compare,
    DeleteRangeRequest,
    PutRequest,
    RangeRequest,
    RequestOp,
    TxnRequest,
)
from discoverd.kv.watch import WatchRequest

Checked = RangeRequest | PutRequest | DeleteRangeRequest | TxnRequest | WatchRequest


def check_request_sizes(request: object, max_key: int, max_value: int) -> None:
    """Raise ``KeyTooLarge``/``ValueTooLarge`` if any key, range end or value in
    ``request`` is over its limit; other request types (compaction, leases) carry none."""
    if isinstance(request, RangeRequest | DeleteRangeRequest | WatchRequest):
        _key(request.key, max_key, "key")
        _key(request.range_end, max_key, "range end")
    elif isinstance(request, PutRequest):
        _key(request.key, max_key, "key")
        _value(request.value, max_value)
    elif isinstance(request, TxnRequest):
        for cmp in request.compare:
            _compare(cmp, max_key, max_value)
        for op in (*request.success, *request.failure):
            _op(op, max_key, max_value)


def _op(op: RequestOp, max_key: int, max_value: int) -> None:
    inner = op.request
    if inner is not None:
        check_request_sizes(inner, max_key, max_value)


def _compare(cmp: Compare, max_key: int, max_value: int) -> None:
    _key(cmp.key, max_key, "key")
    _key(cmp.range_end, max_key, "range end")
    _value(cmp.value, max_value)


def _key(key: bytes, limit: int, what: str) -> None:
    if len(key) > limit:
        raise KeyTooLarge(f"{what} of {len(key)} bytes exceeds --max-key-bytes {limit}")


def _value(value: bytes, limit: int) -> None:
    if len(value) > limit:
        raise ValueTooLarge(
            f"value of {len(value)} bytes exceeds --max-value-bytes {limit}")
