"""Leases and watches (issue 5): watch fan-out, lease grant and keep-alive rates, and how
long 10,000 leases take to expire at once — on a 3-member loopback cluster of real
``discoverd serve`` processes (heartbeat 100 ms, election 1000 ms, data under --dir).

The load speaks the native protocol directly (cbor2 frames over trio sockets, pipelined
with a bounded window), not through the SDK, so that what is measured is the members.
It runs in this one process, sharing the machine's CPUs with the three members.

* ``watch-W`` (W = 1, 100, 1000): W watches on the prefix ``/bench/`` on a follower (at most
  100 per connection), then --events puts (256 B, pipelined, 64 in flight) to the leader.
  Reported: events delivered per second = W x events / (time from the first put sent to the
  last event received by every watch), and the same time for the puts alone.
* ``grant``: --leases lease grants, pipelined (256 in flight over 4 connections).
* ``keepalive``: one keep-alive for each of those leases, pipelined the same way, sent to
  the leader (``keepalive``) and to a follower (``keepalive-fwd``: forwarded to the leader
  over the peer link).
* ``expire``: --leases leases of TTL 20 s each (long enough to grant them all and put one
  key on each before the first runs out), then the time from the last lease's deadline (its
  grant's answer + TTL) until a count of the keys on the leader is 0, and whether the
  leader's term changed meanwhile.

    python benchmarks/lease_watch.py --dir /tmp/lwb --runs 3
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import benchutil
import cbor2
import trio

from discoverd.testing.cluster import NativeClient, ProcessCluster


class Conn:
    """One pipelined native-protocol connection: ``call`` many at once, answers by id."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ids = itertools.count(1)
        self.waiting: dict[int, trio.Event] = {}
        self.answers: dict[int, Any] = {}
        self.streams: dict[int, trio.MemorySendChannel[Any]] = {}
        self.lock = trio.Lock()

    @classmethod
    async def open(cls, port: int, nursery: trio.Nursery) -> Conn:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"DSC1")
        conn = cls(stream)
        nursery.start_soon(conn._reader)
        return conn

    async def _send(self, body: dict[str, Any]) -> int:
        rid = next(self.ids)
        data = cbor2.dumps({**body, "id": rid})
        async with self.lock:
            await self.stream.send_all(len(data).to_bytes(4, "big") + data)
        return rid

    async def call(self, op: str, **fields: Any) -> Any:
        event = trio.Event()
        rid = next(self.ids)
        self.waiting[rid] = event
        data = cbor2.dumps({**fields, "op": op, "id": rid})
        async with self.lock:
            await self.stream.send_all(len(data).to_bytes(4, "big") + data)
        await event.wait()
        answer = self.answers.pop(rid)
        if "err" in answer:
            raise RuntimeError(f"{op}: {answer['err']}")
        return answer["ok"]

    async def watch(self, **fields: Any) -> trio.MemoryReceiveChannel[Any]:
        send, recv = trio.open_memory_channel[Any](100_000)
        rid = next(self.ids)
        self.streams[rid] = send
        data = cbor2.dumps({**fields, "op": "watch", "id": rid})
        async with self.lock:
            await self.stream.send_all(len(data).to_bytes(4, "big") + data)
        return recv

    async def _reader(self) -> None:
        buf = bytearray()
        while True:
            data = await self.stream.receive_some(1 << 20)
            if not data:
                return
            buf += data
            while len(buf) >= 4:
                size = int.from_bytes(buf[:4], "big")
                if len(buf) < 4 + size:
                    break
                frame = cbor2.loads(bytes(buf[4:4 + size]))
                del buf[:4 + size]
                rid = frame["id"]
                if rid in self.streams:
                    self.streams[rid].send_nowait(frame)
                else:
                    self.answers[rid] = frame
                    self.waiting.pop(rid).set()


async def pipelined(conns: list[Conn], n: int, window: int, make: Any) -> float:
    """Run ``n`` calls (``make(conn, i)``) with ``window`` in flight; return seconds."""
    sem = trio.Semaphore(window)
    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(n):
            await sem.acquire()

            async def one(i: int = i) -> None:
                try:
                    await make(conns[i % len(conns)], i)
                finally:
                    sem.release()

            nursery.start_soon(one)
    return time.perf_counter() - start


async def watch_fanout(leader_port: int, follower_port: int, watchers: int,
                       events: int) -> dict[str, float]:
    value = b"x" * 256
    async with trio.open_nursery() as nursery:
        n_conns = max(1, (watchers + 99) // 100)
        wconns = [await Conn.open(follower_port, nursery) for _ in range(n_conns)]
        chans = []
        for i in range(watchers):
            chans.append(await wconns[i % n_conns].watch(key=b"/bench/", range_end=b"/bench0"))
        for ch in chans:
            created = await ch.receive()
            assert created["ok"]["created"], created
        done = trio.Event()
        remaining = [watchers]
        finish = [0.0]

        async def drain(ch: trio.MemoryReceiveChannel[Any]) -> None:
            got = 0
            while got < events:
                frame = await ch.receive()
                got += len(frame["ok"].get("events", ()))
            remaining[0] -= 1
            if remaining[0] == 0:
                finish[0] = time.perf_counter()
                done.set()

        for ch in chans:
            nursery.start_soon(drain, ch)
        writers = [await Conn.open(leader_port, nursery) for _ in range(4)]
        start = time.perf_counter()
        puts = await pipelined(writers, events, 64, lambda c, i: c.call(
            "put", key=b"/bench/%06d" % i, value=value))
        with trio.fail_after(300):
            await done.wait()
        nursery.cancel_scope.cancel()
    elapsed = finish[0] - start
    return {"watchers": watchers, "events": events, "seconds": elapsed,
            "events_per_s": watchers * events / elapsed, "puts_seconds": puts,
            "puts_per_s": events / puts}


async def lease_rates(leader_port: int, follower_port: int, n: int) -> dict[str, float]:
    async with trio.open_nursery() as nursery:
        lconns = [await Conn.open(leader_port, nursery) for _ in range(4)]
        fconns = [await Conn.open(follower_port, nursery) for _ in range(4)]
        ids: list[int] = [0] * n

        async def grant(c: Conn, i: int) -> None:
            ids[i] = (await c.call("lease_grant", ttl=60))["id"]

        g = await pipelined(lconns, n, 256, grant)

        async def keep(c: Conn, i: int) -> None:
            ttl = (await c.call("lease_keepalive", lease=ids[i]))["ttl"]
            assert ttl == 60, ttl

        k = await pipelined(lconns, n, 256, keep)
        kf = await pipelined(fconns, n, 256, keep)
        nursery.cancel_scope.cancel()
    return {"leases": n, "grant_per_s": n / g, "keepalive_per_s": n / k,
            "keepalive_fwd_per_s": n / kf}


async def mass_expiry(leader_port: int, n: int) -> dict[str, float]:
    ttl = 20
    async with trio.open_nursery() as nursery:
        conns = [await Conn.open(leader_port, nursery) for _ in range(4)]
        ids: list[int] = [0] * n
        last_grant = [0.0]

        async def grant(c: Conn, i: int) -> None:
            ids[i] = (await c.call("lease_grant", ttl=ttl))["id"]
            last_grant[0] = time.perf_counter()

        await pipelined(conns, n, 256, grant)
        deadline = last_grant[0] + ttl
        await pipelined(conns, n, 256, lambda c, i: c.call(
            "put", key=b"/exp/%06d" % i, value=b"v", lease=ids[i]))
        term = (await conns[0].call("status"))["raft_term"]
        while True:
            count = (await conns[0].call("range", key=b"/exp/", range_end=b"/exp0",
                                         count_only=True))["count"]
            if count == 0:
                break
            await trio.sleep(0.01)
        gone = time.perf_counter()
        st = await conns[0].call("status")
        nursery.cancel_scope.cancel()
    return {"leases": n, "seconds_after_deadline": gone - deadline,
            "term_changed": st["raft_term"] != term or st["role"] != "leader"}


def run_once(args: argparse.Namespace, base: Path, run_no: int) -> dict[str, Any]:
    root = base / f"run{run_no}"
    root.mkdir(parents=True)
    cluster = ProcessCluster(root, 3, heartbeat_ms=100, election_ms=1000)
    try:
        cluster.start_all()
        leader = cluster.wait_for_leader()
        follower = next(m for m in cluster.members if m is not leader)
        out: dict[str, Any] = {"watch": []}
        for w in args.watchers:
            with NativeClient(leader.client_port) as c:  # a clean prefix per cell
                c.call("delete_range", key=b"/bench/", range_end=b"/bench0")
            r = trio.run(watch_fanout, leader.client_port, follower.client_port, w,
                         args.events)
            print(f"  run {run_no} watch-{w}: {r['events_per_s']:.0f} events/s delivered "
                  f"({r['seconds']:.2f}s; puts alone {r['puts_per_s']:.0f}/s)", file=sys.stderr)
            out["watch"].append(r)
        out["leases"] = trio.run(lease_rates, leader.client_port, follower.client_port,
                                 args.leases)
        print(f"  run {run_no} leases: {out['leases']}", file=sys.stderr)
        out["expire"] = trio.run(mass_expiry, leader.client_port, args.leases)
        print(f"  run {run_no} expire: {out['expire']}", file=sys.stderr)
        return out
    finally:
        cluster.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dir", default=None)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--events", type=int, default=2000)
    p.add_argument("--watchers", type=lambda s: [int(x) for x in s.split(",")],
                   default=[1, 100, 1000])
    p.add_argument("--leases", type=int, default=10_000)
    p.add_argument("--json", default=None, help="write every run's numbers here")
    args = p.parse_args(argv)
    base = Path(args.dir or tempfile.mkdtemp(prefix="lwbench-"))
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    info = benchutil.machine_info()
    benchutil.print_machine(info)
    runs = [run_once(args, base, i + 1) for i in range(args.runs)]

    def med(values: list[float]) -> float:
        return statistics.median(values)

    rows: list[list[Any]] = []
    for i, w in enumerate(args.watchers):
        rows.append([f"watch fan-out, {w} watcher(s)",
                     med([r["watch"][i]["events_per_s"] for r in runs]), "events/s delivered"])
    rows.append(["lease grant", med([r["leases"]["grant_per_s"] for r in runs]), "grants/s"])
    rows.append(["lease keep-alive (leader)", med([r["leases"]["keepalive_per_s"]
                                                   for r in runs]), "keep-alives/s"])
    rows.append(["lease keep-alive (via follower)",
                 med([r["leases"]["keepalive_fwd_per_s"] for r in runs]), "keep-alives/s"])
    rows.append([f"expire {args.leases} leases at once",
                 med([r["expire"]["seconds_after_deadline"] for r in runs]),
                 "s after the deadline"])
    print(f"medians of {args.runs} run(s):")
    benchutil.print_table(["workload", "median", "unit"], rows)
    changed = [r["expire"]["term_changed"] for r in runs]
    print(f"leader changed during mass expiry: {sum(changed)} of {len(changed)} runs")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
