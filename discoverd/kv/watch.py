"""The watch hub: which watcher gets which events, and when — pure (DESIGN §6).

The hub is a data structure, not a task. A trio shell owns the streams: it calls ``notify``
after each applied write, ``take`` when a stream can send, and the periodic/progress/compaction
hooks; the hub only decides what each watcher is due. Keeping time, sockets and scheduling
out of it is what lets every ordering promise below be tested exhaustively in one thread.

Two ways to be fed. A *synced* watcher is up to date: ``notify`` appends the events it matches
to its buffer, so a live watcher never reads history. An *unsynced* watcher is behind (it
started in the past, or it was too slow): it reads the store's history in bounded chunks as
its stream drains, and once it reaches the hub's revision it becomes synced again. The switch
is seamless because both sides are keyed by revision: a synced watcher ignores revisions
below its ``next_revision``, an unsynced one reads history from exactly there.

Why buffers are bounded and overflow falls back to history rather than dropping or blocking:
the store keeps every version until compaction anyway, so history *is* the overflow buffer
and costs nothing extra; writes never wait for a reader, and ten thousand idle watchers cost at
most ``max_buffered_events`` each. A watcher whose history is compacted before it catches up
is canceled with the compaction revision (the client must re-list), never silently skipped.

Why matching is indexed: ``notify`` runs in the write path of every member. Single-key
watchers are found by a dict lookup per event; range watchers are grouped by identical
interval, so a thousand watchers of one prefix cost one interval test plus the fan-out, and the
filtered event tuples are built once per group and shared by the watchers that want the same
shape (memory is shared too).

The hub's *revision* is the last revision it was notified of. It equals the store's when the
shell notifies after each apply; the hub never reports, and never reads history past, a
revision it has not been notified of, so a notify still in flight can neither be skipped nor
delivered twice.
"""

from __future__ import annotations

import enum
from bisect import bisect_left
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from discoverd.kv.revision import Event, EventType
from discoverd.kv.store import COMPACTED_MESSAGE, MvccStore
from discoverd.kv.txn import FROM_KEY


class WatchFilter(enum.Enum):
    """etcd's ``WatchCreateRequest.FilterType``: the event types a watcher does not want."""

    NOPUT = "NOPUT"
    NODELETE = "NODELETE"


@dataclass(frozen=True, slots=True)
class WatchRequest:
    """What a client asked to watch.

    ``range_end`` as for ``range``: ``b""`` one key, ``b"\\0"`` every key ``>= key``, else
    ``[key, range_end)``. ``start_revision`` 0: from the store's next revision.
    """

    key: bytes
    range_end: bytes = b""
    start_revision: int = 0
    prev_kv: bool = False
    filters: frozenset[WatchFilter] = frozenset()
    progress_notify: bool = False


class BatchKind(enum.Enum):
    EVENTS = "events"
    PROGRESS = "progress"
    CANCELED = "canceled"


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """One frame's worth for a stream.

    ``revision`` (EVENTS, PROGRESS): every matching event with a revision ``<=`` it has now
    been delivered, so a client resumes at ``revision + 1``. On CANCELED it is the last such
    revision the watcher was told. ``compact_revision`` > 0 on CANCELED: the watcher's next
    revision was compacted away; the client must re-list.
    """

    kind: BatchKind
    events: tuple[Event, ...] = ()
    revision: int = 0
    compact_revision: int = 0
    reason: str = ""


@dataclass(frozen=True, slots=True)
class WatchStats:
    """``watchers`` counts every live watcher, including one whose CANCELED batch is not yet
    taken; ``synced`` + ``unsynced`` leave those out."""

    watchers: int
    synced: int
    unsynced: int
    buffered_events: int


class _State(enum.Enum):
    SYNCED = "synced"
    UNSYNCED = "unsynced"
    CANCELED = "canceled"


_Group = tuple[int, tuple[Event, ...]]
"""One revision's events for one watcher, already filtered: never split, never merged."""

_Interval = tuple[bytes, bytes | None]
"""``[low, high)`` of a range watcher; ``None``: no upper bound."""

_Shape = tuple[bool, bool, bool]
"""``(keep_prev, drop_puts, drop_deletes)``: watchers of one shape get identical tuples."""


class _Watcher:
    __slots__ = (
        "asked",
        "buffer",
        "buffered",
        "cancel",
        "id",
        "interval",
        "key",
        "next_revision",
        "periodic",
        "progress_notify",
        "range_end",
        "reported",
        "shape",
        "state",
        "told",
    )

    def __init__(self, watcher_id: int, request: WatchRequest, next_revision: int) -> None:
        self.id = watcher_id
        self.key = request.key
        self.range_end = request.range_end
        self.interval: _Interval | None = None
        if request.range_end:
            high = None if request.range_end == FROM_KEY else request.range_end
            self.interval = (request.key, high)
        self.shape: _Shape = (
            request.prev_kv,
            WatchFilter.NOPUT in request.filters,
            WatchFilter.NODELETE in request.filters,
        )
        self.progress_notify = request.progress_notify
        # SYNCED: revisions below it are not wanted (already read from history, or before a
        # future start). UNSYNCED: the first revision to read from history.
        self.next_revision = next_revision
        self.state = _State.UNSYNCED
        self.buffer: deque[_Group] = deque()
        self.buffered = 0
        self.reported = 0  # the highest revision handed out in a batch
        self.asked = False  # request_progress: owed one PROGRESS once synced and drained
        self.periodic = False  # periodic_progress: owed one unless events say the same first
        self.told = False  # handed out a batch since the last periodic_progress
        self.cancel: WatchBatch | None = None


class WatchHub:
    """Routes each write's events to the watchers that match it. See the module docstring.

    Args:
        store: the store the events come from; read for history and compaction only.
        max_buffered_events: the most events a synced watcher holds before it is moved to
            catching up from history (one revision larger than this is the only excess:
            a revision is never split).
        catchup_revisions: the most revisions one history read spans.
    """

    def __init__(
        self, store: MvccStore, *, max_buffered_events: int = 1024, catchup_revisions: int = 256
    ) -> None:
        if max_buffered_events < 1 or catchup_revisions < 1:
            raise ValueError("max_buffered_events and catchup_revisions must be positive")
        self._store = store
        self._max_buffered = max_buffered_events
        self._catchup = catchup_revisions
        self._revision = store.revision
        self._next_id = 1
        self._watchers: dict[int, _Watcher] = {}
        self._by_key: dict[bytes, dict[int, _Watcher]] = {}
        self._by_range: dict[_Interval, dict[int, _Watcher]] = {}
        self._unsynced: dict[int, _Watcher] = {}
        self._progress: dict[int, _Watcher] = {}
        self._synced = 0
        self._buffered = 0

    def __len__(self) -> int:
        return len(self._watchers)

    def __repr__(self) -> str:
        s = self.stats
        return (
            f"<WatchHub revision={self._revision} watchers={s.watchers} synced={s.synced}"
            f" unsynced={s.unsynced} buffered_events={s.buffered_events}>"
        )

    @property
    def revision(self) -> int:
        """The last revision the hub was notified of (or found in the store at start)."""
        return self._revision

    @property
    def stats(self) -> WatchStats:
        return WatchStats(len(self._watchers), self._synced, len(self._unsynced), self._buffered)

    # -- watchers ----------------------------------------------------------------------------

    def add(self, request: WatchRequest) -> int:
        """Register a watcher; its first ``take`` may already be due (catch-up, or CANCELED
        when its start revision is compacted).

        Raises:
            ValueError: a negative ``start_revision`` (the codec refuses it first).
        """
        if request.start_revision < 0:
            raise ValueError("start_revision must not be negative")
        watcher_id = self._next_id
        self._next_id += 1
        store = self._store
        start = request.start_revision or store.revision + 1
        w = _Watcher(watcher_id, request, start)
        self._watchers[watcher_id] = w
        if w.progress_notify:
            self._progress[watcher_id] = w
        if start <= store.compact_revision:
            self._cancel_compacted(w)
        elif start <= self._revision:
            self._unsynced[watcher_id] = w
        else:
            self._attach(w)
        return watcher_id

    def cancel(self, watcher_id: int, reason: str = "canceled by the client") -> None:
        """End a watcher: its next ``take`` returns only the CANCELED batch (undelivered events
        are dropped: the client asked to stop). One already canceled by compaction keeps that
        batch, whose ``compact_revision`` tells the client more. Unknown ids: nothing."""
        w = self._watchers.get(watcher_id)
        if w is None:
            return
        self._drop_buffer(w)
        if w.state is _State.CANCELED:
            assert w.cancel is not None  # canceled by compaction: keep its compact_revision
            w.cancel = replace(w.cancel, revision=w.reported)
            return
        self._detach(w)
        w.state = _State.CANCELED
        w.cancel = WatchBatch(BatchKind.CANCELED, revision=w.reported, reason=reason)

    def remove(self, watcher_id: int) -> None:
        """Forget a watcher now (its stream is gone). Idempotent."""
        w = self._watchers.pop(watcher_id, None)
        if w is None:
            return
        if w.state is not _State.CANCELED:
            self._detach(w)
        self._progress.pop(watcher_id, None)
        self._drop_buffer(w)

    # -- events ------------------------------------------------------------------------------

    def notify(self, events: Sequence[Event]) -> set[int]:
        """Route one revision's events (already applied to the store) to synced watchers.

        Cost: one dict lookup per event, one interval test per distinct range (a bisection
        when the revision has many events), and the matching watchers; history is never read.
        A revision already seen is ignored; a skipped one (the shell missed a notify) sends
        every synced watcher to history, so nothing is lost either way.

        Returns the ids of watchers that now have something to take.
        """
        if not events:
            return set()
        rev = events[0].kv.mod_revision
        if rev <= self._revision:
            return set()
        if rev > self._revision + 1:
            return self._resync_all(rev)
        self._revision = rev
        woken: set[int] = set()
        fallen: list[_Watcher] = []
        for group, matched in self._matches(events):
            shaped: dict[_Shape, tuple[Event, ...]] = {}
            for w in group.values():
                if rev < w.next_revision:
                    continue
                out = shaped.get(w.shape)
                if out is None:
                    out = shaped[w.shape] = _shape(matched, w.shape)
                if not out:
                    continue
                woken.add(w.id)
                if w.buffered + len(out) > self._max_buffered:
                    fallen.append(w)
                    continue
                w.buffer.append((rev, out))
                w.buffered += len(out)
                self._buffered += len(out)
        for w in fallen:
            self._detach(w)
            w.state = _State.UNSYNCED
            w.next_revision = rev
            self._unsynced[w.id] = w
        return woken

    def _matches(
        self, events: Sequence[Event]
    ) -> Iterator[tuple[dict[int, _Watcher], list[Event]]]:
        """Each watcher group with at least one event of this revision, and those events in
        their original order. A watcher is in exactly one group, so it is seen at most once."""
        by_key, by_range = self._by_key, self._by_range
        if len(events) == 1:
            key = events[0].kv.key
            one = [events[0]]
            group = by_key.get(key)
            if group:
                yield group, one
            for (low, high), group in by_range.items():
                if low <= key and (high is None or key < high):
                    yield group, one
            return
        if by_key:
            per_key: dict[bytes, list[Event]] = {}
            for ev in events:
                if ev.kv.key in by_key:
                    per_key.setdefault(ev.kv.key, []).append(ev)
            for key, evs in per_key.items():
                yield by_key[key], evs
        if by_range:
            order = sorted(range(len(events)), key=lambda i: events[i].kv.key)
            keys = [events[i].kv.key for i in order]
            for (low, high), group in by_range.items():
                a = bisect_left(keys, low)
                b = len(keys) if high is None else bisect_left(keys, high)
                if a < b:
                    yield group, [events[i] for i in sorted(order[a:b])]

    # -- progress ----------------------------------------------------------------------------

    def request_progress(self, watcher_id: int) -> bool:
        """Owe the watcher one PROGRESS batch, sent once it is synced and has delivered what
        it already had (etcd's ``RequestProgress``). True if it now has something to take."""
        w = self._watchers.get(watcher_id)
        if w is None or w.state is _State.CANCELED:
            return False
        w.asked = True
        return self.has_pending(watcher_id)

    def periodic_progress(self, *, repeat_idle: bool = False) -> set[int]:
        """Queue a PROGRESS for each ``progress_notify`` watcher that is synced, drained, and
        has not been told the hub's revision yet. Returns the ids it woke.

        ``repeat_idle``: also re-tell a watcher that has been handed nothing since the
        previous call even when the revision has not moved — what a client that treats ~3
        silent intervals as a dead stream (docs/protocol.md) needs on an idle store.
        Cost: one step per ``progress_notify`` watcher.
        """
        woken: set[int] = set()
        for w in self._progress.values():
            if (
                w.state is _State.SYNCED
                and not w.buffer
                and not w.asked
                and not w.periodic
                and (w.reported < self._revision or (repeat_idle and not w.told))
            ):
                w.periodic = True
                woken.add(w.id)
            w.told = False
        return woken

    # -- delivery ----------------------------------------------------------------------------

    def take(self, watcher_id: int, max_events: int = 1000) -> list[WatchBatch]:
        """What the watcher's stream should send now, in order: at most one EVENTS batch of
        at most ``max_events`` events (a revision larger than that comes whole and alone),
        then a PROGRESS or the final CANCELED batch if due. ``[]``: nothing (unknown ids too).

        An unsynced watcher reads history here, in chunks, until it has events or is synced.
        """
        w = self._watchers.get(watcher_id)
        if w is None:
            return []
        if len(w.buffer) == 1 and w.state is _State.SYNCED and not (w.asked or w.periodic):
            # The fan-out case: one revision waiting, nothing else owed. Hand out the very
            # tuple ``notify`` shared among watchers of this shape (what lets the watch
            # service's encoder reuse its bytes), with what the general path would set.
            evs = w.buffer.popleft()[1]
            w.buffered -= len(evs)
            self._buffered -= len(evs)
            w.reported = self._revision
            w.told = True
            return [WatchBatch(BatchKind.EVENTS, evs, revision=self._revision)]
        taken: list[Event] = []
        while True:
            if not w.buffer:
                if w.state is _State.UNSYNCED:
                    self._refill(w)
                if not w.buffer:
                    break
            evs = w.buffer[0][1]
            if taken and len(taken) + len(evs) > max_events:
                break
            w.buffer.popleft()
            w.buffered -= len(evs)
            self._buffered -= len(evs)
            taken.extend(evs)
            if len(taken) >= max_events:
                break
        batches: list[WatchBatch] = []
        if taken:
            covered = self._covered(w)
            batches.append(WatchBatch(BatchKind.EVENTS, tuple(taken), revision=covered))
            w.reported = covered
            w.told = True
        if w.state is _State.CANCELED:
            if not w.buffer:
                assert w.cancel is not None
                batches.append(w.cancel)
                self.remove(watcher_id)
            return batches
        if w.state is _State.SYNCED and not w.buffer:
            if w.periodic and taken and w.reported >= self._revision:
                w.periodic = False  # the events just handed out said the same
            if w.asked or w.periodic:
                w.asked = w.periodic = False
                batches.append(WatchBatch(BatchKind.PROGRESS, revision=self._revision))
                w.reported = self._revision
                w.told = True
        return batches

    def oldest_needed(self) -> int | None:
        """The lowest revision some watcher still has to read from history (``None``: every
        watcher is synced, so none needs history) — what auto-compaction must not pass."""
        return min((w.next_revision for w in self._unsynced.values()), default=None)

    def has_pending(self, watcher_id: int) -> bool:
        """Whether ``take`` would return something now. Exact, so a loop on it cannot spin:
        for an unsynced watcher it reads the next history chunk into the buffer (work that
        ``take`` would do anyway)."""
        w = self._watchers.get(watcher_id)
        if w is None:
            return False
        if w.buffer or w.state is _State.CANCELED:
            return True
        if w.state is _State.UNSYNCED and self._refill(w):
            return True
        return w.asked or w.periodic

    def _covered(self, w: _Watcher) -> int:
        """The highest revision up to which every matching event has been handed out."""
        if w.buffer:
            return w.buffer[0][0] - 1
        if w.state is _State.SYNCED:
            return self._revision
        return w.next_revision - 1

    def _refill(self, w: _Watcher) -> bool:
        """Read history into an unsynced watcher's empty buffer until it holds at least one
        revision, or the watcher is synced, or canceled because its history is gone.
        True unless it ended synced with nothing buffered."""
        store = self._store
        target = self._revision
        while w.next_revision <= target:
            start = w.next_revision
            if start <= store.compact_revision:
                self._cancel_compacted(w)
                return True
            end = min(target, start + self._catchup - 1)
            room = max(1, self._max_buffered - w.buffered)
            evs = store.history(start, end, key=w.key, range_end=w.range_end, limit=room)
            w.next_revision = evs[-1].kv.mod_revision + 1 if len(evs) >= room else end + 1
            found = False
            for group in _groups(evs, w.shape):
                w.buffer.append(group)
                w.buffered += len(group[1])
                self._buffered += len(group[1])
                found = True
            if found:
                break
        if w.next_revision > target:
            del self._unsynced[w.id]
            self._attach(w)
        return bool(w.buffer)

    # -- store-wide changes ------------------------------------------------------------------

    def on_compact(self) -> set[int]:
        """Cancel every unsynced watcher whose next revision the store has just compacted
        (after what it already has buffered). Returns the ids it woke."""
        compacted = self._store.compact_revision
        doomed = [w for w in self._unsynced.values() if w.next_revision <= compacted]
        for w in doomed:
            self._cancel_compacted(w)
        return {w.id for w in doomed}

    def on_restore(self) -> set[int]:
        """The store was replaced by a snapshot: the events between the hub's revision and
        the new one were never notified, so every live watcher continues from history at its
        next revision (or is canceled if that is compacted). Returns the ids that may now
        have something to take."""
        return self._resync_all(self._store.revision)

    def _resync_all(self, revision: int) -> set[int]:
        old = self._revision
        self._revision = max(revision, old)
        compacted = self._store.compact_revision
        woken: set[int] = set()
        for w in list(self._watchers.values()):
            if w.state is _State.SYNCED:
                self._detach(w)
                w.state = _State.UNSYNCED
                w.next_revision = max(w.next_revision, old + 1)
                self._unsynced[w.id] = w
            if w.state is _State.UNSYNCED:
                if w.next_revision <= compacted:
                    self._cancel_compacted(w)
                elif w.next_revision > self._revision:
                    del self._unsynced[w.id]
                    self._attach(w)
                    if not w.buffer:
                        continue
            woken.add(w.id)
        return woken

    # -- bookkeeping -------------------------------------------------------------------------

    def _attach(self, w: _Watcher) -> None:
        w.state = _State.SYNCED
        if w.interval is None:
            self._by_key.setdefault(w.key, {})[w.id] = w
        else:
            self._by_range.setdefault(w.interval, {})[w.id] = w
        self._synced += 1

    def _detach(self, w: _Watcher) -> None:
        """Take a synced or unsynced watcher out of the routing tables."""
        if w.state is _State.UNSYNCED:
            self._unsynced.pop(w.id, None)
            return
        if w.interval is None:
            group = self._by_key[w.key]
            del group[w.id]
            if not group:
                del self._by_key[w.key]
        else:
            group = self._by_range[w.interval]
            del group[w.id]
            if not group:
                del self._by_range[w.interval]
        self._synced -= 1

    def _cancel_compacted(self, w: _Watcher) -> None:
        """Cancel after whatever is buffered: those events precede the compacted gap."""
        if w.state is not _State.CANCELED:
            self._detach(w)
        w.state = _State.CANCELED
        w.cancel = WatchBatch(
            BatchKind.CANCELED,
            revision=max(w.reported, w.next_revision - 1),
            compact_revision=self._store.compact_revision,
            reason=COMPACTED_MESSAGE,
        )

    def _drop_buffer(self, w: _Watcher) -> None:
        self._buffered -= w.buffered
        w.buffer.clear()
        w.buffered = 0


def _shape(events: Sequence[Event], shape: _Shape) -> tuple[Event, ...]:
    """The events as a watcher of this shape receives them: filtered, ``prev_kv`` stripped
    unless asked for."""
    keep_prev, drop_puts, drop_deletes = shape
    return tuple(
        ev if keep_prev or ev.prev_kv is None else Event(ev.type, ev.kv)
        for ev in events
        if not (drop_puts if ev.type is EventType.PUT else drop_deletes)
    )


def _groups(events: Sequence[Event], shape: _Shape) -> Iterator[_Group]:
    """History events cut into per-revision groups, shaped; empty groups left out."""
    i, n = 0, len(events)
    while i < n:
        rev = events[i].kv.mod_revision
        j = i + 1
        while j < n and events[j].kv.mod_revision == rev:
            j += 1
        out = _shape(events[i:j], shape)
        if out:
            yield rev, out
        i = j
