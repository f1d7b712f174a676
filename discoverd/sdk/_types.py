"""The SDK's values: frozen response dataclasses parsed from the protocol's maps, and the
request builders (``Compare``, ``Op``) that produce them.

Responses are frozen dataclasses rather than the raw cbor maps so that callers get attribute
names checked by their type checker and cannot mutate a value another task also holds. Field
names are etcd v3's, as in the protocol (docs/protocol.md), so etcd users find what they
expect.

The txn builders mirror etcd's Python clients (python-etcd3): a comparison is written as
Python comparison, ``Compare.value(b"k") == b"v"`` or ``Compare.version(b"k") > 0``, and an
operation as ``Op.put(b"k", b"v")``. Each builder only produces the protocol's plain dicts
(``to_wire``); nothing here does I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from discoverd.errors import ClientError

BytesLike: TypeAlias = bytes | bytearray | memoryview | str
"""What the SDK accepts for keys and values; ``str`` is encoded as UTF-8."""


def to_bytes(data: BytesLike, what: str = "key") -> bytes:
    """``data`` as bytes (UTF-8 for ``str``); ``ClientError`` for anything else, so a wrong
    type is reported by name here rather than as an opaque cbor or server error."""
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    raise ClientError(f"{what} must be bytes or str, not {type(data).__name__}")


def prefix_range_end(prefix: bytes) -> bytes:
    """The ``range_end`` that selects every key starting with ``prefix``.

    Exactly etcd's ``clientv3.GetPrefixRangeEnd``: increment the last byte that is below
    0xff and drop what follows it; a prefix of only 0xff bytes (or the empty prefix) has no
    upper bound, which the protocol spells ``b"\\0"`` ("every key >= key").
    """
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


class SortOrder(enum.StrEnum):
    """Order of a range's results (etcd's ``SortOrder``)."""

    NONE = "NONE"
    ASCEND = "ASCEND"
    DESCEND = "DESCEND"


class SortTarget(enum.StrEnum):
    """What a range is sorted by (etcd's ``SortTarget``)."""

    KEY = "KEY"
    VERSION = "VERSION"
    CREATE = "CREATE"
    MOD = "MOD"
    VALUE = "VALUE"


def _int(d: Mapping[str, Any], name: str) -> int:
    value = d.get(name, 0)
    return int(value) if value is not None else 0


def _bytes(d: Mapping[str, Any], name: str) -> bytes:
    value = d.get(name, b"")
    return bytes(value) if value is not None else b""


# ----------------------------------------------------------------------------- responses


@dataclass(frozen=True, slots=True)
class ResponseHeader:
    """Who answered and at which store revision (every ``ok`` answer carries one)."""

    cluster_id: int
    member_id: int
    revision: int
    raft_term: int

    @classmethod
    def from_wire(cls, d: Mapping[str, Any] | None) -> ResponseHeader:
        d = d or {}
        return cls(_int(d, "cluster_id"), _int(d, "member_id"), _int(d, "revision"),
                   _int(d, "raft_term"))


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key as stored: its value, the revisions that created and last modified it, how
    many times it was written since it was created (``version``) and its lease (0: none)."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> KeyValue:
        return cls(_bytes(d, "key"), _bytes(d, "value"), _int(d, "create_revision"),
                   _int(d, "mod_revision"), _int(d, "version"), _int(d, "lease"))


def _kvs(items: Any) -> tuple[KeyValue, ...]:
    return tuple(KeyValue.from_wire(kv) for kv in items or ())


def _header(d: Mapping[str, Any], default: ResponseHeader | None) -> ResponseHeader:
    # Responses nested in a txn may omit their header; they share the txn's.
    if d.get("header") is None and default is not None:
        return default
    return ResponseHeader.from_wire(d.get("header"))


@dataclass(frozen=True, slots=True)
class RangeResponse:
    """``kvs`` found (at most ``limit``); ``more`` says the limit cut some; ``count`` is the
    number of keys in the range."""

    kvs: tuple[KeyValue, ...]
    more: bool
    count: int
    header: ResponseHeader

    @classmethod
    def from_wire(
        cls, d: Mapping[str, Any], default_header: ResponseHeader | None = None
    ) -> RangeResponse:
        return cls(_kvs(d.get("kvs")), bool(d.get("more", False)), _int(d, "count"),
                   _header(d, default_header))


@dataclass(frozen=True, slots=True)
class PutResponse:
    """``prev_kv`` is the key before the put when asked for (and the key existed)."""

    header: ResponseHeader
    prev_kv: KeyValue | None = None

    @classmethod
    def from_wire(
        cls, d: Mapping[str, Any], default_header: ResponseHeader | None = None
    ) -> PutResponse:
        prev = d.get("prev_kv")
        return cls(_header(d, default_header), KeyValue.from_wire(prev) if prev else None)


@dataclass(frozen=True, slots=True)
class DeleteResponse:
    """How many keys were deleted; ``prev_kvs`` holds them when asked for."""

    header: ResponseHeader
    deleted: int
    prev_kvs: tuple[KeyValue, ...] = ()

    @classmethod
    def from_wire(
        cls, d: Mapping[str, Any], default_header: ResponseHeader | None = None
    ) -> DeleteResponse:
        return cls(_header(d, default_header), _int(d, "deleted"), _kvs(d.get("prev_kvs")))


@dataclass(frozen=True, slots=True)
class TxnResponse:
    """``succeeded``: every compare held (so ``success`` ran, else ``failure``);
    ``responses``: one per operation that ran, in order."""

    header: ResponseHeader
    succeeded: bool
    responses: tuple[RangeResponse | PutResponse | DeleteResponse | TxnResponse, ...]

    @classmethod
    def from_wire(
        cls, d: Mapping[str, Any], default_header: ResponseHeader | None = None
    ) -> TxnResponse:
        header = _header(d, default_header)
        return cls(header, bool(d.get("succeeded", False)),
                   tuple(_response_op(op, header) for op in d.get("responses") or ()))


def _response_op(
    op: Mapping[str, Any], header: ResponseHeader
) -> RangeResponse | PutResponse | DeleteResponse | TxnResponse:
    if "response_range" in op:
        return RangeResponse.from_wire(op["response_range"], header)
    if "response_put" in op:
        return PutResponse.from_wire(op["response_put"], header)
    if "response_delete_range" in op:
        return DeleteResponse.from_wire(op["response_delete_range"], header)
    if "response_txn" in op:
        return TxnResponse.from_wire(op["response_txn"], header)
    raise ClientError(f"unrecognised txn response op {sorted(op)!r}")


@dataclass(frozen=True, slots=True)
class Status:
    """One member's view of itself and the cluster (``status`` op); ``endpoint`` is the
    address that answered, since failover may have picked any of the configured ones."""

    endpoint: str
    header: ResponseHeader
    name: str
    version: str
    leader: int
    role: str
    raft_term: int
    raft_index: int
    commit_index: int
    raft_applied_index: int
    voters: tuple[int, ...]
    learners: tuple[int, ...]
    db_size: int | None = None
    is_learner: bool = False
    errors: tuple[str, ...] = ()
    """Active alarms, as etcd lists them (``memberID:<id> alarm:NOSPACE``)."""

    @property
    def member_id(self) -> int:
        return self.header.member_id

    @property
    def is_leader(self) -> bool:
        return self.leader != 0 and self.leader == self.header.member_id

    @classmethod
    def from_wire(cls, d: Mapping[str, Any], endpoint: str) -> Status:
        db_size = d.get("db_size")
        return cls(
            endpoint=endpoint,
            header=ResponseHeader.from_wire(d.get("header")),
            name=str(d.get("name", "")),
            version=str(d.get("version", "")),
            leader=_int(d, "leader"),
            role=str(d.get("role", "")),
            raft_term=_int(d, "raft_term"),
            raft_index=_int(d, "raft_index"),
            commit_index=_int(d, "commit_index"),
            raft_applied_index=_int(d, "raft_applied_index"),
            voters=tuple(int(v) for v in d.get("voters") or ()),
            learners=tuple(int(v) for v in d.get("learners") or ()),
            db_size=int(db_size) if db_size is not None else None,
            is_learner=bool(d.get("is_learner", False)),
            errors=tuple(str(e) for e in d.get("errors") or ()),
        )


# ----------------------------------------------------------------------------- requests


def _key_range(
    key: BytesLike, range_end: BytesLike | None, prefix: bool, from_key: bool
) -> tuple[bytes, bytes | None]:
    """(key, range_end) as etcd's clientv3 ``WithRange``/``WithPrefix``/``WithFromKey``
    compute them, including their rule that an empty key with a prefix or from-key option
    means every key (``key = b"\\0"``)."""
    k = to_bytes(key)
    if (range_end is not None) + prefix + from_key > 1:
        raise ClientError("range_end, prefix and from_key are mutually exclusive")
    if prefix:
        if not k:
            return b"\0", b"\0"
        return k, prefix_range_end(k)
    if from_key:
        return (k or b"\0"), b"\0"
    return k, None if range_end is None else to_bytes(range_end, "range_end")


def _enum(value: str | None, kind: type[enum.StrEnum], what: str) -> str | None:
    if value is None:
        return None
    try:
        return kind(value.upper()).value
    except (ValueError, AttributeError):
        names = ", ".join(m.value for m in kind)
        raise ClientError(f"{what} must be one of {names}, not {value!r}") from None


def range_request(
    key: BytesLike,
    *,
    range_end: BytesLike | None = None,
    prefix: bool = False,
    from_key: bool = False,
    limit: int = 0,
    revision: int = 0,
    sort_order: SortOrder | str | None = None,
    sort_target: SortTarget | str | None = None,
    serializable: bool = False,
    keys_only: bool = False,
    count_only: bool = False,
    min_mod_revision: int = 0,
    max_mod_revision: int = 0,
    min_create_revision: int = 0,
    max_create_revision: int = 0,
) -> dict[str, Any]:
    """The fields of a ``range`` request; defaults are left out (the member fills them)."""
    k, end = _key_range(key, range_end, prefix, from_key)
    req: dict[str, Any] = {"key": k}
    if end is not None:
        req["range_end"] = end
    order = _enum(sort_order, SortOrder, "sort_order")
    target = _enum(sort_target, SortTarget, "sort_target")
    if order is not None:
        req["sort_order"] = order
    if target is not None:
        req["sort_target"] = target
    for name, flag in (("serializable", serializable), ("keys_only", keys_only),
                       ("count_only", count_only)):
        if flag:
            req[name] = True
    for name, number in (("limit", limit), ("revision", revision),
                         ("min_mod_revision", min_mod_revision),
                         ("max_mod_revision", max_mod_revision),
                         ("min_create_revision", min_create_revision),
                         ("max_create_revision", max_create_revision)):
        if number:
            req[name] = number
    return req


def put_request(
    key: BytesLike,
    value: BytesLike,
    *,
    lease: int = 0,
    prev_kv: bool = False,
    ignore_value: bool = False,
    ignore_lease: bool = False,
) -> dict[str, Any]:
    """The fields of a ``put`` request."""
    req: dict[str, Any] = {"key": to_bytes(key), "value": to_bytes(value, "value")}
    if lease:
        req["lease"] = lease
    for name, flag in (("prev_kv", prev_kv), ("ignore_value", ignore_value),
                       ("ignore_lease", ignore_lease)):
        if flag:
            req[name] = True
    return req


def delete_request(
    key: BytesLike,
    *,
    range_end: BytesLike | None = None,
    prefix: bool = False,
    from_key: bool = False,
    prev_kv: bool = False,
) -> dict[str, Any]:
    """The fields of a ``delete_range`` request."""
    k, end = _key_range(key, range_end, prefix, from_key)
    req: dict[str, Any] = {"key": k}
    if end is not None:
        req["range_end"] = end
    if prev_kv:
        req["prev_kv"] = True
    return req


_COMPARE_FIELDS = {
    "VERSION": "version",
    "CREATE": "create_revision",
    "MOD": "mod_revision",
    "VALUE": "value",
    "LEASE": "lease",
}


@dataclass(frozen=True, slots=True)
class Compare:
    """One condition of a txn: ``<target of key (or every key of the range)> <result>
    <operand>``. Build it with Python comparisons on the target builders::

        Compare.value(b"k") == b"v"
        Compare.version(b"k") > 0          # the key exists
        Compare.mod(b"k") < 42
        Compare.lease(b"k") != 0
    """

    key: bytes
    target: str
    result: str
    operand: int | bytes
    range_end: bytes | None = None

    def to_wire(self) -> dict[str, Any]:
        d: dict[str, Any] = {"key": self.key, "target": self.target, "result": self.result,
                             _COMPARE_FIELDS[self.target]: self.operand}
        if self.range_end is not None:
            d["range_end"] = self.range_end
        return d

    @staticmethod
    def value(key: BytesLike, *, range_end: BytesLike | None = None,
              prefix: bool = False) -> CompareBuilder:
        """Compare the value of ``key`` (bytes or str operand)."""
        return CompareBuilder("VALUE", key, range_end, prefix)

    @staticmethod
    def version(key: BytesLike, *, range_end: BytesLike | None = None,
                prefix: bool = False) -> CompareBuilder:
        """Compare the version of ``key`` (0 when it does not exist)."""
        return CompareBuilder("VERSION", key, range_end, prefix)

    @staticmethod
    def create(key: BytesLike, *, range_end: BytesLike | None = None,
               prefix: bool = False) -> CompareBuilder:
        """Compare the revision that created ``key`` (0 when it does not exist)."""
        return CompareBuilder("CREATE", key, range_end, prefix)

    @staticmethod
    def mod(key: BytesLike, *, range_end: BytesLike | None = None,
            prefix: bool = False) -> CompareBuilder:
        """Compare the revision that last modified ``key``."""
        return CompareBuilder("MOD", key, range_end, prefix)

    @staticmethod
    def lease(key: BytesLike, *, range_end: BytesLike | None = None,
              prefix: bool = False) -> CompareBuilder:
        """Compare the lease ``key`` is attached to (0: none)."""
        return CompareBuilder("LEASE", key, range_end, prefix)

    create_revision = create
    mod_revision = mod


class CompareBuilder:
    """The left side of a comparison; ``==``, ``!=``, ``>`` and ``<`` turn it into a
    ``Compare`` (etcd has no ``>=``/``<=``, so those raise ``TypeError`` as Python does for
    any unsupported comparison)."""

    __slots__ = ("_key", "_range_end", "_target")
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, target: str, key: BytesLike, range_end: BytesLike | None,
                 prefix: bool) -> None:
        self._target = target
        self._key, self._range_end = _key_range(key, range_end, prefix, False)

    def _make(self, result: str, operand: object) -> Compare:
        if self._target == "VALUE":
            if not isinstance(operand, bytes | bytearray | memoryview | str):
                raise ClientError(f"a VALUE comparison needs bytes or str, not {operand!r}")
            value: int | bytes = to_bytes(operand, "value")
        else:
            if type(operand) is not int:
                raise ClientError(f"a {self._target} comparison needs an int, not {operand!r}")
            value = operand
        return Compare(self._key, self._target, result, value, self._range_end)

    def __eq__(self, other: object) -> Compare:  # type: ignore[override]
        return self._make("EQUAL", other)

    def __ne__(self, other: object) -> Compare:  # type: ignore[override]
        return self._make("NOT_EQUAL", other)

    def __gt__(self, other: object) -> Compare:
        return self._make("GREATER", other)

    def __lt__(self, other: object) -> Compare:
        return self._make("LESS", other)

    def __repr__(self) -> str:
        return f"<Compare.{self._target.lower()}({self._key!r})>"


@dataclass(frozen=True, slots=True)
class Op:
    """One operation of a txn (``Op.get``, ``Op.put``, ``Op.delete``, ``Op.txn``); the
    arguments are those of the ``AsyncClient`` method of the same name.

    ``read_only`` says whether running it can change the store: a txn made only of reads is
    safe for the client to retry on another member, a txn with any write is not.
    """

    kind: str
    request: Mapping[str, Any]
    read_only: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {self.kind: dict(self.request)}

    @staticmethod
    def get(
        key: BytesLike,
        *,
        range_end: BytesLike | None = None,
        prefix: bool = False,
        from_key: bool = False,
        limit: int = 0,
        revision: int = 0,
        sort_order: SortOrder | str | None = None,
        sort_target: SortTarget | str | None = None,
        serializable: bool = False,
        keys_only: bool = False,
        count_only: bool = False,
        min_mod_revision: int = 0,
        max_mod_revision: int = 0,
        min_create_revision: int = 0,
        max_create_revision: int = 0,
    ) -> Op:
        return Op("request_range", range_request(
            key, range_end=range_end, prefix=prefix, from_key=from_key, limit=limit,
            revision=revision, sort_order=sort_order, sort_target=sort_target,
            serializable=serializable, keys_only=keys_only, count_only=count_only,
            min_mod_revision=min_mod_revision, max_mod_revision=max_mod_revision,
            min_create_revision=min_create_revision, max_create_revision=max_create_revision,
        ), read_only=True)

    @staticmethod
    def put(
        key: BytesLike,
        value: BytesLike,
        *,
        lease: int = 0,
        prev_kv: bool = False,
        ignore_value: bool = False,
        ignore_lease: bool = False,
    ) -> Op:
        return Op("request_put", put_request(
            key, value, lease=lease, prev_kv=prev_kv, ignore_value=ignore_value,
            ignore_lease=ignore_lease,
        ))

    @staticmethod
    def delete(
        key: BytesLike,
        *,
        range_end: BytesLike | None = None,
        prefix: bool = False,
        from_key: bool = False,
        prev_kv: bool = False,
    ) -> Op:
        return Op("request_delete_range", delete_request(
            key, range_end=range_end, prefix=prefix, from_key=from_key, prev_kv=prev_kv,
        ))

    @staticmethod
    def txn(compare: Iterable[Compare], success: Iterable[Op] = (),
            failure: Iterable[Op] = ()) -> Op:
        request, read_only = txn_request(compare, success, failure)
        return Op("request_txn", request, read_only=read_only)


def txn_request(
    compare: Iterable[Compare], success: Iterable[Op], failure: Iterable[Op]
) -> tuple[dict[str, Any], bool]:
    """The fields of a ``txn`` request, and whether it only reads."""
    compares = list(compare)
    for c in compares:
        if not isinstance(c, Compare):
            raise ClientError(
                f"txn compare items must be Compare (e.g. Compare.value(k) == v), not {c!r}")
    ops = {"success": list(success), "failure": list(failure)}
    for name, items in ops.items():
        for op in items:
            if not isinstance(op, Op):
                raise ClientError(f"txn {name} items must be Op (e.g. Op.put(k, v)), not {op!r}")
    request = {
        "compare": [c.to_wire() for c in compares],
        "success": [op.to_wire() for op in ops["success"]],
        "failure": [op.to_wire() for op in ops["failure"]],
    }
    read_only = all(op.read_only for items in ops.values() for op in items)
    return request, read_only


# ----------------------------------------------------------------------------- leases


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    """A granted lease: ``ttl`` is what the member granted, which may be more than asked
    (it raises a TTL below its minimum, so a lease can outlive one leader change)."""

    id: int
    ttl: int
    header: ResponseHeader

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> LeaseGrant:
        return cls(_int(d, "id"), _int(d, "ttl"), ResponseHeader.from_wire(d.get("header")))


@dataclass(frozen=True, slots=True)
class LeaseKeepAlive:
    """The answer to one keep-alive: ``ttl`` is the TTL the lease now has again; 0 means
    the lease is gone (expired or revoked) — etcd's shape, so it is a value, not an error."""

    id: int
    ttl: int
    header: ResponseHeader

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> LeaseKeepAlive:
        return cls(_int(d, "id"), _int(d, "ttl"), ResponseHeader.from_wire(d.get("header")))


@dataclass(frozen=True, slots=True)
class LeaseTimeToLive:
    """``ttl``: seconds left (rounded up) as the leader sees it, -1 if the lease does not
    exist; ``granted_ttl``: its full TTL; ``keys``: the keys attached, when asked for."""

    id: int
    ttl: int
    granted_ttl: int
    keys: list[bytes]
    header: ResponseHeader

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> LeaseTimeToLive:
        ttl = d.get("ttl", -1)
        return cls(_int(d, "id"), int(ttl) if ttl is not None else -1, _int(d, "granted_ttl"),
                   [bytes(k) for k in d.get("keys") or ()],
                   ResponseHeader.from_wire(d.get("header")))


# ----------------------------------------------------------------------------- watches


class EventType(enum.StrEnum):
    """What happened to a key (etcd's ``mvccpb.Event_EventType``); compares equal to the
    protocol's strings ``"PUT"`` and ``"DELETE"``."""

    PUT = "PUT"
    DELETE = "DELETE"


class WatchFilter(enum.StrEnum):
    """Event types a watch asks the member not to send."""

    NOPUT = "NOPUT"
    NODELETE = "NODELETE"


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change. For a DELETE, ``kv`` holds the key and ``mod_revision`` is the deleting
    revision (its value is empty); ``prev_kv`` is the key before the change, when the watch
    asked for it and the key existed."""

    type: EventType
    kv: KeyValue
    prev_kv: KeyValue | None = None

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> WatchEvent:
        try:
            kind = EventType(str(d.get("type", "")).upper())
        except ValueError:
            raise ClientError(f"unrecognised watch event type {d.get('type')!r}") from None
        prev = d.get("prev_kv")
        return cls(kind, KeyValue.from_wire(d.get("kv") or {}),
                   KeyValue.from_wire(prev) if prev else None)


@dataclass(frozen=True, slots=True)
class WatchResponse:
    """One batch of a watch: ``events`` in revision order (every event of one revision is
    in the same batch), or none when ``progress`` is set (a bookmark). Either way,
    ``revision`` (the header's) says every event of this watch up to it has been delivered,
    which is what a consumer can record to resume from later."""

    header: ResponseHeader
    events: list[WatchEvent]
    progress: bool = False
    compact_revision: int = 0

    @property
    def revision(self) -> int:
        return self.header.revision

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> WatchResponse:
        return cls(ResponseHeader.from_wire(d.get("header")),
                   [WatchEvent.from_wire(e) for e in d.get("events") or ()],
                   bool(d.get("progress", False)), _int(d, "compact_revision"))


# ----------------------------------------------------------------------------- watch fast path
#
# A watcher process decodes one watch frame per watch per change: with 250 watches on a
# connection, a put costs 250 ``WatchResponse``s, and the general ``from_wire`` methods
# (a helper call and a conversion per field, the frozen dataclass ``__init__`` with its
# ``object.__setattr__`` per field, ``EventType(...)`` through the enum machinery) were the
# largest Python cost per delivered event. ``watch_response_from_wire`` builds the same
# objects directly when every field already has its exact wire type (what members send)
# and hands anything else to the general decoders, so the result is always the one
# ``WatchResponse.from_wire`` gives (tests/sdk/test_sdk_watch_decode.py checks that
# field by field).

_EVENT_TYPES: dict[str, EventType] = {"PUT": EventType.PUT, "DELETE": EventType.DELETE}
_new = object.__new__


def _setters(cls: type, *names: str) -> tuple[Any, ...]:
    """The slot descriptors' ``__set__`` of ``cls``'s fields ``names``: setting a frozen
    dataclass's slots through them skips its refusing ``__setattr__`` (which is what the
    generated ``__init__`` does too, by the slower ``object.__setattr__(self, name, v)``)."""
    return tuple(cls.__dict__[name].__set__ for name in names)


(_KV_KEY, _KV_VALUE, _KV_CREATE, _KV_MOD, _KV_VERSION, _KV_LEASE) = _setters(
    KeyValue, "key", "value", "create_revision", "mod_revision", "version", "lease")
_EV_TYPE, _EV_KV, _EV_PREV = _setters(WatchEvent, "type", "kv", "prev_kv")
_RESP_HEADER, _RESP_EVENTS, _RESP_PROGRESS, _RESP_COMPACT = _setters(
    WatchResponse, "header", "events", "progress", "compact_revision")
_HDR_CLUSTER, _HDR_MEMBER, _HDR_REVISION, _HDR_TERM = _setters(
    ResponseHeader, "cluster_id", "member_id", "revision", "raft_term")

_last_header: tuple[int, int, int, int, ResponseHeader] = (0, 0, 0, 0, ResponseHeader(0, 0, 0, 0))
"""The header decoded last (its four numbers and the object). The frames of one change to
every watch of a connection arrive together with equal headers, and a ``ResponseHeader``
is immutable, so they share one object. A single reference, replaced whole: safe however
many event loops (threads) decode at once."""


def _fast_header(d: Any) -> ResponseHeader:
    global _last_header
    if type(d) is dict:
        cluster = d.get("cluster_id", 0)
        member = d.get("member_id", 0)
        revision = d.get("revision", 0)
        term = d.get("raft_term", 0)
        if (type(cluster) is int and type(member) is int and type(revision) is int
                and type(term) is int):
            last = _last_header
            if (revision == last[2] and member == last[1] and cluster == last[0]
                    and term == last[3]):
                return last[4]
            header: ResponseHeader = _new(ResponseHeader)
            _HDR_CLUSTER(header, cluster)
            _HDR_MEMBER(header, member)
            _HDR_REVISION(header, revision)
            _HDR_TERM(header, term)
            _last_header = (cluster, member, revision, term, header)
            return header
    return ResponseHeader.from_wire(d)


def _fast_kv(d: Any) -> KeyValue:
    if type(d) is dict:
        key = d.get("key", b"")
        value = d.get("value", b"")
        create = d.get("create_revision", 0)
        mod = d.get("mod_revision", 0)
        version = d.get("version", 0)
        lease = d.get("lease", 0)
        if (type(key) is bytes and type(value) is bytes and type(create) is int
                and type(mod) is int and type(version) is int and type(lease) is int):
            kv: KeyValue = _new(KeyValue)
            _KV_KEY(kv, key)
            _KV_VALUE(kv, value)
            _KV_CREATE(kv, create)
            _KV_MOD(kv, mod)
            _KV_VERSION(kv, version)
            _KV_LEASE(kv, lease)
            return kv
    return KeyValue.from_wire(d)


def _fast_event(d: Any) -> WatchEvent:
    if type(d) is dict:
        kind = d.get("type")
        event_type = _EVENT_TYPES.get(kind) if type(kind) is str else None
        if event_type is not None:
            prev = d.get("prev_kv")
            event: WatchEvent = _new(WatchEvent)
            _EV_TYPE(event, event_type)
            _EV_KV(event, _fast_kv(d.get("kv") or {}))
            _EV_PREV(event, _fast_kv(prev) if prev else None)
            return event
    return WatchEvent.from_wire(d)


def watch_response_from_wire(d: Mapping[str, Any]) -> WatchResponse:
    """``WatchResponse.from_wire(d)``, faster for the maps members send (see above)."""
    if type(d) is not dict:
        return WatchResponse.from_wire(d)
    events = d.get("events")
    compact = d.get("compact_revision", 0)
    if type(compact) is not int or not (events is None or type(events) is list):
        return WatchResponse.from_wire(d)
    resp: WatchResponse = _new(WatchResponse)
    _RESP_HEADER(resp, _fast_header(d.get("header")))
    _RESP_EVENTS(resp, [_fast_event(e) for e in events] if events else [])
    _RESP_PROGRESS(resp, bool(d.get("progress", False)))
    _RESP_COMPACT(resp, compact)
    return resp


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What an informer (``watch_prefix``) yields first: every key of the prefix as of
    ``revision``, read linearizably; the watch responses that follow are the changes after
    it."""

    kvs: tuple[KeyValue, ...]
    revision: int


@dataclass(frozen=True, slots=True)
class Resync:
    """Yielded by an informer instead of an error when the history it needed to resume was
    compacted: the whole prefix again, as of ``revision``. Replace the local view with it;
    the watch responses that follow are the changes after ``revision``."""

    kvs: tuple[KeyValue, ...]
    revision: int


def watch_request(
    key: BytesLike,
    *,
    range_end: BytesLike | None = None,
    prefix: bool = False,
    from_key: bool = False,
    prev_kv: bool = False,
    filters: Iterable[WatchFilter | str] = (),
    progress_notify: bool = True,
) -> dict[str, Any]:
    """The fields of a ``watch`` request, except ``start_revision``: the watch sets that
    itself on every (re)creation, from the last revision it delivered."""
    k, end = _key_range(key, range_end, prefix, from_key)
    if isinstance(filters, str):  # "NOPUT" would otherwise be read as five one-letter filters
        filters = (filters,)
    names: list[str] = []
    for f in filters:
        name = _enum(f, WatchFilter, "a watch filter")
        if name is not None and name not in names:
            names.append(name)
    req: dict[str, Any] = {"key": k}
    if end is not None:
        req["range_end"] = end
    if prev_kv:
        req["prev_kv"] = True
    if names:
        req["filters"] = names
    if progress_notify:
        req["progress_notify"] = True
    return req
