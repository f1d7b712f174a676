"""The auto-compaction policy (``discoverd.kv.auto_compaction``), time passed in."""

from __future__ import annotations

import pytest

from discoverd.errors import ClientError
from discoverd.kv.auto_compaction import AutoCompaction, CompactionPlan, parse_retention


def test_parse_retention_like_etcd() -> None:
    assert parse_retention("periodic", "1h") == 3600
    assert parse_retention("periodic", "30m") == 1800
    assert parse_retention("periodic", "90s") == 90
    assert parse_retention("periodic", "2") == 7200  # a bare number is hours
    assert parse_retention("periodic", "0") == 0
    assert parse_retention("revision", "1000") == 1000
    for mode, bad in (("revision", "1h"), ("periodic", "soon"), ("weekly", "1")):
        with pytest.raises(ClientError):
            parse_retention(mode, bad)


def test_revision_mode_keeps_the_last_n_revisions() -> None:
    policy = AutoCompaction("revision", 100, watch_bound=1000)
    assert policy.interval == 300  # etcd's 5 minutes
    assert policy.plan(0, 50, 0, None) is None  # not enough history yet
    assert policy.plan(1, 250, 0, None) == CompactionPlan(150)
    assert policy.plan(2, 250, 150, None) is None  # already there


def test_periodic_mode_compacts_to_the_revision_of_retention_ago() -> None:
    policy = AutoCompaction("periodic", 60, watch_bound=1000)
    assert policy.interval == 6
    plans = [policy.plan(t, 10 * t + 1, 0, None) for t in range(0, 61, 6)]
    assert plans[:-1] == [None] * 10  # nothing is 60 s old before t=60
    assert plans[-1] == CompactionPlan(1)  # the sample taken at t=0
    assert policy.plan(66, 661, 1, None) == CompactionPlan(61)  # the one taken at t=6
    assert policy.plan(67, 671, 61, None) is None  # no newer old-enough sample yet


def test_periodic_checks_at_most_every_six_minutes() -> None:
    assert AutoCompaction("periodic", 10 * 3600, watch_bound=0).interval == 360
    assert AutoCompaction("periodic", 60, watch_bound=0, check_interval=0.5).interval == 0.5


def test_a_watcher_holds_compaction_back_within_the_bound() -> None:
    policy = AutoCompaction("revision", 10, watch_bound=500)
    held = policy.plan(0, 1000, 0, oldest_watch=600)
    assert held == CompactionPlan(599, held_by_watcher=True)
    # Far behind: it does not pin history; it will be compacted past (and canceled).
    dropped = policy.plan(0, 2000, 599, oldest_watch=600)
    assert dropped == CompactionPlan(1990, watcher_dropped=True)
    # A watcher ahead of the target changes nothing.
    assert policy.plan(0, 3000, 1990, oldest_watch=2995) == CompactionPlan(2990)


def test_retention_zero_is_off() -> None:
    policy = AutoCompaction("revision", 0, watch_bound=10)
    assert not policy.enabled
    assert policy.plan(0, 10**6, 0, None) is None
