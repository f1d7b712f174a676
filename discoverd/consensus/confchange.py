"""Single-server membership changes (Raft dissertation §4.1), as pure functions on ConfState.

We change one member at a time and never use joint consensus: any two majorities of
configurations that differ by one voter overlap, so safety holds as long as at most one change
is in flight. The leader enforces that (``Raft.pending_conf_index``) and a new leader first
commits an entry of its own term before it accepts a change (the dissertation's erratum).
A change takes effect when the entry is *applied* (``RawNode.apply_conf_change``), as in etcd.
"""

from __future__ import annotations

from discoverd.consensus.messages import ConfChange, ConfChangeKind, ConfState
from discoverd.errors import ClientError


def validate(cc: ConfChange, cs: ConfState) -> None:
    """Raise ``ClientError`` for a change the leader must refuse to propose."""
    if cc.node_id <= 0:
        raise ClientError(f"invalid member id {cc.node_id}")
    if cc.kind is ConfChangeKind.ADD_LEARNER and cc.node_id in cs.voters:
        raise ClientError(f"member {cc.node_id:x} is a voter; it cannot become a learner")
    if cc.kind is ConfChangeKind.REMOVE_NODE:
        if cc.node_id not in cs.voters and cc.node_id not in cs.learners:
            raise ClientError(f"member {cc.node_id:x} is not in the cluster")
        if cs.voters == (cc.node_id,):
            raise ClientError("removing the last voter would leave the cluster without a quorum")


def apply(cc: ConfChange, cs: ConfState) -> ConfState:
    """The membership after ``cc``. Committed changes are applied even if they turn out to be
    no-ops (e.g. adding a member twice), so every member computes the same result."""
    voters = set(cs.voters)
    learners = set(cs.learners)
    if cc.kind is ConfChangeKind.ADD_VOTER:
        learners.discard(cc.node_id)
        voters.add(cc.node_id)
    elif cc.kind is ConfChangeKind.ADD_LEARNER:
        if cc.node_id not in voters:
            learners.add(cc.node_id)
    else:
        voters.discard(cc.node_id)
        learners.discard(cc.node_id)
        if not voters:  # refused at proposal; a committed one is kept harmless
            voters.add(cc.node_id)
    return ConfState(tuple(sorted(voters)), tuple(sorted(learners)))
