"""Profile the discoverd leader under the issue-12 wrk gateway load or the watch fan-out.

    flock /tmp/bench.lock /tmp/venv/bin/python benchmarks/side_by_side/profile_gateway.py \\
        --mode wrk-put|wrk-range|watch [--clients 64] [--seconds 10]

* ``wrk-put`` / ``wrk-range``: ``DiscoverdWrkSystem`` (3 members, ports 32279/32289/32299),
  preloaded, then the harness's wrk driver (``wrk_etcd.lua``, C connections) for 1.5 s warmup
  + ``--seconds``; py-spy records the leader over the ``--seconds`` window.
* ``watch``: one ``watch_fanout.py`` run on discoverd (1,000 watchers in 4 processes on the
  leader, ``--puts`` puts by 16 writer tasks); py-spy records the leader from the first put
  for ``--seconds``.

py-spy runs ``record --format raw --nonblocking --threads`` (sampling; the member is not
stopped). Printed: the load's figures, the CPU of each member over the recorded window
(psutil), the top functions by own time (leaf samples) and by inclusive time (any frame),
and the heaviest call paths (the last ``--depth`` frames of each sampled stack, summed).
Raw stacks go to ``--raw``.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import threading
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
HARNESS = os.environ.get("BENCH_HARNESS", "/work/shared/bench")
sys.path.insert(0, HARNESS)
sys.path.insert(0, HERE)
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (HERE, os.environ.get("PYTHONPATH", "")) if p)

import psutil  # noqa: E402
import run_all  # noqa: E402
import systems as S  # noqa: E402
import watch_fanout  # noqa: E402
from discoverd_wrk import DiscoverdWrkSystem  # noqa: E402
from profile_leader import code_stacks, summarize  # noqa: E402

PY_SPY = os.path.join(os.path.dirname(sys.executable), "py-spy")


class Recorder:
    """py-spy on one PID for ``seconds``, plus psutil CPU of every member meanwhile."""

    def __init__(self, raw: str, seconds: float) -> None:
        self.raw = raw
        self.seconds = seconds
        self.thread: threading.Thread | None = None
        self.cpu: dict[int, float] = {}
        self.err = b""

    def start(self, pid: int, member_pids: list[int]) -> None:
        def run() -> None:
            before = {p: sum(psutil.Process(p).cpu_times()[:2]) for p in member_pids}
            spy = subprocess.Popen(
                [PY_SPY, "record", "--pid", str(pid), "--duration", str(int(self.seconds)),
                 "--format", "raw", "--nonblocking", "--threads", "-o", self.raw],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            t0 = time.time()
            _, self.err = spy.communicate(timeout=self.seconds + 60)
            dt = time.time() - t0
            self.cpu = {p: 100 * (sum(psutil.Process(p).cpu_times()[:2]) - before[p]) / dt
                        for p in member_pids}

        self.thread = threading.Thread(target=run)
        self.thread.start()

    def join(self) -> None:
        if self.thread is not None:
            self.thread.join()


def paths(raw_path: str, depth: int, top: int) -> None:
    """The heaviest call paths: each sample's last ``depth`` code frames."""
    count: collections.Counter[tuple[str, ...]] = collections.Counter()
    samples = 0
    for code, n in code_stacks(raw_path):
        samples += n
        count[tuple(code[-depth:])] += n
    print(f"\nheaviest paths (last {depth} frames, caller → callee):\n")
    for i, (path, n) in enumerate(count.most_common(top), 1):
        print(f"{i}. {100 * n / samples:.1f}%  " + " → ".join(path))


def _leader_pid(sysobj: Any, leader: str) -> int:
    port = int(leader.rsplit(":", 1)[1])
    return int(sysobj.procs[sysobj.client_ports.index(port)].pid)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=("wrk-put", "wrk-range", "watch"), required=True)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--puts", type=int, default=1000)
    ap.add_argument("--raw", default=None)
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--depth", type=int, default=6)
    a = ap.parse_args()
    raw = a.raw or f"/tmp/discoverd-leader-{a.mode}.raw"
    rec = Recorder(raw, a.seconds)
    os.makedirs(os.path.join(S.LAB, "logs"), exist_ok=True)
    if a.mode == "watch":
        wa = argparse.Namespace(watchers=1000, procs=4, puts=a.puts, writer_clients=16,
                                rate=0.0, spread=False, max_seconds=150.0)

        def hook(sysobj: Any, leader: str) -> None:
            print("leader", leader, "pid", _leader_pid(sysobj, leader), flush=True)
            rec.start(_leader_pid(sysobj, leader), sysobj.server_pids())

        r = watch_fanout.run_one("discoverd", 1, wa, S, on_start=hook)
        rec.join()
        print(watch_fanout.table([r]))
    else:
        op = "put" if a.mode == "wrk-put" else "get"
        sysobj = DiscoverdWrkSystem(members=3, base_port=32279)
        try:
            sysobj.start()
            sysobj.run("fill", 64, 0, 0)
            lpid = _leader_pid(sysobj, sysobj.target())
            print("leader", sysobj.target(), "pid", lpid, flush=True)
            # the harness's wrk run starts 0.5 s after run() is called; record after warmup
            timer = threading.Timer(0.5 + 1.5, rec.start, (lpid, sysobj.server_pids()))
            timer.start()
            m = sysobj.run(op, a.clients, 1.5, a.seconds + 1.0)
            timer.join()
            rec.join()
            row = run_all.summarize(sysobj.name, a.mode, op, a.clients, 1, a.seconds + 1.0, m)
            print(f"load: {row['ops_per_s']:.0f} ops/s, p50 {row['p50_ms']:.2f} ms, "
                  f"p99 {row['p99_ms']:.2f} ms, server CPU {row['server_cpu_pct']:.0f}%, "
                  f"wrk CPU {row['client_cpu_pct']:.0f}%, errors {row['errors']}", flush=True)
        finally:
            sysobj.stop()
    print("member CPU% over the recorded window:",
          {pid: round(v) for pid, v in rec.cpu.items()})
    if rec.err:
        print("py-spy:", rec.err.decode()[-600:])
    summarize(raw, a.top)
    paths(raw, a.depth, a.top)


if __name__ == "__main__":
    main()
