"""KV throughput and latency through the SDK (issue 4): puts, linearizable gets and (extra)
serializable gets, with 1 and 64 concurrent requests, on a 3-member loopback cluster.

Every run starts a fresh cluster (``discoverd.testing.cluster.ProcessCluster``: real
``discoverd serve`` processes on 127.0.0.1, heartbeat 100 ms, election 1000 ms, data under a
temp dir in --dir), waits for a leader, preloads --keys keys (default 10k) with 256 B values,
then runs every cell workload x concurrency on that cluster, one after the other, and stops
every member in a ``finally``. ``--runs`` repeats the whole thing on fresh clusters and the
table shows each column's median.

The load is the SDK itself: ``discoverd.sdk.AsyncClient`` under trio (via anyio), in this
process. A cell with concurrency C runs C tasks, a closed loop each (one request in flight per
task), over min(C, --clients) AsyncClients (default 8: C=64 is 8 clients x 8 tasks, C=1 is one
client and one task). The SDK multiplexes the requests of all tasks sharing a client on its
one connection. Every client is given all three members' endpoints in the order m1, m2, m3,
as an application would be, so it talks to m1 unless m1 fails — which may be the leader or a
follower: a follower forwards puts to the leader and asks it for a ReadIndex for
linearizable gets. The member that answered every op (``header.member_id``) is recorded and
printed with its role.

Workloads: ``put`` (256 B value, key random out of --keys), ``get`` (linearizable range of
one random key, ReadIndex), ``get-serializable`` (the answering member's local copy). Each
cell runs --warmup seconds (default 1; connects the clients) and then a measured window of
--seconds (default 8); only ops completing inside the window count. Latency is per op, from
just before the SDK call to its return (encode, send, server, answer, decode).

For each cell it also reads the members' ``status`` and ``/proc/PID/stat`` at the window's
edges (the same observation as ``raft_commit.py``): CPU% of each member, of this load
generator, and of everything else on the machine ("others"), since other work may share the
CPUs.

    python benchmarks/kv_sdk.py --dir /tmp/kvb --runs 3
    python benchmarks/kv_sdk.py --workloads get --concurrency 64 --clients 64 --runs 1
    python benchmarks/kv_sdk.py --runs 1 --seconds 4 --json              # JSON on stdout
    python benchmarks/kv_sdk.py --profile /tmp/kvb/prof --json kv.json   # + py-spy'd run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio
import benchutil
from raft_commit import (
    Snapshot,
    key_for,
    log,
    measure_idle_cpu,
    observe,
    start_py_spy,
    summarize_profile,
)

from discoverd.errors import DiscoverdError
from discoverd.sdk import AsyncClient
from discoverd.testing.cluster import ProcessCluster

WORKLOADS = ("put", "get", "get-serializable")
MAX_OPS_PER_TASK = 2_000_000  # a hard bound on every load loop besides the clock
COMMAND_TIMEOUT = 5.0  # the SDK's bound on one call (all retries included)
ERROR_PAUSE = 0.01  # after a failed op, so a fast-failing cluster is not hammered


class MissingKey(Exception):
    """A preloaded key was not found by a get."""


# ----------------------------------------------------------------------------- load


@dataclass
class TaskResult:
    done: list[tuple[float, float, int]] = field(default_factory=list)  # (at, latency, member)
    errors: Counter[str] = field(default_factory=Counter)


OpFn = Callable[[AsyncClient, bytes], Awaitable[int]]


def op_for(workload: str, value: bytes) -> OpFn:
    """The coroutine function doing one op of ``workload``; returns the answering member id."""

    async def put(client: AsyncClient, key: bytes) -> int:
        return (await client.put(key, value)).header.member_id

    async def get(client: AsyncClient, key: bytes) -> int:
        resp = await client.get(key, serializable=workload == "get-serializable")
        if len(resp.kvs) != 1:
            raise MissingKey(key.decode())
        return resp.header.member_id

    return put if workload == "put" else get


async def task_loop(client: AsyncClient, op: OpFn, keys: int, seed: int, stop: anyio.Event,
                    out: TaskResult) -> None:
    """A closed loop: one op at a time until ``stop`` (or MAX_OPS_PER_TASK)."""
    rng = random.Random(seed)
    perf = time.perf_counter
    for _ in range(MAX_OPS_PER_TASK):
        if stop.is_set():
            return
        key = key_for(rng.randrange(keys))
        t0 = perf()
        try:
            member = await op(client, key)
        except (DiscoverdError, MissingKey) as e:
            out.errors[type(e).__name__] += 1
            await anyio.sleep(ERROR_PAUSE)
            continue
        now = perf()
        out.done.append((now, now - t0, member))


async def client_group(endpoints: list[str], op: OpFn, keys: int, seeds: list[int],
                       stop: anyio.Event, outs: list[TaskResult]) -> None:
    """One AsyncClient shared by len(seeds) tasks; entered and closed by this task."""
    async with AsyncClient(endpoints, command_timeout=COMMAND_TIMEOUT) as client, \
            anyio.create_task_group() as tg:
        for seed, out in zip(seeds, outs, strict=True):
            tg.start_soon(task_loop, client, op, keys, seed, stop, out)


def split(n: int, parts: int) -> list[int]:
    """``n`` tasks over ``parts`` clients, as evenly as possible."""
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


async def load_cell(cluster: ProcessCluster, endpoints: list[str], op: OpFn, concurrency: int,
                    n_clients: int, keys: int, seed: int, warmup: float, seconds: float,
                    ) -> tuple[Snapshot, Snapshot, list[TaskResult]]:
    """Run ``concurrency`` tasks over ``n_clients`` clients; observe the cluster at the
    edges of the measured window (in a worker thread, so the load keeps running)."""
    stop = anyio.Event()
    outs = [TaskResult() for _ in range(concurrency)]
    # Bounded: warmup + window + the SDK's own bound on the calls still in flight + slack.
    with anyio.fail_after(warmup + seconds + 2 * COMMAND_TIMEOUT + 30):
        async with anyio.create_task_group() as tg:
            first = 0
            for g, n in enumerate(split(concurrency, n_clients)):
                seeds = [seed * 10_000 + g * 1000 + t for t in range(n)]
                tg.start_soon(client_group, endpoints, op, keys, seeds, stop,
                              outs[first:first + n])
                first += n
            try:
                await anyio.sleep(warmup)
                before = await anyio.to_thread.run_sync(observe, cluster)
                await anyio.sleep(max(0.0, before.at + seconds - time.perf_counter()))
                after = await anyio.to_thread.run_sync(observe, cluster)
            finally:
                stop.set()
    return before, after, outs


async def preload(endpoints: list[str], keys: int, value: bytes, n_clients: int,
                  per_client: int, max_seconds: float) -> None:
    """Put every key once, ``n_clients`` x ``per_client`` puts in flight; fail after
    ``max_seconds``."""
    todo = iter(range(keys))
    errors: Counter[str] = Counter()

    async def worker(client: AsyncClient) -> None:
        for i in todo:  # shared iterator: each key is taken by exactly one worker
            for _ in range(5):  # bounded retries of one key
                try:
                    await client.put(key_for(i), value)
                    break
                except DiscoverdError as e:
                    errors[type(e).__name__] += 1
                    await anyio.sleep(0.05)
            else:
                raise RuntimeError(f"preload: key {i} failed 5 times ({dict(errors)})")

    async def group() -> None:
        async with AsyncClient(endpoints, command_timeout=COMMAND_TIMEOUT) as client, \
                anyio.create_task_group() as tg:
            for _ in range(per_client):
                tg.start_soon(worker, client)

    with anyio.fail_after(max_seconds):
        async with anyio.create_task_group() as tg:
            for _ in range(n_clients):
                tg.start_soon(group)
    if errors:
        log(f"  preload: retried errors {dict(errors)}")


# ----------------------------------------------------------------------------- one cell


@dataclass
class CellResult:
    workload: str
    concurrency: int
    clients: int
    run: int
    window_s: float
    ops: int
    ops_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: dict[str, int]
    served: dict[str, int]  # "m1 (follower)" -> ops answered in the window
    served_by_leader_pct: float
    leader: str
    leader_changed: bool
    entries_per_fsync: float  # leader commit delta / leader fsync delta
    member_cpu_pct: dict[str, float]
    client_cpu_pct: float
    others_cpu_pct: float  # every other process on the machine during the window
    loadavg_after: str
    profile: str = ""


def summarize(workload: str, concurrency: int, clients: int, run_no: int, before: Snapshot,
              after: Snapshot, outs: list[TaskResult], names: dict[int, str]) -> CellResult:
    window = after.at - before.at
    inside = [(lat, m) for r in outs for t, lat, m in r.done if before.at <= t <= after.at]
    lat = sorted(x for x, _ in inside)
    errors: Counter[str] = Counter()
    for r in outs:
        errors.update(r.errors)
    roles = {n: str(s.get("role", "?")) for n, s in before.members.items()}
    leader = next((n for n, role in roles.items() if role == "leader"), "?")
    served_ids = Counter(m for _, m in inside)
    served = {f"{names.get(m, hex(m))} ({roles.get(names.get(m, ''), '?')})": c
              for m, c in served_ids.most_common()}
    by_leader = sum(c for m, c in served_ids.items() if names.get(m) == leader)
    cpu = {n: 100 * (after.members[n]["cpu"] - before.members[n]["cpu"]) / window
           for n in before.members}
    client_pct = 100 * (after.client_cpu - before.client_cpu) / window
    busy_pct = 100 * (after.system_busy - before.system_busy) / window
    b, a = before.members.get(leader, {}), after.members.get(leader, {})
    commits = a.get("commit", 0) - b.get("commit", 0)
    fsyncs = a.get("fsyncs", 0) - b.get("fsyncs", 0)
    changed = any(after.members[n].get("role") != before.members[n].get("role")
                  or after.members[n].get("term") != before.members[n].get("term")
                  for n in before.members)
    return CellResult(
        workload=workload, concurrency=concurrency, clients=clients, run=run_no,
        window_s=window, ops=len(lat), ops_per_s=len(lat) / window if window else 0.0,
        p50_ms=benchutil.percentile(lat, 50) * 1e3, p99_ms=benchutil.percentile(lat, 99) * 1e3,
        max_ms=(lat[-1] if lat else 0.0) * 1e3, errors=dict(errors), served=served,
        served_by_leader_pct=100 * by_leader / len(inside) if inside else 0.0,
        leader=leader, leader_changed=changed,
        entries_per_fsync=commits / fsyncs if fsyncs else 0.0, member_cpu_pct=cpu,
        client_cpu_pct=client_pct,
        others_cpu_pct=max(0.0, busy_pct - client_pct - sum(cpu.values())),
        loadavg_after=benchutil.loadavg(),
    )


# ----------------------------------------------------------------------------- one run


def cells(args: argparse.Namespace) -> list[tuple[str, int]]:
    return [(w, c) for w in args.workloads for c in args.concurrency]


def run_once(args: argparse.Namespace, run_no: int, base: Path,
             profile_dir: Path | None = None) -> list[CellResult]:
    """A fresh cluster, the preload, then every cell; the cluster is always stopped."""
    root = Path(tempfile.mkdtemp(prefix=f"kv-sdk-{run_no}-", dir=base))
    cluster = ProcessCluster(root, 3, token=f"kv-sdk-{os.getpid()}-{run_no}",
                             heartbeat_ms=args.heartbeat_ms, election_ms=args.election_ms)
    spy: subprocess.Popen[bytes] | None = None
    try:
        cluster.start_all()
        leader = cluster.wait_for_leader(timeout=30)
        names = {int(m.status()["header"]["member_id"]): m.name for m in cluster.members}
        endpoints = [f"127.0.0.1:{m.client_port}" for m in cluster.members]
        log(f"  cluster up in {root}, leader {leader.name}; endpoints (in this order) "
            f"{', '.join(f'{m.name}={m.client_port}' for m in cluster.members)}")
        idle = measure_idle_cpu(cluster, args.idle_seconds)
        value = os.urandom(args.value_size)
        t0 = time.perf_counter()
        anyio.run(preload, endpoints, args.keys, value, 8, 8, args.preload_timeout,
                  backend="trio")
        log(f"  preloaded {args.keys} keys in {time.perf_counter() - t0:.1f}s; idle cluster "
            f"CPU before it {idle:.0f}%")
        results: list[CellResult] = []
        for workload, conc in cells(args):
            n_clients = min(conc, args.clients)
            profile = ""
            if profile_dir is not None and conc > 1:
                lead = cluster.leader()
                if lead is not None and lead.proc is not None:
                    out = profile_dir / f"leader-{workload}-c{conc}.txt"
                    spy = start_py_spy(lead.proc.pid, out,
                                       seconds=max(1, int(args.warmup + args.seconds)))
                    profile = str(out) if spy is not None else ""
            seed = args.seed * 100 + run_no
            before, after, outs = anyio.run(
                load_cell, cluster, endpoints, op_for(workload, value), conc, n_clients,
                args.keys, seed, args.warmup, args.seconds, backend="trio")
            if spy is not None:
                try:
                    spy.wait(args.warmup + args.seconds + 30)
                except subprocess.TimeoutExpired:
                    spy.kill()
                    spy.wait(10)
                spy = None
            r = summarize(workload, conc, n_clients, run_no, before, after, outs, names)
            r.profile = profile
            log(f"  {workload} C={conc}: {r.ops_per_s:.0f} ops/s, p50 {r.p50_ms:.2f} ms, "
                f"others CPU {r.others_cpu_pct:.0f}%")
            results.append(r)
        return results
    finally:
        if spy is not None and spy.poll() is None:
            spy.kill()
            spy.wait(10)
        cluster.close()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


# ----------------------------------------------------------------------------- output


def print_cell(r: CellResult, out: Any) -> None:
    errs = f" errors={r.errors}" if r.errors else ""
    changed = " LEADER CHANGED" if r.leader_changed else ""
    cpu = " ".join(f"{n}={c:.0f}%" for n, c in sorted(r.member_cpu_pct.items()))
    served = ", ".join(f"{k}: {v}" for k, v in r.served.items()) or "nobody"
    print(f"{r.workload:16s} C={r.concurrency:<3d} run {r.run}: {r.ops} ops in "
        f"{r.window_s:.1f}s = {r.ops_per_s:.0f} ops/s  p50 {r.p50_ms:.2f} ms  p99 "
        f"{r.p99_ms:.2f} ms  max {r.max_ms:.1f} ms | served by {served}; leader {r.leader}"
        f" | CPU {cpu} client={r.client_cpu_pct:.0f}% others={r.others_cpu_pct:.0f}%"
        f" | load {r.loadavg_after}{errs}{changed}", file=out, flush=True)


def median_row(runs: list[CellResult]) -> dict[str, Any]:
    def med(values: Any) -> float:
        return float(statistics.median(list(values)))

    first = runs[0]
    return {
        "workload": first.workload, "concurrency": first.concurrency,
        "clients": first.clients, "runs": len(runs),
        "ops_per_s": med(r.ops_per_s for r in runs), "p50_ms": med(r.p50_ms for r in runs),
        "p99_ms": med(r.p99_ms for r in runs), "max_ms": med(r.max_ms for r in runs),
        "ops_per_s_each": [round(r.ops_per_s) for r in runs],
        "served_by_leader_runs": sum(r.served_by_leader_pct >= 50 for r in runs),
        "server_cpu_pct": med(sum(r.member_cpu_pct.values()) for r in runs),
        "server_cpu_ms_per_op": med(10 * sum(r.member_cpu_pct.values()) / r.ops_per_s
                                    for r in runs if r.ops_per_s) if any(
                                        r.ops_per_s for r in runs) else 0.0,
        "client_cpu_pct": med(r.client_cpu_pct for r in runs),
        "others_cpu_pct": med(r.others_cpu_pct for r in runs),
        "others_cpu_pct_max": max(r.others_cpu_pct for r in runs),
        "errors": sum(sum(r.errors.values()) for r in runs),
        "leader_changes": sum(r.leader_changed for r in runs),
    }


def print_medians(medians: list[dict[str, Any]], out: Any) -> None:
    print("median of runs (each column's median on its own; 'leader served' = runs in which "
          "the member the clients talked to was the leader):", file=out)
    benchutil.print_table(
        ["workload", "C", "clients", "runs", "ops/s", "p50 ms", "p99 ms", "max ms",
         "ops/s each run", "leader served", "server CPU%", "server CPU ms/op", "client CPU%",
         "others CPU%", "errors"],
        [[m["workload"], m["concurrency"], m["clients"], m["runs"], m["ops_per_s"],
          m["p50_ms"], m["p99_ms"], m["max_ms"],
          "/".join(str(x) for x in m["ops_per_s_each"]),
          f"{m['served_by_leader_runs']}/{m['runs']}", m["server_cpu_pct"],
          m["server_cpu_ms_per_op"], m["client_cpu_pct"], m["others_cpu_pct"], m["errors"]]
         for m in medians], out=out)


# ----------------------------------------------------------------------------- main


def csv_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="ops/s and p50/p99 latency of puts, linearizable gets and serializable "
                    "gets through the SDK (AsyncClient on trio), 1 and 64 concurrent "
                    "requests, on a fresh 3-member loopback discoverd cluster per run.")
    p.add_argument("--workloads", type=csv_list, default=list(WORKLOADS),
                   help=f"comma-separated, of {', '.join(WORKLOADS)} (default all)")
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in csv_list(s)],
                   default=[1, 64], help="comma-separated concurrent requests (default 1,64)")
    p.add_argument("--clients", type=int, default=8,
                   help="AsyncClients (connections) a cell's tasks share: min(C, this); "
                        "default 8, i.e. C=64 = 8 clients x 8 tasks")
    p.add_argument("--runs", type=int, default=3,
                   help="repetitions, each on a fresh cluster (default 3; medians reported)")
    p.add_argument("--seconds", type=float, default=8.0,
                   help="measured window per cell in seconds (default 8)")
    p.add_argument("--warmup", type=float, default=1.0,
                   help="seconds of load before each window (default 1)")
    p.add_argument("--value-size", type=int, default=256, help="bytes per value (default 256)")
    p.add_argument("--keys", type=int, default=10_000,
                   help="keys preloaded, and the key space of every op (default 10000)")
    p.add_argument("--preload-timeout", type=float, default=300.0,
                   help="fail the run if the preload takes longer (default 300 s)")
    p.add_argument("--heartbeat-ms", type=int, default=100)
    p.add_argument("--election-ms", type=int, default=1000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--idle-seconds", type=float, default=1.0,
                   help="measure the idle cluster's CPU this long before the preload "
                        "(default 1; 0 = skip)")
    p.add_argument("--dir", default=None, help="where the members' data dirs go (a temp dir "
                   "inside it, removed after); default: the current directory")
    p.add_argument("--keep", action="store_true", help="keep data dirs and member logs")
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="after the measured runs, one extra run with py-spy recording the "
                        "leader during every C>1 cell (collapsed stacks in DIR; not in the "
                        "table)")
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                   help="also write the results as JSON to FILE; bare --json prints JSON "
                        "on stdout and the human-readable report on stderr")
    args = p.parse_args(argv)
    if not args.workloads or any(w not in WORKLOADS for w in args.workloads):
        p.error(f"--workloads takes some of {', '.join(WORKLOADS)}")
    if not args.concurrency or min(args.concurrency) <= 0:
        p.error("--concurrency takes positive integers")
    if min(args.runs, args.clients, args.keys) <= 0 or args.value_size < 0 \
            or min(args.seconds, args.preload_timeout) <= 0 or args.warmup < 0:
        p.error("counts and durations must be positive")

    out = sys.stderr if args.json == "-" else sys.stdout
    base = Path(args.dir or os.getcwd()).resolve()
    base.mkdir(parents=True, exist_ok=True)
    info = benchutil.machine_info()
    fs = benchutil.filesystem_of(str(base))
    benchutil.print_machine(info, out=out)
    print(f"data dirs under {base} ({fs['device']}, {fs['fstype']})", file=out)
    print(f"cluster: 3 members on 127.0.0.1, heartbeat {args.heartbeat_ms} ms, election "
          f"{args.election_ms} ms, fresh per run; load generator = this process (trio, "
          f"discoverd.sdk.AsyncClient), on the same {info['nproc']} CPUs as the members",
          file=out)
    print(f"load: {args.keys} keys preloaded with {args.value_size} B values; cells "
          f"{', '.join(f'{w} C={c}' for w, c in cells(args))}; C tasks over min(C, "
          f"{args.clients}) AsyncClients (one connection each), every client given the "
          f"endpoints m1,m2,m3 in that order; {args.seconds:g}s window after "
          f"{args.warmup:g}s warmup per cell; {args.runs} run(s)", file=out, flush=True)
    all_cells: list[CellResult] = []
    for k in range(1, args.runs + 1):
        log(f"[run {k}/{args.runs}] starting a fresh cluster")
        for r in run_once(args, k, base):
            print_cell(r, out)
            all_cells.append(r)
    medians = [median_row([r for r in all_cells if (r.workload, r.concurrency) == cell])
               for cell in cells(args)]
    profiles: dict[str, str] = {}
    if args.profile:
        prof_dir = Path(args.profile)
        log("[profile] extra run with py-spy on the leader during C>1 cells (not in the table)")
        for r in run_once(args, 0, base, profile_dir=prof_dir):
            print_cell(r, out)
            if r.profile:
                profiles[f"{r.workload} C={r.concurrency}"] = summarize_profile(Path(r.profile))
    print(file=out)
    print_medians(medians, out)
    print(f"load average at the end: {benchutil.loadavg()}; CPU% columns: 100% = one CPU; "
          "\"others\" = every other process on the machine during the window", file=out)
    for name, text in profiles.items():
        print(f"\nprofile of the leader, {name}:\n{text}", file=out)
    if args.json:
        report = {"machine": info, "filesystem": fs, "args": vars(args),
                  "cells": [asdict(r) for r in all_cells], "medians": medians,
                  "profiles": profiles}
        if args.json == "-":
            print(json.dumps(report, indent=2))
        else:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
