"""The leader's judgement of a membership request, without I/O: given what the leader knows
(``ClusterView``) and the member table, either the ``ConfChange`` to propose or the error to
answer with — before anything is proposed, so a refused request changes nothing.

The rules are etcd 3.4's, with its default ``--strict-reconfig-check``:

* one change at a time (Raft's own rule, checked here first so the client gets a clear
  answer instead of a dropped proposal);
* an added voter must not cost the cluster its quorum: the voters the leader is connected
  to, plus itself, must already make a quorum of the *new* configuration, and every voter
  must be connected (growing a cluster with a member down lowers its fault tolerance
  further). Growing one member to two is allowed anyway (a restore starts that way);
* a learner is promoted only once its log reaches 90% of the leader's (etcd's
  ``readyPercent``), since as a voter it counts towards every commit at once; at most one
  learner at a time;
* removing a connected voter must leave a quorum of connected voters; removing one that is
  down, or a learner, is always allowed (it is not part of the working quorum).

"Connected" is the peer link's state (etcd asks its transport the same question). Ids are
the caller's: the server derives a new member's id from name, peer URLs and token.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from discoverd.consensus.messages import ConfChange, ConfChangeKind, ConfState
from discoverd.errors import (
    BadLeaderTransferee,
    ClientError,
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
from discoverd.machine.members import MemberTable, encode_context

LEARNER_READY_FRACTION = 0.9
"""A learner may be promoted once its match index is at least this share of the leader's."""

MAX_LEARNERS = 1


@dataclass(frozen=True, slots=True)
class ClusterView:
    """What the leader knows when it judges a request.

    ``match``: the leader's replication progress (member id → highest index known to be on
    that member's disk; the leader's own entry is its durable index). ``connected``: the
    peers whose link is up. ``pending_conf_index``/``applied``: a membership change is in
    flight while the first exceeds the second.
    """

    leader: int
    conf_state: ConfState
    match: Mapping[int, int]
    connected: frozenset[int]
    pending_conf_index: int
    applied: int

    @property
    def voters(self) -> tuple[int, ...]:
        return self.conf_state.voters

    def active_voters(self) -> set[int]:
        return {v for v in self.voters if v == self.leader or v in self.connected}


def quorum(size: int) -> int:
    return size // 2 + 1


def _check_not_pending(view: ClusterView) -> None:
    if view.pending_conf_index > view.applied:
        raise ConfChangeInProgress(
            f"etcdserver: a membership change (log index {view.pending_conf_index}) is not "
            f"applied yet (applied: {view.applied}); one change at a time, retry shortly")


def _known(view: ClusterView, member_id: int) -> bool:
    return member_id in view.conf_state.voters or member_id in view.conf_state.learners


def plan_add(view: ClusterView, table: MemberTable, member_id: int,
             peer_urls: Sequence[str], *, is_learner: bool) -> ConfChange:
    """The change adding ``member_id`` (as a learner or a voter) at ``peer_urls``.

    Raises:
        MemberExists, PeerURLExists, TooManyLearners, NotEnoughStartedMembers,
        UnhealthyCluster, ConfChangeInProgress, ClientError (no URLs).
    """
    if not peer_urls:
        raise ClientError("member peer urls not provided")
    if table.owner_of(peer_urls):
        raise PeerURLExists()  # before MemberExists: the same id means the same URLs
    if _known(view, member_id) or member_id in table:
        raise MemberExists()  # a member whose URLs were updated, added again as it was
    if is_learner:
        if len(view.conf_state.learners) >= MAX_LEARNERS:
            raise TooManyLearners()
    else:
        voters = len(view.voters)
        active = view.active_voters()
        if not (voters == 1 and view.leader in active) and len(active) < quorum(voters + 1):
            raise NotEnoughStartedMembers()
        if len(active) < voters:
            raise UnhealthyCluster()
    _check_not_pending(view)
    kind = ConfChangeKind.ADD_LEARNER if is_learner else ConfChangeKind.ADD_VOTER
    return ConfChange(kind, member_id, encode_context(peer_urls))


def plan_remove(view: ClusterView, member_id: int) -> ConfChange:
    """The change removing ``member_id`` (the leader itself included: it steps down once the
    change is applied).

    Raises:
        MemberNotFound, NotEnoughStartedMembers (the last voter), UnhealthyCluster,
        ConfChangeInProgress.
    """
    if not _known(view, member_id):
        raise MemberNotFound()
    if member_id in view.voters:
        if view.voters == (member_id,):
            raise NotEnoughStartedMembers()  # the last voter (etcd's answer too)
        down = member_id != view.leader and member_id not in view.connected
        if not down:
            active = view.active_voters()
            if len(active) - 1 < quorum(len(view.voters) - 1):
                raise UnhealthyCluster()
    _check_not_pending(view)
    return ConfChange(ConfChangeKind.REMOVE_NODE, member_id)


def plan_promote(view: ClusterView, member_id: int) -> ConfChange:
    """The change making learner ``member_id`` a voter.

    Raises:
        MemberNotFound, MemberNotLearner, LearnerNotReady, NotEnoughStartedMembers,
        ConfChangeInProgress.
    """
    if not _known(view, member_id):
        raise MemberNotFound()
    if member_id not in view.conf_state.learners:
        raise MemberNotLearner()
    leader_match = view.match.get(view.leader, 0)
    if view.match.get(member_id, 0) < leader_match * LEARNER_READY_FRACTION:
        raise LearnerNotReady()
    if len(view.active_voters()) + 1 < quorum(len(view.voters) + 1):
        raise NotEnoughStartedMembers()
    _check_not_pending(view)
    return ConfChange(ConfChangeKind.ADD_VOTER, member_id)


def check_transferee(view: ClusterView, target: int) -> None:
    """``move_leader`` may only name a voter.

    Raises:
        BadLeaderTransferee: ``target`` is a learner or not a member.
    """
    if target not in view.voters:
        raise BadLeaderTransferee()
