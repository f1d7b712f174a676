"""The leader's judgement of membership requests (member/membership.py): what is refused
— and that a refusal is made before anything is proposed — and what is proposed."""

from __future__ import annotations

import random

import pytest

from discoverd.consensus.messages import ConfChange, ConfChangeKind, ConfState
from discoverd.consensus.raft import Config
from discoverd.consensus.storage import MemoryStorage
from discoverd.errors import (
    BadLeaderTransferee,
    ConfChangeInProgress,
    LearnerNotReady,
    MemberExists,
    MemberNotFound,
    MemberNotLearner,
    NotEnoughStartedMembers,
    PeerURLExists,
    TooManyLearners,
    UnhealthyCluster,
)
from discoverd.machine.members import MemberTable, decode_context
from discoverd.member.core import MemberCore
from discoverd.member.membership import (
    ClusterView,
    check_transferee,
    plan_add,
    plan_promote,
    plan_remove,
)
from discoverd.testing.register import RegisterMachine

NEW = 99


def view(voters: tuple[int, ...] = (1, 2, 3), learners: tuple[int, ...] = (), *,
         connected: tuple[int, ...] | None = None, match: dict[int, int] | None = None,
         pending: int = 0, applied: int = 10) -> ClusterView:
    peers = {*voters, *learners} - {1}
    return ClusterView(
        leader=1, conf_state=ConfState(voters, learners),
        match=match if match is not None else {m: applied for m in (*voters, *learners)},
        connected=frozenset(peers if connected is None else connected),
        pending_conf_index=pending, applied=applied)


def table(*ids: int) -> MemberTable:
    t = MemberTable({i: (f"m{i}", [f"http://h:{i}"]) for i in ids})
    for i in ids:
        t.apply_conf_change(ConfChange(ConfChangeKind.ADD_VOTER, i))
    return t


# ----------------------------------------------------------------------------- add


def test_add_proposes_the_new_members_peer_urls_as_context() -> None:
    change = plan_add(view(), table(1, 2, 3), NEW, ["http://h:99"], is_learner=True)
    assert (change.kind, change.node_id) == (ConfChangeKind.ADD_LEARNER, NEW)
    assert decode_context(change.context) == ("http://h:99",)
    voter = plan_add(view(), table(1, 2, 3), NEW, ["http://h:99"], is_learner=False)
    assert voter.kind is ConfChangeKind.ADD_VOTER


def test_add_refuses_existing_ids_taken_urls_and_a_second_learner() -> None:
    with pytest.raises(MemberExists):
        plan_add(view(), table(1, 2, 3), 2, ["http://h:98"], is_learner=False)
    with pytest.raises(PeerURLExists):  # the same name and URL again: the URL is the news
        plan_add(view(), table(1, 2, 3), 2, ["http://h:2"], is_learner=False)
    with pytest.raises(PeerURLExists):
        plan_add(view(), table(1, 2, 3), NEW, ["http://h:2"], is_learner=False)
    with pytest.raises(TooManyLearners):
        plan_add(view(learners=(4,)), table(1, 2, 3), NEW, ["http://h:99"], is_learner=True)


def test_adding_a_voter_must_keep_a_quorum_of_connected_voters() -> None:
    # 1 -> 2 is allowed (etcd's special case), even though the new voter is not up yet.
    plan_add(view(voters=(1,)), table(1), NEW, ["http://h:99"], is_learner=False)
    # 2 -> 3 with the other voter down: 1 connected voter < quorum(3) = 2.
    with pytest.raises(NotEnoughStartedMembers):
        plan_add(view(voters=(1, 2), connected=()), table(1, 2), NEW, ["http://h:99"],
                 is_learner=False)
    # 3 -> 4 with one voter down: 2 connected < quorum(4) = 3.
    with pytest.raises(NotEnoughStartedMembers):
        plan_add(view(connected=(2,)), table(1, 2, 3), NEW, ["http://h:99"], is_learner=False)
    # 4 -> 5 with one down: 3 connected = quorum(5), but growing with a member down is
    # refused as unhealthy (remove or restart the dead one first).
    with pytest.raises(UnhealthyCluster):
        plan_add(view(voters=(1, 2, 3, 4), connected=(2, 3)), table(1, 2, 3, 4), NEW,
                 ["http://h:99"], is_learner=False)
    # A learner does not vote: it may be added whatever the voters' state.
    plan_add(view(connected=()), table(1, 2, 3), NEW, ["http://h:99"], is_learner=True)


# ----------------------------------------------------------------------------- remove


def test_remove_refuses_unknown_members_and_the_last_voter() -> None:
    with pytest.raises(MemberNotFound):
        plan_remove(view(), NEW)
    with pytest.raises(NotEnoughStartedMembers):
        plan_remove(view(voters=(1,)), 1)


def test_removing_a_connected_voter_must_leave_a_connected_quorum() -> None:
    # 3 voters, 3 down to 2 connected (1 and 2; 3 is down): removing 2 leaves 1 of 2.
    with pytest.raises(UnhealthyCluster):
        plan_remove(view(connected=(2,)), 2)
    # Removing the dead one is fine, and so is removing the leader itself.
    assert plan_remove(view(connected=(2,)), 3).kind is ConfChangeKind.REMOVE_NODE
    assert plan_remove(view(), 1).node_id == 1
    # A learner is never part of the quorum.
    assert plan_remove(view(learners=(4,), connected=()), 4).node_id == 4


# ----------------------------------------------------------------------------- promote


def test_promote_only_a_learner_that_has_caught_up() -> None:
    with pytest.raises(MemberNotFound):
        plan_promote(view(), NEW)
    with pytest.raises(MemberNotLearner):
        plan_promote(view(), 2)
    lagging = {1: 100, 2: 100, 3: 100, 4: 89}
    with pytest.raises(LearnerNotReady):
        plan_promote(view(learners=(4,), match=lagging), 4)
    ready = {**lagging, 4: 90}  # etcd's readyPercent: 90% of the leader's match
    change = plan_promote(view(learners=(4,), match=ready), 4)
    assert (change.kind, change.node_id, change.context) == (ConfChangeKind.ADD_VOTER, 4, b"")


def test_move_leader_only_to_a_voter() -> None:
    check_transferee(view(), 2)
    for target in (4, NEW):
        with pytest.raises(BadLeaderTransferee):
            check_transferee(view(learners=(4,)), target)


# ----------------------------------------------------------------------------- one at a time


def test_a_second_change_is_refused_while_the_first_is_not_applied() -> None:
    """Against a real leader: after proposing one change (not applied yet), the view built
    from Raft's state refuses the next — with a clear error, before anything is proposed."""
    core = MemberCore(Config(id=1, voters=(1,)), MemoryStorage(), RegisterMachine(),
                      random.Random(1))

    def drain() -> None:
        while core.has_ready():
            rd = core.begin()
            core.persist(rd)
            core.complete(rd)

    def leader_view() -> ClusterView:
        raft = core.node.raft
        return ClusterView(leader=1, conf_state=raft.conf_state,
                           match={p: pr.match for p, pr in raft.prs.items()},
                           connected=frozenset(), pending_conf_index=raft.pending_conf_index,
                           applied=core.applied)

    drain()
    core.node.campaign()
    drain()
    t = table(1)
    first = plan_add(leader_view(), t, 2, ["http://h:2"], is_learner=True)
    core.propose_conf_change(1, first)
    last = core.raft_log.last_index()
    with pytest.raises(ConfChangeInProgress, match="not applied yet"):
        plan_add(leader_view(), t, 3, ["http://h:3"], is_learner=True)
    assert core.raft_log.last_index() == last  # nothing more was proposed
    drain()
    assert core.conf_state.learners == (2,)
    plan_remove(leader_view(), 2)  # applied: the next change is accepted
