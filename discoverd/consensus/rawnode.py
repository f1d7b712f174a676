"""``RawNode``: the whole public surface of the consensus core, and the ``Ready`` contract.

Inputs: ``tick()``, ``step(message)``, ``propose(data)``, ``propose_conf_change(cc)``,
``read_index(ctx)``, ``transfer_leader(id)``, ``campaign()``, and the runtime's feedback
``apply_conf_change``, ``report_unreachable``, ``report_snapshot``.
Output: a ``Ready``, handled like this (one ``Ready`` at a time):

1. Send ``ready.early_messages`` whenever convenient — even before step 2 finishes. They are a
   leader's appends and heartbeats, which depend on nothing it has not already persisted.
2. Persist durably (fsync when ``must_sync``): first ``ready.snapshot`` if any, then
   ``ready.entries`` (overwriting any conflicting suffix), then ``ready.hard_state``.
3. Only after step 2: send ``ready.messages`` (votes and append acknowledgements promise
   that the state they speak of is on disk).
4. Apply ``ready.snapshot`` (restore the state machine) and then ``ready.committed_entries``
   in order; for a ``CONF_CHANGE`` entry call ``apply_conf_change``. Serve each of
   ``ready.read_states`` once the applied index reaches its ``index``; fail the reads in
   ``ready.dropped_reads`` (leadership changed under them: the client retries).
5. Call ``advance(ready)``.

Steps 3 and 4 may run in either order, and step 3 only after step 2. Step 4 may start
before step 2 for the committed entries this member already holds durably (index at most
``raft.log.stable_index()`` when the Ready was taken; with no ``ready.snapshot``) and for the
read states: a committed entry is final and a read state needs no disk. Applying those early
saves an answer the wait for this Ready's fsync. The member keeps
stepping messages and taking proposals while a ``Ready`` is being handled; what they produce
goes into the next one, so a slow disk naturally batches many proposals into one write.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from discoverd.consensus.messages import (
    ConfChange,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    Message,
    ReadState,
    Snapshot,
)
from discoverd.consensus.progress import ProgressState
from discoverd.consensus.raft import Config, Raft, RandomSource, Role
from discoverd.consensus.storage import LogStorage
from discoverd.errors import ClientError


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile facts worth reporting (logs, metrics); never persisted."""

    leader: int
    role: Role


@dataclass(slots=True)
class Ready:
    """Everything the runtime must do, in the order given in the module docstring."""

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None
    committed_entries: list[Entry] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    early_messages: list[Message] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    dropped_reads: list[bytes] = field(default_factory=list)
    must_sync: bool = False

    def is_empty(self) -> bool:
        return not (
            self.soft_state or self.hard_state or self.entries or self.snapshot
            or self.committed_entries or self.messages or self.early_messages
            or self.read_states or self.dropped_reads
        )


@dataclass(frozen=True, slots=True)
class PeerStatus:
    match: int
    next: int
    state: ProgressState
    is_learner: bool
    recent_active: bool


@dataclass(frozen=True, slots=True)
class Status:
    id: int
    term: int
    vote: int
    commit: int
    applied: int
    last_index: int
    leader: int
    role: Role
    conf_state: ConfState
    lead_transferee: int
    progress: dict[int, PeerStatus]


class RawNode:
    """A Raft member without I/O. See the module docstring for how to drive it."""

    def __init__(self, config: Config, storage: LogStorage, rng: RandomSource) -> None:
        self.raft = Raft(config, storage, rng)
        self._prev_soft = SoftState(self.raft.lead, self.raft.role)
        self._prev_hard = storage.initial_state()[0]
        self._outstanding: Ready | None = None

    def __repr__(self) -> str:
        return f"<RawNode {self.raft!r}>"

    # -- inputs

    def tick(self) -> None:
        self.raft.tick()

    def step(self, message: Message) -> None:
        self.raft.step(message)

    def campaign(self) -> None:
        self.raft.campaign()

    def propose(self, data: bytes) -> int:
        """Propose ``data`` as one log entry; returns the index it was given.

        The entry is not committed yet: watch ``committed_entries`` for that index *and* term
        (a new leader may overwrite an uncommitted entry with another one).

        Raises:
            NotLeader: this member is not the leader.
            ProposalDropped: a leadership transfer is in progress.
        """
        return self.raft.propose([Entry(0, 0, EntryKind.NORMAL, data)])

    def propose_batch(self, items: list[bytes]) -> int:
        """Propose several entries at once; returns the index of the last one."""
        return self.raft.propose([Entry(0, 0, EntryKind.NORMAL, d) for d in items])

    def forward_proposal(self, data: list[bytes]) -> None:
        """Propose on whichever member leads: append here if leader, else forward.

        Raises:
            NotLeader: no leader is known.
        """
        self.raft.forward_proposal(data)

    def propose_conf_change(self, cc: ConfChange) -> int:
        """Propose a membership change (one at a time; see ``confchange``).

        Raises:
            NotLeader, ProposalDropped (another change is in flight), ClientError (invalid).
        """
        return self.raft.propose([Entry(0, 0, EntryKind.CONF_CHANGE, cc.encode())])

    def read_index(self, context: bytes) -> None:
        """Ask for a linearizable read point; answered by a ``ReadState`` with ``context``.

        Raises:
            NotLeader: no leader is known to forward the request to.
        """
        self.raft.read_index(context)

    def transfer_leader(self, target: int) -> None:
        self.raft.transfer_leader(target)

    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        return self.raft.apply_conf_change(cc)

    def report_unreachable(self, peer: int) -> None:
        self.raft.report_unreachable(peer)

    def report_snapshot(self, peer: int, *, ok: bool) -> None:
        self.raft.report_snapshot(peer, ok=ok)

    # -- output

    def has_ready(self) -> bool:
        r = self.raft
        if self._outstanding is not None:
            return False
        soft, hard = self._prev_soft, self._prev_hard
        return bool(
            r.lead != soft.leader
            or r.role is not soft.role
            or r.term != hard.term
            or r.vote != hard.vote
            or r.log.committed != hard.commit
            or r.log.unstable.entries
            or r.log.unstable.snapshot is not None
            or r.msgs_after_persist
            or r.msgs_early
            or r.log.has_next_committed_entries()
            or r.read_states
            or r.dropped_reads
            or r.append_pending
            or r.has_reads_to_flush()
        )

    def ready(self) -> Ready:
        """Collect what the runtime must do now. Call ``advance`` before the next ``ready``."""
        if self._outstanding is not None:
            raise ClientError("advance() the previous Ready before asking for another")
        r = self.raft
        r.flush_appends()
        r.flush_reads()
        rd = Ready()
        soft = SoftState(r.lead, r.role)
        if soft != self._prev_soft:
            rd.soft_state = soft
        hs = r.hard_state
        if hs != self._prev_hard:
            rd.hard_state = hs
        rd.entries = list(r.log.unstable.entries)
        rd.snapshot = r.log.unstable.snapshot
        rd.committed_entries = r.log.next_committed_entries(r.cfg.max_msg_bytes)
        rd.messages, r.msgs_after_persist = r.msgs_after_persist, []
        rd.early_messages, r.msgs_early = r.msgs_early, []
        if hs.term != self._prev_hard.term or hs.vote != self._prev_hard.vote:
            # The term these messages carry is not durable yet (a single voter elects itself
            # within one step): they must wait for the persist like everything else.
            rd.messages = rd.early_messages + rd.messages
            rd.early_messages = []
        rd.read_states, r.read_states = r.read_states, []
        rd.dropped_reads, r.dropped_reads = r.dropped_reads, []
        rd.must_sync = bool(
            rd.entries
            or rd.snapshot is not None
            or (rd.hard_state is not None
                and (hs.term != self._prev_hard.term or hs.vote != self._prev_hard.vote))
        )
        self._outstanding = rd
        return rd

    def advance(self, rd: Ready) -> None:
        """The runtime has handled ``rd`` completely (persisted, sent, applied)."""
        if rd is not self._outstanding:
            raise ClientError("advance() must be given the Ready returned by ready()")
        r = self.raft
        self._outstanding = None
        if rd.soft_state is not None:
            self._prev_soft = rd.soft_state
        if rd.hard_state is not None:
            self._prev_hard = rd.hard_state
        if rd.snapshot is not None:
            r.log.stable_snap_to(rd.snapshot.meta.index)
            r.log.applied_to(rd.snapshot.meta.index)
        if rd.entries:
            last = rd.entries[-1]
            r.on_persisted(last.index, last.term)
        if rd.committed_entries:
            r.log.applied_to(rd.committed_entries[-1].index)

    # -- introspection

    def status(self) -> Status:
        r = self.raft
        progress = {}
        if r.role is Role.LEADER:
            progress = {
                pid: PeerStatus(pr.match, pr.next, pr.state, pr.is_learner, pr.recent_active)
                for pid, pr in sorted(r.prs.items())
            }
        return Status(
            id=r.id, term=r.term, vote=r.vote, commit=r.log.committed, applied=r.log.applied,
            last_index=r.log.last_index(), leader=r.lead, role=r.role,
            conf_state=r.conf_state, lead_transferee=r.lead_transferee, progress=progress,
        )
