"""``MvccStore``: the multi-version key-value store, with etcd v3.4's semantics.

The state is three things: the current ``revision``, the ``TreeIndex`` (key → generations of
revisions) and the *backend* (revision → ``KeyValue``, tombstones included), which holds every
version not yet compacted away. A read at revision ``r`` asks the index which revision of
each key was visible at ``r`` and fetches those versions from the backend.

Writes. Every write request (put, delete_range, txn, ``delete_keys``) opens one ``_Write``
whose changes all get main revision ``revision + 1`` and sub revisions 0, 1, 2… in order.
They go into the index and backend as they are made, so a later op of the same txn reads
them. When the request ends, the revision is incremented iff something changed: a delete
that deleted nothing and a read-only txn leave it alone; a put always changes something
(etcd writes a new version even when the value is the same). Every check that can refuse a
request runs before its first change, so a refused request changes nothing.

Write hooks. ``put``, ``delete_range`` and ``txn`` take an optional ``hook``: a rule about
*values* that the store itself does not know (the registry's schemas). It runs after the
request's changes are made and before the revision is committed, sees the state as this write
leaves it through a ``WriteView``, and may either refuse the write — the store then undoes
every change of it (backend records, index revisions, size), so the refusal leaves no trace —
or add derived changes to the same revision. A hook has to run after the changes because
what it judges (a document against the schema written in the same txn) exists only then.

The store is pure and deterministic: no clock, no I/O, no randomness, ordered iteration
everywhere. It is applied on every member in log order, so identical inputs must give
identical state and identical answers.
"""

from __future__ import annotations

import sys
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from operator import attrgetter
from typing import Any

from sortedcontainers import SortedDict

from discoverd.errors import Compacted, CorruptData, FutureRevision, KeyNotFound, LeaseNotFound
from discoverd.kv.index import KeyIndex, TreeIndex
from discoverd.kv.requests import (
    CompactionRequest,
    CompactionResponse,
    DeleteRangeRequest,
    DeleteRangeResponse,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeResponse,
    RequestOp,
    SortOrder,
    SortTarget,
    TxnRequest,
    TxnResponse,
)
from discoverd.kv.revision import Event, EventType, KeyValue, Revision, tombstone
from discoverd.kv.txn import (
    FROM_KEY,
    apply_path,
    check_intervals,
    check_put_request,
    check_range_request,
    check_txn_request,
    compare_to_path,
    walk_path,
)

DEFAULT_MAX_TXN_OPS = 128
"""etcd's ``--max-txn-ops`` default."""

COMPACTED_MESSAGE = "mvcc: required revision has been compacted"

SNAPSHOT_FORMAT = 1

LeaseCheck = Callable[[int], bool]
"""``lease_exists(lease_id)``: asked for every non-zero lease a put attaches."""

WriteHook = Callable[["WriteView", Sequence[Event]], None]
"""``hook(view, events)``: called once per changing write with the request's own events (in
order); raising refuses the whole write, ``view.put``/``view.delete`` add derived changes."""

_SORT_KEYS: dict[SortTarget, Callable[[KeyValue], Any]] = {
    SortTarget.KEY: attrgetter("key"),
    SortTarget.VERSION: attrgetter("version"),
    SortTarget.CREATE: attrgetter("create_revision"),
    SortTarget.MOD: attrgetter("mod_revision"),
    SortTarget.VALUE: attrgetter("value"),
}


class MvccStore:
    """The keyspace and its history. See the module docstring for the model.

    Args:
        max_txn_ops: the most entries each of a txn's compare/success/failure lists may
            hold (etcd's ``--max-txn-ops``).
    """

    def __init__(self, *, max_txn_ops: int = DEFAULT_MAX_TXN_OPS) -> None:
        self.max_txn_ops = max_txn_ops
        self._index = TreeIndex()
        self._backend: SortedDict = SortedDict()  # Revision -> KeyValue
        self._revision = 1  # an empty etcd reports revision 1; the first write makes 2
        self._compact_revision = -1  # etcd's "never compacted"
        self._size_bytes = 0

    def __repr__(self) -> str:
        return (
            f"<MvccStore revision={self._revision} compact_revision={self.compact_revision}"
            f" keys={len(self._index)} versions={len(self._backend)}"
            f" size_bytes={self._size_bytes}>"
        )

    # -- state -------------------------------------------------------------------------------

    @property
    def revision(self) -> int:
        """The current store revision (1 for an empty store, +1 per changing write)."""
        return self._revision

    @property
    def compact_revision(self) -> int:
        """The revision of the last compaction; 0 if the store was never compacted."""
        return max(self._compact_revision, 0)

    @property
    def key_count(self) -> int:
        """Keys that exist now (deleted ones not counted), in O(1): etcd's ``keys_total``."""
        return self._index.live

    @property
    def size_bytes(self) -> int:
        """Bytes of keys and values over every kept version (tombstones count their key):
        an estimate of storage use, for the quota alarm. Compaction lowers it."""
        return self._size_bytes

    # -- reads -------------------------------------------------------------------------------

    def range(self, request: RangeRequest) -> RangeResponse:
        """Read a key or a range, at the current or at a past revision.

        Raises:
            EmptyKey: ``request.key`` is empty.
            FutureRevision: ``request.revision`` is past the current revision.
            Compacted: ``request.revision`` is before the compaction revision.
        """
        check_range_request(request)
        return self._range(request, self._revision)

    def history(
        self,
        start_revision: int,
        end_revision: int = 0,
        *,
        key: bytes | None = None,
        range_end: bytes = b"",
        limit: int = 0,
    ) -> list[Event]:
        """Every change with main revision in ``[start_revision, end_revision]`` (0: up to
        now), in order, each with its ``prev_kv``: what a watch replays from the past.

        ``key``/``range_end`` (as for ``range``; ``key=None``: every key) keep only the changes
        of those keys, so a watcher catching up pays for its own keys' ``prev_kv`` lookups
        only; a single key is found through its index entry without walking other keys'
        versions. ``limit`` > 0 stops at the first revision boundary once that many events
        are gathered: a caller bounding its memory still never sees half a revision.

        Raises:
            Compacted: ``start_revision`` is not after the compaction revision. Stricter
                than etcd (which allows starting *at* it): a compaction at ``c`` discards
                the deletions made at ``c``, so history from ``c`` would miss them.
        """
        if start_revision <= self._compact_revision:
            raise Compacted(COMPACTED_MESSAGE)
        low = Revision(max(start_revision, 0), 0)
        high = Revision(end_revision, sys.maxsize) if end_revision > 0 else None
        events: list[Event] = []
        if high is not None and high < low:
            return events
        for rev, kv in self._versions(low, high, key, range_end):
            if 0 < limit <= len(events) and rev.main != events[-1].kv.mod_revision:
                break
            ki = self._index.key_index(kv.key)
            assert ki is not None, f"backend version of an unindexed key {kv.key!r}"
            prev_rev = ki.previous(rev)
            prev = self._backend[prev_rev] if prev_rev is not None else None
            kind = EventType.DELETE if kv.is_tombstone else EventType.PUT
            events.append(Event(kind, kv, prev))
        return events

    def _versions(
        self, low: Revision, high: Revision | None, key: bytes | None, range_end: bytes
    ) -> Iterator[tuple[Revision, KeyValue]]:
        """The kept versions with revisions in ``[low, high]`` of the selected keys, in
        revision order."""
        backend = self._backend
        if key is not None and not range_end:
            ki = self._index.key_index(key)
            for gen in ki.generations if ki is not None else ():
                if not gen or gen[-1] < low:
                    continue
                for rev in gen[bisect_left(gen, low) :]:
                    if high is not None and rev > high:
                        return
                    yield rev, backend[rev]
            return
        end = None if range_end == FROM_KEY else range_end
        for rev in backend.irange(minimum=low, maximum=high):
            kv: KeyValue = backend[rev]
            if key is None or (key <= kv.key and (end is None or kv.key < end)):
                yield rev, kv

    def _kvs(
        self, key: bytes, range_end: bytes, at: int, *, reverse: bool = False, limit: int = 0
    ) -> list[KeyValue]:
        """The versions visible at revision ``at`` of ``key`` (no ``range_end``) or of the
        keys in ``[key, range_end)`` (``b"\\0"``: every key from ``key`` on), key-ordered
        (descending if ``reverse``); the first ``limit`` only if ``limit`` > 0."""
        backend = self._backend
        if not range_end:
            ki = self._index.key_index(key)
            rev = ki.get(at) if ki is not None else None
            return [backend[rev]] if rev is not None else []
        end = None if range_end == FROM_KEY else range_end
        found: list[KeyValue] = []
        for ki in self._index.scan(key, end, reverse=reverse):
            rev = ki.get(at)
            if rev is not None:
                found.append(backend[rev])
                if len(found) == limit:
                    break
        return found

    def _range(self, request: RangeRequest, current: int) -> RangeResponse:
        """etcd's ``applierV3backend.Range`` over ``mvcc.rangeKeys``, served at ``current``.

        Order of work, as in etcd 3.4: select the keys at the revision; ``count`` them (this
        is the reported count); drop those outside the min/max mod/create revision filters;
        sort; cut to ``limit`` (``more`` if anything was cut); blank values if keys_only.
        """
        at = request.revision
        if at > current:
            raise FutureRevision()
        if at <= 0:
            at = current
        if at < self._compact_revision:
            raise Compacted(COMPACTED_MESSAGE)
        kvs = self._kvs(request.key, request.range_end, at)
        count = len(kvs)
        if request.count_only:
            return RangeResponse(header_revision=current, count=count)
        kvs = _filter(kvs, request)
        order = request.sort_order
        if order == SortOrder.NONE and request.sort_target != SortTarget.KEY:
            order = SortOrder.ASCEND  # etcd: a sort target without an order means ascending
        if order != SortOrder.NONE:
            # Stable: ties stay in key order, also descending (etcd leaves ties unspecified).
            kvs.sort(key=_SORT_KEYS[request.sort_target], reverse=order == SortOrder.DESCEND)
        more = 0 < request.limit < len(kvs)
        if more:
            kvs = kvs[: request.limit]
        if request.keys_only:
            kvs = [replace(kv, value=b"") for kv in kvs]
        return RangeResponse(header_revision=current, kvs=tuple(kvs), more=more, count=count)

    # -- writes ------------------------------------------------------------------------------

    def put(
        self,
        request: PutRequest,
        *,
        lease_exists: LeaseCheck | None = None,
        hook: WriteHook | None = None,
    ) -> tuple[PutResponse, list[Event]]:
        """Write one key; always makes a new revision.

        ``lease_exists`` is asked about ``request.lease`` when it is non-zero (``None``: the
        caller has checked leases itself). ``hook``: see the module docstring; the events
        returned include its derived changes, after the request's own.

        Raises:
            EmptyKey, ValueProvided, LeaseProvided: malformed request.
            LeaseNotFound: ``lease_exists`` said no.
            KeyNotFound: ``ignore_value``/``ignore_lease`` on a key that does not exist.
            Whatever ``hook`` raises; the store is then unchanged.
        """
        check_put_request(request)
        if request.lease and lease_exists is not None and not lease_exists(request.lease):
            raise LeaseNotFound()
        self._check_ignore_flags(request)
        write = _Write(self)
        response = write.op_put(request)
        self._run_hook(write, hook)
        return response, self._finish(write)

    def delete_range(
        self, request: DeleteRangeRequest, *, hook: WriteHook | None = None
    ) -> tuple[DeleteRangeResponse, list[Event]]:
        """Delete a key or a range; a new revision only if at least one key was deleted.

        ``hook`` runs only if something was deleted (see ``put``).

        Raises:
            EmptyKey: ``request.key`` is empty.
            Whatever ``hook`` raises; the store is then unchanged.
        """
        check_range_request(request)
        write = _Write(self)
        response = write.op_delete_range(request)
        self._run_hook(write, hook)
        return response, self._finish(write)

    def delete_keys(self, keys: Iterable[bytes]) -> tuple[int, list[Event]]:
        """Delete these keys in one revision, whatever their number: a lease revoke.

        Not subject to ``max_txn_ops`` (etcd's lessor deletes a lease's keys in one write
        txn, outside the txn API). Returns the revision after the write and its events.
        """
        write = _Write(self)
        for key in keys:
            write.op_delete_range(DeleteRangeRequest(key=key))
        events = self._finish(write)
        return self._revision, events

    def txn(
        self,
        request: TxnRequest,
        *,
        lease_exists: LeaseCheck | None = None,
        hook: WriteHook | None = None,
    ) -> tuple[TxnResponse, list[Event]]:
        """Run a transaction atomically, in at most one new revision.

        See ``kv/txn.py`` for the stages. Compares see the state before the txn; ranges in
        the branch see the txn's own earlier writes. ``hook`` runs once after the chosen
        branch, if it changed anything, and sees the whole branch's events (see ``put``).

        Raises:
            TooManyOps, EmptyKey, ValueProvided, LeaseProvided, KeyNotFound (empty op),
            DuplicateKey: the request is malformed (checked before reading anything).
            KeyNotFound, LeaseNotFound: a put on the chosen path cannot be done.
            FutureRevision, Compacted: a range on the chosen path reads an unreadable
                revision.
            Whatever ``hook`` raises; the store is then unchanged.
        """
        check_txn_request(request, self.max_txn_ops)
        check_intervals(request.success)
        check_intervals(request.failure)
        start = self._revision
        path = compare_to_path(request, lambda key, end: self._kvs(key, end, start))

        def check_put(op: RequestOp) -> None:
            if op.request_put is not None:
                self._check_ignore_flags(op.request_put)
                lease = op.request_put.lease
                if lease and lease_exists is not None and not lease_exists(lease):
                    raise LeaseNotFound()

        walk_path(request, path, check_put)  # every put check before any range check
        walk_path(request, path, self._check_range_revision)
        write = _Write(self)
        response = apply_path(write, request, path)
        self._run_hook(write, hook)
        return response, self._finish(write)

    def _check_ignore_flags(self, request: PutRequest) -> None:
        if (request.ignore_value or request.ignore_lease) and not self._kvs(
            request.key, b"", self._revision
        ):
            raise KeyNotFound()

    def _check_range_revision(self, op: RequestOp) -> None:
        request = op.request_range
        if request is None or request.revision == 0:
            return
        if request.revision > self._revision:
            raise FutureRevision()
        if request.revision < self._compact_revision:
            raise Compacted(COMPACTED_MESSAGE)

    def _finish(self, write: _Write) -> list[Event]:
        if write.events:
            self._revision += 1
        return write.events

    def _run_hook(self, write: _Write, hook: WriteHook | None) -> None:
        """Let ``hook`` judge (and extend) a write that changed something; if it raises,
        undo the write and let the exception through. Any exception undoes: a store left
        half-written by a buggy hook would diverge from the other members for good."""
        if hook is None or not write.events:
            return
        try:
            hook(WriteView(write), tuple(write.events))
        except BaseException:
            self._undo(write)
            raise

    def _undo(self, write: _Write) -> None:
        """Take back every change of ``write``, newest first (the index can only take back a
        key's last change, and a derived change may follow the request's own on one key).
        The write's changes are exactly its events: the one at sub revision ``i`` is event
        ``i``, recorded at ``Revision(begin + 1, i)``."""
        main = write.begin + 1
        for sub in range(len(write.events) - 1, -1, -1):
            rev = Revision(main, sub)
            kv: KeyValue = self._backend.pop(rev)
            self._size_bytes -= len(kv.key) + len(kv.value)
            self._index.revert(kv.key, rev)
        write.events.clear()

    def _record(self, rev: Revision, kv: KeyValue) -> None:
        self._backend[rev] = kv
        self._size_bytes += len(kv.key) + len(kv.value)

    # -- compaction --------------------------------------------------------------------------

    def compact(self, request: CompactionRequest) -> CompactionResponse:
        """Forget history before ``request.revision``.

        Reads at any revision ``>=`` it still answer as before; reads before it fail with
        ``Compacted``. Of each key, the version visible at the compaction revision is kept
        if the key was alive then.

        Raises:
            Compacted: ``request.revision`` is not after the previous compaction.
            FutureRevision: ``request.revision`` is past the current revision.
        """
        rev = request.revision
        if rev <= self._compact_revision:
            raise Compacted(COMPACTED_MESSAGE)
        if rev > self._revision:
            raise FutureRevision()
        for gone in self._index.compact(rev):
            kv: KeyValue = self._backend.pop(gone)
            self._size_bytes -= len(kv.key) + len(kv.value)
        self._compact_revision = rev
        return CompactionResponse(header_revision=self._revision)

    # -- snapshots ---------------------------------------------------------------------------

    def to_obj(self) -> dict[str, Any]:
        """The whole store as plain data (dict/list/int/bytes) for any encoder (cbor2).

        ``versions`` lists every kept version in revision order as ``[main, sub, key, value,
        create_revision, version, lease]``; ``create_revision == 0`` marks a tombstone and a
        version's ``mod_revision`` is its ``main``.
        """
        frozen = self.freeze()
        return frozen.to_obj([row for chunk in frozen.version_chunks() for row in chunk])

    def freeze(self) -> FrozenStore:
        """The store as it is now, to encode on another thread while writes go on. Costs two
        C-level copies (the revisions in order, and the revision → version map); versions
        themselves are immutable and shared."""
        return FrozenStore(self._revision, self._compact_revision, list(self._backend),
                           dict.copy(self._backend))

    @classmethod
    def from_obj(
        cls, obj: Mapping[str, Any], *, max_txn_ops: int = DEFAULT_MAX_TXN_OPS
    ) -> MvccStore:
        store = cls(max_txn_ops=max_txn_ops)
        store.restore(obj)
        return store

    def restore(self, obj: Mapping[str, Any]) -> None:
        """Replace the whole state with ``obj`` (from ``to_obj``), in place.

        Raises:
            CorruptData: ``obj`` is not a well-formed store image; the store is unchanged.
        """
        try:
            image = _Image.load(obj)
        except (KeyError, TypeError, ValueError, AssertionError) as exc:
            raise CorruptData(f"kv snapshot: {exc}") from exc
        self._index, self._backend = image.index, image.backend
        self._revision, self._compact_revision = image.revision, image.compact_revision
        self._size_bytes = image.size_bytes


class _Write:
    """One write request in progress (etcd's ``storeTxnWrite``); implements ``TxnOps``."""

    __slots__ = ("_store", "begin", "events")

    def __init__(self, store: MvccStore) -> None:
        self._store = store
        self.begin = store.revision
        self.events: list[Event] = []

    @property
    def revision(self) -> int:
        """What a read sees now: the start revision, or the new one once it has changes."""
        return self.begin + 1 if self.events else self.begin

    def _next(self) -> Revision:
        return Revision(self.begin + 1, len(self.events))

    def op_range(self, request: RangeRequest) -> RangeResponse:
        return self._store._range(request, self.revision)

    def read(
        self, key: bytes, range_end: bytes, *, reverse: bool = False, limit: int = 0
    ) -> list[KeyValue]:
        """The live versions as this write leaves them so far."""
        return self._store._kvs(key, range_end, self.begin + 1, reverse=reverse, limit=limit)

    def op_put(self, request: PutRequest) -> PutResponse:
        store = self._store
        ki = store._index.key_index(request.key)
        latest = ki.latest() if ki is not None else None
        prev: KeyValue | None = store._backend[latest] if latest is not None else None
        rev = self._next()
        value, lease = request.value, request.lease
        if request.ignore_value or request.ignore_lease:
            assert prev is not None, "ignore_* on a missing key passes the pre-checks"
            value = prev.value if request.ignore_value else value
            lease = prev.lease if request.ignore_lease else lease
        if prev is None:
            create, version = rev.main, 1
        else:
            create, version = prev.create_revision, prev.version + 1
        kv = KeyValue(request.key, value, create, rev.main, version, lease)
        store._index.put(request.key, rev)
        store._record(rev, kv)
        self.events.append(Event(EventType.PUT, kv, prev))
        return PutResponse(header_revision=rev.main, prev_kv=prev if request.prev_kv else None)

    def op_delete_range(self, request: DeleteRangeRequest) -> DeleteRangeResponse:
        store = self._store
        doomed = store._kvs(request.key, request.range_end, self.begin + 1)
        for kv in doomed:
            rev = self._next()
            store._index.tombstone(kv.key, rev)
            gone = tombstone(kv.key, rev.main)
            store._record(rev, gone)
            self.events.append(Event(EventType.DELETE, gone, kv))
        return DeleteRangeResponse(
            header_revision=self.revision,
            deleted=len(doomed),
            prev_kvs=tuple(doomed) if request.prev_kv else (),
        )


class WriteView:
    """What a write hook sees of the write in progress: reads of the state *with* this
    write's changes, and derived changes made in the same revision.

    Derived changes are the hook's own bookkeeping, so they skip the request checks
    (``max_txn_ops``, duplicate keys, lease existence): the hook answers for them. They
    become further events of the revision, after the request's own; the hook is not called
    again for them.
    """

    __slots__ = ("_write",)

    def __init__(self, write: _Write) -> None:
        self._write = write

    @property
    def revision(self) -> int:
        """The revision this write will commit as."""
        return self._write.begin + 1

    def get(self, key: bytes) -> KeyValue | None:
        found = self._write.read(key, b"")
        return found[0] if found else None

    def range(
        self, key: bytes, range_end: bytes, *, reverse: bool = False, limit: int = 0
    ) -> list[KeyValue]:
        """The live keys in ``[key, range_end)`` (``b"\\0"``: every key from ``key`` on),
        key-ordered (descending if ``reverse``), the first ``limit`` of them if ``limit`` >
        0. Like any range before compaction, it walks the deleted keys of the range too:
        ``reverse`` with a ``limit`` finds the newest of a series of keys without walking
        the old ones."""
        return self._write.read(key, range_end, reverse=reverse, limit=limit)

    def put(self, key: bytes, value: bytes, lease: int = 0) -> None:
        """A derived put; ``lease`` is not checked against the lessor."""
        self._write.op_put(PutRequest(key=key, value=value, lease=lease))

    def delete(self, key: bytes) -> bool:
        """A derived delete of one key; whether it existed."""
        return self._write.op_delete_range(DeleteRangeRequest(key=key)).deleted > 0


def _filter(kvs: list[KeyValue], request: RangeRequest) -> list[KeyValue]:
    """etcd's min/max mod/create revision filters (0 means "no bound")."""
    lo_mod, hi_mod = request.min_mod_revision, request.max_mod_revision
    lo_create, hi_create = request.min_create_revision, request.max_create_revision
    if not (lo_mod or hi_mod or lo_create or hi_create):
        return kvs
    return [
        kv
        for kv in kvs
        if not (hi_mod and kv.mod_revision > hi_mod)
        and not (lo_mod and kv.mod_revision < lo_mod)
        and not (hi_create and kv.create_revision > hi_create)
        and not (lo_create and kv.create_revision < lo_create)
    ]


class FrozenStore:
    """A point-in-time copy of a store's versions (``MvccStore.freeze``): reading it needs
    nothing from the live store, so any thread may encode it."""

    CHUNK = 4096

    def __init__(self, revision: int, compact_revision: int, revisions: list[Revision],
                 versions: dict[Revision, KeyValue]) -> None:
        self.revision = revision
        self.compact_revision = compact_revision
        self._revisions = revisions
        self._versions = versions

    def to_obj(self, versions: Any) -> dict[str, Any]:
        """``MvccStore.to_obj``'s image with ``versions`` (the rows, or something an encoder
        expands to them, e.g. a ``wire.lazy_array.LazyArray`` of ``version_chunks()``)."""
        return {"format": SNAPSHOT_FORMAT, "revision": self.revision,
                "compact_revision": self.compact_revision, "versions": versions}

    def version_chunks(self) -> Iterator[list[list[Any]]]:
        """The ``versions`` rows in revision order, ``CHUNK`` at a time."""
        revisions, versions = self._revisions, self._versions
        for start in range(0, len(revisions), self.CHUNK):
            rows = []
            for rev in revisions[start:start + self.CHUNK]:
                kv = versions[rev]
                rows.append([rev.main, rev.sub, kv.key, kv.value, kv.create_revision,
                             kv.version, kv.lease])
            yield rows


class _Image:
    """A store image read back from plain data and checked, before it replaces anything."""

    def __init__(self) -> None:
        self.index = TreeIndex()
        self.backend: SortedDict = SortedDict()
        self.revision = 1
        self.compact_revision = -1
        self.size_bytes = 0

    @classmethod
    def load(cls, obj: Mapping[str, Any]) -> _Image:
        image = cls()
        if obj["format"] != SNAPSHOT_FORMAT:
            raise ValueError(f"unknown format {obj['format']!r}")
        image.revision = _int(obj["revision"])
        image.compact_revision = _int(obj["compact_revision"])
        if image.revision < 1 or image.compact_revision > image.revision:
            raise ValueError("revision/compact_revision out of order")
        # Built in bulk (a million versions is a restart's critical path): the records
        # come in revision order, so the backend is made from one sorted list and the key
        # index from a plain dict sorted once, instead of a sorted insert per record.
        last = Revision(0, 0)
        top = image.revision
        keys: dict[bytes, KeyIndex] = {}
        revisions: list[Revision] = []
        versions: list[KeyValue] = []
        size = 0
        for record in obj["versions"]:
            main, sub, key, value, create, version, lease = record
            rev = Revision(_int(main), _int(sub))
            key, value = bytes(key), bytes(value)
            create, version, lease = _int(create), _int(version), _int(lease)
            if rev <= last or rev.main > top or not key:
                raise ValueError(f"bad version record at {rev}")
            last = rev
            ki = keys.get(key)
            if create == 0:
                if ki is None or ki.latest() is None:
                    raise ValueError(f"tombstone of a missing key at {rev}")
                ki.tombstone(rev)
                kv = tombstone(key, rev.main)
            else:
                if version < 1 or create > rev.main:
                    raise ValueError(f"bad version record at {rev}")
                if ki is None:
                    ki = keys[key] = KeyIndex(key)
                ki.put(rev)
                kv = KeyValue(key, value, create, rev.main, version, lease)
            revisions.append(rev)
            versions.append(kv)
            size += len(key) + len(kv.value)
        image.backend = SortedDict(zip(revisions, versions, strict=True))
        image.index = TreeIndex.of(keys)
        image.size_bytes = size
        return image


def _int(value: object) -> int:
    if type(value) is not int:
        raise TypeError(f"expected an int, got {type(value).__name__}")
    return value
