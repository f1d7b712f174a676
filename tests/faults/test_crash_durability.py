"""Crash durability of real ``discoverd serve`` processes: every acknowledged write survives
``kill -9`` of every member at once, of the leader alone, and of members caught in the middle
of writing a WAL record (``DISCOVERD_TEST_WAL_SLOW_SYNC_MS``, see
``discoverd/server/disk_faults.py``).

The writers: ``WRITERS`` threads, each with its own keys and its own connection (failing
over to the next member on any error), one request outstanding at a time. For every key
the test records each attempt — acknowledged, refused before proposing (``not_leader``), or
of unknown outcome (timeout, dropped, connection lost) — so that after a crash a key's value
may be the last acknowledged one or a later attempt's, never an earlier one, and never
absent once a write to it was acknowledged.

Durations: ``DISCOVERD_FAULT_SECONDS`` (float; default: a few rounds, CI-sized) scales the
number of kill/restart rounds. The seed is ``DISCOVERD_FAULT_SEED`` (default fixed per
test) and appears in every assertion message.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from discoverd.testing.cluster import (
    ClientFailure,
    MemberProcess,
    NativeClient,
    ProcessCluster,
    wait_for,
)
from discoverd.testing.nemesis import fault_seconds

WRITERS = 8
KEYS_PER_WRITER = 4
PREFIX = b"crash/"
REFUSED_CODES = frozenset({"not_leader", "disk_full"})
"""Answers that say the member refused the write before proposing it."""


def rounds_for(default: int, seconds_per_round: float) -> int:
    return max(default, int(fault_seconds(0.0) / seconds_per_round))


def seed_for(default: int) -> int:
    return int(os.environ.get("DISCOVERD_FAULT_SEED", default))


# ----------------------------------------------------------------------------- writers


@dataclass
class KeyHistory:
    attempts: list[tuple[int, str]] = field(default_factory=list)
    """``(seq, outcome)`` in order; outcome "acked", "refused" or "unknown"."""


class Writers:
    """``WRITERS`` threads writing their own keys with unique values, until ``stop``."""

    def __init__(self, cluster: ProcessCluster) -> None:
        self.cluster = cluster
        self.keys: dict[bytes, KeyHistory] = {}
        self._lock = threading.Lock()
        self._seqs = [0] * WRITERS
        self.acked = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._stop.clear()
        self._threads = [threading.Thread(target=self._run, args=(t,), daemon=True)
                         for t in range(WRITERS)]
        for th in self._threads:
            th.start()

    def stop(self) -> None:
        self._stop.set()
        for th in self._threads:
            th.join(30)
            assert not th.is_alive(), "a writer thread did not stop"

    def _run(self, t: int) -> None:
        ports = [m.client_port for m in self.cluster.members]
        at = t % len(ports)
        client: NativeClient | None = None
        n = 0
        while not self._stop.is_set():
            key = PREFIX + b"w%d/k%d" % (t, n % KEYS_PER_WRITER)
            self._seqs[t] += 1
            seq = self._seqs[t]
            value = b"%d:%d" % (t, seq)
            outcome = "unknown"
            try:
                if client is None:
                    client = NativeClient(ports[at], timeout=3.0)
                client.put(key, value)
                outcome = "acked"
            except ClientFailure as e:
                outcome = "refused" if e.code in REFUSED_CODES else "unknown"
            except OSError:
                outcome = "unknown"  # maybe never sent (refused connection): still "maybe"
            with self._lock:
                self.keys.setdefault(key, KeyHistory()).attempts.append((seq, outcome))
                if outcome == "acked":
                    self.acked += 1
            if outcome == "acked":
                n += 1
                continue
            if client is not None:
                client.close()
                client = None
            at = (at + 1) % len(ports)
            self._stop.wait(0.05)  # back off before the next member (or the same, restarted)
        if client is not None:
            client.close()

    def wait_acked(self, count: int, timeout: float = 60.0) -> None:
        target = self.acked + count
        wait_for(f"{count} more acknowledged writes", lambda: self.acked >= target,
                 timeout=timeout, interval=0.01)

    def problems(self, found: dict[bytes, bytes]) -> list[str]:
        """What is wrong with the store's ``found`` values, given every attempt made."""
        out = []
        for key, hist in sorted(self.keys.items()):
            acked = [s for s, o in hist.attempts if o == "acked"]
            value = found.get(key)
            seq = int(value.split(b":")[1]) if value is not None else None
            if not acked:
                maybe = {s for s, o in hist.attempts if o == "unknown"}
                if seq is not None and seq not in maybe:
                    out.append(f"{key!r}: value seq {seq} was never attempted/possible")
                continue
            last = acked[-1]
            allowed = {last} | {s for s, o in hist.attempts if o == "unknown" and s > last}
            if seq is None:
                out.append(f"{key!r}: LOST: acknowledged seq {last} but the key is absent")
            elif seq not in allowed:
                out.append(f"{key!r}: value seq {seq}, but seq {last} was acknowledged "
                           f"(allowed: {sorted(allowed)})")
        return out


def read_all(cluster: ProcessCluster, among: list[MemberProcess] | None = None,
             timeout: float = 30.0) -> dict[bytes, bytes]:
    """Every ``crash/`` key, by a linearizable range on the agreed leader."""
    def probe() -> dict[bytes, bytes] | None:
        lead = cluster.leader(among)
        if lead is None:
            return None
        with lead.client() as c:
            kvs = c.call("range", key=PREFIX, range_end=b"crash0")["kvs"]
        return {bytes(kv["key"]): bytes(kv["value"]) for kv in kvs} or None

    return wait_for("a linearizable read of every key", probe, timeout=timeout)


def kill_all(cluster: ProcessCluster) -> None:
    """SIGKILL every member at once (signals first, then reap)."""
    running = cluster.running()
    for m in running:
        assert m.proc is not None
        m.proc.send_signal(signal.SIGKILL)
    for m in running:
        assert m.proc is not None
        m.proc.wait(10)


def restart_all(cluster: ProcessCluster) -> None:
    for m in cluster.members:
        if not m.running:
            cluster.start(m)
    cluster.wait_for_leader(timeout=45)


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[list[ProcessCluster]]:
    """Clusters made by a test (append them); killed, and their logs' tails printed, at
    teardown."""
    made: list[ProcessCluster] = []
    try:
        yield made
    finally:
        for c in made:
            c.close()
        for c in made:
            c.print_log_tails(25)


def new_cluster(made: list[ProcessCluster], root: Path, env: dict[str, str] | None = None,
                extra: list[str] | None = None) -> ProcessCluster:
    root.mkdir()
    c = ProcessCluster(root, 3, extra_args=extra)
    for m in c.members:
        m.env.update(env or {})
    made.append(c)
    c.start_all()
    c.wait_for_leader(timeout=45)
    return c


# ----------------------------------------------------------------------------- the tests


def test_acknowledged_writes_survive_repeated_kill_of_every_member(
    tmp_path: Path, cluster_factory: list[ProcessCluster]
) -> None:
    seed = seed_for(1201)
    rng = random.Random(seed)
    rounds = rounds_for(3, 6.0)
    # Frequent snapshots, so that kills also land while snapshot files are being written and
    # recovery has to combine a snapshot with the WAL after it.
    c = new_cluster(cluster_factory, tmp_path / "c",
                    extra=["--snapshot-count", "60", "--experimental-snapshot-catchup-entries",
                           "20"])
    writers = Writers(c)
    acked_per_round = []
    for r in range(rounds):
        before = writers.acked
        writers.start()
        try:
            writers.wait_acked(100)
            time.sleep(rng.uniform(0.0, 0.3))  # a seeded moment in the burst, not a sync
            kill_all(c)
        finally:
            writers.stop()
        acked_per_round.append(writers.acked - before)
        restart_all(c)
        problems = writers.problems(read_all(c))
        assert not problems, (f"seed {seed}, round {r + 1}/{rounds}: "
                              f"{len(problems)} problems: {problems[:10]}")
    snapshots = sum(m.log_text().count("snapshot saved") for m in c.members)
    assert snapshots > 0, "the rounds were meant to cross snapshots"
    print(f"seed {seed}: {rounds} rounds, acked per round {acked_per_round}, "
          f"{snapshots} snapshots saved")


def _tail_segment(m: MemberProcess) -> Path | None:
    segments = sorted((m.data_dir / "member" / "wal").glob("*.wal"))
    return segments[-1] if segments else None


def _torn_now(path: Path) -> bool:
    """Whether ``path`` ends inside a WAL frame right now (length-prefixed frames)."""
    data = path.read_bytes()
    offset = 0
    while offset + 8 <= len(data):
        length = int.from_bytes(data[offset:offset + 4], "big")
        if length == 0 or offset + 8 + length > len(data):
            return True
        offset += 8 + length
    return offset != len(data)


def _freeze_while_torn(c: ProcessCluster, m: MemberProcess, deadline: float) -> bool:
    """Poll ``m``'s WAL tail until it ends mid-record; then SIGSTOP ``m`` and confirm it
    still does (the stopped process cannot finish the write). True if ``m`` is frozen
    torn; False if the deadline passed first."""
    while time.monotonic() < deadline:
        tail = _tail_segment(m)
        if tail is not None and _torn_now(tail):
            c.pause(m)
            time.sleep(0.02)  # let the stop land; the re-read below is the real check
            if _torn_now(tail):
                return True
            c.resume(m)
        time.sleep(0.001)
    return False


def test_kill_mid_wal_write_leaves_torn_tails_that_recovery_cuts(
    tmp_path: Path, cluster_factory: list[ProcessCluster]
) -> None:
    """With the slow-sync hook every WAL append pauses between its two halves and before its
    fsync. Each round freezes one member while its WAL tail ends mid-record, kills every
    member, and restarts them: each must cut its torn tail (and say so), and every
    acknowledged write must be there."""
    seed = seed_for(1301)
    rng = random.Random(seed)
    rounds = rounds_for(2, 8.0)
    c = new_cluster(cluster_factory, tmp_path / "c",
                    env={"DISCOVERD_TEST_WAL_SLOW_SYNC_MS": "30"})
    writers = Writers(c)
    repaired = 0
    for r in range(rounds):
        victim = c.members[rng.randrange(len(c.members))]
        log_start = len(victim.log_text())
        writers.start()
        try:
            writers.wait_acked(40)
            frozen = _freeze_while_torn(c, victim, time.monotonic() + 30)
            assert frozen, f"seed {seed}: {victim.name}'s WAL never ended mid-record"
            kill_all(c)
        finally:
            writers.stop()
        restart_all(c)
        for m in c.members:
            c.wait_ready(m, timeout=30)
        new_log = victim.log_text()[log_start:]
        assert "repaired a torn WAL tail" in new_log, (
            f"seed {seed}, round {r + 1}: {victim.name} was killed mid-record but did not "
            f"report cutting a torn tail")
        repaired += 1
        problems = writers.problems(read_all(c))
        assert not problems, (f"seed {seed}, round {r + 1}/{rounds}: "
                              f"{len(problems)} problems: {problems[:10]}")
    assert repaired == rounds
    print(f"seed {seed}: {rounds} rounds, {writers.acked} writes acknowledged")


def test_acknowledged_writes_survive_kill_of_the_leader_mid_burst(
    tmp_path: Path, cluster_factory: list[ProcessCluster]
) -> None:
    seed = seed_for(1401)
    rng = random.Random(seed)
    c = new_cluster(cluster_factory, tmp_path / "c")
    writers = Writers(c)
    old = c.wait_for_leader()
    writers.start()
    try:
        writers.wait_acked(100)
        time.sleep(rng.uniform(0.0, 0.3))  # a seeded moment in the burst, not a sync
        c.kill(old)
        survivors = [m for m in c.members if m is not old]
        new = c.wait_for_leader(among=survivors, timeout=30)
        writers.wait_acked(100)  # the writers failed over and go on
    finally:
        writers.stop()
    assert new is not old
    problems = writers.problems(read_all(c, among=survivors))
    assert not problems, f"seed {seed}: {len(problems)} problems on {new.name}: {problems[:10]}"
    # The old leader comes back and ends up with the same values.
    c.start(old)
    expected = read_all(c)

    def caught_up() -> bool:
        with old.client() as cl:
            kvs = cl.call("range", key=PREFIX, range_end=b"crash0", serializable=True)["kvs"]
        return {bytes(kv["key"]): bytes(kv["value"]) for kv in kvs} == expected

    wait_for(f"{old.name} to catch up", caught_up, timeout=30)
    print(f"seed {seed}: {writers.acked} writes acknowledged; leader {old.name} -> {new.name}")
