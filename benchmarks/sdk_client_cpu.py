"""The SDK's own CPU per request: one ``AsyncClient`` under asyncio, C concurrent callers,
against a 3-member cluster of ``discoverd serve`` processes (issue 12).

    flock /tmp/bench.lock python benchmarks/sdk_client_cpu.py keepalive 16 --seconds 6
    flock /tmp/bench.lock python benchmarks/sdk_client_cpu.py put 64

The side-by-side harness's load generator is this SDK, sharing the 2 cores with the
members, so every client microsecond per request is a microsecond the members do not get.
This isolates it: ops/s and this process's CPU (``time.process_time``) per completed
request over the window (after a 1 s warm-up). ``--profile`` adds a cProfile table (which
slows everything several times: read it for call counts and shares, not speed).

Ops: ``keepalive`` (``lease_keepalive_once`` on C leases), ``put`` (256 B values over 1,000
keys), ``sget`` (serializable gets of one key). The cluster is the side-by-side adapter's
(``side_by_side/discoverd_system.py``, ports 27379+, data under ``$BENCH_LAB``).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "side_by_side"))
sys.path.insert(0, os.environ.get("BENCH_HARNESS", "/work/shared/bench"))
os.environ.setdefault("BENCH_LAB", "/tmp/bench-lab")

from discoverd_system import DiscoverdSystem  # noqa: E402

from discoverd.sdk import AsyncClient  # noqa: E402


async def measure(target: str, op: str, clients: int, seconds: float, profile: bool) -> None:
    async with AsyncClient(target, dial_timeout=5.0, command_timeout=10.0) as c:
        await c.status()
        leases = [(await c.lease_grant(60)).id for _ in range(clients)] if op == "keepalive" \
            else []
        done = 0
        stop = False

        async def caller(i: int) -> None:
            nonlocal done
            while not stop:
                if op == "keepalive":
                    await c.lease_keepalive_once(leases[i])
                elif op == "put":
                    await c.put(b"/bench/%d" % (done % 1000), b"v" * 256)
                else:
                    await c.get(b"/bench/1", serializable=True)
                done += 1

        tasks = [asyncio.create_task(caller(i)) for i in range(clients)]
        await asyncio.sleep(1.0)
        n0, t0, c0 = done, time.perf_counter(), time.process_time()
        prof = cProfile.Profile() if profile else None
        if prof is not None:
            prof.enable()
        await asyncio.sleep(seconds)
        if prof is not None:
            prof.disable()
        n, dt, cpu = done - n0, time.perf_counter() - t0, time.process_time() - c0
        stop = True
        await asyncio.gather(*tasks, return_exceptions=True)
    print(f"{op} C={clients}: {n / dt:,.0f} ops/s, client CPU {1e6 * cpu / max(n, 1):.1f} "
          f"us/op ({100 * cpu / dt:.0f} % of a core)")
    if prof is not None:
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("op", choices=("keepalive", "put", "sget"))
    ap.add_argument("clients", type=int)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    cluster = DiscoverdSystem(members=3, base_port=27379)
    cluster.start()
    try:
        asyncio.run(measure(cluster.target(), a.op, a.clients, a.seconds, a.profile))
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
