"""What Raft reads from durable storage, and an in-memory implementation of it.

Raft only *reads* storage (like etcd's ``Storage``): the runtime writes to it while handling
a ``Ready`` (append entries, set the hard state, apply a snapshot) and tells Raft through
``RawNode.advance``. The entries Raft has not yet handed out for persisting live in its own
memory (``log.Unstable``), so stepping a message never waits on a disk.

Indexes: the storage holds a *dummy* entry at ``first_index() - 1`` whose term is the term of
the last compacted (or snapshotted) entry, so ``term(first_index() - 1)`` always answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from discoverd.consensus.messages import (
    ConfState,
    Entry,
    HardState,
    Snapshot,
    SnapshotMeta,
)
from discoverd.errors import Compacted, LogUnavailable


class LogStorage(Protocol):
    """The read side of a member's durable Raft state."""

    def initial_state(self) -> tuple[HardState, ConfState]:
        """The saved hard state and the membership as of the last snapshot/applied change."""
        ...

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries in ``[lo, hi)``; at least one if any, then up to ``max_bytes`` of data.

        Raises:
            Compacted: ``lo`` is at or below the snapshot index.
            LogUnavailable: ``hi`` is past ``last_index() + 1``.
        """
        ...

    def term(self, index: int) -> int:
        """The term of entry ``index``, valid for ``first_index() - 1 <= index <= last_index()``.

        Raises:
            Compacted: below that range.  LogUnavailable: above it.
        """
        ...

    def first_index(self) -> int: ...

    def last_index(self) -> int: ...

    def snapshot(self) -> Snapshot:
        """The most recent snapshot (an empty one if there is none), image included.

        Raft calls it only to send the snapshot to a follower behind the compacted log, so
        an implementation may keep just the meta and read the image on demand
        (``storage.disk_storage.DiskStorage``), which is slow for a large image.

        Raises:
            SnapshotTemporarilyUnavailable: the image cannot be had now; Raft tries again
                later.
        """
        ...


def catch_up_start(entries: Sequence[Entry], index: int, keep_entries: int,
                   keep_bytes: int | None) -> int:
    """Where to compact a log behind ``index`` (what to drop: entries up to the returned
    index) so that what stays for followers to catch up from — at most ``keep_entries``
    entries — also holds at most ``keep_bytes`` bytes of entry data.

    ``entries``: the log's entries up to ``index`` (ascending, contiguous; older ones may be
    missing). Why bytes too: the entries kept are memory, and 5,000 entries of a bulk
    load's 36 KB transactions are 180 MB a member holds for a follower that may never need
    them (issue 12: a 1M-key store); of small writes, the count is what binds.
    """
    start = max(index - keep_entries, 0)
    if keep_bytes is None:
        return start
    size = 0
    for e in reversed(entries):
        if e.index > index:
            continue
        if e.index <= start:
            break
        size += len(e.data)
        if size > keep_bytes:
            return e.index  # this one and all before it go
    return start


def catch_up_start_of(log: LogStorage, index: int, keep_entries: int,
                      keep_bytes: int | None) -> int:
    """``catch_up_start`` over the entries ``log`` still holds up to ``index`` (read only
    when there is a byte bound to check)."""
    entries: list[Entry] = []
    lo = max(log.first_index(), index - keep_entries + 1)
    if keep_bytes is not None and lo <= index:
        entries = log.entries(lo, index + 1)
    return catch_up_start(entries, index, keep_entries, keep_bytes)


def limit_size(entries: list[Entry], max_bytes: int | None) -> list[Entry]:
    """Keep the longest prefix within ``max_bytes`` of data, but always at least one entry."""
    if max_bytes is None or not entries:
        return entries
    size = 0
    for i, e in enumerate(entries):
        size += len(e.data) + 16
        if size > max_bytes and i > 0:
            return entries[:i]
    return entries


class MemoryStorage:
    """``LogStorage`` kept in a list; the reference implementation every test uses.

    ``ents[0]`` is the dummy entry standing for the snapshot point (see module docstring).
    """

    def __init__(self) -> None:
        self.hard_state = HardState()
        self._snapshot = Snapshot()
        self._ents: list[Entry] = [Entry(term=0, index=0)]

    def __repr__(self) -> str:
        return (
            f"<MemoryStorage hs={self.hard_state} first={self.first_index()} "
            f"last={self.last_index()} snap={self._snapshot.meta.index}>"
        )

    # -- read side (LogStorage)

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self.hard_state, self._snapshot.meta.conf_state

    def first_index(self) -> int:
        return self._ents[0].index + 1

    def last_index(self) -> int:
        return self._ents[0].index + len(self._ents) - 1

    def term(self, index: int) -> int:
        offset = self._ents[0].index
        if index < offset:
            raise Compacted(f"index {index} is compacted (first is {offset + 1})")
        if index - offset >= len(self._ents):
            raise LogUnavailable(f"index {index} is past the last index {self.last_index()}")
        return self._ents[index - offset].term

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        offset = self._ents[0].index
        if lo <= offset:
            raise Compacted(f"index {lo} is compacted (first is {offset + 1})")
        if hi > self.last_index() + 1:
            raise LogUnavailable(f"index {hi - 1} is past the last index {self.last_index()}")
        return limit_size(self._ents[lo - offset : hi - offset], max_bytes)

    def snapshot(self) -> Snapshot:
        return self._snapshot

    # -- write side (the runtime, while handling a Ready)

    def set_hard_state(self, hs: HardState) -> None:
        self.hard_state = hs

    def append(self, entries: list[Entry] | tuple[Entry, ...]) -> None:
        """Append, overwriting any conflicting suffix (entries must be contiguous)."""
        if not entries:
            return
        first = self.first_index()
        last = entries[-1].index
        if last < first:
            return  # all already compacted
        if first > entries[0].index:
            entries = entries[first - entries[0].index :]
        offset = entries[0].index - self._ents[0].index
        assert offset <= len(self._ents), (
            f"missing log entry [last: {self.last_index()}, append at: {entries[0].index}]"
        )
        del self._ents[offset:]
        self._ents.extend(entries)

    def apply_snapshot(self, snap: Snapshot) -> None:
        """Replace everything with ``snap`` (a follower installing the leader's snapshot)."""
        if snap.meta.index <= self._snapshot.meta.index:
            return
        self._snapshot = snap
        self._ents = [Entry(term=snap.meta.term, index=snap.meta.index)]

    def create_snapshot(self, index: int, conf_state: ConfState, data: bytes) -> Snapshot:
        """Record the state machine's image at applied ``index`` (the runtime's own snapshot)."""
        if index <= self._snapshot.meta.index:
            return self._snapshot
        assert index <= self.last_index(), f"snapshot {index} is past last {self.last_index()}"
        meta = SnapshotMeta(index=index, term=self.term(index), conf_state=conf_state)
        self._snapshot = Snapshot(meta, data)
        return self._snapshot

    def compact(self, index: int) -> None:
        """Drop entries up to and including ``index`` (keeping it as the dummy entry)."""
        offset = self._ents[0].index
        if index <= offset:
            return
        assert index <= self.last_index(), f"compact {index} is past last {self.last_index()}"
        i = index - offset
        self._ents = [Entry(term=self._ents[i].term, index=index), *self._ents[i + 1 :]]

    # -- the MemberStorage protocol (member/core.py): nothing here is slow or durable, so the
    #    I/O half does nothing and the memory half does everything.

    def persist(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None,
        *,
        must_sync: bool,
    ) -> None:
        del hard_state, entries, snapshot, must_sync

    def persisted(
        self, hard_state: HardState | None, entries: Sequence[Entry], snapshot: Snapshot | None
    ) -> None:
        if snapshot is not None:
            self.apply_snapshot(snapshot)
        if entries:
            self.append(list(entries))
        if hard_state is not None:
            self.set_hard_state(hard_state)

    def write_snapshot(self, snap: Snapshot) -> None:
        del snap

    def write_snapshot_file(self, snap: Snapshot) -> bool:
        return snap.meta.index > self._snapshot.meta.index

    def record_snapshot(self, snap: Snapshot) -> None:
        del snap

    def verify_snapshot_file(self, meta: SnapshotMeta) -> int:
        raise NotImplementedError("an in-memory log has no snapshot files")

    def snapshot_written(self, snap: Snapshot, compact_to: int) -> None:
        if snap.meta.index > self._snapshot.meta.index:
            self._snapshot = snap
        if compact_to >= self.first_index():
            self.compact(min(compact_to, snap.meta.index))
