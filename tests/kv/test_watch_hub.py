"""The watch hub (kv/watch.py) against the real MvccStore: etcd's six watch guarantees by name,
then ranges, filters, prev_kv, catch-up, compaction, restore, cancel/remove, fan-out, a
property test against history, and the memory bound.

The oracle is the list of events the store's writes returned (``Harness.log``), which the
store tests prove equal to ``store.history``: a watcher must receive exactly that list,
filtered by its range, its filters and its start revision — no more, no fewer, in order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from kv_helpers import prefix_end

from discoverd.kv import (
    CompactionRequest,
    DeleteRangeRequest,
    Event,
    EventType,
    MvccStore,
    PutRequest,
    RequestOp,
    TxnRequest,
)
from discoverd.kv.watch import (
    BatchKind,
    WatchBatch,
    WatchFilter,
    WatchHub,
    WatchRequest,
    WatchStats,
)

FROM_KEY = b"\x00"

# -- harness -----------------------------------------------------------------------------------


def _matches(request: WatchRequest, key: bytes) -> bool:
    if not request.range_end:
        return key == request.key
    if request.range_end == FROM_KEY:
        return key >= request.key
    return request.key <= key < request.range_end


def expected(log: Iterable[Event], request: WatchRequest, start: int) -> list[Event]:
    """What a watcher of ``request`` starting at ``start`` must receive, computed naively."""
    out = []
    for ev in log:
        if ev.kv.mod_revision < start or not _matches(request, ev.kv.key):
            continue
        if ev.type is EventType.PUT and WatchFilter.NOPUT in request.filters:
            continue
        if ev.type is EventType.DELETE and WatchFilter.NODELETE in request.filters:
            continue
        out.append(ev if request.prev_kv else Event(ev.type, ev.kv))
    return out


@dataclass
class Stream:
    """What one client received, with the per-batch promises checked as batches arrive."""

    request: WatchRequest
    start: int
    batches: list[WatchBatch] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    @property
    def canceled(self) -> WatchBatch | None:
        last = self.batches[-1] if self.batches else None
        return last if last is not None and last.kind is BatchKind.CANCELED else None

    @property
    def revision(self) -> int:
        """The last revision a batch said was fully delivered."""
        told = [b.revision for b in self.batches if b.kind is not BatchKind.CANCELED]
        return told[-1] if told else 0

    def receive(self, batches: list[WatchBatch], log: list[Event]) -> None:
        for batch in batches:
            assert self.canceled is None, "nothing may follow a CANCELED batch"
            if batch.kind is BatchKind.CANCELED:
                self.batches.append(batch)
                continue
            assert batch.revision >= self.revision, "batch revisions go backwards"
            if batch.kind is BatchKind.PROGRESS:
                assert not batch.events
            else:
                assert batch.events, "an EVENTS batch without events"
            for ev in batch.events:
                assert ev.kv.mod_revision <= batch.revision
            self.events.extend(batch.events)
            self.batches.append(batch)
            # Bookmarkable: everything at or below the batch's revision is now delivered.
            want = [
                e
                for e in expected(log, self.request, self.start)
                if e.kv.mod_revision <= batch.revision
            ]
            assert self.events == want


class Harness:
    """A store, a hub over it, and the streams of the watchers added through it."""

    def __init__(self, **hub_options: int) -> None:
        self.store = MvccStore()
        self.hub = WatchHub(self.store, **hub_options)
        self.log: list[Event] = []
        self.streams: dict[int, Stream] = {}
        self.woken: set[int] = set()

    # writes: each applied to the store, then notified, as the shell does
    def apply(self, events: list[Event]) -> list[Event]:
        self.log.extend(events)
        if events:
            self.woken |= self.hub.notify(events)
        return events

    def put(self, key: bytes, value: bytes = b"v") -> int:
        self.apply(self.store.put(PutRequest(key=key, value=value))[1])
        return self.store.revision

    def delete(self, key: bytes, range_end: bytes = b"") -> int:
        self.apply(self.store.delete_range(DeleteRangeRequest(key=key, range_end=range_end))[1])
        return self.store.revision

    def txn(self, *ops: PutRequest | DeleteRangeRequest) -> int:
        request = TxnRequest(success=[RequestOp.of(op) for op in ops])
        self.apply(self.store.txn(request)[1])
        return self.store.revision

    def revoke(self, keys: Iterable[bytes]) -> int:
        """A lease revoke: every key deleted in one revision, past max_txn_ops."""
        self.apply(self.store.delete_keys(keys)[1])
        return self.store.revision

    def compact(self, revision: int) -> set[int]:
        self.store.compact(CompactionRequest(revision=revision))
        return self.hub.on_compact()

    # watchers
    def watch(self, key: bytes, range_end: bytes = b"", **options: object) -> int:
        request = WatchRequest(key, range_end, **options)  # type: ignore[arg-type]
        wid = self.hub.add(request)
        self.streams[wid] = Stream(request, request.start_revision or self.store.revision + 1)
        return wid

    def take(self, wid: int, max_events: int = 1000) -> list[WatchBatch]:
        pending = self.hub.has_pending(wid)
        batches = self.hub.take(wid, max_events)
        assert bool(batches) == pending, "has_pending disagrees with take"
        for batch in batches:
            # At most max_events, unless one revision alone is larger (it is never split).
            revisions = {e.kv.mod_revision for e in batch.events}
            assert len(batch.events) <= max_events or len(revisions) == 1
        assert [b.kind for b in batches].count(BatchKind.EVENTS) <= 1
        self.streams[wid].receive(batches, self.log)
        return batches

    def drain(self, wid: int, max_events: int = 1000) -> list[WatchBatch]:
        got: list[WatchBatch] = []
        for _ in range(100_000):
            batches = self.take(wid, max_events)
            if not batches:
                return got
            got.extend(batches)
        raise AssertionError("take never ran dry")

    def events(self, wid: int) -> list[Event]:
        return self.streams[wid].events

    def want(self, wid: int) -> list[Event]:
        s = self.streams[wid]
        return expected(self.log, s.request, s.start)


def keys_of(events: Iterable[Event]) -> list[tuple[int, bytes, str]]:
    return [(e.kv.mod_revision, e.kv.key, e.type.name) for e in events]


# -- etcd's six guarantees ---------------------------------------------------------------------


def test_guarantee_ordered() -> None:
    """Events arrive by revision, and inside a revision in the order the txn made them (not
    key order), whatever the batch size and whichever path (live or history) carried them."""
    h = Harness()
    live = h.watch(b"p/", prefix_end(b"p/"))
    h.put(b"p/m")
    h.txn(PutRequest(b"p/z"), PutRequest(b"p/a"), PutRequest(b"q"), PutRequest(b"p/k"))
    h.delete(b"p/", prefix_end(b"p/"))
    h.put(b"p/b")
    past = h.watch(b"p/", prefix_end(b"p/"), start_revision=2)
    for wid in (live, past):
        h.drain(wid, max_events=2)
        got = keys_of(h.events(wid))
        assert got == keys_of(h.want(wid))
        assert [k for _, k, _ in got[1:4]] == [b"p/z", b"p/a", b"p/k"]
        assert [r for r, _, _ in got] == sorted(r for r, _, _ in got)
        revisions = [b.revision for b in h.streams[wid].batches]
        assert revisions == sorted(revisions)


def test_guarantee_unique() -> None:
    """No event twice: not across the switch from history to live, not when the store ran
    ahead of the hub's notifications when the watcher was added."""
    h = Harness(catchup_revisions=2)
    for i in range(6):
        h.put(b"k%d" % (i % 3))
    wid = h.watch(b"k", FROM_KEY, start_revision=3)
    h.take(wid, max_events=2)  # part of the history
    h.put(b"k9")  # arrives while it is still behind: must come from history, once
    h.take(wid, max_events=1)
    h.drain(wid)
    h.put(b"k1")  # live now
    h.drain(wid)
    seen = keys_of(h.events(wid))
    assert len(seen) == len(set(seen))
    assert h.events(wid) == h.want(wid)

    # The store applied a write the hub has not been told of yet.
    response, pending = h.store.put(PutRequest(key=b"k5"))
    h.log.extend(pending)
    fresh = h.watch(b"k5")  # from the store's next revision: not this write
    exact = h.watch(b"k5", start_revision=response.header_revision)  # exactly this write
    h.woken |= h.hub.notify(pending)
    h.put(b"k5")
    for w in (fresh, exact):
        h.drain(w)
        assert h.events(w) == h.want(w)
    assert [e.kv.mod_revision for e in h.events(exact)] == [
        response.header_revision,
        h.store.revision,
    ]
    assert [e.kv.mod_revision for e in h.events(fresh)] == [h.store.revision]


def test_guarantee_reliable() -> None:
    """No gap: a watcher that stops reading is moved to history once its buffer is full and
    comes back live with every event exactly once; a reading watcher is not affected."""
    h = Harness(max_buffered_events=3, catchup_revisions=2)
    slow = h.watch(b"a", b"z")
    fast = h.watch(b"a", b"z")
    for i in range(20):
        h.put(b"k%02d" % i)
        h.drain(fast)
    assert h.hub.stats.unsynced == 1
    assert h.hub.stats.buffered_events == 3  # what slow had before it fell behind
    assert h.events(fast) == h.want(fast)
    h.take(slow, max_events=2)
    h.put(b"k20")  # while slow reads history
    h.drain(slow, max_events=2)
    assert h.hub.stats.unsynced == 0
    h.put(b"k21")  # and live again
    h.drain(slow)
    assert keys_of(h.events(slow)) == keys_of(h.want(slow))
    assert len(h.events(slow)) == 22


def test_guarantee_atomic() -> None:
    """A revision is never split: a txn comes in one batch even with max_events 1, a lease
    revoke of 50 keys too, live, from history, and when it alone overflows the buffer."""
    h = Harness(max_buffered_events=10)
    live = h.watch(b"s/", prefix_end(b"s/"))
    keys = [b"s/%02d" % i for i in range(50)]
    for k in keys:
        h.put(k)
    h.drain(live)
    txn_rev = h.txn(PutRequest(b"s/00"), PutRequest(b"s/01"), PutRequest(b"s/new"))
    revoke_rev = h.revoke(reversed(keys))
    past = h.watch(b"s/", prefix_end(b"s/"), start_revision=txn_rev)
    for wid in (live, past):
        batches = [b for b in h.drain(wid, max_events=1) if b.events]
        assert [len(b.events) for b in batches] == [3, 50]
        assert {e.kv.mod_revision for e in batches[0].events} == {txn_rev}
        assert {e.kv.mod_revision for e in batches[1].events} == {revoke_rev}
        assert batches[1].revision == revoke_rev
        assert h.events(wid)[-50:] == h.want(wid)[-50:]


def test_guarantee_resumable() -> None:
    """A new watcher from the last delivered revision + 1 sees exactly the rest."""
    h = Harness()
    first = h.watch(b"r", FROM_KEY)
    for i in range(12):
        if i % 4 == 3:
            h.txn(PutRequest(b"r%d" % i), PutRequest(b"s%d" % i))
        else:
            h.put(b"r%d" % i)
    h.take(first, max_events=5)
    h.take(first, max_events=2)
    told = h.streams[first].revision
    assert 2 < told < h.store.revision
    resumed = h.watch(b"r", FROM_KEY, start_revision=told + 1)
    h.put(b"r-last")
    h.drain(first)
    h.drain(resumed)
    delivered = len([e for e in h.events(first) if e.kv.mod_revision <= told])
    assert h.events(first)[delivered:] == h.events(resumed)
    assert h.events(first)[:delivered] + h.events(resumed) == h.want(first)


def test_guarantee_bookmarkable() -> None:
    """A PROGRESS batch carries the current revision, only when nothing is pending before
    it, only to watchers that asked, never twice for one revision — and resuming after it
    misses nothing."""
    h = Harness()
    watcher = h.watch(b"b", progress_notify=True)
    silent = h.watch(b"b")
    h.put(b"other")
    assert h.hub.periodic_progress() == {watcher}
    assert h.hub.periodic_progress() == set()  # already queued
    [batch] = h.drain(watcher)
    assert batch == WatchBatch(BatchKind.PROGRESS, revision=h.store.revision)
    assert h.hub.periodic_progress() == set()  # already told this revision
    assert h.hub.periodic_progress(repeat_idle=True) == {watcher}  # idle: tell it again
    assert [b.kind for b in h.drain(watcher)] == [BatchKind.PROGRESS]
    assert h.drain(silent) == []

    # Events pending: progress waits behind them, at the revision after them.
    h.put(b"b")
    h.put(b"other")
    assert h.hub.periodic_progress() == set()  # it has events to take first
    assert h.hub.request_progress(watcher)
    h.put(b"other")
    batches = h.drain(watcher)
    assert [b.kind for b in batches] == [BatchKind.EVENTS, BatchKind.PROGRESS]
    assert [b.revision for b in batches] == [h.store.revision] * 2
    bookmark = batches[-1].revision

    # Resume from the bookmark.
    h.put(b"b")
    resumed = h.watch(b"b", start_revision=bookmark + 1)
    h.drain(resumed)
    h.drain(watcher)
    assert keys_of(h.events(resumed)) == [(h.store.revision, b"b", "PUT")]

    # An unsynced watcher owes its progress until it has caught up.
    behind = h.watch(b"b", start_revision=2)
    assert h.hub.request_progress(behind)
    batches = h.drain(behind)
    assert [b.kind for b in batches] == [BatchKind.EVENTS, BatchKind.PROGRESS]
    assert batches[-1].revision == h.store.revision
    assert h.hub.request_progress(12345) is False


# -- ranges, filters, prev_kv ------------------------------------------------------------------


def test_key_prefix_and_from_key_ranges() -> None:
    h = Harness()
    one = h.watch(b"a/b")
    prefix = h.watch(b"a/", prefix_end(b"a/"))
    from_key = h.watch(b"a/c", FROM_KEY)
    everything = h.watch(FROM_KEY, FROM_KEY)
    empty = h.watch(b"z", b"a")  # range_end before key: nothing
    for key in (b"a", b"a/b", b"a/bb", b"a/c", b"b", b"a/", b"\xff"):
        h.put(key)
    h.revoke([b"a/b", b"a/c", b"b"])
    for wid in h.streams:
        h.drain(wid)
        assert h.events(wid) == h.want(wid)
    assert [e.kv.key for e in h.events(one)] == [b"a/b", b"a/b"]
    assert [e.kv.key for e in h.events(prefix)] == [b"a/b", b"a/bb", b"a/c", b"a/", b"a/b", b"a/c"]
    assert [e.kv.key for e in h.events(from_key)] == [b"a/c", b"b", b"\xff", b"a/c", b"b"]
    assert len(h.events(everything)) == 10
    assert h.events(empty) == []


def test_filters() -> None:
    h = Harness()
    no_put = h.watch(b"f", filters=frozenset({WatchFilter.NOPUT}))
    no_delete = h.watch(b"f", filters=frozenset({WatchFilter.NODELETE}))
    neither = h.watch(b"f", filters=frozenset(WatchFilter))
    h.put(b"f")
    h.delete(b"f")
    h.put(b"f")
    assert neither not in h.woken  # filtered out entirely: never woken
    for wid in (no_put, no_delete):
        h.drain(wid)
        assert h.events(wid) == h.want(wid)
    assert [e.type for e in h.events(no_put)] == [EventType.DELETE]
    assert [e.type for e in h.events(no_delete)] == [EventType.PUT, EventType.PUT]
    # A filtered revision still counts as delivered: the batch says the latest revision.
    assert h.streams[no_put].batches[-1].revision == h.store.revision
    assert h.drain(neither) == []


def test_prev_kv_on_and_off() -> None:
    h = Harness()
    with_prev = h.watch(b"p", prev_kv=True)
    without = h.watch(b"p")
    h.put(b"p", b"1")
    h.put(b"p", b"2")
    h.delete(b"p")
    past_with = h.watch(b"p", prev_kv=True, start_revision=2)
    past_without = h.watch(b"p", start_revision=2)
    for wid in (with_prev, past_with):
        h.drain(wid)
        prevs = [e.prev_kv.value if e.prev_kv else None for e in h.events(wid)]
        assert prevs == [None, b"1", b"2"]
    for wid in (without, past_without):
        h.drain(wid)
        assert [e.prev_kv for e in h.events(wid)] == [None, None, None]
        assert [e.kv.value for e in h.events(wid)] == [b"1", b"2", b""]


# -- start revisions, compaction, restore ------------------------------------------------------


def test_start_in_the_past_then_live() -> None:
    h = Harness(catchup_revisions=3)
    for i in range(10):
        h.put(b"x", b"%d" % i)
    wid = h.watch(b"x", start_revision=4)
    assert h.hub.stats.unsynced == 1
    h.take(wid, max_events=4)
    h.put(b"x", b"live1")
    h.drain(wid)
    assert h.hub.stats.synced == 1
    h.put(b"x", b"live2")
    h.drain(wid)
    assert [e.kv.mod_revision for e in h.events(wid)] == list(range(4, h.store.revision + 1))


def test_future_start_revision_ignores_what_comes_before_it() -> None:
    h = Harness()
    start = h.store.revision + 3
    wid = h.watch(b"k", start_revision=start)
    h.put(b"k")
    h.put(b"k")
    assert h.drain(wid) == []
    h.put(b"k")
    h.drain(wid)
    assert [e.kv.mod_revision for e in h.events(wid)] == [start]


def test_compacted_start_is_canceled_with_compact_revision() -> None:
    h = Harness()
    for _ in range(5):
        h.put(b"c")
    h.compact(4)
    at = h.watch(b"c", start_revision=4)  # at the compaction revision: compacted (stricter)
    before = h.watch(b"c", start_revision=2)
    after = h.watch(b"c", start_revision=5)
    for wid in (at, before):
        assert h.hub.has_pending(wid)
        [batch] = h.drain(wid)
        assert batch.kind is BatchKind.CANCELED
        assert batch.compact_revision == 4
        assert h.hub.take(wid) == []
    h.drain(after)
    assert [e.kv.mod_revision for e in h.events(after)] == [5, 6]
    assert len(h.hub) == 1


def test_compaction_while_unsynced_cancels_after_the_buffered_events() -> None:
    h = Harness(max_buffered_events=2, catchup_revisions=2)
    wid = h.watch(b"c", FROM_KEY)
    for i in range(8):
        h.put(b"c%d" % i)  # two buffered, then it falls behind at revision 4
    other = h.watch(b"c", FROM_KEY, start_revision=h.store.revision)
    assert h.compact(6) == {wid}
    batches = h.drain(wid)
    assert [b.kind for b in batches] == [BatchKind.EVENTS, BatchKind.CANCELED]
    assert [e.kv.mod_revision for e in batches[0].events] == [2, 3]
    assert batches[-1].compact_revision == 6
    assert batches[-1].revision == 3
    h.drain(other)  # its start (9) survived the compaction
    assert h.events(other) == h.want(other)
    assert len(h.hub) == 1

    # Compaction noticed by the catch-up itself, when the shell did not call on_compact.
    late = h.watch(b"c", FROM_KEY, start_revision=7)
    h.store.compact(CompactionRequest(revision=8))
    [batch] = h.drain(late)
    assert (batch.kind, batch.compact_revision) == (BatchKind.CANCELED, 8)


def test_on_restore_continues_from_history() -> None:
    h = Harness(max_buffered_events=4)
    synced = h.watch(b"k", FROM_KEY, prev_kv=True)
    behind = h.watch(b"k", FROM_KEY, start_revision=2)
    future = h.watch(b"k", FROM_KEY, start_revision=100)
    h.put(b"k1")
    h.put(b"k2")
    h.take(behind, max_events=1)
    # The leader's store moved on; this member installs its snapshot.
    leader = MvccStore.from_obj(h.store.to_obj())
    later: list[Event] = []
    for i in range(5):
        later += leader.put(PutRequest(key=b"k%d" % i, value=b"new"))[1]
    later += leader.delete_range(DeleteRangeRequest(key=b"k", range_end=FROM_KEY))[1]
    h.store.restore(leader.to_obj())
    h.log.extend(later)
    woken = h.hub.on_restore()
    assert woken == {synced, behind}
    h.woken |= woken
    assert h.hub.notify(later[-1:]) == set()  # a late notify of a restored revision: ignored
    h.put(b"k9")
    for wid in (synced, behind, future):
        h.drain(wid)
        assert h.events(wid) == h.want(wid)
    assert len(h.events(synced)) == 2 + 5 + 5 + 1


def test_on_restore_past_a_compaction_cancels() -> None:
    h = Harness()
    wid = h.watch(b"k")
    h.put(b"k")
    leader = MvccStore.from_obj(h.store.to_obj())
    for _ in range(4):
        leader.put(PutRequest(key=b"k"))
    leader.compact(CompactionRequest(revision=5))
    h.store.restore(leader.to_obj())
    assert h.hub.on_restore() == {wid}
    batches = h.drain(wid)
    assert [b.kind for b in batches] == [BatchKind.EVENTS, BatchKind.CANCELED]
    assert batches[-1].compact_revision == 5


def test_a_missed_notify_is_recovered_from_history() -> None:
    h = Harness()
    wid = h.watch(b"k")
    h.put(b"k")
    skipped = h.store.put(PutRequest(key=b"k"))[1]  # the shell never notifies this one
    h.log.extend(skipped)
    h.put(b"k")
    h.drain(wid)
    assert h.events(wid) == h.want(wid)
    assert len(h.events(wid)) == 3


# -- cancel, remove, fan-out -------------------------------------------------------------------


def test_cancel_drops_pending_events_and_ends_the_stream() -> None:
    h = Harness()
    wid = h.watch(b"k")
    h.put(b"k")
    h.hub.request_progress(wid)
    h.hub.cancel(wid, reason="bye")
    assert h.hub.has_pending(wid)
    assert h.hub.stats.buffered_events == 0
    h.put(b"k")  # not routed to it any more
    assert h.hub.take(wid) == [WatchBatch(BatchKind.CANCELED, reason="bye")]
    assert len(h.hub) == 0
    assert h.hub.take(wid) == []
    assert not h.hub.has_pending(wid)
    h.hub.cancel(wid)  # unknown: nothing
    h.hub.cancel(999)


def test_remove_forgets_at_once_and_is_idempotent() -> None:
    h = Harness(max_buffered_events=2)
    watchers = [h.watch(b"k") for _ in range(3)]
    h.put(b"k")
    h.put(b"k")
    h.put(b"k")  # all three fall behind
    behind = h.watch(b"k", start_revision=2)
    assert h.hub.stats == WatchStats(watchers=4, synced=0, unsynced=4, buffered_events=6)
    for wid in [*watchers, behind]:
        h.hub.remove(wid)
        h.hub.remove(wid)
    assert len(h.hub) == 0
    assert h.hub.stats == WatchStats(0, 0, 0, 0)
    assert h.hub.notify(h.store.put(PutRequest(key=b"k"))[1]) == set()
    assert h.hub.take(watchers[0]) == []


def test_many_watchers_on_one_prefix_all_get_every_event() -> None:
    h = Harness()
    watchers = [h.watch(b"svc/", prefix_end(b"svc/"), prev_kv=bool(i % 2)) for i in range(1000)]
    h.put(b"svc/a")
    h.txn(PutRequest(b"svc/b"), PutRequest(b"svc/c"))
    h.revoke([b"svc/a", b"svc/b"])
    h.put(b"other")
    assert h.woken == set(watchers)
    for wid in watchers:
        h.drain(wid)
        assert h.events(wid) == h.want(wid)
        assert len(h.events(wid)) == 5


def test_woken_ids_cover_every_watcher_with_something_to_take() -> None:
    h = Harness(max_buffered_events=1)
    one = h.watch(b"k")
    prefix = h.watch(b"k", prefix_end(b"k"))
    other = h.watch(b"z")
    assert h.hub.notify(h.store.put(PutRequest(key=b"k"))[1]) == {one, prefix}
    # A revision bigger than the buffer: falls behind, still woken.
    events = h.store.txn(
        TxnRequest(success=[RequestOp.of(PutRequest(b"k1")), RequestOp.of(PutRequest(b"k2"))])
    )[1]
    assert h.hub.notify(events) == {prefix}
    assert not h.hub.has_pending(other)


def test_argument_checks_and_the_hub_revision() -> None:
    store = MvccStore()
    with pytest.raises(ValueError, match="positive"):
        WatchHub(store, max_buffered_events=0)
    hub = WatchHub(store)
    with pytest.raises(ValueError, match="negative"):
        hub.add(WatchRequest(b"k", start_revision=-1))
    assert hub.notify([]) == set()
    hub.notify(store.put(PutRequest(key=b"k"))[1])
    assert hub.revision == store.revision == 2
    assert "revision=2" in repr(hub)


# -- history filtering (the store side of catch-up) --------------------------------------------


def test_history_filters_by_key_and_stops_at_a_revision_boundary() -> None:
    store = MvccStore()
    store.put(PutRequest(b"a"))
    store.txn(TxnRequest(success=[RequestOp.of(PutRequest(b"b")), RequestOp.of(PutRequest(b"c"))]))
    store.put(PutRequest(b"a"))
    store.delete_range(DeleteRangeRequest(b"a"))
    store.put(PutRequest(b"a"))
    everything = store.history(2)
    assert [(e.kv.key, e.kv.mod_revision) for e in store.history(2, key=b"a")] == [
        (b"a", 2),
        (b"a", 4),
        (b"a", 5),
        (b"a", 6),
    ]
    assert store.history(3, 5, key=b"a") == [e for e in everything if e.kv.key == b"a"][1:3]
    assert store.history(2, key=b"b", range_end=b"c") == [everything[1]]
    assert store.history(2, key=b"b", range_end=FROM_KEY) == everything[1:3]
    assert store.history(2, key=b"c", range_end=b"b") == []
    assert store.history(2, key=b"zz") == []
    assert store.history(2, limit=2) == everything[:3]  # the txn is not cut
    assert store.history(2, limit=1) == everything[:1]
    assert store.history(2, key=b"a", limit=2) == [everything[0], everything[3]]


# -- the property: delivered == history, whatever the interleaving ------------------------------

KEYS = [b"a", b"a/1", b"a/2", b"b", b"c"]
RANGES = [(b"a", b""), (b"a/", prefix_end(b"a/")), (b"a/2", FROM_KEY), (b"a", b"c"), (b"b", b"")]


class HubVersusHistory(RuleBasedStateMachine):
    """Random writes (some notified late, as when the shell has applied but not yet told the
    hub), watchers added at random start revisions with random ranges, filters and prev_kv,
    random partial takes, progress requests, compactions, snapshot restores and cancels.

    Checked at every batch (``Stream.receive``): each stream holds exactly the filtered
    history up to the batch's revision. At the end, after draining: all of it, or a prefix
    of it ended by a CANCELED batch that is justified.
    """

    h: Harness
    bound: int

    def __init__(self) -> None:
        super().__init__()
        self.unnotified: list[list[Event]] = []
        self.removed: set[int] = set()

    @initialize(bound=st.integers(1, 4), chunk=st.integers(1, 3))
    def start(self, bound: int, chunk: int) -> None:
        self.bound = bound
        self.h = Harness(max_buffered_events=bound, catchup_revisions=chunk)

    def _write(self, events: list[Event], late: bool = False) -> None:
        if not events:
            return
        if late or self.unnotified:
            self.h.log.extend(events)
            self.unnotified.append(events)
        else:
            self.h.apply(events)

    def _some_watcher(self, data: st.DataObject) -> int:
        return data.draw(st.sampled_from(sorted(self.h.streams)))

    @rule(key=st.sampled_from(KEYS), late=st.booleans())
    def put(self, key: bytes, late: bool) -> None:
        value = b"%d" % len(self.h.log)
        self._write(self.h.store.put(PutRequest(key=key, value=value))[1], late)

    @rule(span=st.sampled_from(RANGES), late=st.booleans())
    def delete(self, span: tuple[bytes, bytes], late: bool) -> None:
        self._write(self.h.store.delete_range(DeleteRangeRequest(*span))[1], late)

    @rule(keys=st.lists(st.sampled_from(KEYS), min_size=1, max_size=4, unique=True))
    def txn(self, keys: list[bytes]) -> None:
        ops = [RequestOp.of(PutRequest(k, b"t")) for k in keys]
        self._write(self.h.store.txn(TxnRequest(success=ops))[1])

    @rule(keys=st.lists(st.sampled_from(KEYS), min_size=1, max_size=5))
    def revoke(self, keys: list[bytes]) -> None:
        self._write(self.h.store.delete_keys(keys)[1])

    @precondition(lambda self: bool(self.unnotified))
    @rule()
    def flush(self) -> None:
        for events in self.unnotified:
            self.h.woken |= self.h.hub.notify(events)
        self.unnotified.clear()

    @precondition(lambda self: len(self.h.streams) < 8)
    @rule(
        span=st.sampled_from(RANGES),
        back=st.integers(-2, 8),
        prev=st.booleans(),
        filters=st.frozensets(st.sampled_from(WatchFilter)),
        progress=st.booleans(),
    )
    def watch(
        self,
        span: tuple[bytes, bytes],
        back: int,
        prev: bool,
        filters: frozenset[WatchFilter],
        progress: bool,
    ) -> None:
        start = max(1, self.h.store.revision + 1 - back) if back else 0
        wid = self.h.watch(
            *span, start_revision=start, prev_kv=prev, filters=filters, progress_notify=progress
        )
        self.h.woken.add(wid)  # the shell looks at a new watcher once

    @precondition(lambda self: bool(self.h.streams))
    @rule(data=st.data(), max_events=st.integers(1, 5))
    def take(self, data: st.DataObject, max_events: int) -> None:
        self.h.take(self._some_watcher(data), max_events)

    @precondition(lambda self: bool(self.h.streams))
    @rule(data=st.data())
    def request_progress(self, data: st.DataObject) -> None:
        wid = self._some_watcher(data)
        if self.h.hub.request_progress(wid):
            self.h.woken.add(wid)

    @rule(repeat_idle=st.booleans())
    def periodic_progress(self, repeat_idle: bool) -> None:
        self.h.woken |= self.h.hub.periodic_progress(repeat_idle=repeat_idle)

    @precondition(lambda self: bool(self.h.streams))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        wid = self._some_watcher(data)
        self.h.hub.cancel(wid)
        self.h.woken.add(wid)  # the shell wakes the stream it canceled

    @precondition(lambda self: bool(self.h.streams))
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        """The connection closed: the stream and everything owed to it are gone."""
        wid = self._some_watcher(data)
        self.h.hub.remove(wid)
        self.removed.add(wid)
        assert self.h.hub.take(wid) == []

    @precondition(lambda self: self.h.store.revision > self.h.store.compact_revision)
    @rule(data=st.data())
    def compact(self, data: st.DataObject) -> None:
        store = self.h.store
        rev = data.draw(st.integers(store.compact_revision + 1, store.revision))
        self.h.woken |= self.h.compact(rev)

    @rule()
    def restore(self) -> None:
        self.h.store.restore(self.h.store.to_obj())
        self.h.woken |= self.h.hub.on_restore()

    @rule()
    def every_pending_watcher_was_woken(self) -> None:
        """The shell sleeps until woken: a watcher with something to take that no call
        reported would hang its stream."""
        for wid in sorted(self.h.streams):
            if self.h.hub.has_pending(wid):
                assert wid in self.h.woken, f"watcher {wid} has something but was not woken"
            else:
                self.h.woken.discard(wid)

    @invariant()
    def buffers_are_bounded(self) -> None:
        s = self.h.hub.stats
        assert s.synced + s.unsynced <= s.watchers
        # The bound, plus at most one revision (five events here) that cannot be split.
        assert s.buffered_events <= s.watchers * (self.bound + 5)

    def teardown(self) -> None:
        if not hasattr(self, "h"):
            return
        if self.unnotified:
            self.flush()
        for wid, stream in self.h.streams.items():
            if wid in self.removed:
                assert stream.events == self.h.want(wid)[: len(stream.events)]
                continue
            self.h.hub.request_progress(wid)
            self.h.drain(wid, max_events=3)
            want = self.h.want(wid)
            canceled = stream.canceled
            if canceled is None:
                assert stream.events == want
                assert stream.batches[-1] == WatchBatch(
                    BatchKind.PROGRESS, revision=self.h.store.revision
                )
                continue
            assert stream.events == want[: len(stream.events)]
            if canceled.compact_revision:
                assert canceled.revision < canceled.compact_revision
                assert all(
                    e.kv.mod_revision > canceled.revision for e in want[len(stream.events) :]
                )
        live = [
            s for wid, s in self.h.streams.items() if s.canceled is None and wid not in self.removed
        ]
        assert len(self.h.hub) == len(live)
        assert self.h.hub.stats.buffered_events == 0


HubVersusHistory.TestCase.settings = settings(
    max_examples=120, stateful_step_count=40, deadline=None
)
test_hub_delivers_exactly_history = HubVersusHistory.TestCase


# -- memory ------------------------------------------------------------------------------------


def test_memory_stays_bounded_with_ten_thousand_watchers() -> None:
    bound = 4
    h = Harness(max_buffered_events=bound, catchup_revisions=8)
    hub = h.hub
    watchers = [hub.add(WatchRequest(b"m/", prefix_end(b"m/"))) for _ in range(10_000)]
    stuck, readers = watchers[0], watchers[1:]
    h.streams[stuck] = Stream(WatchRequest(b"m/", prefix_end(b"m/")), h.store.revision + 1)
    for i in range(40):
        h.put(b"m/%d" % (i % 7))
        if i % 5 == 4:
            for wid in readers:
                while hub.take(wid):
                    pass
            assert hub.stats.buffered_events <= bound  # only the stuck one holds anything
        assert hub.stats.buffered_events <= len(hub) * bound
    assert hub.stats.unsynced == 1
    h.drain(stuck, max_events=3)
    assert h.events(stuck) == h.want(stuck)
    assert hub.stats.synced == 10_000


# -- what auto-compaction must not pass ---------------------------------------------------------


def test_oldest_needed_is_the_lowest_revision_a_behind_watcher_must_read() -> None:
    h = Harness()
    for i in range(10):
        h.put(b"k%d" % i)
    assert h.hub.oldest_needed() is None  # no watcher
    live = h.watch(b"k1")
    assert h.hub.oldest_needed() is None  # a synced watcher needs no history
    behind = h.watch(b"k", prefix_end(b"k"), start_revision=4)
    assert h.hub.oldest_needed() == 4
    h.drain(behind)
    assert h.hub.oldest_needed() is None  # caught up from history: synced again
    old = h.watch(b"k", prefix_end(b"k"), start_revision=2)
    h.hub.remove(old)
    assert h.hub.oldest_needed() is None
    assert h.events(live) == []
