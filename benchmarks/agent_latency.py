"""How long from a config file written to its document committed (issue 7): a real agent
process (``python -m discoverd.agents --push``) on a real directory, a 3-member loopback
cluster of ``discoverd serve`` processes (fsync on, heartbeat 100 ms, election 1000 ms).

Each sample: the benchmark writes ``DIR/app.json`` (a plain ``open``/``write``, ~200 B, a
new value each time) and measures until a watch on the cluster (SDK, another process than
the agent) delivers the put carrying that value — an upper bound of "committed", since the
watch event follows the commit. Writes are sequential, the next after the previous one was
seen, so each sample is one whole path: inotify → debounce (``--debounce``) → read and
parse → txn with a revision compare → Raft commit → watch.

    python benchmarks/agent_latency.py --writes 200 --debounce 250ms --runs 3

Reports p50/p99/max per run, and the median p50/p99 over runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchutil

from discoverd.sdk import Client
from discoverd.testing.cluster import ProcessCluster, wait_for


def one_run(writes: int, debounce: str, root: Path) -> list[float]:
    (root / "cluster").mkdir()
    with ProcessCluster(root / "cluster", 3, heartbeat_ms=100, election_ms=1000
                        ).started() as cluster:
        endpoints = ",".join(f"127.0.0.1:{m.client_port}" for m in cluster.members)
        conf = root / "conf"
        conf.mkdir()
        log = (root / "agent.log").open("wb")
        agent = subprocess.Popen(
            [sys.executable, "-m", "discoverd.agents", "--dir", str(conf), "--push",
             "--endpoints", endpoints, "--debounce", debounce, "--log-format", "json"],
            stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for("the agent to start",
                     lambda: b"agent.started" in (root / "agent.log").read_bytes())
            samples: list[float] = []
            with Client(endpoints) as client, \
                    client.watch("/config/app") as watch:
                events = iter(watch)
                for i in range(writes + 5):  # 5 warm-up writes, not counted
                    body = json.dumps({"seq": i, "service": "api", "port": 8080,
                                       "pad": "x" * 150})
                    start = time.perf_counter()
                    with (conf / "app.json").open("w") as f:
                        f.write(body)
                    while True:
                        resp = next(events)
                        if any(json.loads(e.kv.value).get("seq") == i for e in resp.events):
                            break
                    if i >= 5:
                        samples.append(time.perf_counter() - start)
            return samples
        finally:
            agent.terminate()
            agent.wait(15)
            log.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--writes", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--debounce", default="250ms")
    args = ap.parse_args()
    info = benchutil.machine_info()
    benchutil.print_machine(info)
    rows = []
    p50s, p99s = [], []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="agent-bench-") as tmp:
            samples = one_run(args.writes, args.debounce, Path(tmp))
        s = benchutil.latency_summary(samples)
        p50s.append(s["p50_us"] / 1000)
        p99s.append(s["p99_us"] / 1000)
        rows.append([run + 1, len(samples), f"{s['p50_us'] / 1000:.1f}",
                     f"{s['p99_us'] / 1000:.1f}", f"{s['max_us'] / 1000:.1f}",
                     benchutil.loadavg()])
    benchutil.print_table(["run", "writes", "p50 ms", "p99 ms", "max ms", "load"], rows)
    print(f"debounce {args.debounce}: median over {args.runs} runs: "
          f"p50 {statistics.median(p50s):.1f} ms, p99 {statistics.median(p99s):.1f} ms")


if __name__ == "__main__":
    main()
