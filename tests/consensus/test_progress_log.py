"""Unit tests of the leader's per-follower bookkeeping (``progress``) and of the log
(``log.RaftLog`` = durable ``MemoryStorage`` prefix + ``log.Unstable`` tail)."""

from __future__ import annotations

import pytest

from discoverd.consensus.log import RaftLog, Unstable
from discoverd.consensus.messages import ConfState, Entry, Snapshot, SnapshotMeta
from discoverd.consensus.progress import Inflights, Progress, ProgressState
from discoverd.consensus.storage import MemoryStorage
from discoverd.errors import Compacted, LogUnavailable


def ents(*terms_from: tuple[int, int], data: bytes = b"") -> list[Entry]:
    """``ents((1, 3), (2, 5))`` = entries 1..3 of term 1 and 4..5 of term 2 (inclusive ends)."""
    out: list[Entry] = []
    for term, last in terms_from:
        while len(out) < last:
            out.append(Entry(term, len(out) + 1, data=data))
    return out


def make_log(stored: list[Entry], unstable: list[Entry] | None = None) -> RaftLog:
    storage = MemoryStorage()
    storage.append(stored)
    log = RaftLog(storage)
    if unstable:
        log.append(unstable)
    return log


def terms(log: RaftLog) -> list[int]:
    return [log.term(i) for i in range(log.first_index(), log.last_index() + 1)]


# ----------------------------------------------------------------------------- Inflights


def test_inflights_window() -> None:
    infl = Inflights(3)
    for i in (5, 7, 9):
        assert not infl.full()
        infl.add(i)
    assert infl.full()
    assert len(infl) == 3
    with pytest.raises(AssertionError):
        infl.add(10)
    infl.free_le(6)
    assert len(infl) == 2
    assert not infl.full()
    infl.free_le(6)  # nothing more at or below 6
    assert len(infl) == 2
    infl.free_first()
    assert len(infl) == 1
    infl.free_le(100)
    assert len(infl) == 0
    infl.free_first()  # empty: no-op
    infl.add(1)
    infl.reset()
    assert len(infl) == 0


# ----------------------------------------------------------------------------- Progress


def test_new_progress_probes_one_append_at_a_time() -> None:
    pr = Progress(next_index=11, max_inflight=4)
    assert (pr.state, pr.match, pr.next) == (ProgressState.PROBE, 0, 11)
    assert not pr.is_paused()
    pr.sent_entries(last_index=12, n_entries=2)
    assert pr.is_paused()
    assert pr.next == 11
    assert pr.maybe_update(12)
    assert not pr.is_paused()
    assert (pr.match, pr.next) == (12, 13)


def test_replicate_pipelines_up_to_the_window() -> None:
    pr = Progress(next_index=1, max_inflight=2)
    pr.maybe_update(4)
    pr.become_replicate()
    assert (pr.state, pr.next) == (ProgressState.REPLICATE, 5)
    pr.sent_entries(last_index=6, n_entries=2)
    assert pr.next == 7
    assert not pr.is_paused()
    pr.sent_entries(last_index=6, n_entries=0)  # an empty append uses no slot
    assert len(pr.inflights) == 1
    pr.sent_entries(last_index=8, n_entries=2)
    assert pr.next == 9
    assert pr.is_paused()
    pr.maybe_update(6)
    pr.inflights.free_le(6)
    assert not pr.is_paused()
    assert pr.match == 6
    assert pr.next == 9


def test_maybe_update_never_moves_backwards() -> None:
    pr = Progress(next_index=10, max_inflight=4)
    assert pr.maybe_update(8)
    assert not pr.maybe_update(5)
    assert (pr.match, pr.next) == (8, 10)


def test_replicate_rejection_falls_back_to_match() -> None:
    pr = Progress(next_index=1, max_inflight=4)
    pr.maybe_update(5)
    pr.become_replicate()
    pr.sent_entries(last_index=9, n_entries=4)
    assert not pr.maybe_decr_to(rejected=5, match_hint=0)  # stale: 5 is already matched
    assert pr.next == 10
    assert pr.maybe_decr_to(rejected=9, match_hint=2)
    assert pr.next == 6  # match + 1; the hint is not needed, match is known good


def test_probe_rejection_uses_the_hint() -> None:
    pr = Progress(next_index=10, max_inflight=4)
    pr.maybe_update(2)
    pr.next = 10
    pr.sent_entries(last_index=9, n_entries=0)
    assert not pr.maybe_decr_to(rejected=7, match_hint=3)  # not the probe we sent (9)
    assert pr.maybe_decr_to(rejected=9, match_hint=5)
    assert (pr.next, pr.probe_sent) == (6, False)
    pr.sent_entries(last_index=5, n_entries=0)
    assert pr.maybe_decr_to(rejected=5, match_hint=0)
    assert pr.next == 3  # never below match + 1


def test_snapshot_state_pauses_and_resumes_after_it() -> None:
    pr = Progress(next_index=3, max_inflight=4)
    pr.maybe_update(2)
    pr.become_snapshot(20)
    assert pr.state is ProgressState.SNAPSHOT
    assert pr.is_paused()
    pr.become_probe()
    assert (pr.state, pr.next, pr.pending_snapshot) == (ProgressState.PROBE, 21, 0)
    pr.become_snapshot(20)
    pr.maybe_update(25)
    pr.become_probe()
    assert pr.next == 26


# ----------------------------------------------------------------------------- Unstable


def test_unstable_truncate_and_append() -> None:
    u = Unstable(offset=5)
    u.truncate_and_append(ents((1, 7))[4:])  # 5..7
    assert [e.index for e in u.entries] == [5, 6, 7]
    u.truncate_and_append([Entry(1, 8)])  # extends
    assert u.maybe_last_index() == 8
    u.truncate_and_append([Entry(2, 7), Entry(2, 8), Entry(2, 9)])  # truncates at 7
    assert [(e.term, e.index) for e in u.entries] == [(1, 5), (1, 6), (2, 7), (2, 8), (2, 9)]
    u.truncate_and_append([Entry(3, 4)])  # before offset: replaces everything
    assert (u.offset, [e.index for e in u.entries]) == (4, [4])


def test_unstable_stable_to_ignores_a_replaced_tail() -> None:
    u = Unstable(offset=4)
    u.truncate_and_append([Entry(1, 4), Entry(1, 5), Entry(1, 6)])
    u.truncate_and_append([Entry(2, 5)])  # 5 and 6 of term 1 were replaced meanwhile
    u.stable_to(6, 1)  # the write of the old 4..6 finished: 6 no longer exists
    assert [e.index for e in u.entries] == [4, 5]
    u.stable_to(5, 1)  # 5 is now of term 2: the old write does not cover it
    assert [e.index for e in u.entries] == [4, 5]
    u.stable_to(4, 1)
    assert (u.offset, [e.index for e in u.entries]) == (5, [5])
    u.stable_to(5, 2)
    assert (u.offset, u.entries) == (6, [])


# ----------------------------------------------------------------------------- RaftLog


def test_terms_and_bounds_span_storage_and_unstable() -> None:
    log = make_log(ents((1, 3)), ents((1, 3), (2, 5))[3:])
    assert (log.first_index(), log.last_index(), log.last_term()) == (1, 5, 2)
    assert terms(log) == [1, 1, 1, 2, 2]
    assert log.stable_index() == 3
    with pytest.raises(LogUnavailable):
        log.term(6)


def test_slice_across_the_storage_unstable_boundary() -> None:
    log = make_log(ents((1, 3), data=b"s" * 10), [Entry(2, i, data=b"u" * 10) for i in (4, 5, 6)])
    assert [e.index for e in log.slice(2, 6)] == [2, 3, 4, 5]
    assert [e.index for e in log.slice(4, 7)] == [4, 5, 6]
    assert [e.index for e in log.slice(1, 3)] == [1, 2]
    assert log.slice(3, 3) == []
    # each entry counts 10 bytes of data + 16 of overhead: 60 bytes allow two
    assert [e.index for e in log.slice(2, 7, max_bytes=60)] == [2, 3]
    assert [e.index for e in log.slice(3, 7, max_bytes=60)] == [3, 4]
    assert [e.index for e in log.slice(2, 7, max_bytes=1)] == [2]  # always at least one
    with pytest.raises(LogUnavailable):
        log.slice(5, 8)
    log.storage.compact(2)  # type: ignore[attr-defined]
    with pytest.raises(Compacted):
        log.slice(2, 4)


def test_maybe_append_matching_and_mismatching() -> None:
    log = make_log(ents((1, 3), (2, 5)))
    log.commit_to(2)
    assert log.maybe_append(5, 1, 5, (Entry(3, 6),)) is None  # wrong prev term
    assert log.maybe_append(7, 2, 5, (Entry(3, 8),)) is None  # prev past the end
    assert log.last_index() == 5
    assert log.maybe_append(5, 2, 9, (Entry(3, 6), Entry(3, 7))) == 7
    assert log.committed == 7  # min(leader commit, last new entry)
    assert terms(log) == [1, 1, 1, 2, 2, 3, 3]


def test_maybe_append_keeps_entries_it_already_has() -> None:
    """A delayed, shorter append must not truncate entries that match (§5.3)."""
    log = make_log(ents((1, 3), (2, 6)))
    assert log.maybe_append(3, 1, 0, (Entry(2, 4),)) == 4
    assert log.last_index() == 6


def test_maybe_append_truncates_a_conflicting_suffix() -> None:
    log = make_log(ents((1, 3), (2, 6)))
    log.commit_to(3)
    assert log.maybe_append(3, 1, 3, (Entry(2, 4), Entry(3, 5))) == 5
    assert terms(log) == [1, 1, 1, 2, 3]
    assert log.unstable.offset == 5


def test_maybe_append_refuses_to_overwrite_committed() -> None:
    log = make_log(ents((1, 3), (2, 6)))
    log.commit_to(5)
    with pytest.raises(AssertionError):
        log.maybe_append(3, 1, 5, (Entry(3, 4),))


@pytest.mark.parametrize(
    ("index", "term", "expected"),
    [
        (7, 3, (7, 3)),  # matches already
        (7, 2, (5, 2)),  # skip all of term 3
        (7, 1, (3, 1)),  # skip terms 3 and 2
        (5, 2, (5, 2)),
        (9, 2, (5, 2)),  # past the end: start from the last index
        (7, 0, (0, 0)),  # nothing of term 0 or less
    ],
)
def test_find_conflict_by_term(index: int, term: int, expected: tuple[int, int]) -> None:
    log = make_log(ents((1, 3), (2, 5), (3, 7)))
    assert log.find_conflict_by_term(index, term) == expected


def test_find_conflict_by_term_stops_at_compaction() -> None:
    log = make_log(ents((1, 3), (2, 5), (3, 7)))
    log.storage.compact(5)  # type: ignore[attr-defined]
    assert log.find_conflict_by_term(7, 1) == (4, 0)


@pytest.mark.parametrize(
    ("last_index", "last_term", "up_to_date"),
    [(1, 3, True), (5, 2, True), (6, 2, True), (4, 2, False), (9, 1, False)],
)
def test_is_up_to_date(last_index: int, last_term: int, up_to_date: bool) -> None:
    log = make_log(ents((1, 3), (2, 5)))
    assert log.is_up_to_date(last_index, last_term) is up_to_date


def test_maybe_commit_only_counts_the_given_term() -> None:
    log = make_log(ents((1, 3), (2, 5)))
    assert not log.maybe_commit(3, 2)  # entry 3 is of term 1
    assert log.committed == 0
    assert log.maybe_commit(5, 2)
    assert log.committed == 5
    assert not log.maybe_commit(4, 2)  # never backwards


def test_restore_replaces_the_log_with_a_snapshot() -> None:
    log = make_log(ents((1, 3)), [Entry(2, 4), Entry(2, 5)])
    snap = Snapshot(SnapshotMeta(index=10, term=3, conf_state=ConfState((1, 2, 3))))
    log.restore(snap)
    assert (log.first_index(), log.last_index(), log.committed) == (11, 10, 10)
    assert log.term(10) == 3
    assert log.stable_index() == 0  # nothing of the new log is durable yet
    assert log.unstable.snapshot is snap
    assert log.unstable.entries == []
    log.append([Entry(3, 11)])
    assert log.last_index() == 11
    log.storage.apply_snapshot(snap)  # type: ignore[attr-defined]
    log.stable_snap_to(10)
    assert log.unstable.maybe_first_index() is None  # the snapshot is no longer unstable
    assert log.stable_index() == 10


def test_next_committed_entries_respect_applied() -> None:
    log = make_log(ents((1, 3), (2, 5)))
    log.commit_to(4)
    assert [e.index for e in log.next_committed_entries()] == [1, 2, 3, 4]
    log.applied_to(2)
    assert log.has_next_committed_entries()
    assert [e.index for e in log.next_committed_entries()] == [3, 4]
    log.applied_to(4)
    assert not log.has_next_committed_entries()
    with pytest.raises(AssertionError):
        log.applied_to(5)
