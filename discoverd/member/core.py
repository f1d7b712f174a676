"""``MemberCore``: one member without I/O — a RawNode, the replicated state machine, and the
bookkeeping that turns committed entries and read states into answers for waiting requests.

It is the unit both runtimes drive: ``server/raft_loop.py`` (trio, real disk and sockets) and
``testing/sim`` (one thread, simulated disk and network). Both run the same cycle:

    rd = core.begin()                    # take a Ready; send rd.early_messages at once
    replies = core.apply_durable(rd)     # apply what is already on disk here; answer it
    core.storage.persist(rd...)          # the slow, blocking half (a worker thread in trio)
    done = core.complete(rd)             # memory half + apply; send done.messages, answer
                                         # done.replies, then run done.snapshot if any:
    snap = done.snapshot.make()          #   take it before applying more (make now, fork,
    core.storage.write_snapshot(snap)    #   or freeze() for a thread), write it, then
    core.snapshot_written(snap, done.compact_to)  # (or snapshot_abandoned() on failure)

Request ids are the runtime's (any int unique among pending requests).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from discoverd.consensus.log import RaftLog
from discoverd.consensus.messages import (
    ConfChange,
    ConfChangeKind,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    Message,
    Snapshot,
    SnapshotMeta,
)
from discoverd.consensus.raft import Config, RandomSource, Role
from discoverd.consensus.rawnode import RawNode, Ready, SoftState
from discoverd.consensus.storage import LogStorage, catch_up_start_of
from discoverd.errors import Compacted, DiscoverdError, ProposalDropped, Unavailable


class StateMachine(Protocol):
    """What the member replicates. Deterministic: same entries in, same state and results."""

    def apply(self, entry: Entry) -> Any:
        """Apply a committed entry (any kind, in log order); the value answers its proposer.

        Entries with no data (a new leader's) and CONF_CHANGE entries are passed too, so the
        machine always knows the applied index; it may otherwise ignore them. A CONF_CHANGE
        entry carries the change with its proposer's own context (the member table reads
        the new member's peer URLs from it), without the envelope this core adds.
        """
        ...

    def snapshot(self) -> bytes: ...

    def snapshot_builder(self) -> Callable[[], bytes]:
        """Freeze the state now (cheaply: the member's thread waits for this part) and
        return what encodes that frozen state into ``snapshot()``'s bytes. The builder may
        run on another thread while entries go on being applied: it reads nothing the
        member changes."""
        ...

    def restore(self, data: bytes) -> None: ...


class MemberStorage(LogStorage, Protocol):
    """Durable Raft state, split in an I/O half and a memory half.

    The I/O half (``persist``, ``write_snapshot``) may block and may run on a worker thread:
    it touches nothing Raft reads. The memory half (``persisted``, ``snapshot_written``) runs
    on the member's own thread afterwards and updates what ``LogStorage`` answers.
    """

    def persist(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None,
        *,
        must_sync: bool,
    ) -> None: ...

    def persisted(
        self, hard_state: HardState | None, entries: Sequence[Entry], snapshot: Snapshot | None
    ) -> None: ...

    def write_snapshot(self, snap: Snapshot) -> None: ...

    def write_snapshot_file(self, snap: Snapshot) -> bool:
        """``write_snapshot``'s first half (its own file; may run while a Ready is being
        persisted); False if ``snap`` is not newer than the snapshot held."""

    def record_snapshot(self, snap: Snapshot) -> None:
        """The second half (what makes the file count); never while a Ready persists."""

    def verify_snapshot_file(self, meta: SnapshotMeta) -> int:
        """Check the file ``write_snapshot_file`` wrote for ``meta`` in another process
        without reading its image into memory; its size in bytes. Raises ``OSError`` if it
        cannot be read, ``storage.snapshot.BrokenSnapshot`` if it is not intact: then it
        must not be recorded."""

    def snapshot_written(self, snap: Snapshot, compact_to: int) -> None: ...


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to request ``request_id``: ``result`` or ``error``."""

    request_id: int
    result: Any = None
    error: DiscoverdError | None = None


@dataclass(frozen=True, slots=True)
class SnapshotJob:
    """A snapshot due at ``meta``. Until the runtime applies anything more, the state
    machine *is* the state at ``meta.index``: the runtime takes it before that, either by
    forking (the child's copy-on-write memory is the frozen state; ``make`` there) or with
    ``freeze`` (a cheap copy to encode on another thread)."""

    meta: SnapshotMeta
    machine: StateMachine

    def make(self) -> Snapshot:
        """Encode the state as it is now (the slow part: in a forked child, or here for a
        small in-memory machine)."""
        return Snapshot(self.meta, self.machine.snapshot())

    def freeze(self) -> Callable[[], Snapshot]:
        """Copy what the image needs now; the returned builder may run on any thread."""
        build = self.machine.snapshot_builder()
        meta = self.meta
        return lambda: Snapshot(meta, build())


@dataclass(slots=True)
class Completion:
    """What ``complete`` leaves for the runtime to do, in this order."""

    messages: list[Message] = field(default_factory=list)
    replies: list[Reply] = field(default_factory=list)
    soft_state: SoftState | None = None
    snapshot: SnapshotJob | None = None  # make and write it, then call snapshot_written
    compact_to: int = 0
    removed: bool = False  # this member was removed from the cluster: stop it


_ENVELOPE = b"\xd1"


def _wrap(origin: int, request_id: int, payload: bytes) -> bytes:
    """Tag a proposal with who proposed it, so that member (and only it) answers it when the
    entry is applied — whichever member the leader was when it was appended."""
    return _ENVELOPE + origin.to_bytes(8, "big") + request_id.to_bytes(8, "big") + payload


def _unwrap(data: bytes) -> tuple[int, int, bytes]:
    if len(data) >= 17 and data[:1] == _ENVELOPE:
        return int.from_bytes(data[1:9], "big"), int.from_bytes(data[9:17], "big"), data[17:]
    return 0, 0, data


class MemberCore:
    def __init__(
        self,
        config: Config,
        storage: MemberStorage,
        state_machine: StateMachine,
        rng: RandomSource,
        *,
        snapshot_count: int = 10_000,
        snapshot_catchup_entries: int = 5_000,
        snapshot_bytes: int | None = None,
        snapshot_catchup_bytes: int | None = None,
    ) -> None:
        self.storage = storage
        self.sm = state_machine
        snap = storage.snapshot()
        if not snap.is_empty:
            state_machine.restore(snap.data)
        config.applied = max(config.applied, snap.meta.index)
        self.node = RawNode(config, storage, rng)
        self.id = config.id
        self.applied = snap.meta.index
        self.conf_state = snap.meta.conf_state
        self.snapshot_index = snap.meta.index
        self.snapshot_count = snapshot_count
        self.snapshot_catchup_entries = snapshot_catchup_entries
        self.snapshot_bytes = snapshot_bytes
        """Also snapshot once the entries applied since the last one hold this many bytes
        (None: by count only): what bounds the memory the log holds when entries are big."""
        self.snapshot_catchup_bytes = snapshot_catchup_bytes
        """At most this many bytes of entries stay behind a snapshot (None: no bound)."""
        self._applied_bytes = 0
        """Entry data applied since start; the byte trigger compares it with the next two."""
        self._bytes_at_snapshot = 0
        self._bytes_at_job = 0
        self._proposals: set[int] = set()
        self._read_ctx: dict[bytes, int] = {}
        self._reads_waiting: list[tuple[int, int]] = []  # (index, request_id), sorted
        self._removed = False
        self.snapshot_in_flight = False
        """A ``SnapshotJob`` was handed out and is not written yet: no second one."""
        self._phase_of: tuple[ConfState, int, int] | None = None
        """(the membership it was computed for, this member's rank in it, its size): see
        ``_snapshot_phase``."""
        self._applied_early = 0
        """How many of the outstanding Ready's committed entries ``apply_durable`` applied."""
        self._reads_taken = False
        """Whether the outstanding Ready's read states were taken (by ``apply_durable``)."""

    def __repr__(self) -> str:
        return (
            f"<MemberCore {self.id} applied={self.applied} snapshot={self.snapshot_index} "
            f"proposals={len(self._proposals)} reads={len(self._reads_waiting)}>"
        )

    # ------------------------------------------------------------------ facts

    @property
    def raft_log(self) -> RaftLog:
        return self.node.raft.log

    @property
    def is_leader(self) -> bool:
        return self.node.raft.role is Role.LEADER

    @property
    def leader(self) -> int:
        return self.node.raft.lead

    @property
    def term(self) -> int:
        return self.node.raft.term

    # ------------------------------------------------------------------ inputs

    def tick(self) -> None:
        self.node.tick()

    def step(self, message: Message) -> None:
        self.node.step(message)

    def propose(self, request_id: int, data: bytes) -> None:
        """Propose ``data`` through whichever member leads (a follower forwards it); the reply
        comes when its entry is applied here. If the proposal is lost on the way (leader
        change), no reply comes: the runtime times out and calls ``cancel``.

        Raises:
            NotLeader, ProposalDropped: nothing was proposed; the caller may retry elsewhere.
        """
        self.node.forward_proposal([_wrap(self.id, request_id, data)])
        self._proposals.add(request_id)

    def propose_conf_change(self, request_id: int, cc: ConfChange) -> int:
        """Propose a membership change (on the leader only); returns its index."""
        tagged = ConfChange(cc.kind, cc.node_id, _wrap(self.id, request_id, cc.context))
        index = self.node.propose_conf_change(tagged)
        self._proposals.add(request_id)
        return index

    def cancel(self, request_id: int) -> None:
        """Forget a request the runtime gave up on (timed out); a late result is dropped."""
        self._proposals.discard(request_id)
        ctx = request_id.to_bytes(8, "big", signed=False)
        self._read_ctx.pop(ctx, None)
        self._reads_waiting = [(i, r) for i, r in self._reads_waiting if r != request_id]

    def read(self, request_id: int) -> None:
        """A linearizable read barrier: the reply (its result is the read index) comes once
        the state machine has applied everything committed before this call; then read
        the state machine locally.

        Raises:
            NotLeader: no leader is known (the request cannot even be forwarded).
        """
        ctx = request_id.to_bytes(8, "big", signed=False)
        self.node.read_index(ctx)
        self._read_ctx[ctx] = request_id

    def transfer_leader(self, target: int) -> None:
        self.node.transfer_leader(target)

    def report_unreachable(self, peer: int) -> None:
        self.node.report_unreachable(peer)

    def report_snapshot(self, peer: int, ok: bool) -> None:
        self.node.report_snapshot(peer, ok=ok)

    # ------------------------------------------------------------------ the Ready cycle

    def has_ready(self) -> bool:
        return not self._removed and self.node.has_ready()

    def begin(self) -> Ready:
        """Take the next Ready. Send ``early_messages`` now; then ``storage.persist`` it."""
        self._applied_early = 0
        self._reads_taken = False
        return self.node.ready()

    def apply_durable(self, rd: Ready) -> list[Reply]:
        """Before ``persist(rd)``: apply the committed entries of ``rd`` this member already
        holds on disk, serve the reads they allow, and return those answers to send now.

        Committed and durable here, an entry is final: nothing in ``rd`` can change it
        (a Ready only overwrites uncommitted entries). So its proposer need not wait for
        the fsync of the *new* entries in ``rd`` — under load that is one whole disk write
        less per answer. On a leader every committed entry is durable (it counts itself
        only once persisted), so all of them go; a follower keeps for ``complete`` the ones
        that arrived committed in this very Ready. Nothing is applied ahead of a snapshot
        being installed.
        """
        if rd.snapshot is not None:
            return []
        stable = self.raft_log.stable_index()
        done = Completion()
        for e in rd.committed_entries:
            if e.index > stable:
                break
            self._apply(e, done)
            self._applied_early += 1
        # Read states need no disk: leadership was confirmed by a quorum's acks.
        self._take_read_states(rd, done)
        self._release_reads(done)
        return done.replies

    def persist(self, rd: Ready) -> None:
        """The I/O half, for runtimes that do not split it onto another thread."""
        self.storage.persist(rd.hard_state, rd.entries, rd.snapshot, must_sync=rd.must_sync)

    def complete(self, rd: Ready) -> Completion:
        """After ``persist(rd)`` returned: update memory, apply, and say what to do next."""
        self.storage.persisted(rd.hard_state, rd.entries, rd.snapshot)
        done = Completion(messages=rd.messages, soft_state=rd.soft_state)
        if rd.snapshot is not None:
            self.sm.restore(rd.snapshot.data)
            self.applied = rd.snapshot.meta.index
            self.conf_state = rd.snapshot.meta.conf_state
            self.snapshot_index = rd.snapshot.meta.index
            self._bytes_at_snapshot = self._applied_bytes
            for request_id in sorted(self._proposals):
                # Whatever happened to them is inside the snapshot: we cannot tell.
                done.replies.append(Reply(request_id, error=ProposalDropped(
                    "replaced by a snapshot from the leader; the outcome is unknown")))
            self._proposals.clear()
        for e in rd.committed_entries[self._applied_early:]:
            self._apply(e, done)
        self._applied_early = 0
        if not self._reads_taken:
            self._take_read_states(rd, done)
        self.node.advance(rd)
        self._release_reads(done)
        if self._snapshot_due() and not self.snapshot_in_flight:
            done.snapshot = self._take_snapshot()
            if done.snapshot is not None:
                self._bytes_at_job = self._applied_bytes
                done.compact_to = catch_up_start_of(
                    self.storage, self.applied, self.snapshot_catchup_entries,
                    self.snapshot_catchup_bytes)
        done.removed = self._removed
        return done

    def _take_read_states(self, rd: Ready, done: Completion) -> None:
        """Queue ``rd``'s confirmed read barriers until their index is applied; fail the
        dropped ones (the client retries)."""
        self._reads_taken = True
        for rs in rd.read_states:
            rid = self._read_ctx.pop(rs.context, None)
            if rid is not None:
                bisect.insort(self._reads_waiting, (rs.index, rid))
        for ctx in rd.dropped_reads:
            rid = self._read_ctx.pop(ctx, None)
            if rid is not None:
                done.replies.append(Reply(rid, error=Unavailable(
                    "leadership changed during a linearizable read; retry")))

    def _release_reads(self, done: Completion) -> None:
        """Answer the read barriers whose index is applied now."""
        waiting = self._reads_waiting
        n = 0
        while n < len(waiting) and waiting[n][0] <= self.applied:
            index, rid = waiting[n]
            done.replies.append(Reply(rid, index))
            n += 1
        del waiting[:n]

    def _apply(self, e: Entry, done: Completion) -> None:
        origin, request_id = 0, 0
        self._applied_bytes += len(e.data)
        if e.kind is EntryKind.CONF_CHANGE:
            cc = ConfChange.decode(e.data)
            origin, request_id, context = _unwrap(cc.context)
            self.conf_state = self.node.apply_conf_change(cc)
            if cc.kind is ConfChangeKind.REMOVE_NODE and cc.node_id == self.id:
                self._removed = True
            # The state machine sees the change with the proposer's own context (e.g. the
            # new member's peer URLs), as it sees a normal entry's payload: no envelope.
            e = Entry(e.term, e.index, e.kind, ConfChange(cc.kind, cc.node_id, context).encode())
        elif e.data:
            origin, request_id, payload = _unwrap(e.data)
            e = Entry(e.term, e.index, e.kind, payload)
        # Every entry reaches the state machine (empty and membership ones too), so it can
        # track the applied index it will store in its snapshots.
        result = self.sm.apply(e)
        if e.kind is EntryKind.CONF_CHANGE:
            result = self.conf_state
        self.applied = e.index
        if origin == self.id and request_id in self._proposals:
            self._proposals.discard(request_id)
            done.replies.append(Reply(request_id, result))

    def _snapshot_due(self) -> bool:
        """Whether this member's next snapshot is due: by count, when the applied index
        crossed a boundary of this member's windows of ``snapshot_count`` entries; by bytes,
        likewise on the axis of entry bytes applied since start.

        Members apply the same entries, so with windows starting at the same index they
        would all snapshot at once — every member forking an encoder at the same moment on
        shared cores (a leader change during a bulk load, measured). Each member's windows
        are shifted by its rank among the members (``_snapshot_phase``): with three members
        they snapshot a third of the count apart. The count windows are fixed on the index
        axis, so the phase survives restarts; the bytes axis starts again at a restart.
        """
        rank, members = self._snapshot_phase()
        if snapshot_window_crossed(self.applied, self.snapshot_index, self.snapshot_count,
                                   rank, members):
            return True
        return self.snapshot_bytes is not None and snapshot_window_crossed(
            self._applied_bytes, self._bytes_at_snapshot, self.snapshot_bytes, rank, members)

    def _snapshot_phase(self) -> tuple[int, int]:
        """This member's rank among the members (voters and learners, ordered by id) and
        their number; (0, 1) while it is not among them (e.g. before it has applied the
        membership that adds it)."""
        conf = self.conf_state
        if self._phase_of is None or self._phase_of[0] is not conf:
            ids = sorted({*conf.voters, *conf.learners})
            rank = ids.index(self.id) if self.id in ids else 0
            self._phase_of = (conf, rank, max(len(ids), 1))
        return self._phase_of[1], self._phase_of[2]

    def _take_snapshot(self) -> SnapshotJob | None:
        try:
            term = self.raft_log.term(self.applied)
        except Compacted:
            # A newer snapshot from the leader arrived while this Ready was being persisted;
            # it supersedes ours, which would be stale before it was written.
            return None
        meta = SnapshotMeta(self.applied, term, self.conf_state)
        self.snapshot_in_flight = True
        return SnapshotJob(meta, self.sm)

    def snapshot_written(self, snap: Snapshot, compact_to: int) -> None:
        """The runtime wrote ``snap`` durably: remember it and compact the log behind it."""
        self.storage.snapshot_written(snap, compact_to)
        self.snapshot_index = max(self.snapshot_index, snap.meta.index)
        self.snapshot_in_flight = False
        self._bytes_at_snapshot = max(self._bytes_at_snapshot, self._bytes_at_job)

    def snapshot_abandoned(self) -> None:
        """The runtime could not write the snapshot it was given (e.g. a full disk): a
        later Ready makes a new one, since one is still due."""
        self.snapshot_in_flight = False


def snapshot_window_crossed(position: int, last: int, period: int, rank: int, members: int) -> bool:
    """Whether ``position`` has reached the first boundary after ``last`` of the windows of
    ``period`` that start at ``rank * period // members``, and is at least half a period
    past ``last`` (a snapshot installed from the leader just before a boundary is not
    followed by another one at once)."""
    offset = rank * period // members
    return (position - last >= period // 2
            and position >= offset + ((last - offset) // period + 1) * period)
