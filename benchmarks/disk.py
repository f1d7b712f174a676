"""How fast can this machine make a small append durable, and what does discoverd's WAL add?

Cases (each N appends, default 2000, each bounded by --max-seconds):

* ``raw fsync``       — ``os.write`` of 256 B / 4 KiB to an ``O_APPEND`` file, then ``os.fsync``
                        (what ``storage.fs.OsFS`` does for every WAL record).
* ``raw fdatasync``   — the same with ``os.fdatasync`` (what etcd uses).
* ``prealloc fdatasync`` — ``os.pwrite`` into a file pre-filled with zeros and fsynced, then
                        ``os.fdatasync``: no size change, so no metadata to journal (what a
                        preallocated segment would cost).
* ``raw fsync xP``    — P threads (default 3) appending + fsyncing their own files at once:
                        three members sharing one disk.
* ``WAL save``        — ``storage.wal.WAL.save(HardState, [Entry], must_sync=True)`` on
                        ``OsFS``: record encoding (cbor2 + CRC) + one write + one fsync.
* ``WAL save xK``     — the same with K entries per save: what group commit buys.

Latency = the whole append (write + sync), per operation; rate = operations / wall time.
"CPU/op" is this process's CPU time per operation (user + system): the Python and syscall
cost around the wait for the device.

    python benchmarks/disk.py                     # temp dir under the current directory
    python benchmarks/disk.py --dir /var/lib/x -n 5000 --json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import benchutil

from discoverd.consensus.messages import Entry, HardState
from discoverd.storage.fs import OsFS
from discoverd.storage.wal import WAL

ProgressFn = Callable[[str], None]


@dataclass
class CaseResult:
    case: str
    payload_bytes: int
    entries_per_op: int
    ops: int
    seconds: float
    ops_per_s: float
    entries_per_s: float
    p50_us: float
    p99_us: float
    max_us: float
    mean_us: float
    cpu_us_per_op: float
    other_cpu_pct: float  # CPU used by everything else on the machine meanwhile (200% = 2 CPUs)
    truncated: bool  # stopped by --max-seconds before N ops


@dataclass
class Loop:
    lat: list[float]
    wall: float
    cpu: float
    other_cpu: float
    truncated: bool


def _timed_loop(
    name: str, n: int, max_seconds: float, op: Callable[[int], None], progress: ProgressFn,
) -> Loop:
    """Run ``op(i)`` for i in 1..n (at most ``max_seconds``); per-op latencies, wall, cpu."""
    lat: list[float] = []
    perf = time.perf_counter
    busy0 = benchutil.system_busy_seconds()
    cpu0 = time.process_time()
    start = perf()
    deadline = start + max_seconds
    next_report = start + 1.0
    truncated = False
    for i in range(1, n + 1):
        t0 = perf()
        op(i)
        t1 = perf()
        lat.append(t1 - t0)
        if t1 >= next_report:
            progress(f"  {name}: {i}/{n} ({i / (t1 - start):.0f}/s)")
            next_report = t1 + 1.0
        if t1 > deadline:
            truncated = i < n
            break
    wall = perf() - start
    cpu = time.process_time() - cpu0
    other = benchutil.system_busy_seconds() - busy0 - cpu
    return Loop(lat, wall, cpu, max(0.0, other), truncated)


def _result(case: str, size: int, per_op: int, loop: Loop) -> CaseResult:
    lat, wall, cpu = loop.lat, loop.wall, loop.cpu
    s = benchutil.latency_summary(lat)
    ops = len(lat)
    return CaseResult(
        case=case, payload_bytes=size, entries_per_op=per_op, ops=ops, seconds=wall,
        ops_per_s=ops / wall if wall else 0.0,
        entries_per_s=ops * per_op / wall if wall else 0.0,
        p50_us=s["p50_us"], p99_us=s["p99_us"], max_us=s["max_us"], mean_us=s["mean_us"],
        cpu_us_per_op=cpu / ops * 1e6 if ops else 0.0,
        other_cpu_pct=100 * loop.other_cpu / wall if wall else 0.0, truncated=loop.truncated,
    )


def bench_raw(workdir: str, size: int, n: int, max_seconds: float, *, datasync: bool,
              progress: ProgressFn) -> CaseResult:
    path = os.path.join(workdir, f"raw-{size}-{'fdatasync' if datasync else 'fsync'}.dat")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC, 0o644)
    buf = os.urandom(size)
    sync = os.fdatasync if datasync else os.fsync
    name = f"raw {'fdatasync' if datasync else 'fsync'} {size} B"

    def op(_: int) -> None:
        os.write(fd, buf)
        sync(fd)

    try:
        loop = _timed_loop(name, n, max_seconds, op, progress)
    finally:
        os.close(fd)
        os.remove(path)
    return _result(name, size, 1, loop)


def bench_parallel(workdir: str, size: int, n: int, max_seconds: float, threads: int,
                   progress: ProgressFn) -> CaseResult:
    """``threads`` threads, each appending + fsyncing its own file (os.fsync releases the GIL):
    what three members sharing one disk see. Rate = all threads' ops / wall time."""
    name = f"raw fsync {size} B, {threads} files in parallel"
    buf = os.urandom(size)
    per_thread: list[list[float]] = [[] for _ in range(threads)]
    errors: list[str] = []
    deadline = time.perf_counter() + max_seconds
    start_gate = threading.Barrier(threads + 1)

    def worker(k: int) -> None:
        path = os.path.join(workdir, f"parallel-{k}.dat")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC, 0o644)
        lat = per_thread[k]
        try:
            start_gate.wait(30)
            for _ in range(n):
                t0 = time.perf_counter()
                os.write(fd, buf)
                os.fsync(fd)
                t1 = time.perf_counter()
                lat.append(t1 - t0)
                if t1 > deadline:
                    break
        except (OSError, threading.BrokenBarrierError) as e:
            errors.append(str(e))
        finally:
            os.close(fd)
            os.remove(path)

    pool = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(threads)]
    for t in pool:
        t.start()
    busy0 = benchutil.system_busy_seconds()
    cpu0 = time.process_time()
    start_gate.wait(30)
    start = time.perf_counter()
    for t in pool:
        while t.is_alive() and time.perf_counter() < deadline + 10:  # bounded
            t.join(1.0)
            done = sum(len(x) for x in per_thread)
            progress(f"  {name}: {done}/{n * threads}")
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    other = max(0.0, benchutil.system_busy_seconds() - busy0 - cpu)
    if errors:
        raise OSError(f"parallel fsync failed: {errors[0]}")
    lat = [x for part in per_thread for x in part]
    truncated = len(lat) < n * threads
    return _result(name, size, 1, Loop(lat, wall, cpu, other, truncated))


def bench_prealloc(workdir: str, size: int, n: int, max_seconds: float,
                   progress: ProgressFn) -> CaseResult:
    path = os.path.join(workdir, f"prealloc-{size}.dat")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    name = f"prealloc fdatasync {size} B"
    try:
        zeros = bytes(1 << 20)
        total = size * n
        written = 0
        while written < total:  # bounded: total / 1 MiB iterations
            written += os.write(fd, zeros[: min(len(zeros), total - written)])
        os.fsync(fd)
        buf = os.urandom(size)

        def op(i: int) -> None:
            os.pwrite(fd, buf, (i - 1) * size)
            os.fdatasync(fd)

        loop = _timed_loop(name, n, max_seconds, op, progress)
    finally:
        os.close(fd)
        os.remove(path)
    return _result(name, size, 1, loop)


def bench_wal(workdir: str, size: int, n: int, max_seconds: float, *, per_save: int,
              progress: ProgressFn) -> CaseResult:
    wal_dir = os.path.join(workdir, f"wal-{size}-x{per_save}")
    wal, _ = WAL.open(OsFS(), wal_dir, cluster_id=1, member_id=1)
    data = os.urandom(size)
    name = f"WAL save {size} B" + (f" x{per_save}" if per_save > 1 else "")

    def op(i: int) -> None:
        first = (i - 1) * per_save + 1
        entries = [Entry(term=1, index=first + k, data=data) for k in range(per_save)]
        hs = HardState(term=1, vote=1, commit=first + per_save - 1)
        wal.save(hs, entries, must_sync=True)

    try:
        loop = _timed_loop(name, n, max_seconds, op, progress)
    finally:
        wal.close()
        shutil.rmtree(wal_dir, ignore_errors=True)
    return _result(name, size, per_save, loop)


def run(args: argparse.Namespace) -> dict[str, Any]:
    def progress(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    base = args.dir if args.dir else os.getcwd()
    os.makedirs(base, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="discoverd-disk-bench-", dir=base)
    fs = benchutil.filesystem_of(workdir)
    results: list[CaseResult] = []
    n, limit = args.n, args.max_seconds
    try:
        plan: list[tuple[str, Callable[[], CaseResult]]] = []
        for size in args.sizes:
            plan.append((f"raw fsync {size} B", partial(
                bench_raw, workdir, size, n, limit, datasync=False, progress=progress)))
            plan.append((f"raw fdatasync {size} B", partial(
                bench_raw, workdir, size, n, limit, datasync=True, progress=progress)))
            plan.append((f"prealloc fdatasync {size} B", partial(
                bench_prealloc, workdir, size, n, limit, progress)))
            plan.append((f"WAL save {size} B", partial(
                bench_wal, workdir, size, n, limit, per_save=1, progress=progress)))
        first = args.sizes[0]
        if args.parallel > 1:
            plan.append((f"raw fsync {first} B x{args.parallel} files", partial(
                bench_parallel, workdir, first, n, limit, args.parallel, progress)))
        if args.batch > 1:
            plan.append((f"WAL save {first} B x{args.batch}", partial(
                bench_wal, workdir, first, n, limit, per_save=args.batch, progress=progress)))
        for i, (label, fn) in enumerate(plan, 1):
            progress(f"[{i}/{len(plan)}] {label} (N={n}, at most {limit:g} s)")
            results.append(fn())
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return {
        "machine": benchutil.machine_info(),
        "filesystem": fs,
        "n": n,
        "max_seconds": limit,
        "results": [asdict(r) for r in results],
        "loadavg_at_end": benchutil.loadavg(),
    }


def print_report(report: dict[str, Any]) -> None:
    benchutil.print_machine(report["machine"])
    fs = report["filesystem"]
    print(f"directory: {fs['path']} on {fs['device']} ({fs['fstype']}, mounted at "
          f"{fs['mount_point']}; stat -f: {fs['stat_f_type']})")
    if fs["fstype"] in ("tmpfs", "ramfs"):
        print("WARNING: this directory is in memory: fsync is a no-op here, use --dir")
    print(f"load average at the end: {report['loadavg_at_end']}; \"others CPU%\" = what the "
          "rest of the machine used meanwhile (200% = both CPUs)")
    print()
    rows = []
    for r in report["results"]:
        rows.append([r["case"], r["ops"], r["ops_per_s"], r["entries_per_s"], r["p50_us"],
                     r["p99_us"], r["max_us"], r["cpu_us_per_op"], r["other_cpu_pct"]]
                    + (["(time limit)"] if r["truncated"] else []))
    benchutil.print_table(
        ["case", "ops", "ops/s", "entries/s", "p50 µs", "p99 µs", "max µs", "CPU µs/op",
         "others CPU%"],
        rows)
    by_case = {r["case"]: r for r in report["results"]}
    print()
    for r in report["results"]:
        if not r["case"].startswith("WAL save") or r["entries_per_op"] != 1:
            continue
        raw = by_case.get(f"raw fsync {r['payload_bytes']} B")
        if raw:
            extra = r["p50_us"] - raw["p50_us"]
            print(f"WAL overhead at {r['payload_bytes']} B: p50 {extra:+.0f} µs"
                  f" ({r['p50_us'] / raw['p50_us']:.2f}x raw fsync), CPU "
                  f"{r['cpu_us_per_op'] - raw['cpu_us_per_op']:+.0f} µs per save")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="fsync rate/latency of small appends on this machine, raw and through "
                    "discoverd's WAL.")
    p.add_argument("--dir", default=None,
                   help="directory to test in (a temp dir is made inside it and removed); "
                        "default: the current directory (not /tmp, which may be tmpfs)")
    p.add_argument("-n", type=int, default=2000, help="appends per case (default 2000)")
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")],
                   default=[256, 4096], help="payload sizes in bytes (default 256,4096)")
    p.add_argument("--batch", type=int, default=64,
                   help="entries per save in the group-commit WAL case (default 64; 1 = skip)")
    p.add_argument("--parallel", type=int, default=3,
                   help="threads fsyncing their own files at once, as 3 members sharing one "
                        "disk do (default 3; 1 = skip)")
    p.add_argument("--max-seconds", type=float, default=60.0,
                   help="stop a case after this long even if N is not reached (default 60)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    p.add_argument("--keep", action="store_true", help="keep the temp dir")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = p.parse_args(argv)
    if args.n <= 0 or args.max_seconds <= 0 or args.batch <= 0 or not args.sizes \
            or args.parallel <= 0:
        p.error("-n, --max-seconds and --batch must be positive, --sizes non-empty")
    report = run(args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
