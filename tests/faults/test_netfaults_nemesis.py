"""Network faults between real members (``ProcessCluster(peer_proxies=True)``) and the seeded
nemesis: each fault must have a visible effect on the cluster *and* on the proxies'
counters, and the cluster must recover once it is healed."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from discoverd.server.config import member_id_for
from discoverd.testing.cluster import (
    ClientFailure,
    MemberProcess,
    ProcessCluster,
    peer_url,
    wait_for,
)
from discoverd.testing.nemesis import (
    DEFAULT_FAULTS,
    Nemesis,
    fault_seconds,
    plan_faults,
)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ProcessCluster]:
    c = ProcessCluster(tmp_path, 3, peer_proxies=True)
    try:
        with c.started():
            # started() waits for a leader that the members answering agree on; a member
            # may still be booting, so wait for all three to answer and agree
            wait_for("every member to answer and follow one leader", lambda: len(
                c.statuses()) == 3 and c.leader(), timeout=30)
            yield c
    finally:
        c.close()
        for m in c.members:
            tail = m.log_text().splitlines()[-30:]
            print(f"----- {m.log_path} (last {len(tail)} lines)")
            print("\n".join(tail))
        if c.faults is not None:
            print("links:", c.faults.links())


def put_via(m: MemberProcess, key: bytes, value: bytes, *, timeout: float = 30.0) -> int:
    """Put through ``m`` (a follower forwards it), retrying until it commits."""
    def attempt() -> int:
        with m.client(timeout=5.0) as c:
            return c.put(key, value)
    return wait_for(f"put {key!r} via {m.name}", attempt, timeout=timeout)


def sees(m: MemberProcess, key: bytes, value: bytes, *, timeout: float = 20.0) -> None:
    """``m``'s own copy (a serializable read) holds ``value`` at ``key``, eventually."""
    def probe() -> bool:
        with m.client(timeout=3.0) as c:
            return c.get(key, serializable=True) == value
    wait_for(f"{m.name} to see {key!r}={value!r}", probe, timeout=timeout)


def local_value(m: MemberProcess, key: bytes) -> bytes | None:
    with m.client(timeout=3.0) as c:
        return c.get(key, serializable=True)


def test_members_replicate_through_their_proxies(cluster: ProcessCluster) -> None:
    faults = cluster.faults
    assert faults is not None
    for m in cluster.members:
        # others dial the proxy; the member itself listens on its own port
        assert m.advertised_peer_port == cluster.peer_proxy(m).port != m.peer_port
        assert peer_url(m) == f"http://127.0.0.1:{m.advertised_peer_port}"
        assert f"http://127.0.0.1:{m.peer_port}" in m.args
    leader = cluster.wait_for_leader()
    followers = [m for m in cluster.members if m is not leader]
    put_via(leader, b"through", b"the proxies")
    for f in followers:
        sees(f, b"through", b"the proxies")
        st = faults.stats(leader, f)
        assert st.connections >= 1, st
        assert st.frames_forwarded > 0, st
        assert faults.stats(f, leader).frames_forwarded > 0
    ids = {cluster.member_id(m) for m in cluster.members}
    assert len(ids) == 3
    # a member's identity is derived from the URL it advertises: the proxy's
    assert ids == {member_id_for(m.name, [peer_url(m)], cluster.token) for m in cluster.members}
    assert all(cluster.member_by_id(cluster.member_id(m)) is m for m in cluster.members)
    assert faults.describe() == "no faults"
    assert faults.stats().frames_dropped == 0
    assert faults.stats().refused == 0


def test_isolated_leader_is_replaced_then_rejoins_and_catches_up(
        cluster: ProcessCluster) -> None:
    faults = cluster.faults
    assert faults is not None
    old = cluster.wait_for_leader()
    old_term = old.status()["raft_term"]
    others = [m for m in cluster.members if m is not old]
    put_via(old, b"before", b"1")

    faults.isolate(old)
    assert "blocked" in faults.describe()
    new = cluster.wait_for_leader(among=others, timeout=30)
    assert new is not old
    assert new.status()["raft_term"] > old_term
    for i in range(5):
        put_via(new, f"during/{i}".encode(), b"majority")
    # the old leader can commit nothing: it steps down (check-quorum) or times out
    with pytest.raises((ClientFailure, OSError)), old.client(timeout=8.0) as c:
        c.put(b"stale", b"never")
    assert local_value(old, b"during/4") is None
    for m in others:
        assert faults.stats(old, m).refused + faults.stats(old, m).cut > 0
        assert faults.stats(m, old).refused + faults.stats(m, old).cut > 0

    faults.heal_all()
    new_id = cluster.member_id(new)

    def old_follows() -> bool:
        st = old.status()
        return st["role"] == "follower" and st["leader"] == new_id
    wait_for("the old leader to follow the new one", old_follows, timeout=30)
    sees(old, b"during/4", b"majority")
    assert local_value(old, b"stale") in (None, b"never")  # never acknowledged
    put_via(old, b"after", b"healed")
    for m in cluster.members:
        sees(m, b"after", b"healed")


def test_one_way_cut_from_leader_to_follower(cluster: ProcessCluster) -> None:
    faults = cluster.faults
    assert faults is not None
    leader = cluster.wait_for_leader()
    lead_id = cluster.member_id(leader)
    cut, other = [m for m in cluster.members if m is not leader]
    term0 = cut.status()["raft_term"]

    faults.partition_one_way(leader, cut)
    assert faults.rule(leader, cut).blocked
    assert not faults.rule(cut, leader).blocked

    def lost_its_leader() -> dict[str, object] | None:
        st = cut.status()
        return st if (st["leader"] != lead_id or st["raft_term"] > term0) else None
    st = wait_for(f"{cut.name} to stop following {leader.name}", lost_its_leader,
                  timeout=20)
    print(f"{cut.name} under a one-way cut: role={st['role']} term={st['raft_term']} "
          f"(was {term0})")
    # the leader and the other follower keep a majority and keep committing
    lead_term = leader.status()["raft_term"]
    majority_leader = cluster.wait_for_leader(among=[leader, other], timeout=30)
    put_via(majority_leader, b"one-way", b"committed")
    sees(other, b"one-way", b"committed")
    st = leader.status()
    if st["role"] == "leader" and st["raft_term"] == lead_term:
        # no election since the cut, so only the leader could have sent the entry
        assert local_value(cut, b"one-way") is None
    # the other direction still flows: the cut follower's (pre-)votes reach the leader
    back = faults.stats(cut, leader).frames_forwarded
    wait_for("frames from the cut follower to the leader",
             lambda: faults.stats(cut, leader).frames_forwarded > back, timeout=10)
    assert faults.stats(leader, cut).refused > 0

    faults.heal_all()
    leader = cluster.wait_for_leader(timeout=30)
    sees(cut, b"one-way", b"committed")
    put_via(leader, b"one-way/after", b"healed")
    for m in cluster.members:
        sees(m, b"one-way/after", b"healed")


def test_frame_loss_and_delay_slow_but_do_not_stop_commits(cluster: ProcessCluster) -> None:
    faults = cluster.faults
    assert faults is not None
    leader = cluster.wait_for_leader()

    faults.drop_all(0.3)
    assert faults.describe() == "all: drop 30%"
    dropped0 = faults.stats().frames_dropped
    for i in range(20):
        put_via(cluster.wait_for_leader(timeout=30), f"lossy/{i}".encode(), str(i).encode())
    assert faults.stats().frames_dropped > dropped0
    stats = faults.stats()
    assert stats.frames_forwarded > stats.frames_dropped > 0
    for m in cluster.members:
        sees(m, b"lossy/19", b"19", timeout=30)
    faults.heal_all()

    delay = 0.05
    leader = cluster.wait_for_leader(timeout=30)
    delayed0 = faults.stats().frames_delayed
    faults.delay_all(delay)
    latencies = []
    with leader.client(timeout=10.0) as c:
        c.put(b"slow/warmup", b"x")
        for i in range(8):
            start = time.monotonic()
            c.put(f"slow/{i}".encode(), b"x")
            latencies.append(time.monotonic() - start)
    print("put latencies under a 50 ms delay:", [round(x, 3) for x in latencies])
    # a commit needs the entry to reach a follower and its ack to come back: two delayed
    # links. Lower bounds only: the machine is shared, upper bounds would be flaky.
    assert min(latencies) >= 2 * delay - 0.005
    assert statistics.median(latencies) >= 2 * delay
    assert faults.stats().frames_delayed > delayed0
    faults.heal_all()
    for m in cluster.members:
        sees(m, b"slow/7", b"x")


def test_nemesis_schedule_replays_from_its_seed(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    a = plan_faults(1234, 60, size=3)
    assert a == plan_faults(1234, 60, size=3)
    assert a != plan_faults(1235, 60, size=3)
    assert {f.kind for f in a} == set(DEFAULT_FAULTS)
    for f in a:
        assert 0.5 <= f.hold <= 2.0
        assert 0.3 <= f.quiet <= 1.0
        assert 0 <= f.index < 3
        if f.kind == "partition":
            assert len(f.minority) == 1
        if f.kind == "one_way":
            assert 1 <= len(f.links) <= 2
            assert all(s != d for s, d in f.links)
        if f.kind == "delay":
            assert 0.010 <= f.seconds <= 0.080
            assert 0 <= f.jitter <= f.seconds / 2
        if f.kind == "drop":
            assert 0.05 <= f.probability <= 0.30
    only = plan_faults(9, 20, size=5, faults=("kill", "drop"), hold=(1, 1), quiet=(0, 0))
    assert {f.kind for f in only} <= {"kill", "drop"}
    assert all(f.hold == 1 for f in only)

    # a nemesis follows the plan of its seed; network kinds need the proxies
    plain = ProcessCluster(tmp_path / "plain", 3)
    proxied = ProcessCluster(tmp_path / "proxied", 3, peer_proxies=True)
    try:
        assert Nemesis(proxied, seed=1234).planned(60) == a
        with pytest.raises(ValueError, match="peer_proxies"):
            Nemesis(plain, seed=1, faults=("kill", "delay"))
        with pytest.raises(ValueError, match="unknown"):
            Nemesis(proxied, seed=1, faults=("meteor",))
        Nemesis(plain, seed=1, faults=("kill", "pause"))
    finally:
        plain.close()
        proxied.close()

    monkeypatch.delenv("DISCOVERD_FAULT_SECONDS", raising=False)
    assert fault_seconds(7.5) == 7.5
    monkeypatch.setenv("DISCOVERD_FAULT_SECONDS", "42")
    assert fault_seconds(7.5) == 42.0


HOLD, QUIET = (0.3, 0.8), (0.2, 0.5)


def lively_seed() -> int:
    """The first seed whose schedule opens with six different kinds, a kill and a pause
    first: even a slow run (a restart can take seconds on a busy machine) then meets both
    process faults, and a normal one the network faults too."""
    for seed in range(10_000):
        kinds = [f.kind for f in plan_faults(seed, 6, size=3, hold=HOLD, quiet=QUIET)]
        if len(set(kinds)) == 6 and {"kill", "pause"} == set(kinds[:2]):
            return seed
    raise AssertionError("no lively seed")  # pragma: no cover


def test_nemesis_run_then_heal_leaves_a_serving_cluster(cluster: ProcessCluster) -> None:
    lines: list[str] = []
    seed = lively_seed()
    nemesis = Nemesis(cluster, seed=seed, hold=HOLD, quiet=QUIET, log=lines.append)
    acked: dict[bytes, bytes] = {}
    nemesis.start(8.0)
    i = 0
    try:
        while nemesis.running:
            key, value = f"nemesis/{i}".encode(), f"v{i}".encode()
            i += 1
            members = cluster.members[i % 3:] + cluster.members[:i % 3]
            for m in members:  # any member forwards to the leader it knows
                if not m.running:
                    continue
                with contextlib.suppress(OSError, ClientFailure), m.client(timeout=2.0) as c:
                    c.put(key, value)
                    acked[key] = value
                    break
            else:
                time.sleep(0.05)
    finally:
        nemesis.stop()
    print("\n".join(lines))
    print(nemesis.describe())

    print(f"seed {seed}: {len(acked)} writes acknowledged of {i} tried")
    steps = nemesis.steps
    assert len(steps) >= 2, nemesis.describe()  # a kill and a pause, at least
    assert [s.fault for s in steps] == plan_faults(seed, len(steps), size=3, hold=HOLD,
                                                   quiet=QUIET)
    assert all(s.healed is not None and s.healed >= s.applied for s in steps)
    assert sum(nemesis.summary().values()) == len(steps)
    assert all(m.running for m in cluster.members)
    assert cluster.faults is not None
    assert cluster.faults.describe() == "no faults"
    nemesis.heal()  # idempotent

    # stop() interrupts a long run mid-fault, heals and joins
    before = len(steps)
    nemesis.start(600.0)
    wait_for("the next fault", lambda: len(nemesis.steps) > before, timeout=30)
    started = time.monotonic()
    nemesis.stop()
    print(f"stop() took {time.monotonic() - started:.2f}s during {nemesis.steps[-1]}")
    assert not nemesis.running
    assert nemesis.steps[-1].healed is not None
    assert [s.fault for s in nemesis.steps] == plan_faults(
        seed, len(nemesis.steps), size=3, hold=HOLD, quiet=QUIET)
    assert all(m.running for m in cluster.members)
    assert cluster.faults.describe() == "no faults"

    leader = cluster.wait_for_leader(timeout=30)
    put_via(leader, b"nemesis/after", b"done")
    for m in cluster.members:
        sees(m, b"nemesis/after", b"done", timeout=30)
    assert acked, "no write was acknowledged during the run"
    with leader.client(timeout=10.0) as c:
        lost = {k: v for k, v in acked.items() if c.get(k) != v}
    assert not lost, f"acknowledged writes lost: {sorted(lost)[:10]}"
