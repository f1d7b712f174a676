"""The WAL after things went wrong: crashes, torn tails, corruption, a full disk, a failed
fsync. The rule under test (wal.py docstring): damage a crash can cause is repaired, damage
it cannot cause is refused with the file and byte offset."""

from __future__ import annotations

import errno
import os
import posixpath
import random
from pathlib import Path

import cbor2
import pytest
from storage_testkit import ents, frame_offsets

from discoverd.consensus.messages import HardState
from discoverd.errors import CorruptData
from discoverd.storage.fs import OsFS
from discoverd.storage.wal import WAL, encode_frame
from discoverd.testing.simfs import SimFS

DIR = "/data/member/wal"
ID = {"cluster_id": 1, "member_id": 1}


def _tail_path(fs: SimFS | OsFS, wal_dir: str = DIR) -> str:
    return posixpath.join(wal_dir, fs.listdir(wal_dir)[-1])


def _wal_with_records(fs: SimFS, count: int) -> WAL:
    wal, _ = WAL.open(fs, DIR, **ID)
    for i in range(1, count + 1):
        wal.save(HardState(term=1, commit=i - 1), ents(1, i, i))
    return wal


def test_crash_after_append_before_fsync_loses_entries_but_keeps_synced_hard_state() -> None:
    fs = SimFS()
    wal, _ = WAL.open(fs, DIR, **ID)
    wal.save(HardState(term=2, vote=3, commit=1), ents(2, 1, 2))
    wal.save(HardState(term=3, vote=0, commit=2), ents(3, 3, 5), must_sync=False)
    fs.crash()
    _, replay = WAL.open(fs, DIR, **ID)
    assert replay.hard_state == HardState(term=2, vote=3, commit=1)
    assert list(replay.entries) == ents(2, 1, 2)


def test_torn_tails_from_random_crashes_are_repaired_and_never_half_applied() -> None:
    synced = ents(1, 1, 4)
    unsynced_batches = [ents(2, 5, 6), ents(2, 7, 7), ents(2, 8, 11)]
    torn_seen = 0
    for seed in range(200):
        fs = SimFS()
        wal, _ = WAL.open(fs, DIR, **ID)
        wal.save(HardState(term=1, vote=1, commit=2), synced)
        for batch in unsynced_batches:
            wal.save(HardState(term=2, vote=1, commit=batch[0].index - 1), batch,
                     must_sync=False)
        fs.crash(random.Random(seed))

        _, replay = WAL.open(fs, DIR, **ID)
        torn_seen += replay.torn_tail_bytes > 0
        kept = [e.index for e in replay.entries]
        allowed_ends = [4] + [b[-1].index for b in unsynced_batches]
        assert kept == list(range(1, kept[-1] + 1)), f"seed {seed}: gap in {kept}"
        assert kept[-1] in allowed_ends, f"seed {seed}: half a save survived: {kept}"
        assert list(replay.entries[:4]) == synced
        # The repaired WAL takes new records and reopens cleanly.
        wal2, _ = WAL.open(fs, DIR, **ID)
        wal2.save(HardState(term=5, vote=1, commit=1), ents(5, kept[-1] + 1, kept[-1] + 1))
        wal2.close()
        _, again = WAL.open(fs, DIR, **ID)
        assert again.torn_tail_bytes == 0
        assert again.entries[-1].index == kept[-1] + 1
    assert torn_seen > 20, "the seeds never produced a torn tail: the test proves nothing"


def test_os_fs_record_cut_midway_is_truncated(tmp_path: Path) -> None:
    fs = OsFS()
    wal_dir = str(tmp_path / "wal")
    wal, _ = WAL.open(fs, wal_dir, **ID)
    for i in range(1, 5):
        wal.save(HardState(term=1, commit=i), ents(1, i, i))
    wal.close()
    path = _tail_path(fs, wal_dir)
    data = fs.read_file(path)
    last = frame_offsets(data)[-1]
    os.truncate(path, last + (len(data) - last) // 2)

    _, replay = WAL.open(fs, wal_dir, **ID)
    assert list(replay.entries) == ents(1, 1, 3)
    assert replay.hard_state == HardState(term=1, commit=3)
    assert replay.torn_tail_bytes == (len(data) - last) // 2
    assert os.path.getsize(path) == last


def test_flipped_byte_in_the_last_record_is_a_torn_tail() -> None:
    fs = SimFS()
    _wal_with_records(fs, 4).close()
    path = _tail_path(fs)
    offsets = frame_offsets(fs.read_file(path))
    fs.corrupt_byte(path, offsets[-1] + 12)
    _, replay = WAL.open(fs, DIR, **ID)
    assert list(replay.entries) == ents(1, 1, 3)
    assert fs.file_size(path) == offsets[-1]


def test_corrupt_middle_record_is_refused_naming_file_and_offset() -> None:
    fs = SimFS()
    _wal_with_records(fs, 4).close()
    path = _tail_path(fs)
    size_before = fs.file_size(path)
    offsets = frame_offsets(fs.read_file(path))
    bad = offsets[2]  # header, entry 1, entry 2 <- this one, entry 3, entry 4
    fs.corrupt_byte(path, bad + 10)
    with pytest.raises(CorruptData) as info:
        WAL.open(fs, DIR, **ID)
    message = str(info.value)
    assert path in message
    assert f"byte offset {bad}:" in message
    assert "followed by a valid one" in message
    assert fs.file_size(path) == size_before, "a refused WAL must not be modified"


def test_corrupt_length_field_of_a_middle_record_is_refused_not_truncated() -> None:
    fs = SimFS()
    _wal_with_records(fs, 4).close()
    path = _tail_path(fs)
    size_before = fs.file_size(path)
    bad = frame_offsets(fs.read_file(path))[1]
    fs.corrupt_byte(path, bad)  # the length now points far past the end of the file
    with pytest.raises(CorruptData, match=f"byte offset {bad}:"):
        WAL.open(fs, DIR, **ID)
    assert fs.file_size(path) == size_before


def test_any_bad_record_in_an_older_segment_is_refused() -> None:
    fs = SimFS()
    wal, _ = WAL.open(fs, DIR, **ID, segment_bytes=100)
    for i in range(1, 12):
        wal.save(None, ents(1, i, i))
    wal.close()
    first = posixpath.join(DIR, fs.listdir(DIR)[0])
    last_record = frame_offsets(fs.read_file(first))[-1]
    fs.corrupt_byte(first, last_record + 9)  # even its final record is not "torn"
    with pytest.raises(CorruptData, match=f"{first} at byte offset {last_record}: bad record "
                                           "in a sealed segment"):
        WAL.open(fs, DIR, **ID, segment_bytes=100)


def test_zero_filled_tail_is_treated_as_torn() -> None:
    fs = SimFS()
    _wal_with_records(fs, 3).close()
    path = _tail_path(fs)
    size = fs.file_size(path)
    h = fs.open_append(path)
    h.write(b"\x00" * 300)  # what some file systems show after losing a write's data
    h.fsync()
    _, replay = WAL.open(fs, DIR, **ID)
    assert list(replay.entries) == ents(1, 1, 3)
    assert fs.file_size(path) == size


def test_segment_whose_header_never_became_durable_is_removed() -> None:
    fs = SimFS()
    _wal_with_records(fs, 3).close()
    names = fs.listdir(DIR)
    stray = posixpath.join(DIR, "0000000000000001-0000000000000004.wal")
    h = fs.open_append(stray)
    h.write(fs.read_file(posixpath.join(DIR, names[0]))[:6])  # half a header
    h.fsync()
    wal, replay = WAL.open(fs, DIR, **ID)
    assert fs.listdir(DIR) == names
    assert list(replay.entries) == ents(1, 1, 3)
    wal.save(None, ents(1, 4, 4))
    wal.close()
    assert list(WAL.open(fs, DIR, **ID)[1].entries) == ents(1, 1, 4)


def test_enospc_during_save_raises_cleanly_and_later_saves_work() -> None:
    fs = SimFS()
    wal = _wal_with_records(fs, 2)
    path = _tail_path(fs)
    size = fs.file_size(path)
    fs.space_left_bytes = 10  # the record is larger: a partial write, then ENOSPC
    with pytest.raises(OSError, match="no space left") as info:
        wal.save(HardState(term=1, commit=2), ents(1, 3, 5))
    assert info.value.errno == errno.ENOSPC
    assert fs.file_size(path) == size, "the partial record must be cut off"
    fs.space_left_bytes = None
    wal.save(HardState(term=1, commit=3), ents(1, 3, 3))
    wal.close()
    _, replay = WAL.open(fs, DIR, **ID)
    assert list(replay.entries) == ents(1, 1, 3)
    assert replay.hard_state == HardState(term=1, commit=3)
    assert replay.torn_tail_bytes == 0


def test_failed_fsync_makes_the_wal_refuse_writes_until_reopened() -> None:
    fs = SimFS()
    wal = _wal_with_records(fs, 2)
    fs.fail_next("fsync", OSError(errno.EIO, "disk on fire"))
    with pytest.raises(OSError, match="disk on fire"):
        wal.save(HardState(term=1), ents(1, 3, 3))
    with pytest.raises(OSError, match="unusable until reopened"):
        wal.save(HardState(term=1), ents(1, 3, 3))
    fs.crash()
    _, replay = WAL.open(fs, DIR, **ID)
    assert list(replay.entries) == ents(1, 1, 2)


def test_failed_segment_cut_leaves_the_wal_usable() -> None:
    fs = SimFS()
    wal, _ = WAL.open(fs, DIR, **ID, segment_bytes=100)
    wal.save(None, ents(1, 1, 4))  # fills the first segment
    fs.fail_next("fsync_dir", OSError(errno.EIO, "dir fsync failed"))
    with pytest.raises(OSError, match="dir fsync failed"):
        wal.save(None, ents(1, 5, 5))
    wal.save(None, ents(1, 5, 5))
    wal.close()
    assert list(WAL.open(fs, DIR, **ID, segment_bytes=100)[1].entries) == ents(1, 1, 5)


def test_reopening_makes_what_it_read_durable() -> None:
    """A restarted process reads the previous one's unsynced tail from the page cache; Raft
    acts on it (a vote, acknowledged entries), so open must make it durable."""
    fs = SimFS()
    wal, _ = WAL.open(fs, DIR, **ID)
    wal.save(HardState(term=1, vote=1), ents(1, 1, 1))
    wal.save(HardState(term=2, vote=2), ents(2, 2, 3), must_sync=False)
    wal.close()  # the process exits without fsync; the machine keeps running
    _, replay = WAL.open(fs, DIR, **ID)
    assert replay.hard_state == HardState(term=2, vote=2)
    fs.crash()  # now the power goes
    _, replay = WAL.open(fs, DIR, **ID)
    assert replay.hard_state == HardState(term=2, vote=2)
    assert list(replay.entries) == ents(1, 1, 1) + ents(2, 2, 3)


def test_cutting_a_segment_first_syncs_the_one_it_seals() -> None:
    fs = SimFS()
    wal, _ = WAL.open(fs, DIR, **ID, segment_bytes=100)
    wal.save(None, ents(1, 1, 3), must_sync=False)  # fills the first segment, unsynced
    wal.save(None, ents(1, 4, 4))  # cuts a new segment, then fsyncs that one
    assert len(fs.listdir(DIR)) == 2
    fs.crash()
    _, replay = WAL.open(fs, DIR, **ID, segment_bytes=100)
    assert list(replay.entries) == ents(1, 1, 4)


def test_a_whole_record_this_version_cannot_read_is_refused_not_cut_off() -> None:
    fs = SimFS()
    _wal_with_records(fs, 2).close()
    path = _tail_path(fs)
    size_before = fs.file_size(path)
    h = fs.open_append(path)
    h.write(encode_frame(cbor2.dumps([99, "from a newer version"])))  # CRC is fine
    h.fsync()
    with pytest.raises(CorruptData, match=f"byte offset {size_before}: unreadable record"):
        WAL.open(fs, DIR, **ID)
    assert fs.file_size(path) > size_before, "the record must not be cut off"
