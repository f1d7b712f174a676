"""Leases and watches on real member processes (issue 5's "done when"): expiry after a
keeper dies (not before its TTL, not much after), survival of a leader kill, watches from a
compacted revision, a thousand watchers on one prefix, and 10,000 leases expiring at once
without costing the cluster its leader."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cbor2
import pytest
import trio

from discoverd.testing.cluster import ClientFailure, NativeClient, ProcessCluster, wait_for

KEEPER = Path(__file__).with_name("lease_keeper.py")


@pytest.fixture
def cluster(tmp_path: Path):
    c = ProcessCluster(tmp_path, 3)
    c.start_all()
    c.wait_for_leader()
    yield c
    c.close()


class Keeper:
    """The lease keeper subprocess and a thread reading its lines."""

    def __init__(self, ttl: int, key: str, ports: list[int]) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, str(KEEPER), str(ttl), key, *map(str, ports)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.last_renewal = 0.0
        self.renewals = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if line.startswith("renewed "):
                self.last_renewal = float(line.split()[1])
                self.renewals += 1
            self.lines.put(line)

    def lease_id(self, timeout: float = 20.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                assert self.proc.poll() is None, "the keeper died before granting"
                continue
            if line.startswith("granted "):
                return int(line.split()[1])
            if not line.startswith("renewed"):
                pytest.fail(f"keeper said: {line}")
        pytest.fail("the keeper did not grant a lease in time")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def _get(port: int, key: bytes) -> list[dict[str, Any]]:
    with NativeClient(port, timeout=2.0) as c:
        return c.call("range", key=key)["kvs"]


def test_a_key_disappears_after_its_keepers_ttl_and_never_before(cluster: ProcessCluster) -> None:
    ttl = 2
    ports = [m.client_port for m in cluster.members]
    keeper = Keeper(ttl, "/svc/a", ports)
    try:
        lease = keeper.lease_id()
        wait_for("a few renewals", lambda: keeper.renewals >= 3, timeout=10)
        assert _get(ports[0], b"/svc/a")[0]["lease"] == lease
    finally:
        keeper.kill()
    killed = time.monotonic()
    last = keeper.last_renewal
    leader = cluster.wait_for_leader()
    gone_at = None
    while time.monotonic() < killed + ttl + cluster.election_s + 5:
        now = time.monotonic()
        if not _get(leader.client_port, b"/svc/a"):
            gone_at = now
            break
        time.sleep(0.02)  # polling cadence of the observation, not synchronisation
    assert gone_at is not None, "the key outlived its lease by far"
    assert gone_at - last >= ttl - 0.05, f"expired {gone_at - last:.2f}s after the last renewal"
    assert gone_at - killed <= ttl + cluster.election_s, f"took {gone_at - killed:.2f}s"
    with NativeClient(leader.client_port) as c:
        assert c.call("lease_timetolive", lease=lease)["ttl"] == -1
        assert c.call("lease_keepalive", lease=lease)["ttl"] == 0


def test_a_kept_alive_lease_survives_a_leader_kill(cluster: ProcessCluster) -> None:
    ttl = 2
    ports = [m.client_port for m in cluster.members]
    keeper = Keeper(ttl, "/svc/b", ports)
    try:
        lease = keeper.lease_id()
        wait_for("renewals", lambda: keeper.renewals >= 2, timeout=10)
        old = cluster.wait_for_leader()
        term = old.status()["raft_term"]
        cluster.kill(old)
        rest = [m for m in cluster.members if m is not old]
        new = wait_for("a new leader", lambda: cluster.leader(rest), timeout=20)
        assert new.status()["raft_term"] > term
        # Well past the TTL after the failover: still renewed, key still there.
        renewed = keeper.renewals
        wait_for("renewals on the new leader", lambda: keeper.renewals >= renewed + 4,
                 timeout=15)
        assert keeper.proc.poll() is None, "the keeper lost its lease"
        kvs = _get(new.client_port, b"/svc/b")
        assert kvs
        assert kvs[0]["lease"] == lease
        with NativeClient(new.client_port) as c:
            left = c.call("lease_timetolive", lease=lease)
        assert left["granted_ttl"] == ttl
        assert 0 < left["ttl"] <= ttl
    finally:
        keeper.kill()


def test_a_watch_from_a_compacted_revision_gets_compact_revision(cluster: ProcessCluster) -> None:
    port = cluster.members[0].client_port
    with NativeClient(port) as c:
        for i in range(5):
            rev = c.put(b"/w/k", b"v%d" % i)
        c.call("compact", revision=rev - 1)
        c.send_raw(cbor2.dumps({"id": 7, "op": "watch", "key": b"/w/k", "start_revision": 2}))
        created = c.read_frame()
        assert created["id"] == 7
        assert created["ok"]["created"] is True
        canceled = c.read_frame()["ok"]
        assert canceled["canceled"] is True
        assert canceled["compact_revision"] == rev - 1
        assert canceled["watch_id"] == created["ok"]["watch_id"]
        # A watch from just after the compaction replays what is left, then goes live.
        c.send_raw(cbor2.dumps({"id": 8, "op": "watch", "key": b"/w/k",
                                "start_revision": rev}))
        assert c.read_frame()["ok"]["created"]
        replay = c.read_frame()["ok"]
        assert [e["kv"]["value"] for e in replay["events"]] == [b"v4"]


def test_a_lease_put_with_an_unknown_lease_is_refused(cluster: ProcessCluster) -> None:
    with NativeClient(cluster.members[1].client_port) as c:
        with pytest.raises(Exception, match="lease_not_found"):
            c.call("put", key=b"k", value=b"v", lease=12345)
        assert c.get(b"k") is None
        granted = c.call("lease_grant", ttl=60)
        c.call("put", key=b"k", value=b"v", lease=granted["id"])
        assert c.call("lease_timetolive", lease=granted["id"], keys=True)["keys"] == [b"k"]
        rev = c.call("lease_revoke", lease=granted["id"])["header"]["revision"]
        assert c.get(b"k") is None
        assert granted["id"] not in [x["id"] for x in c.call("lease_leases")["leases"]]
        assert rev == c.status()["header"]["revision"]


async def _watch_many(port: int, watchers: int, prefix: bytes, ready: trio.Event,
                      expect: int) -> dict[int, list[tuple[int, bytes]]]:
    """Open ``watchers`` watches on one connection; collect (revision, key) per watch."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"DSC1")
    end = prefix[:-1] + bytes([prefix[-1] + 1])
    for i in range(1, watchers + 1):
        body = cbor2.dumps({"id": i, "op": "watch", "key": prefix, "range_end": end})
        await stream.send_all(len(body).to_bytes(4, "big") + body)
    seen: dict[int, list[tuple[int, bytes]]] = {i: [] for i in range(1, watchers + 1)}
    created = 0
    buf = bytearray()
    done = 0
    while done < watchers:
        data = await stream.receive_some(1 << 20)
        assert data, "the member closed the watch connection"
        buf += data
        while len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[:4], "big"):
            size = int.from_bytes(buf[:4], "big")
            frame = cbor2.loads(bytes(buf[4:4 + size]))
            del buf[:4 + size]
            assert "ok" in frame, frame
            ok = frame["ok"]
            if ok.get("created"):
                created += 1
                if created == watchers:
                    ready.set()
                continue
            got = seen[frame["id"]]
            before = len(got)
            got.extend((e["kv"]["mod_revision"], e["kv"]["key"]) for e in ok["events"])
            if before < expect <= len(got):
                done += 1
    await stream.aclose()
    return seen


async def test_a_thousand_watchers_on_one_prefix_all_receive_every_event(tmp_path: Path) -> None:
    with ProcessCluster(tmp_path, 1) as c:
        c.start_all()
        await trio.to_thread.run_sync(c.wait_for_leader)
        port = c.members[0].client_port
        events = 50
        results: list[dict[int, list[tuple[int, bytes]]]] = []
        readies = [trio.Event() for _ in range(10)]

        async def one(i: int) -> None:
            results.append(await _watch_many(port, 100, b"/svc/", readies[i], events))

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for i in range(10):
                    nursery.start_soon(one, i)
                for r in readies:
                    await r.wait()

                def write() -> list[int]:
                    with NativeClient(port) as w:
                        w.put(b"/other", b"x")  # outside the prefix: nobody sees it
                        return [w.put(b"/svc/%03d" % i, b"v") for i in range(events)]

                revisions = await trio.to_thread.run_sync(write)
        expected = [(r, b"/svc/%03d" % i) for i, r in enumerate(revisions)]
        assert len(results) == 10
        for per_conn in results:
            for seq in per_conn.values():
                assert seq == expected  # every event, once, in order


def test_ten_thousand_leases_expire_at_once_without_losing_the_leader(tmp_path: Path) -> None:
    with ProcessCluster(tmp_path, 3) as c:
        c.start_all()
        leader = c.wait_for_leader()
        n = 10_000
        with NativeClient(leader.client_port, timeout=30) as cl:
            # Pipelined: grant n leases, then a key on each.
            # TTL: long enough for every grant and put below to be done before the first
            # lease's deadline (about 2,000 of each per second on a busy 2-core machine).
            for i in range(n):
                cl.send_raw(cbor2.dumps({"id": i + 1, "op": "lease_grant", "ttl": 15}))
            ids = {}
            for _ in range(n):
                f = cl.read_frame()
                ids[f["id"]] = f["ok"]["id"]
            for i in range(n):
                cl.send_raw(cbor2.dumps({"id": n + i + 1, "op": "put", "key": b"/l/%05d" % i,
                                         "value": b"v", "lease": ids[i + 1]}))
            for _ in range(n):
                # A put on a lease that had already expired would fail (lease not found):
                # every key was attached to a live lease. (Counting the keys afterwards would
                # race the first expiries when the machine is busy.)
                assert "ok" in cl.read_frame()
            term = cl.status()["raft_term"]
            assert cl.call("range", key=b"/l/", range_end=b"/l0", count_only=True)["count"] > 0
        def all_gone() -> bool:
            with NativeClient(leader.client_port, timeout=10) as cl:
                return cl.call("range", key=b"/l/", range_end=b"/l0",
                               count_only=True)["count"] == 0
        wait_for("every leased key to expire", all_gone, timeout=60, interval=0.2)
        st = leader.status()
        assert st["role"] == "leader", "the leader changed"
        assert st["raft_term"] == term, "there was an election"
        with NativeClient(leader.client_port, timeout=10) as cl:
            assert cl.call("lease_leases")["leases"] == []


def _frames(c: NativeClient, n: int) -> list[dict[str, Any]]:
    return [c.read_frame() for _ in range(n)]


def test_a_watch_fails_fast_on_a_member_that_lost_its_leader(cluster: ProcessCluster) -> None:
    leader = cluster.wait_for_leader()
    lonely = next(m for m in cluster.members if m is not leader)
    others = [m for m in cluster.members if m is not lonely]
    c = NativeClient(lonely.client_port, timeout=30)
    try:
        c.send_raw(cbor2.dumps({"id": 1, "op": "watch", "key": b"k"}))
        assert c.read_frame()["ok"]["created"]
        for m in others:
            cluster.pause(m)
        started = time.monotonic()
        ended = c.read_frame()  # the stream ends by itself: no leader for 2 election timeouts
        waited = time.monotonic() - started
        assert ended["id"] == 1
        assert ended["err"]["code"] == "unavailable"
        assert waited < 10 * cluster.election_s
        c.send_raw(cbor2.dumps({"id": 2, "op": "watch", "key": b"k"}))
        refused = c.read_frame()
        assert refused["id"] == 2
        assert refused["err"]["code"] == "unavailable"  # at once, not after a hang
    finally:
        c.close()
        for m in others:
            cluster.resume(m)


def test_a_reader_that_stops_reading_blocks_neither_writes_nor_other_watchers(
    cluster: ProcessCluster,
) -> None:
    """A watch whose client reads nothing while ~12 MB of events pile up (more than the
    sockets buffer): writes keep being acknowledged, a second watcher on the same member
    keeps up, and when the slow one reads again it gets every event once, in order."""
    member = cluster.members[0]
    slow = NativeClient(member.client_port, timeout=30)
    fast = NativeClient(member.client_port, timeout=30)
    try:
        for c in (slow, fast):
            c.send_raw(cbor2.dumps({"id": 1, "op": "watch", "key": b"/big/",
                                    "range_end": b"/big0"}))
            assert c.read_frame()["ok"]["created"]
        value = b"x" * 8192
        revisions = []
        with NativeClient(member.client_port, timeout=30) as writer:
            for i in range(1500):
                revisions.append(writer.put(b"/big/%05d" % i, value))
                if i % 100 == 99:  # the fast watcher keeps up while the slow one sleeps
                    got = 0
                    while got < 100:
                        got += len(fast.read_frame()["ok"]["events"])
        seen: list[int] = []
        while len(seen) < len(revisions):
            frame = slow.read_frame()["ok"]
            seen.extend(e["kv"]["mod_revision"] for e in frame["events"])
        assert seen == revisions
    finally:
        slow.close()
        fast.close()


def test_a_whole_cluster_restart_neither_resets_nor_resurrects_leases(tmp_path: Path) -> None:
    """A lease nobody keeps alive is checkpointed half-way through its TTL; after every
    member is killed and restarted, it runs out from that checkpoint (plus a short grace),
    not from a fresh full TTL as etcd would; a revoked lease stays revoked."""
    ttl = 12
    with ProcessCluster(tmp_path, 3) as c:
        c.start_all()
        leader = c.wait_for_leader()
        with NativeClient(leader.client_port) as cl:
            forgotten = cl.call("lease_grant", ttl=ttl)["id"]
            granted_at = time.monotonic()
            cl.call("put", key=b"/f", value=b"v", lease=forgotten)
            revoked = cl.call("lease_grant", ttl=ttl)["id"]
            cl.call("put", key=b"/r", value=b"v", lease=revoked)
            cl.call("lease_revoke", lease=revoked)
        # The leader checkpoints once the replicated TTL is more than half a TTL too high
        # (checked every second): wait until that was due two seconds ago. (The leader's
        # view is what lease_timetolive reports; the checkpoint itself is not observable.)
        def checkpoint_due_long_ago() -> bool:
            with NativeClient(c.members[1].client_port) as f:
                left = f.call("lease_timetolive", lease=forgotten)["ttl"]
            return 0 < left <= ttl // 2 - 2
        wait_for("a checkpoint", checkpoint_due_long_ago, timeout=ttl)
        for m in c.members:
            c.kill(m)
        for m in c.members:
            c.start(m)
        new_leader = c.wait_for_leader()
        back = time.monotonic()
        with NativeClient(new_leader.client_port) as cl:
            assert cl.call("lease_timetolive", lease=revoked)["ttl"] == -1
            assert cl.get(b"/r") is None
            left = cl.call("lease_timetolive", lease=forgotten)["ttl"]
            assert 0 < left <= ttl // 2, f"reset to {left}s"
        wait_for("the forgotten lease to run out", lambda: _get(new_leader.client_port, b"/f")
                 == [], timeout=ttl)
        gone = time.monotonic()
        assert gone - back < ttl - 1, "the lease got a fresh TTL after the restart"
        assert gone - granted_at >= ttl, "the lease ran out before its TTL"


def test_lease_reads_through_a_follower_see_the_clients_own_writes(
    cluster: ProcessCluster,
) -> None:
    """A follower forwards keep-alive and time-to-live to the leader with its applied
    index; the leader answers only once it has applied as much, so a read right after the
    client's own grant or revoke (acknowledged by the follower) never goes back in time."""
    leader = cluster.wait_for_leader()
    follower = next(m for m in cluster.members if m is not leader)
    with NativeClient(follower.client_port) as c:
        for _ in range(100):
            lease = c.call("lease_grant", ttl=60)["id"]
            assert c.call("lease_timetolive", lease=lease)["ttl"] > 0
            assert c.call("lease_keepalive", lease=lease)["ttl"] == 60
            c.call("lease_revoke", lease=lease)
            assert c.call("lease_timetolive", lease=lease)["ttl"] == -1
            assert c.call("lease_keepalive", lease=lease)["ttl"] == 0



RETRYABLE = frozenset({"not_leader", "unavailable", "timeout", "proposal_dropped"})


def test_a_lease_granted_through_one_follower_is_known_at_once_through_the_other(
    tmp_path: Path,
) -> None:
    """Regression: a keep-alive forwarded by one follower right after another follower
    answered the grant could reach the leader before the leader had *applied* the grant (the
    grant is committed — its client was answered — but the leader may apply it after the
    followers did): the leader answered TTL 0, "no such lease". Made likelier here by a
    leader whose WAL writes are slow (the test hook), so it can apply after its followers.
    The leader now applies everything committed when a lease op arrives before answering."""
    with ProcessCluster(tmp_path, 3) as c:
        slow = c.members[0]
        slow.env = {"DISCOVERD_TEST_WAL_SLOW_SYNC_MS": "300"}
        c.start_all()
        c.wait_for_leader()
        slow_id = c.wait_ready(slow)["header"]["member_id"]

        def slow_leads() -> bool:
            lead = c.leader()
            if lead is not None and lead is not slow:
                with lead.client(timeout=10) as cl:  # may time out while it catches up
                    cl.call("move_leader", target=slow_id)
            return c.leader() is slow

        wait_for("the slow member to lead", slow_leads, timeout=60, interval=0.2)
        a, b = c.members[1], c.members[2]

        def answer(client: NativeClient, op: str, **fields: Any) -> dict[str, Any]:
            """``op``'s answer, retried (bounded) while the slow leader loses and regains
            leadership: a refusal is not the bug; an answer of TTL 0 would be."""
            deadline = time.monotonic() + 30
            while True:
                try:
                    return client.call(op, **fields)
                except ClientFailure as e:
                    if e.code not in RETRYABLE or time.monotonic() > deadline:
                        raise
                time.sleep(0.05)  # backoff between retries, not synchronisation

        with a.client(timeout=10) as ca, b.client(timeout=10) as cb:
            for _ in range(60):
                lease = answer(ca, "lease_grant", ttl=30)["id"]
                assert answer(cb, "lease_keepalive", lease=lease)["ttl"] == 30
                assert answer(cb, "lease_timetolive", lease=lease)["granted_ttl"] == 30
