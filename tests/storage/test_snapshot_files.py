"""Snapshot files: atomic writes, choosing the newest intact one, cleaning up."""

from __future__ import annotations

import errno
import posixpath
import random
from pathlib import Path

import pytest
from storage_testkit import CountingFS

from discoverd.consensus.messages import ConfState, Snapshot, SnapshotMeta
from discoverd.storage.fs import OsFS
from discoverd.storage.snapshot import (
    BrokenSnapshot,
    SnapshotStore,
    decode_snapshot,
    encode_snapshot,
)
from discoverd.storage.wal import SnapshotMarker
from discoverd.testing.simfs import SimFS

DIR = "/data/member/snap"


def _snap(index: int, term: int = 1, data: bytes = b"") -> Snapshot:
    cs = ConfState(voters=(1, 2, 3), learners=(4,))
    return Snapshot(SnapshotMeta(index=index, term=term, conf_state=cs),
                    data or b"state@%d" % index)


def test_save_and_load_round_trip_under_the_documented_name() -> None:
    fs = SimFS()
    store = SnapshotStore(fs, DIR)
    path = store.save(_snap(0x2A, term=3))
    assert path == posixpath.join(DIR, "0000000000000003-000000000000002a.snap")
    assert store.load_newest() == _snap(0x2A, term=3)


def test_save_is_tmp_fsync_rename_fsync_dir() -> None:
    fs = CountingFS(SimFS())
    store = SnapshotStore(fs, DIR)
    fs.reset()
    store.save(_snap(5))
    assert fs.counts == {"open_append": 1, "write": 1, "fsync": 1, "rename": 1, "fsync_dir": 1}


def test_a_saved_snapshot_survives_a_crash_and_an_interrupted_one_leaves_the_old() -> None:
    fs = SimFS()
    store = SnapshotStore(fs, DIR)
    store.save(_snap(10))
    fs.fail_next("rename", OSError(errno.EIO, "crash point"))
    with pytest.raises(OSError, match="crash point"):
        store.save(_snap(20))
    fs.crash(random.Random(0))
    store = SnapshotStore(fs, DIR)
    assert store.load_newest() == _snap(10)
    assert not any(n.endswith(".tmp") for n in fs.listdir(DIR)), "leftover .tmp removed"


def test_newest_intact_snapshot_wins_and_broken_ones_are_quarantined() -> None:
    fs = SimFS()
    store = SnapshotStore(fs, DIR)
    for i in (10, 30, 20):
        store.save(_snap(i))
    newest = store.path(SnapshotMarker(index=30, term=1))
    fs.corrupt_byte(newest, 15)
    assert store.load_newest() == _snap(20)
    assert posixpath.basename(newest) + ".broken" in fs.listdir(DIR)
    assert [m.index for m in store.markers()] == [10, 20]


def test_content_that_disagrees_with_the_file_name_is_broken() -> None:
    fs = SimFS()
    store = SnapshotStore(fs, DIR)
    store.save(_snap(10))
    h = fs.open_append(store.path(SnapshotMarker(index=40, term=1)))
    h.write(encode_snapshot(_snap(41)))
    h.fsync()
    assert store.load_newest() == _snap(10)


def test_allowed_restricts_the_choice() -> None:
    fs = SimFS()
    store = SnapshotStore(fs, DIR)
    for i in (10, 20, 30):
        store.save(_snap(i))
    allowed = {SnapshotMarker(index=20, term=1), SnapshotMarker(index=10, term=1)}
    assert store.load_newest(allowed) == _snap(20)
    assert store.load_newest(set()) is None


def test_purge_keeps_the_newest_n() -> None:
    fs = SimFS()
    store = SnapshotStore(fs, DIR)
    for i in range(1, 8):
        store.save(_snap(i * 10))
    removed = store.purge(keep=3)
    assert len(removed) == 4
    assert [m.index for m in store.markers()] == [50, 60, 70]
    assert store.purge(keep=3) == []
    with pytest.raises(ValueError, match="at least 1"):
        store.purge(keep=0)


def test_decode_rejects_trailing_bytes_and_garbage() -> None:
    good = encode_snapshot(_snap(3))
    assert decode_snapshot(good) == _snap(3)
    for bad in (good + b"\x00", good[:-1], b"", b"\x00" * 16):
        with pytest.raises(BrokenSnapshot):
            decode_snapshot(bad)


def test_works_on_the_real_file_system(tmp_path: Path) -> None:
    store = SnapshotStore(OsFS(), str(tmp_path / "snap"))
    store.save(_snap(7, data=b"x" * 100_000))
    (tmp_path / "snap" / "0000000000000001-0000000000000009.snap.tmp").write_bytes(b"half")
    reopened = SnapshotStore(OsFS(), str(tmp_path / "snap"))
    assert reopened.load_newest() == _snap(7, data=b"x" * 100_000)
    assert sorted(p.name for p in (tmp_path / "snap").iterdir()) == [
        "0000000000000001-0000000000000007.snap"
    ]


@pytest.mark.parametrize("chunk_bytes", [1, 3, 8, 1 << 20])
def test_verify_streams_the_file_and_finds_any_damage(
    chunk_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``verify`` accepts exactly what ``load`` accepts, whatever the piece size (the frame
    header and the meta may straddle pieces), and returns the file's size."""
    monkeypatch.setattr("discoverd.storage.snapshot.VERIFY_CHUNK_BYTES", chunk_bytes)
    fs = SimFS()
    store = SnapshotStore(fs, DIR)
    snap = _snap(9, term=2, data=b"image " * 50)
    path = store.save(snap)
    assert store.verify(snap.meta) == fs.file_size(path)
    good = fs.read_file(path)
    for offset in (0, 5, 10, len(good) // 2, len(good) - 1):  # length, CRC, meta, image
        fs.corrupt_byte(path, offset)
        with pytest.raises(BrokenSnapshot):
            store.verify(snap.meta)
        with pytest.raises(BrokenSnapshot):
            store.load(SnapshotMarker(index=9, term=2))
        fs.corrupt_byte(path, offset)  # flipped back
    assert store.verify(snap.meta) == len(good)


def test_verify_refuses_a_truncated_file_and_another_snapshots_content() -> None:
    fs = SimFS()
    store = SnapshotStore(fs, DIR)
    snap = _snap(9)
    path = store.save(snap)
    other_membership = SnapshotMeta(index=9, term=1, conf_state=ConfState(voters=(1, 2)))
    with pytest.raises(BrokenSnapshot, match="does not hold"):
        store.verify(other_membership)
    fs.truncate(path, fs.file_size(path) - 1)
    with pytest.raises(BrokenSnapshot, match="announces"):
        store.verify(snap.meta)
    fs.truncate(path, 4)
    with pytest.raises(BrokenSnapshot, match="header"):
        store.verify(snap.meta)
    fs.remove(path)
    with pytest.raises(FileNotFoundError):
        store.verify(snap.meta)


def test_verify_on_the_real_file_system(tmp_path: Path) -> None:
    store = SnapshotStore(OsFS(), str(tmp_path / "snap"))
    snap = _snap(3, data=bytes(range(256)) * 9000)  # more than one piece of a MiB
    path = Path(store.save(snap))
    assert store.verify(snap.meta) == path.stat().st_size
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 3] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(BrokenSnapshot, match="CRC"):
        store.verify(snap.meta)
