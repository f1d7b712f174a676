"""One test per rule of the Raft paper (and Ongaro's dissertation, "thesis").

Each docstring quotes or paraphrases the rule and names its section, so a failing test points
at the sentence that was broken (the idea of etcd's ``raft_paper_test.go``). Clusters are
driven through ``discoverd.testing.interaction.InteractionEnv``, which handles every Ready
exactly as the ``rawnode`` contract says; single rules are checked by stepping hand-made
messages into one member and looking at what it hands back.

Founding members start at term 1 with the membership as their first log entries, so a
3-member cluster's log is ``1/1 1/2 1/3`` and its first leader (term 2) appends ``2/4``.
"""

from __future__ import annotations

import contextlib
import random
from typing import Any

import pytest

from discoverd.consensus import messages as msgs
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
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    RequestVote,
    RequestVoteResponse,
    Snapshot,
    SnapshotMeta,
    TimeoutNow,
)
from discoverd.consensus.raft import Raft, Role
from discoverd.consensus.rawnode import Ready
from discoverd.errors import NotLeader, PeerError, ProposalDropped
from discoverd.testing.interaction import InteractionEnv

ADD_LEARNER = ConfChangeKind.ADD_LEARNER
ADD_VOTER = ConfChangeKind.ADD_VOTER
REMOVE = ConfChangeKind.REMOVE_NODE


def raft(env: InteractionEnv, node_id: int) -> Raft:
    return env.raw(node_id).raft


def step_and_ready(env: InteractionEnv, node_id: int, *ms: Message) -> Ready:
    """Step ``ms`` into a node and handle its Ready; return that Ready for inspection."""
    raw = env.raw(node_id)
    for m in ms:
        raw.step(m)
    rd = raw.ready()
    raw.advance(rd)  # nothing in these Readys needs persisting for the assertions
    return rd


def replies(env: InteractionEnv, node_id: int, *ms: Message) -> list[Message]:
    """Step ``ms`` into a fully handled node; return every message it then sent."""
    raw = env.raw(node_id)
    for m in ms:
        raw.step(m)
    env.process_ready(node_id)
    return env.sent_by(node_id)


def restart(env: InteractionEnv, node_id: int) -> None:
    """Restart a crashed node and let it re-apply its committed log (as a runtime would)."""
    env.restart(node_id)
    while env.process_ready(node_id):
        pass


def log_of(env: InteractionEnv, node_id: int) -> list[tuple[int, int]]:
    log = raft(env, node_id).log
    return [(e.term, e.index) for e in log.slice(log.first_index(), log.last_index() + 1)]


# ------------------------------------------------------------------------------ §5.1 basics


def test_members_start_as_followers() -> None:
    """§5.1: "When servers start up, they begin as followers." """
    env = InteractionEnv.cluster(3)
    for nid in (1, 2, 3):
        assert raft(env, nid).role is Role.FOLLOWER
        assert raft(env, nid).lead == NONE


@pytest.mark.parametrize("role", [Role.FOLLOWER, Role.CANDIDATE, Role.LEADER])
def test_higher_term_turns_any_role_into_follower(role: Role) -> None:
    """§5.1: "If a server receives a request with a higher term, it updates its current term;
    if a candidate or leader discovers that its term is out of date, it immediately reverts to
    follower state." """
    env = InteractionEnv.cluster(3, pre_vote=False)
    if role is Role.CANDIDATE:
        env.campaign(1)
    elif role is Role.LEADER:
        env.elect(1)
    assert raft(env, 1).role is role
    step_and_ready(env, 1, Heartbeat(term=7, src=2, dst=1, commit=0))
    r = raft(env, 1)
    assert (r.role, r.term, r.lead, r.vote) == (Role.FOLLOWER, 7, 2, NONE)


def test_stale_term_request_is_rejected() -> None:
    """§5.1: "If a server receives a request with a stale term number, it rejects the request."
    The reply carries the current term, so the stale leader learns of it and steps down."""
    env = InteractionEnv.cluster(3)
    env.elect(1)
    before = log_of(env, 2)
    stale = AppendEntries(term=1, src=3, dst=2, prev_log_index=3, prev_log_term=1,
                          entries=(Entry(1, 4, data=b"stale"),), commit=4)
    out = replies(env, 2, stale)
    assert log_of(env, 2) == before
    assert raft(env, 2).term == 2
    assert raft(env, 2).lead == 1
    assert out == [AppendEntriesResponse(term=2, src=2, dst=3)]


# ------------------------------------------------------------------------------ §5.2 election


def test_election_timeout_starts_an_election() -> None:
    """§5.2: "If a follower receives no communication over a period of time called the election
    timeout, then it ... begins an election": it increments its term, transitions to candidate,
    votes for itself and issues RequestVote RPCs to each of the other servers."""
    env = InteractionEnv.cluster(3, pre_vote=False)
    r = raft(env, 1)
    env.tick(1, r.randomized_election_timeout - 1)
    assert r.role is Role.FOLLOWER
    env.tick(1, 1)
    assert (r.role, r.term, r.vote) == (Role.CANDIDATE, 2, 1)
    env.process_ready(1)
    assert env.sent_by(1) == [
        RequestVote(term=2, src=1, dst=2, last_log_index=3, last_log_term=1),
        RequestVote(term=2, src=1, dst=3, last_log_index=3, last_log_term=1),
    ]


@pytest.mark.parametrize(
    ("size", "answers", "role"),
    [
        (1, {}, Role.LEADER),
        (3, {2: True}, Role.LEADER),
        (3, {2: False}, Role.CANDIDATE),
        (3, {2: False, 3: False}, Role.FOLLOWER),
        (5, {2: True}, Role.CANDIDATE),
        (5, {2: True, 3: True}, Role.LEADER),
        (5, {2: True, 3: False, 4: False}, Role.CANDIDATE),
        (5, {2: False, 3: False, 4: False}, Role.FOLLOWER),
    ],
)
def test_candidate_wins_with_a_majority(size: int, answers: dict[int, bool], role: Role) -> None:
    """§5.2: "A candidate wins an election if it receives votes from a majority of the servers
    in the full cluster for the same term"; it loses once a majority is out of reach."""
    env = InteractionEnv.cluster(size, pre_vote=False)
    env.campaign(1)
    for voter, granted in answers.items():
        env.raw(1).step(RequestVoteResponse(term=2, src=voter, dst=1, granted=granted))
    assert raft(env, 1).role is role


def test_duplicate_vote_response_counts_once() -> None:
    """§5.2 (majority of *servers*): a repeated grant from one voter is one vote."""
    env = InteractionEnv.cluster(5, pre_vote=False)
    env.campaign(1)
    for _ in range(3):
        env.raw(1).step(RequestVoteResponse(term=2, src=2, dst=1, granted=True))
    assert raft(env, 1).role is Role.CANDIDATE


def test_at_most_one_vote_per_term() -> None:
    """§5.2: "Each server will vote for at most one candidate in a given term, on a
    first-come-first-served basis." Repeating the request of the chosen one is granted again."""
    env = InteractionEnv.cluster(3)

    def ask(candidate: int) -> bool:
        req = RequestVote(term=2, src=candidate, dst=3, last_log_index=3, last_log_term=1)
        (resp,) = replies(env, 3, req)
        assert isinstance(resp, RequestVoteResponse)
        return resp.granted

    assert ask(1)
    assert not ask(2)
    assert ask(1)
    assert raft(env, 3).vote == 1


def test_randomized_election_timeouts() -> None:
    """§5.2: "Raft uses randomized election timeouts ... chosen randomly from a fixed interval"
    (here [election_ticks, 2 * election_ticks)), so that split votes are rare."""
    env = InteractionEnv.cluster(5)
    r = raft(env, 1)
    seen = set()
    for _ in range(200):
        r.become_follower(r.term, NONE)
        seen.add(r.randomized_election_timeout)
    assert seen <= set(range(10, 20))
    assert len(seen) >= 5
    firsts = {raft(env, nid).randomized_election_timeout for nid in range(1, 6)}
    assert len(firsts) > 1


def test_candidate_steps_down_for_leader_of_its_term() -> None:
    """§5.2: "If the AppendEntries RPC is from another server claiming to be leader and the
    leader's term is at least as large as the candidate's current term, then the candidate
    recognizes the leader as legitimate and returns to follower state." """
    env = InteractionEnv.cluster(3, pre_vote=False)
    env.campaign(1)
    assert raft(env, 1).term == 2
    step_and_ready(env, 1, AppendEntries(term=2, src=2, dst=1, prev_log_index=3,
                                         prev_log_term=1, commit=3))
    r = raft(env, 1)
    assert (r.role, r.term, r.lead) == (Role.FOLLOWER, 2, 2)


def test_split_vote_times_out_into_a_new_election() -> None:
    """§5.2: "If many followers become candidates at the same time, votes could be split ...
    each candidate will time out and start a new election by incrementing its term." """
    env = InteractionEnv.cluster(4, pre_vote=False)
    env.campaign(1)
    env.campaign(2)
    env.stabilize([1, 2])  # each voted for itself and rejects the other: two votes of four
    env.drop([3, 4])
    assert raft(env, 1).role is Role.CANDIDATE
    assert raft(env, 2).role is Role.CANDIDATE
    env.tick_election(1)
    r = raft(env, 1)
    assert (r.role, r.term, r.vote) == (Role.CANDIDATE, 3, 1)
    env.process_ready(1)
    assert {(type(m), m.term) for m in env.sent_by(1)} == {(RequestVote, 3)}


# ------------------------------------------------------------------------------ §5.3 replication


def test_leader_appends_and_replicates() -> None:
    """§5.3: "The leader appends the command to its log as a new entry, then issues
    AppendEntries RPCs in parallel to each of the other servers to replicate the entry." """
    env = InteractionEnv.cluster(3)
    env.elect(1)
    assert env.propose(1, b"x") == 5
    rd = step_and_ready(env, 1)
    assert rd.entries == [Entry(2, 5, EntryKind.NORMAL, b"x")]
    assert rd.early_messages == [
        AppendEntries(term=2, src=1, dst=to, prev_log_index=4, prev_log_term=2,
                      entries=(Entry(2, 5, EntryKind.NORMAL, b"x"),), commit=4)
        for to in (2, 3)
    ]


def test_entry_commits_once_a_majority_stores_it() -> None:
    """§5.3: "A log entry is committed once the leader that created the entry has replicated
    it on a majority of the servers"; followers learn the commit index from later RPCs."""
    env = InteractionEnv.cluster(5)
    env.elect(1)
    env.propose(1, b"x")
    env.process_ready(1)
    env.drop([3, 4, 5])
    env.deliver(2)
    env.process_ready(2)
    env.deliver(1)
    assert raft(env, 1).log.committed == 6  # leader + 2: two of five
    env.process_ready(1)
    env.drop([2, 3, 4, 5])
    raw3 = env.raw(3)
    raw3.step(AppendEntries(term=2, src=1, dst=3, prev_log_index=6, prev_log_term=2,
                            entries=(Entry(2, 7, EntryKind.NORMAL, b"x"),), commit=6))
    env.process_ready(3)
    env.deliver(1)
    assert raft(env, 1).log.committed == 7  # leader + 2 + 3
    env.process_ready(1)
    env.deliver(2)
    assert raft(env, 2).log.committed == 7


def test_leader_counts_its_own_entry_only_once_persisted() -> None:
    """DESIGN §3 / thesis §10.2.1: the leader may send before its own write finishes, but it
    counts itself toward the commit quorum only after that write (``advance``)."""
    env = InteractionEnv.cluster(3)
    env.elect(1)
    env.propose(1, b"x")
    raw1 = env.raw(1)
    rd = raw1.ready()
    env.network.extend(rd.early_messages)
    env.stabilize([2])  # follower 2 persists and acknowledges
    env.deliver(1)
    assert raft(env, 1).log.committed == 4
    env.nodes[1].storage.append(rd.entries)
    raw1.advance(rd)
    assert raft(env, 1).log.committed == 5


def test_follower_replaces_conflicting_suffix() -> None:
    """§5.3: "If an existing entry conflicts with a new one (same index but different terms),
    delete the existing entry and all that follow it" — in memory and on disk."""
    env = InteractionEnv.cluster(3)
    env.elect(1)
    replies(env, 2, AppendEntries(term=2, src=1, dst=2, prev_log_index=4, prev_log_term=2,
                                  entries=(Entry(2, 5, data=b"a"), Entry(2, 6, data=b"b")),
                                  commit=4))
    assert log_of(env, 2)[-2:] == [(2, 5), (2, 6)]
    out = replies(env, 2, AppendEntries(term=3, src=3, dst=2, prev_log_index=4,
                                        prev_log_term=2, entries=(Entry(3, 5, data=b"c"),),
                                        commit=4))
    assert log_of(env, 2)[-2:] == [(2, 4), (3, 5)]
    storage = env.nodes[2].storage
    assert (storage.last_index(), storage.term(5)) == (5, 3)
    assert out == [AppendEntriesResponse(term=3, src=2, dst=3, index=5)]


@pytest.mark.parametrize(("prev_index", "prev_term"), [(4, 1), (9, 2)])
def test_follower_rejects_append_that_does_not_match(prev_index: int, prev_term: int) -> None:
    """§5.3 (Log Matching): "If the follower does not find an entry in its log with the same
    index and term [as prevLogIndex/prevLogTerm], then it refuses the new entries." """
    env = InteractionEnv.cluster(3)
    env.elect(1)
    before = log_of(env, 2)
    (resp,) = replies(env, 2, AppendEntries(term=2, src=1, dst=2, prev_log_index=prev_index,
                                            prev_log_term=prev_term,
                                            entries=(Entry(2, prev_index + 1),), commit=4))
    assert isinstance(resp, AppendEntriesResponse)
    assert resp.reject
    assert resp.index == prev_index
    assert resp.reject_hint <= 4
    assert log_of(env, 2) == before


def test_leader_never_overwrites_its_own_log() -> None:
    """§5.3: "A leader never overwrites or deletes entries in its log; it only appends new
    entries." Here the leader repairs a follower with a divergent suffix."""
    env = InteractionEnv.cluster(3, check_quorum=False)
    env.elect(1)
    env.isolate(1)
    for data in (b"l1", b"l2", b"l3"):
        env.propose(1, data)
    env.stabilize()
    env.elect(2)
    for data in (b"d", b"e"):
        env.propose(2, data)
    env.stabilize()
    before = log_of(env, 2)
    env.heal()
    env.tick_heartbeat(2)
    env.stabilize()
    assert log_of(env, 2)[: len(before)] == before
    assert log_of(env, 1) == log_of(env, 2)


# ------------------------------------------------------------------------------ §5.4 safety


@pytest.mark.parametrize(
    ("last_term", "last_index", "granted"),
    [
        (3, 2, True),  # later last term wins even with a shorter log
        (2, 6, True),  # same last term, longer log
        (2, 5, True),  # same last term, same length
        (2, 4, False),  # same last term, shorter log
        (1, 9, False),  # earlier last term loses even with a longer log
    ],
)
def test_vote_only_for_up_to_date_log(last_term: int, last_index: int, granted: bool) -> None:
    """§5.4.1: the voter denies its vote if its own log is more up-to-date: "If the logs have
    last entries with different terms, then the log with the later term is more up-to-date. If
    the logs end with the same term, then whichever log is longer is more up-to-date." """
    env = InteractionEnv.cluster(3, check_quorum=False)
    env.elect(1)
    env.propose(1, b"x")
    env.stabilize()
    assert log_of(env, 2)[-1] == (2, 5)
    (resp,) = replies(env, 2, RequestVote(term=5, src=3, dst=2, last_log_index=last_index,
                                          last_log_term=last_term))
    assert isinstance(resp, RequestVoteResponse)
    assert resp.granted is granted
    assert raft(env, 2).vote == (3 if granted else NONE)
    assert raft(env, 2).term == 5


def _figure8(env: InteractionEnv) -> None:
    """Drive five members into Figure 8 (c) of the paper; see the test below."""
    # (a) S1 leads term 2 and replicates x (index 7, term 2) to S2 only.
    env.elect(1)
    env.propose(1, b"x")
    env.process_ready(1)
    env.drop([3, 4, 5])
    env.stabilize([1, 2])
    assert raft(env, 1).log.committed == 6
    # (b) S1 crashes; S5 wins term 3 with S3 and S4, appends 3/7 locally, and crashes.
    env.crash(1)
    env.campaign(5)
    env.process_ready(5)
    env.drop([1, 2])
    env.relay(3, 4)
    env.deliver(5)
    assert raft(env, 5).role is Role.LEADER
    env.process_ready(5)
    env.network.clear()
    env.crash(5)
    # (c) S1 restarts and wins term 4 (its term-3 attempt fails: S3 and S4 voted for S5).
    restart(env, 1)
    for _ in range(2):
        env.campaign(1)
        env.process_ready(1)
        env.relay(2, 3, 4)
        env.deliver(1)
    assert raft(env, 1).role is Role.LEADER
    assert raft(env, 1).term == 4
    env.process_ready(1)  # persists 4/8 and sends it (one entry per message)
    env.drop([4, 5])
    env.relay(2, 3)  # S2 takes 4/8; S3 lacks x and rejects
    env.deliver(1)
    env.process_ready(1)  # the leader backs off and sends x alone to S3
    env.drop([2, 4, 5])
    env.deliver(3)
    env.process_ready(3)
    env.deliver(1)  # S3 acknowledges x: it is now on S1, S2 and S3


def test_figure8_previous_term_entry_is_not_committed_by_counting() -> None:
    """§5.4.2, Figure 8: "Raft never commits log entries from previous terms by counting
    replicas." In (c) the term-2 entry x is stored on a majority (S1, S2, S3), yet the term-4
    leader must not commit it; it commits only together with an entry of its own term."""
    env = InteractionEnv.cluster(5, pre_vote=False, check_quorum=False, max_msg_bytes=1)
    _figure8(env)
    assert [raft(env, n).log.term(7) for n in (1, 2, 3)] == [2, 2, 2]
    assert raft(env, 1).log.committed == 6
    env.process_ready(1)
    env.drop([2, 4, 5])
    env.deliver(3)  # 4/8 reaches S3: a majority holds an entry of term 4
    env.process_ready(3)
    env.deliver(1)
    assert raft(env, 1).log.committed == 8


def test_figure8_why_counting_would_be_unsafe() -> None:
    """§5.4.2, Figure 8 (d): had x been committed in (c), it could still be overwritten: S1
    fails, and S5 (last term 3) wins with votes from S3 and S4 and replaces x on S3."""
    env = InteractionEnv.cluster(5, pre_vote=False, check_quorum=False, max_msg_bytes=1)
    _figure8(env)
    env.network.clear()
    env.crash(1)
    restart(env, 5)
    for _ in range(3):
        if raft(env, 5).role is Role.LEADER:
            break
        env.campaign(5)
        env.stabilize([3, 4, 5])
    assert raft(env, 5).role is Role.LEADER
    env.stabilize([3, 4, 5])
    assert raft(env, 3).log.term(7) == 3


# ------------------------------------------------------------------------------ §6 membership


def test_one_membership_change_at_a_time() -> None:
    """Thesis §4.1: single-server changes are safe only one at a time: "the leader ... does not
    begin a new change until the previous one is applied". """
    env = InteractionEnv.cluster(3)
    env.elect(1)
    env.propose_conf_change(1, ADD_LEARNER, 4)
    with pytest.raises(ProposalDropped):
        env.propose_conf_change(1, ADD_LEARNER, 5)
    env.stabilize()
    env.propose_conf_change(1, ADD_LEARNER, 5)


def _new_leader_2(env: InteractionEnv) -> None:
    """Make 2 win term 3 by hand; stop right after it became leader (nothing delivered yet)."""
    env.campaign(2)
    env.process_ready(2)
    env.relay(1, 3)
    env.deliver(2)
    assert raft(env, 2).role is Role.LEADER


def test_new_leader_refuses_change_while_older_entries_unapplied() -> None:
    """Thesis §4.1: a new leader cannot know whether its log holds an unfinished change, so it
    refuses changes until everything from earlier terms in its log is applied."""
    env = InteractionEnv.cluster(3, pre_vote=False, check_quorum=False)
    env.elect(1)
    env.propose(1, b"x")
    env.process_ready(1)
    env.drop([3])
    env.deliver(2)
    env.process_ready(2)
    env.network.clear()  # x is on 1 and 2 but its commit never reached anybody else
    _new_leader_2(env)
    with pytest.raises(ProposalDropped):
        env.propose_conf_change(2, ADD_LEARNER, 4)
    env.stabilize()
    env.propose_conf_change(2, ADD_LEARNER, 4)


def test_new_leader_refuses_change_until_an_entry_of_its_term_commits() -> None:
    """Thesis §4.1 and its erratum (raft-dev, 2015; ``confchange`` docstring): "a leader may not
    append a new configuration entry until it has committed an entry from its current term."
    Here the new leader has applied everything before its term, but its own empty entry is
    not committed yet."""
    env = InteractionEnv.cluster(3, pre_vote=False, check_quorum=False)
    env.elect(1)
    _new_leader_2(env)
    assert raft(env, 2).log.committed < raft(env, 2).log.last_index()
    with pytest.raises(ProposalDropped):
        env.propose_conf_change(2, ADD_LEARNER, 4)
    env.stabilize()
    env.propose_conf_change(2, ADD_LEARNER, 4)


def _with_learner() -> InteractionEnv:
    env = InteractionEnv()
    env.add_nodes(4, voters=(1, 2, 3), learners=(4,))
    env.output = []
    return env


def test_learner_receives_log_but_never_votes_or_counts() -> None:
    """Thesis §4.2.1: a learner ("non-voting member") receives log entries but is not counted
    for elections or commitment, and never campaigns."""
    env = _with_learner()
    env.campaign(1)
    env.process_ready(1)
    assert {m.dst for m in env.sent_by(1)} == {2, 3}  # no PreVote to the learner
    env.raw(1).step(RequestVoteResponse(term=3, src=4, dst=1, granted=True, pre_vote=True))
    assert raft(env, 1).role is Role.PRE_CANDIDATE  # a learner's grant does not count
    env.network.clear()
    env = _with_learner()
    env.elect(1)
    env.propose(1, b"x")  # index 6: four bootstrap entries and the leader's empty entry first
    env.stabilize()
    assert raft(env, 4).log.committed == 6
    assert log_of(env, 4)[-1] == (2, 6)
    env.isolate(2)
    env.isolate(3)
    env.propose(1, b"y")
    env.stabilize()
    assert raft(env, 1).prs[4].match == 7
    assert raft(env, 1).log.committed == 6  # leader + learner are not a quorum
    env.tick(4, 100)
    assert raft(env, 4).role is Role.FOLLOWER
    assert raft(env, 4).term == 2


def test_promoted_learner_counts_toward_quorum() -> None:
    """Thesis §4.2.1: once caught up, the learner is promoted with an ordinary add-voter change
    and from then on is part of every majority."""
    env = _with_learner()
    env.elect(1)
    env.propose_conf_change(1, ADD_VOTER, 4)
    env.stabilize()
    assert raft(env, 1).conf_state == ConfState((1, 2, 3, 4), ())
    env.isolate(2)
    env.isolate(3)
    env.propose(1, b"y")
    env.stabilize()
    assert raft(env, 1).log.committed == 6  # 2 of 4 is not a majority
    env.heal()
    env.isolate(2)
    env.tick_heartbeat(1)
    env.stabilize()
    assert raft(env, 1).log.committed == 7  # 1, 3 and 4


def test_removed_leader_steps_down() -> None:
    """Thesis §4.2.2: a leader removed from the configuration steps down once the change is
    committed (here: applied); the rest elect a new leader among themselves."""
    env = InteractionEnv.cluster(3, check_quorum=False)
    env.elect(1)
    env.propose_conf_change(1, REMOVE, 1)
    env.stabilize()
    assert raft(env, 1).role is Role.FOLLOWER
    assert raft(env, 2).conf_state.voters == (2, 3)
    env.tick(1, 100)
    assert raft(env, 1).role is Role.FOLLOWER
    env.elect(2)
    env.propose(2, b"after")
    env.stabilize()
    assert raft(env, 3).log.committed == raft(env, 2).log.last_index()


# ------------------------------------------------------------------------------ §7 snapshots


def test_lagging_follower_gets_snapshot_and_catches_up() -> None:
    """§7: "the leader must occasionally send snapshots to followers that lag behind ... when
    the leader has already discarded the next log entry that it needs to send"."""
    env = InteractionEnv.cluster(3, check_quorum=False)
    env.elect(1)
    env.crash(3)
    for data in (b"a", b"b", b"c"):
        env.propose(1, data)
    env.stabilize()
    env.compact(1, 6)
    env.restart(3)
    env.tick_heartbeat(1)
    env.stabilize()
    assert any("InstallSnapshot t2 snap 2/6" in line for line in env.output)
    r3 = raft(env, 3)
    assert r3.log.first_index() == 7
    assert (r3.log.committed, r3.log.last_index()) == (7, 7)
    assert env.nodes[3].storage.snapshot().meta.index == 6
    assert r3.conf_state.voters == (1, 2, 3)


def test_follower_ignores_snapshot_it_already_covers() -> None:
    """§7: "If the follower receives a snapshot that describes a prefix of its log ... entries
    covered by the snapshot are deleted but entries following the snapshot are still valid and
    must be retained." A snapshot at or below the commit index changes nothing."""
    env = InteractionEnv.cluster(3)
    env.elect(1)
    env.propose(1, b"a")
    env.stabilize()
    before = log_of(env, 2)
    snap = Snapshot(SnapshotMeta(index=4, term=2, conf_state=ConfState((1, 2, 3))))
    (resp,) = replies(env, 2, InstallSnapshot(term=2, src=1, dst=2, snapshot=snap))
    assert log_of(env, 2) == before
    assert resp == AppendEntriesResponse(term=2, src=2, dst=1, index=5)


# ------------------------------------------------------------------------------ §8 reads


def test_read_waits_for_commit_in_leaders_term() -> None:
    """Thesis §6.4 step 1: "If the leader has not yet marked an entry from its current term
    committed, it waits until it has done so." """
    env = InteractionEnv.cluster(3)
    env.campaign(1)
    for _ in range(4):  # pre-vote and vote rounds: stop as soon as 1 is leader
        env.process_ready(1)
        env.relay(2, 3)
        env.deliver(1)
        if raft(env, 1).role is Role.LEADER:
            break
    env.read_index(1, b"r")
    env.process_ready(1)
    assert not any(isinstance(m, Heartbeat) and m.read_round for m in env.network)
    env.stabilize()
    assert [(rs.index, rs.context) for rs in env.nodes[1].read_states] == [(4, b"r")]


def test_read_needs_a_quorum_of_heartbeat_acks() -> None:
    """Thesis §6.4 step 3: the leader "sends a new round of heartbeats and waits for their
    acknowledgments from a majority of the cluster" before serving the read."""
    env = InteractionEnv.cluster(5)
    env.elect(1)
    env.read_index(1, b"r")
    env.process_ready(1)
    env.drop([4, 5])
    env.relay(2, 3)
    acks = env.sent_by(2) + env.sent_by(3)
    env.raw(1).step(acks[0])
    env.process_ready(1)
    assert env.nodes[1].read_states == []
    env.raw(1).step(acks[1])
    env.process_ready(1)
    assert [rs.context for rs in env.nodes[1].read_states] == [b"r"]


def test_read_index_batches_into_one_round() -> None:
    """Thesis §6.4 (batching): reads that arrive together share one heartbeat round."""
    env = InteractionEnv.cluster(3)
    env.elect(1)
    for ctx in (b"a", b"b", b"c"):
        env.read_index(1, ctx)
    env.process_ready(1)
    rounds = {m.read_round for m in env.network if isinstance(m, Heartbeat)}
    assert rounds == {1}
    env.stabilize()
    assert [rs.context for rs in env.nodes[1].read_states] == [b"a", b"b", b"c"]


def test_reads_arriving_during_a_round_share_the_next_one() -> None:
    """Batching under load: while a round is in flight no other starts; every read that
    arrived meanwhile rides on the single round started once the first is confirmed."""
    env = InteractionEnv.cluster(3)
    env.elect(1)
    env.read_index(1, b"a")
    env.process_ready(1)
    first = [m for m in env.network if isinstance(m, Heartbeat) and m.read_round]
    assert {m.read_round for m in first} == {1}
    for ctx in (b"b", b"c"):
        env.read_index(1, ctx)
        env.process_ready(1)
    assert [m for m in env.network if isinstance(m, Heartbeat) and m.read_round] == first
    env.stabilize()
    assert raft(env, 1).read_only.last_round == 2  # one more round for both b and c
    assert [rs.context for rs in env.nodes[1].read_states] == [b"a", b"b", b"c"]


def test_a_round_whose_heartbeats_were_lost_is_confirmed_by_the_next_heartbeat() -> None:
    """With one round in flight at a time, a lost round must not stall every later read:
    the periodic heartbeat carries the waiting round's number and its acks confirm it."""
    env = InteractionEnv.cluster(3)
    env.elect(1)
    env.read_index(1, b"a")
    env.process_ready(1)
    env.drop([2, 3])
    env.read_index(1, b"b")
    env.stabilize()
    assert env.nodes[1].read_states == []
    env.tick_heartbeat(1)
    env.stabilize()
    assert [rs.context for rs in env.nodes[1].read_states] == [b"a", b"b"]


def test_partitioned_ex_leader_cannot_serve_reads() -> None:
    """Thesis §6.4: a deposed leader must not answer reads from its stale state: its heartbeat
    round never gathers a majority, and once it learns of the new term the read is dropped."""
    env = InteractionEnv.cluster(3)
    env.elect(1)
    env.isolate(1)
    env.tick(3, 10)
    env.tick_election(2)
    env.stabilize()
    assert raft(env, 2).role is Role.LEADER
    env.propose(2, b"new")
    env.stabilize()
    env.read_index(1, b"stale")
    env.stabilize()
    assert env.nodes[1].read_states == []
    env.heal()
    env.tick_heartbeat(1)
    env.stabilize()  # 2 and 3 answer the stale leader's heartbeat with their newer term
    assert raft(env, 1).role is Role.FOLLOWER
    assert env.nodes[1].read_states == []
    assert env.nodes[1].dropped_reads == [b"stale"]


# ------------------------------------------------------------------------------ pre-vote


def test_prevote_does_not_increase_terms() -> None:
    """Thesis §9.6: with pre-vote, a partitioned server "won't be able to increment its term,
    since it can't receive permission from a majority", so on return it does not disrupt."""
    env = InteractionEnv.cluster(3)
    env.elect(1)
    env.isolate(3)
    for _ in range(5):
        env.tick_election(3)
        env.stabilize()
    assert raft(env, 3).term == 2
    assert raft(env, 3).role is Role.PRE_CANDIDATE
    env.heal()
    env.tick_election(3)
    env.stabilize()
    env.tick_heartbeat(1)
    env.stabilize()
    assert [raft(env, n).term for n in (1, 2, 3)] == [2, 2, 2]
    assert env.leaders() == [1]


def test_stale_log_cannot_win_prevote() -> None:
    """Thesis §9.6: a pre-vote is granted only "if the candidate's log is at least as
    up-to-date" — a member that missed entries cannot even start an election."""
    env = InteractionEnv.cluster(3, check_quorum=False)
    env.elect(1)
    env.isolate(3)
    env.propose(1, b"x")
    env.stabilize()
    env.heal()
    env.campaign(3)
    env.process_ready(3)
    asks = env.sent_by(3)
    answers = [r for n in (1, 2) for r in replies(env, n, *(m for m in asks if m.dst == n))]
    env.network.clear()
    answers = [m for m in answers if isinstance(m, RequestVoteResponse)]
    assert answers == [RequestVoteResponse(term=2, src=n, dst=3, granted=False, pre_vote=True)
                       for n in (1, 2)]
    for m in answers:
        env.raw(3).step(m)
    assert raft(env, 3).role is Role.FOLLOWER
    assert [raft(env, n).term for n in (1, 2, 3)] == [2, 2, 2]
    assert raft(env, 1).role is Role.LEADER


def test_granting_a_prevote_records_nothing() -> None:
    """Thesis §9.6: answering a PreVote changes neither the voter's term nor its vote."""
    env = InteractionEnv.cluster(3, check_quorum=False)
    env.elect(1)
    (resp,) = replies(env, 2, RequestVote(term=3, src=3, dst=2, last_log_index=4,
                                          last_log_term=2, pre_vote=True))
    assert resp == RequestVoteResponse(term=3, src=2, dst=3, granted=True, pre_vote=True)
    assert (raft(env, 2).term, raft(env, 2).vote, raft(env, 2).lead) == (2, 1, 1)


# ------------------------------------------------------------------------------ check-quorum


def test_leader_without_quorum_steps_down() -> None:
    """Thesis §6.2: "a leader ... steps down if an election timeout elapses without a successful
    round of heartbeats to a majority of its cluster"."""
    env = InteractionEnv.cluster(3)
    env.elect(1)
    env.isolate(1)
    env.tick_election(1)
    env.tick_election(1)
    assert raft(env, 1).role is Role.FOLLOWER
    assert raft(env, 1).term == 2
    with pytest.raises(NotLeader):
        env.propose(1, b"x")


def test_quorum_active_says_whether_the_leader_heard_from_a_majority_lately() -> None:
    """What the lease timer asks before acting on the leader's clock: a leader cut off from
    its followers stops saying its quorum is active well before check-quorum deposes it."""
    env = InteractionEnv.cluster(3)
    env.elect(1)
    leader = raft(env, 1)
    assert leader.quorum_active()
    env.tick_election(1)  # a check-quorum round with the followers answering
    env.stabilize()
    env.tick(1, 1)
    env.stabilize()
    assert leader.quorum_active()
    env.isolate(1)
    env.tick(1, leader.cfg.election_ticks - leader.election_elapsed)  # the window closes
    assert leader.role is Role.LEADER  # the previous window had a quorum: still leading
    env.tick(1, 2 * leader.cfg.heartbeat_ticks + 1)
    assert leader.role is Role.LEADER
    assert not leader.quorum_active()
    assert not raft(env, 2).quorum_active()  # followers never claim one


def test_leader_with_quorum_stays() -> None:
    """Thesis §6.2: a leader that hears from a majority each election timeout keeps its role."""
    env = InteractionEnv.cluster(3)
    env.elect(1)
    env.isolate(3)
    for _ in range(5):
        env.tick_election(1)
        env.stabilize()
    assert env.leaders() == [1]


def test_follower_ignores_vote_request_within_leader_lease() -> None:
    """Thesis §4.2.3: a server that heard from a current leader within the minimum election
    timeout ignores RequestVote, so a removed or returning member cannot depose the leader."""
    env = InteractionEnv.cluster(3)
    env.elect(1)
    out = replies(env, 2, RequestVote(term=9, src=3, dst=2, last_log_index=9, last_log_term=9))
    assert out == []
    assert raft(env, 2).term == 2
    assert raft(env, 2).lead == 1


# ------------------------------------------------------------------------------ transfer


def test_transfer_sends_timeout_now_after_catch_up() -> None:
    """Thesis §3.10: the leader first brings the target's log up to date, then sends it
    TimeoutNow; the target starts an election at once and wins."""
    env = InteractionEnv.cluster(3)
    env.elect(1)
    env.isolate(3)
    env.propose(1, b"x")
    env.stabilize()
    env.heal()
    env.transfer_leader(1, 3)
    env.process_ready(1)
    first = env.sent_by(1)
    assert first
    assert not any(isinstance(m, TimeoutNow) for m in first)
    env.network.extend(first)
    env.stabilize()
    assert any("1->3 TimeoutNow t2" in line for line in env.output)
    assert env.leaders() == [3]
    assert raft(env, 3).term == 3
    assert raft(env, 3).log.committed == raft(env, 3).log.last_index()


def test_proposals_refused_during_transfer() -> None:
    """Thesis §3.10: "the prior leader stops accepting new client requests" during a transfer."""
    env = InteractionEnv.cluster(3)
    env.elect(1)
    env.isolate(3)
    env.transfer_leader(1, 3)
    with pytest.raises(ProposalDropped):
        env.propose(1, b"x")


def test_transfer_aborted_after_election_timeout() -> None:
    """Thesis §3.10: "If the transfer does not complete after about one election timeout, the
    prior leader aborts the transfer and resumes accepting client requests." """
    env = InteractionEnv.cluster(3)
    env.elect(1)
    env.isolate(3)
    env.transfer_leader(1, 3)
    env.tick_election(1)
    assert raft(env, 1).lead_transferee == NONE
    assert env.propose(1, b"x") == 5


# ------------------------------------------------------------------------------ durability


def test_vote_response_is_sent_only_after_persisting() -> None:
    """§5 Figure 2 ("persistent state ... updated on stable storage before responding to
    RPCs"): the vote goes to ``Ready.hard_state`` with ``must_sync`` and the response to
    ``Ready.messages``, never ``early_messages``."""
    env = InteractionEnv.cluster(3)
    rd = step_and_ready(env, 2, RequestVote(term=2, src=1, dst=2, last_log_index=3,
                                            last_log_term=1))
    assert rd.hard_state is not None
    assert rd.hard_state.vote == 1
    assert rd.hard_state.term == 2
    assert rd.must_sync
    assert rd.early_messages == []
    assert rd.messages == [RequestVoteResponse(term=2, src=2, dst=1, granted=True)]


def test_deposed_leader_answers_vote_only_after_persisting() -> None:
    """Same rule for a leader that steps down on a higher-term RequestVote."""
    env = InteractionEnv.cluster(3, check_quorum=False)
    env.elect(1)
    rd = step_and_ready(env, 1, RequestVote(term=5, src=2, dst=1, last_log_index=4,
                                            last_log_term=2))
    assert rd.early_messages == []
    assert rd.messages == [RequestVoteResponse(term=5, src=1, dst=2, granted=True)]
    assert rd.hard_state is not None
    assert (rd.hard_state.term, rd.hard_state.vote) == (5, 2)


def test_append_acknowledged_only_after_persisting() -> None:
    """§5.3 / Figure 2: a follower acknowledges entries in ``Ready.messages`` of the same Ready
    that hands them out for persisting."""
    env = InteractionEnv.cluster(3)
    env.elect(1)
    rd = step_and_ready(env, 2, AppendEntries(term=2, src=1, dst=2, prev_log_index=4,
                                              prev_log_term=2, entries=(Entry(2, 5),),
                                              commit=4))
    assert rd.entries == [Entry(2, 5)]
    assert rd.must_sync
    assert rd.early_messages == []
    assert rd.messages == [AppendEntriesResponse(term=2, src=2, dst=1, index=5)]


def test_vote_survives_a_crash() -> None:
    """§5.2 + Figure 2: votedFor is persistent, so a restarted voter does not vote twice."""
    env = InteractionEnv.cluster(3)
    replies(env, 3, RequestVote(term=2, src=1, dst=3, last_log_index=3, last_log_term=1))
    env.crash(3)
    restart(env, 3)
    (resp,) = replies(env, 3, RequestVote(term=2, src=2, dst=3, last_log_index=3,
                                          last_log_term=1))
    assert resp == RequestVoteResponse(term=2, src=3, dst=2, granted=False)


def test_crash_losing_unpersisted_entries_keeps_committed_ones() -> None:
    """§5.4 (Leader Completeness) with crashes: an entry is committed only once a majority has
    it on disk, so crashes that lose unpersisted entries never lose a committed one."""
    env = InteractionEnv.cluster(3)
    env.elect(1)
    env.propose(1, b"x")
    env.process_ready(1)
    env.deliver(2)
    env.deliver(3)
    env.crash(3)  # 3 received x but never persisted it
    env.process_ready(2)
    env.deliver(1)
    env.process_ready(1)
    assert raft(env, 1).log.committed == 5
    env.crash(1)
    env.crash(2)
    for n in (1, 2, 3):
        restart(env, n)
    env.network.clear()
    assert raft(env, 3).log.last_index() == 4  # the unpersisted copy is gone
    env.campaign(3)
    env.stabilize()
    assert env.leaders() == []  # 3's log lacks a committed entry: it cannot win
    env.elect(2)
    env.stabilize()
    for n in (1, 2, 3):
        log = raft(env, n).log
        assert log.committed >= 5
        assert log.slice(5, 6)[0].data == b"x"


# ------------------------------------------------------------------------------ message codec


SAMPLE_SNAPSHOT = Snapshot(SnapshotMeta(9, 3, ConfState((1, 2, 3), (4,))), b"\x00state")
SAMPLES: list[Message] = [
    RequestVote(3, 1, 2, last_log_index=7, last_log_term=2, pre_vote=True, transfer=True),
    RequestVoteResponse(3, 2, 1, granted=True, pre_vote=True),
    AppendEntries(3, 1, 2, prev_log_index=6, prev_log_term=2, commit=5, entries=(
        Entry(3, 7, EntryKind.NORMAL, b"a"),
        Entry(3, 8, EntryKind.CONF_CHANGE, ConfChange(ADD_LEARNER, 4, b"ctx").encode()),
    )),
    AppendEntriesResponse(3, 2, 1, index=6, reject=True, reject_hint=4, hint_term=2),
    Heartbeat(3, 1, 2, commit=5, read_round=7),
    HeartbeatResponse(3, 2, 1, read_round=7),
    InstallSnapshot(3, 1, 2, snapshot=SAMPLE_SNAPSHOT),
    TimeoutNow(3, 1, 2),
    ReadIndexRequest(3, 2, 1, contexts=(b"r1", b"r2")),
    ReadIndexResponse(3, 1, 2, index=8, contexts=(b"r1",)),
    ForwardProposal(3, 2, 1, entries=(b"put a", b"")),
    msgs.AppMessage(0, 2, 1, payload=b"\xa1ax\x01"),
]


def test_samples_cover_every_message_type() -> None:
    assert {type(m) for m in SAMPLES} == set(msgs._MESSAGE_TYPES)


@pytest.mark.parametrize("m", SAMPLES, ids=lambda m: type(m).__name__)
def test_codec_round_trip(m: Message) -> None:
    """Every message survives ``to_obj``/``from_obj`` unchanged."""
    assert msgs.from_obj(msgs.to_obj(m)) == m


def _with(m: Message, index: int, value: Any) -> list[Any]:
    obj = msgs.to_obj(m)
    obj[index] = value
    return obj


@pytest.mark.parametrize(
    "obj",
    [
        None,
        b"bytes",
        {"type": 0},
        [],
        [0, 1, 2],
        [99, 1, 1, 2],
        [-1, 1, 1, 2],
        [0, -1, 1, 2, 0, 0, False, False],
        [0, True, 1, 2, 0, 0, False, False],
        [0, 1, 1, 2, 0, 0, 0, False],  # pre_vote must be a bool
        [0, 1, 1, 2, 0, 0, False],  # a field missing
        [7, 1, 1, 2, "extra"],  # TimeoutNow has no fields
        _with(SAMPLES[2], 6, [[3, 7, 5, b"a"]]),  # unknown entry kind
        _with(SAMPLES[2], 6, [[3, 7, 0, "text"]]),  # entry data not bytes
        _with(SAMPLES[2], 6, [[3, 7, 0]]),  # short entry
        _with(SAMPLES[2], 6, "entries"),
        _with(SAMPLES[6], 4, [9, 3, [[1], [2], [3]], b""]),  # bad conf state
        _with(SAMPLES[6], 4, [9, 3, [[1], []], None]),  # snapshot data not bytes
        _with(SAMPLES[8], 4, ["r1"]),  # context not bytes
        _with(SAMPLES[9], 5, None),
    ],
)
def test_codec_rejects_malformed_input(obj: Any) -> None:
    """A peer's garbage raises ``PeerError`` (never another exception)."""
    with pytest.raises(PeerError):
        msgs.from_obj(obj)


@pytest.mark.parametrize("data", [b"", b"\x00short", b"\x07" + bytes(8)])
def test_malformed_conf_change_entry(data: bytes) -> None:
    with pytest.raises(PeerError):
        ConfChange.decode(data)


def test_codec_fuzz_never_raises_anything_but_peer_error() -> None:
    """Random mutations of valid objects either decode or raise ``PeerError``."""
    rng = random.Random(7)
    junk: list[Any] = [None, -1, 0, 2**70, True, b"", "s", [], [1], 1.5]
    for _ in range(2000):
        obj = msgs.to_obj(rng.choice(SAMPLES))
        obj[rng.randrange(len(obj))] = rng.choice(junk)
        with contextlib.suppress(PeerError):
            msgs.from_obj(obj)
