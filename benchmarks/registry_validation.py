"""What validating config documents costs the apply loop (issue 6): N puts of a config
document checked against its JSON Schema (plus its history generation), against N puts of
the same bytes to a key outside the registry, applied through ``KvMachine.apply`` directly —
no Raft, no disk, no network — so that the difference is the registry hook alone.

Cases (each on a fresh machine, entries encoded before the clock starts):

* ``schema``    — ``/config/app`` with ``/schemas/app`` set: strict JSON parse, validation
  (cached validator), history entry written and the oldest beyond 50 deleted;
* ``no-schema`` — ``/config/free``: JSON-object check and history, no validation;
* ``plain``     — ``/plain/app``: a key the registry has no rule for.

Documents are ~25 fields (~600 B), a different one per write; the schema has types, ranges,
an enum, a pattern, a nested object and ``additionalProperties: false``. Reports writes/s,
median of --runs runs, and the ratio plain / schema.

    python benchmarks/registry_validation.py --writes 1000 --runs 5

``--cluster`` measures the same cases end to end instead: a 3-member loopback cluster of
real ``discoverd serve`` processes (heartbeat 100 ms, election 1000 ms), the writes sent to
the leader over the native protocol, one at a time (``sequential``) and 64 in flight
(``pipelined``); every write is fsynced and replicated, and validated on every member.

    python benchmarks/registry_validation.py --cluster --writes 1000 --runs 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import benchutil

from discoverd.consensus.messages import Entry, EntryKind
from discoverd.machine.applier import KvMachine, encode_command

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["service", "port", "log_level", "database"],
    "properties": {
        "service": {"type": "string", "pattern": "^[a-z][a-z0-9-]*$"},
        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
        "log_level": {"enum": ["debug", "info", "warning", "error"]},
        "workers": {"type": "integer", "minimum": 1},
        "timeout_s": {"type": "number", "exclusiveMinimum": 0},
        "features": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
        "database": {
            "type": "object",
            "required": ["host", "port"],
            "properties": {
                "host": {"type": "string"},
                "port": {"type": "integer"},
                "pool": {"type": "integer", "minimum": 1},
                "tls": {"type": "boolean"},
            },
        },
        **{f"limit_{i}": {"type": "integer", "minimum": 0} for i in range(12)},
        "owner": {"type": "string", "maxLength": 64},
    },
}


def document(i: int) -> bytes:
    doc = {
        "service": "checkout",
        "port": 8000 + i % 1000,
        "log_level": ("debug", "info", "warning", "error")[i % 4],
        "workers": 1 + i % 16,
        "timeout_s": 2.5,
        "features": ["a", "b", f"f{i % 7}"],
        "database": {"host": "db.internal", "port": 5432, "pool": 10, "tls": True},
        **{f"limit_{k}": i + k for k in range(12)},
        "owner": "team-payments",
    }
    return json.dumps(doc).encode()


def entries(key: bytes, writes: int, *, schema: bool) -> tuple[list[Entry], list[Entry]]:
    """(setup entries, timed entries)."""
    setup = []
    if schema:
        data = encode_command("put", {"key": b"/schemas/app", "value": json.dumps(SCHEMA).encode()})
        setup.append(Entry(1, 1, EntryKind.NORMAL, data))
    timed = [
        Entry(1, 2 + i, EntryKind.NORMAL,
              encode_command("put", {"key": key, "value": document(i)}))
        for i in range(writes)
    ]
    return setup, timed


def one_run(key: bytes, writes: int, *, schema: bool) -> float:
    setup, timed = entries(key, writes, schema=schema)
    machine = KvMachine()
    for e in setup:
        assert not isinstance(machine.apply(e), Exception)
    start = time.perf_counter()
    for e in timed:
        result = machine.apply(e)
        if isinstance(result, Exception):
            raise result
    elapsed = time.perf_counter() - start
    return writes / elapsed


def cluster_runs(writes: int, runs: int) -> None:
    import tempfile
    from pathlib import Path

    import trio
    from lease_watch import Conn, pipelined

    from discoverd.testing.cluster import ProcessCluster

    async def load(port: int, key: bytes, window: int) -> float:
        async with trio.open_nursery() as nursery:
            conns = [await Conn.open(port, nursery) for _ in range(min(window, 4))]
            elapsed = await pipelined(conns, writes, window, lambda c, i: c.call(
                "put", key=key, value=document(i)))
            nursery.cancel_scope.cancel()
        return writes / elapsed

    cases = [("schema", b"/config/app"), ("no-schema", b"/config/free"),
             ("plain", b"/plain/app")]
    results: dict[tuple[str, str], list[float]] = {}
    for run in range(runs):
        with tempfile.TemporaryDirectory(prefix="regbench-") as tmp, \
                ProcessCluster(Path(tmp), 3, heartbeat_ms=100, election_ms=1000) as c:
            c.start_all()
            leader = c.wait_for_leader()
            with leader.client() as cl:
                cl.call("put", key=b"/schemas/app", value=json.dumps(SCHEMA).encode())
            for mode, window in (("sequential", 1), ("pipelined", 64)):
                for name, key in cases:
                    rate = trio.run(load, leader.client_port, key, window)
                    results.setdefault((mode, name), []).append(rate)
                    print(f"  run {run + 1} {mode} {name}: {rate:,.0f} writes/s")
    benchutil.print_machine(benchutil.machine_info())
    print(f"{writes} writes per cell, median of {runs} runs (3-member cluster, fsync)\n")
    rows = [[mode, name, f"{statistics.median(v):,.0f}", f"{min(v):,.0f}..{max(v):,.0f}"]
            for (mode, name), v in results.items()]
    benchutil.print_table(["mode", "case", "writes/s", "range"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writes", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cluster", action="store_true",
                        help="end to end through a 3-member cluster")
    args = parser.parse_args()
    if args.cluster:
        cluster_runs(args.writes, args.runs)
        return
    cases = [("schema", b"/config/app", True), ("no-schema", b"/config/free", False),
             ("plain", b"/plain/app", False)]
    rates: dict[str, float] = {}
    rows = []
    for name, key, schema in cases:
        runs = [one_run(key, args.writes, schema=schema) for _ in range(args.runs)]
        rates[name] = statistics.median(runs)
        rows.append([name, key.decode(), f"{rates[name]:,.0f}",
                     f"{min(runs):,.0f}..{max(runs):,.0f}", f"{1e6 / rates[name]:.1f}"])
    benchutil.print_machine(benchutil.machine_info())
    print(f"{args.writes} writes per run, median of {args.runs} runs\n")
    benchutil.print_table(["case", "key", "writes/s", "range", "us/write"], rows)
    print(f"\nplain / schema = {rates['plain'] / rates['schema']:.2f}x   "
          f"plain / no-schema = {rates['plain'] / rates['no-schema']:.2f}x")


if __name__ == "__main__":
    main()
