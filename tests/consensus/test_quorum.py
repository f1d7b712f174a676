"""``quorum`` against naive twins that enumerate subsets (etcd's ``quorum/quick_test.go``).

The twins follow the definitions literally: an index is committed when *some* majority of the
voters has acknowledged it; an election is won when the granted voters are a majority, and
lost when no majority can be formed from the voters that granted or have not answered yet.
"""

from __future__ import annotations

from itertools import combinations

from hypothesis import given
from hypothesis import strategies as st

from discoverd.consensus.quorum import (
    VoteResult,
    committed_index,
    has_quorum,
    majority,
    vote_result,
)

voter_sets = st.sets(st.integers(min_value=1, max_value=9), max_size=7)


def majorities(voters: set[int]) -> list[set[int]]:
    """Every subset of ``voters`` that is more than half of it."""
    return [
        set(c)
        for k in range(len(voters) + 1)
        if 2 * k > len(voters)
        for c in combinations(sorted(voters), k)
    ]


def naive_committed(voters: set[int], acked: dict[int, int]) -> int:
    if not voters:
        return 0
    return max(min(acked.get(v, 0) for v in m) for m in majorities(voters))


def naive_vote(voters: set[int], votes: dict[int, bool]) -> VoteResult:
    if not voters:
        return VoteResult.WON
    granted = {v for v in voters if votes.get(v) is True}
    possible = {v for v in voters if votes.get(v) is not False}
    if any(m <= granted for m in majorities(voters)):
        return VoteResult.WON
    if any(m <= possible for m in majorities(voters)):
        return VoteResult.PENDING
    return VoteResult.LOST


@st.composite
def voters_and_acks(draw: st.DrawFn) -> tuple[set[int], dict[int, int]]:
    voters = draw(voter_sets)
    # acknowledgements may name non-voters (learners) and may omit voters
    ids = st.integers(min_value=1, max_value=12)
    acked = draw(st.dictionaries(ids, st.integers(min_value=0, max_value=20), max_size=10))
    return voters, acked


@st.composite
def voters_and_votes(draw: st.DrawFn) -> tuple[set[int], dict[int, bool]]:
    voters = draw(voter_sets)
    ids = st.integers(min_value=1, max_value=12)
    votes = draw(st.dictionaries(ids, st.booleans(), max_size=10))
    return voters, votes


@given(voters_and_acks())
def test_committed_index_matches_naive(case: tuple[set[int], dict[int, int]]) -> None:
    voters, acked = case
    assert committed_index(voters, acked) == naive_committed(voters, acked)


@given(voters_and_votes())
def test_vote_result_matches_naive(case: tuple[set[int], dict[int, bool]]) -> None:
    voters, votes = case
    assert vote_result(voters, votes) == naive_vote(voters, votes)


@given(voter_sets, st.sets(st.integers(min_value=1, max_value=12)))
def test_has_quorum_matches_naive(voters: set[int], present: set[int]) -> None:
    expected = any(m <= present for m in majorities(voters))
    assert has_quorum(voters, present) == expected


@given(voters_and_acks())
def test_committed_index_is_acknowledged_by_a_majority(
    case: tuple[set[int], dict[int, int]],
) -> None:
    """The property Raft relies on: at least a majority acknowledged the committed index."""
    voters, acked = case
    idx = committed_index(voters, acked)
    if voters:
        assert sum(1 for v in voters if acked.get(v, 0) >= idx) >= majority(len(voters))


def test_examples() -> None:
    assert committed_index({1, 2, 3}, {1: 5, 2: 3, 3: 1}) == 3
    assert committed_index({1, 2, 3, 4}, {1: 5, 2: 3, 3: 1, 4: 9}) == 3
    assert committed_index({1, 2, 3}, {1: 5, 4: 9, 5: 9}) == 0  # learners do not count
    assert vote_result({1, 2, 3}, {1: True}) is VoteResult.PENDING
    assert vote_result({1, 2, 3}, {1: True, 2: False, 3: False}) is VoteResult.LOST
    assert vote_result({1, 2, 3, 4}, {1: True, 2: True}) is VoteResult.PENDING
