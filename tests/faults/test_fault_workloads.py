"""Clients against a cluster that a nemesis keeps breaking: every history must be
linearizable, a surviving watcher must see every committed revision exactly once, and no read
may show a key after its lease's removal was committed. And the same checks must catch a
deliberately broken member (``discoverd.testing.mutants``), or they would prove nothing.

Durations: ``DISCOVERD_FAULT_SECONDS`` (default: short runs for CI). The nemesis seed is
``DISCOVERD_FAULT_SEED`` (default fixed per test) and is printed with every failure, with
the nemesis' schedule and the path of the dumped history (re-check it offline with
``discoverd.testing.linearizability``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from discoverd.sdk import Client
from discoverd.testing.cluster import ProcessCluster, wait_for
from discoverd.testing.linearizability import History, check
from discoverd.testing.mutants import launcher
from discoverd.testing.nemesis import DEFAULT_FAULTS, Nemesis, fault_seconds
from discoverd.testing.workloads import (
    HttpRegisters,
    LeaseWorkload,
    SdkRegisters,
    WatchRecorder,
    lease_problems,
    read_events,
    rotated,
    run_registers,
    watch_problems,
)

KEYS = ["/lin/a", "/lin/b", "/lin/c"]
CHECK_SECONDS = 120.0

NEMESES = [pytest.param(DEFAULT_FAULTS, id="mixed")]
"""CI: one nemesis mixing every fault kind. ``DISCOVERD_FAULT_EACH=1`` adds one run per kind
(kill, pause, partition, isolate_leader, one_way, delay, drop), each for the full duration."""
if os.environ.get("DISCOVERD_FAULT_EACH"):
    NEMESES += [pytest.param((kind,), id=kind) for kind in DEFAULT_FAULTS]


def seed_for(default: int) -> int:
    return int(os.environ.get("DISCOVERD_FAULT_SEED", default))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ProcessCluster]:
    (tmp_path / "cluster").mkdir()
    c = ProcessCluster(tmp_path / "cluster", 3, peer_proxies=True)
    try:
        with c.started():
            yield c
    finally:
        c.print_log_tails(30)


def endpoints_of(cluster: ProcessCluster) -> list[str]:
    return [f"127.0.0.1:{m.client_port}" for m in cluster.members]


def current_revision(endpoints: list[str]) -> int:
    with Client(endpoints) as c:
        return c.get("/").header.revision


def judge(history: History, tmp_path: Path, context: str) -> None:
    """Check the history; on a violation dump it beside the test's files and say where."""
    result = check(history.operations(), time_limit=CHECK_SECONDS)
    dumped = tmp_path / "history.json"
    history.dump(dumped)
    print(f"{context}: {result.verdict}, {result.ops} ops checked in {result.seconds:.2f}s; "
          f"history in {dumped}")
    assert result.verdict == "linearizable", f"{context}\n{result.explain()}\nhistory: {dumped}"


def under_nemesis(cluster: ProcessCluster, seed: int, seconds: float,
                  work: Callable[[], Any], faults: tuple[str, ...]) -> tuple[Any, Nemesis]:
    """Run ``work`` while a seeded nemesis breaks the cluster; heal, and return both."""
    nemesis = Nemesis(cluster, seed=seed, faults=faults, log=print)
    nemesis.start(seconds)
    try:
        result = work()
    finally:
        nemesis.stop()
    print(f"nemesis seed {seed}: {nemesis.summary()}")
    return result, nemesis


@pytest.mark.parametrize("faults", NEMESES)
def test_sdk_registers_watch_and_leases_under_faults(cluster: ProcessCluster, tmp_path: Path,
                                                     faults: tuple[str, ...]) -> None:
    """One run, three properties: SDK clients on registers (linearizable), a watcher on
    everything they write (complete, exactly once) and a lease workload beside them (no
    read shows a key after its lease's removal was committed)."""
    seed = seed_for(1)
    seconds = fault_seconds(15.0)
    endpoints = endpoints_of(cluster)
    first = current_revision(endpoints) + 1
    watcher = WatchRecorder(endpoints, "/", first)
    history = History()
    leases = LeaseWorkload(endpoints, seed=seed)
    lease_thread = threading.Thread(target=leases.run, args=(seconds,), daemon=True)

    def work() -> Any:
        lease_thread.start()
        stats = run_registers(lambda n: SdkRegisters(rotated(endpoints, n)), history,
                              clients=6, keys=KEYS, seconds=seconds, seed=seed)
        lease_thread.join(seconds + 90)
        return stats

    try:
        stats, nemesis = under_nemesis(cluster, seed, seconds, work, faults)
        assert not lease_thread.is_alive()
        context = f"seed {seed}; {stats.summary()}\n{nemesis.describe()}"
        print(context)
        # Not vacuous: the clients got answers through the faults.
        assert stats.count("ok") >= 50, context
        assert stats.outcomes["write:ok"] + stats.outcomes["cas:ok"] >= 20, context
        assert leases.outcomes["revoked"] >= 3, f"{leases.outcomes}"
        assert leases.outcomes["reads"] >= 20, f"{leases.outcomes}"
        judge(history, tmp_path, context)

        # Every lease left to expire (or whose revoke's answer was lost) is gone in the end.
        with Client(endpoints) as c:
            wait_for("every lease key to expire",
                     lambda: not c.get(leases.prefix, prefix=True).kvs, timeout=60)
        last = current_revision(endpoints)
        watcher.wait_for(last, timeout=60)
        committed = read_events(endpoints, "/", first, last)
        problems = watch_problems(watcher.events, committed, stats.acks, first, last)
        assert not problems, f"{context}\n" + "\n".join(problems)
        deletions = {e.key: e.revision for e in committed
                     if e.type == "DELETE" and e.key.startswith(leases.prefix)}
        assert set(deletions) >= set(leases.keys), "a lease key was never deleted"
        problems = lease_problems(leases, deletions)
        assert not problems, "\n".join(problems[:20])
        print(f"watch: {len(watcher.events)} events, revisions {first}..{last}; "
              f"leases: {dict(leases.outcomes)}, {len(leases.reads)} reads checked")
    finally:
        watcher.close()


@pytest.mark.parametrize("faults", NEMESES)
def test_http_gateway_registers_under_faults(cluster: ProcessCluster, tmp_path: Path,
                                             faults: tuple[str, ...]) -> None:
    """The same register workload through the etcd JSON gateway."""
    seed = seed_for(2)
    seconds = fault_seconds(12.0)
    endpoints = endpoints_of(cluster)
    history = History()
    stats, nemesis = under_nemesis(
        cluster, seed, seconds,
        lambda: run_registers(lambda n: HttpRegisters(rotated(endpoints, n)), history,
                              clients=6, keys=KEYS, seconds=seconds, seed=seed), faults)
    context = f"seed {seed}; {stats.summary()}\n{nemesis.describe()}"
    assert stats.count("ok") >= 50, context
    assert stats.outcomes["write:ok"] + stats.outcomes["cas:ok"] >= 20, context
    judge(history, tmp_path, context)


@pytest.mark.parametrize("build", ["correct", "stale-reads"])
def test_the_checker_catches_stale_reads(build: str, tmp_path: Path) -> None:
    """A follower cut off from the others, readers on it and writers on the majority. A
    correct member refuses (or times out) linearizable reads it cannot confirm; the mutant
    answers them from its old state, and the checker must say so."""
    root = tmp_path / "cluster"
    root.mkdir()
    cluster = ProcessCluster(root, 3, peer_proxies=True)
    if build != "correct":
        for m in cluster.members:
            m.launcher = launcher(build)
    with cluster.started():
        leader = cluster.wait_for_leader()
        follower = next(m for m in cluster.members if m is not leader)
        majority = [f"127.0.0.1:{m.client_port}" for m in cluster.members if m is not follower]
        lonely = [f"127.0.0.1:{follower.client_port}"]
        with Client(majority) as c:
            for key in KEYS:
                c.put(key, "initial")
        cluster.faults.isolate(follower)
        history = History()
        stats = run_registers(
            lambda n: SdkRegisters(lonely if n % 2 else majority, timeout=1.0), history,
            clients=4, keys=KEYS, seconds=4.0, seed=3)
        cluster.faults.heal_all()
    result = check(history.operations(), initial="initial", time_limit=CHECK_SECONDS)
    print(f"{build}: {stats.summary()}\n{result.explain()}")
    assert stats.outcomes["write:ok"] >= 10, stats.summary()
    if build == "correct":
        assert result.verdict == "linearizable", result.explain()
    else:
        assert stats.outcomes["read:ok"] >= 10, stats.summary()
        assert result.verdict == "not linearizable", result.explain()
        assert "read" in result.explain()
