"""Watch fan-out, etcd 3.4 and discoverd side by side in one invocation (issue 12).

    flock /tmp/bench.lock /tmp/venv/bin/python benchmarks/side_by_side/watch_fanout.py \\
        --reps 2 --watchers 1000 --procs 4 --puts 1000 --out /tmp/watch_fanout.json

The shared harness (``/work/shared/bench``) has no watch workload; this adds one, reusing its
cluster lifecycle and CPU accounting (``systems.EtcdSystem``, ``cpu_snapshot``/``cpu_delta``,
``kill_pids``) and our ``DiscoverdSystem``. For each repetition (interleaved: rep 1 of every
system, then rep 2 — each on a fresh 3-member cluster):

1. **Watchers**: ``--watchers`` (1,000) watches on the one prefix ``/fanout/``, in
   ``--procs`` (4) Python processes of ``watchers/procs`` (250) each. Each process has **one
   client connection** and every watch is **its own watch stream** on it:
   * etcd: one ``aetcd.Client`` (one gRPC channel = one HTTP/2 connection, as the harness's
     ``etcd_aetcd.py`` connects), one ``Watch`` bidi call per watch
     (``WatchStub(channel).Watch()`` + one ``WatchCreateRequest{key, range_end}``), read with
     ``call.read()``;
   * discoverd: one ``discoverd.sdk.AsyncClient`` under asyncio (anyio), as
     ``discoverd_adapter.py`` does, one ``client.watch(prefix, prefix=True,
     progress_notify=False)`` per watch (a stream id on the SDK's one connection; the SDK's
     default 1,024-frame buffer per watch, beyond which it resumes from history).
   All watches aim at the leader (``target()``, as the harness's load does) unless
   ``--spread``: process i then watches member i mod 3.
2. **Writer** (its own process, same client library, aimed at the leader): ``--puts`` (N)
   puts of new keys ``/fanout/%08d`` with ``--writer-clients`` (16) closed-loop tasks, as fast
   as they go (``--rate 0``) or paced at ``--rate`` puts/s overall. Each value is 256 bytes and
   starts with the ``time.time()`` at which its put was issued.
3. Every watcher checks each event: the key is one of the N, its ``mod_revision`` is above the
   previous one (order), the key was not seen before (exactly once); at the end each must have
   all N (loss) and every watcher's checksum of (key, revision) pairs must agree (all saw the
   same history). Delivery latency = receive ``time.time()`` minus the value's put time (one
   clock: one machine).

Reported per run: events delivered = the events received by all watchers (N x 1,000 when
nothing is lost); **events/s** = events ÷ (last event received - first put issued); latency
p50/p99 over every event; lost/duplicate/out-of-order events; the writer's puts/s and how long
delivery lagged the last put's answer; CPU from psutil over the window (first put issued → the
last watcher done) for the 3 members (**server CPU µs per delivered event**), the watcher
processes and the writer. All processes share the machine's cores with the members.

Ports (fixed, disjoint from the harness's): etcd 32379/32389/32399, discoverd
32579/32589/32599 (peer = client + 1). Data and logs under ``$BENCH_LAB``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import select
import statistics
import subprocess
import sys
import time
from collections import Counter
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
HARNESS = os.environ.get("BENCH_HARNESS", "/work/shared/bench")

PREFIX = b"/fanout/"
PREFIX_END = b"/fanout0"  # "/" + 1: the prefix's range end
VALUE_SIZE = 256
MIX_MOD = (1 << 61) - 1
LAT_BASE = 1.02  # latency histogram: log buckets of 2 % from 1 µs
ETCD_PORT, DISCOVERD_PORT = 32379, 32579


def key_of(seq: int) -> bytes:
    return PREFIX + b"%08d" % seq


def value_at(t: float) -> bytes:
    head = b"%017.6f" % t
    return head + b"x" * (VALUE_SIZE - len(head))


# ======================================================================= watcher side


class Tally:
    """One watcher's checks: count, order, duplicates, checksum, latencies."""

    __slots__ = (
        "bad",
        "count",
        "dup",
        "first_t",
        "last_rev",
        "last_t",
        "mix",
        "n",
        "order_err",
        "seen",
    )

    def __init__(self, n: int) -> None:
        self.n = n
        self.seen = bytearray(n)
        self.count = 0
        self.last_rev = 0
        self.order_err = 0
        self.dup = 0
        self.bad = 0
        self.mix = 0
        self.first_t = 0.0
        self.last_t = 0.0


def _tally(t: Tally, now: float, events: Any, lat: list[float], plen: int) -> None:
    """Account one response's events (``events``: objects with ``.kv.key/.value/
    .mod_revision`` — aetcd's protobuf and the SDK's dataclass both have them)."""
    if not t.first_t:
        t.first_t = now
    t.last_t = now
    seen = t.seen
    for ev in events:
        kv = ev.kv
        rev = kv.mod_revision
        try:
            seq = int(kv.key[plen:])
            put_t = float(kv.value[:17])
        except ValueError:
            t.bad += 1
            continue
        if not 0 <= seq < t.n:
            t.bad += 1
            continue
        if rev <= t.last_rev:
            t.order_err += 1
        t.last_rev = rev
        if seen[seq]:
            t.dup += 1
            continue
        seen[seq] = 1
        t.count += 1
        t.mix = (t.mix + (seq + 1) * rev) % MIX_MOD
        lat.append(now - put_t)


async def _etcd_watchers(target: str, w: int, n: int, deadline: float) -> dict[str, Any]:
    import aetcd
    import grpc
    from aetcd import rpc

    host, port = target.rsplit(":", 1)
    client = aetcd.Client(host=host, port=int(port), timeout=30)
    await client.connect()
    stub = rpc.WatchStub(client.channel)
    tallies = [Tally(n) for _ in range(w)]
    lat: list[float] = []
    calls = []
    create = rpc.WatchRequest(create_request=rpc.WatchCreateRequest(key=PREFIX,
                                                                     range_end=PREFIX_END))
    for _ in range(w):
        call = stub.Watch()
        await call.write(create)
        resp = await call.read()
        if not resp.created:
            raise RuntimeError(f"etcd watch not created: {resp}")
        calls.append(call)
    _say("READY")
    plen = len(PREFIX)

    async def reader(call: Any, t: Tally) -> None:
        while t.count < n:
            resp = await call.read()
            if resp is grpc.aio.EOF:
                return
            if resp.canceled:
                raise RuntimeError(f"etcd watch canceled: {resp}")
            if resp.events:
                _tally(t, time.time(), resp.events, lat, plen)

    tasks = [asyncio.ensure_future(reader(c, t)) for c, t in zip(calls, tallies, strict=True)]
    _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.time()))
    _say("DONE")
    for task in pending:
        task.cancel()
    errors = [repr(t.exception())[:300] for t in tasks
              if t.done() and not t.cancelled() and t.exception() is not None]
    done_t = time.time()
    for call in calls:
        call.cancel()
    await client.close()
    return _report(tallies, lat, done_t, timed_out=bool(pending), errors=errors, resumes=0)


async def _discoverd_watchers(target: str, w: int, n: int, deadline: float) -> dict[str, Any]:
    import contextlib

    import anyio

    from discoverd.sdk import AsyncClient

    tallies = [Tally(n) for _ in range(w)]
    lat: list[float] = []
    errors: list[str] = []
    plen = len(PREFIX)
    timed_out = False
    async with AsyncClient(target, dial_timeout=5.0, command_timeout=30.0) as client:
        await client.status()
        async with contextlib.AsyncExitStack() as stack:
            watches = [await stack.enter_async_context(
                client.watch(PREFIX, prefix=True, progress_notify=False)) for _ in range(w)]
            _say("READY")

            async def reader(watch: Any, t: Tally) -> None:
                try:
                    async for resp in watch:
                        if resp.events:
                            _tally(t, time.time(), resp.events, lat, plen)
                        if t.count >= n:
                            return
                except Exception as e:  # recorded; the watcher then counts as incomplete
                    errors.append(repr(e)[:300])

            with anyio.move_on_after(max(0.0, deadline - time.time())) as scope:
                async with anyio.create_task_group() as tg:
                    for watch, t in zip(watches, tallies, strict=True):
                        tg.start_soon(reader, watch, t)
            _say("DONE")
            timed_out = scope.cancelled_caught
            done_t = time.time()
            resumes = sum(wt.resumes for wt in watches)
    return _report(tallies, lat, done_t, timed_out=timed_out, errors=errors, resumes=resumes)


def _report(tallies: list[Tally], lat: list[float], done_t: float, *, timed_out: bool,
            errors: list[str], resumes: int) -> dict[str, Any]:
    n = tallies[0].n if tallies else 0
    hist: Counter[int] = Counter()
    for x in lat:
        hist[int(math.log(max(x, 1e-6) / 1e-6, LAT_BASE))] += 1
    firsts = [t.first_t for t in tallies if t.first_t]
    return {
        "watchers": len(tallies), "expected_per_watcher": n,
        "complete": sum(1 for t in tallies if t.count == n),
        "events": sum(t.count for t in tallies),
        "lost": sum(n - t.count for t in tallies),
        "dup": sum(t.dup for t in tallies), "order_err": sum(t.order_err for t in tallies),
        "bad": sum(t.bad for t in tallies),
        "mixes": sorted({t.mix for t in tallies if t.count == n}),
        "first_event_t": min(firsts) if firsts else None,
        "last_event_t": max((t.last_t for t in tallies), default=None),
        "done_t": done_t, "timed_out": timed_out, "errors": errors[:5],
        "n_errors": len(errors), "resumes": resumes,
        "lat_hist": {str(k): v for k, v in hist.items()},
    }


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _linger() -> None:
    """Stay alive (idle) until the orchestrator closes our stdin, so that its closing CPU
    snapshot still finds this process."""
    sys.stdin.read()


def watcher_main(a: argparse.Namespace) -> None:
    fn = _etcd_watchers if a.system == "etcd" else _discoverd_watchers
    res = asyncio.run(fn(a.target, a.watchers, a.puts, a.deadline))
    _say("RESULT " + json.dumps(res))
    _linger()


# ======================================================================= writer side


async def _writer(a: argparse.Namespace) -> dict[str, Any]:
    if a.system == "etcd":
        import aetcd

        host, port = a.target.rsplit(":", 1)
        client: Any = aetcd.Client(host=host, port=int(port), timeout=30)
        await client.connect()
        put = client.put
        close = client.close
    else:
        from discoverd.sdk import AsyncClient

        client = AsyncClient(a.target, dial_timeout=5.0, command_timeout=30.0)
        await client.__aenter__()
        await client.status()
        put = client.put
        close = client.aclose
    lat: list[float] = []
    errors: list[str] = []
    state = {"next": 0}
    delay = a.start_at - time.time()
    if delay > 0:
        await asyncio.sleep(delay)
    t0 = time.time()

    async def one() -> None:
        while True:
            seq = state["next"]
            if seq >= a.puts:
                return
            state["next"] = seq + 1
            if a.rate:
                wait = t0 + seq / a.rate - time.time()
                if wait > 0:
                    await asyncio.sleep(wait)
            s = time.time()
            try:
                await put(key_of(seq), value_at(s))
            except Exception as e:  # no retry: the outcome of a failed write is unknown
                errors.append(f"{seq}: {e!r}"[:300])
                continue
            lat.append(time.time() - s)

    try:
        await asyncio.gather(*[one() for _ in range(a.writer_clients)])
        t1 = time.time()
    finally:
        await close()
    lat.sort()
    return {"first_put_t": t0, "last_ack_t": t1, "puts": len(lat), "errors": len(errors),
            "error_samples": errors[:5], "puts_per_s": len(lat) / (t1 - t0),
            "put_p50_ms": 1e3 * lat[len(lat) // 2] if lat else None,
            "put_p99_ms": 1e3 * lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else None}


def writer_main(a: argparse.Namespace) -> None:
    _say("RESULT " + json.dumps(asyncio.run(_writer(a))))
    _linger()


# ======================================================================= orchestrator


class Lines:
    """Line reader over a child's stdout pipe with deadlines (select + os.read)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        assert proc.stdout is not None
        self.fd = proc.stdout.fileno()
        self.buf = b""

    def next(self, deadline: float) -> str | None:
        while b"\n" not in self.buf:
            left = deadline - time.time()
            if left <= 0:
                return None
            r, _, _ = select.select([self.fd], [], [], left)
            if not r:
                return None
            chunk = os.read(self.fd, 1 << 20)
            if not chunk:
                return None
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode()

    def expect(self, prefix: str, deadline: float) -> str:
        while True:
            line = self.next(deadline)
            if line is None:
                raise RuntimeError(f"pid {self.proc.pid}: no {prefix!r} line in time "
                                   f"(rc={self.proc.poll()})")
            if line.startswith(prefix):
                return line[len(prefix):].strip()


def _lat_pct(hist: Counter[int], q: float) -> float | None:
    total = sum(hist.values())
    if not total:
        return None
    want = q * total
    acc = 0
    for k in sorted(hist):
        acc += hist[k]
        if acc >= want:
            return 1e-6 * LAT_BASE ** (k + 0.5) * 1e3  # bucket middle, in ms
    return None


def make_system(name: str, S: Any) -> Any:
    if name == "etcd":
        return S.EtcdSystem(members=3, base_port=ETCD_PORT)
    from discoverd_system import DiscoverdSystem
    return DiscoverdSystem(members=3, base_port=DISCOVERD_PORT)


def run_one(name: str, rep: int, a: argparse.Namespace, S: Any,
            on_start: Any = None) -> dict[str, Any]:
    """One measurement on a fresh cluster. ``on_start(sysobj, leader)``, if given, is called
    when the writer starts (``profile_gateway.py`` starts py-spy there)."""
    sysobj = make_system(name, S)
    logdir = os.path.join(S.LAB, "logs")
    os.makedirs(logdir, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    me = os.path.abspath(__file__)
    try:
        sysobj.start()
        leader = sysobj.target()
        members = [u.replace("http://", "") for u in sysobj.client_urls] if name == "etcd" \
            else [f"127.0.0.1:{p}" for p in sysobj.client_ports]
        per = [a.watchers // a.procs + (1 if i < a.watchers % a.procs else 0)
               for i in range(a.procs)]
        deadline = time.time() + a.max_seconds
        watchers = []
        for i, w in enumerate(per):
            target = members[i % len(members)] if a.spread else leader
            with open(os.path.join(logdir, f"fanout-{name}-r{rep}-w{i}.log"), "wb") as err:
                p = subprocess.Popen(
                    [sys.executable, me, "_watch", "--system", name, "--target", target,
                     "--watchers", str(w), "--puts", str(a.puts), "--deadline",
                     repr(deadline)],
                    stdout=subprocess.PIPE, stderr=err, stdin=subprocess.PIPE, bufsize=0)
            procs.append(p)
            watchers.append(Lines(p))
        t_setup = time.time()
        for lr in watchers:
            lr.expect("READY", time.time() + 120)
        setup_s = time.time() - t_setup
        start_at = time.time() + 2.0
        with open(os.path.join(logdir, f"fanout-{name}-r{rep}-writer.log"), "wb") as err:
            wp = subprocess.Popen(
                [sys.executable, me, "_write", "--system", name, "--target", leader,
                 "--puts", str(a.puts), "--writer-clients", str(a.writer_clients),
                 "--rate", str(a.rate), "--start-at", repr(start_at)],
                stdout=subprocess.PIPE, stderr=err, stdin=subprocess.PIPE, bufsize=0)
        procs.append(wp)
        writer = Lines(wp)
        spids = sysobj.server_pids()
        wpids = [p.pid for p in procs[:-1]]
        pids = spids + wpids + [wp.pid]
        d = start_at - time.time()
        if d > 0:
            time.sleep(d)
        cpu_a, t_a = S.cpu_snapshot(pids), time.time()
        if on_start is not None:
            on_start(sysobj, leader)
        for lr in watchers:
            lr.expect("DONE", deadline + 60)
        cpu_b, t_b = S.cpu_snapshot(pids), time.time()
        results = [json.loads(lr.expect("RESULT", time.time() + 120)) for lr in watchers]
        wres = json.loads(writer.expect("RESULT", time.time() + 60))
        for p in procs:
            assert p.stdin is not None
            p.stdin.close()
        for p in procs:
            p.wait(timeout=30)
        found = sysobj._find_leader()
        leader_now = found if isinstance(found, str) or found is None else f"127.0.0.1:{found}"
    finally:
        S.kill_pids(procs)
        sysobj.stop()
    hist: Counter[int] = Counter()
    for r in results:
        hist.update({int(k): v for k, v in r["lat_hist"].items()})
    events = sum(r["events"] for r in results)
    last_event = max((r["last_event_t"] or 0) for r in results)
    window = last_event - wres["first_put_t"] if last_event else None
    cpu_window = t_b - t_a
    server_cpu = S.cpu_delta(cpu_a, cpu_b, spids)
    watch_cpu = S.cpu_delta(cpu_a, cpu_b, wpids)
    writer_cpu = S.cpu_delta(cpu_a, cpu_b, [wp.pid])
    mixes = sorted({m for r in results for m in r["mixes"]})
    expected = a.watchers * a.puts
    return {
        "system": sysobj.name, "rep": rep, "watchers": a.watchers, "procs": a.procs,
        "connections": a.procs, "streams_per_connection": per, "puts": a.puts,
        "rate": a.rate, "writer_clients": a.writer_clients, "spread": a.spread,
        "setup_s": setup_s,
        "events": events, "expected_events": expected,
        "lost": sum(r["lost"] for r in results), "dup": sum(r["dup"] for r in results),
        "order_err": sum(r["order_err"] for r in results),
        "bad": sum(r["bad"] for r in results),
        "complete_watchers": sum(r["complete"] for r in results),
        "histories_agree": len(mixes) <= 1, "timed_out": any(r["timed_out"] for r in results),
        "watcher_errors": sum(r["n_errors"] for r in results),
        "watcher_error_samples": [e for r in results for e in r["errors"]][:5],
        "sdk_resumes": sum(r["resumes"] for r in results),
        "window_s": window, "events_per_s": events / window if window else None,
        "lat_p50_ms": _lat_pct(hist, 0.50), "lat_p99_ms": _lat_pct(hist, 0.99),
        "lat_max_ms": _lat_pct(hist, 1.0),
        "writer": wres, "delivery_lag_s": last_event - wres["last_ack_t"] if last_event else None,
        "cpu_window_s": cpu_window, "server_cpu_s": server_cpu,
        "server_cpu_pct": 100 * server_cpu / cpu_window,
        "watcher_cpu_pct": 100 * watch_cpu / cpu_window,
        "writer_cpu_pct": 100 * writer_cpu / cpu_window,
        "server_cpu_us_per_event": 1e6 * server_cpu / events if events else None,
        "watcher_cpu_us_per_event": 1e6 * watch_cpu / events if events else None,
        "leader_unchanged": leader_now == leader,
    }


def _f(v: Any, nd: int) -> str:
    return "-" if v is None else f"{v:,.{nd}f}"


def table(runs: list[dict[str, Any]]) -> str:
    out = ["| system | rep | events/s | window s | puts/s | delivery lag s | lat p50 ms "
           "| lat p99 ms | lost / dup / out-of-order | server CPU% | server CPU µs/event "
           "| watcher CPU% | writer CPU% |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for r in runs:
        out.append(
            f"| {r['system']} | {r['rep']} | {_f(r['events_per_s'], 0)} | "
            f"{_f(r['window_s'], 2)} | {_f(r['writer']['puts_per_s'], 0)} | "
            f"{_f(r['delivery_lag_s'], 2)} | {_f(r['lat_p50_ms'], 1)} | "
            f"{_f(r['lat_p99_ms'], 1)} | {r['lost']} / {r['dup']} / {r['order_err']} | "
            f"{_f(r['server_cpu_pct'], 0)} | {_f(r['server_cpu_us_per_event'], 2)} | "
            f"{_f(r['watcher_cpu_pct'], 0)} | {_f(r['writer_cpu_pct'], 0)} |")
    return "\n".join(out)


def summary(runs: list[dict[str, Any]], need: float = 1.0) -> dict[str, Any]:
    by: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by.setdefault(r["system"], []).append(r)
    med: dict[str, dict[str, Any]] = {}
    for name, rs in by.items():
        def m(key: str, rs: list[dict[str, Any]] = rs) -> float | None:
            xs = [r[key] for r in rs if r[key] is not None]
            return statistics.median(xs) if xs else None
        med[name] = {"events_per_s": m("events_per_s"), "lat_p50_ms": m("lat_p50_ms"),
                     "lat_p99_ms": m("lat_p99_ms"),
                     "server_cpu_us_per_event": m("server_cpu_us_per_event"),
                     "watcher_cpu_us_per_event": m("watcher_cpu_us_per_event"),
                     "lost": sum(r["lost"] + r["dup"] + r["order_err"] + r["bad"] for r in rs),
                     "reps": len(rs)}
    ours, theirs = med.get("discoverd-3node"), med.get("etcd-3node")
    ratio = None
    if ours and theirs and ours["events_per_s"] and theirs["events_per_s"]:
        ratio = ours["events_per_s"] / theirs["events_per_s"]
    return {"medians": med, "ratio_events_per_s": ratio, "target": need,
            "target_met": None if ratio is None else (ratio >= need and ours["lost"] == 0)}


def summary_table(s: dict[str, Any]) -> str:
    out = ["| system | reps | events/s (median) | lat p50 ms | lat p99 ms "
           "| server CPU µs/event | watcher CPU µs/event | lost+dup+disorder |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, m in sorted(s["medians"].items()):
        out.append(f"| {name} | {m['reps']} | {_f(m['events_per_s'], 0)} | "
                   f"{_f(m['lat_p50_ms'], 1)} | {_f(m['lat_p99_ms'], 1)} | "
                   f"{_f(m['server_cpu_us_per_event'], 2)} | "
                   f"{_f(m['watcher_cpu_us_per_event'], 2)} | {m['lost']} |")
    r = s["ratio_events_per_s"]
    verdict = "no data" if s["target_met"] is None else \
        ("met" if s["target_met"] else "**not met**")
    out.append(f"\nwatch fan-out events/s ≥ {s['target']:.1f}x etcd: discoverd/etcd = "
               f"{'-' if r is None else f'{r:.2f}x'} → {verdict}")
    return "\n".join(out)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("_watch", "_write"):
        role = sys.argv.pop(1)
        sys.path.insert(0, HERE)
        p = argparse.ArgumentParser()
        p.add_argument("--system", required=True, choices=("etcd", "discoverd"))
        p.add_argument("--target", required=True)
        p.add_argument("--watchers", type=int)
        p.add_argument("--puts", type=int, required=True)
        p.add_argument("--deadline", type=float)
        p.add_argument("--writer-clients", type=int, default=16)
        p.add_argument("--rate", type=float, default=0.0)
        p.add_argument("--start-at", type=float)
        a = p.parse_args()
        (watcher_main if role == "_watch" else writer_main)(a)
        return

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--systems", default="etcd,discoverd")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--watchers", type=int, default=1000)
    ap.add_argument("--procs", type=int, default=4, help="watcher processes (1 connection each)")
    ap.add_argument("--puts", type=int, default=1000)
    ap.add_argument("--writer-clients", type=int, default=16)
    ap.add_argument("--rate", type=float, default=0.0, help="puts/s overall; 0 = unpaced")
    ap.add_argument("--spread", action="store_true",
                    help="watcher process i on member i mod 3 (default: all on the leader)")
    ap.add_argument("--max-seconds", type=float, default=150.0,
                    help="bound on one run (watch setup to the last event)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()

    sys.path.insert(0, HARNESS)
    sys.path.insert(0, HERE)
    import systems as S  # the harness

    os.makedirs(os.path.join(S.LAB, "logs"), exist_ok=True)
    names = a.systems.split(",")
    runs, failures = [], []
    t_start = time.strftime("%Y-%m-%d %H:%M:%S")
    load_start = os.getloadavg()
    for rep in range(1, a.reps + 1):
        for name in names:
            try:
                r = run_one(name, rep, a, S)
                runs.append(r)
                print(table([r]).splitlines()[-1], flush=True)
            except Exception as e:
                import traceback
                failures.append({"system": name, "rep": rep,
                                 "error": traceback.format_exc()[-2000:]})
                print("FAILED", name, rep, repr(e)[:500], flush=True)
    s = summary(runs)
    versions = {}
    try:
        versions["etcd"] = S.EtcdSystem().version()
        from discoverd_system import DiscoverdSystem
        versions["discoverd"] = DiscoverdSystem().version()
        import importlib.metadata as md
        versions.update({p: md.version(p) for p in ("aetcd", "grpcio", "protobuf", "psutil")})
    except Exception:
        pass
    env = {"python": sys.version.split()[0], "platform": platform.platform(),
           "cpus": os.cpu_count(), "time": t_start, "argv": sys.argv,
           "loadavg_at_start": load_start, "loadavg_at_end": os.getloadavg()}
    print()
    print(table(runs))
    print()
    print(summary_table(s))
    if failures:
        print("\nFAILURES:", json.dumps(failures, indent=1)[:4000])
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"env": env, "versions": versions, "config": vars(a), "runs": runs,
                       "summary": s, "failures": failures}, f, indent=1)
        print("\nwrote", a.out)


if __name__ == "__main__":
    main()
