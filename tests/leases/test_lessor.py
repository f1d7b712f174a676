"""The lessor's two halves: replicated state (grant/revoke/checkpoint/attach) and the
primary's deadlines (renew, expiry, checkpoints due, failover)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from discoverd.errors import (
    ClientError,
    CorruptData,
    LeaseExists,
    LeaseNotFound,
    LeaseTTLTooLarge,
)
from discoverd.leases.lessor import MAX_LEASE_TTL, Lessor


def test_grant_raises_a_small_ttl_to_the_minimum_and_refuses_bad_grants() -> None:
    lessor = Lessor(min_ttl=2)
    assert lessor.grant(1, 1).ttl == 2
    assert lessor.grant(2, 0).ttl == 2
    assert lessor.grant(3, 10).ttl == 10
    with pytest.raises(LeaseExists):
        lessor.grant(3, 5)
    with pytest.raises(LeaseTTLTooLarge):
        lessor.grant(4, MAX_LEASE_TTL + 1)
    with pytest.raises(ClientError):
        lessor.grant(0, 5)
    with pytest.raises(ClientError):
        lessor.grant(1 << 63, 5)
    assert lessor.leases() == [1, 2, 3]


def test_revoke_returns_the_attached_keys_sorted_and_forgets_the_lease() -> None:
    lessor = Lessor()
    lessor.grant(7, 10)
    for key in (b"b", b"a", b"c"):
        lessor.attach(key, 7)
    lessor.detach(b"c", 7)
    lessor.attach(b"x", 99)  # unknown lease: ignored
    assert lessor.revoke(7) == [b"a", b"b"]
    assert not lessor.exists(7)
    with pytest.raises(LeaseNotFound):
        lessor.revoke(7)


def test_only_the_primary_expires_and_a_renewal_postpones_expiry() -> None:
    lessor = Lessor(min_ttl=1)
    lessor.grant(1, 5)
    lessor.grant(2, 5)
    assert lessor.expired(100.0) == []  # not primary
    lessor.promote(0.0)
    assert lessor.expired(4.9) == []
    assert lessor.renew(1, 4.0) == 5  # deadline 9
    assert lessor.expired(5.0) == [2]
    assert lessor.expired(5.1) == []  # handed out once
    assert lessor.renew(2, 5.2) == 0  # expiring: cannot be brought back
    assert lessor.expired(8.9) == [2]  # revoke_retry (3 s) later, again
    assert lessor.expired(9.0) == [1]


def test_expired_is_bounded_per_call_and_earliest_first() -> None:
    lessor = Lessor(min_ttl=1)
    for i in range(1, 11):
        lessor.grant(i, 20 - i)
    lessor.promote(0.0)
    assert lessor.expired(100.0, limit=3) == [10, 9, 8]
    assert lessor.expired(100.0, limit=100) == [7, 6, 5, 4, 3, 2, 1]


def test_a_lease_granted_while_primary_gets_its_deadline_on_first_look() -> None:
    lessor = Lessor(min_ttl=1)
    lessor.promote(0.0)
    lessor.grant(1, 3)
    assert lessor.remaining(1, 10.0) == 3.0  # first look at t=10: deadline 13
    assert lessor.expired(12.9) == []
    assert lessor.expired(13.0) == [1]


def test_a_new_primary_uses_the_checkpointed_remaining_ttl_with_a_grace() -> None:
    lessor = Lessor(min_ttl=1, grace=1.5)
    lessor.grant(1, 60)
    lessor.grant(2, 60)
    lessor.checkpoint([(1, 20_000), (2, 500), (99, 1)])
    lessor.promote(100.0)
    assert lessor.remaining(1, 100.0) == 20.0  # not reset to 60
    assert lessor.remaining(2, 100.0) == 1.5  # the grace, not 0.5
    assert lessor.expired(101.4) == []
    assert lessor.expired(101.5) == [2]
    lessor.demote()
    assert lessor.remaining(1, 200.0) == 20.0  # a follower reports the checkpoint


def test_checkpoints_are_due_only_when_the_replicated_value_drifted() -> None:
    lessor = Lessor(min_ttl=1)
    lessor.grant(1, 30)  # kept alive every 10 s below: never needs a checkpoint
    lessor.grant(2, 30)  # forgotten: needs one, half-way
    lessor.promote(0.0)
    lessor.renew(1, 10.0)
    assert lessor.checkpoints_due(14.0) == []
    # lease 2: replicated 30 s; at t=15.1 the truth is 14.9 s, more than half a TTL lower
    assert lessor.checkpoints_due(15.1) == [(2, 14_900)]
    lessor.checkpoint([(2, 14_900)])
    assert lessor.checkpoints_due(16.0) == []
    for t in (20.0, 30.0, 40.0):
        lessor.renew(1, t)
        assert all(lid != 1 for lid, _ in lessor.checkpoints_due(t + 9.9))
    # a renewal above a low checkpoint must be replicated at once (else early expiry)
    lessor2 = Lessor(min_ttl=1)
    lessor2.grant(3, 30)
    lessor2.checkpoint([(3, 10_000)])
    lessor2.promote(0.0)
    lessor2.renew(3, 1.0)
    assert lessor2.checkpoints_due(1.0) == [(3, 30_000)]


def test_snapshot_round_trip_rebuilds_keys_and_refuses_garbage() -> None:
    lessor = Lessor()
    lessor.grant(5, 10)
    lessor.grant(6, 20)
    lessor.checkpoint([(6, 7_000)])
    image = lessor.to_obj()
    other = Lessor()
    other.restore(image, [(b"k", 5), (b"j", 5), (b"z", 404)])
    assert other.leases() == [5, 6]
    assert other.revoke(5) == [b"j", b"k"]
    assert other.remaining(6, 0.0) == 7.0
    with pytest.raises(CorruptData):
        other.restore({"format": 1, "leases": [["x", 1, 2]]}, [])
    with pytest.raises(CorruptData):
        other.restore({"format": 9, "leases": []}, [])
    assert other.leases() == [6]  # unchanged by the refused restores


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["renew", "advance", "failover", "checkpoint"]),
                          st.integers(1, 4), st.floats(0.0, 3.0)), max_size=60))
def test_a_kept_alive_lease_never_expires_early_across_failovers(ops: list) -> None:
    """Property: while a lease is renewed at least every TTL/3, no primary — including new
    ones after any number of failovers that applied the checkpoints proposed so far —
    hands it out as expired. (Renewals the old primary had not checkpointed yet may be
    lost; the client renews again on the new primary within TTL/3.)"""
    ttl = 9
    primary = Lessor(min_ttl=1, grace=1.0)
    primary.grant(1, ttl)
    now = 0.0
    primary.promote(now)
    last_renew = now
    for op, _, dt in ops:
        if op == "renew":
            assert primary.renew(1, now) == ttl
            last_renew = now
        elif op == "advance":
            now += dt
            if now - last_renew >= ttl / 3:  # the client keeps its promise: renew by then
                now = last_renew + ttl / 3
                assert primary.expired(now) == []
                assert primary.renew(1, now) == ttl
                last_renew = now
        elif op == "checkpoint":
            primary.checkpoint(primary.checkpoints_due(now))
        else:
            replica = Lessor(min_ttl=1, grace=1.0)
            replica.restore(primary.to_obj(), [])
            now += 1.0  # an election
            replica.promote(now)
            primary = replica
            assert primary.renew(1, now) == ttl  # the client finds the new leader at once
            last_renew = now
        assert primary.expired(now) == []
