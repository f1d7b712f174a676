"""Each member's CPU per operation, split into user and system time, with context switches,
while the shared harness's load generator runs one cell against discoverd-3node (issue 12).

    flock /tmp/bench.lock python benchmarks/side_by_side/member_cpu.py put 1
    flock /tmp/bench.lock python benchmarks/side_by_side/member_cpu.py lease_keepalive 16

The harness reports the members' CPU summed; this says which member spends it (the leader
or the followers) and whether it is interpreter work (user) or syscalls (system), which is
what the C=1 latency question needs: a lone put is CPU on the critical path of three
processes in turn. Window: 5 s in the middle of a 10 s cell (after 3 s), psutil per member.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.environ.get("BENCH_HARNESS", "/work/shared/bench"))
sys.path.insert(0, HERE)
os.environ["PYTHONPATH"] = HERE  # the harness's loadgen imports our adapter from here
os.environ.setdefault("BENCH_LAB", "/tmp/bench-lab")

import psutil  # noqa: E402
import run_all  # noqa: E402  (the harness)
from discoverd_system import DiscoverdSystem  # noqa: E402


def main() -> None:
    op, clients = sys.argv[1], int(sys.argv[2])
    cluster = DiscoverdSystem(members=3, base_port=27379)
    cluster.start()
    try:
        cluster.run("fill", 64, 0, 0)
        procs = [psutil.Process(p) for p in cluster.server_pids()]
        window: dict[str, Any] = {}

        def sample() -> None:
            time.sleep(3)
            before = [(p.cpu_times(), p.num_ctx_switches()) for p in procs]
            t0 = time.time()
            time.sleep(5)
            window["after"] = [(p.cpu_times(), p.num_ctx_switches()) for p in procs]
            window["before"], window["seconds"] = before, time.time() - t0

        sampler = threading.Thread(target=sample)
        sampler.start()
        measured = cluster.run(op, clients, 1.0, 10)
        sampler.join()
        row = run_all.summarize("discoverd-3node", op, op, clients, 1, 10, measured)
        ops = row["ops_per_s"]
        print(f"{op} C={clients}: {ops:,.0f} ops/s, p50 {row['p50_ms']:.2f} ms")
        seconds = window["seconds"]
        for pid, (cpu0, cs0), (cpu1, cs1) in zip(cluster.server_pids(), window["before"],
                                                  window["after"], strict=True):
            user = (cpu1.user - cpu0.user) / seconds / ops * 1000
            system = (cpu1.system - cpu0.system) / seconds / ops * 1000
            switches = (cs1.voluntary - cs0.voluntary) / seconds / ops
            print(f"  member pid {pid}: user {user:.3f} ms/op, system {system:.3f} ms/op, "
                  f"voluntary context switches {switches:.1f}/op")
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
