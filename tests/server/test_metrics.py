"""``/metrics`` of real members started in this process (``server.member.Member`` on
loopback ports and a temp data dir), driven through the SDK: the values move as the
requests say they should, each member reports only itself, docs/metrics.md lists exactly
what is exposed, and the log events operators grep for carry term and index.

Every wait is a condition polled under ``trio.fail_after`` (a member's state is changed by
its own tasks); nothing sleeps to synchronise.
"""

from __future__ import annotations

import http.client
import random
import re
import socket
from collections.abc import AsyncIterator, Callable, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import LogCapture

from discoverd import __version__
from discoverd.consensus.messages import Entry
from discoverd.consensus.raft import Config
from discoverd.consensus.storage import MemoryStorage
from discoverd.member.core import MemberCore
from discoverd.sdk import AsyncClient, DiscoverdError, FutureRevision
from discoverd.server.config import MemberConfig
from discoverd.server.gc_policy import SurvivorFreezer
from discoverd.server.member import Member
from discoverd.server.metrics import Histogram, exponential_buckets
from discoverd.server.raft_loop import RaftLoop, run_inline
from discoverd.testing.cluster import ProcessCluster
from discoverd.testing.register import RegisterMachine, encode_put

DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
BOUND = 30.0

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def scrape(member: Member) -> tuple[Samples, dict[str, str]]:
    """Render and parse the member's metrics: every sample by (name, labels), and the
    type of every family by its exposed name (a counter's with ``_total``)."""
    body, content_type = member.metrics.render()
    assert content_type.startswith("text/plain; version=")
    return parse(body)


def parse(body: bytes) -> tuple[Samples, dict[str, str]]:
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(body.decode()):
        name = family.name + "_total" if family.type == "counter" else family.name
        types[name] = family.type
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, types


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def labelled(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


class Capture:
    """A structlog logger whose events land in a list, bound like ``serve``'s (member=)."""

    def __init__(self, name: str) -> None:
        self.capture = LogCapture()
        self.log = structlog.wrap_logger(None, processors=[self.capture]).bind(member=name)

    def events(self, event: str) -> list[MutableMapping[str, Any]]:
        return [e for e in self.capture.entries if e["event"] == event]


@asynccontextmanager
async def members(
    tmp_path: Path, size: int = 1, **settings: Any
) -> AsyncIterator[tuple[list[Member], list[Capture]]]:
    """``size`` members of one cluster, started in this trio run; stopped on exit."""
    names = [f"m{i}" for i in range(1, size + 1)]
    ports = {n: (free_port(), free_port()) for n in names}
    initial = ",".join(f"{n}=http://127.0.0.1:{ports[n][1]}" for n in names)
    started: list[Member] = []
    logs: list[Capture] = []
    async with trio.open_nursery() as nursery:
        for n in names:
            client, peer = ports[n]
            cfg = MemberConfig(
                name=n, data_dir=str(tmp_path / n),
                listen_client_urls=f"http://127.0.0.1:{client}",
                advertise_client_urls=f"http://127.0.0.1:{client}",
                listen_peer_urls=f"http://127.0.0.1:{peer}",
                initial_advertise_peer_urls=f"http://127.0.0.1:{peer}",
                initial_cluster=initial, heartbeat_interval_ms=50, election_timeout_ms=500,
                **settings,
            )
            logs.append(Capture(n))
            started.append(await nursery.start(Member(cfg, logs[-1].log).run))
        yield started, logs
        nursery.cancel_scope.cancel()


def endpoint(member: Member) -> str:
    host, port = member.api.listeners[0].socket.getsockname()[:2]
    return f"{host}:{port}"


async def until(what: str, cond: Callable[[], object]) -> None:
    """Poll ``cond`` (changed by the members' own tasks) until it holds; the caller's
    ``fail_after`` bounds the wait."""
    while not cond():  # noqa: ASYNC110 - state of other tasks, no event to wait on
        await trio.sleep(0.005)
    assert cond(), what


# ---------------------------------------------------------------------- one member


async def test_metrics_follow_what_clients_do(tmp_path: Path) -> None:
    with trio.fail_after(BOUND):
        async with members(tmp_path, snapshot_count=8) as ([m], logs):
            await until("a leader", lambda: m.core.is_leader)
            async with AsyncClient([endpoint(m)]) as c:
                for i in range(10):
                    await c.put(f"/m/{i}", b"v")
                for _ in range(3):
                    await c.get("/m/1")
                lease = await c.lease_grant(60)
                last = await c.put("/m/leased", b"v", lease=lease.id)
                with pytest.raises(FutureRevision):
                    await c.get("/m/1", revision=10**6)
                with pytest.raises(DiscoverdError) as refused:  # refused when applied
                    await c.put("/m/x", b"v", lease=lease.id + 1)
                assert refused.value.code == "lease_not_found"
                with pytest.raises(DiscoverdError):
                    await c.call("no_such_op")
                await c.compact(5)
                with trio.fail_after(10):  # snapshots are written in the background
                    while not m.loop.snapshots_saved:  # noqa: ASYNC110
                        await trio.sleep(0.01)
                async with c.watch("/m/", prefix=True):
                    samples, types = scrape(m)
                    # The member as it was at that scrape (no await in between): the
                    # leader's lease timer may propose a checkpoint at any moment.
                    seen = {"applied": m.core.applied, "pending": m.loop.proposals_pending,
                            "committed": m.core.raft_log.committed,
                            "revision": m.machine.store.revision,
                            "size": m.machine.store.size_bytes, "fsyncs": m.loop.fsyncs,
                            "snapshots": m.loop.snapshots_saved}
                    live_keys = (await c.get("/m/", prefix=True, count_only=True)).count

            def requests(op: str, code: str = "ok") -> float:
                return value(samples, "discoverd_client_requests_total", op=op, code=code)

            # Client requests, by op and outcome; the made-up op is not a label value.
            assert requests("put") == 11
            assert requests("range") == 3
            assert requests("range", "future_revision") == 1
            assert requests("put", "lease_not_found") == 1
            assert requests("lease_grant") == 1
            assert requests("compact") == 1
            assert requests("unknown", "invalid_argument") == 1
            assert not [labels for labels in labelled(samples, "discoverd_client_requests_total")
                        if ("op", "no_such_op") in labels]
            assert value(samples, "discoverd_client_request_duration_seconds_count",
                         op="put") == 12
            assert value(samples, "discoverd_client_request_duration_seconds_sum",
                         op="put") > 0
            assert ("discoverd_client_request_duration_seconds_count",
                    frozenset({("op", "watch")})) not in samples  # a stream is no latency

            # Raft: one member, leading since its one election.
            assert value(samples, "discoverd_server_has_leader") == 1
            assert value(samples, "discoverd_server_is_leader") == 1
            assert value(samples, "discoverd_server_is_learner") == 0
            assert value(samples, "discoverd_server_raft_term") >= 1
            assert value(samples, "discoverd_server_leader_changes_seen_total") == 1
            committed = value(samples, "discoverd_server_proposals_committed_total")
            applied = value(samples, "discoverd_server_proposals_applied_total")
            assert committed == seen["committed"] >= applied == seen["applied"] >= 15
            assert value(samples, "discoverd_server_proposals_pending") == seen["pending"] <= 1
            assert value(samples, "discoverd_server_proposals_failed_total") == 0
            assert value(samples, "discoverd_server_read_indexes_failed_total") == 0
            ok_applies = value(samples, "discoverd_server_apply_duration_seconds_count",
                               success="true")
            assert ok_applies >= 14  # 11 puts, a grant, a compaction, the leader's entry
            assert value(samples, "discoverd_server_apply_duration_seconds_count",
                         success="false") == 1
            assert value(samples, "discoverd_server_quota_backend_bytes") == 2 * 1024**3

            # Disk: every fsync'd Ready timed; snapshot_count=8 made at least one snapshot.
            fsyncs = value(samples, "discoverd_disk_wal_fsync_duration_seconds_count")
            assert fsyncs == seen["fsyncs"] > 0
            assert value(samples, "discoverd_disk_wal_fsync_duration_seconds_bucket",
                         le="+Inf") == fsyncs
            assert value(samples, "discoverd_disk_wal_fsync_duration_seconds_sum") > 0
            saved = value(samples, "discoverd_debugging_snap_save_total_duration_seconds_count")
            assert saved == seen["snapshots"] >= 1
            assert value(samples,
                         "discoverd_debugging_snap_save_marshalling_duration_seconds_count") >= 1

            # The store: 11 keys under /m/, the revision of the last write, the compaction.
            assert value(samples, "discoverd_debugging_mvcc_keys_total") == live_keys == 11
            assert value(samples, "discoverd_debugging_mvcc_current_revision") \
                == seen["revision"] == last.header.revision
            assert value(samples, "discoverd_debugging_mvcc_compact_revision") == 5
            assert value(samples, "discoverd_mvcc_db_total_size_in_bytes") == seen["size"] > 0

            # Leases and watches, as they stood with the watch open.
            assert value(samples, "discoverd_lease_active") == 1
            assert value(samples, "discoverd_debugging_lease_granted_total") == 1
            assert value(samples, "discoverd_debugging_mvcc_watcher_total") == 1
            assert value(samples, "discoverd_debugging_mvcc_watch_stream_total") == 1

            info = labelled(samples, "discoverd_server_info")
            assert info == {frozenset({
                ("member", "m1"), ("member_id", f"{m.member_id:x}"),
                ("cluster", f"{m.cluster_id:x}"), ("version", __version__),
            }): 1}
            assert types["discoverd_network_peer_round_trip_time_seconds"] == "histogram"
            assert not labelled(samples, "discoverd_network_peer_sent_bytes_total")  # no peer

            # What operators grep the logs for carries the member, term and index.
            (elected,) = [e for e in logs[0].events("raft state") if e["role"] == "leader"]
            assert elected["member"] == "m1"
            assert elected["term"] >= 1
            assert elected["leader"] == f"{m.member_id:x}"
            snap = logs[0].events("snapshot saved")[0]
            assert snap["member"] == "m1"
            assert snap["term"] >= 1
            assert snap["index"] >= 2  # --snapshot-count 8; the first may come 3/4 early


async def test_watch_lease_and_stream_gauges_fall_back_when_they_end(tmp_path: Path) -> None:
    with trio.fail_after(BOUND):
        async with members(tmp_path) as ([m], _):
            await until("a leader", lambda: m.core.is_leader)
            async with AsyncClient([endpoint(m)]) as c:
                lease = await c.lease_grant(60)
                await c.put("/k", b"v", lease=lease.id)
                async with c.watch("/a"), c.watch("/b"):
                    samples, _ = scrape(m)
                    assert value(samples, "discoverd_debugging_mvcc_watcher_total") == 2
                    # Two watches on the client's one connection: one stream.
                    assert value(samples, "discoverd_debugging_mvcc_watch_stream_total") == 1
                await until("the watches to end", lambda: not len(m.machine.hub))
                await c.lease_revoke(lease.id)
            samples, _ = scrape(m)
            assert value(samples, "discoverd_debugging_mvcc_watcher_total") == 0
            assert value(samples, "discoverd_debugging_mvcc_watch_stream_total") == 0
            assert value(samples, "discoverd_lease_active") == 0
            assert value(samples, "discoverd_debugging_lease_revoked_total") == 1
            assert value(samples, "discoverd_debugging_mvcc_keys_total") == 0  # went with it
            assert value(samples, "discoverd_client_requests_total", op="watch", code="ok") == 2


async def test_an_expired_lease_counts_as_expired_and_revoked(tmp_path: Path) -> None:
    with trio.fail_after(BOUND):
        async with members(tmp_path) as ([m], _):
            await until("a leader", lambda: m.core.is_leader)
            async with AsyncClient([endpoint(m)]) as c:
                kept = await c.lease_grant(60)
                gone = await c.lease_grant(1)  # the minimum TTL here: nobody renews it
                await c.put("/gone", b"v", lease=gone.id)
                await until("the short lease to expire", lambda: len(m.machine.lessor) == 1)
            samples, _ = scrape(m)
            assert value(samples, "discoverd_debugging_lease_granted_total") == 2
            assert value(samples, "discoverd_debugging_server_lease_expired_total") == 1
            assert value(samples, "discoverd_debugging_lease_revoked_total") == 1
            assert value(samples, "discoverd_lease_active") == 1
            assert m.machine.lessor.exists(kept.id)
            assert value(samples, "discoverd_debugging_mvcc_keys_total") == 0


# ---------------------------------------------------------------------- three members


async def test_three_members_each_report_themselves_and_time_their_peers(
    tmp_path: Path,
) -> None:
    with trio.fail_after(BOUND):
        async with members(tmp_path, 3) as (ms, _):
            await until("a leader", lambda: sum(x.core.is_leader for x in ms) == 1)
            ids = {x.member_id for x in ms}

            def rtt_counts(x: Member) -> dict[str, float]:
                samples, _ = scrape(x)
                family = "discoverd_network_peer_round_trip_time_seconds_count"
                return {dict(labels)["To"]: v for labels, v in labelled(samples, family).items()}

            # Probes go every second from every member to every peer, leader or not.
            await until("a round trip to each peer from each member",
                        lambda: all(len(rtt_counts(x)) == 2 for x in ms))
            for x in ms:
                samples, _ = scrape(x)
                peers = {f"{p:x}" for p in ids - {x.member_id}}
                assert set(rtt_counts(x)) == peers
                assert all(v >= 1 for v in rtt_counts(x).values())
                sent = labelled(samples, "discoverd_network_peer_sent_bytes_total")
                received = labelled(samples, "discoverd_network_peer_received_bytes_total")
                assert {dict(k)["To"] for k in sent} == peers
                assert {dict(k)["From"] for k in received} == peers
                assert all(v > 0 for v in [*sent.values(), *received.values()])
                info = labelled(samples, "discoverd_server_info")
                assert [dict(k)["member_id"] for k in info] == [f"{x.member_id:x}"]
                assert value(samples, "discoverd_server_has_leader") == 1
                assert value(samples, "discoverd_server_is_leader") == x.core.is_leader
                assert value(samples, "discoverd_server_leader_changes_seen_total") >= 1


# ---------------------------------------------------------------------- over HTTP


def test_get_metrics_over_http_from_a_serving_member(tmp_path: Path) -> None:
    """``discoverd serve`` in its own process: the client port answers ``GET /metrics``."""
    with ProcessCluster(tmp_path, 1).started() as cluster:
        member = cluster.members[0]
        with member.client() as c:
            for i in range(3):
                c.put(b"/http/%d" % i, b"v")
        conn = http.client.HTTPConnection("127.0.0.1", member.client_port, timeout=10)
        try:
            # Two puts through the etcd gateway: counted as the native ones are.
            for key in (b"L2h0dHAvOQ==", b"L2h0dHAvOA=="):
                conn.request("POST", "/v3/kv/put",
                             body=b'{"key": "%s", "value": "dg=="}' % key)
                gateway = conn.getresponse()
                gateway.read()
                assert gateway.status == 200
            conn.request("GET", "/metrics")
            answer = conn.getresponse()
            body = answer.read()
        finally:
            conn.close()
    assert answer.status == 200
    assert (answer.getheader("content-type") or "").startswith("text/plain; version=")
    samples, types = parse(body)
    assert value(samples, "discoverd_client_requests_total", op="put", code="ok") == 5
    assert value(samples, "discoverd_debugging_mvcc_keys_total") == 5
    assert value(samples, "discoverd_server_is_leader") == 1
    assert [dict(k)["member"] for k in labelled(samples, "discoverd_server_info")] == ["m1"]
    assert types["process_resident_memory_bytes"] == "gauge"
    # A member that owns its process keeps long-lived objects out of full collections
    # (server/gc_policy.py): frozen at start, then a round every 2 s.
    assert value(samples, "discoverd_gc_frozen_objects") > 10_000
    assert types["discoverd_gc_freeze_rounds_total"] == "counter"
    assert types["discoverd_gc_freeze_longest_pause_seconds"] == "gauge"


# ---------------------------------------------------------------------- docs


def documented_metrics() -> dict[str, str]:
    """Name → type of every row of docs/metrics.md's tables (first column `name`)."""
    rows = re.findall(r"^\| `([a-z_:]+)` \| (\w+) \|", DOCS.read_text(), flags=re.MULTILINE)
    return dict(rows)


async def test_docs_list_exactly_the_metrics_exposed(tmp_path: Path) -> None:
    with trio.fail_after(BOUND):
        async with members(tmp_path) as ([m], _):
            m.gc_freezer = SurvivorFreezer()  # as `discoverd serve` has (not started here)
            _, types = scrape(m)
    documented = documented_metrics()
    assert len(documented) > 30, "the table rows were not found"
    missing = sorted(set(types) - set(documented))
    assert not missing, f"exposed but not in docs/metrics.md: {missing}"
    stale = sorted(set(documented) - set(types))
    assert not stale, f"in docs/metrics.md but not exposed: {stale}"
    wrong = {n: (documented[n], t) for n, t in types.items() if documented[n] != t}
    assert not wrong, f"documented type differs from the exposed one: {wrong}"


# ---------------------------------------------------------------------- pieces


def test_histogram_buckets_are_cumulative_with_inclusive_upper_bounds() -> None:
    h = Histogram(exponential_buckets(0.001, 2, 3))  # 0.001, 0.002, 0.004
    for v in (0.0005, 0.001, 0.0015, 0.004, 0.5):
        h.observe(v)
    assert h.buckets() == [("0.001", 2), ("0.002", 3), ("0.004", 4), ("+Inf", 5)]
    assert h.count == 5
    assert h.total == pytest.approx(0.507)


class BrokenMachine(RegisterMachine):
    def apply(self, entry: Entry) -> Any:
        if entry.data.endswith(b"boom"):
            raise RuntimeError("a bug in apply")
        return super().apply(entry)


async def test_an_apply_failure_is_logged_with_term_and_index_and_stops_the_loop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    logs = Capture("m1")
    core = MemberCore(Config(id=1, voters=(1,), election_ticks=10), MemoryStorage(),
                      BrokenMachine(), random.Random(1))
    loop = RaftLoop(core, lambda msgs: None, tick_seconds=0.1, run_blocking=run_inline,
                    log=logs.log)
    with pytest.raises(ExceptionGroup) as stopped:  # noqa: PT012
        async with trio.open_nursery() as nursery:
            await nursery.start(loop.run)
            while not core.is_leader:  # noqa: ASYNC110 - virtual time, autojump clock
                await trio.sleep(0.1)
            await loop.propose(encode_put(b"k", b"v"))
            good = core.applied
            await loop.propose(encode_put(b"k", b"boom"))
    assert stopped.group_contains(RuntimeError, match="a bug in apply")
    (failed,) = logs.events("apply failed; stopping the member")
    assert failed["member"] == "m1"
    assert failed["index"] == good + 1
    assert failed["term"] == core.term
    assert failed["log_level"] == "error"


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)
