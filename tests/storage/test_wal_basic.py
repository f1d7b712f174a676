"""The WAL's normal life: records round-trip, one save is one write + one fsync, segments
roll over and are released, Raft's suffix overwrite replays correctly, identities are
checked."""

from __future__ import annotations

import posixpath

import pytest
from storage_testkit import CountingFS, ents

from discoverd.consensus.messages import HardState
from discoverd.errors import CorruptData
from discoverd.storage.wal import WAL, SnapshotMarker
from discoverd.testing.simfs import SimFS

DIR = "/data/member/wal"
ID = {"cluster_id": 0xC1, "member_id": 7}


def test_fresh_wal_replays_empty_and_round_trips_entries_and_hard_state() -> None:
    fs = SimFS()
    wal, replay = WAL.open(fs, DIR, **ID)
    assert replay.created
    assert replay.entries == ()
    assert replay.hard_state is None
    wal.save(HardState(term=1, vote=7, commit=0), ents(1, 1, 3))
    wal.save(HardState(term=1, vote=7, commit=2), ents(1, 4, 5))
    wal.save(HardState(term=2, vote=0, commit=5), [])
    wal.close()

    _, replay = WAL.open(fs, DIR, **ID)
    assert not replay.created
    assert replay.hard_state == HardState(term=2, vote=0, commit=5)
    assert list(replay.entries) == ents(1, 1, 5)
    assert replay.torn_tail_bytes == 0


def test_each_save_is_exactly_one_write_and_one_fsync() -> None:
    fs = CountingFS(SimFS())
    wal, _ = WAL.open(fs, DIR, **ID)
    for i in range(1, 6):
        fs.reset()
        wal.save(HardState(term=1, vote=1, commit=i - 1), ents(1, 10 * i, 10 * i + 9))
        assert fs.counts == {"write": 1, "fsync": 1}, fs.counts


def test_unsynced_saves_write_once_and_sync_fsyncs_once() -> None:
    fs = CountingFS(SimFS())
    wal, _ = WAL.open(fs, DIR, **ID)
    fs.reset()
    wal.save(HardState(term=1), ents(1, 1, 2), must_sync=False)
    wal.save(None, ents(1, 3, 3), must_sync=False)
    assert fs.counts == {"write": 2}
    wal.sync()
    wal.sync()  # nothing new: no second fsync
    assert fs.counts == {"write": 2, "fsync": 1}
    fs.reset()
    wal.save(None, [], must_sync=True)  # empty save, nothing unsynced: no I/O at all
    assert fs.counts == {}


def test_conflicting_suffix_is_overwritten_on_replay() -> None:
    fs = SimFS()
    wal, _ = WAL.open(fs, DIR, **ID)
    wal.save(HardState(term=1), ents(1, 1, 6))
    wal.save(HardState(term=2), ents(2, 4, 5))  # leader of term 2 truncates 4..6
    wal.close()
    _, replay = WAL.open(fs, DIR, **ID)
    assert list(replay.entries) == ents(1, 1, 3) + ents(2, 4, 5)


def test_segments_roll_over_and_replay_across_them() -> None:
    fs = SimFS()
    wal, _ = WAL.open(fs, DIR, **ID, segment_bytes=120)
    for i in range(1, 21):
        wal.save(HardState(term=1, commit=i - 1), ents(1, i, i))
    wal.close()
    names = fs.listdir(DIR)
    assert len(names) > 3
    seqs = [int(n.split("-")[0], 16) for n in names]
    assert seqs == list(range(len(names)))
    first_indexes = [int(n.split("-")[1].removesuffix(".wal"), 16) for n in names]
    assert first_indexes == sorted(first_indexes)
    assert first_indexes[0] == 1

    _, replay = WAL.open(fs, DIR, **ID, segment_bytes=120)
    assert list(replay.entries) == ents(1, 1, 20)
    assert replay.hard_state == HardState(term=1, commit=19)


def test_release_deletes_only_a_prefix_of_fully_covered_segments_never_the_tail() -> None:
    fs = SimFS()
    wal, _ = WAL.open(fs, DIR, **ID, segment_bytes=120)
    for i in range(1, 21):
        wal.save(HardState(term=3, vote=2, commit=i), ents(3, i, i))
    wal.save_snapshot_marker(SnapshotMarker(index=12, term=3))
    before = fs.listdir(DIR)
    removed = wal.release_to(12)
    after = fs.listdir(DIR)
    assert removed
    assert len(after) == len(before) - len(removed)
    assert [posixpath.basename(p) for p in removed] == before[: len(removed)]
    wal.release_to(10**9)
    assert fs.listdir(DIR) == before[-1:], "the tail segment is never released"
    wal.close()

    _, replay = WAL.open(fs, DIR, **ID, segment_bytes=120)
    # Hard state and the snapshot marker live on in the header of the surviving segment.
    assert replay.hard_state == HardState(term=3, vote=2, commit=20)
    assert SnapshotMarker(index=12, term=3) in replay.snapshots
    assert replay.entries
    assert replay.entries[-1].index == 20
    assert list(replay.entries) == ents(3, replay.entries[0].index, 20)


def test_hard_state_and_snapshot_marker_survive_release_of_the_segment_holding_them() -> None:
    fs = SimFS()
    wal, _ = WAL.open(fs, DIR, **ID, segment_bytes=120)
    wal.save(HardState(term=9, vote=4, commit=3), ents(9, 1, 3))
    wal.save_snapshot_marker(SnapshotMarker(index=3, term=9))
    for i in range(4, 21):
        wal.save(None, ents(9, i, i))  # hard state unchanged: never written again
    assert wal.release_to(15)
    wal.close()
    _, replay = WAL.open(fs, DIR, **ID, segment_bytes=120)
    assert replay.entries[0].index > 3, "the first segment is gone"
    assert replay.hard_state == HardState(term=9, vote=4, commit=3)
    assert replay.snapshots[-1] == SnapshotMarker(index=3, term=9)


def test_release_keeps_segments_holding_entries_above_the_index() -> None:
    fs = SimFS()
    wal, _ = WAL.open(fs, DIR, **ID, segment_bytes=120)
    for i in range(1, 21):
        wal.save(None, ents(1, i, i))
    wal.release_to(12)
    wal.close()
    _, replay = WAL.open(fs, DIR, **ID, segment_bytes=120)
    assert replay.entries[0].index <= 13
    assert [e.index for e in replay.entries] == list(range(replay.entries[0].index, 21))


def test_interrupted_release_leftovers_before_a_sequence_gap_are_dropped() -> None:
    fs = SimFS()
    wal, _ = WAL.open(fs, DIR, **ID, segment_bytes=120)
    for i in range(1, 21):
        wal.save(None, ents(1, i, i))
    wal.close()
    names = fs.listdir(DIR)
    fs.remove(posixpath.join(DIR, names[1]))  # only the second deletion became durable
    fs.fsync_dir(DIR)
    _, replay = WAL.open(fs, DIR, **ID, segment_bytes=120)
    assert names[0] not in fs.listdir(DIR)
    assert [e.index for e in replay.entries] == list(range(replay.entries[0].index, 21))


def test_installed_snapshot_marker_discards_the_earlier_log() -> None:
    fs = SimFS()
    wal, _ = WAL.open(fs, DIR, **ID)
    wal.save(HardState(term=1), ents(1, 1, 8))
    wal.save(HardState(term=4, commit=30), ents(4, 31, 32),
             installed_snapshot=SnapshotMarker(index=30, term=4))
    wal.close()
    _, replay = WAL.open(fs, DIR, **ID)
    assert list(replay.entries) == ents(4, 31, 32)
    assert replay.snapshots == (SnapshotMarker(index=30, term=4),)


@pytest.mark.parametrize("other", [{"member_id": 8}, {"cluster_id": 0xC2}])
def test_a_wal_of_another_member_or_cluster_is_refused(other: dict[str, int]) -> None:
    fs = SimFS()
    wal, _ = WAL.open(fs, DIR, **ID)
    wal.save(HardState(term=1), ents(1, 1, 2))
    wal.close()
    with pytest.raises(CorruptData, match="belongs to cluster 0xc1 member 0x7"):
        WAL.open(fs, DIR, **{**ID, **other})
    _, replay = WAL.open(fs, DIR, **ID)  # refusing changed nothing
    assert list(replay.entries) == ents(1, 1, 2)


def test_a_closed_wal_refuses_to_write() -> None:
    wal, _ = WAL.open(SimFS(), DIR, **ID)
    wal.close()
    with pytest.raises(ValueError, match="closed"):
        wal.save(HardState(term=1), [])
