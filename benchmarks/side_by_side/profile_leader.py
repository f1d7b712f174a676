"""Profile the discoverd leader under the harness's write load (issue 12, for next steps).

    /tmp/venv/bin/python benchmarks/side_by_side/profile_leader.py [--clients 64] [--seconds 10]

Starts the 3-member ``DiscoverdSystem`` of ``discoverd_system.py``, preloads the keys, runs
the harness's ``put`` load (``loadgen.py``, C clients in 2 processes) and meanwhile records
the leader process with ``py-spy record --format raw`` (sampling, non-blocking). Prints the
load's ops/s and the top functions by own time (leaf samples, all threads) and by total
time; writes the raw collapsed stacks to ``--raw`` (default ``/tmp/discoverd-leader.raw``).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator

HERE = os.path.dirname(os.path.abspath(__file__))
HARNESS = os.environ.get("BENCH_HARNESS", "/work/shared/bench")
sys.path.insert(0, HARNESS)
sys.path.insert(0, HERE)
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (HERE, os.environ.get("PYTHONPATH", "")) if p)

import run_all  # noqa: E402
from discoverd_system import DiscoverdSystem  # noqa: E402

_LINE = re.compile(r":\d+\)$")


def frames_of(line: str) -> tuple[list[str], int]:
    stack, _, count = line.rstrip().rpartition(" ")
    frames = [_LINE.sub(")", f) for f in stack.split(";")]
    return frames, int(count)


def code_stacks(raw_path: str) -> Iterator[tuple[list[str], int]]:
    """Each sample line of a py-spy raw file: its code frames (outermost first; the
    thread/process frames dropped) and its count."""
    with open(raw_path) as f:
        for line in f:
            if not line.strip():
                continue
            frames, n = frames_of(line)
            # the first frame is the thread ("process 123:..." / "thread (0x..)")
            yield [fr for fr in frames if not fr.startswith(("process ", "thread "))], n


def summarize(raw_path: str, top: int) -> None:
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for code, n in code_stacks(raw_path):
        samples += n
        if not code:
            continue
        own[code[-1]] += n
        for fr in set(code):
            total[fr] += n
    print(f"samples: {samples}")
    print("\n| # | function (file) | own samples | own % |")
    print("|---:|---|---:|---:|")
    for i, (fr, n) in enumerate(own.most_common(top), 1):
        print(f"| {i} | `{fr}` | {n} | {100 * n / samples:.1f} |")
    print("\n| # | function (file) | total samples | total % |")
    print("|---:|---|---:|---:|")
    for i, (fr, n) in enumerate(total.most_common(top + 10), 1):
        print(f"| {i} | `{fr}` | {n} | {100 * n / samples:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--raw", default="/tmp/discoverd-leader.raw")
    ap.add_argument("--top", type=int, default=15)
    a = ap.parse_args()
    sysobj = DiscoverdSystem(members=3, base_port=27379)
    try:
        sysobj.start()
        sysobj.run("fill", 64, 0, 0)
        leader_port = int(sysobj.target().rsplit(":", 1)[1])
        leader_pid = sysobj.procs[sysobj.client_ports.index(leader_port)].pid
        print("leader", sysobj.target(), "pid", leader_pid, flush=True)
        spy: list[subprocess.Popen[bytes]] = []

        def record() -> None:
            spy.append(subprocess.Popen(
                [os.path.join(os.path.dirname(sys.executable), "py-spy"), "record",
                 "--pid", str(leader_pid), "--duration", str(int(a.seconds)),
                 "--format", "raw", "--nonblocking", "--threads", "-o", a.raw],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))

        # loadgen starts 3 s after run() is called; warm up 1.5 s more, then record.
        timer = threading.Timer(4.5, record)
        timer.start()
        m = sysobj.run("put", a.clients, 1.5, a.seconds + 2.0)
        timer.join()
        err = spy[0].communicate(timeout=60)[1] if spy else b""
        row = run_all.summarize(sysobj.name, "write", "put", a.clients, 1, a.seconds + 2.0, m)
        print(f"load: {row['ops_per_s']:.0f} ops/s, p50 {row['p50_ms']:.2f} ms, "
              f"p99 {row['p99_ms']:.2f} ms, server CPU {row['server_cpu_pct']:.0f}%, "
              f"client CPU {row['client_cpu_pct']:.0f}%, errors {row['errors']} "
              f"{row['error_samples']}", flush=True)
        if err:
            print("py-spy:", err.decode()[-1000:])
    finally:
        sysobj.stop()
    summarize(a.raw, a.top)


if __name__ == "__main__":
    main()
