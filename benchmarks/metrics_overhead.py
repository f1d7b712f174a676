"""What the metrics cost on the write path: metrics on against metrics off, in one process.

A cross-process benchmark (``raft_commit.py``) on this shared machine swings by more than
the metrics could cost, so this one removes every difference but the metrics: one member
runs in this process (``server.member.Member``: real disk under --dir, real sockets), a
pipelined native-protocol client in the same trio run keeps --window puts in flight (256 B
values, keys from a 10k space; no snapshots), and rounds of --seconds alternate metrics on
and off in the order on, off, off, on, ... (so a drift in the machine's load hits both
alike). "Off" unhooks
everything the metrics put on the hot paths — the client port's request hook, the Raft
loop's observer, the timed state machine — which leaves the member as it runs without them.
For each round: puts/s, this process's CPU time per put (every thread: the member, its
fsync worker and the client) and the trio thread's alone (where every metrics hook runs;
the kernel's fsync work on the worker thread is the noisiest part of the other figure). The
medians of each mode are compared.

Then each hook alone, timed with ``timeit``: what one request, one applied entry and one
fsync'd Ready pay, next to prometheus_client's own (locked) histogram for comparison.

    python benchmarks/metrics_overhead.py                      # 20 rounds of 1.5 s per mode
    python benchmarks/metrics_overhead.py --rounds 40 --seconds 3 --dir /data
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import socket
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

import benchutil
import cbor2
import structlog
import trio
from structlog.testing import LogCapture

from discoverd.consensus.messages import Entry
from discoverd.server.config import MemberConfig
from discoverd.server.member import Member
from discoverd.server.metrics import REQUEST_BUCKETS, Histogram, MemberMetrics
from discoverd.wire.framing import FrameDecoder, encode_frame


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def set_metrics(member: Member, on: bool) -> None:
    """Hook the metrics in (as ``Member`` builds them) or out."""
    member.api.on_request = member.metrics.observe_request if on else None
    member.loop.observer = member.metrics if on else None
    member.core.sm = member.metrics.timed(member.machine) if on else member.machine


class Load:
    """One connection with ``window`` puts in flight; counts answered puts."""

    def __init__(self, stream: trio.SocketStream, window: int, value_size: int) -> None:
        self.stream = stream
        self.slots = trio.Semaphore(window)
        self.value = os.urandom(value_size)
        self.done = 0
        self.errors = 0
        self.rng = random.Random(1)

    async def send(self) -> None:
        for rid in itertools.count(1):
            await self.slots.acquire()
            key = b"/bench/k%05d" % self.rng.randrange(10_000)
            frame = {"id": rid, "op": "put", "key": key, "value": self.value}
            await self.stream.send_all(encode_frame(cbor2.dumps(frame)))

    async def receive(self) -> None:
        decoder = FrameDecoder(1 << 24)
        while True:
            data = await self.stream.receive_some(1 << 16)
            if not data:
                return
            decoder.feed(data)
            while (frame := decoder.next_frame()) is not None:
                if "err" in cbor2.loads(frame):
                    self.errors += 1
                self.done += 1
                self.slots.release()


async def measure(args: argparse.Namespace, data_dir: str) -> dict[str, list[dict[str, float]]]:
    client_port, peer_port = free_port(), free_port()
    cfg = MemberConfig(
        name="bench", data_dir=data_dir,
        listen_client_urls=f"http://127.0.0.1:{client_port}",
        advertise_client_urls=f"http://127.0.0.1:{client_port}",
        listen_peer_urls=f"http://127.0.0.1:{peer_port}",
        initial_advertise_peer_urls=f"http://127.0.0.1:{peer_port}",
        # No snapshot during the run: marshalling the whole store on the loop costs more
        # than a round's worth of hooks and would land in one mode's round at random.
        snapshot_count=10**9,
    )
    quiet = structlog.wrap_logger(None, processors=[LogCapture()])
    results: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
    async with trio.open_nursery() as nursery:
        member: Member = await nursery.start(Member(cfg, quiet).run)
        with trio.fail_after(10):
            while not member.core.is_leader:  # noqa: ASYNC110 - a bounded start-up poll
                await trio.sleep(0.01)
        stream = await trio.open_tcp_stream("127.0.0.1", client_port)
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await stream.send_all(b"DSC1")
        load = Load(stream, args.window, args.value_size)
        nursery.start_soon(load.send)
        nursery.start_soon(load.receive)
        set_metrics(member, True)
        await trio.sleep(args.warmup)
        order = [("on", "off", "off", "on")[i % 4] for i in range(args.rounds * 2)]
        for i, mode in enumerate(order):
            set_metrics(member, mode == "on")
            await trio.sleep(0.2)  # let the puts in flight under the other mode drain
            ops0, wall0 = load.done, time.perf_counter()
            cpu0, loop0 = time.process_time(), time.thread_time()
            await trio.sleep(args.seconds)
            ops, wall = load.done - ops0, time.perf_counter() - wall0
            cpu, loop_cpu = time.process_time() - cpu0, time.thread_time() - loop0
            results[mode].append({"ops_per_s": ops / wall, "cpu_us_per_op": cpu / ops * 1e6,
                                  "loop_cpu_us_per_op": loop_cpu / ops * 1e6})
            log(f"round {i + 1}/{len(order)} metrics {mode:3}: {ops / wall:7.0f} puts/s "
                f"{cpu / ops * 1e6:6.1f} us CPU/put, {loop_cpu / ops * 1e6:6.1f} on the loop")
        if load.errors:
            log(f"{load.errors} puts were answered with an error")
        nursery.cancel_scope.cancel()
    return results


def hooks(number: int) -> list[tuple[str, float]]:
    """Nanoseconds per call of each hot-path hook (and what it replaces or is compared to)."""
    from prometheus_client import CollectorRegistry
    from prometheus_client import Histogram as PromHistogram

    class Machine:
        def apply(self, entry: Entry) -> Any:
            return None

        def snapshot(self) -> bytes:
            return b""

        def restore(self, data: bytes) -> None:
            pass

    metrics = MemberMetrics(None)  # type: ignore[arg-type]  # hooks only: nothing scraped
    bare = Machine()
    timed = metrics.timed(bare)
    entry = Entry(1, 1, data=b"x")
    ours = Histogram(REQUEST_BUCKETS)
    theirs = PromHistogram("x_seconds", "x", buckets=REQUEST_BUCKETS,
                           registry=CollectorRegistry())
    cases = {
        "request hook (counter + histogram)": lambda: metrics.observe_request("put", "ok", 3e-4),
        "apply, bare machine": lambda: bare.apply(entry),
        "apply, timed machine": lambda: timed.apply(entry),
        "fsync'd Ready observed": lambda: metrics.wal_fsync(2e-3),
        "Histogram.observe (ours)": lambda: ours.observe(3e-4),
        "prometheus_client Histogram.observe": lambda: theirs.observe(3e-4),
    }
    out = []
    for name, fn in cases.items():
        best = min(timeit.repeat(fn, number=number, repeat=5))
        out.append((name, best / number * 1e9))
    return out


def paired(results: dict[str, list[dict[str, float]]], key: str) -> float:
    """Median over blocks (on, off, off, on) of (mean on / mean off - 1)."""
    diffs = []
    for k in range(0, min(len(results["on"]), len(results["off"])), 2):
        on = statistics.fmean(r[key] for r in results["on"][k:k + 2])
        off = statistics.fmean(r[key] for r in results["off"][k:k + 2])
        diffs.append(on / off - 1)
    return statistics.median(diffs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=20, help="rounds per mode (default 20)")
    p.add_argument("--seconds", type=float, default=1.5, help="length of a round")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--window", type=int, default=64, help="puts in flight (default 64)")
    p.add_argument("--value-size", type=int, default=256)
    p.add_argument("--dir", default=".", help="where the data dir goes (a temp dir inside)")
    args = p.parse_args()
    info = benchutil.machine_info()
    benchutil.print_machine(info)
    with tempfile.TemporaryDirectory(prefix="metrics-bench-", dir=args.dir) as tmp:
        print(f"data dir under {args.dir} "
              f"({benchutil.filesystem_of(args.dir).get('fstype', '?')})")
        results = trio.run(measure, args, str(Path(tmp) / "bench"))
    rows = []
    for key in ("ops_per_s", "cpu_us_per_op", "loop_cpu_us_per_op"):
        on = statistics.median(r[key] for r in results["on"])
        off = statistics.median(r[key] for r in results["off"])
        rows.append([key, f"{on:.1f}", f"{off:.1f}", f"{(on / off - 1) * 100:+.1f}%",
                     f"{paired(results, key) * 100:+.1f}%"])
    print(f"\none member in this process, {args.window} puts in flight, "
          f"{args.rounds} rounds of {args.seconds:g} s per mode (medians):")
    benchutil.print_table(["", "metrics on", "metrics off", "on vs off", "paired"], rows)
    print('"paired": the median over each on/off/off/on block of its on-vs-off difference,\n'
          "which a drift in the machine's load between blocks does not move.")
    print("\nper call (best of 5):")
    benchutil.print_table(["hook", "ns"], [[n, f"{ns:.0f}"] for n, ns in hooks(200_000)])
    print(f"load average at the end: {benchutil.loadavg()}")


if __name__ == "__main__":
    main()
