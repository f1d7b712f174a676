"""Run the shared side-by-side harness with discoverd registered in it (issue 12).

    BENCH_HARNESS=/work/shared/bench /tmp/venv/bin/python benchmarks/side_by_side/run.py \\
        --systems discoverd3,etcd3,pso-nobatch --reps 2 --duration 10 \\
        --out benchmarks/side_by_side/results.json

Same CLI as the harness's ``run_all.py`` (it *is* ``run_all.main()``); the harness is
imported from ``$BENCH_HARNESS`` (default ``/work/shared/bench``) and not modified. What this
adds, at run time only:

* ``run_all.SYSTEMS["discoverd3"]`` (3 members, client ports 27379/27389/27399, peer +1) and
  ``["discoverd1"]`` (one member, 28379);
* discoverd's extra workloads in ``run_all.EXTRA`` — lease grant and keep-alive at C=16 as
  etcd3 has, plus serializable reads (C=16, 64);
* this folder on ``PYTHONPATH`` for the processes the harness spawns, so that its
  ``loadgen.py`` (which imports ``module:Class`` adapters by module name) finds
  ``discoverd_adapter``;
* ``--out`` defaults to ``results.json`` next to this file (the harness's default is inside
  the harness folder); afterwards the machine (CPU model, memory) and the discoverd version
  are added to that JSON under ``"machine"``.

The harness runs its load generators and PySyncObj nodes with ``sys.executable``, so run
this with a Python that has discoverd *and* the harness's dependencies (psutil, aetcd,
pysyncobj) installed. ``report.py`` turns the JSON into the tables of docs/performance.md.
"""

from __future__ import annotations

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
HARNESS = os.environ.get("BENCH_HARNESS", "/work/shared/bench")

sys.path.insert(0, HARNESS)
sys.path.insert(0, HERE)
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (HERE, os.environ.get("PYTHONPATH", "")) if p)

import run_all  # noqa: E402  (the harness)
from discoverd_system import DiscoverdSystem  # noqa: E402

run_all.SYSTEMS["discoverd3"] = lambda: DiscoverdSystem(members=3, base_port=27379)
run_all.SYSTEMS["discoverd1"] = lambda: DiscoverdSystem(members=1, base_port=28379)
run_all.EXTRA["discoverd3"] = [
    ("lease-grant", "lease_grant", 16),
    ("lease-keepalive", "lease_keepalive", 16),
    ("ser-read", "sget", 16),
    ("ser-read", "sget", 64),
]


def _machine() -> dict[str, object]:
    info: dict[str, object] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    info["mem_gib"] = round(int(line.split()[1]) / 2**20, 1)
                    break
    except OSError:
        pass
    info["cpus"] = os.cpu_count()
    info["python"] = sys.version.split()[0]
    info["discoverd"] = DiscoverdSystem().version()
    info["harness"] = HARNESS
    return info


def main() -> None:
    if not any(a == "--out" or a.startswith("--out=") for a in sys.argv[1:]):
        sys.argv += ["--out", os.path.join(HERE, "results.json")]
    out = sys.argv[sys.argv.index("--out") + 1] if "--out" in sys.argv else \
        next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--out="))
    # The harness's micro.py and PySyncObj nodes expect $BENCH_LAB (and its logs/) to exist.
    os.makedirs(os.path.join(run_all.S.LAB, "logs"), exist_ok=True)
    run_all.main()
    with open(out) as f:
        data = json.load(f)
    data["machine"] = _machine()
    with open(out, "w") as f:
        json.dump(data, f, indent=1)


if __name__ == "__main__":
    main()
