"""Committed puts per second on a 3-member loopback cluster of real ``discoverd serve``
processes, one at a time and with many writers (so the raft loop batches proposals into one
fsync).

Every run starts a fresh cluster (``discoverd.testing.cluster.ProcessCluster``, heartbeat
100 ms, election 1000 ms, data under a temp dir in --dir), waits for a leader, sends the load
to the leader over the native protocol, and stops every member in a ``finally``. Puts: 256 B
values on keys drawn from a 10k key space; the state machine is the current register machine.

Modes:

* ``sequential`` — one connection, one put at a time (``NativeClient``), N ops (default 2000,
  bounded by --max-seconds): ops/s and latency of a lone writer.
* ``batched`` — W writers (default 64) for --duration seconds after a --warmup. With
  ``--client pipeline`` (default) one thread keeps W puts in flight on one connection (the
  protocol multiplexes by request id: a closed loop of W slots, each resent as soon as its
  answer arrives); with ``--client threads`` W threads each run a ``NativeClient``. Only puts
  completing inside the window count.

For each run it also reads every member's ``status`` at the window's edges: the leader's
commit-index delta divided by its fsync delta (``fsyncs`` = fsync'd Readys) is the batching
factor, entries per fsync. CPU% of each member (from /proc/PID/stat) and of this load
generator is measured over the window: the load generator shares the same cores.

    python benchmarks/raft_commit.py                       # both modes, 3 runs each
    python benchmarks/raft_commit.py --modes batched --writers 32 --runs 1
    python benchmarks/raft_commit.py --profile /tmp/prof   # + one py-spy'd run per mode
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import benchutil
import cbor2

from discoverd.testing.cluster import (
    ClientFailure,
    MemberProcess,
    NativeClient,
    ProcessCluster,
)

CLK_TCK = os.sysconf("SC_CLK_TCK")
MAX_OPS_PER_WORKER = 5_000_000  # a hard bound on every load loop besides the clock
SOCKET_TIMEOUT = 10.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def key_for(i: int) -> bytes:
    return b"/bench/k%05d" % i


# ----------------------------------------------------------------------------- observation


def proc_cpu_split(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process (all threads) in seconds, from /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def proc_cpu_seconds(pid: int) -> float:
    return sum(proc_cpu_split(pid))


@dataclass
class Snapshot:
    at: float
    client_cpu: float
    system_busy: float
    members: dict[str, dict[str, Any]]  # name -> status subset + cpu


def observe(cluster: ProcessCluster) -> Snapshot:
    at = time.perf_counter()
    members: dict[str, dict[str, Any]] = {}
    for m in cluster.members:
        user, system = proc_cpu_split(m.proc.pid) if m.proc else (0.0, 0.0)
        entry: dict[str, Any] = {"cpu": user + system, "sys": system}
        try:
            st = m.status()
            entry.update(role=st["role"], fsyncs=st["fsyncs"], commit=st["commit_index"],
                         applied=st["raft_applied_index"], term=st["raft_term"])
        except (OSError, ClientFailure) as e:
            entry["error"] = str(e)
        members[m.name] = entry
    return Snapshot(at=at, client_cpu=time.process_time(),
                    system_busy=benchutil.system_busy_seconds(), members=members)


# ----------------------------------------------------------------------------- load


@dataclass
class WorkerResult:
    done: list[tuple[float, float]] = field(default_factory=list)  # (completed at, latency)
    errors: Counter[str] = field(default_factory=Counter)
    fatal: str = ""


class PipelinedClient:
    """One native-protocol connection with up to ``window`` puts in flight."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(b"DSC1")
        self.reader = self.sock.makefile("rb", buffering=1 << 16)
        self.ids = itertools.count(1)

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    def send_put(self, key: bytes, value: bytes) -> int:
        rid = next(self.ids)
        payload = cbor2.dumps({"id": rid, "op": "put", "key": key, "value": value})
        self.sock.sendall(struct.pack(">I", len(payload)) + payload)
        return rid

    def read_answer(self) -> dict[str, Any]:
        header = self.reader.read(4)
        if len(header) < 4:
            raise ConnectionError("member closed the connection")
        (size,) = struct.unpack(">I", header)
        body = self.reader.read(size)
        if len(body) < size:
            raise ConnectionError("member closed the connection mid-frame")
        answer: dict[str, Any] = cbor2.loads(body)
        return answer


def pipeline_worker(port: int, window: int, value: bytes, keys: int, seed: int,
                    stop: threading.Event, ready: threading.Barrier, out: WorkerResult) -> None:
    rng = random.Random(seed)
    perf = time.perf_counter
    client: PipelinedClient | None = None
    try:
        client = PipelinedClient(port)
        ready.wait(30)
        sent_at: dict[int, float] = {}
        for _ in range(window):
            sent_at[client.send_put(key_for(rng.randrange(keys)), value)] = perf()
        for _ in range(MAX_OPS_PER_WORKER):
            if not sent_at:
                break
            answer = client.read_answer()
            now = perf()
            t0 = sent_at.pop(answer.get("id", -1), None)
            if t0 is None:
                out.errors["unmatched answer id"] += 1
                continue
            if "err" in answer:
                out.errors[str(answer["err"].get("code", "?"))] += 1
            else:
                out.done.append((now, now - t0))
            if not stop.is_set():
                sent_at[client.send_put(key_for(rng.randrange(keys)), value)] = perf()
    except (OSError, threading.BrokenBarrierError) as e:
        out.fatal = f"{type(e).__name__}: {e}"
    finally:
        if client is not None:
            client.close()


def blocking_worker(port: int, value: bytes, keys: int, seed: int, stop: threading.Event,
                    ready: threading.Barrier, out: WorkerResult, max_ops: int) -> None:
    rng = random.Random(seed)
    perf = time.perf_counter
    client: NativeClient | None = None
    try:
        client = NativeClient(port, timeout=SOCKET_TIMEOUT)
        client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ready.wait(30)
        for _ in range(min(max_ops, MAX_OPS_PER_WORKER)):
            if stop.is_set():
                break
            t0 = perf()
            try:
                client.put(key_for(rng.randrange(keys)), value)
            except ClientFailure as e:
                out.errors[e.code] += 1
                continue
            now = perf()
            out.done.append((now, now - t0))
    except (OSError, threading.BrokenBarrierError) as e:
        out.fatal = f"{type(e).__name__}: {e}"
    finally:
        if client is not None:
            client.close()


# ----------------------------------------------------------------------------- one run


@dataclass
class RunResult:
    mode: str
    run: int
    writers: int
    client: str
    window_s: float
    ops: int
    ops_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: dict[str, int]
    leader: str
    leader_commits: int
    leader_fsyncs: int
    entries_per_fsync: float
    follower_fsyncs: dict[str, int]
    member_cpu_pct: dict[str, float]
    member_sys_pct: dict[str, float]  # the kernel's share of member_cpu_pct
    client_cpu_pct: float
    others_cpu_pct: float  # the rest of the machine (other processes) during the window
    leader_changed: bool
    idle_cluster_cpu_pct: float = 0.0  # the 3 members before the load (heartbeats only)
    profile: str = ""


def run_once(args: argparse.Namespace, mode: str, run_no: int, base: Path,
             profile_dir: Path | None = None) -> RunResult:
    root = Path(tempfile.mkdtemp(prefix=f"raft-bench-{mode}-{run_no}-", dir=base))
    cluster = ProcessCluster(root, 3, token=f"bench-{os.getpid()}-{mode}-{run_no}",
                             heartbeat_ms=args.heartbeat_ms, election_ms=args.election_ms)
    spy: subprocess.Popen[bytes] | None = None
    threads: list[threading.Thread] = []
    stop = threading.Event()
    try:
        cluster.start_all()
        leader = cluster.wait_for_leader(timeout=30)
        log(f"  cluster up in {root}, leader {leader.name} (pid "
            f"{leader.proc.pid if leader.proc else '?'})")
        idle_cpu = measure_idle_cpu(cluster, args.idle_seconds)
        value = os.urandom(args.value_size)
        sequential = mode == "sequential"
        writers = 1 if sequential else args.writers
        style = "blocking" if sequential else args.client
        n_workers = writers if style in ("blocking", "threads") else 1
        ready = threading.Barrier(n_workers + 1)
        results = [WorkerResult() for _ in range(n_workers)]
        for w in range(n_workers):
            seed = args.seed * 1000 + run_no * 100 + w
            if style == "pipeline":
                t = threading.Thread(target=pipeline_worker, daemon=True, args=(
                    leader.client_port, writers, value, args.keys, seed, stop, ready,
                    results[w]))
            else:
                max_ops = args.n + 100_000 if sequential else MAX_OPS_PER_WORKER
                t = threading.Thread(target=blocking_worker, daemon=True, args=(
                    leader.client_port, value, args.keys, seed, stop, ready, results[w],
                    max_ops))
            threads.append(t)
            t.start()
        ready.wait(30)
        time.sleep(args.warmup)
        before = observe(cluster)
        at_start = sum(len(r.done) for r in results)
        if profile_dir is not None and leader.proc is not None:
            spy = start_py_spy(leader.proc.pid, profile_dir / f"leader-{mode}.txt",
                               seconds=max(1, int(args.duration)))
        limit = args.max_seconds if sequential else args.duration
        deadline = before.at + limit
        last_report = before.at
        while True:  # bounded by ``deadline``
            now = time.perf_counter()
            if now >= deadline:
                break
            counted = sum(len(r.done) for r in results) - at_start  # approximate, cheap
            if sequential and counted >= args.n:
                break
            if all(not t.is_alive() for t in threads):
                break
            if now - last_report >= 2.0:
                log(f"  {mode} run {run_no}: {now - before.at:.0f}s, {counted} ops "
                    f"({counted / (now - before.at):.0f}/s)")
                last_report = now
            time.sleep(0.05)
        after = observe(cluster)
        stop.set()
        for t in threads:
            t.join(SOCKET_TIMEOUT + 5)
        if spy is not None:
            try:
                spy.wait(args.duration + 30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait(10)
            spy = None
        result = summarize(mode, run_no, writers, style, before, after, results, leader)
        result.idle_cluster_cpu_pct = idle_cpu
        return result
    finally:
        stop.set()
        if spy is not None and spy.poll() is None:
            spy.kill()
            spy.wait(10)
        cluster.close()
        for t in threads:
            t.join(1)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def measure_idle_cpu(cluster: ProcessCluster, seconds: float) -> float:
    """CPU% of all members together over ``seconds`` with no client load."""
    if seconds <= 0:
        return 0.0
    pids = [m.proc.pid for m in cluster.members if m.proc is not None]
    before = sum(proc_cpu_seconds(p) for p in pids)
    t0 = time.perf_counter()
    time.sleep(seconds)
    spent = sum(proc_cpu_seconds(p) for p in pids) - before
    return 100 * spent / (time.perf_counter() - t0)


def summarize(mode: str, run_no: int, writers: int, style: str, before: Snapshot,
              after: Snapshot, results: list[WorkerResult], leader: MemberProcess) -> RunResult:
    window = after.at - before.at
    lat = sorted(d for r in results for t, d in r.done if before.at <= t <= after.at)
    errors: Counter[str] = Counter()
    for r in results:
        errors.update(r.errors)
        if r.fatal:
            errors[r.fatal] += 1
    b, a = before.members[leader.name], after.members[leader.name]
    commits = a.get("commit", 0) - b.get("commit", 0)
    fsyncs = a.get("fsyncs", 0) - b.get("fsyncs", 0)
    followers = {
        name: after.members[name].get("fsyncs", 0) - before.members[name].get("fsyncs", 0)
        for name in before.members if name != leader.name
    }
    cpu = {name: 100 * (after.members[name]["cpu"] - before.members[name]["cpu"]) / window
           for name in before.members}
    sys_cpu = {name: 100 * (after.members[name]["sys"] - before.members[name]["sys"]) / window
               for name in before.members}
    client_pct = 100 * (after.client_cpu - before.client_cpu) / window
    busy_pct = 100 * (after.system_busy - before.system_busy) / window
    leader_changed = any(
        after.members[n].get("role") != before.members[n].get("role")
        or after.members[n].get("term") != before.members[n].get("term")
        for n in before.members)
    return RunResult(
        mode=mode, run=run_no, writers=writers, client=style, window_s=window, ops=len(lat),
        ops_per_s=len(lat) / window if window else 0.0,
        p50_ms=benchutil.percentile(lat, 50) * 1e3, p99_ms=benchutil.percentile(lat, 99) * 1e3,
        max_ms=(lat[-1] if lat else 0.0) * 1e3, errors=dict(errors), leader=leader.name,
        leader_commits=commits, leader_fsyncs=fsyncs,
        entries_per_fsync=commits / fsyncs if fsyncs else 0.0, follower_fsyncs=followers,
        member_cpu_pct=cpu, member_sys_pct=sys_cpu, client_cpu_pct=client_pct,
        others_cpu_pct=max(0.0, busy_pct - client_pct - sum(cpu.values())),
        leader_changed=leader_changed,
    )


# ----------------------------------------------------------------------------- profiling


def start_py_spy(pid: int, out: Path, *, seconds: int) -> subprocess.Popen[bytes] | None:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        log("  py-spy not found (pip install py-spy): not profiling")
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    log(f"  py-spy recording pid {pid} for {seconds}s (--gil: only samples where Python "
        f"holds the GIL, i.e. interpreter CPU work) -> {out}")
    return subprocess.Popen(
        [exe, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "100",
         "--format", "raw", "--gil", "--nonblocking", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


_BORING_FRAMES = ("thread (", "process ", "click/", "<frozen runpy>", "threading.py",
                  "cli/__main__.py", "serve (discoverd/server/member.py")


def summarize_profile(path: Path, top: int = 20) -> str:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    if not path.exists():
        return f"(no profile at {path})"
    self_counts: Counter[str] = Counter()
    incl_counts: Counter[str] = Counter()
    total = 0
    idle = 0
    for line in path.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = [f for f in stack.split(";") if f and not any(
            f.startswith(p) or p in f for p in _BORING_FRAMES)]
        total += count
        if not frames:
            continue
        leaf = frames[-1]
        if "epoll" in leaf or "_wait " in leaf or "wait (threading" in leaf:
            idle += count
        self_counts[leaf] += count
        for f in set(frames):
            incl_counts[f] += count
    if not total:
        return "(empty profile)"
    lines = [f"{total} samples with the GIL held in {path.name} (at 100 Hz; waiting-looking "
             f"leaf frames: {100 * idle / total:.0f}%)", "top self:"]
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in self_counts.most_common(top)]
    lines.append("top inclusive:")
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in incl_counts.most_common(top)]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def print_run(r: RunResult) -> None:
    errs = f" errors={r.errors}" if r.errors else ""
    changed = " LEADER CHANGED" if r.leader_changed else ""
    cpu = " ".join(f"{n}={c:.0f}% (sys {r.member_sys_pct[n]:.0f}%)"
                   for n, c in sorted(r.member_cpu_pct.items()))
    print(f"{r.mode:10s} run {r.run}: {r.ops} ops in {r.window_s:.1f}s = {r.ops_per_s:.0f} ops/s"
          f"  p50 {r.p50_ms:.2f} ms  p99 {r.p99_ms:.2f} ms  max {r.max_ms:.1f} ms"
          f"  | leader {r.leader}: {r.leader_commits} entries / {r.leader_fsyncs} fsyncs"
          f" = {r.entries_per_fsync:.1f} per fsync; follower fsyncs {r.follower_fsyncs}"
          f"  | CPU {cpu} (idle cluster {r.idle_cluster_cpu_pct:.0f}%)"
          f" client={r.client_cpu_pct:.0f}% others={r.others_cpu_pct:.0f}%"
          f"{errs}{changed}", flush=True)


def median_row(runs: list[RunResult]) -> dict[str, Any]:
    def med(f: str) -> float:
        return float(statistics.median(getattr(r, f) for r in runs))

    return {
        "mode": runs[0].mode, "writers": runs[0].writers, "client": runs[0].client,
        "runs": len(runs), "ops_per_s": med("ops_per_s"), "p50_ms": med("p50_ms"),
        "p99_ms": med("p99_ms"), "entries_per_fsync": med("entries_per_fsync"),
        "leader_fsyncs_per_s": float(statistics.median(
            r.leader_fsyncs / r.window_s for r in runs)),
        "server_cpu_pct": float(statistics.median(sum(r.member_cpu_pct.values()) for r in runs)),
        "leader_cpu_pct": float(statistics.median(r.member_cpu_pct[r.leader] for r in runs)),
        "server_sys_pct": float(statistics.median(sum(r.member_sys_pct.values()) for r in runs)),
        "server_cpu_ms_per_op": float(statistics.median(
            10 * sum(r.member_cpu_pct.values()) / r.ops_per_s for r in runs if r.ops_per_s)),
        "client_cpu_pct": med("client_cpu_pct"),
        "others_cpu_pct": med("others_cpu_pct"),
        "errors": sum(sum(r.errors.values()) for r in runs),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Committed puts/s of a 3-member loopback discoverd cluster: one writer "
                    "at a time, and many writers (proposal batching).")
    p.add_argument("--modes", default="sequential,batched",
                   help="comma-separated: sequential, batched (default both)")
    p.add_argument("--runs", type=int, default=3, help="runs per mode, fresh cluster each "
                   "(default 3; the median is reported)")
    p.add_argument("-n", type=int, default=2000, help="sequential mode: puts to measure "
                   "(default 2000)")
    p.add_argument("--max-seconds", type=float, default=60.0,
                   help="sequential mode: stop after this long even if N is not reached")
    p.add_argument("--duration", type=float, default=10.0,
                   help="batched mode: measured window in seconds (default 10)")
    p.add_argument("--warmup", type=float, default=1.5,
                   help="seconds of load before the window starts (default 1.5)")
    p.add_argument("--writers", type=int, default=64,
                   help="batched mode: concurrent puts in flight (default 64)")
    p.add_argument("--client", choices=["pipeline", "threads"], default="pipeline",
                   help="batched mode: one pipelined connection with W puts in flight "
                        "(default), or W threads each with a blocking NativeClient")
    p.add_argument("--value-size", type=int, default=256, help="bytes per value (default 256)")
    p.add_argument("--keys", type=int, default=10_000, help="key space (default 10000)")
    p.add_argument("--heartbeat-ms", type=int, default=100)
    p.add_argument("--election-ms", type=int, default=1000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--idle-seconds", type=float, default=2.0,
                   help="measure the idle cluster's CPU for this long before the load "
                        "(default 2; 0 = skip)")
    p.add_argument("--dir", default=None, help="where the members' data dirs go (a temp dir "
                   "inside it, removed after); default: the current directory")
    p.add_argument("--keep", action="store_true", help="keep data dirs and member logs")
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="after the measured runs, one extra run per mode with py-spy "
                        "recording the leader (collapsed stacks in DIR; not in the table)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write results as JSON")
    args = p.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in ("sequential", "batched") for m in modes):
        p.error("--modes takes sequential and/or batched")
    if min(args.runs, args.n, args.writers, args.keys) <= 0 or args.value_size < 0 \
            or min(args.duration, args.max_seconds) <= 0 or args.warmup < 0:
        p.error("counts and durations must be positive")

    base = Path(args.dir or os.getcwd()).resolve()
    base.mkdir(parents=True, exist_ok=True)
    info = benchutil.machine_info()
    fs = benchutil.filesystem_of(str(base))
    benchutil.print_machine(info)
    print(f"data dirs under {base} ({fs['device']}, {fs['fstype']})")
    print(f"cluster: 3 members on 127.0.0.1, heartbeat {args.heartbeat_ms} ms, election "
          f"{args.election_ms} ms; load generator = this process, on the same "
          f"{info['nproc']} CPUs as the members")
    print(f"load: puts of {args.value_size} B values, keys from {args.keys}; sequential N="
          f"{args.n} (max {args.max_seconds:g}s); batched {args.writers} writers "
          f"({args.client}), {args.duration:g}s window after {args.warmup:g}s warmup",
          flush=True)
    all_runs: list[RunResult] = []
    medians: list[dict[str, Any]] = []
    profiles: dict[str, str] = {}
    for mode in modes:
        runs = []
        for k in range(1, args.runs + 1):
            log(f"[{mode} {k}/{args.runs}] starting a fresh cluster")
            r = run_once(args, mode, k, base)
            print_run(r)
            runs.append(r)
        all_runs.extend(runs)
        medians.append(median_row(runs))
    if args.profile:
        prof_dir = Path(args.profile)
        for mode in modes:
            log(f"[{mode} profile] extra run with py-spy on the leader (not in the table)")
            r = run_once(args, mode, 0, base, profile_dir=prof_dir)
            r.profile = str(prof_dir / f"leader-{mode}.txt")
            print_run(r)
            profiles[mode] = summarize_profile(prof_dir / f"leader-{mode}.txt")
    print()
    print("median of runs (each column's median on its own):")
    benchutil.print_table(
        ["mode", "writers", "runs", "ops/s", "p50 ms", "p99 ms", "entries/fsync",
         "leader fsync/s", "server CPU%", "of it sys%", "server CPU ms/op", "leader CPU%",
         "client CPU%", "others CPU%", "errors"],
        [[m["mode"], m["writers"], m["runs"], m["ops_per_s"], m["p50_ms"], m["p99_ms"],
          m["entries_per_fsync"], m["leader_fsyncs_per_s"], m["server_cpu_pct"],
          m["server_sys_pct"], m["server_cpu_ms_per_op"],
          m["leader_cpu_pct"], m["client_cpu_pct"], m["others_cpu_pct"], m["errors"]]
         for m in medians])
    print(f"load average at the end: {benchutil.loadavg()}; CPU% columns: 100% = one CPU; "
          "\"others\" = every other process on the machine during the window")
    for mode, text in profiles.items():
        print(f"\nprofile of the leader, {mode} mode:\n{text}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "filesystem": fs, "args": vars(args),
                       "runs": [asdict(r) for r in all_runs], "medians": medians,
                       "profiles": profiles}, f, indent=2)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
