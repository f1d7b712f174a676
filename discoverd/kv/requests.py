"""Requests and responses of the KV API, as plain frozen dataclasses.

Field names, enum names and enum numbers are etcd v3's (``etcdserverpb``), so the native
protocol, the JSON gateway and anyone who knows etcd read them the same way. Defaults are
proto3's zero values. ``header_revision`` stands for etcd's ``header.revision``: the store
revision the response was served at (cluster id, member id and raft term are added by the
server, which knows them).

A ``RequestOp``/``ResponseOp`` is etcd's ``oneof``: exactly one field is set.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from discoverd.errors import ClientError
from discoverd.kv.revision import KeyValue


class SortOrder(enum.IntEnum):
    NONE = 0
    ASCEND = 1
    DESCEND = 2


class SortTarget(enum.IntEnum):
    KEY = 0
    VERSION = 1
    CREATE = 2
    MOD = 3
    VALUE = 4


class CompareResult(enum.IntEnum):
    EQUAL = 0
    GREATER = 1
    LESS = 2
    NOT_EQUAL = 3


class CompareTarget(enum.IntEnum):
    VERSION = 0
    CREATE = 1
    MOD = 2
    VALUE = 3
    LEASE = 4


@dataclass(frozen=True, slots=True)
class RangeRequest:
    """Read ``key``, or ``[key, range_end)``; ``range_end == b"\\0"`` means every key ``>= key``.

    ``revision`` 0 reads the current revision. ``serializable`` is for the server (whether a
    ReadIndex round is needed); the store ignores it.
    """

    key: bytes
    range_end: bytes = b""
    limit: int = 0
    revision: int = 0
    sort_order: SortOrder = SortOrder.NONE
    sort_target: SortTarget = SortTarget.KEY
    serializable: bool = False
    keys_only: bool = False
    count_only: bool = False
    min_mod_revision: int = 0
    max_mod_revision: int = 0
    min_create_revision: int = 0
    max_create_revision: int = 0


@dataclass(frozen=True, slots=True)
class PutRequest:
    key: bytes
    value: bytes = b""
    lease: int = 0
    prev_kv: bool = False
    ignore_value: bool = False
    ignore_lease: bool = False


@dataclass(frozen=True, slots=True)
class DeleteRangeRequest:
    key: bytes
    range_end: bytes = b""
    prev_kv: bool = False


@dataclass(frozen=True, slots=True)
class Compare:
    """``<target of every key in the range> <result> <the target's field below>``.

    Only the field named by ``target`` is read (etcd's ``target_union``): ``version``,
    ``create_revision``, ``mod_revision``, ``value`` or ``lease``.
    """

    key: bytes
    target: CompareTarget = CompareTarget.VERSION
    result: CompareResult = CompareResult.EQUAL
    range_end: bytes = b""
    version: int = 0
    create_revision: int = 0
    mod_revision: int = 0
    value: bytes = b""
    lease: int = 0


@dataclass(frozen=True, slots=True)
class TxnRequest:
    """If every ``compare`` holds, run ``success``, else ``failure``: one atomic revision."""

    compare: Sequence[Compare] = ()
    success: Sequence[RequestOp] = ()
    failure: Sequence[RequestOp] = ()


Request = RangeRequest | PutRequest | DeleteRangeRequest | TxnRequest


@dataclass(frozen=True, slots=True)
class RequestOp:
    """One operation of a txn; exactly one field is set (``RequestOp.of`` picks it)."""

    request_range: RangeRequest | None = None
    request_put: PutRequest | None = None
    request_delete_range: DeleteRangeRequest | None = None
    request_txn: TxnRequest | None = None

    def __post_init__(self) -> None:
        chosen = (
            self.request_range,
            self.request_put,
            self.request_delete_range,
            self.request_txn,
        )
        if sum(r is not None for r in chosen) > 1:
            raise ClientError("etcdserver: a request op must set exactly one request")

    @classmethod
    def of(cls, request: Request) -> RequestOp:
        if isinstance(request, RangeRequest):
            return cls(request_range=request)
        if isinstance(request, PutRequest):
            return cls(request_put=request)
        if isinstance(request, DeleteRangeRequest):
            return cls(request_delete_range=request)
        return cls(request_txn=request)

    @property
    def request(self) -> Request | None:
        """The one request that is set (``None`` for an empty op, which etcd refuses)."""
        return (
            self.request_range or self.request_put or self.request_delete_range or self.request_txn
        )


@dataclass(frozen=True, slots=True)
class CompactionRequest:
    """Forget history before ``revision``. ``physical`` is etcd's "wait until the backend
    has reclaimed the space"; compaction here is immediate, so it changes nothing."""

    revision: int
    physical: bool = False


@dataclass(frozen=True, slots=True)
class RangeResponse:
    """``count`` is the number of keys in the range *before* ``limit`` and before the
    min/max revision filters (as etcd 3.4 reports it); ``more`` says ``limit`` cut some."""

    header_revision: int
    kvs: tuple[KeyValue, ...] = ()
    more: bool = False
    count: int = 0


@dataclass(frozen=True, slots=True)
class PutResponse:
    header_revision: int
    prev_kv: KeyValue | None = None


@dataclass(frozen=True, slots=True)
class DeleteRangeResponse:
    header_revision: int
    deleted: int = 0
    prev_kvs: tuple[KeyValue, ...] = ()


@dataclass(frozen=True, slots=True)
class TxnResponse:
    header_revision: int
    succeeded: bool = False
    responses: tuple[ResponseOp, ...] = ()


Response = RangeResponse | PutResponse | DeleteRangeResponse | TxnResponse


@dataclass(frozen=True, slots=True)
class ResponseOp:
    response_range: RangeResponse | None = None
    response_put: PutResponse | None = None
    response_delete_range: DeleteRangeResponse | None = None
    response_txn: TxnResponse | None = None

    @classmethod
    def of(cls, response: Response) -> ResponseOp:
        if isinstance(response, RangeResponse):
            return cls(response_range=response)
        if isinstance(response, PutResponse):
            return cls(response_put=response)
        if isinstance(response, DeleteRangeResponse):
            return cls(response_delete_range=response)
        return cls(response_txn=response)

    @property
    def response(self) -> Response:
        found = (
            self.response_range
            or self.response_put
            or self.response_delete_range
            or self.response_txn
        )
        assert found is not None, "empty ResponseOp"
        return found


@dataclass(frozen=True, slots=True)
class CompactionResponse:
    header_revision: int
