"""Tables of docs/performance.md's issue-12 section from a side-by-side ``results.json``.

    python benchmarks/side_by_side/tables.py benchmarks/side_by_side/results.json
    python benchmarks/side_by_side/tables.py rep1.json rep2.json --watch watch_fanout.json

Prints, in markdown: every row with both repetitions (``rep1 / rep2``) and their median
(of two: the mean), server CPU per op (server CPU seconds / ops, in ms), the per-system CPU
per op summary, and the issue-12 targets (discoverd-3node against etcd-3node, medians;
the HTTP gateways under wrk, ``discoverd-3node+wrk-http`` against ``etcd-3node+wrk-http``,
when those rows are there).

Several results files (e.g. ``run.py --reps 1`` run twice, to keep each run short) are
merged: a cell's repetitions are renumbered 1, 2, ... in the order of the files.
``--watch a.json[,b.json]`` adds the watch fan-out rows and target from ``watch_fanout.py``'s
JSON (several files merged the same way).
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from typing import Any

ORDER = {"write": 0, "lin-read": 1, "ser-read": 2, "lease-grant": 3, "lease-keepalive": 4}


def _med(vals: list[float | None]) -> float | None:
    xs = [v for v in vals if v is not None]
    return statistics.median(xs) if xs else None


def _f(v: float | None, nd: int) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def _both(vals: list[float | None], nd: int) -> str:
    return " / ".join(_f(v, nd) for v in vals)


def cells(rows: list[dict[str, Any]]) -> dict[tuple[str, str, int], list[dict[str, Any]]]:
    out: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        out[(r["system"], r["workload"], r["clients"])].append(r)
    for v in out.values():
        v.sort(key=lambda r: r["rep"])
    return out


def cpu_ms_per_op(r: dict[str, Any], key: str = "server_cpu_pct") -> float | None:
    if not r["ops_per_s"]:
        return None
    return float(r[key]) * 10.0 / float(r["ops_per_s"])  # (pct/100 s per s) / (ops per s)


def main_table(rows: list[dict[str, Any]]) -> str:
    out = ["| system | workload | C | ops/s (rep1 / rep2) | ops/s median | p50 ms | p99 ms "
           "| server CPU% | client CPU% | server CPU ms/op | errors |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    cs = cells(rows)
    for (system, wl, c) in sorted(cs, key=lambda k: (k[0], ORDER.get(k[1], 9), k[2])):
        rs = cs[(system, wl, c)]
        ops = [r["ops_per_s"] for r in rs]
        cols = [system, wl, str(c), _both(ops, 0), _f(_med(ops), 0),
                _both([r["p50_ms"] for r in rs], 2), _both([r["p99_ms"] for r in rs], 1),
                _both([r["server_cpu_pct"] for r in rs], 0),
                _both([r["client_cpu_pct"] for r in rs], 0),
                _both([cpu_ms_per_op(r) for r in rs], 3),
                " / ".join(str(r["errors"]) for r in rs)]
        out.append("| " + " | ".join(cols) + " |")
    return "\n".join(out)


def cpu_summary(rows: list[dict[str, Any]]) -> str:
    """Server and client CPU ms per op for each system, per workload (medians of reps)."""
    cs = cells(rows)
    out = ["| system | workload | C | server CPU ms/op | client CPU ms/op |",
           "|---|---|---:|---:|---:|"]
    for (system, wl, c) in sorted(cs, key=lambda k: (k[0], ORDER.get(k[1], 9), k[2])):
        rs = cs[(system, wl, c)]
        cols = [system, wl, str(c), _f(_med([cpu_ms_per_op(r) for r in rs]), 3),
                _f(_med([cpu_ms_per_op(r, "client_cpu_pct") for r in rs]), 3)]
        out.append("| " + " | ".join(cols) + " |")
    return "\n".join(out)


def targets(rows: list[dict[str, Any]], ours: str = "discoverd-3node",
            theirs: str = "etcd-3node") -> str:
    cs = cells(rows)

    def med(system: str, wl: str, c: int, key: str) -> float | None:
        rs = cs.get((system, wl, c))
        return _med([r[key] for r in rs]) if rs else None

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or not b else a / b

    lines = ["| target | discoverd (median) | etcd (median) | ratio | verdict |",
             "|---|---:|---:|---:|---|"]

    def row(name: str, a: float | None, b: float | None, r: float | None, ok: bool | None,
            nd: int = 0) -> None:
        verdict = ("(no target)" if name.startswith("(") else "no data") if ok is None \
            else ("met" if ok else "**not met**")
        cols = [name, _f(a, nd), _f(b, nd), "-" if r is None else f"{r:.2f}x", verdict]
        lines.append("| " + " | ".join(cols) + " |")

    for c, need in ((64, 1.5), (16, 1.2)):
        a, b = med(ours, "write", c, "ops_per_s"), med(theirs, "write", c, "ops_per_s")
        r = ratio(a, b)
        row(f"writes C={c} ops/s ≥ {need:.1f}x etcd", a, b, r,
            None if r is None else r >= need)
    a, b = med(ours, "write", 64, "p99_ms"), med(theirs, "write", 64, "p99_ms")
    r = ratio(a, b)
    row("writes C=64 p99 ms ≤ etcd's", a, b, r, None if r is None else r <= 1.0, 1)
    a, b = med(ours, "write", 1, "p50_ms"), med(theirs, "write", 1, "p50_ms")
    row("write C=1 p50 ≤ 1.0 ms", a, b, ratio(a, b), None if a is None else a <= 1.0, 2)
    a, b = med(ours, "lin-read", 64, "ops_per_s"), med(theirs, "lin-read", 64, "ops_per_s")
    r = ratio(a, b)
    row("lin reads C=64 ≥ 1.5x etcd", a, b, r, None if r is None else r >= 1.5)
    for c in (64, 16):
        a = med(ours, "ser-read", c, "ops_per_s")
        b = med(theirs, "lin-read", c, "ops_per_s")
        r = ratio(a, b)
        row(f"serializable reads C={c} ≥ 3x etcd's linearizable C={c}", a, b, r,
            None if r is None else r >= 3.0)
    a = med(ours, "lease-keepalive", 16, "ops_per_s")
    b = med(theirs, "lease-keepalive", 16, "ops_per_s")
    r = ratio(a, b)
    row("lease keep-alives C=16 ≥ 1.0x etcd", a, b, r, None if r is None else r >= 1.0)
    a = med(ours, "lease-grant", 16, "ops_per_s")
    b = med(theirs, "lease-grant", 16, "ops_per_s")
    row("(lease grants C=16, no target)", a, b, ratio(a, b), None)
    gw_ours, gw_theirs = ours + "+wrk-http", theirs + "+wrk-http"
    for wl, what in (("write", "put"), ("lin-read", "range")):
        for c in (16, 64):
            a, b = med(gw_ours, wl, c, "ops_per_s"), med(gw_theirs, wl, c, "ops_per_s")
            if a is None and b is None:
                continue
            r = ratio(a, b)
            row(f"HTTP gateway under wrk, {what} C={c} ≥ 0.75x etcd's gateway", a, b, r,
                None if r is None else r >= 0.75)
    return "\n".join(lines)


def watch_tables(data: dict[str, Any]) -> str:
    """``watch_fanout.py``'s runs (both reps, medians) and its target."""
    runs = data["runs"]
    cfg = data.get("config", {})
    out = [f"watch fan-out: {cfg.get('watchers')} watchers on one prefix in "
           f"{cfg.get('procs')} processes (1 connection each, 1 stream per watch), "
           f"{cfg.get('puts')} puts, writer {cfg.get('writer_clients')} clients, "
           f"rate {cfg.get('rate') or 'unpaced'}",
           "",
           "| system | events/s (rep1 / rep2 ...) | median | lat p50 ms | lat p99 ms "
           "| lost / dup / disorder | server CPU% | server CPU µs/event | watcher CPU% "
           "| watcher CPU µs/event | puts/s |",
           "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        by[r["system"]].append(r)
    meds = {}
    for system in sorted(by):
        rs = sorted(by[system], key=lambda r: r["rep"])
        eps = [r["events_per_s"] for r in rs]
        meds[system] = _med(eps)
        cols = [system, _both(eps, 0), _f(_med(eps), 0),
                _both([r["lat_p50_ms"] for r in rs], 0),
                _both([r["lat_p99_ms"] for r in rs], 0),
                " / ".join(f"{r['lost']}/{r['dup']}/{r['order_err']}" for r in rs),
                _both([r["server_cpu_pct"] for r in rs], 0),
                _both([r["server_cpu_us_per_event"] for r in rs], 2),
                _both([r["watcher_cpu_pct"] for r in rs], 0),
                _both([r["watcher_cpu_us_per_event"] for r in rs], 2),
                _both([r["writer"]["puts_per_s"] for r in rs], 0)]
        out.append("| " + " | ".join(cols) + " |")
    a, b = meds.get("discoverd-3node"), meds.get("etcd-3node")
    lost = sum(r["lost"] + r["dup"] + r["order_err"] for r in by.get("discoverd-3node", []))
    if a is not None and b:
        ok = a / b >= 1.0 and lost == 0
        out.append(f"\n| target | discoverd (median) | etcd (median) | ratio | verdict |\n"
                   f"|---|---:|---:|---:|---|\n"
                   f"| watch fan-out to {cfg.get('watchers')} watchers ≥ 1.0x etcd "
                   f"(events/s) | {a:.0f} | {b:.0f} | {a / b:.2f}x | "
                   f"{'met' if ok else '**not met**'} |")
    return "\n".join(out)


def load(paths: list[str]) -> dict[str, Any]:
    """One results file, or several merged (reps renumbered per cell in file order)."""
    datas = []
    for path in paths:
        with open(path) as f:
            datas.append(json.load(f))
    if len(datas) == 1:
        return datas[0]
    merged: dict[str, Any] = {"env": [d.get("env", {}) for d in datas],
                              "machine": datas[0].get("machine", {}), "versions": {},
                              "micro": [], "rows": [], "failures": []}
    seen: dict[tuple[str, str, int], int] = defaultdict(int)
    for d in datas:
        merged["versions"].update(d.get("versions", {}))
        merged["micro"] += d.get("micro", [])
        merged["failures"] += d.get("failures", [])
        for r in sorted(d["rows"], key=lambda r: r["rep"]):
            k = (r["system"], r["workload"], r["clients"])
            seen[k] += 1
            merged["rows"].append({**r, "rep": seen[k]})
    return merged


def main() -> None:
    args = sys.argv[1:]
    watch = None
    if "--watch" in args:
        i = args.index("--watch")
        watch = args[i + 1]
        del args[i:i + 2]
    data = load(args)
    rows = data["rows"]
    print("env:", json.dumps(data.get("env", {})))
    print("machine:", json.dumps(data.get("machine", {})))
    print("versions:", json.dumps(data.get("versions", {})))
    if data.get("micro"):
        print("\n| micro | rep | ops/s | p50 µs | p99 µs |\n|---|---:|---:|---:|---:|")
        for m in data["micro"]:
            print(f"| {m['name']} | {m['rep']} | {m['ops_per_s']:.0f} | {m['p50_us']:.0f} "
                  f"| {m['p99_us']:.0f} |")
    print()
    print(main_table(rows))
    print()
    print(cpu_summary(rows))
    print()
    print(targets(rows))
    errs = [r for r in rows if r["errors"]]
    if errs:
        print("\nerrors:")
        for r in errs:
            print(" ", r["system"], r["workload"], r["clients"], "rep", r["rep"],
                  r["errors"], r["error_samples"])
    if data.get("failures"):
        print("\nFAILURES:", json.dumps(data["failures"], indent=1))
    unverified = [r for r in rows if "+wrk-http" in r["system"] and
                  not (r.get("verify") or {}).get("ok")]
    if unverified:
        print("\nwrk rows without a passed verification:",
              [(r["system"], r["workload"], r["clients"], r["rep"]) for r in unverified])
    if watch:
        wdata: dict[str, Any] = {"runs": []}
        for path in watch.split(","):  # several files: reps renumbered in file order
            with open(path) as f:
                d = json.load(f)
            wdata.setdefault("config", d.get("config", {}))
            for r in sorted(d["runs"], key=lambda r: r["rep"]):
                n = sum(1 for x in wdata["runs"] if x["system"] == r["system"])
                wdata["runs"].append({**r, "rep": n + 1})
        print()
        print(watch_tables(wdata))


if __name__ == "__main__":
    main()
