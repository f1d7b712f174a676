"""Property: whatever the sequence of saves, snapshots, full disks and crashes, recovery
yields exactly one of the states the storage went through — never older than the last
fsynced one, never a save half-applied.

The model keeps the list of states since the last fsync (``history``): every save appends
the state it leads to; a synced call moves ``synced_pos`` to it. After ``SimFS.crash`` (with
torn and garbled tails) the recovered storage must equal one of ``history[synced_pos:]``.
Between crashes the live storage must equal the newest state.
"""

from __future__ import annotations

import errno
import random
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from discoverd.consensus.messages import (
    ConfState,
    Entry,
    HardState,
    Snapshot,
    SnapshotMeta,
)
from discoverd.errors import DiscoverdError
from discoverd.storage.disk_storage import DiskStorage
from discoverd.testing.simfs import SimFS

MEMBER = "/data/member"
CS = ConfState(voters=(1, 2, 3))


@dataclass(frozen=True)
class ModelState:
    """What a correct storage holds: the hard state, the snapshot, and the log it knows."""

    hard_state: HardState
    snapshot: Snapshot
    log: tuple[Entry, ...]
    """Contiguous; may start before the snapshot index (entries kept for catch-up)."""
    base: tuple[int, int] = (0, 0)
    """``(index, term)`` the log starts after: 0, or the newest installed snapshot."""

    def last_index(self) -> int:
        return max(self.log[-1].index if self.log else 0, self.snapshot.meta.index)

    def term_at(self, index: int) -> int | None:
        if index == self.snapshot.meta.index:
            return self.snapshot.meta.term
        if self.log and self.log[0].index <= index <= self.log[-1].index:
            return self.log[index - self.log[0].index].term
        return self.base[1] if index == self.base[0] else None

    def with_entries(self, entries: list[Entry], hard_state: HardState) -> ModelState:
        log = self.log
        if entries:
            log = tuple(e for e in log if e.index < entries[0].index) + tuple(entries)
        return ModelState(hard_state, self.snapshot, log, self.base)


def mismatch(storage: DiskStorage, m: ModelState) -> str | None:
    """Why ``storage`` does not hold ``m``, or ``None`` if it does."""
    hs, conf_state = storage.initial_state()
    if hs != m.hard_state:
        return f"hard state {hs} != {m.hard_state}"
    if storage.snapshot() != m.snapshot:
        return f"snapshot {storage.snapshot().meta} != {m.snapshot.meta}"
    if conf_state != m.snapshot.meta.conf_state:
        return f"conf state {conf_state}"
    first, last = storage.first_index(), storage.last_index()
    if last != m.last_index():
        return f"last index {last} != {m.last_index()}"
    if first > m.snapshot.meta.index + 1:
        return f"first index {first} is past the snapshot {m.snapshot.meta.index}"
    for i in range(first - 1, last + 1):
        if storage.term(i) != m.term_at(i):
            return f"term({i}) {storage.term(i)} != {m.term_at(i)}"
    if first <= last:
        got = storage.entries(first, last + 1)
        want = [m.log[i - m.log[0].index] for i in range(first, last + 1)]
        if got != want:
            return f"entries {first}..{last} differ: {got} != {want}"
    return None


class StorageMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.fs = SimFS()
        self.options: dict[str, Any] = {}
        self.storage: DiskStorage | None = None
        self.history: list[ModelState] = [ModelState(HardState(), Snapshot(), ())]
        self.synced_pos = 0
        self.op_counter = 0

    # -- helpers

    def _open(self) -> DiskStorage:
        return DiskStorage(self.fs, MEMBER, cluster_id=9, member_id=3, **self.options)

    @property
    def current(self) -> ModelState:
        return self.history[-1]

    def _push(self, state: ModelState, *, synced: bool) -> None:
        self.history.append(state)
        if synced:
            self.synced_pos = len(self.history) - 1

    def _plan_save(
        self, n_new: int, back: int, bump: bool, commit_step: int, vote: int
    ) -> tuple[HardState | None, list[Entry], ModelState]:
        """A save Raft could issue: overwrite only above the commit and snapshot indexes."""
        m = self.current
        floor = max(m.hard_state.commit, m.snapshot.meta.index) + 1
        last = m.last_index()
        start = min(max(floor, last + 1 - back), last + 1)
        term = m.hard_state.term + int(bump)
        self.op_counter += 1
        entries = [Entry(term, start + k, data=b"op%d/%d" % (self.op_counter, k))
                   for k in range(n_new)]
        new_last = entries[-1].index if entries else last
        commit = min(m.hard_state.commit + commit_step, new_last)
        hs = HardState(term, vote if bump else m.hard_state.vote, commit)
        return (None if hs == m.hard_state else hs), entries, m.with_entries(entries, hs)

    def _recover_and_check(self, candidates: list[ModelState]) -> None:
        assert self.storage is not None
        self.storage.close()
        self.storage = self._open()
        if self.storage.torn_tail_bytes:
            event("recovery cut a torn tail")
        reasons = []
        for pos, state in enumerate(candidates):
            why = mismatch(self.storage, state)
            if why is None:
                event("recovered past the last fsync" if pos else "recovered the fsynced state")
                self.history = [state]
                self.synced_pos = 0
                return
            reasons.append(why)
        raise AssertionError(f"recovered {self.storage!r} matches no allowed state: {reasons}")

    # -- rules

    @initialize(
        segment_bytes=st.sampled_from([90, 250, 1 << 20]),
        keep_entries=st.sampled_from([0, 2, 5, 1000]),
        keep_snapshots=st.sampled_from([1, 2]),
    )
    def open_storage(self, segment_bytes: int, keep_entries: int, keep_snapshots: int) -> None:
        self.options = {"segment_bytes": segment_bytes, "keep_entries": keep_entries,
                        "keep_snapshots": keep_snapshots}
        self.storage = self._open()

    @rule(
        n_new=st.integers(0, 4),
        back=st.integers(0, 3),
        bump=st.booleans(),
        commit_step=st.integers(0, 3),
        vote=st.integers(0, 3),
        must_sync=st.booleans(),
    )
    def save(self, n_new: int, back: int, bump: bool, commit_step: int, vote: int,
             must_sync: bool) -> None:
        assert self.storage is not None
        hs, entries, after = self._plan_save(n_new, back, bump, commit_step, vote)
        self.storage.save(hs, entries, must_sync=must_sync)
        self._push(after, synced=must_sync)

    @precondition(lambda self: self.current.hard_state.commit > self.current.snapshot.meta.index)
    @rule(pick=st.integers(0, 1000))
    def create_snapshot(self, pick: int) -> None:
        assert self.storage is not None
        m = self.current
        lo, hi = m.snapshot.meta.index + 1, m.hard_state.commit
        index = lo + pick % (hi - lo + 1)
        data = b"applied@%d" % index
        self.storage.create_snapshot(index, CS, data)
        term = m.term_at(index)
        assert term is not None
        snap = Snapshot(SnapshotMeta(index, term, CS), data)
        self._push(ModelState(m.hard_state, snap, m.log, m.base), synced=True)

    @rule(gap=st.integers(1, 6), n_after=st.integers(0, 2), bump=st.booleans())
    def install_snapshot(self, gap: int, n_after: int, bump: bool) -> None:
        """A snapshot from the leader, possibly inside our (conflicting) log."""
        assert self.storage is not None
        m = self.current
        index = max(m.hard_state.commit, m.snapshot.meta.index) + gap
        term = m.hard_state.term + int(bump)
        self.op_counter += 1
        snap = Snapshot(SnapshotMeta(index, term, CS), b"leader@%d" % self.op_counter)
        entries = [Entry(term, index + 1 + k, data=b"after%d" % k) for k in range(n_after)]
        hs = HardState(term, m.hard_state.vote, max(m.hard_state.commit, index))
        self.storage.save(hs, entries, snap)
        self._push(ModelState(hs, snap, tuple(entries), (index, term)), synced=True)

    @rule(seed=st.integers(0, 2**32 - 1), tear=st.booleans())
    def crash(self, seed: int, tear: bool) -> None:
        self.fs.crash(random.Random(seed), tear=tear)
        self._recover_and_check(self.history[self.synced_pos:])

    @rule()
    def clean_restart(self) -> None:
        self._recover_and_check([self.current])

    @rule(space_bytes=st.integers(0, 120), n_new=st.integers(1, 4), back=st.integers(0, 2))
    def save_on_a_full_disk(self, space_bytes: int, n_new: int, back: int) -> None:
        assert self.storage is not None
        hs, entries, after = self._plan_save(n_new, back, False, 1, 0)
        self.fs.space_left_bytes = space_bytes
        failure: OSError | None = None
        try:
            self.storage.save(hs, entries)
        except OSError as exc:
            failure = exc
        finally:
            self.fs.space_left_bytes = None
        if failure is None:
            self._push(after, synced=True)
            return
        event("save failed with ENOSPC")
        assert failure.errno == errno.ENOSPC, failure
        why = mismatch(self.storage, self.current)
        assert why is None, f"a failed save changed the storage: {why}"

    @rule(seed=st.integers(0, 2**32 - 1), n_new=st.integers(1, 3))
    def fsync_fails_then_crash(self, seed: int, n_new: int) -> None:
        """After a failed fsync the member must restart; the save may or may not survive."""
        assert self.storage is not None
        hs, entries, after = self._plan_save(n_new, 0, False, 0, 0)
        self.fs.fail_next("fsync", OSError(errno.EIO, "injected fsync failure"))
        with pytest.raises(OSError, match="injected fsync failure"):
            self.storage.save(hs, entries)
        self.fs.crash(random.Random(seed))
        self._recover_and_check([*self.history[self.synced_pos:], after])

    @invariant()
    def live_storage_holds_the_newest_state(self) -> None:
        if self.storage is not None:
            why = mismatch(self.storage, self.current)
            assert why is None, why


StorageMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_storage_recovers_to_an_acknowledged_state = StorageMachine.TestCase


def test_the_checker_rejects_a_wrong_state() -> None:
    """The property is only as strong as ``mismatch``: make sure it can say no."""
    storage = DiskStorage(SimFS(), MEMBER, cluster_id=9, member_id=3)
    storage.save(HardState(term=1, commit=1), [Entry(1, 1, data=b"a"), Entry(1, 2, data=b"b")])
    right = ModelState(HardState(term=1, commit=1), Snapshot(),
                       (Entry(1, 1, data=b"a"), Entry(1, 2, data=b"b")))
    assert mismatch(storage, right) is None
    wrong_data = ModelState(right.hard_state, right.snapshot,
                            (Entry(1, 1, data=b"a"), Entry(1, 2, data=b"X")))
    shorter = ModelState(right.hard_state, right.snapshot, right.log[:1])
    other_hs = ModelState(HardState(term=2, commit=1), right.snapshot, right.log)
    for wrong in (wrong_data, shorter, other_hs):
        assert mismatch(storage, wrong) is not None
    with pytest.raises(DiscoverdError):
        storage.entries(0, 1)
