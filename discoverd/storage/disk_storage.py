"""DiskStorage: Raft's ``LogStorage`` backed by the WAL and snapshot files.

Reads are served from an in-memory ``MemoryStorage`` (the reference implementation, reused
rather than re-derived, so the index arithmetic exists once). Writes go to disk first and
reach the in-memory copy only after they succeeded, so what Raft reads never runs ahead of
what a failed call left on disk.

Write ordering, the part that makes recovery sound:

* ``save`` (a ``Ready``): a received snapshot's file is written completely first; then one
  WAL record holds the snapshot's marker, the entries and the hard state — one write, one
  fsync. Until that record is durable the snapshot file is not referenced by the WAL, and
  recovery ignores (deletes) snapshot files the WAL does not mention.
* ``create_snapshot`` (a local compaction): snapshot file, then a WAL marker (fsynced), then
  the in-memory log is compacted and WAL segments that only hold older entries are deleted.

Recovery: the newest intact snapshot the WAL has a marker for, then the WAL's entries after
it. The in-memory log keeps up to ``keep_entries`` entries before the snapshot (so slow
followers can catch up without a snapshot), as far as the WAL still has them.

**No image in memory.** The in-memory log holds the snapshot's meta only (empty ``data``);
``snapshot()`` reads the image from its file when somebody asks for it — Raft, to send it to
a follower that fell behind the compacted log (rare), and the member once at start-up, to
restore its state machine. A large store's image is hundreds of MB (issue 12: ~280 MB at a
million keys), which a member would otherwise carry for the odd InstallSnapshot. Recovery
has just read and checked the file anyway, so the first ``snapshot()`` gets that copy
instead of a second read, and nothing keeps it after that.

Reading that file takes about half a second at a million keys, and a store at the quota
several seconds: on the member's event loop that is a stall past the election timeout.
The runtime therefore sets ``read_in_background`` (``server/raft_loop.py``: a worker
thread); ``snapshot()`` then starts the read and says ``SnapshotTemporarilyUnavailable``
(Raft tries again on the follower's next heartbeat response) until the image is read, and
hands it out once. Without a runtime (tests, tools) it reads in place.
"""

from __future__ import annotations

import dataclasses
import logging
import posixpath
from collections.abc import Callable, Sequence
from functools import partial

from discoverd.consensus.messages import (
    ConfState,
    Entry,
    HardState,
    Snapshot,
    SnapshotMeta,
)
from discoverd.consensus.storage import MemoryStorage, catch_up_start, catch_up_start_of
from discoverd.errors import CorruptData, SnapshotTemporarilyUnavailable
from discoverd.storage.fs import FileSystem, WriteNotDone, ensure_dir
from discoverd.storage.meta import MemberMeta, check_meta, write_meta
from discoverd.storage.snapshot import BrokenSnapshot, SnapshotStore
from discoverd.storage.wal import DEFAULT_SEGMENT_BYTES, WAL, SnapshotMarker, WalReplay

log = logging.getLogger(__name__)

BackgroundReader = Callable[[Callable[[], Snapshot], Callable[[Snapshot | None], None]], None]
"""``(read, done)``: runs ``read`` off the caller's thread, then calls ``done`` with what it
returned (None if it raised ``SnapshotTemporarilyUnavailable``) back on the caller's thread."""

DEFAULT_KEEP_ENTRIES = 5000
"""Entries kept before a new snapshot, as etcd's ``SnapshotCatchUpEntries``."""

DEFAULT_KEEP_SNAPSHOTS = 5
"""Snapshot files kept, as etcd's ``--max-snapshots``."""


class DiskStorage:
    """A member's durable Raft state: implements ``LogStorage`` plus the write side.

    Construction recovers from disk (and creates the layout on first start). Not
    thread-safe: Raft's reads and the runtime's writes must not overlap.
    """

    def __init__(
        self,
        fs: FileSystem,
        member_dir: str,
        *,
        cluster_id: int,
        member_id: int,
        name: str = "",
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        keep_entries: int = DEFAULT_KEEP_ENTRIES,
        keep_bytes: int | None = None,
        keep_snapshots: int = DEFAULT_KEEP_SNAPSHOTS,
    ) -> None:
        """Open (or create) ``member_dir`` with ``meta``, ``wal/`` and ``snap/`` inside.

        Raises:
            CorruptData: the directory belongs to another cluster or member, a WAL record
                or the log is damaged beyond a torn tail, or the snapshot the WAL needs is
                missing or broken.
            OSError: the file system failed.
        """
        if keep_entries < 0 or keep_snapshots < 1:
            raise ValueError(f"need keep_entries >= 0 and keep_snapshots >= 1, got "
                             f"{keep_entries} and {keep_snapshots}")
        self._keep_entries = keep_entries
        self._keep_bytes = keep_bytes
        self._keep_snapshots = keep_snapshots
        self._dir = member_dir
        ensure_dir(fs, member_dir)
        meta_path = posixpath.join(member_dir, "meta")
        identity = MemberMeta(cluster_id, member_id, name)
        meta_found = check_meta(fs, meta_path, identity)
        self._snaps = SnapshotStore(fs, posixpath.join(member_dir, "snap"))
        wal_dir = posixpath.join(member_dir, "wal")
        self._recovered: Snapshot | None = None
        """The image recovery read, until the first ``snapshot()`` takes it (see the module
        docstring)."""
        self.read_in_background: BackgroundReader | None = None
        """Set by the runtime: where ``snapshot()`` has the file read (module docstring)."""
        self._reading: SnapshotMeta | None = None
        """The snapshot whose file is being read in the background."""
        self._read_done: Snapshot | None = None
        """A background read's image, until ``snapshot()`` hands it out."""
        self._wal, replay = WAL.open(fs, wal_dir, cluster_id=cluster_id, member_id=member_id,
                                     segment_bytes=segment_bytes)
        try:
            self._mem = self._recover(replay, wal_dir)
            if meta_found is None:
                write_meta(fs, meta_path, identity)
        except BaseException:
            self._wal.close()
            raise
        self.torn_tail_bytes = replay.torn_tail_bytes
        """Bytes of a torn WAL tail cut off during recovery (0 after a clean shutdown)."""

    def __repr__(self) -> str:
        return (
            f"<DiskStorage {self._dir} hs={self._mem.hard_state} "
            f"first={self.first_index()} last={self.last_index()} "
            f"snap={self._mem.snapshot().meta.index}>"
        )

    # -- LogStorage (read side)

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self._mem.initial_state()

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        return self._mem.entries(lo, hi, max_bytes)

    def term(self, index: int) -> int:
        return self._mem.term(index)

    def first_index(self) -> int:
        return self._mem.first_index()

    def last_index(self) -> int:
        return self._mem.last_index()

    def snapshot(self) -> Snapshot:
        """The most recent snapshot, its image read from its file (see the module docstring):
        slow for a large store, and every call reads it again — only for Raft sending it and
        for the start-up restore.

        Raises:
            SnapshotTemporarilyUnavailable: the file is being read in the background, or it
                cannot be read or is broken (logged): Raft tries again later; a restart
                would fall back to an older snapshot.
        """
        current = self._mem.snapshot()
        recovered, self._recovered = self._recovered, None
        if current.is_empty:
            return current
        meta = current.meta
        if recovered is not None and recovered.meta == meta:
            return recovered
        if self.read_in_background is None:
            return self._read(meta)
        if self._reading != meta and not self._has_read(meta):
            self._reading = meta
            self.read_in_background(partial(self._read, meta),
                                    partial(self._background_read_done, meta))
        if self._has_read(meta):
            snap, self._read_done = self._read_done, None
            assert snap is not None
            return snap
        raise SnapshotTemporarilyUnavailable(
            f"snapshot {meta.index} is being read from its file")

    def _has_read(self, meta: SnapshotMeta) -> bool:
        return self._read_done is not None and self._read_done.meta == meta

    def _background_read_done(self, meta: SnapshotMeta, snap: Snapshot | None) -> None:
        if self._reading == meta:
            self._reading = None
        if snap is not None and snap.meta == self._mem.snapshot().meta:
            self._read_done = snap  # else a newer snapshot was recorded meanwhile: drop it

    def _read(self, meta: SnapshotMeta) -> Snapshot:
        """Snapshot ``meta``'s image from its file (on any thread: it touches nothing but
        the file)."""
        try:
            return self._snaps.load(SnapshotMarker(index=meta.index, term=meta.term))
        except (OSError, BrokenSnapshot) as exc:
            log.warning("storage: cannot read snapshot %d (term %d) to send it: %s",
                        meta.index, meta.term, exc)
            raise SnapshotTemporarilyUnavailable(
                f"snapshot {meta.index} cannot be read: {exc}") from exc

    @property
    def hard_state(self) -> HardState:
        return self._mem.hard_state

    # -- write side

    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None = None,
        *,
        must_sync: bool = True,
    ) -> None:
        """Persist one ``Ready``: the snapshot (if any) first, then entries and hard state.

        A snapshot at or below the current one is ignored, as ``MemoryStorage`` does.

        Raises:
            WriteNotDone: a write failed (e.g. ENOSPC) and was undone: nothing changed on
                disk or in memory, the storage stays usable and the same call may be
                repeated.
            OSError: nothing new is promised durable and the in-memory log is unchanged;
                after a failed fsync every later call raises and the member must restart.
        """
        self.persist(hard_state, entries, snapshot, must_sync=must_sync)
        self.persisted(hard_state, entries, snapshot)

    # -- the MemberStorage split (member/core.py): the I/O half may run on a worker thread
    #    while Raft keeps reading the in-memory log; the memory half runs afterwards on the
    #    member's own thread. Together they are exactly ``save``.

    def persist(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None,
        *,
        must_sync: bool,
    ) -> None:
        """The disk half of ``save``: reads the in-memory log, never changes it."""
        installed = self._installed_marker(snapshot)
        next_index = installed.index + 1 if installed else self._mem.last_index() + 1
        assert not entries or entries[0].index <= next_index, (
            f"entries start at {entries[0].index}, leaving a gap after {next_index - 1}"
        )
        if snapshot is not None and installed is not None:
            self._snaps.save(snapshot)
        self._wal.save(hard_state, entries, must_sync, installed_snapshot=installed)

    def persisted(
        self, hard_state: HardState | None, entries: Sequence[Entry], snapshot: Snapshot | None
    ) -> None:
        """The memory half of ``save``, after ``persist`` succeeded."""
        if snapshot is not None and self._installed_marker(snapshot) is not None:
            # Its image is in its file now, and the member restores from ``snapshot`` itself.
            self._mem.apply_snapshot(Snapshot(snapshot.meta))
        self._mem.append(list(entries))
        if hard_state is not None:
            self._mem.set_hard_state(hard_state)

    def _installed_marker(self, snapshot: Snapshot | None) -> SnapshotMarker | None:
        if snapshot is not None and snapshot.meta.index > self._mem.snapshot().meta.index:
            return SnapshotMarker(index=snapshot.meta.index, term=snapshot.meta.term)
        return None

    def write_snapshot(self, snap: Snapshot) -> None:
        """The disk half of ``create_snapshot`` for an image the member already built.

        Raises:
            WriteNotDone: the snapshot file or its WAL marker could not be written (e.g.
                ENOSPC); nothing changed — a file written without its marker is removed
                again, so that a full disk gets its space back — and a later call may retry.
            OSError: another failure (a failed fsync makes the WAL unusable).
        """
        if self.write_snapshot_file(snap):
            self.record_snapshot(snap)

    def write_snapshot_file(self, snap: Snapshot) -> bool:
        """The first half of ``write_snapshot``: the snapshot's own file, durably. It does not
        touch the WAL, so it may run while another thread persists a Ready; the file counts
        only once ``record_snapshot`` has put its marker in the WAL (recovery deletes a file
        the WAL never mentions). Returns False, writing nothing, for a snapshot no newer than
        the one we have.

        Raises:
            WriteNotDone: nothing of it is left on disk (e.g. ENOSPC).
            OSError: another failure.
        """
        if snap.meta.index <= self._mem.snapshot().meta.index:
            return False
        self._snaps.save(snap)
        return True

    def verify_snapshot_file(self, meta: SnapshotMeta) -> int:
        """Check the file ``write_snapshot_file`` wrote for ``meta`` in another process
        (``server/snapshot_child``) before ``record_snapshot`` makes it count; returns its
        size in bytes. Streamed: the image is never in this process's memory.

        Why check at all, when the child's exit status already says the file was written,
        fsynced and renamed: a marker in the WAL is a promise for good — followers are sent
        that file, and after compaction a restart needs it — so it must never name a file
        that is not intact, and "the exit status says so" rests on more code (the child, its
        status plumbing) than a CRC. The check costs one read of a file still in the page
        cache, in constant memory and mostly without the GIL (``SnapshotStore.verify``).

        Raises:
            BrokenSnapshot: it is not the intact file for ``meta``; it is removed (it will
                never count, and left in place it would take a real one's place among the
                files ``purge`` keeps).
            OSError: it could not be read.
        """
        try:
            return self._snaps.verify(meta)
        except BrokenSnapshot:
            self._remove_unrecorded(SnapshotMarker(index=meta.index, term=meta.term))
            raise

    def record_snapshot(self, snap: Snapshot) -> None:
        """The second half: the WAL marker that makes the file written by
        ``write_snapshot_file`` count. Must not run while a Ready is being persisted (both
        append to the WAL). A snapshot no newer than ours by now (one from the leader was
        installed meanwhile) is not recorded and its file is removed.

        Raises:
            WriteNotDone: the marker could not be written; the file is removed again (a
                full disk gets its space back) and a later snapshot may retry.
            OSError: another failure (a failed fsync makes the WAL unusable).
        """
        marker = SnapshotMarker(index=snap.meta.index, term=snap.meta.term)
        if snap.meta.index <= self._mem.snapshot().meta.index:
            self._remove_unrecorded(marker)
            return
        try:
            self._wal.save_snapshot_marker(marker)
        except WriteNotDone:
            self._remove_unrecorded(marker)
            raise

    def _remove_unrecorded(self, marker: SnapshotMarker) -> None:
        try:
            self._snaps.remove(marker)
        except OSError as exc:  # recovery removes it: the WAL never mentions it
            log.warning("storage: could not remove unrecorded snapshot %s: %s", marker, exc)

    def snapshot_written(self, snap: Snapshot, compact_to: int) -> None:
        """The memory half: adopt ``snap``, compact up to ``compact_to`` (never past the
        snapshot), then delete WAL segments and snapshot files no longer needed."""
        meta = snap.meta
        if meta.index > self._mem.snapshot().meta.index:
            self._mem.create_snapshot(meta.index, meta.conf_state, b"")  # the file has it
        compact_to = min(compact_to, meta.index)
        if compact_to >= self._mem.first_index():
            self._mem.compact(compact_to)
        self._release_old_files()

    def sync(self) -> None:
        """Make earlier ``must_sync=False`` saves durable."""
        self._wal.sync()

    def create_snapshot(self, index: int, conf_state: ConfState, data: bytes) -> Snapshot:
        """Record the state machine's image at applied ``index`` and compact the log.

        Keeps ``keep_entries`` entries before ``index`` and deletes WAL segments and
        snapshot files that are no longer needed. A failure of that clean-up is only
        logged: the snapshot is durable by then, and the next one retries. Returns the new
        snapshot; for an ``index`` not newer than the current snapshot, that one's meta
        (with no image: ``snapshot()`` reads it).

        Raises:
            OSError: writing the snapshot file or its WAL marker failed; nothing changed
                in memory.
        """
        current = self._mem.snapshot()
        if index <= current.meta.index:
            return current
        assert index <= self._mem.last_index(), (
            f"snapshot {index} is past the last index {self._mem.last_index()}"
        )
        marker = SnapshotMarker(index=index, term=self._mem.term(index))
        snap = Snapshot(SnapshotMeta(index, marker.term, conf_state), data)
        self._snaps.save(snap)
        self._wal.save_snapshot_marker(marker)
        self._mem.create_snapshot(index, conf_state, b"")  # the file has the image
        compact_to = catch_up_start_of(self._mem, index, self._keep_entries, self._keep_bytes)
        if compact_to >= self._mem.first_index():
            self._mem.compact(compact_to)
        self._release_old_files()
        return snap

    def close(self) -> None:
        self._wal.close()

    # -- internals

    def _release_old_files(self) -> None:
        # The WAL keeps the entry the in-memory dummy stands for, so that a restart can
        # rebuild the same first index with the right term.
        dummy_index = self._mem.first_index() - 1
        try:
            self._wal.release_to(dummy_index - 1)
            self._snaps.purge(self._keep_snapshots)
        except OSError as exc:
            log.warning("storage: clean-up after a snapshot failed (retried next time): %s",
                        exc)

    def _recover(self, replay: WalReplay, wal_dir: str) -> MemoryStorage:
        if replay.created and self._snaps.markers():
            raise CorruptData(
                f"{wal_dir}: no WAL, but there are snapshot files; refusing to start "
                f"without the log they belong to"
            )
        self._remove_unreferenced_snapshots(replay.snapshots)
        snap = self._snaps.load_newest(allowed=set(replay.snapshots))
        self._recovered = snap
        meta_only = Snapshot(snap.meta) if snap is not None else None
        return rebuild_log(replay, meta_only, self._keep_entries, wal_dir,
                           keep_bytes=self._keep_bytes)

    def _remove_unreferenced_snapshots(self, markers: Sequence[SnapshotMarker]) -> None:
        """Delete snapshot files newer than the WAL's newest marker.

        Their write finished but the WAL record that would have made them part of the
        state never did, so nothing was acknowledged from them. Left in place, they would
        look like the newest files and ``purge`` would keep them instead of real ones.
        """
        newest = markers[-1] if markers else SnapshotMarker(index=0, term=0)
        for found in self._snaps.markers():
            if found.index > newest.index or (found.index == newest.index and found != newest):
                log.warning("storage: removing snapshot %s: the WAL never recorded it", found)
                self._snaps.remove(found)


def rebuild_log(
    replay: WalReplay, snap: Snapshot | None, keep_entries: int, wal_dir: str,
    *, keep_bytes: int | None = None,
) -> MemoryStorage:
    """The in-memory log after a restart: ``snap`` plus the WAL's entries.

    Raises:
        CorruptData: the WAL does not reach back to the snapshot, or disagrees with it.
    """
    base = snap.meta if snap is not None else SnapshotMeta()
    entries = replay.entries
    _check_wal_covers(entries, base, wal_dir, has_snapshot=snap is not None)
    dummy_index, dummy_term = _choose_dummy(replay, base, keep_entries, keep_bytes)
    mem = MemoryStorage()
    if dummy_index == base.index and snap is not None:
        mem.apply_snapshot(snap)
    elif dummy_index > 0:
        mem.apply_snapshot(Snapshot(SnapshotMeta(index=dummy_index, term=dummy_term)))
    mem.append([e for e in entries if e.index > dummy_index])
    if snap is not None and dummy_index < base.index:
        mem.create_snapshot(base.index, base.conf_state, snap.data)
    hard_state = replay.hard_state or HardState()
    if hard_state.commit < base.index:
        # A snapshot only ever holds committed entries, so its index is a safe lower bound;
        # Raft refuses to start with a commit index below its snapshot.
        hard_state = dataclasses.replace(hard_state, commit=base.index)
    mem.set_hard_state(hard_state)
    return mem


def _check_wal_covers(
    entries: Sequence[Entry], base: SnapshotMeta, wal_dir: str, *, has_snapshot: bool
) -> None:
    if not entries:
        return
    lo, last = entries[0].index, entries[-1].index
    if last > base.index and lo > base.index + 1:
        what = f"the snapshot ends at index {base.index}" if has_snapshot else "no usable snapshot"
        raise CorruptData(
            f"{wal_dir}: the WAL starts at index {lo} but {what}: entries "
            f"{base.index + 1}..{lo - 1} are lost"
        )
    if has_snapshot and lo <= base.index <= last and entries[base.index - lo].term != base.term:
        raise CorruptData(
            f"{wal_dir}: the WAL has term {entries[base.index - lo].term} at index "
            f"{base.index}, the snapshot says term {base.term}"
        )


def _choose_dummy(replay: WalReplay, base: SnapshotMeta, keep_entries: int,
                  keep_bytes: int | None = None) -> tuple[int, int]:
    """Where the in-memory log starts: ``(index, term)`` of its dummy entry.

    As far back as ``keep_entries`` (holding at most ``keep_bytes``) before the snapshot,
    but only to an index whose term is known (an entry in the WAL, a snapshot marker, or 0)
    with every entry after it present.
    """
    entries = replay.entries
    if not entries or entries[0].index > base.index or entries[-1].index < base.index:
        return base.index, base.term
    lo = entries[0].index
    behind = entries[: base.index - lo + 1] if keep_bytes is not None else []
    dummy_index = max(catch_up_start(behind, base.index, keep_entries, keep_bytes), lo - 1)
    if dummy_index >= lo:
        return dummy_index, entries[dummy_index - lo].term
    known_terms = {m.index: m.term for m in replay.snapshots}
    known_terms[0] = 0
    if dummy_index in known_terms:
        return dummy_index, known_terms[dummy_index]
    return lo, entries[0].term
