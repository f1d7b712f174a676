"""Transactions: request checks, compare evaluation, and running the chosen branch.

A txn goes through the same stages as in etcd v3.4, in the same order, so that the same
request fails with the same error:

1. ``check_txn_request`` — shape: op counts (``TooManyOps``), empty keys, put flags; then
   ``check_intervals`` on ``success`` and on ``failure`` (``DuplicateKey``). These look at the
   whole request, both branches and every nested txn, without reading the store (in etcd
   this is the gRPC layer, before Raft).
2. ``compare_to_path`` — evaluates the compares of the top txn and of every nested txn on
   the chosen branches, *all against the state before the txn* (a nested compare does not
   see the writes of the ops before it), giving a ``TxnPath``.
3. The store's pre-checks along the path (``walk_path``): puts with ``ignore_value`` /
   ``ignore_lease`` need an existing key, leases must exist, range revisions must be neither
   future nor compacted. Nothing has been written yet, so an error here changes nothing.
4. ``apply_path`` runs the chosen ops in order through a ``TxnOps``; a range sees the txn's
   own earlier writes (etcd reads its write view), and all writes share one main revision.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from discoverd.errors import (
    ClientError,
    DuplicateKey,
    EmptyKey,
    KeyNotFound,
    LeaseProvided,
    TooManyOps,
    ValueProvided,
)
from discoverd.kv.requests import (
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

_SORT_ORDERS = frozenset(SortOrder)
_SORT_TARGETS = frozenset(SortTarget)

FROM_KEY = b"\x00"
"""A ``range_end`` of a single zero byte means "every key from ``key`` on"."""

# -- 1. static checks -------------------------------------------------------------------------


def check_range_request(request: RangeRequest | DeleteRangeRequest) -> None:
    if not request.key:
        raise EmptyKey()
    if isinstance(request, RangeRequest) and (
        request.sort_order not in _SORT_ORDERS or request.sort_target not in _SORT_TARGETS
    ):
        raise ClientError("etcdserver: invalid sort option")


def check_put_request(request: PutRequest) -> None:
    if not request.key:
        raise EmptyKey()
    if request.ignore_value and request.value:
        raise ValueProvided()
    if request.ignore_lease and request.lease:
        raise LeaseProvided()


def check_txn_request(request: TxnRequest, max_ops: int) -> None:
    """etcd's ``checkTxnRequest``: each of compare/success/failure may hold ``max_ops``
    entries; a nested txn may hold what its parent's longest list left over."""
    opc = max(len(request.compare), len(request.success), len(request.failure))
    if opc > max_ops:
        raise TooManyOps()
    for cmp in request.compare:
        if not cmp.key:
            raise EmptyKey()
    for op in (*request.success, *request.failure):
        _check_request_op(op, max_ops - opc)


def _check_request_op(op: RequestOp, max_ops: int) -> None:
    if op.request_range is not None:
        check_range_request(op.request_range)
    elif op.request_put is not None:
        check_put_request(op.request_put)
    elif op.request_delete_range is not None:
        check_range_request(op.request_delete_range)
    elif op.request_txn is not None:
        check_txn_request(op.request_txn, max_ops)
    else:
        raise KeyNotFound()  # etcd answers an empty op this way


@dataclass(frozen=True, slots=True)
class _Interval:
    """``[lo, hi)`` over byte strings; ``hi is None`` means no upper bound."""

    lo: bytes
    hi: bytes | None

    @classmethod
    def of_delete(cls, request: DeleteRangeRequest) -> _Interval:
        if not request.range_end:
            return cls(request.key, request.key + b"\x00")  # the single key
        if request.range_end == FROM_KEY:
            return cls(request.key, None)
        return cls(request.key, request.range_end)

    def contains(self, key: bytes) -> bool:
        return self.lo <= key and (self.hi is None or key < self.hi)


def check_intervals(ops: Sequence[RequestOp]) -> tuple[set[bytes], list[_Interval]]:
    """etcd's ``checkIntervals``: refuse a txn branch that writes one key twice.

    Two puts of a key, or a put of a key inside a delete's range, anywhere in the branch
    (nested txns included) is a ``DuplicateKey``; except that the ``success`` and ``failure``
    branches of one nested txn may put the same key, since only one of them runs. Two
    overlapping deletes are allowed. Returns the branch's puts and deletes for the parent.

    One deliberate difference: a delete with ``range_end == b"\\0"`` covers every key from
    its ``key`` on, as it does when it runs. etcd 3.4 builds the interval ``[key, "\\0")``
    literally, which is empty, so it lets such a delete and a put of a key it deletes share
    a txn.
    """
    dels = [
        _Interval.of_delete(op.request_delete_range)
        for op in ops
        if op.request_delete_range is not None
    ]
    puts: set[bytes] = set()
    for op in ops:
        if op.request_txn is None:
            continue
        puts_then, dels_then = check_intervals(op.request_txn.success)
        puts_else, dels_else = check_intervals(op.request_txn.failure)
        for key in puts_then:
            if key in puts or _any_contains(dels, key):
                raise DuplicateKey()
            puts.add(key)
        for key in puts_else:
            if (key in puts and key not in puts_then) or _any_contains(dels, key):
                raise DuplicateKey()
            puts.add(key)
        dels.extend(dels_then)
        dels.extend(dels_else)
    for op in ops:
        if op.request_put is None:
            continue
        key = op.request_put.key
        if key in puts or _any_contains(dels, key):
            raise DuplicateKey()
        puts.add(key)
    return puts, dels


def _any_contains(intervals: Iterable[_Interval], key: bytes) -> bool:
    return any(iv.contains(key) for iv in intervals)


# -- 2. compares ------------------------------------------------------------------------------


def _sign(a: int, b: int) -> int:
    return (a > b) - (a < b)


def _sign_bytes(a: bytes, b: bytes) -> int:
    return (a > b) - (a < b)


def compare_kv(cmp: Compare, kv: KeyValue) -> bool:
    """Whether one key-value satisfies ``cmp`` (etcd's ``compareKV``)."""
    target = cmp.target
    if target == CompareTarget.VALUE:
        order = _sign_bytes(kv.value, cmp.value)
    elif target == CompareTarget.CREATE:
        order = _sign(kv.create_revision, cmp.create_revision)
    elif target == CompareTarget.MOD:
        order = _sign(kv.mod_revision, cmp.mod_revision)
    elif target == CompareTarget.VERSION:
        order = _sign(kv.version, cmp.version)
    else:
        order = _sign(kv.lease, cmp.lease)
    result = cmp.result
    if result == CompareResult.EQUAL:
        return order == 0
    if result == CompareResult.NOT_EQUAL:
        return order != 0
    if result == CompareResult.GREATER:
        return order > 0
    return order < 0


_ABSENT = KeyValue(key=b"", value=b"", create_revision=0, mod_revision=0, version=0, lease=0)


def compare_holds(cmp: Compare, kvs: Sequence[KeyValue]) -> bool:
    """etcd's ``applyCompare`` given the keys in the compare's range.

    Every key must satisfy the compare. No key at all compares as a key whose version,
    create and mod revisions and lease are 0 — except a VALUE compare, which is then false
    (an empty value and a missing key must not look alike).
    """
    if not kvs:
        if cmp.target == CompareTarget.VALUE:
            return False
        return compare_kv(cmp, _ABSENT)
    return all(compare_kv(cmp, kv) for kv in kvs)


@dataclass(slots=True)
class TxnPath:
    """Which branch each txn on the executed path took: the top one and, in order, every
    nested txn of the chosen branch (each with its own path)."""

    succeeded: bool
    nested: list[TxnPath] = field(default_factory=list)


def compare_to_path(
    request: TxnRequest, read: Callable[[bytes, bytes], Sequence[KeyValue]]
) -> TxnPath:
    """Evaluate the compares of ``request`` and of the nested txns it will run.

    ``read(key, range_end)`` returns the key-values of a range as of the txn's start.
    """
    succeeded = all(compare_holds(c, read(c.key, c.range_end)) for c in request.compare)
    path = TxnPath(succeeded)
    for op in request.success if succeeded else request.failure:
        if op.request_txn is not None:
            path.nested.append(compare_to_path(op.request_txn, read))
    return path


def walk_path(request: TxnRequest, path: TxnPath, check: Callable[[RequestOp], None]) -> None:
    """Call ``check`` on every non-txn op that will run, depth first (etcd's
    ``checkRequests``)."""
    nested = iter(path.nested)
    for op in request.success if path.succeeded else request.failure:
        if op.request_txn is not None:
            walk_path(op.request_txn, next(nested), check)
        else:
            check(op)


def has_writes(request: TxnRequest) -> bool:
    """Whether any op in either branch, at any depth, is a put or a delete (etcd's
    ``!isTxnReadonly``): a txn without writes is a read, which a server may serve after a
    ReadIndex round instead of proposing it through Raft."""
    for op in (*request.success, *request.failure):
        if op.request_put is not None or op.request_delete_range is not None:
            return True
        if op.request_txn is not None and has_writes(op.request_txn):
            return True
    return False


# -- 4. running the chosen branch -------------------------------------------------------------


class TxnOps(Protocol):
    """What ``apply_path`` needs from the store's open write."""

    def op_range(self, request: RangeRequest) -> RangeResponse: ...

    def op_put(self, request: PutRequest) -> PutResponse: ...

    def op_delete_range(self, request: DeleteRangeRequest) -> DeleteRangeResponse: ...

    @property
    def revision(self) -> int:
        """The revision a read sees now: the start revision, +1 once anything changed."""
        ...


def apply_path(ops: TxnOps, request: TxnRequest, path: TxnPath) -> TxnResponse:
    """Run the ops of the branch ``path`` chose, in order, nested txns recursively.

    Each response's ``header_revision`` is the revision a read sees right after its op (a
    put's is the new revision). A nested txn's response carries the same, where etcd
    leaves a nested header empty (revision 0): the value is more useful and nothing can
    depend on the 0.
    """
    nested = iter(path.nested)
    responses: list[ResponseOp] = []
    for op in request.success if path.succeeded else request.failure:
        if op.request_range is not None:
            responses.append(ResponseOp(response_range=ops.op_range(op.request_range)))
        elif op.request_put is not None:
            responses.append(ResponseOp(response_put=ops.op_put(op.request_put)))
        elif op.request_delete_range is not None:
            resp = ops.op_delete_range(op.request_delete_range)
            responses.append(ResponseOp(response_delete_range=resp))
        else:
            assert op.request_txn is not None, "empty ops are refused by check_txn_request"
            sub = apply_path(ops, op.request_txn, next(nested))
            responses.append(ResponseOp(response_txn=sub))
    return TxnResponse(
        header_revision=ops.revision, succeeded=path.succeeded, responses=tuple(responses)
    )
