"""Membership with real ``discoverd serve`` processes, driven by the CLI as an operator types
it (issue 9; docs/operations.md): grow 1 → 3 → 5 and shrink 5 → 3 under a steady write load,
replace a dead member, learners (never in a quorum, promoted only once caught up), a removed
member stopping itself, moving the leader, changing a member's peer URLs, a rolling restart.

Discipline (as tests/e2e/test_member_processes.py): no sleep is a synchronisation — every
wait is ``wait_for``, a bounded poll of a condition that fails saying what it awaited.
Timings: 50 ms heartbeats, 500 ms elections.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest

from discoverd.errors import DiscoverdError, Unavailable
from discoverd.sdk import Client
from discoverd.testing.cluster import (
    ClientFailure,
    MemberProcess,
    ProcessCluster,
    endpoints,
    free_port,
    peer_url,
    wait_for,
)

REMOVED_LINE = "this member was removed from the cluster; stopping"

MakeCluster = Callable[..., ProcessCluster]  # the `clusters` fixture (conftest.py)




# ----------------------------------------------------------------------------- helpers


def cli(members: list[MemberProcess], *args: str,
        ok: bool = True) -> subprocess.CompletedProcess[str]:
    """``discoverd --endpoints <members> ARGS`` as a user runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISCOVERD_")}
    done = subprocess.run(
        [sys.executable, "-m", "discoverd.cli", "--endpoints", endpoints(members), *args],
        capture_output=True, text=True, timeout=60, env=env)
    if ok:
        assert done.returncode == 0, f"discoverd {' '.join(args)}: {done.stderr}{done.stdout}"
    return done


def member_list(m: MemberProcess) -> list[dict[str, Any]]:
    with m.client() as c:
        members: list[dict[str, Any]] = c.call("member_list")["members"]
        return members


def member_id(m: MemberProcess) -> int:
    return int(m.status()["header"]["member_id"])


def get(m: MemberProcess, key: bytes) -> bytes | None:
    """A serializable read of ``key`` on ``m`` itself (what that member has applied)."""
    with m.client() as c:
        return c.get(key, serializable=True)


def add_member(c: ProcessCluster, via: list[MemberProcess], name: str, *,
               learner: bool = False, ports: tuple[int, int] | None = None,
               use_env: bool = False) -> tuple[MemberProcess, int]:
    """``member add`` through the CLI, then the new member started as its output says:
    with the printed ``DISCOVERD_*`` variables (``use_env``), or their values as flags.
    ``ports``: (client, peer)."""
    client_port, port = ports or (free_port(), free_port())
    out = cli(via, "member", "add", name, "--peer-urls", f"http://127.0.0.1:{port}",
              *(["--learner"] if learner else [])).stdout
    added = re.match(r"Member +([0-9a-f]+) added to cluster +[0-9a-f]+\n\n", out)
    assert added is not None, out
    env = dict(re.findall(r'^(DISCOVERD_[A-Z_]+)="(.*)"$', out, re.M))
    assert env["DISCOVERD_NAME"] == name
    assert env["DISCOVERD_INITIAL_ADVERTISE_PEER_URLS"] == f"http://127.0.0.1:{port}"
    assert env["DISCOVERD_INITIAL_CLUSTER_STATE"] == "existing"
    if use_env:
        m = c.new_member(name, peer_port=port, client_port=client_port, env=env)
    else:
        m = c.new_member(name, peer_port=port, client_port=client_port,
                         initial_cluster=env["DISCOVERD_INITIAL_CLUSTER"])
    c.start(m)
    mid = int(added.group(1), 16)
    assert wait_for(f"{name} to answer", m.status)["header"]["member_id"] == mid
    # Started: it has published its name and client URLs (`member list` says "started").
    # Only then is the next member added (its DISCOVERD_INITIAL_CLUSTER names this one).
    wait_for(f"{name} to be listed as started", lambda: any(
        x["id"] == mid and x["name"] == name and x["client_urls"] for x in member_list(m)))
    return m, mid


def caught_up(m: MemberProcess, leader: MemberProcess) -> bool:
    return bool(m.status()["raft_applied_index"] >= leader.status()["commit_index"])


def promote(c: ProcessCluster, via: list[MemberProcess], mid: int) -> None:
    """``member promote``, retried only while the answer is "not in sync yet": under a
    write load the learner's log trails the leader's until it has caught up."""
    def promoted() -> bool:
        done = cli(via, "member", "promote", f"{mid:x}", ok=False)
        if done.returncode == 0:
            assert done.stdout.startswith(f"Member {mid:16x} promoted in cluster"), done.stdout
            return True
        assert "in sync with leader" in done.stderr, done.stderr
        return False
    wait_for(f"{mid:x} to be promoted", promoted, timeout=30)


class Writer:
    """Sequential puts through the SDK in a thread, recording every acknowledged one. A
    write failing with a transient error (the ``Unavailable`` family: ``not_leader``,
    ``proposal_dropped``, ``timeout``, ``unavailable``, a lost connection) is sent again,
    the same key with the same value — harmless if the first attempt was applied after
    all; any other error stops the writer and fails the test."""

    def __init__(self, client_ports: list[int]) -> None:
        self.endpoints = [f"127.0.0.1:{port}" for port in client_ports]
        self.acked: dict[bytes, bytes] = {}
        self.retried: list[str] = []
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="writer", daemon=True)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        with Client(self.endpoints, dial_timeout=0.5, command_timeout=5.0) as client:
            i = 0
            while not self._stop.is_set():
                key, value = f"/load/{i:06d}".encode(), f"value-{i}".encode()
                try:
                    client.put(key, value)
                except Unavailable as e:
                    self.retried.append(f"{type(e).__name__}: {e}")
                    continue
                except DiscoverdError as e:
                    self.failed.append(f"{key!r}: {type(e).__name__}: {e}")
                    return
                self.acked[key] = value
                i += 1
                self._stop.wait(0.01)  # pacing (a steady load, not a flood), not a sync

    def progressed(self, by: int = 20) -> None:
        """Wait until ``by`` more writes are acknowledged: the load goes on right now."""
        start = len(self.acked)
        wait_for(f"{by} more acknowledged writes", lambda: (
            len(self.acked) >= start + by or self.failed), timeout=20)
        assert not self.failed, self.failed


def voters_and_learners(m: MemberProcess) -> tuple[set[str], set[str]]:
    ms = member_list(m)
    return ({x["name"] for x in ms if not x["is_learner"]},
            {x["name"] for x in ms if x["is_learner"]})


# ----------------------------------------------------------------------------- 1. grow, shrink


def test_grow_1_3_5_and_shrink_to_3_under_a_steady_write_load(clusters: MakeCluster) -> None:
    c = clusters(1)
    with c.started():
        m1 = c.member("m1")
        ports = {n: (free_port(), free_port()) for n in ("m2", "m3", "m4", "m5")}
        # The writer knows every client port up front; members not started yet are just
        # endpoints that refuse connections, which the SDK skips.
        with Writer([m1.client_port, *(cp for cp, _ in ports.values())]) as writer:
            writer.progressed()
            # 1 -> 2: as a learner first (a second voter that is not up yet would stall
            # every write until it is), started from the printed DISCOVERD_* variables.
            m2, id2 = add_member(c, [m1], "m2", learner=True, ports=ports["m2"],
                                 use_env=True)
            wait_for("m2 to catch up", lambda: caught_up(m2, m1))
            promote(c, [m1], id2)
            writer.progressed()
            # 2 -> 3: a voter directly (m1 and m2 are a quorum of three).
            m3, _ = add_member(c, [m1, m2], "m3", ports=ports["m3"])
            writer.progressed()
            # 3 -> 5.
            m4, _ = add_member(c, [m1, m2, m3], "m4", ports=ports["m4"])
            writer.progressed()
            m5, id5 = add_member(c, [m2, m3], "m5", learner=True, ports=ports["m5"])
            wait_for("m5 to catch up", lambda: caught_up(m5, c.wait_for_leader()))
            promote(c, [m3], id5)
            writer.progressed()
            five = ({"m1", "m2", "m3", "m4", "m5"}, set[str]())

            def lists_five(m: MemberProcess) -> bool:
                return voters_and_learners(m) == five

            for m in c.running():
                wait_for(f"{m.name} to list five voters", functools.partial(lists_five, m))
            # Every member published its client URLs: `endpoint health --cluster` uses them.
            health = cli([m4], "endpoint", "health", "--cluster")
            assert health.stderr.count("is healthy") == 5, health.stderr

            # 5 -> 4: a follower.
            leader = c.wait_for_leader()
            follower = next(m for m in (m5, m4, m3) if m is not leader)
            out = cli([m1, m2], "member", "remove", f"{member_id(follower):x}").stdout
            assert "removed from cluster" in out
            wait_for(f"{follower.name} to stop", lambda: not follower.running, timeout=10)
            writer.progressed()
            # 4 -> 3: the leader itself, under load; the others elect a new one.
            rest = [m for m in c.running() if m is not leader]
            cli(rest, "member", "remove", f"{member_id(leader):x}")
            wait_for(f"{leader.name} to stop", lambda: not leader.running, timeout=10)
            new_leader = c.wait_for_leader(rest)
            assert new_leader is not leader
            writer.progressed()
        assert not writer.failed, writer.failed
        assert len(writer.acked) > 100

        # Every acknowledged write is there, on every remaining member.
        assert all(m.running for m in rest), [m.name for m in rest if not m.running]
        with Client([f"127.0.0.1:{m.client_port}" for m in rest]) as client:
            found = {kv.key: kv.value for kv in client.get("/load/", prefix=True).kvs}
        missing = {k for k, v in writer.acked.items() if found.get(k) != v}
        assert not missing, f"{len(missing)} acknowledged writes lost: {sorted(missing)[:5]}"
        assert {x["name"] for x in member_list(new_leader)} == {m.name for m in rest}
        for gone in (follower, leader):
            assert gone.log_text().count(REMOVED_LINE) == 1
            assert gone.proc is not None
            assert gone.proc.returncode == 0
        print(f"{len(writer.acked)} writes acknowledged, {len(writer.retried)} retried: "
              f"{writer.retried[:5]}")


# ----------------------------------------------------------------------------- 2. replacement


def test_replace_a_dead_member_with_a_wiped_data_dir_that_catches_up_by_snapshot(
    clusters: MakeCluster,
) -> None:
    # Frequent snapshots, and only a few entries kept behind them: the replacement's log
    # is too far behind to be replayed, so the leader has to send it a snapshot.
    c = clusters(3, "--snapshot-count", "20", "--experimental-snapshot-catchup-entries", "5")
    with c.started():
        m1, m2, m3 = c.members
        wait_for("every member to publish its client URLs", lambda: all(
            x["client_urls"] for x in member_list(m1)))
        with m1.client() as cl:
            for i in range(30):
                cl.put(f"/before/{i}".encode(), b"x")
        c.kill(m3)  # kill -9: the member is dead and its disk is lost
        old_id = next(x["id"] for x in member_list(m1) if x["name"] == "m3")
        cli([m1, m2], "member", "remove", f"{old_id:x}")
        assert {x["name"] for x in member_list(m1)} == {"m1", "m2"}
        with m1.client() as cl:
            for i in range(60):  # more snapshots meanwhile, with m3 out of the cluster
                cl.put(f"/after/{i}".encode(), b"y")

        # Same name, same peer URL: the same id as before, added afresh.
        out = cli([m1, m2], "member", "add", "m3", "--peer-urls", peer_url(m3)).stdout
        assert f"Member {old_id:16x} added" in out
        initial = re.search(r'DISCOVERD_INITIAL_CLUSTER="(.*)"', out)
        assert initial is not None
        subprocess.run(["rm", "-rf", str(m3.data_dir)], check=True)
        c.start(m3, "--initial-cluster-state", "existing",
                "--initial-cluster", initial.group(1))
        wait_for("m3 to hold every key", lambda: get(m3, b"/after/59") == b"y", timeout=20)
        assert "snapshot installed from the leader" in m3.log_text()
        # The member table came with the snapshot: m3 knows the others' client URLs, which
        # they published long before (those entries were compacted away).
        mine = {x["name"]: x for x in member_list(m3)}
        assert mine["m1"]["client_urls"] == [f"http://127.0.0.1:{m1.client_port}"]
        assert mine["m2"]["client_urls"] == [f"http://127.0.0.1:{m2.client_port}"]
        wait_for("m3 to be listed as started", lambda: {
            x["name"] for x in member_list(m3) if x["client_urls"] and not x["is_learner"]
        } == {"m1", "m2", "m3"})
        assert get(m3, b"/before/0") == b"x"
        # And it is a voter again: with m1 gone, m2 and m3 still commit.
        c.kill(m1)
        c.wait_for_leader([m2, m3])
        with m2.client() as cl:
            wait_for("a write on m2 and m3 alone", lambda: cl.put(b"/two", b"ok"))


# ----------------------------------------------------------------------------- 3. learners


def test_a_learner_is_never_in_a_quorum_and_is_promoted_only_once_caught_up(
    clusters: MakeCluster,
) -> None:
    """Two voters and a learner. With one voter down, a quorum of two voters cannot be
    reached — but if the learner counted (three voters) the survivor and the learner would
    make one: the write must not commit. This tells the two apart, which three voters and a
    learner with two voters down would not (no quorum either way)."""
    c = clusters(2)
    with c.started():
        m1, m2 = c.members
        m3, id3 = add_member(c, [m1, m2], "m3", learner=True)
        wait_for("m3 to catch up", lambda: caught_up(m3, c.wait_for_leader()))
        assert voters_and_learners(m1) == ({"m1", "m2"}, {"m3"})
        assert m3.status()["is_learner"] is True

        # A lagging learner is not promoted.
        c.pause(m3)
        with m1.client() as cl:
            for i in range(100):
                cl.put(f"/lag/{i}".encode(), b"v")
        refused = cli([m1, m2], "member", "promote", f"{id3:x}", ok=False)
        assert refused.returncode == 1
        assert refused.stderr == ("Error: etcdserver: can only promote a learner member "
                                  "which is in sync with leader\n")
        assert voters_and_learners(m1) == ({"m1", "m2"}, {"m3"})  # nothing changed
        c.resume(m3)
        wait_for("m3 to catch up", lambda: caught_up(m3, c.wait_for_leader()))

        # With a voter down, the surviving voter and the learner do not make a quorum.
        survivor, down = (m1, m2)
        c.kill(down)
        commit = survivor.status()["commit_index"]
        with Client([f"127.0.0.1:{survivor.client_port}"], command_timeout=3.0) as client, \
                pytest.raises(Unavailable):
            client.put(b"/no-quorum", b"v")
        assert survivor.status()["commit_index"] == commit
        assert get(survivor, b"/no-quorum") is None
        assert get(m3, b"/no-quorum") is None
        # With the voter back, writes commit again (the learner still not counted).
        c.start(down)
        c.wait_for_leader([m1, m2])
        with Client(endpoints([m1, m2]).split(",")) as client:
            client.put(b"/quorum", b"v")
        wait_for("the learner to receive it", lambda: get(m3, b"/quorum") == b"v")

        # Caught up, it is promoted; then it counts.
        promote(c, [m1, m2], id3)
        assert voters_and_learners(m2) == ({"m1", "m2", "m3"}, set())
        wait_for("m3 to know it votes", lambda: m3.status()["is_learner"] is False)
        c.kill(m2)
        c.wait_for_leader([m1, m3])
        with Client(endpoints([m1, m3]).split(",")) as client:
            client.put(b"/with-m3", b"v")


# ----------------------------------------------------------------------------- 4. day two


def test_move_leader_update_peer_urls_rolling_restart_and_a_removed_member_stops(
    clusters: MakeCluster,
) -> None:
    c = clusters(3)
    with c.started():
        m1, m2, m3 = c.members
        everyone = [m1, m2, m3]
        wait_for("every member to publish its client URLs", lambda: all(
            x["client_urls"] for x in member_list(m1)))

        # move-leader: found among --endpoints, as etcdctl does; a follower does not do.
        leader = c.wait_for_leader()
        target = next(m for m in everyone if m is not leader)
        lid, tid = member_id(leader), member_id(target)
        out = cli(everyone, "move-leader", f"{tid:x}").stdout
        assert out == f"Leadership transferred from {lid:x} to {tid:x}\n"
        assert c.wait_for_leader() is target
        followers = [m for m in everyone if m is not target]
        refused = cli(followers[:1], "move-leader", f"{lid:x}", ok=False)
        assert refused.stderr == (f"Error: no leader endpoint given at "
                                  f"[127.0.0.1:{followers[0].client_port}]\n")
        learner_or_stranger = cli(everyone, "move-leader", "abc", ok=False)
        assert learner_or_stranger.stderr == "Error: etcdserver: bad leader transferee\n"

        # member update: m3 moves to another peer port and keeps its id (its data dir
        # says who it is); the others redial it there.
        id3 = member_id(m3)
        old_url, new_port = peer_url(m3), free_port()
        new_url = f"http://127.0.0.1:{new_port}"
        out = cli([m1, m2], "member", "update", f"{id3:x}", "--peer-urls", new_url).stdout
        assert out.startswith(f"Member {id3:16x} updated in cluster")
        assert c.stop(m3) == 0
        m3.args = [a.replace(old_url, new_url) for a in m3.args]
        m3.peer_port = new_port
        c.start(m3)
        assert wait_for("m3 to answer", m3.status)["header"]["member_id"] == id3
        with m1.client() as cl:
            cl.put(b"/moved", b"v")
        wait_for("m3 to replicate at its new address", lambda: get(m3, b"/moved") == b"v")
        assert next(x for x in member_list(m1) if x["id"] == id3)["peer_urls"] == [new_url]

        # A rolling restart, one member at a time, health checked before each (Upgrades).
        for m in everyone:
            cli([m1], "endpoint", "health", "--cluster")
            assert c.stop(m) == 0
            c.start(m)
            wait_for(f"{m.name} to rejoin", lambda: cli(
                [m1, m2, m3], "endpoint", "health", "--cluster", ok=False).returncode == 0)
        # The table survived the restarts: every member still lists every client URL.
        table = cli([m2], "endpoint", "status", "--cluster", "-w", "table").stdout
        assert sorted(re.findall(r"\| (http://127\.0\.0\.1:\d+) \|", table)) == sorted(
            f"http://127.0.0.1:{m.client_port}" for m in everyone), table

        # A removed member stops itself and says why, once.
        victim = next(m for m in everyone if m is not c.wait_for_leader())
        victim_id = member_id(victim)
        cli(everyone, "member", "remove", f"{victim_id:x}")
        wait_for(f"{victim.name} to stop", lambda: not victim.running, timeout=10)
        assert victim.log_text().count(REMOVED_LINE) == 1
        assert victim.proc is not None
        assert victim.proc.returncode == 0
        rest = [m for m in everyone if m is not victim]
        gone = cli(rest, "member", "remove", f"{victim_id:x}", ok=False)
        assert gone.stderr == "Error: etcdserver: member not found\n"
        with pytest.raises(ClientFailure, match="member_not_found"), rest[0].client() as cl:
            cl.call("member_promote", member=member_id(rest[0]) + 1)
