"""Majority arithmetic, as pure functions over sets of voter ids.

Kept apart from Raft so it can be checked against a naive twin (tests/consensus/test_quorum.py).
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping


class VoteResult(enum.Enum):
    PENDING = "pending"
    WON = "won"
    LOST = "lost"


def majority(n_voters: int) -> int:
    """How many of ``n_voters`` make a quorum (an empty config is trivially satisfied)."""
    return n_voters // 2 + 1


def committed_index(voters: Collection[int], acked: Mapping[int, int]) -> int:
    """The highest index a majority of ``voters`` has acknowledged (missing voters count 0).

    With no voters at all nothing can be committed by counting, so this returns 0.
    """
    if not voters:
        return 0
    matches = sorted((acked.get(v, 0) for v in voters), reverse=True)
    return matches[majority(len(voters)) - 1]


def vote_result(voters: Collection[int], votes: Mapping[int, bool]) -> VoteResult:
    """WON once a majority granted, LOST once a majority can no longer be reached."""
    if not voters:
        return VoteResult.WON
    granted = sum(1 for v in voters if votes.get(v) is True)
    missing = sum(1 for v in voters if v not in votes)
    q = majority(len(voters))
    if granted >= q:
        return VoteResult.WON
    if granted + missing >= q:
        return VoteResult.PENDING
    return VoteResult.LOST


def has_quorum(voters: Collection[int], present: Collection[int]) -> bool:
    """Whether the ``present`` voters form a majority of ``voters``."""
    return sum(1 for v in voters if v in present) >= majority(len(voters))
