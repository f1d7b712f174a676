"""What authentication costs: writes with auth on against auth off on one real member, the
latency of a login (bcrypt) at two costs, and the gate's own CPU per request.

A ``discoverd serve`` process (real disk, loopback) takes pipelined puts (--window in flight,
256 B values) from one native connection for --seconds per round; rounds alternate auth off
and on (off, on, on, off, ...) so a drift in the machine's load hits both alike. With auth on
every put carries a token and is judged (token check, then the key's permission through a
role with a prefix grant). Then 15 logins at --bcrypt-cost 10 (etcd's default) and at 4, and
``AuthService.gate`` timed alone in this process (a put judged for a user with one role).

    python benchmarks/auth_overhead.py                 # 6 rounds of 2 s per mode
    python benchmarks/auth_overhead.py --rounds 10 --seconds 3
"""

from __future__ import annotations

import argparse
import os
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

from discoverd.testing.cluster import NativeClient, ProcessCluster
from discoverd.wire.framing import FrameDecoder, encode_frame


def pipelined_puts(port: int, seconds: float, window: int, token: str | None) -> float:
    """Puts per second with ``window`` in flight on one connection."""
    value = os.urandom(256)
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"DSC1")
        decoder = FrameDecoder(64 * 1024 * 1024)
        sent = done = 0
        end = time.monotonic() + seconds

        def send() -> None:
            nonlocal sent
            req: dict[str, Any] = {"id": sent + 1, "op": "put",
                                   "key": b"/bench/%d" % (sent % 10_000), "value": value}
            if token is not None:
                req["token"] = token
            s.sendall(encode_frame(cbor2.dumps(req)))
            sent += 1

        for _ in range(window):
            send()
        started = time.monotonic()
        while True:
            frame = decoder.next_frame()
            if frame is None:
                decoder.feed(s.recv(1 << 20))
                continue
            answer = cbor2.loads(frame)
            assert "ok" in answer, answer
            done += 1
            if time.monotonic() < end:
                send()
            elif done == sent:
                return done / (time.monotonic() - started)


def logins(cluster_root: Path, cost: int, n: int) -> list[float]:
    cluster_root.mkdir(parents=True, exist_ok=True)
    with ProcessCluster(cluster_root, 1, extra_args=["--bcrypt-cost", str(cost)]).started() as cl:
        (m,) = cl.members
        with NativeClient(m.client_port, timeout=30) as c:
            c.call("user_add", name="root", password="pw")
            c.call("auth_enable")
            took = []
            for _ in range(n):
                t = time.perf_counter()
                c.call("authenticate", name="root", password="pw")
                took.append(time.perf_counter() - t)
            return took


def gate_seconds() -> float:
    import structlog

    from discoverd.machine.applier import KvMachine
    from discoverd.server.api_server import Connection
    from discoverd.server.auth_service import AuthService

    machine = KvMachine()
    store = machine.auth
    store.apply({"op": "user_add", "name": "root", "password_hash": b"h"})
    store.apply({"op": "user_add", "name": "svc", "password_hash": b"h"})
    store.apply({"op": "role_add", "name": "app"})
    store.apply({"op": "role_grant_permission", "name": "app", "perm": {
        "perm_type": "READWRITE", "key": b"/bench/", "range_end": b"/bench0"}})
    store.apply({"op": "user_grant_role", "user": "svc", "role": "app"})
    store.apply({"op": "auth_enable", "secret": b"k" * 32})
    service = AuthService(machine, None, header=None, token_ttl=300,  # type: ignore[arg-type]
                          bcrypt_cost=4, log=structlog.get_logger())
    token = service.issue("svc", 1)
    conn = Connection(1)
    req = {"key": b"/bench/1", "value": b"v" * 256}
    n = 20_000
    return timeit.timeit(lambda: service.gate("put", req, token, conn), number=n) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--window", type=int, default=64)
    args = parser.parse_args()
    info = benchutil.machine_info()
    benchutil.print_machine(info)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "w").mkdir()
        with ProcessCluster(root / "w", 1, extra_args=["--bcrypt-cost", "4"]).started() as cl:
            (m,) = cl.members
            with NativeClient(m.client_port) as c:
                c.call("user_add", name="root", password="pw")
                c.call("role_add", name="app")
                c.call("role_grant_permission", name="app", perm={
                    "perm_type": "READWRITE", "key": b"/bench/", "range_end": b"/bench0"})
                c.call("user_add", name="svc", password="pw")
                c.call("user_grant_role", user="svc", role="app")
                rates: dict[str, list[float]] = {"off": [], "on": []}
                for i in range(args.rounds * 2):
                    mode = "off" if i % 4 in (0, 3) else "on"
                    token = None
                    if mode == "on":
                        c.call("auth_enable")
                        token = c.call("authenticate", name="svc", password="pw")["token"]
                    rates[mode].append(pipelined_puts(m.client_port, args.seconds,
                                                      args.window, token))
                    if mode == "on":
                        root_token = c.call("authenticate", name="root", password="pw")["token"]
                        c.call("auth_disable", token=root_token)
                    print(f"round {i + 1}: auth {mode}: {rates[mode][-1]:.0f} puts/s",
                          file=sys.stderr, flush=True)
        off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
        rows: list[list[Any]] = [
            ["puts/s, auth off (median)", f"{off:.0f}"],
            ["puts/s, auth on (median)", f"{on:.0f}"],
            ["change", f"{(on - off) / off * 100:+.1f} %"],
        ]
        for cost in (10, 4):
            took = sorted(logins(root / f"login{cost}", cost, 15))
            rows.append([f"login, bcrypt cost {cost}: p50 / max",
                         f"{statistics.median(took) * 1000:.1f} ms / {took[-1] * 1000:.1f} ms"])
        rows.append(["gate per put (token cached, one role)",
                     f"{gate_seconds() * 1e6:.1f} µs"])
        benchutil.print_table(["measure", "value"], rows)


if __name__ == "__main__":
    main()
