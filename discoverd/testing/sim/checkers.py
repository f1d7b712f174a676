"""Invariant checks the simulator runs after every event (and a few at the end).

Each check names the Raft property it guards. They look only at what members expose
(``RawNode.raft``, their storage, what they send and apply), never at simulator internals, so
a broken rule in the core shows up as a named violation with the seed to replay.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from discoverd.consensus.messages import (
    NONE,
    AppendEntries,
    AppendEntriesResponse,
    Entry,
    HardState,
    Heartbeat,
    InstallSnapshot,
    Message,
    ReadIndexResponse,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)
from discoverd.consensus.raft import Role
from discoverd.consensus.rawnode import Ready
from discoverd.errors import Compacted, LogUnavailable

if TYPE_CHECKING:
    from discoverd.testing.sim.cluster import SimNode, Simulator

LOG_MATCHING_EVERY = 500  # events between full pairwise log comparisons
_LEADER_MESSAGES = (AppendEntries, Heartbeat, InstallSnapshot, TimeoutNow, ReadIndexResponse)


class SimFailure(AssertionError):
    """A safety or liveness property was violated; the message says which and how to replay."""


class Checker:
    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.leader_of_term: dict[int, int] = {}
        self.completeness_checked: set[tuple[int, int]] = set()
        # committed_terms[i] is the term of the entry committed at index i (index 0 unused)
        self.committed_terms: dict[int, int] = {}
        self.max_commit = 0
        # canonical[i] = (term, data) of the entry first applied at index i, by anyone
        self.canonical: dict[int, tuple[int, bytes]] = {}
        self.canonical_digest: dict[int, bytes] = {}
        self.last_commit: dict[tuple[int, int], int] = {}
        self.durable: dict[int, HardState] = {}
        self.acked: dict[int, bytes] = {}

    # ------------------------------------------------------------------ per-event

    def after_event(self, touched: list[int]) -> None:
        """Check the members the event touched (no other member's state changed)."""
        sim = self.sim
        for nid in touched:
            node = sim.nodes[nid]
            if node.raw is None:
                continue
            r = node.raw.raft
            if r.role is Role.LEADER:
                self._election_safety(nid, r.term)
                if (nid, r.term) not in self.completeness_checked:
                    self.completeness_checked.add((nid, r.term))
                    self._leader_completeness(node)
            self._commit_progress(node)
        if sim.stats.events % LOG_MATCHING_EVERY == 0:
            self.log_matching()

    def _election_safety(self, nid: int, term: int) -> None:
        """Raft §5.2: at most one leader per term, across the whole run."""
        prev = self.leader_of_term.setdefault(term, nid)
        if prev != nid:
            raise self.sim.fail(f"election safety: n{prev} and n{nid} both led term {term}")

    def _commit_progress(self, node: SimNode) -> None:
        """Commit never goes backwards in one incarnation, and no two entries are ever
        committed at one index (the core of state-machine safety)."""
        assert node.raw is not None
        log = node.raw.raft.log
        key = (node.id, node.incarnation)
        prev = self.last_commit.get(key, 0)
        if log.committed < prev:
            raise self.sim.fail(f"n{node.id} commit went back from {prev} to {log.committed}")
        if log.committed == prev:
            return
        self.last_commit[key] = log.committed
        for i in range(max(prev + 1, log.first_index() - 1, 1), log.committed + 1):
            try:
                t = log.term(i)
            except (Compacted, LogUnavailable):
                continue
            known = self.committed_terms.setdefault(i, t)
            if known != t:
                raise self.sim.fail(
                    f"state machine safety: n{node.id} committed index {i} at term {t}, "
                    f"but term {known} was committed there before"
                )
        self.max_commit = max(self.max_commit, log.committed)

    def _leader_completeness(self, node: SimNode) -> None:
        """Raft §5.4: a new leader holds every entry committed before its term."""
        assert node.raw is not None
        r = node.raw.raft
        first = r.log.first_index()
        if self.max_commit > r.log.last_index():
            raise self.sim.fail(
                f"leader completeness: n{node.id} leads term {r.term} with last index "
                f"{r.log.last_index()} < committed {self.max_commit}"
            )
        for i, t in self.committed_terms.items():
            if i < first:
                continue
            try:
                have = r.log.term(i)
            except (Compacted, LogUnavailable):
                have = -1
            if have != t:
                raise self.sim.fail(
                    f"leader completeness: n{node.id} leads term {r.term} but holds term "
                    f"{have} at committed index {i} (committed term {t})"
                )

    # ------------------------------------------------------------------ Ready contract

    def on_early_messages(self, node: SimNode, rd: Ready) -> None:
        """Only a leader's replication traffic may leave before the Ready is durable, and
        only at a term that is already on disk."""
        assert node.storage is not None
        durable_term = node.storage.hard_state.term
        for m in rd.early_messages:
            if not isinstance(m, _LEADER_MESSAGES):
                raise self.sim.fail(f"contract: {type(m).__name__} sent before persisting")
            if m.term > durable_term:
                raise self.sim.fail(
                    f"contract: n{node.id} sent {type(m).__name__} at term {m.term} before "
                    f"persisting that term (durable term {durable_term})"
                )

    def on_send_after_persist(self, node: SimNode, m: Message) -> None:
        """A vote or an append acknowledgement promises durable state: check the promise."""
        assert node.storage is not None
        hs = node.storage.hard_state
        pre_vote = isinstance(m, RequestVote | RequestVoteResponse) and m.pre_vote
        if m.term > hs.term and not pre_vote:  # pre-votes speak of a term not yet taken
            raise self.sim.fail(
                f"contract: n{node.id} sent term {m.term} with durable term {hs.term}"
            )
        vote = isinstance(m, RequestVoteResponse) and m.granted and not m.pre_vote
        # The promise is "I will not vote for anyone else in this term": kept if the vote is
        # on disk, or if a later term is (a member never goes back to an earlier term).
        if vote and hs.term <= m.term and (hs.term, hs.vote) != (m.term, m.dst):
            raise self.sim.fail(
                f"contract: n{node.id} granted its vote in term {m.term} to n{m.dst} "
                f"but its durable state is {hs}"
            )
        if isinstance(m, AppendEntriesResponse) and not m.reject and m.index:
            st = node.storage
            if m.index > st.last_index():
                raise self.sim.fail(
                    f"contract: n{node.id} acknowledged index {m.index} but only "
                    f"{st.last_index()} is durable"
                )

    def on_persist_hard_state(self, node: SimNode, hs: HardState) -> None:
        """Term never regresses on disk; a durable vote in a term never changes (a member
        that restarts must not vote twice — PySyncObj#202)."""
        prev = self.durable.get(node.id)
        if prev is not None:
            if hs.term < prev.term:
                raise self.sim.fail(f"n{node.id} durable term regressed {prev.term}->{hs.term}")
            if hs.term == prev.term and prev.vote != NONE and hs.vote != prev.vote:
                raise self.sim.fail(
                    f"n{node.id} changed its durable vote in term {hs.term}: "
                    f"{prev.vote} -> {hs.vote}"
                )
        self.durable[node.id] = hs

    def on_start(self, node: SimNode) -> None:
        assert node.raw is not None
        assert node.storage is not None
        hs = node.storage.hard_state
        r = node.raw.raft
        if hs.term and (r.term, r.vote) != (hs.term, hs.vote):  # (else: a fresh bootstrap)
            raise self.sim.fail(
                f"n{node.id} restarted at term {r.term} vote {r.vote}, durable {hs}"
            )

    # ------------------------------------------------------------------ applying

    def on_apply(self, node: SimNode, e: Entry) -> None:
        """State-machine safety: every member applies the same entry at each index."""
        if e.index != node.sm.applied + 1:
            raise self.sim.fail(
                f"n{node.id} applies index {e.index} right after {node.sm.applied}"
            )
        if e.index > self.max_commit:
            committed = max(
                (n.raw.raft.log.committed for n in self.sim.nodes.values() if n.raw), default=0
            )
            if e.index > committed:
                raise self.sim.fail(f"n{node.id} applies uncommitted index {e.index}")
        known = self.canonical.setdefault(e.index, (e.term, e.data))
        if known != (e.term, e.data):
            raise self.sim.fail(
                f"state machine safety: n{node.id} applied {e.term}/{e.index} {e.data!r} "
                f"where {known} was applied before"
            )

    def on_applied_digest(self, node: SimNode) -> None:
        known = self.canonical_digest.setdefault(node.sm.applied, node.sm.digest)
        if known != node.sm.digest:
            raise self.sim.fail(f"n{node.id} state diverged at index {node.sm.applied}")

    def on_restore(self, node: SimNode, index: int) -> None:
        if node.sm.applied != index:
            raise self.sim.fail(f"n{node.id} snapshot at {index} restored to {node.sm.applied}")
        known = self.canonical_digest.get(index)
        if known is not None and known != node.sm.digest:
            raise self.sim.fail(f"n{node.id} installed a snapshot that diverges at {index}")

    def on_write_acked(self, index: int, data: bytes) -> None:
        self.acked[index] = data

    def on_read(self, node: SimNode, request_id: int, index: int) -> None:
        """ReadIndex linearizability: a read sees every write committed before it began."""
        floor = self.sim.read_min_index.pop(request_id, 0)
        if index < floor:
            raise self.sim.fail(
                f"stale read: n{node.id} served read #{request_id} at index {index}, but "
                f"index {floor} was committed before the read began"
            )
        if node.sm.applied < index:
            raise self.sim.fail(
                f"n{node.id} answered read #{request_id} at index {index} before applying it"
            )

    # ------------------------------------------------------------------ end of run

    def log_matching(self) -> None:
        """Raft §5.3: if two logs hold an entry with the same index and term, they are
        identical in all entries up to it."""
        logs: dict[int, dict[int, Entry]] = {}
        for nid, node in sorted(self.sim.nodes.items()):
            if node.raw is None:
                continue
            log = node.raw.raft.log
            lo = log.first_index()
            try:
                ents = log.slice(lo, log.last_index() + 1)
            except (Compacted, LogUnavailable):
                continue
            logs[nid] = {e.index: e for e in ents}
        ids = sorted(logs)
        for a_pos, a in enumerate(ids):
            for b in ids[a_pos + 1 :]:
                la, lb = logs[a], logs[b]
                common = sorted(set(la) & set(lb), reverse=True)
                matched = False
                for i in common:
                    if matched and la[i] != lb[i]:
                        raise self.sim.fail(
                            f"log matching: n{a} and n{b} agree on a later entry but differ "
                            f"at index {i}: {la[i]} vs {lb[i]}"
                        )
                    if not matched and la[i].term == lb[i].term:
                        matched = True
                        if la[i] != lb[i]:
                            raise self.sim.fail(
                                f"log matching: n{a} and n{b} hold different entries with "
                                f"term {la[i].term} at index {i}"
                            )

    def final(self) -> None:
        self.log_matching()
        for index, data in sorted(self.acked.items()):
            if self.canonical.get(index, (0, b""))[1] != data:
                raise self.sim.fail(f"durability: acknowledged write at {index} was lost")
