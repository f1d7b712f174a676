"""``MvccStore``: the multi-version key-value store, with etcd v3.4's semantics.

The state is three things: the current ``revision``, the ``TreeIndex`` (key → its versions,
tombstones included, oldest first) and the *log*: the same versions in revision order, which
is what a watch replays and a snapshot writes. Every version not yet compacted away is in
both. A read at revision ``r`` asks the index which version of each key was visible at ``r``.

Memory is the constraint at scale (a member holds a million keys): a version is one
``KeyValue`` referenced from two lists, and its ``(main, sub)`` revision is not an object of
its own. ``main`` is the version's ``mod_revision``; ``sub`` orders the changes of one write
and matters only to the snapshot image (the changes of one key keep their order in the
index, the log keeps everyone's), so the log keeps it in a parallel ``array`` of C ints, 4
bytes a version. A revision-keyed dict (the old "backend") cost ~250 bytes a version more.

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

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from itertools import islice
from operator import attrgetter
from typing import Any

from discoverd.errors import Compacted, CorruptData, FutureRevision, KeyNotFound, LeaseNotFound
from discoverd.kv.index import TreeIndex, mod_revision
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
from discoverd.kv.revision import Event, EventType, KeyValue, tombstone
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
        self._log: list[KeyValue] = []  # every kept version, in (main, sub) revision order
        self._subs = _sub_array()  # the sub revision of each version in _log
        self._revision = 1  # an empty etcd reports revision 1; the first write makes 2
        self._compact_revision = -1  # etcd's "never compacted"
        self._size_bytes = 0

    def __repr__(self) -> str:
        return (
            f"<MvccStore revision={self._revision} compact_revision={self.compact_revision}"
            f" keys={len(self._index)} versions={len(self._log)}"
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
        low = max(start_revision, 0)
        high = end_revision if end_revision > 0 else None
        events: list[Event] = []
        if high is not None and high < low:
            return events
        for kv in self._versions(low, high, key, range_end):
            if 0 < limit <= len(events) and kv.mod_revision != events[-1].kv.mod_revision:
                break
            ki = self._index.key_index(kv.key)
            assert ki is not None, f"logged version of an unindexed key {kv.key!r}"
            prev = ki.previous(kv)
            kind = EventType.DELETE if kv.is_tombstone else EventType.PUT
            events.append(Event(kind, kv, prev))
        return events

    def _versions(
        self, low: int, high: int | None, key: bytes | None, range_end: bytes
    ) -> Iterator[KeyValue]:
        """The kept versions with main revisions in ``[low, high]`` (``None``: no end) of
        the selected keys, in revision order."""
        if key is not None and not range_end:
            versions: list[KeyValue] = self._index.key_index(key) or []
        else:
            versions = self._log
        start = bisect_left(versions, low, key=mod_revision)
        stop = None if high is None else bisect_right(versions, high, key=mod_revision)
        if versions is not self._log:
            yield from versions[start:stop]
            return
        end = None if range_end == FROM_KEY else range_end
        for kv in islice(versions, start, stop):
            if key is None or (key <= kv.key and (end is None or kv.key < end)):
                yield kv

    def _kvs(
        self, key: bytes, range_end: bytes, at: int, *, reverse: bool = False, limit: int = 0
    ) -> list[KeyValue]:
        """The versions visible at revision ``at`` of ``key`` (no ``range_end``) or of the
        keys in ``[key, range_end)`` (``b"\\0"``: every key from ``key`` on), key-ordered
        (descending if ``reverse``); the first ``limit`` only if ``limit`` > 0."""
        if not range_end:
            kv = self._index.get(key, at)
            return [kv] if kv is not None else []
        end = None if range_end == FROM_KEY else range_end
        visible = self._index.visible(at, key, end, reverse=reverse)
        return list(islice(visible, limit) if limit > 0 else visible)

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
        The write's changes are exactly its events, and the last ones of the log."""
        count = len(write.events)
        if not count:
            return
        for kv in reversed(self._log[-count:]):
            self._size_bytes -= len(kv.key) + len(kv.value)
            self._index.revert(kv)
        del self._log[-count:], self._subs[-count:]
        write.events.clear()

    def _record(self, sub: int, kv: KeyValue) -> None:
        """Log the change ``kv``, the write's ``sub``-th, newest in the store."""
        self._log.append(kv)
        self._subs.append(sub)
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
        removed = self._index.compact(rev)
        if removed:
            self._drop_from_log(removed, rev)
        self._compact_revision = rev
        return CompactionResponse(header_revision=self._revision)

    def _drop_from_log(self, removed: list[KeyValue], at_main: int) -> None:
        """Take the versions ``removed`` (by identity: each version is its own object) out
        of the log. All of them are at or before ``at_main``, so only the log up to there is
        rewritten; a compaction visits every key anyway, this is no worse."""
        self._size_bytes -= sum(len(kv.key) + len(kv.value) for kv in removed)
        gone = {id(kv) for kv in removed}
        log, subs = self._log, self._subs
        cut = bisect_right(log, at_main, key=mod_revision)
        kept = [i for i in range(cut) if id(log[i]) not in gone]
        log[:cut] = [log[i] for i in kept]
        subs[:cut] = _sub_array(subs[i] for i in kept)

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
        C-level copies (the log and its sub revisions); versions themselves are immutable
        and shared."""
        return FrozenStore(self._revision, self._compact_revision, self._log.copy(),
                           self._subs[:])

    @classmethod
    def from_obj(
        cls, obj: Mapping[str, Any], *, max_txn_ops: int = DEFAULT_MAX_TXN_OPS
    ) -> MvccStore:
        store = cls(max_txn_ops=max_txn_ops)
        store.restore(obj)
        return store

    def restore(self, obj: Mapping[str, Any]) -> None:
        """Replace the whole state with ``obj`` (from ``to_obj``), in place.

        ``obj["versions"]`` may also be what ``load_versions`` made of the rows, as a
        streaming decoder gives it (the store then takes its structures over: restore from
        it once).

        Raises:
            CorruptData: ``obj`` is not a well-formed store image; the store is unchanged.
        """
        try:
            image = _Image(obj)
        except _IMAGE_ERRORS as exc:
            raise CorruptData(f"kv snapshot: {exc}") from exc
        versions = image.versions
        self._index, self._log, self._subs = versions.index, versions.log, versions.subs
        self._revision, self._compact_revision = image.revision, image.compact_revision
        self._size_bytes = versions.size_bytes


class _Write:
    """One write request in progress (etcd's ``storeTxnWrite``); implements ``TxnOps``."""

    __slots__ = ("_store", "begin", "events", "main")

    def __init__(self, store: MvccStore) -> None:
        self._store = store
        self.begin = store.revision
        self.main = self.begin + 1
        """The main revision of this write's changes: one int object for all of them (and
        for their versions' ``mod_revision`` and new keys' ``create_revision``)."""
        self.events: list[Event] = []

    @property
    def revision(self) -> int:
        """What a read sees now: the start revision, or the new one once it has changes."""
        return self.main if self.events else self.begin

    def op_range(self, request: RangeRequest) -> RangeResponse:
        return self._store._range(request, self.revision)

    def read(
        self, key: bytes, range_end: bytes, *, reverse: bool = False, limit: int = 0
    ) -> list[KeyValue]:
        """The live versions as this write leaves them so far."""
        return self._store._kvs(key, range_end, self.main, reverse=reverse, limit=limit)

    def op_put(self, request: PutRequest) -> PutResponse:
        store = self._store
        prev = store._index.latest(request.key)
        main = self.main
        value, lease = request.value, request.lease
        if request.ignore_value or request.ignore_lease:
            assert prev is not None, "ignore_* on a missing key passes the pre-checks"
            value = prev.value if request.ignore_value else value
            lease = prev.lease if request.ignore_lease else lease
        if prev is None:
            create, version = main, 1
        else:
            create, version = prev.create_revision, prev.version + 1
        kv = KeyValue(request.key, value, create, main, version, lease)
        store._index.put(kv)
        store._record(len(self.events), kv)
        self.events.append(Event(EventType.PUT, kv, prev))
        return PutResponse(header_revision=main, prev_kv=prev if request.prev_kv else None)

    def op_delete_range(self, request: DeleteRangeRequest) -> DeleteRangeResponse:
        store = self._store
        doomed = store._kvs(request.key, request.range_end, self.main)
        for kv in doomed:
            gone = tombstone(kv.key, self.main)
            store._index.tombstone(gone)
            store._record(len(self.events), gone)
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
        return self._write.main

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

    def __init__(self, revision: int, compact_revision: int, log: list[KeyValue],
                 subs: array[int]) -> None:
        self.revision = revision
        self.compact_revision = compact_revision
        self._log = log
        self._subs = subs

    def to_obj(self, versions: Any) -> dict[str, Any]:
        """``MvccStore.to_obj``'s image with ``versions`` (the rows, or something an encoder
        expands to them, e.g. a ``wire.lazy_array.LazyArray`` of ``version_chunks()``)."""
        return {"format": SNAPSHOT_FORMAT, "revision": self.revision,
                "compact_revision": self.compact_revision, "versions": versions}

    def version_chunks(self) -> Iterator[list[list[Any]]]:
        """The ``versions`` rows in revision order, ``CHUNK`` at a time."""
        log, subs = self._log, self._subs
        for start in range(0, len(log), self.CHUNK):
            stop = start + self.CHUNK
            yield [[kv.mod_revision, sub, kv.key, kv.value, kv.create_revision, kv.version,
                     kv.lease] for kv, sub in zip(log[start:stop], subs[start:stop],
                                                  strict=True)]


class LoadedVersions:
    """The ``versions`` rows of a store image, read into the store's structures and checked.

    ``build`` takes any iterable of rows, a list or an iterator that decodes them one at a
    time, and holds on to no row: fed by a streaming decoder (``wire.lazy_array.load``, as
    ``KvMachine.restore`` does), a restore never has the whole image's rows in memory at
    once. A million decoded rows held together cost ~150 MB more at the peak than the
    store they become, and CPython keeps that memory (its arenas stay fragmented) for the
    member's life.
    """

    __slots__ = ("index", "last_main", "log", "size_bytes", "subs")

    def __init__(self) -> None:
        self.index = TreeIndex()
        self.log: list[KeyValue] = []
        self.subs = _sub_array()
        self.size_bytes = 0
        self.last_main = 0
        """The main revision of the last row; the image's revision may not be below it."""

    @classmethod
    def build(cls, rows: Iterable[Any]) -> LoadedVersions:
        """Read ``rows`` (see ``MvccStore.to_obj``) in revision order.

        Raises:
            ValueError, TypeError, OverflowError: a malformed row, or rows out of order.
        """
        # Built in bulk (a million versions is a restart's critical path): the log is
        # appended to and the key index is filled unsorted and sorted once, instead of a
        # sorted insert per record. The versions of one revision share one int object for
        # it, as the writes that made them did.
        loaded = cls()
        last_main, last_sub = 0, 0
        index = TreeIndex.bulk()
        log, subs = loaded.log, loaded.subs
        size = 0
        for record in rows:
            main, sub, key, value, create, version, lease = record
            main, sub, key, value = _int(main), _int(sub), bytes(key), bytes(value)
            create, version, lease = _int(create), _int(version), _int(lease)
            if main == last_main and sub > last_sub:
                main = last_main
            elif main <= last_main or sub < 0 or not key:
                raise ValueError(f"bad version record at ({main}, {sub})")
            last_main, last_sub = main, sub
            if create == 0:
                if index.latest(key) is None:
                    raise ValueError(f"tombstone of a missing key at ({main}, {sub})")
                kv = tombstone(key, main)
                index.tombstone(kv)
            else:
                if version < 1 or create > main:
                    raise ValueError(f"bad version record at ({main}, {sub})")
                kv = KeyValue(key, value, main if create == main else create, main, version,
                              lease)
                index.put(kv)
            log.append(kv)
            subs.append(sub)
            size += len(key) + len(kv.value)
        index.sort()
        loaded.index = index
        loaded.size_bytes = size
        loaded.last_main = last_main
        return loaded


def load_versions(rows: Iterable[Any]) -> LoadedVersions:
    """``LoadedVersions.build(rows)`` for a decoder to call as it goes; what it returns may
    stand for the rows in the image given to ``MvccStore.restore``.

    Raises:
        CorruptData: the rows are not a store's versions.
    """
    try:
        return LoadedVersions.build(rows)
    except _IMAGE_ERRORS as exc:
        raise CorruptData(f"kv snapshot: {exc}") from exc


_IMAGE_ERRORS = (KeyError, TypeError, ValueError, OverflowError, AssertionError)
"""What reading a malformed image raises (``CorruptData`` to the caller)."""


class _Image:
    """A store image read back from plain data and checked, before it replaces anything."""

    def __init__(self, obj: Mapping[str, Any]) -> None:
        if obj["format"] != SNAPSHOT_FORMAT:
            raise ValueError(f"unknown format {obj['format']!r}")
        self.revision = _int(obj["revision"])
        self.compact_revision = _int(obj["compact_revision"])
        if self.revision < 1 or self.compact_revision > self.revision:
            raise ValueError("revision/compact_revision out of order")
        versions = obj["versions"]
        if not isinstance(versions, LoadedVersions):
            versions = LoadedVersions.build(versions)
        if versions.last_main > self.revision:
            raise ValueError(f"a version at {versions.last_main}, past the image's revision")
        self.versions = versions


def _sub_array(subs: Iterable[int] = ()) -> array[int]:
    """An array of sub revisions: C unsigned ints, 4 bytes each (a write would need more
    than 4 billion changes to overflow it, and ``array`` refuses that loudly)."""
    return array("I", subs)


def _int(value: object) -> int:
    if type(value) is not int:
        raise TypeError(f"expected an int, got {type(value).__name__}")
    return value
