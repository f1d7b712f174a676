"""Scale targets (issue 12) on a 3-member loopback cluster of real ``discoverd serve``
processes (``discoverd.testing.cluster.ProcessCluster``; discoverd's defaults: heartbeat
100 ms, election 1000 ms, fsync per Ready, --snapshot-count 10000; ``--log-format json`` so
that the "snapshot saved" lines can be read back).

``keys`` — 1,000,000 keys of 256 B. Phases (``--phases``, default all, in this order):

* ``load``: txns of --batch puts (default 128 = the default --max-txn-ops) through
  ``discoverd.sdk.AsyncClient`` (--load-clients clients x --load-tasks txns in flight, the
  leader's endpoint first); load time and rate, then every member's RSS (psutil).
* ``snapshot``: --writers closed-loop SDK put loops (256 B) run while the members take their
  own Raft snapshot (every 10,000 applied entries: the writers cause it) — until every member
  has logged a new "snapshot saved" — and then (``backup``, if asked) while ``snapshot save``
  (``AsyncClient.snapshot_save``) streams the leader's store to a file. For each window: the
  largest gap between successive completed puts, put latency p50/p99/max, leader changes
  (``discoverd_server_leader_changes_seen_total`` and terms), each member's snapshot
  duration = the "snapshot saved" line's ``encode_ms`` (the forked child building and
  writing the file) + ``write_ms`` (checking its CRC and recording it in the WAL).
* ``restart``: SIGKILL one member (a follower unless --restart-member leader), put a marker
  key through the others, start it again; time until it answers ``status``, a linearizable
  get of the marker and a serializable get that shows it; its RSS then and 5 s later.

The cluster's data and ports are kept in ``DIR/keys/`` (``state.json``), so phases can run
as separate short invocations: a later ``keys`` run starts the same members on the same data
(the time that takes is reported as ``cluster_start``) and ``load`` adds keys up to --keys.
``--fresh`` starts over. Members are always killed at the end of a run.

``registrations`` — --processes subprocesses (this script's ``_registrant`` mode), each an
``AsyncClient`` registering --per-process services (``client.register(..., ttl=10)``, each
on its own lease renewed every ttl/3 by the SDK), endpoints rotated so the connections
spread over the members. Once all are registered and --settle seconds passed, a --hold
window: CPU seconds per second of each member and of all clients (psutil), RSS, the count of
``/services/`` keys every 10 s and at the end, keep-alive errors / lost leases reported by
each client (the SDK's ``discoverd.sdk`` log records). Clients start --start-parallel at a
time (all at once, 100 interpreters importing on 2 cores starve the members); while they
register, a ramp table samples CPU and the registration count every --sample-every s;
``--stall-probe`` times a ``status`` to each member every 0.1 s and ``py-spy dump``s a member
whose answer takes > 0.3 s (its event loop is stalled: what is it doing?); ``--profile``
py-spy records the leader and a follower over the hold window.

    python benchmarks/scale.py keys --keys 20000 --fresh -o /tmp/k.json
    python benchmarks/scale.py keys --phases snapshot,backup,restart
    python benchmarks/scale.py registrations --processes 10 --per-process 50 --hold 20

Ports come from --ports (default 31000-31999). Data under --dir (default
``$BENCH_LAB/scale`` or ``/tmp/scale``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import json
import logging
import os
import random
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import benchutil
import cbor2
import psutil
from raft_commit import log, start_py_spy, summarize_profile

import discoverd.testing.cluster as cluster_mod
from discoverd.errors import DiscoverdError
from discoverd.sdk import AsyncClient, Op
from discoverd.testing.cluster import ClientFailure, MemberProcess, ProcessCluster, wait_for

HEARTBEAT_MS = 100  # discoverd's defaults
ELECTION_MS = 1000
KEY_PREFIX = b"/scale/k/"
WRITER_PREFIX = b"/scale/w/"
MARKER_KEY = b"/scale/marker"
SERVICES = (b"/services/", b"/services0")
COMMAND_TIMEOUT = 10.0
GiB = 1024**3
MiB = 1024**2


# ----------------------------------------------------------------------------- cluster


def port_picker(spec: str) -> Callable[[], int]:
    """A ``free_port`` replacement drawing from ``LOW-HIGH`` (what ``ProcessCluster`` picks
    its ports with; it takes no port range of its own)."""
    low, high = (int(x) for x in spec.split("-"))
    taken: set[int] = set()

    def pick() -> int:
        for port in random.sample(range(low, high + 1), high + 1 - low):
            if port in taken:
                continue
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            taken.add(port)
            return port
        raise RuntimeError(f"no free port in {spec}")

    return pick


@contextlib.contextmanager
def ports_from(pick: Callable[[], int]) -> Iterator[None]:
    saved = cluster_mod.free_port
    cluster_mod.free_port = pick
    try:
        yield
    finally:
        cluster_mod.free_port = saved


def make_cluster(root: Path, token: str, pick: Callable[[], int]) -> ProcessCluster:
    with ports_from(pick):
        return ProcessCluster(root, 3, token=token, heartbeat_ms=HEARTBEAT_MS,
                              election_ms=ELECTION_MS, extra_args=["--log-format", "json"])


def endpoints_of(members: Sequence[MemberProcess]) -> list[str]:
    return [f"127.0.0.1:{m.client_port}" for m in members]


def leader_first(cluster: ProcessCluster, leader: MemberProcess) -> list[str]:
    return endpoints_of([leader, *(m for m in cluster.members if m is not leader)])


def rss_mib(m: MemberProcess) -> float:
    assert m.proc is not None
    return float(psutil.Process(m.proc.pid).memory_info().rss) / MiB


def metrics(m: MemberProcess) -> dict[str, float]:
    """The member's ``/metrics`` (client port), unlabelled samples and ``_sum``/``_count``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{m.client_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or "{" in line:
            continue
        name, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            out[name] = float(value)
    return out


SNAP_MARSHAL = "discoverd_debugging_snap_save_marshalling_duration_seconds"
LEADER_CHANGES = "discoverd_server_leader_changes_seen_total"


def snapshot_lines(m: MemberProcess) -> list[dict[str, Any]]:
    """The member's "snapshot saved" log records (``--log-format json``)."""
    out = []
    for line in m.log_text().splitlines():
        if '"snapshot saved"' in line:
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def wall_of(record: dict[str, Any]) -> float:
    ts = str(record.get("timestamp", ""))
    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() if ts else 0.0


def native_get(m: MemberProcess, key: bytes, *, serializable: bool) -> bytes | None:
    with m.client(timeout=2.0) as c:
        value: bytes | None = c.get(key, serializable=serializable)
        return value


def count_range(m: MemberProcess, key: bytes, range_end: bytes) -> int:
    with m.client(timeout=10.0) as c:
        return int(c.call("range", key=key, range_end=range_end, count_only=True)["count"])


def key_for(i: int) -> bytes:
    return KEY_PREFIX + b"%07d" % i


def value_for(i: int, size: int) -> bytes:
    head = b"%010d:" % i
    return head + b"v" * max(0, size - len(head))


# ----------------------------------------------------------------------------- keys: load


async def load_keys(endpoints: list[str], first: int, last: int, args: argparse.Namespace
                    ) -> dict[str, Any]:
    batches = iter(range(first, last, args.batch))
    errors: Counter[str] = Counter()
    done = [0]
    t0 = time.perf_counter()

    async def worker(client: AsyncClient) -> None:
        for b in batches:  # shared: each batch is taken by one worker
            ops = [Op.put(key_for(i), value_for(i, args.value_size))
                   for i in range(b, min(b + args.batch, last))]
            for attempt in range(10):
                try:
                    await client.txn([], ops)  # the same puts again: harmless if it applied
                    break
                except DiscoverdError as e:
                    errors[type(e).__name__] += 1
                    await anyio.sleep(0.1 * (attempt + 1))
            else:
                raise RuntimeError(f"load: batch at {b} failed 10 times ({dict(errors)})")
            done[0] += len(ops)

    async def progress() -> None:
        while True:
            await anyio.sleep(15)
            el = time.perf_counter() - t0
            log(f"  load: {first + done[0]:,} keys ({done[0] / el:,.0f}/s), {el:.0f}s")

    async def group() -> None:
        async with AsyncClient(endpoints, command_timeout=COMMAND_TIMEOUT) as client, \
                anyio.create_task_group() as tg:
            for _ in range(args.load_tasks):
                tg.start_soon(worker, client)

    async with anyio.create_task_group() as outer:
        outer.start_soon(progress)
        async with anyio.create_task_group() as tg:
            for _ in range(args.load_clients):
                tg.start_soon(group)
        outer.cancel_scope.cancel()
    seconds = time.perf_counter() - t0
    return {"keys_added": last - first, "seconds": seconds,
            "keys_per_s": (last - first) / seconds if seconds else 0.0,
            "txns": (last - first + args.batch - 1) // args.batch, "errors": dict(errors)}


# ----------------------------------------------------------------------------- keys: snapshot


@dataclass
class Writes:
    done: list[tuple[float, float]] = field(default_factory=list)  # (completed at, latency)
    errors: Counter[str] = field(default_factory=Counter)


async def writer(endpoints: list[str], wid: int, value: bytes, stop: anyio.Event,
                 out: Writes) -> None:
    async with AsyncClient(endpoints, command_timeout=COMMAND_TIMEOUT) as client:
        i = 0
        while not stop.is_set():
            t = time.perf_counter()
            try:
                await client.put(WRITER_PREFIX + b"%d/%04d" % (wid, i % 1000), value)
            except DiscoverdError as e:
                out.errors[type(e).__name__] += 1
                await anyio.sleep(0.01)
                continue
            now = time.perf_counter()
            out.done.append((now, now - t))
            i += 1


def window_stats(w: Writes, start: float, end: float) -> dict[str, Any]:
    """Puts completed in [start, end]: count, rate, latency, the largest gap between
    successive completions (and the window's edges), and when it began (s after start)."""
    done = sorted((at, lat) for at, lat in w.done if start <= at <= end)
    times = [start, *(at for at, _ in done), end]
    gaps = [(b - a, a) for a, b in itertools.pairwise(times)]
    gap, gap_at = max(gaps) if gaps else (end - start, start)
    lat = benchutil.latency_summary([lat for _, lat in done])
    return {"seconds": end - start, "puts": len(done),
            "puts_per_s": len(done) / (end - start) if end > start else 0.0,
            "max_gap_s": gap, "max_gap_starts_at_s": gap_at - start,
            "p50_ms": lat["p50_us"] / 1000, "p99_ms": lat["p99_us"] / 1000,
            "max_ms": lat["max_us"] / 1000}


async def snapshot_session(cluster: ProcessCluster, leader: MemberProcess,
                           args: argparse.Namespace, root: Path) -> dict[str, Any]:
    members = cluster.members
    before_lines = {m.name: len(snapshot_lines(m)) for m in members}
    before_metrics = {m.name: metrics(m) for m in members}
    before_status = {m.name: m.status() for m in members}
    eps = leader_first(cluster, leader)
    value = b"w" * args.value_size
    writes = Writes()
    stop = anyio.Event()
    wall_minus_perf = time.time() - time.perf_counter()
    result: dict[str, Any] = {"writers": args.writers}
    spy = (start_py_spy(leader.proc.pid, root / f"snapshot-{leader.name}.pyspy",
                        seconds=int(args.snapshot_timeout + 2 * args.tail + 30))
           if args.profile and leader.proc is not None else None)
    rss_samples: list[tuple[float, dict[str, tuple[float, float]]]] = []

    async def sample_rss() -> None:
        # Each member's RSS and the summed RSS of its children (the forked snapshot
        # writer) every 0.2 s (issue 12: RSS during the snapshot).
        while not stop.is_set():
            row: dict[str, tuple[float, float]] = {}
            for m in members:
                with contextlib.suppress(psutil.Error, AssertionError):
                    assert m.proc is not None
                    p = psutil.Process(m.proc.pid)
                    kids = 0.0
                    for c in p.children(recursive=True):
                        with contextlib.suppress(psutil.Error):
                            kids += c.memory_info().rss
                    row[m.name] = (p.memory_info().rss / MiB, kids / MiB)
            rss_samples.append((time.perf_counter(), row))
            await anyio.sleep(0.2)

    async with anyio.create_task_group() as tg:
        for wid in range(args.writers):
            tg.start_soon(writer, eps, wid, value, stop, writes)
        tg.start_soon(sample_rss)
        t_start = time.perf_counter()
        new: dict[str, list[dict[str, Any]]] = {}
        with anyio.move_on_after(args.snapshot_timeout):
            while True:
                await anyio.sleep(0.25)
                new = {m.name: snapshot_lines(m)[before_lines[m.name]:] for m in members}
                if all(new.values()):
                    break
        t_auto = time.perf_counter()
        log(f"  snapshot: new snapshots {({k: len(v) for k, v in new.items()})} after "
            f"{t_auto - t_start:.1f}s of writes")
        await anyio.sleep(args.tail)
        t_auto_end = time.perf_counter()
        if "backup" in args.phases:
            path = root / "backup.snap"
            t_b0 = time.perf_counter()
            async with AsyncClient(endpoints_of([leader]), command_timeout=120) as c:
                saved = await c.snapshot_save(path)
            t_b1 = time.perf_counter()
            await anyio.sleep(args.tail)
            t_b_end = time.perf_counter()
            result["backup"] = {"seconds": t_b1 - t_b0, "file_bytes": saved.file_size,
                                "keys": saved.header.keys,
                                "writes": window_stats(writes, t_b0, t_b_end)}
            path.unlink(missing_ok=True)
            log(f"  backup (snapshot save from {leader.name}): {t_b1 - t_b0:.2f}s, "
                f"{saved.file_size / MiB:.0f} MiB")
        stop.set()
    if spy is not None:
        spy.send_signal(signal.SIGINT)  # py-spy writes what it recorded on Ctrl-C
        spy.wait(60)
        result["profile"] = summarize_profile(root / f"snapshot-{leader.name}.pyspy", top=15)
    after_metrics = {m.name: metrics(m) for m in members}
    after_status = {m.name: m.status() for m in members}
    snaps: dict[str, Any] = {}
    for m in members:
        lines = snapshot_lines(m)[before_lines[m.name]:]
        mb, ma = before_metrics[m.name], after_metrics[m.name]
        n_marshal = ma.get(SNAP_MARSHAL + "_count", 0) - mb.get(SNAP_MARSHAL + "_count", 0)
        marshal = ma.get(SNAP_MARSHAL + "_sum", 0) - mb.get(SNAP_MARSHAL + "_sum", 0)
        snaps[m.name] = {
            "role": before_status[m.name]["role"],
            "saved": len(lines),
            "marshal_s_total": marshal, "marshals": int(n_marshal),
            "write_s": [float(r.get("write_ms", 0)) / 1000 for r in lines],
            "encode_s": [float(r.get("encode_ms", 0)) / 1000 for r in lines],
            "bytes": [int(r.get("bytes", 0)) for r in lines],
            "index": [r.get("index") for r in lines],
            "saved_at_s": [wall_of(r) - wall_minus_perf - t_start for r in lines],
            "leader_changes": ma.get(LEADER_CHANGES, 0) - mb.get(LEADER_CHANGES, 0),
            "term": [before_status[m.name]["raft_term"], after_status[m.name]["raft_term"]],
        }
    result["auto"] = {"members": snaps,
                      "seconds_until_all_saved": t_auto - t_start,
                      "writes": window_stats(writes, t_start, t_auto_end)}
    result["writes_all"] = window_stats(writes, t_start, time.perf_counter())
    result["write_errors"] = dict(writes.errors)
    rss_during: dict[str, Any] = {}
    for m in members:
        pts = [(t - t_start, row[m.name]) for t, row in rss_samples if m.name in row]
        if pts:
            rss_during[m.name] = {
                "first_mib": pts[0][1][0], "max_mib": max(v[0] for _, v in pts),
                "max_at_s": max(pts, key=lambda x: x[1][0])[0], "last_mib": pts[-1][1][0],
                "max_child_mib": max(v[1] for _, v in pts),
                "max_member_plus_child_mib": max(v[0] + v[1] for _, v in pts)}
    result["rss_during"] = rss_during
    result["leader_changes"] = sum(s["leader_changes"] for s in snaps.values())
    result["term_changed"] = any(s["term"][0] != s["term"][1] for s in snaps.values())
    return result


# ----------------------------------------------------------------------------- keys: restart


def restart_one(cluster: ProcessCluster, which: str) -> dict[str, Any]:
    leader = cluster.wait_for_leader(timeout=60)
    m = leader if which == "leader" else next(x for x in cluster.members if x is not leader)
    rss_before = rss_mib(m)
    cluster.kill(m)
    others = [x for x in cluster.members if x is not m]
    marker = b"marker-%f" % time.time()

    def put_marker() -> bool:
        lead = cluster.leader(others)
        if lead is None:
            return False
        with lead.client(timeout=5.0) as c:
            c.put(MARKER_KEY, marker)
        return True

    wait_for("the marker put", put_marker, timeout=60)
    t0 = time.perf_counter()
    cluster.start(m)
    t_status = wait_for(f"{m.name} status", lambda: m.status() and time.perf_counter(),
                        timeout=300, interval=0.02) - t0
    t_lin = wait_for(f"{m.name} linearizable get",
                     lambda: native_get(m, MARKER_KEY, serializable=False) == marker
                     and time.perf_counter(), timeout=300, interval=0.02) - t0
    t_ser = wait_for(f"{m.name} serializable get of the marker",
                     lambda: native_get(m, MARKER_KEY, serializable=True) == marker
                     and time.perf_counter(), timeout=300, interval=0.02) - t0
    rss_serving = rss_mib(m)
    time.sleep(5)
    return {"member": m.name, "role": "leader" if m is leader else "follower",
            "rss_before_mib": rss_before, "status_s": t_status, "linearizable_get_s": t_lin,
            "serializable_marker_s": t_ser, "serving_s": max(t_lin, t_ser),
            "rss_serving_mib": rss_serving, "rss_after_5s_mib": rss_mib(m),
            "snapshots_on_disk": sorted(p.name for p in (m.data_dir / "member" / "snap")
                                        .glob("*.snap"))}


# ----------------------------------------------------------------------------- keys: main


def cmd_keys(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(args.dir) / "keys"
    state_path = root / "state.json"
    if args.fresh and root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = (json.loads(state_path.read_text()) if state_path.exists()
                             else {"token": f"scale-{os.getpid()}", "ports": [], "keys": 0})
    reused = bool(state["ports"])
    if reused:
        saved = iter(p for pair in state["ports"] for p in pair)
        cluster = make_cluster(root, state["token"], lambda: next(saved))
    else:
        cluster = make_cluster(root, state["token"], port_picker(args.ports))
        state["ports"] = [[m.client_port, m.peer_port] for m in cluster.members]
        state_path.write_text(json.dumps(state))
    out: dict[str, Any] = {"dir": str(root), "keys_before": state["keys"],
                           "value_size": args.value_size, "phases": args.phases}
    try:
        t0 = time.perf_counter()
        cluster.start_all()
        leader = cluster.wait_for_leader(timeout=300)
        if reused and state["keys"]:
            last = key_for(state["keys"] - 1)
            wait_for("a linearizable get on every member", lambda: all(
                native_get(m, last, serializable=False) is not None for m in cluster.members),
                timeout=300)
        out["cluster_start"] = {"reused_data": reused, "seconds": time.perf_counter() - t0,
                                "rss_mib": {m.name: rss_mib(m) for m in cluster.members}}
        log(f"  cluster up ({'existing data' if reused else 'new'}) in "
            f"{out['cluster_start']['seconds']:.1f}s, leader {leader.name}, ports "
            f"{state['ports']}")
        if "load" in args.phases and state["keys"] < args.keys:
            eps = leader_first(cluster, leader)
            out["load"] = anyio.run(load_keys, eps, state["keys"], args.keys, args,
                                    backend="trio")
            state["keys"] = args.keys
            state_path.write_text(json.dumps(state))
            load = out["load"]
            log(f"  loaded {load['keys_added']:,} keys in {load['seconds']:.1f}s "
                f"({load['keys_per_s']:,.0f}/s)")
        out["keys"] = state["keys"]
        out["rss_mib"] = {m.name: rss_mib(m) for m in cluster.members}
        lm = metrics(cluster.wait_for_leader(timeout=60))
        out["store"] = {"keys": lm.get("discoverd_debugging_mvcc_keys_total"),
                        "db_bytes": lm.get("discoverd_mvcc_db_total_size_in_bytes"),
                        "revision": lm.get("discoverd_debugging_mvcc_current_revision")}
        log(f"  RSS MiB {({k: round(v) for k, v in out['rss_mib'].items()})}, store "
            f"{out['store']}")
        if "snapshot" in args.phases or "backup" in args.phases:
            leader = cluster.wait_for_leader(timeout=60)
            with contextlib.ExitStack() as stack:
                probe = (stack.enter_context(StallProbe(cluster, root, max_dumps=10))
                         if args.stall_probe else None)
                out["snapshot"] = anyio.run(snapshot_session, cluster, leader, args, root,
                                            backend="trio")
            if probe is not None:
                out["snapshot"]["stalls"] = probe.summary()
            out["rss_after_snapshot_mib"] = {m.name: rss_mib(m) for m in cluster.members}
        if "restart" in args.phases:
            out["restart"] = restart_one(cluster, args.restart_member)
            out["rss_after_restart_mib"] = {m.name: rss_mib(m) for m in cluster.members}
    finally:
        cluster.close()
    out["verdicts"] = keys_verdicts(out)
    return out


def keys_verdicts(out: dict[str, Any]) -> dict[str, Any]:
    v: dict[str, Any] = {}
    rss = [*out.get("rss_mib", {}).values(), *out.get("rss_after_snapshot_mib", {}).values(),
           *out.get("rss_after_restart_mib", {}).values()]
    if rss:
        v["rss_le_1GiB"] = max(rss) <= 1024
    snap = out.get("snapshot")
    if snap:
        members = snap["auto"]["members"].values()
        # Forked snapshots: encode_ms is the child's build + file write (it includes the
        # marshalling metric), write_ms the parent's read-back + WAL marker.
        longest = max((e + w for s in members for e, w in zip(s.get("encode_s", []),
                                                                 s["write_s"], strict=True)),
                      default=0)
        v["auto_snapshot_le_10s"] = all(s["saved"] for s in members) and longest <= 10
        v["auto_snapshot_max_gap_le_1s"] = snap["auto"]["writes"]["max_gap_s"] <= 1.0
        if "backup" in snap:
            v["backup_le_10s"] = snap["backup"]["seconds"] <= 10
            v["backup_max_gap_le_1s"] = snap["backup"]["writes"]["max_gap_s"] <= 1.0
        v["no_leader_change"] = not snap["leader_changes"] and not snap["term_changed"]
    if "restart" in out:
        v["restart_le_15s"] = out["restart"]["serving_s"] <= 15
    return v


def print_keys(out: dict[str, Any]) -> None:
    print(f"keys: {out.get('keys', 0):,} x {out['value_size']} B, dir {out['dir']}")
    cs = out["cluster_start"]
    print(f"cluster start ({'existing data' if cs['reused_data'] else 'new'}): "
          f"{cs['seconds']:.1f}s")
    if "load" in out:
        ld = out["load"]
        print(f"load: {ld['keys_added']:,} keys in {ld['seconds']:.1f}s = "
              f"{ld['keys_per_s']:,.0f} keys/s ({ld['txns']} txns), errors {ld['errors']}")
    print(f"store: {out['store']}")
    print("RSS MiB after load: " + ", ".join(f"{k} {v:.0f}" for k, v in out["rss_mib"].items()))
    snap = out.get("snapshot")
    if snap:
        rows = []
        for name, s in snap["auto"]["members"].items():
            rows.append([name, s["role"], s["saved"], s["marshal_s_total"],
                         sum(s.get("encode_s", [])), sum(s["write_s"]),
                         sum(s["bytes"]) / MiB, " ".join(f"{x:.1f}" for x in s["saved_at_s"]),
                         s["leader_changes"], f"{s['term'][0]}->{s['term'][1]}"])
        print(f"Raft snapshots while {snap['writers']} writers put "
              f"({snap['auto']['seconds_until_all_saved']:.1f}s until all saved):")
        benchutil.print_table(["member", "role", "saved", "marshal s", "encode s",
                               "write s", "MiB",
                               "saved at s", "leader chg", "term"], rows)
        wrows = [["auto snapshot", *_wcols(snap["auto"]["writes"])]]
        if "backup" in snap:
            b = snap["backup"]
            print(f"snapshot save (backup) from the leader: {b['seconds']:.2f}s, "
                  f"{b['file_bytes'] / MiB:.0f} MiB, {b['keys']:,} keys")
            wrows.append(["backup", *_wcols(b["writes"])])
        wrows.append(["whole session", *_wcols(snap["writes_all"])])
        benchutil.print_table(["window", "s", "puts", "puts/s", "max gap s", "gap at s",
                               "p50 ms", "p99 ms", "max ms"], wrows)
        print(f"leader changes: {snap['leader_changes']}, term changed: "
              f"{snap['term_changed']}, write errors {snap['write_errors']}")
        if "profile" in snap:
            print(snap["profile"])
        for name, r in snap.get("rss_during", {}).items():
            print(f"RSS during snapshot {name}: first {r['first_mib']:.0f}, max "
                  f"{r['max_mib']:.0f} at {r['max_at_s']:.1f}s, last {r['last_mib']:.0f}, "
                  f"child max {r['max_child_mib']:.0f}, member+child max "
                  f"{r['max_member_plus_child_mib']:.0f} MiB")
        for name, st in snap.get("stalls", {}).items():
            print(f"stall probe {name}: {st['probes']} probes, {st['over_0.3s']} > 0.3 s, "
                  f"{st['over_1s']} > 1 s, worst (t, s) {st['worst']}")
            for t, stk in st["dumps"]:
                print(f"  py-spy dump at {t}s: " + " <- ".join(stk[:8]))
        print("RSS MiB after snapshot: " + ", ".join(
            f"{k} {v:.0f}" for k, v in out["rss_after_snapshot_mib"].items()))
    if "restart" in out:
        r = out["restart"]
        print(f"restart of {r['member']} ({r['role']}): status {r['status_s']:.2f}s, "
              f"linearizable get {r['linearizable_get_s']:.2f}s, serializable marker "
              f"{r['serializable_marker_s']:.2f}s -> serving {r['serving_s']:.2f}s; RSS "
              f"{r['rss_before_mib']:.0f} before, {r['rss_serving_mib']:.0f} at serving, "
              f"{r['rss_after_5s_mib']:.0f} 5 s later MiB")
    print(f"verdicts: {out['verdicts']}")


def _wcols(w: dict[str, Any]) -> list[Any]:
    return [w["seconds"], w["puts"], w["puts_per_s"], w["max_gap_s"], w["max_gap_starts_at_s"],
            w["p50_ms"], w["p99_ms"], w["max_ms"]]


# ----------------------------------------------------------------------------- registrations


class SdkLogCounter(logging.Handler):
    """Counts the SDK's keep-alive failures, lost leases and re-registrations."""

    PATTERNS = (("keepalive_errors", "keep-alive of lease"), ("lost", "lost its lease"),
                ("rewritten", "written again"), ("keeper_failed", "keeper of lease"))

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        msg = str(record.msg)
        for name, pattern in self.PATTERNS:
            if pattern in msg:
                self.counts[name] += 1
                if name == "keepalive_errors" and isinstance(record.args, tuple):
                    self.counts[f"{name}:{type(record.args[-1]).__name__}"] += 1
                return
        self.counts[f"other_{record.levelname.lower()}"] += 1


async def registrant(args: argparse.Namespace) -> None:
    """The child: register --count services, say ready, keep them alive until stdin closes,
    print what happened, exit without deregistering."""
    counter = SdkLogCounter()
    sdk_log = logging.getLogger("discoverd.sdk")
    sdk_log.addHandler(counter)
    sdk_log.setLevel(logging.DEBUG)
    sdk_log.propagate = False
    to_stderr = logging.StreamHandler(sys.stderr)
    to_stderr.setLevel(logging.WARNING)
    to_stderr.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    sdk_log.addHandler(to_stderr)
    async with AsyncClient(args.endpoints.split(","), command_timeout=COMMAND_TIMEOUT) as c:
        renewals = [0]
        keepalive = c._lease_keepalive

        async def counted(lease_id: int, *, limit: float | None = None) -> Any:
            answer = await keepalive(lease_id, limit=limit)
            renewals[0] += 1
            return answer

        setattr(c, "_lease_keepalive", counted)  # noqa: B010 - count renewals (private API)
        t0 = time.perf_counter()
        failed: Counter[str] = Counter()
        sem = anyio.Semaphore(10)
        regs: list[Any] = []

        async def one(j: int) -> None:
            async with sem:
                for _ in range(5):
                    try:
                        regs.append(await c.register(
                            f"svc-{j:03d}", ttl=args.ttl, address="127.0.0.1", port=20000 + j,
                            id=f"p{args.index:03d}"))
                        return
                    except DiscoverdError as e:
                        failed[type(e).__name__] += 1
                        await anyio.sleep(0.2)

        async with anyio.create_task_group() as tg:
            for j in range(args.count):
                tg.start_soon(one, j)
        print(json.dumps({"ready": True, "index": args.index, "registered": len(regs),
                          "register_s": time.perf_counter() - t0,
                          "register_errors": dict(failed)}), flush=True)
        renewals_at_ready, ready_at = renewals[0], time.perf_counter()
        await anyio.to_thread.run_sync(sys.stdin.buffer.read)  # until the parent closes it
        print(json.dumps({"index": args.index, "renewals": renewals[0] - renewals_at_ready,
                          "renewals_per_s": (renewals[0] - renewals_at_ready)
                          / (time.perf_counter() - ready_at),
                          "sdk_log": dict(counter.counts),
                          "lost_now": sum(1 for r in regs if r._record is not None
                                          and r._record._lease is not None
                                          and r._record._lease.lost)}), flush=True)
        os._exit(0)  # no deregistration: the leases just expire


def read_json_lines(procs: list[subprocess.Popen[bytes]], deadline: float, *,
                    spawn: Callable[[int], subprocess.Popen[bytes]] | None = None,
                    total: int = 0, parallel: int = 0) -> list[dict[str, Any]]:
    """One JSON line from each process's stdout, in any order, by ``deadline``. With
    ``spawn``: first start processes ``spawn(i)`` for i < ``total`` (appended to ``procs``),
    at most ``parallel`` (0: all) at a time that have not answered yet."""
    sel = selectors.DefaultSelector()
    got: dict[int, dict[str, Any]] = {}
    bufs: dict[int, bytes] = {}

    def watch(i: int) -> None:
        out = procs[i].stdout
        assert out is not None
        os.set_blocking(out.fileno(), False)
        sel.register(out, selectors.EVENT_READ, i)
        bufs[i] = b""

    for i in range(len(procs)):
        watch(i)
    total = max(total, len(procs))
    while len(got) < total:
        while spawn is not None and len(procs) < total and (
                not parallel or len(procs) - len(got) < parallel):
            procs.append(spawn(len(procs)))
            watch(len(procs) - 1)
        left = deadline - time.monotonic()
        if left <= 0:  # the ones that did not answer (or were never started) say so
            missing = [i for i in range(total) if i not in got]
            log(f"  no answer by the deadline from {len(missing)} clients: {missing[:10]}...")
            got.update({i: {"index": i, "error": "timeout"} for i in missing})
            break
        for key, _ in sel.select(min(left, 1.0)):
            i = int(key.data)
            chunk = os.read(key.fd, 65536)
            if not chunk:
                sel.unregister(key.fileobj)
                if i not in got:
                    got[i] = {"index": i, "error": "exited", "rc": procs[i].poll()}
                continue
            bufs[i] += chunk
            if b"\n" in bufs[i] and i not in got:
                line, _, bufs[i] = bufs[i].partition(b"\n")
                got[i] = json.loads(line)
                sel.unregister(key.fileobj)
    sel.close()
    return [got[i] for i in range(total)]


def cpu_seconds(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


class Sampler:
    """A thread sampling, every ``every`` seconds: CPU (cores) of each member and of all the
    client processes, and the number of ``/services/`` keys (a serializable count on the
    first member that answers) — the ramp while clients register."""

    def __init__(self, cluster: ProcessCluster, procs: list[subprocess.Popen[bytes]],
                 every: float) -> None:
        self.cluster, self.procs, self.every = cluster, procs, every
        self.rows: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _cpu(self) -> tuple[dict[str, float], float]:
        members = {m.name: cpu_seconds([m.proc.pid]) for m in self.cluster.members
                   if m.proc is not None}
        return members, cpu_seconds([p.pid for p in list(self.procs)])

    def _count(self) -> int:
        for m in self.cluster.members:
            with contextlib.suppress(OSError, ClientFailure, KeyError), \
                    m.client(timeout=2.0) as c:
                return int(c.call("range", key=SERVICES[0], range_end=SERVICES[1],
                                  count_only=True, serializable=True)["count"])
        return -1

    def _run(self) -> None:
        t0 = last_t = time.perf_counter()
        last_m, last_c = self._cpu()
        while not self._stop.wait(self.every):
            now = time.perf_counter()
            mem, cli = self._cpu()
            dt_ = now - last_t
            self.rows.append({
                "t": round(now - t0, 1), "registered": self._count(),
                "members": {n: round((v - last_m.get(n, v)) / dt_, 3) for n, v in mem.items()},
                "clients": round(max(0.0, cli - last_c) / dt_, 3),
                "processes": len(self.procs)})
            last_t, last_m, last_c = now, mem, cli


class StallProbe:
    """One thread per member asking ``status`` every ``every`` s. An answer later than
    ``threshold`` s means the member's event loop is stalled: ``py-spy dump`` it at once
    (while it still is; at most ``max_dumps`` per member) to see what it is doing."""

    def __init__(self, cluster: ProcessCluster, root: Path, *, threshold: float = 0.3,
                 every: float = 0.1, max_dumps: int = 6) -> None:
        self.cluster, self.root = cluster, root
        self.threshold, self.every, self.max_dumps = threshold, every, max_dumps
        self.lat: dict[str, list[tuple[float, float]]] = {m.name: [] for m in cluster.members}
        self.dumps: dict[str, list[tuple[float, str]]] = {m.name: [] for m in cluster.members}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(m,), daemon=True)
                         for m in cluster.members]
        self.t0 = time.perf_counter()

    def __enter__(self) -> StallProbe:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _dump(self, m: MemberProcess) -> str:
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if m.proc is None:
            return ""
        return subprocess.run([exe, "dump", "--pid", str(m.proc.pid)], capture_output=True,
                              text=True, timeout=30, check=False).stdout

    def _run(self, m: MemberProcess) -> None:
        client = None
        while not self._stop.wait(self.every):
            try:
                if client is None:
                    client = m.client(timeout=10.0)
                sent = time.perf_counter()
                client.sock.settimeout(self.threshold)
                client.send_raw(cbor2.dumps({"id": 1, "op": "status"}))
                try:
                    client.sock.recv(4, socket.MSG_PEEK)
                except TimeoutError:
                    if len(self.dumps[m.name]) < self.max_dumps:
                        self.dumps[m.name].append((sent - self.t0, self._dump(m)))
                client.sock.settimeout(10.0)
                client.read_frame()
                self.lat[m.name].append((sent - self.t0, time.perf_counter() - sent))
            except (OSError, ValueError):
                if client is not None:
                    client.close()
                client = None

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, lat in self.lat.items():
            worst = sorted(lat, key=lambda x: -x[1])[:5]
            out[name] = {"probes": len(lat),
                         "over_0.3s": sum(1 for _, x in lat if x > 0.3),
                         "over_1s": sum(1 for _, x in lat if x > 1.0),
                         "worst": [(round(t, 1), round(x, 2)) for t, x in worst],
                         "dumps": [(round(t, 1), _main_thread_stack(d))
                                   for t, d in self.dumps[name]]}
        return out


def _main_thread_stack(dump: str, depth: int = 14) -> list[str]:
    """The innermost frames of the first thread of a ``py-spy dump``."""
    frames: list[str] = []
    for line in dump.splitlines()[1:]:
        if line.startswith("Thread ") and frames:
            break
        if line.startswith("    "):
            frames.append(line.strip())
    return frames[:depth]


def hold_window(cluster: ProcessCluster, procs: list[subprocess.Popen[bytes]],
                args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """The measured window once every client registered (raises if the cluster has no
    agreed leader or does not answer)."""
    out: dict[str, Any] = {}
    mpids = {m.name: m.proc.pid for m in cluster.members if m.proc is not None}
    cpids = [p.pid for p in procs]
    leader = cluster.wait_for_leader(timeout=60)
    follower = next(m for m in cluster.members if m is not leader)
    spies = [(m, start_py_spy(m.proc.pid, root / f"hold-{m.name}.pyspy",
                              seconds=int(args.hold)))
             for m in (leader, follower) if args.profile and m.proc is not None]
    lm0 = metrics(leader)
    changes1 = sum(metrics(m).get(LEADER_CHANGES, 0) for m in cluster.members)
    m_cpu0 = {n: cpu_seconds([p]) for n, p in mpids.items()}
    c_cpu0, busy0, w0 = cpu_seconds(cpids), benchutil.system_busy_seconds(), \
        time.perf_counter()
    counts: list[tuple[float, int]] = []
    while (now := time.perf_counter()) < w0 + args.hold:
        counts.append((now - w0, count_range(leader, *SERVICES)))
        time.sleep(min(10.0, max(0.0, w0 + args.hold - time.perf_counter())))
    m_cpu1 = {n: cpu_seconds([p]) for n, p in mpids.items()}
    c_cpu1, busy1, w1 = cpu_seconds(cpids), benchutil.system_busy_seconds(), \
        time.perf_counter()
    window = w1 - w0
    final = count_range(leader, *SERVICES)
    lm1 = metrics(leader)
    member_cpu = {n: (m_cpu1[n] - m_cpu0[n]) / window for n in mpids}
    out["window"] = {
        "seconds": window,
        "member_cpu_per_s": member_cpu,
        "members_cpu_per_s_total": sum(member_cpu.values()),
        "clients_cpu_per_s_total": (c_cpu1 - c_cpu0) / window,
        "machine_busy_cpu_per_s": (busy1 - busy0) / window,
        "member_rss_mib": {m.name: rss_mib(m) for m in cluster.members},
        "clients_rss_mib_total": sum(
            psutil.Process(p).memory_info().rss for p in cpids) / MiB,
        "counts": counts, "final_count": final,
        "leader": leader.name,
        "leader_changes": sum(metrics(m).get(LEADER_CHANGES, 0)
                              for m in cluster.members) - changes1,
        "leases_active": lm1.get("discoverd_lease_active"),
        "leases_expired": lm1.get("discoverd_debugging_server_lease_expired_total",
                                  0) - lm0.get(
            "discoverd_debugging_server_lease_expired_total", 0),
        "proposals_per_s": (lm1.get("discoverd_server_proposals_committed_total", 0)
                            - lm0.get("discoverd_server_proposals_committed_total",
                                      0)) / window,
    }
    for m, spy in spies:
        if spy is not None:
            spy.wait(60)
            out.setdefault("profiles", {})[m.name] = summarize_profile(
                root / f"hold-{m.name}.pyspy", top=25)
    return out


def cmd_registrations(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(args.dir) / f"registrations-{os.getpid()}"
    root.mkdir(parents=True, exist_ok=True)
    cluster = make_cluster(root, f"scale-reg-{os.getpid()}", port_picker(args.ports))
    procs: list[subprocess.Popen[bytes]] = []
    out: dict[str, Any] = {"processes": args.processes, "per_process": args.per_process,
                           "ttl": args.ttl, "dir": str(root)}
    expected = args.processes * args.per_process
    try:
        with cluster.started():
            eps = endpoints_of(cluster.members)
            t0 = time.perf_counter()
            changes0 = sum(metrics(m).get(LEADER_CHANGES, 0) for m in cluster.members)

            def spawn(i: int) -> subprocess.Popen[bytes]:
                rotated = eps[i % 3:] + eps[:i % 3]
                with (root / f"client-{i:03d}.err").open("wb") as err:
                    return subprocess.Popen(
                        [sys.executable, __file__, "_registrant", "--index", str(i),
                         "--count", str(args.per_process), "--ttl", str(args.ttl),
                         "--endpoints", ",".join(rotated)],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                        preexec_fn=(lambda: os.nice(args.nice)) if args.nice else None)

            with contextlib.ExitStack() as stack:
                ramp = stack.enter_context(Sampler(cluster, procs, args.sample_every))
                probe = (stack.enter_context(StallProbe(cluster, root))
                         if args.stall_probe else None)
                ready = read_json_lines(procs, time.monotonic() + args.start_timeout,
                                        spawn=spawn, total=args.processes,
                                        parallel=args.start_parallel)
            out["ramp"] = ramp.rows
            if probe is not None:
                out["stalls"] = probe.summary()
            out["register"] = {
                "seconds_all_ready": time.perf_counter() - t0,
                "registered": sum(int(r.get("registered", 0)) for r in ready),
                "errors": sum((Counter(r.get("register_errors", {})) for r in ready),
                              Counter()),
                "not_ready": [r for r in ready if not r.get("ready")],
                "start_parallel": args.start_parallel,
                "leader_changes": sum(metrics(m).get(LEADER_CHANGES, 0)
                                      for m in cluster.members) - changes0}
            log(f"  {out['register']['registered']:,} registered by {len(procs)} clients in "
                f"{out['register']['seconds_all_ready']:.1f}s; settling {args.settle}s")
            time.sleep(args.settle)
            try:
                out.update(hold_window(cluster, procs, args, root))
            except (AssertionError, OSError, ClientFailure, psutil.Error) as e:
                out["window"] = {"error": f"{type(e).__name__}: {e}"}
                log(f"  hold window failed: {e}")
            for p in procs:
                assert p.stdin is not None
                p.stdin.close()
            finals = read_json_lines(procs, time.monotonic() + 60)
            sdk: Counter[str] = Counter()
            for f in finals:
                sdk.update(f.get("sdk_log", {}))
            renewals = sum(int(f.get("renewals", 0)) for f in finals)
            out["clients"] = {"sdk_log": dict(sdk), "renewals": renewals,
                              "renewals_per_s": sum(float(f.get("renewals_per_s", 0))
                                                    for f in finals),
                              "lost_now": sum(int(f.get("lost_now", 0)) for f in finals),
                              "errors": [f for f in finals if "error" in f][:5]}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)
    w = out.get("window", {})
    out["verdicts"] = {
        "members_cpu_lt_1_core": w.get("members_cpu_per_s_total", 9.0) < 1.0,
        "all_present": w.get("final_count") == expected
        and all(c == expected for _, c in w.get("counts", [])),
        "no_keepalive_errors": not out.get("clients", {}).get("sdk_log"),
    }
    return out


def print_registrations(out: dict[str, Any]) -> None:
    r, w, c = out["register"], out["window"], out.get("clients", {})
    print("ramp while registering (CPU in cores):")
    names = sorted(out["ramp"][0]["members"]) if out["ramp"] else []
    benchutil.print_table(
        ["t s", "registered", "clients", *names, "clients CPU"],
        [[x["t"], x["registered"], x["processes"], *(x["members"][n] for n in
                                                    sorted(x["members"])), x["clients"]]
         for x in out["ramp"]])
    print(f"registrations: {out['processes']} processes x {out['per_process']} (TTL "
          f"{out['ttl']} s): {r['registered']:,} registered, all ready after "
          f"{r['seconds_all_ready']:.1f}s ({r['start_parallel'] or 'all'} starting at once), "
          f"errors {dict(r['errors'])}, leader changes meanwhile {r['leader_changes']:.0f}")
    for name, st in out.get("stalls", {}).items():
        print(f"stall probe {name}: {st['probes']} probes, {st['over_0.3s']} > 0.3 s, "
              f"{st['over_1s']} > 1 s, worst (t, s) {st['worst']}")
        for t, stack in st["dumps"]:
            print(f"  py-spy dump at {t}s: " + " <- ".join(stack[:8]))
    if "error" in w:
        print(f"hold window: FAILED ({w['error']}); clients: {c}")
        print(f"verdicts: {out['verdicts']}")
        return
    rows = [[n, cpu * 100, w["member_rss_mib"][n]] for n, cpu in w["member_cpu_per_s"].items()]
    rows.append(["members total", w["members_cpu_per_s_total"] * 100,
                 sum(w["member_rss_mib"].values())])
    rows.append([f"{out['processes']} clients", w["clients_cpu_per_s_total"] * 100,
                 w["clients_rss_mib_total"]])
    rows.append(["machine (all CPUs busy)", w["machine_busy_cpu_per_s"] * 100, ""])
    print(f"hold window {w['seconds']:.1f}s (leader {w['leader']}):")
    benchutil.print_table(["who", "CPU % of one core", "RSS MiB"], rows)
    print(f"/services/ count over the window: "
          f"{', '.join(f'{t:.0f}s={n}' for t, n in w['counts'])}; final {w['final_count']}")
    print(f"keep-alives confirmed {c['renewals']:,} ({c['renewals_per_s']:.0f}/s); SDK log "
          f"records {c['sdk_log'] or 'none'}; leases lost at the end {c['lost_now']}; "
          f"leases expired {w['leases_expired']:.0f}, active {w['leases_active']}; leader "
          f"changes {w['leader_changes']:.0f}; proposals {w['proposals_per_s']:.1f}/s")
    for name, text in out.get("profiles", {}).items():
        print(f"py-spy of {name} over the hold window:\n{text}")
    print(f"verdicts: {out['verdicts']}")


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    base = os.path.join(os.environ.get("BENCH_LAB", "/tmp"), "scale")

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--dir", default=base, help="data and logs (default %(default)s)")
        sp.add_argument("--ports", default="31000-31999", help="LOW-HIGH (default %(default)s)")
        sp.add_argument("-o", "--output", help="write the results as JSON to this file")

    k = sub.add_parser("keys", help="1M keys: RSS, snapshot stall, restart",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common(k)
    k.add_argument("--keys", type=int, default=1_000_000, help="total keys (default 1M)")
    k.add_argument("--value-size", type=int, default=256)
    k.add_argument("--batch", type=int, default=128, help="puts per txn (default 128)")
    k.add_argument("--load-clients", type=int, default=4)
    k.add_argument("--load-tasks", type=int, default=4, help="txns in flight per client")
    k.add_argument("--writers", type=int, default=2, help="put loops during snapshots")
    k.add_argument("--snapshot-timeout", type=float, default=120.0,
                   help="give up waiting for every member's snapshot after this (s)")
    k.add_argument("--tail", type=float, default=3.0, help="writes after each event (s)")
    k.add_argument("--phases", default="load,snapshot,backup,restart",
                   help="comma-separated: load,snapshot,backup,restart (default all)")
    k.add_argument("--restart-member", choices=("follower", "leader"), default="follower")
    k.add_argument("--fresh", action="store_true", help="delete DIR/keys first")
    k.add_argument("--profile", action="store_true",
                   help="py-spy the leader during the snapshot phase")
    k.add_argument("--stall-probe", action="store_true",
                   help="status of each member every 0.1 s during the snapshot phase; "
                        "py-spy dump a member that takes > 0.3 s")
    r = sub.add_parser("registrations", help="10k registrations kept alive by 100 processes")
    common(r)
    r.add_argument("--processes", type=int, default=100)
    r.add_argument("--per-process", type=int, default=100)
    r.add_argument("--ttl", type=int, default=10)
    r.add_argument("--hold", type=float, default=60.0, help="measured window (s)")
    r.add_argument("--settle", type=float, default=5.0, help="after all registered (s)")
    r.add_argument("--start-timeout", type=float, default=300.0)
    r.add_argument("--nice", type=int, default=0,
                   help="niceness of the client processes (default 0: same as the members)")
    r.add_argument("--profile", action="store_true",
                   help="py-spy the leader and a follower during the hold window")
    r.add_argument("--sample-every", type=float, default=5.0,
                   help="CPU and count samples while clients register (s)")
    r.add_argument("--stall-probe", action="store_true",
                   help="while registering: status latency of each member every 0.1 s, "
                        "py-spy dump of a member that takes > 0.3 s")
    r.add_argument("--start-parallel", type=int, default=5,
                   help="clients starting at once (0: all at once; default %(default)s)")
    c = sub.add_parser("_registrant")  # the child process of ``registrations``
    c.add_argument("--index", type=int, required=True)
    c.add_argument("--count", type=int, required=True)
    c.add_argument("--ttl", type=int, required=True)
    c.add_argument("--endpoints", required=True)
    args = p.parse_args(argv)
    if args.cmd == "_registrant":
        anyio.run(registrant, args, backend="trio")
        return 0
    log(f"scale {args.cmd}: " + json.dumps(benchutil.machine_info()))
    if args.cmd == "keys":
        args.phases = [x.strip() for x in args.phases.split(",") if x.strip()]
        out = cmd_keys(args)
    else:
        out = cmd_registrations(args)
    out["machine"] = benchutil.machine_info()
    out["argv"] = sys.argv[1:] if argv is None else argv
    if args.output:  # first: the summary below must not lose the results
        Path(args.output).write_text(json.dumps(out, indent=1, default=str))
    if args.cmd == "keys":
        print_keys(out)
    else:
        print_registrations(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
