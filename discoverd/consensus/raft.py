"""The Raft state machine: one member's role, term, log and peers, changed only by ``step``
and ``tick``. No I/O, no clock, no global randomness: every output is data collected in
``msgs_after_persist`` / ``msgs_early`` / ``read_states`` for ``RawNode.ready`` to hand out.

Rule 1 (as in h11's ``_state.py``): every transition of role and term lives in this file.
Rule 2: common term handling happens once, at the top of ``step``, before the role dispatch.

Sections of the Raft paper are cited where a rule is implemented; "thesis" means Ongaro's
dissertation.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from discoverd.consensus import confchange
from discoverd.consensus.log import RaftLog
from discoverd.consensus.messages import (
    NONE,
    AppendEntries,
    AppendEntriesResponse,
    ConfChange,
    ConfChangeKind,
    ConfState,
    Entry,
    EntryKind,
    ForwardProposal,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    ReadState,
    RequestVote,
    RequestVoteResponse,
    Snapshot,
    TimeoutNow,
)
from discoverd.consensus.progress import Progress, ProgressState
from discoverd.consensus.quorum import VoteResult, committed_index, has_quorum, vote_result
from discoverd.consensus.read_index import ReadOnly, ReadRequest
from discoverd.consensus.storage import LogStorage
from discoverd.errors import (
    ClientError,
    Compacted,
    LogUnavailable,
    NotLeader,
    ProposalDropped,
    SnapshotTemporarilyUnavailable,
)

_REPLICATION_MESSAGES = (
    AppendEntries, Heartbeat, InstallSnapshot, TimeoutNow, ReadIndexResponse
)


class RandomSource(Protocol):
    """The one thing Raft needs from randomness; pass a seeded ``random.Random``."""

    def randrange(self, start: int, stop: int) -> int: ...


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(slots=True)
class Config:
    """Knobs of one member. Ticks are the unit of time; the runtime decides a tick's length.

    ``voters``/``learners`` bootstrap a brand-new cluster: they are used only when the
    storage is empty, and become the first log entries (see ``_bootstrap``). A member
    joining an existing cluster passes none and learns the membership from the leader.
    """

    id: int
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    max_msg_bytes: int = 1 << 20
    max_inflight: int = 256
    pre_vote: bool = True
    check_quorum: bool = True
    applied: int = 0
    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()
    snapshot_timeout_ticks: int = 0  # 0: 10 election timeouts

    def validate(self) -> None:
        if self.id <= 0:
            raise ClientError("member id must be positive")
        if self.heartbeat_ticks <= 0:
            raise ClientError("heartbeat_ticks must be positive")
        if self.election_ticks <= self.heartbeat_ticks:
            raise ClientError("election_ticks must be greater than heartbeat_ticks")
        if self.max_inflight <= 0:
            raise ClientError("max_inflight must be positive")


class Raft:
    """One member's consensus state. Drive it through ``RawNode``; tests may poke it directly."""

    def __init__(self, config: Config, storage: LogStorage, rng: RandomSource) -> None:
        config.validate()
        self.id = config.id
        self.cfg = config
        self.rng = rng
        self.log = RaftLog(storage)
        hs, cs = storage.initial_state()
        fresh = storage.last_index() == 0 and hs == HardState() and not (cs.voters or cs.learners)
        self.term = hs.term
        self.vote = hs.vote
        if hs.commit:
            self.log.commit_to(hs.commit)
        if config.applied:
            self.log.applied_to(config.applied)
        self.lead = NONE
        self.role = Role.FOLLOWER
        self.conf_state = ConfState()
        self.prs: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}
        self.msgs_after_persist: list[Message] = []
        self.msgs_early: list[Message] = []
        self.read_states: list[ReadState] = []
        self.read_only = ReadOnly()
        self.forward_reads: list[bytes] = []
        self.dropped_reads: list[bytes] = []
        self.append_pending = False
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = config.election_ticks
        self.lead_transferee = NONE
        self.pending_conf_index = 0
        self.snapshot_elapsed: dict[int, int] = {}
        self._quorum_was_active = False
        self._set_conf_state(cs)
        self.become_follower(self.term, NONE)
        if fresh and config.voters:
            self._bootstrap(config.voters, config.learners)

    def _bootstrap(self, voters: tuple[int, ...], learners: tuple[int, ...]) -> None:
        """Start a brand-new cluster: the initial membership becomes the first log entries,
        committed at term 1 on every founding member alike (as etcd does), so a member that
        joins later learns the whole membership history by replaying the log."""
        changes = [ConfChange(ConfChangeKind.ADD_VOTER, v) for v in sorted(voters)]
        changes += [ConfChange(ConfChangeKind.ADD_LEARNER, v) for v in sorted(learners)]
        self.become_follower(1, NONE)
        ents = [
            Entry(1, i, EntryKind.CONF_CHANGE, cc.encode()) for i, cc in enumerate(changes, 1)
        ]
        self.log.append(ents)
        self.log.commit_to(len(ents))
        for cc in changes:
            self._set_conf_state(confchange.apply(cc, self.conf_state))

    def __repr__(self) -> str:
        return (
            f"<Raft {self.id} {self.role.value} term={self.term} vote={self.vote} "
            f"lead={self.lead} last={self.log.last_index()} commit={self.log.committed} "
            f"applied={self.log.applied}>"
        )

    # ------------------------------------------------------------------ derived state

    @property
    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    @property
    def voters(self) -> tuple[int, ...]:
        return self.conf_state.voters

    def promotable(self) -> bool:
        """Only a voter that holds no unapplied membership change may campaign."""
        return self.id in self.conf_state.voters and self.log.unstable.snapshot is None

    def quorum_active(self) -> bool:
        """Whether this leader has heard from a quorum lately: in the current check-quorum
        window, or — early in a window, before followers have had a heartbeat round to
        answer — in the previous one. A leader that cannot say so must not act on its own
        clock (e.g. expire leases): it may already have been replaced."""
        if self.role is not Role.LEADER:
            return False
        active = {pid for pid, pr in self.prs.items() if pr.recent_active or pid == self.id}
        if has_quorum(self.conf_state.voters, active):
            return True
        return self._quorum_was_active and self.election_elapsed <= 2 * self.cfg.heartbeat_ticks

    def committed_in_current_term(self) -> bool:
        """Whether an entry of this term is committed (a new leader's log is then final)."""
        return self._committed_in_current_term()

    def _has_unapplied_conf_change(self) -> bool:
        lo, hi = self.log.applied + 1, self.log.committed + 1
        if lo >= hi:
            return False
        try:
            ents = self.log.slice(lo, hi)
        except (Compacted, LogUnavailable):
            return True  # cannot tell: be safe and wait for the runtime to apply
        return any(e.kind is EntryKind.CONF_CHANGE for e in ents)

    def _committed_in_current_term(self) -> bool:
        return self.log.match_term(self.log.committed, self.term)

    # ------------------------------------------------------------------ sending

    def send(self, m: Message) -> None:
        """Queue ``m``. A leader's messages depend on nothing it has not persisted already
        (its term and vote were persisted to win the election; it counts its own log toward
        commit only after ``advance``), so they may leave before this Ready is persisted."""
        if self.role is Role.LEADER and isinstance(m, _REPLICATION_MESSAGES):
            self.msgs_early.append(m)
        else:
            self.msgs_after_persist.append(m)

    def _send_append(self, to: int, *, send_if_empty: bool = True) -> bool:
        """Send ``to`` the entries it lacks (or a snapshot); False if nothing could be sent."""
        pr = self.prs[to]
        if pr.is_paused():
            return False
        prev_index = pr.next - 1
        try:
            prev_term = self.log.term(prev_index)
            ents = self.log.entries_from(pr.next, self.cfg.max_msg_bytes)
        except Compacted:
            return self._send_snapshot(to, pr)
        except LogUnavailable:
            # Our log is shorter than this peer's next (it acknowledged entries of a former
            # log of ours that a new leader's append replaced); probe from our end.
            pr.become_probe()
            pr.next = self.log.last_index() + 1
            return False
        if not ents and not send_if_empty:
            return False
        self.send(AppendEntries(self.term, self.id, to, prev_index, prev_term, tuple(ents),
                                self.log.committed))
        pr.sent_entries(ents[-1].index if ents else prev_index, len(ents))
        return True

    def _send_snapshot(self, to: int, pr: Progress) -> bool:
        if not pr.recent_active:
            return False  # do not ship a snapshot to a peer that may be down
        try:
            snap = self.log.storage.snapshot()
        except SnapshotTemporarilyUnavailable:
            return False
        if snap.is_empty:
            return False
        pr.become_snapshot(snap.meta.index)
        self.snapshot_elapsed[to] = 0
        self.send(InstallSnapshot(self.term, self.id, to, snap))
        return True

    def _send_heartbeat(self, to: int, read_round: int = 0) -> None:
        # Never tell a follower to commit past what it is known to hold (etcd does the same).
        commit = min(self.prs[to].match, self.log.committed)
        self.send(Heartbeat(self.term, self.id, to, commit, read_round))

    def _peers(self) -> list[int]:
        return [i for i in sorted(self.prs) if i != self.id]

    def bcast_append(self) -> None:
        for to in self._peers():
            self._send_append(to)

    def bcast_heartbeat(self, read_round: int = 0) -> None:
        for to in self._peers():
            self._send_heartbeat(to, read_round)

    # ------------------------------------------------------------------ role changes

    def _reset(self, term: int) -> None:
        if self.term != term:
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = self.cfg.election_ticks + self.rng.randrange(
            0, self.cfg.election_ticks
        )
        self.votes = {}
        self.lead_transferee = NONE
        self.snapshot_elapsed = {}
        last = self.log.last_index()
        for pid, pr in self.prs.items():
            fresh = Progress(last + 1, self.cfg.max_inflight, is_learner=pr.is_learner)
            if pid == self.id:
                fresh.match = self.log.stable_index()
            self.prs[pid] = fresh
        # Reads in flight cannot be confirmed by a member that is no longer (or not yet) the
        # leader: hand their contexts back so the runtime can fail them fast.
        for req in self.read_only.reset():
            if req.origin == self.id:
                self.dropped_reads.append(req.context)
        self.dropped_reads.extend(self.forward_reads)
        self.forward_reads = []

    def become_follower(self, term: int, lead: int) -> None:
        self._reset(term)
        self.lead = lead
        self.role = Role.FOLLOWER

    def become_pre_candidate(self) -> None:
        assert self.role is not Role.LEADER, "invalid transition leader -> pre-candidate"
        # Pre-vote changes neither term nor vote (thesis §9.6): a partitioned member that
        # keeps failing its pre-vote cannot inflate terms and disrupt the cluster on return.
        self.votes = {}
        self.lead = NONE
        self.role = Role.PRE_CANDIDATE

    def become_candidate(self) -> None:
        assert self.role is not Role.LEADER, "invalid transition leader -> candidate"
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE

    def become_leader(self) -> None:
        assert self.role is Role.CANDIDATE, f"invalid transition {self.role.value} -> leader"
        self._reset(self.term)
        self.lead = self.id
        self.role = Role.LEADER
        for pr in self.prs.values():
            pr.recent_active = True
        self._quorum_was_active = True
        me = self.prs.get(self.id)
        if me is not None:
            me.become_replicate()
            me.match = self.log.stable_index()
        # An empty entry of our term lets us commit everything before it (§5.4.2); and no
        # membership change is accepted until it is applied (the erratum to single-server
        # changes: a new leader must commit an entry of its own term first).
        self.pending_conf_index = self._append_entries([Entry(self.term, 0, EntryKind.NORMAL)])

    # ------------------------------------------------------------------ elections

    def campaign(self, *, transfer: bool = False) -> None:
        """Start an election (after a pre-vote round unless this is a leadership transfer)."""
        if not self.promotable() or self._has_unapplied_conf_change():
            return
        if self.cfg.pre_vote and not transfer:
            self.become_pre_candidate()
            self._request_votes(pre_vote=True, transfer=False)
        else:
            self._start_election(transfer=transfer)

    def _start_election(self, *, transfer: bool) -> None:
        self.become_candidate()
        self._request_votes(pre_vote=False, transfer=transfer)

    def _request_votes(self, *, pre_vote: bool, transfer: bool) -> None:
        if self._poll(self.id, True) is VoteResult.WON:
            self._won(pre_vote)  # a single-voter cluster
            return
        term = self.term + 1 if pre_vote else self.term
        last_index, last_term = self.log.last_index(), self.log.last_term()
        for v in self.conf_state.voters:
            if v != self.id:
                self.send(RequestVote(term, self.id, v, last_index, last_term, pre_vote, transfer))

    def _poll(self, voter: int, granted: bool) -> VoteResult:
        self.votes.setdefault(voter, granted)  # a duplicate response never counts twice
        return vote_result(self.conf_state.voters, self.votes)

    def _won(self, pre_vote: bool) -> None:
        if pre_vote:
            self._start_election(transfer=False)
        else:
            self.become_leader()
            self.bcast_append()

    # ------------------------------------------------------------------ ticks

    def tick(self) -> None:
        if self.role is Role.LEADER:
            self._tick_heartbeat()
        else:
            self._tick_election()

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        # A member that may not campaign (a learner, or one not in the configuration) keeps
        # counting, so it notices that its leader is gone and answers a new candidate.
        if self.promotable() and self.election_elapsed >= self.randomized_election_timeout:
            self.election_elapsed = 0
            self.campaign()

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        timeout = self.cfg.snapshot_timeout_ticks or 10 * self.cfg.election_ticks
        for pid in list(self.snapshot_elapsed):
            self.snapshot_elapsed[pid] += 1
            pr = self.prs.get(pid)
            if pr is None or pr.state is not ProgressState.SNAPSHOT:
                del self.snapshot_elapsed[pid]
            elif self.snapshot_elapsed[pid] >= timeout:
                # The snapshot was lost without the transport telling us: try again.
                del self.snapshot_elapsed[pid]
                pr.become_probe()
        if self.election_elapsed >= self.cfg.election_ticks:
            self.election_elapsed = 0
            if self.cfg.check_quorum:
                active = {pid for pid, pr in self.prs.items() if pr.recent_active or pid == self.id}
                for pid, pr in self.prs.items():
                    pr.recent_active = pid == self.id
                self._quorum_was_active = has_quorum(self.conf_state.voters, active)
                if not self._quorum_was_active:
                    # §6.2 of the thesis: a leader that cannot reach a quorum steps down, so
                    # clients stop waiting on it and a reachable majority can elect.
                    self.become_follower(self.term, NONE)
                    return
            if self.lead_transferee != NONE:
                self.lead_transferee = NONE  # transfer did not finish in an election timeout
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            # A round still waiting rides on every periodic heartbeat: its own may have been
            # lost, and no new round starts until it is confirmed (``flush_reads``).
            self.bcast_heartbeat(self.read_only.last_round if self.read_only.rounds else 0)

    # ------------------------------------------------------------------ step

    def step(self, m: Message) -> None:
        """Handle one message from a peer (after term checks common to all roles)."""
        if m.dst != self.id:
            return
        if m.term > self.term:
            if isinstance(m, RequestVote):
                in_lease = (
                    self.cfg.check_quorum
                    and self.lead != NONE
                    and self.election_elapsed < self.cfg.election_ticks
                )
                if in_lease and not m.transfer:
                    # We heard from a live leader within an election timeout: this candidate
                    # is probably a returning partitioned member; do not let it depose the
                    # leader (thesis §4.2.3).
                    return
            if isinstance(m, RequestVote) and m.pre_vote:
                pass  # a pre-vote never changes our term
            elif isinstance(m, RequestVoteResponse) and m.pre_vote and m.granted:
                pass  # granted pre-votes carry the term we asked for, not a newer one
            elif isinstance(m, AppendEntries | Heartbeat | InstallSnapshot):
                self.become_follower(m.term, m.src)
            else:
                self.become_follower(m.term, NONE)
        elif m.term < self.term:
            if (self.cfg.check_quorum or self.cfg.pre_vote) and isinstance(
                m, AppendEntries | Heartbeat
            ):
                # A stale leader (e.g. back from a partition) would otherwise never learn of
                # the new term, because pre-vote/lease keep us from raising ours for it.
                self.send(AppendEntriesResponse(self.term, self.id, m.src))
            elif isinstance(m, RequestVote) and m.pre_vote:
                self.send(RequestVoteResponse(self.term, self.id, m.src, False, True))
            return

        if isinstance(m, RequestVote):
            self._handle_request_vote(m)
        elif self.role is Role.LEADER:
            self._step_leader(m)
        elif self.role is Role.FOLLOWER:
            self._step_follower(m)
        else:
            self._step_candidate(m)

    def _handle_request_vote(self, m: RequestVote) -> None:
        can_vote = (
            self.vote == m.src
            or (self.vote == NONE and self.lead == NONE)
            or (m.pre_vote and m.term > self.term)
        )
        if can_vote and self.log.is_up_to_date(m.last_log_index, m.last_log_term):
            # §5.2/§5.4.1: one vote per term, only for a log at least as up to date as ours.
            self.send(RequestVoteResponse(m.term, self.id, m.src, True, m.pre_vote))
            if not m.pre_vote:
                self.election_elapsed = 0
                self.vote = m.src
        else:
            self.send(RequestVoteResponse(self.term, self.id, m.src, False, m.pre_vote))

    def _step_candidate(self, m: Message) -> None:
        if isinstance(m, AppendEntries | Heartbeat | InstallSnapshot):
            # §5.2: a candidate that hears from a leader of its term steps down.
            self.become_follower(m.term, m.src)
            self._step_follower(m)
        elif isinstance(m, RequestVoteResponse):
            pre = self.role is Role.PRE_CANDIDATE
            if m.pre_vote != pre:
                return
            result = self._poll(m.src, m.granted)
            if result is VoteResult.WON:
                self._won(pre)
            elif result is VoteResult.LOST:
                self.become_follower(self.term, NONE)

    def _step_follower(self, m: Message) -> None:
        if isinstance(m, AppendEntries):
            self.election_elapsed = 0
            self.lead = m.src
            self._handle_append(m)
        elif isinstance(m, Heartbeat):
            self.election_elapsed = 0
            self.lead = m.src
            self.log.commit_to(min(m.commit, self.log.last_index()))
            self.send(HeartbeatResponse(self.term, self.id, m.src, m.read_round))
        elif isinstance(m, InstallSnapshot):
            self.election_elapsed = 0
            self.lead = m.src
            self._handle_snapshot(m)
        elif isinstance(m, TimeoutNow):
            self.campaign(transfer=True)
        elif isinstance(m, ReadIndexResponse):
            for ctx in m.contexts:
                self.read_states.append(ReadState(m.index, ctx))

    def _handle_append(self, m: AppendEntries) -> None:
        if m.prev_log_index < self.log.committed:
            self.send(AppendEntriesResponse(self.term, self.id, m.src, self.log.committed))
            return
        last_new = self.log.maybe_append(m.prev_log_index, m.prev_log_term, m.commit, m.entries)
        if last_new is not None:
            self.send(AppendEntriesResponse(self.term, self.id, m.src, last_new))
            return
        # §5.3 with fast back-off: tell the leader the last index at which our log could
        # match, skipping every entry of a term newer than the one it probed with.
        hint_index = min(m.prev_log_index, self.log.last_index())
        hint_index, hint_term = self.log.find_conflict_by_term(hint_index, m.prev_log_term)
        self.send(AppendEntriesResponse(self.term, self.id, m.src, m.prev_log_index, True,
                                        hint_index, hint_term))

    def _handle_snapshot(self, m: InstallSnapshot) -> None:
        if self._restore(m.snapshot):
            self.send(AppendEntriesResponse(self.term, self.id, m.src, self.log.last_index()))
        else:
            self.send(AppendEntriesResponse(self.term, self.id, m.src, self.log.committed))

    def _restore(self, snap: Snapshot) -> bool:
        meta = snap.meta
        if meta.index <= self.log.committed:
            return False
        # A member being added may receive a snapshot taken before its own addition: accept
        # it; it just cannot campaign until the entries after it (its addition) are applied.
        if self.log.match_term(meta.index, meta.term):
            # We already hold that entry: just fast-forward the commit index.
            self.log.commit_to(meta.index)
            return False
        self.log.restore(snap)
        self._set_conf_state(meta.conf_state)
        return True

    def _step_leader(self, m: Message) -> None:
        if isinstance(m, AppendEntriesResponse):
            self._handle_append_response(m)
        elif isinstance(m, HeartbeatResponse):
            pr = self.prs.get(m.src)
            if pr is None:
                return
            pr.recent_active = True
            pr.probe_sent = False
            if pr.state is ProgressState.REPLICATE and pr.inflights.full():
                # An append (or its ack) may have been lost: let one more through; if the
                # follower has a gap it rejects it and we fall back to probing.
                pr.inflights.free_first()
            if pr.match < self.log.last_index():
                self._send_append(m.src)
            if m.read_round:
                for rnd in self.read_only.ack(m.read_round, m.src, self.conf_state.voters):
                    self._release_reads(rnd.index, rnd.requests)
        elif isinstance(m, ReadIndexRequest):
            if m.src not in self.prs:
                return
            for ctx in m.contexts:
                self.read_only.add(ctx, m.src)
        elif isinstance(m, ForwardProposal):
            if m.src not in self.prs or self.lead_transferee != NONE:
                return  # dropped; the follower's client times out and retries
            self._append_entries([Entry(0, 0, EntryKind.NORMAL, d) for d in m.entries])
            self.append_pending = True

    def _handle_append_response(self, m: AppendEntriesResponse) -> None:
        pr = self.prs.get(m.src)
        if pr is None:
            return
        pr.recent_active = True
        if m.reject:
            next_probe = m.reject_hint
            if m.hint_term > 0:
                next_probe, _ = self.log.find_conflict_by_term(m.reject_hint, m.hint_term)
            if pr.maybe_decr_to(m.index, next_probe):
                if pr.state is ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_append(m.src)
            return
        was_paused = pr.is_paused()
        if not pr.maybe_update(m.index):
            return
        if pr.state is ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state is ProgressState.SNAPSHOT and pr.match + 1 >= self.log.first_index():
            pr.become_probe()
            pr.become_replicate()
            self.snapshot_elapsed.pop(m.src, None)
        elif pr.state is ProgressState.REPLICATE:
            pr.inflights.free_le(m.index)
        if self._maybe_commit():
            self.bcast_append()
        elif was_paused:
            self._send_append(m.src)
        while self._send_append(m.src, send_if_empty=False):
            pass
        if m.src == self.lead_transferee and pr.match == self.log.last_index():
            self.send(TimeoutNow(self.term, self.id, m.src))

    def _maybe_commit(self) -> bool:
        acked = {pid: pr.match for pid, pr in self.prs.items()}
        index = committed_index(self.conf_state.voters, acked)
        # §5.4.2: only an entry of the current term is committed by counting replicas.
        return self.log.maybe_commit(index, self.term)

    # ------------------------------------------------------------------ local requests

    def propose(self, entries: list[Entry]) -> int:
        """Append client entries (term/index are filled in); returns the last index.

        Raises:
            NotLeader: not the leader (``leader`` says who is, if known).
            ProposalDropped: a leadership transfer or a membership change is in progress.
        """
        if self.role is not Role.LEADER:
            raise NotLeader(f"member {self.id:x} is not the leader", leader=self.lead)
        if self.lead_transferee != NONE:
            raise ProposalDropped(
                f"leadership is being transferred to {self.lead_transferee:x}",
                leader=self.id,
            )
        conf_at = [i for i, e in enumerate(entries) if e.kind is EntryKind.CONF_CHANGE]
        if conf_at:
            if len(conf_at) > 1 or self.pending_conf_index > self.log.applied:
                raise ProposalDropped(
                    "a membership change is already in progress", leader=self.id
                )
            confchange.validate(ConfChange.decode(entries[conf_at[0]].data), self.conf_state)
        first = self.log.last_index() + 1
        last = self._append_entries(entries)
        if conf_at:
            self.pending_conf_index = first + conf_at[0]
        # Proposal batching: everything proposed before the next Ready goes to each follower
        # in one AppendEntries (see ``flush_appends``), not one message per proposal.
        self.append_pending = True
        return last

    def forward_proposal(self, data: list[bytes]) -> None:
        """Hand proposals to the leader (a follower's writes). Nothing reports whether the
        leader appended them: the proposer learns it by seeing them applied, or times out.

        Raises:
            NotLeader: no leader is known to forward to.
        """
        if self.role is Role.LEADER:
            self.propose([Entry(0, 0, EntryKind.NORMAL, d) for d in data])
            return
        if self.lead == NONE:
            raise NotLeader(f"member {self.id:x} knows no leader")
        self.send(ForwardProposal(self.term, self.id, self.lead, tuple(data)))

    def _append_entries(self, entries: list[Entry]) -> int:
        last = self.log.last_index()
        ents = [
            Entry(self.term, last + 1 + i, e.kind, e.data) for i, e in enumerate(entries)
        ]
        return self.log.append(ents)

    def read_index(self, context: bytes) -> None:
        """Queue a linearizable read; it comes back as a ``ReadState`` (see ``flush_reads``)."""
        if self.role is Role.LEADER:
            self.read_only.add(context, self.id)
        elif self.lead != NONE:
            self.forward_reads.append(context)
        else:
            raise NotLeader(f"member {self.id:x} knows no leader")

    def flush_appends(self) -> None:
        """Send the entries proposed since the last Ready (called by ``RawNode.ready``)."""
        if self.append_pending:
            self.append_pending = False
            if self.role is Role.LEADER:
                self.bcast_append()

    def has_reads_to_flush(self) -> bool:
        if self.role is Role.LEADER:
            return (bool(self.read_only.queued) and not self.read_only.rounds
                    and self._committed_in_current_term())
        return bool(self.forward_reads) and self.lead != NONE

    def flush_reads(self) -> None:
        """Start one heartbeat round for every read queued since the last flush (batching)."""
        if self.role is not Role.LEADER:
            if self.forward_reads and self.lead != NONE:
                self.send(ReadIndexRequest(self.term, self.id, self.lead,
                                           tuple(self.forward_reads)))
                self.forward_reads = []
            return
        if not self.read_only.queued or not self._committed_in_current_term():
            # A new leader does not know the latest commit index until it commits an entry
            # of its own term (thesis §6.4 step 1): reads wait for that.
            return
        if self.read_only.rounds and self.conf_state.voters != (self.id,):
            # One round in flight at a time (etcd's read loop does the same): reads that
            # arrive meanwhile queue up and all share the next round, so under load a round
            # confirms a whole batch instead of every Ready starting its own. A round whose
            # heartbeats were lost is confirmed by the periodic heartbeat, which carries the
            # newest round (see ``_tick_heartbeat``); its release starts the next one.
            return
        if self.conf_state.voters == (self.id,):
            reqs = self.read_only.queued
            self.read_only.queued = []
            self._release_reads(self.log.committed, reqs)
            return
        round_no = self.read_only.start_round(self.log.committed, self.id)
        self.bcast_heartbeat(round_no)

    def _release_reads(self, index: int, reqs: list[ReadRequest]) -> None:
        remote: dict[int, list[bytes]] = {}
        for r in reqs:
            if r.origin == self.id:
                self.read_states.append(ReadState(index, r.context))
            else:
                remote.setdefault(r.origin, []).append(r.context)
        for origin, ctxs in sorted(remote.items()):
            self.send(ReadIndexResponse(self.term, self.id, origin, index, tuple(ctxs)))

    def transfer_leader(self, target: int) -> None:
        """Hand leadership to ``target`` (thesis §3.10): stop taking proposals, bring it up
        to date, then tell it to campaign at once with TimeoutNow."""
        if self.role is not Role.LEADER:
            raise NotLeader(f"member {self.id:x} is not the leader", leader=self.lead)
        if target == self.id:
            return
        if target not in self.conf_state.voters:
            raise ClientError(f"member {target:x} is not a voter")
        if self.lead_transferee == target:
            return
        self.lead_transferee = target
        self.election_elapsed = 0
        pr = self.prs[target]
        if pr.match == self.log.last_index():
            self.send(TimeoutNow(self.term, self.id, target))
        else:
            self._send_append(target)

    # ------------------------------------------------------------------ membership

    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        cs = confchange.apply(cc, self.conf_state)
        self._set_conf_state(cs)
        if self.role is Role.LEADER:
            if self.id not in cs.voters:
                # A removed leader steps down; the remaining voters elect a new one.
                self.become_follower(self.term, NONE)
                return cs
            if self.lead_transferee != NONE and self.lead_transferee not in cs.voters:
                self.lead_transferee = NONE
            if self._maybe_commit():
                self.bcast_append()
            for pid in self._peers():
                if self.prs[pid].match == 0 and not self.prs[pid].probe_sent:
                    self._send_append(pid)
        return cs

    def _set_conf_state(self, cs: ConfState) -> None:
        self.conf_state = cs
        members = set(cs.voters) | set(cs.learners)
        for pid in list(self.prs):
            if pid not in members:
                del self.prs[pid]
                self.snapshot_elapsed.pop(pid, None)
        last = self.log.last_index()
        for pid in sorted(members):
            pr = self.prs.get(pid)
            if pr is None:
                pr = Progress(last + 1, self.cfg.max_inflight)
                # A new member counts as active so check-quorum does not fire at once.
                pr.recent_active = True
                if pid == self.id:
                    pr.match = self.log.stable_index()
                self.prs[pid] = pr
            pr.is_learner = pid in cs.learners

    # ------------------------------------------------------------------ runtime feedback

    def on_persisted(self, index: int, term: int) -> None:
        """Entries up to (``index``, ``term``) are durable; a leader may now count itself."""
        self.log.stable_to(index, term)
        if self.role is Role.LEADER:
            me = self.prs.get(self.id)
            if me is not None and me.maybe_update(self.log.stable_index()) and self._maybe_commit():
                self.bcast_append()

    def report_unreachable(self, peer: int) -> None:
        pr = self.prs.get(peer)
        if self.role is Role.LEADER and pr is not None and pr.state is ProgressState.REPLICATE:
            pr.become_probe()

    def report_snapshot(self, peer: int, *, ok: bool) -> None:
        pr = self.prs.get(peer)
        if self.role is not Role.LEADER or pr is None or pr.state is not ProgressState.SNAPSHOT:
            return
        self.snapshot_elapsed.pop(peer, None)
        if not ok:
            pr.pending_snapshot = 0
        pr.become_probe()
        # Wait for the next heartbeat response before probing again (etcd does the same).
        pr.probe_sent = True
