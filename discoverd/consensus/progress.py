"""What the leader knows about each follower's log, and how fast it may send to it.

A follower is in one of three states (etcd's tracker): PROBE — we do not know where its log
matches ours, so send one append and wait for the answer (or the next heartbeat); REPLICATE —
it matches, so pipeline appends up to a bounded window of un-acknowledged messages; SNAPSHOT
— it is behind our compacted log, so a snapshot is in flight and appends are paused.
"""

from __future__ import annotations

import enum
from collections import deque


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Inflights:
    """A FIFO of the last index of each un-acknowledged append, bounded by ``capacity``."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._q: deque[int] = deque()

    def __len__(self) -> int:
        return len(self._q)

    def full(self) -> bool:
        return len(self._q) >= self.capacity

    def add(self, last_index: int) -> None:
        assert not self.full(), "inflights window overflow"
        self._q.append(last_index)

    def free_le(self, index: int) -> None:
        """Acknowledge every append whose last entry is at or below ``index``."""
        while self._q and self._q[0] <= index:
            self._q.popleft()

    def free_first(self) -> None:
        if self._q:
            self._q.popleft()

    def reset(self) -> None:
        self._q.clear()


class Progress:
    """The leader's view of one peer: ``match`` is known replicated, ``next`` is to send."""

    __slots__ = (
        "inflights",
        "is_learner",
        "match",
        "next",
        "pending_snapshot",
        "probe_sent",
        "recent_active",
        "state",
    )

    def __init__(self, next_index: int, max_inflight: int, *, is_learner: bool = False) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.pending_snapshot = 0
        self.recent_active = False
        self.probe_sent = False
        self.is_learner = is_learner
        self.inflights = Inflights(max_inflight)

    def __repr__(self) -> str:
        kind = "learner" if self.is_learner else "voter"
        return (
            f"<Progress {self.state.value} {kind} match={self.match} next={self.next}"
            f" inflight={len(self.inflights)}>"
        )

    def _reset_state(self, state: ProgressState) -> None:
        self.probe_sent = False
        self.pending_snapshot = 0
        self.state = state
        self.inflights.reset()

    def become_probe(self) -> None:
        if self.state is ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self._reset_state(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset_state(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset_state(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        self._reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index

    def maybe_update(self, index: int) -> bool:
        """Record an acknowledgement up to ``index``; True if ``match`` advanced."""
        updated = False
        if self.match < index:
            self.match = index
            updated = True
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        return updated

    def sent_entries(self, last_index: int, n_entries: int) -> None:
        """Account for an append just sent whose last entry is ``last_index``."""
        if self.state is ProgressState.REPLICATE:
            if n_entries:
                self.next = last_index + 1
                self.inflights.add(last_index)
        elif self.state is ProgressState.PROBE:
            self.probe_sent = True

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """Back off after a rejection of ``rejected``; False if the rejection is stale."""
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False  # not the probe we are waiting for
        self.next = max(min(rejected, match_hint + 1), self.match + 1, 1)
        self.probe_sent = False
        return True

    def is_paused(self) -> bool:
        """Whether appends to this peer must wait (a probe is out, the window is full, or a
        snapshot is in flight)."""
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return self.inflights.full()
        return True
