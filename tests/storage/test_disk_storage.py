"""DiskStorage: the LogStorage Raft reads, the Ready contract it persists, and recovery."""

from __future__ import annotations

import errno
import posixpath
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from storage_testkit import CountingFS, ents, view

from discoverd.consensus.messages import ConfState, Entry, HardState, Snapshot, SnapshotMeta
from discoverd.consensus.storage import LogStorage, MemoryStorage
from discoverd.errors import (
    Compacted,
    CorruptData,
    LogUnavailable,
    SnapshotTemporarilyUnavailable,
)
from discoverd.storage.disk_storage import DiskStorage
from discoverd.storage.fs import FileSystem, OsFS
from discoverd.storage.meta import MemberMeta, read_meta
from discoverd.storage.snapshot import BrokenSnapshot
from discoverd.testing.simfs import SimFS

MEMBER = "/data/member"
CS = ConfState(voters=(1, 2, 3))


def _open(fs: FileSystem, member_dir: str = MEMBER, **kw: Any) -> DiskStorage:
    return DiskStorage(fs, member_dir, **{"cluster_id": 0xAB, "member_id": 1, **kw})


def _as_log_storage(s: DiskStorage) -> LogStorage:
    return s  # mypy checks that DiskStorage satisfies the protocol


def test_reads_behave_exactly_like_memory_storage() -> None:
    disk, mem = _open(SimFS()), MemoryStorage()
    steps = [
        (HardState(term=1, vote=1), ents(1, 1, 5)),
        (HardState(term=2, vote=2, commit=3), ents(2, 4, 6)),  # overwrite 4..5
        (None, ents(2, 7, 9)),
    ]
    for hs, batch in steps:
        disk.save(hs, batch)
        if hs is not None:
            mem.set_hard_state(hs)
        mem.append(batch)
    assert view(_as_log_storage(disk)) == view(mem)
    disk.create_snapshot(5, CS, b"five")
    mem.create_snapshot(5, CS, b"five")
    assert disk.snapshot() == mem.snapshot()
    assert disk.entries(2, 8, max_bytes=10) == mem.entries(2, 8, max_bytes=10)
    for storage in (disk, mem):
        with pytest.raises(LogUnavailable):
            storage.term(10)
        with pytest.raises(LogUnavailable):
            storage.entries(3, 11)
        with pytest.raises(Compacted):
            storage.entries(0, 2)


def test_restart_recovers_log_and_hard_state() -> None:
    fs = SimFS()
    disk = _open(fs)
    disk.save(HardState(term=1, vote=1, commit=0), ents(1, 1, 3))
    disk.save(HardState(term=2, vote=3, commit=3), ents(2, 4, 4))
    before = view(disk)
    disk.close()
    fs.crash()
    assert view(_open(fs)) == before


def test_each_save_is_one_write_and_one_fsync() -> None:
    fs = CountingFS(SimFS())
    disk = _open(fs)
    for i in range(1, 6):
        fs.reset()
        disk.save(HardState(term=1, vote=1, commit=i - 1), ents(1, 3 * i - 2, 3 * i))
        assert fs.counts == {"write": 1, "fsync": 1}, fs.counts


def test_crash_before_fsync_loses_the_entries_but_not_the_synced_hard_state() -> None:
    fs = SimFS()
    disk = _open(fs)
    disk.save(HardState(term=4, vote=2, commit=1), ents(4, 1, 2))
    disk.save(HardState(term=5, vote=3, commit=2), ents(5, 3, 6), must_sync=False)
    assert disk.last_index() == 6  # Raft may read what it handed over
    fs.crash()
    disk = _open(fs)
    assert disk.initial_state()[0] == HardState(term=4, vote=2, commit=1)
    assert disk.last_index() == 2
    assert disk.entries(1, 3) == ents(4, 1, 2)


def test_conflicting_suffix_overwrite_survives_restart() -> None:
    fs = SimFS()
    disk = _open(fs)
    disk.save(HardState(term=1), ents(1, 1, 8))
    disk.save(HardState(term=3), ents(3, 5, 6))
    expected = ents(1, 1, 4) + ents(3, 5, 6)
    assert disk.entries(1, 7) == expected
    fs.crash()
    disk = _open(fs)
    assert disk.last_index() == 6
    assert disk.entries(1, 7) == expected


def test_snapshot_and_restart_recover_the_exact_log_and_hard_state() -> None:
    fs = SimFS()
    disk = _open(fs, segment_bytes=150, keep_entries=3)
    for i in range(1, 41):
        disk.save(HardState(term=2, vote=1, commit=i - 1), ents(2, i, i))
        if i % 10 == 0:
            disk.create_snapshot(i - 2, CS, b"applied@%d" % (i - 2))
    before = view(disk)
    assert before.snapshot.meta == SnapshotMeta(index=38, term=2, conf_state=CS)
    assert before.first_index == 36  # 38 - keep_entries + 1
    wal_files = fs.listdir(posixpath.join(MEMBER, "wal"))
    assert int(wal_files[0].split("-")[0], 16) > 0, "old segments were released"
    fs.crash()
    after = _open(fs, segment_bytes=150, keep_entries=3)
    assert view(after) == before
    assert after.initial_state() == (before.hard_state, CS)
    with pytest.raises(Compacted):
        after.entries(35, 37)


def test_installed_snapshot_replaces_the_log_and_survives_restart() -> None:
    fs = SimFS()
    disk = _open(fs)
    disk.save(HardState(term=1, vote=1, commit=2), ents(1, 1, 6))
    snap = Snapshot(SnapshotMeta(index=50, term=3, conf_state=CS), b"leader state")
    disk.save(HardState(term=3, vote=0, commit=50), ents(3, 51, 52), snap)
    before = view(disk)
    assert (before.first_index, before.last_index, before.snapshot) == (51, 52, snap)
    fs.crash()
    after = _open(fs)
    assert view(after) == before
    snap_files = fs.listdir(posixpath.join(MEMBER, "snap"))
    assert snap_files == ["0000000000000003-0000000000000032.snap"]


def test_snapshot_received_with_hard_state_unchanged_still_starts_with_commit_at_it() -> None:
    fs = SimFS()
    disk = _open(fs)
    disk.save(HardState(term=3, vote=0, commit=0), [])
    disk.save(None, [], Snapshot(SnapshotMeta(index=9, term=3, conf_state=CS), b"s"))
    fs.crash()
    assert _open(fs).initial_state()[0] == HardState(term=3, vote=0, commit=9)


def test_snapshot_file_without_its_wal_record_is_ignored_and_removed() -> None:
    fs = SimFS()
    disk = _open(fs)
    disk.save(HardState(term=1, commit=5), ents(1, 1, 5))
    fs.fail_next("write", OSError(errno.EIO, "marker write failed"),
                 path_prefix=posixpath.join(MEMBER, "wal"))
    with pytest.raises(OSError, match="marker write failed"):
        disk.create_snapshot(4, CS, b"never recorded")
    assert disk.snapshot() == Snapshot(), "a failed snapshot must not show in memory"
    assert fs.listdir(posixpath.join(MEMBER, "snap")) == ["0000000000000001-0000000000000004.snap"]
    fs.crash()
    disk = _open(fs)
    assert disk.snapshot() == Snapshot()
    assert fs.listdir(posixpath.join(MEMBER, "snap")) == []
    assert disk.entries(1, 6) == ents(1, 1, 5)


def test_entries_kept_behind_a_snapshot_are_bounded_by_bytes_too_and_after_a_restart() -> None:
    """keep_entries 100 would keep every entry; keep_bytes lets only what fits in 2,500 bytes
    of entry data stay (two 1,000-byte entries), in memory now and after a restart."""
    fs = SimFS()
    disk = _open(fs, keep_entries=100, keep_bytes=2_500)
    big = [Entry(1, i, data=b"%04d" % i + b"x" * 996) for i in range(1, 21)]
    disk.save(HardState(term=1, commit=20), big)
    disk.create_snapshot(15, CS, b"fifteen")
    assert disk.first_index() == 14  # 14 and 15 kept behind the snapshot, 16..20 after it
    assert disk.entries(14, 21) == big[13:]
    fs.crash()
    after = _open(fs, keep_entries=100, keep_bytes=2_500)
    assert after.first_index() == 14
    assert after.entries(14, 21) == big[13:]
    assert after.snapshot().data == b"fifteen"


def test_broken_snapshot_falls_back_while_the_wal_still_reaches_back() -> None:
    fs = SimFS()
    disk = _open(fs, keep_entries=100)
    disk.save(HardState(term=1, commit=9), ents(1, 1, 9))
    disk.create_snapshot(4, CS, b"four")
    disk.create_snapshot(8, CS, b"eight")
    before = view(disk)
    fs.crash()
    fs.corrupt_byte(posixpath.join(MEMBER, "snap", "0000000000000001-0000000000000008.snap"), 9)
    after = _open(fs, keep_entries=100)
    assert after.snapshot().data == b"four"
    assert after.entries(1, 10) == list(before.entries)


def test_broken_snapshot_without_the_entries_it_covers_is_refused() -> None:
    fs = SimFS()
    disk = _open(fs, segment_bytes=100, keep_entries=0, keep_snapshots=1)
    for i in range(1, 21):
        disk.save(HardState(term=1, commit=i), ents(1, i, i))
    disk.create_snapshot(18, CS, b"eighteen")
    fs.crash()
    fs.corrupt_byte(posixpath.join(MEMBER, "snap", "0000000000000001-0000000000000012.snap"), 9)
    with pytest.raises(CorruptData, match=r"WAL starts at index \d+ but no usable snapshot"):
        _open(fs, segment_bytes=100, keep_entries=0, keep_snapshots=1)


def test_snapshot_files_without_any_wal_are_refused() -> None:
    fs = SimFS()
    disk = _open(fs)
    disk.save(HardState(term=1, commit=3), ents(1, 1, 3))
    disk.create_snapshot(3, CS, b"x")
    disk.close()
    wal_dir = posixpath.join(MEMBER, "wal")
    for name in fs.listdir(wal_dir):
        fs.remove(posixpath.join(wal_dir, name))
    with pytest.raises(CorruptData, match="no WAL, but there are snapshot files"):
        _open(fs)


def test_another_members_data_dir_is_refused_with_a_clear_message() -> None:
    fs = SimFS()
    _open(fs, name="alpha").save(HardState(term=1), ents(1, 1, 1))
    assert read_meta(fs, posixpath.join(MEMBER, "meta")) == MemberMeta(0xAB, 1, "alpha")
    with pytest.raises(CorruptData, match=r"belongs to cluster 0xab member 0x1 \('alpha'\)"):
        _open(fs, member_id=2)
    with pytest.raises(CorruptData, match="belongs to cluster 0xab member 0x1"):
        _open(fs, cluster_id=0xAC)
    fs.remove(posixpath.join(MEMBER, "meta"))  # without the meta file, the WAL header refuses
    with pytest.raises(CorruptData, match="this WAL belongs to cluster 0xab member 0x1"):
        _open(fs, member_id=2)
    assert not fs.exists(posixpath.join(MEMBER, "meta")), "a refused start must not claim"
    _open(fs, name="alpha")  # the rightful owner still starts, and rewrites the file
    assert read_meta(fs, posixpath.join(MEMBER, "meta")) == MemberMeta(0xAB, 1, "alpha")


def test_enospc_during_save_raises_cleanly_and_storage_keeps_working() -> None:
    fs = SimFS()
    disk = _open(fs)
    disk.save(HardState(term=1, vote=1, commit=1), ents(1, 1, 2))
    before = view(disk)
    fs.space_left_bytes = 16
    with pytest.raises(OSError, match="no space left") as info:
        disk.save(HardState(term=1, vote=1, commit=2), ents(1, 3, 6))
    assert info.value.errno == errno.ENOSPC
    assert view(disk) == before, "a failed save must not show in memory"
    fs.space_left_bytes = None
    disk.save(HardState(term=1, vote=1, commit=3), ents(1, 3, 3))
    expected = view(disk)
    fs.crash()
    recovered = _open(fs)
    assert view(recovered) == expected
    assert recovered.torn_tail_bytes == 0


def test_enospc_while_writing_a_received_snapshot_changes_nothing() -> None:
    fs = SimFS()
    disk = _open(fs)
    disk.save(HardState(term=1, commit=1), ents(1, 1, 2))
    before = view(disk)
    fs.space_left_bytes = 10
    snap = Snapshot(SnapshotMeta(index=20, term=2, conf_state=CS), b"z" * 100)
    with pytest.raises(OSError, match="no space left"):
        disk.save(HardState(term=2, commit=20), [], snap)
    assert view(disk) == before
    fs.space_left_bytes = None
    fs.crash()
    assert view(_open(fs)) == before
    assert fs.listdir(posixpath.join(MEMBER, "snap")) == []


def test_a_received_snapshot_is_on_disk_before_the_wal_mentions_it() -> None:
    """If writing the snapshot file fails, the WAL must not reference it: otherwise the
    next start would find a log that begins after a snapshot it cannot load."""
    fs = SimFS()
    disk = _open(fs)
    disk.save(HardState(term=1, commit=1), ents(1, 1, 2))
    before = view(disk)
    fs.fail_next("fsync", OSError(errno.EIO, "snapshot fsync failed"),
                 path_prefix=posixpath.join(MEMBER, "snap"))
    snap = Snapshot(SnapshotMeta(index=20, term=2, conf_state=CS), b"leader")
    with pytest.raises(OSError, match="snapshot fsync failed"):
        disk.save(HardState(term=2, commit=20), ents(2, 21, 21), snap)
    assert view(disk) == before
    fs.crash()
    assert view(_open(fs)) == before


def test_after_a_failed_fsync_saves_are_refused_and_a_restart_recovers() -> None:
    fs = SimFS()
    disk = _open(fs)
    disk.save(HardState(term=1, commit=1), ents(1, 1, 2))
    fs.fail_next("fsync", OSError(errno.EIO, "fsync failed"))
    with pytest.raises(OSError, match="fsync failed"):
        disk.save(HardState(term=1, commit=2), ents(1, 3, 3))
    with pytest.raises(OSError, match="unusable until reopened"):
        disk.save(HardState(term=1, commit=2), ents(1, 3, 3))
    fs.crash()
    assert _open(fs).last_index() == 2


def test_end_to_end_on_the_real_file_system(tmp_path: Path) -> None:
    member = str(tmp_path / "data" / "member")
    disk = _open(OsFS(), member, segment_bytes=300, keep_entries=2)
    for i in range(1, 31):
        disk.save(HardState(term=1, vote=1, commit=i), ents(1, i, i, tag=b"payload"))
    disk.create_snapshot(25, CS, b"twenty-five")
    before = view(disk)
    disk.close()
    again = _open(OsFS(), member, segment_bytes=300, keep_entries=2)
    assert view(again) == before
    assert sorted(p.name for p in (tmp_path / "data" / "member").iterdir()) == [
        "meta", "snap", "wal"
    ]


# -- the snapshot image stays in its file (issue 12: ~280 MB at a million keys)

SNAP_DIR = posixpath.join(MEMBER, "snap")


class ReadCountingFS(CountingFS):
    """Counts whole-file reads of snapshot files (the WAL's reads are not of interest)."""

    def read_file(self, path: str) -> bytes:
        if path.endswith(".snap"):
            self.counts["read_snap"] += 1
        return self.inner.read_file(path)


def _hide(fs: FileSystem, path: str) -> None:
    fs.rename(path, path + ".away")


def _unhide(fs: FileSystem, path: str) -> None:
    fs.rename(path + ".away", path)


def _snap_path(meta: SnapshotMeta) -> str:
    return posixpath.join(SNAP_DIR, f"{meta.term:016x}-{meta.index:016x}.snap")


def test_a_snapshot_keeps_no_image_in_memory_and_reads_it_from_its_file() -> None:
    fs = SimFS()
    disk = _open(fs)
    disk.save(HardState(term=2, commit=6), ents(2, 1, 6))
    image = b"the image at 5 " * 100
    made = disk.create_snapshot(5, CS, image)
    assert made == Snapshot(SnapshotMeta(5, 2, CS), image)
    assert disk._mem.snapshot() == Snapshot(made.meta), "the in-memory log holds the meta only"
    assert disk.snapshot() == made
    path = _snap_path(made.meta)
    _hide(fs, path)
    with pytest.raises(SnapshotTemporarilyUnavailable):
        disk.snapshot()  # nothing in memory to fall back on
    _unhide(fs, path)
    assert disk.snapshot() == made
    fs.corrupt_byte(path, fs.file_size(path) - 1)
    with pytest.raises(SnapshotTemporarilyUnavailable):
        disk.snapshot()
    assert disk.last_index() == 6, "the storage goes on serving the log"


def test_a_snapshot_written_by_another_process_is_verified_not_loaded() -> None:
    """The forked child's path: the file is written elsewhere, the parent checks it and
    records its meta only; ``snapshot()`` still returns the exact image."""
    fs = ReadCountingFS(SimFS())
    disk = _open(fs)
    disk.save(HardState(term=2, commit=8), ents(2, 1, 8))
    snap = Snapshot(SnapshotMeta(7, 2, CS), b"written by the child" * 50)
    assert disk.write_snapshot_file(snap)
    fs.reset()
    assert disk.verify_snapshot_file(snap.meta) == fs.file_size(_snap_path(snap.meta))
    assert fs.counts["read_snap"] == 0, "verified in pieces, never read whole"
    meta_only = Snapshot(snap.meta)
    disk.record_snapshot(meta_only)
    disk.snapshot_written(meta_only, compact_to=7)
    assert disk.first_index() == 8
    assert disk.snapshot() == snap
    assert fs.counts["read_snap"] == 1


def test_a_broken_file_from_another_process_is_refused_and_removed() -> None:
    fs = SimFS()
    disk = _open(fs)
    disk.save(HardState(term=2, commit=8), ents(2, 1, 8))
    snap = Snapshot(SnapshotMeta(7, 2, CS), b"written by the child" * 50)
    disk.write_snapshot_file(snap)
    fs.corrupt_byte(_snap_path(snap.meta), 100)
    with pytest.raises(BrokenSnapshot):
        disk.verify_snapshot_file(snap.meta)
    assert fs.listdir(SNAP_DIR) == []
    assert disk.snapshot() == Snapshot()


def test_an_installed_snapshot_keeps_no_image_after_it_is_persisted() -> None:
    fs = SimFS()
    disk = _open(fs)
    snap = Snapshot(SnapshotMeta(index=50, term=3, conf_state=CS), b"leader state" * 100)
    disk.save(HardState(term=3, commit=50), [], snap)
    assert disk._mem.snapshot() == Snapshot(snap.meta)
    assert disk.snapshot() == snap  # read back when this member, as leader, sends it on
    _hide(fs, _snap_path(snap.meta))
    with pytest.raises(SnapshotTemporarilyUnavailable):
        disk.snapshot()


def test_restart_reads_the_snapshot_file_once_and_keeps_it_only_for_the_first_caller() -> None:
    fs = ReadCountingFS(SimFS())
    disk = _open(fs)
    disk.save(HardState(term=2, commit=6), ents(2, 1, 6))
    made = disk.create_snapshot(5, CS, b"five" * 100)
    disk.close()
    fs.reset()
    again = _open(fs)
    assert fs.counts["read_snap"] == 1  # recovery loads and checks it
    assert again.snapshot() == made  # the member's restore: that same copy, no second read
    assert fs.counts["read_snap"] == 1
    assert again._recovered is None, "and then it is dropped"
    assert again.snapshot() == made  # any later caller reads the file
    assert fs.counts["read_snap"] == 2


class _Deferred:
    """The runtime's side of ``read_in_background``, by hand: reads wait until ``run``."""

    def __init__(self) -> None:
        self.pending: list[tuple[Callable[[], Snapshot], Callable[[Snapshot | None], None]]] = []

    def __call__(self, read: Callable[[], Snapshot],
                 done: Callable[[Snapshot | None], None]) -> None:
        self.pending.append((read, done))

    def run(self) -> None:
        pending, self.pending = self.pending, []
        for read, done in pending:
            try:
                snap: Snapshot | None = read()
            except SnapshotTemporarilyUnavailable:
                snap = None
            done(snap)


def test_with_a_background_reader_the_file_is_read_off_the_callers_thread_and_handed_once(
) -> None:
    """A large image is not read on the member's loop: the first ask starts one read and is
    told to try later (asking again meanwhile starts no second read); the image is handed
    out once, and the next ask reads the file again."""
    fs = ReadCountingFS(SimFS())
    disk = _open(fs)
    disk.save(HardState(term=2, commit=6), ents(2, 1, 6))
    made = disk.create_snapshot(5, CS, b"five" * 100)
    reader = disk.read_in_background = _Deferred()
    fs.reset()
    for _ in range(3):
        with pytest.raises(SnapshotTemporarilyUnavailable):
            disk.snapshot()
    assert len(reader.pending) == 1
    assert fs.counts["read_snap"] == 0, "nothing read on the caller's thread"
    reader.run()
    assert fs.counts["read_snap"] == 1
    assert disk.snapshot() == made
    assert disk._read_done is None, "not kept once handed out"
    with pytest.raises(SnapshotTemporarilyUnavailable):
        disk.snapshot()
    assert len(reader.pending) == 1


def test_a_background_read_that_fails_or_is_overtaken_hands_out_nothing() -> None:
    fs = SimFS()
    disk = _open(fs)
    disk.save(HardState(term=2, commit=9), ents(2, 1, 9))
    old = disk.create_snapshot(5, CS, b"five" * 100)
    reader = disk.read_in_background = _Deferred()
    _hide(fs, _snap_path(old.meta))
    with pytest.raises(SnapshotTemporarilyUnavailable):
        disk.snapshot()
    reader.run()  # the file is missing: logged, nothing handed out, asked again later
    _unhide(fs, _snap_path(old.meta))
    with pytest.raises(SnapshotTemporarilyUnavailable):
        disk.snapshot()
    assert len(reader.pending) == 1, "a failed read is retried"
    newer = disk.create_snapshot(8, CS, b"eight" * 100)
    reader.run()  # finishes with the old image, which is now stale
    assert disk._read_done is None
    with pytest.raises(SnapshotTemporarilyUnavailable):
        disk.snapshot()
    reader.run()
    assert disk.snapshot() == newer
