"""Run the shared side-by-side harness with discoverd registered in it (issue 12).

    BENCH_HARNESS=/work/shared/bench /tmp/venv/bin/python benchmarks/side_by_side/run.py \\
        --systems discoverd3,etcd3,pso-nobatch --reps 2 --duration 10 \\
        --out benchmarks/side_by_side/results.json

Same CLI as the harness's ``run_all.py`` (it *is* ``run_all.main()``); the harness is
imported from ``$BENCH_HARNESS`` (default ``/work/shared/bench``) and not modified. What this
adds, at run time only:

* ``run_all.SYSTEMS["discoverd3"]`` (3 members, client ports 27379/27389/27399, peer +1),
  ``["discoverd1"]`` (one member, 28379) and ``["discoverd3wrk"]`` (the 3-member cluster of
  ``discoverd3`` loaded by the harness's own ``wrk`` driver through discoverd's etcd HTTP/JSON
  gateway, as ``etcd3wrk`` loads etcd's; ``discoverd_wrk.py``). Every wrk cell of
  ``discoverd3wrk`` — and of ``etcd3wrk``, which is re-registered as the harness's
  ``EtcdWrkSystem`` plus the same check — is verified afterwards (the revision advanced by
  wrk's completed puts, reads moved nothing, a probe request answers right); a cell that fails
  the check is recorded as a failure, and the check's numbers go into the row (``verify``);
* ``--alt-ports`` (ours, removed before the harness parses the command line): every etcd and
  discoverd system on ports 32149-32300 instead of the harness's 24379-28399 (etcd3/etcd3wrk
  32179/32189/32199, discoverd3/discoverd3wrk 32279/32289/32299, etcd1 32149, discoverd1
  32249; peer = client + 1), for a machine where those ports are someone else's;
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
from discoverd_wrk import DiscoverdWrkSystem, VerifiedEtcdWrkSystem  # noqa: E402

S = run_all.S
ALT_PORTS = "--alt-ports" in sys.argv[1:]
if ALT_PORTS:
    sys.argv.remove("--alt-ports")
_P = {"etcd3": 32179, "etcd1": 32149, "discoverd3": 32279, "discoverd1": 32249} if ALT_PORTS \
    else {"etcd3": 24379, "etcd1": 25379, "discoverd3": 27379, "discoverd1": 28379}

run_all.SYSTEMS["discoverd3"] = lambda: DiscoverdSystem(members=3, base_port=_P["discoverd3"])
run_all.SYSTEMS["discoverd1"] = lambda: DiscoverdSystem(members=1, base_port=_P["discoverd1"])
run_all.SYSTEMS["discoverd3wrk"] = lambda: DiscoverdWrkSystem(members=3,
                                                             base_port=_P["discoverd3"])
run_all.SYSTEMS["etcd3wrk"] = lambda: VerifiedEtcdWrkSystem(members=3, base_port=_P["etcd3"])
if ALT_PORTS:
    run_all.SYSTEMS["etcd3"] = lambda: S.EtcdSystem(members=3, base_port=_P["etcd3"])
    run_all.SYSTEMS["etcd1"] = lambda: S.EtcdSystem(members=1, base_port=_P["etcd1"])

_summarize = run_all.summarize


def _summarize_with_verify(sysname, label, op, clients, rep, dur, m):  # type: ignore[no-untyped-def]
    """The harness's row, plus the wrk cells' verification (``discoverd_wrk.verify_wrk``)."""
    row = _summarize(sysname, label, op, clients, rep, dur, m)
    if "verify" in m:
        row["verify"] = m["verify"]
    return row


run_all.summarize = _summarize_with_verify
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
