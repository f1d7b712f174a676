"""A lease keeper for the e2e tests, run as its own process (so a test can kill -9 it).

Usage: python lease_keeper.py TTL KEY PORT [PORT...]

Grants a lease of TTL seconds, puts KEY on it, then renews it every TTL/3 through whichever
member answers (failing over across PORTs). Prints one line per event, flushed:
``granted <lease id>`` once, then ``renewed <time.monotonic()>`` after every successful
keep-alive — the test reads the last renewal time to check when the key may disappear.
"""

from __future__ import annotations

import sys
import time

from discoverd.testing.cluster import ClientFailure, NativeClient


def main() -> None:
    ttl, key, ports = int(sys.argv[1]), sys.argv[2].encode(), [int(p) for p in sys.argv[3:]]
    client: NativeClient | None = None
    turn = 0

    def call(op: str, **fields: object) -> dict:
        nonlocal client, turn
        while True:
            try:
                if client is None:
                    client = NativeClient(ports[turn % len(ports)], timeout=1.0)
                return client.call(op, **fields)
            except (OSError, ClientFailure) as e:
                if isinstance(e, ClientFailure) and e.code not in (
                        "not_leader", "unavailable", "timeout", "proposal_dropped"):
                    raise
                if client is not None:
                    client.close()
                client = None
                turn += 1
                time.sleep(0.05)

    lease = call("lease_grant", ttl=ttl)["id"]
    call("put", key=key, value=b"alive", lease=lease)
    print(f"granted {lease}", flush=True)
    while True:
        answer = call("lease_keepalive", lease=lease)
        if answer["ttl"] <= 0:
            print("lost", flush=True)
            return
        print(f"renewed {time.monotonic()}", flush=True)
        time.sleep(ttl / 3)


if __name__ == "__main__":
    main()
