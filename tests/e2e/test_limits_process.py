"""Per-client limits on real ``discoverd serve`` processes, each set small by its flag:
a client that stops reading is dropped (``--client-write-timeout``) while others are
served; the request-rate bound (``--max-requests-per-second``) refuses a flood without
applying any refused write, and the SDK rides it out by waiting ``retry_after``; an idle
connection is closed (``--client-idle-timeout``) and the sync client redials; and the CLI
shows the key-size error as docs/security.md does. Waits are bounded polls on a condition.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import cbor2

from discoverd.sdk import Client
from discoverd.testing.cluster import ProcessCluster, wait_for

BIG = b"x" * (1024 * 1024)


def _frame(rid: int, op: str, **fields: Any) -> bytes:
    payload = cbor2.dumps({"id": rid, "op": op, **fields})
    return struct.pack(">I", len(payload)) + payload


def _read_frames(sock: socket.socket, count: int) -> list[dict[str, Any]]:
    buf = b""
    frames: list[dict[str, Any]] = []
    while len(frames) < count:
        while len(buf) < 4 or len(buf) < 4 + struct.unpack(">I", buf[:4])[0]:
            chunk = sock.recv(65536)
            assert chunk, "the member closed the connection"
            buf += chunk
        (size,) = struct.unpack(">I", buf[:4])
        frames.append(cbor2.loads(buf[4:4 + size]))
        buf = buf[4 + size:]
    return frames


def _drain_to_end(sock: socket.socket) -> int:
    """Read until the member's end of the connection (EOF or reset); bytes read."""
    total = 0
    try:
        while chunk := sock.recv(1 << 20):
            total += len(chunk)
    except ConnectionResetError:
        pass
    return total


def test_a_client_that_stops_reading_is_dropped_and_others_are_served(
    tmp_path: Path,
) -> None:
    with ProcessCluster(tmp_path, 1, extra_args=["--client-write-timeout", "500"]
                        ).started() as cluster:
        m = cluster.members[0]
        ep = f"127.0.0.1:{m.client_port}"
        with Client(ep) as client:
            client.put("big", BIG)
            slow = socket.socket()
            slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            slow.connect(("127.0.0.1", m.client_port))
            slow.settimeout(30)
            # 32 MiB of answers asked for, none read: far past every socket buffer.
            slow.sendall(b"DSC1" + b"".join(_frame(i, "range", key=b"big")
                                            for i in range(1, 33)))
            # Meanwhile, and whatever the slow one does, another client is served.
            for i in range(20):
                client.put(f"other/{i}", b"v")
                assert client.get(f"other/{i}").kvs[0].value == b"v"
            wait_for("the slow client dropped",
                     lambda: "limit=write_timeout" in m.log_text(), timeout=30)
            line = next(x for x in m.log_text().splitlines() if "limit=write_timeout" in x)
            assert "client connection closed by a limit" in line
            assert "connection=" in line
            read = _drain_to_end(slow)
            assert read < 32 * len(BIG), "every answer arrived: nothing was cut off"
            slow.close()
            client.put("after", b"1")
            assert client.get("after").kvs[0].value == b"1"
            assert "client connection failed" not in m.log_text()


def test_rate_bound_refuses_a_flood_and_the_sdk_waits_it_out(tmp_path: Path) -> None:
    with ProcessCluster(tmp_path, 1, extra_args=["--max-requests-per-second", "50"]
                        ).started() as cluster:
        m = cluster.members[0]
        with Client(f"127.0.0.1:{m.client_port}") as client:
            before = client.get("flood/", prefix=True)
            assert before.kvs == ()
            with socket.create_connection(("127.0.0.1", m.client_port), timeout=30) as s:
                s.sendall(b"DSC1" + b"".join(
                    _frame(i, "put", key=f"flood/{i:03}".encode(), value=b"v")
                    for i in range(1, 301)))
                answers = _read_frames(s, 300)
            accepted = {a["id"] for a in answers if "ok" in a}
            refused = [a for a in answers if "err" in a]
            assert refused, "300 pipelined puts at 50/s were all accepted"
            assert {a["err"]["code"] for a in refused} == {"too_many_requests"}
            assert all(0 < a["err"]["retry_after"] <= 0.02 for a in refused)
            assert len(accepted) >= 100  # the burst, twice the rate
            # Exactly the accepted puts applied, one revision each.
            after = client.get("flood/", prefix=True)
            assert {kv.key for kv in after.kvs} == {f"flood/{i:03}".encode()
                                                    for i in accepted}
            assert after.header.revision == before.header.revision + len(accepted)
            # The SDK, under the same bound: every put succeeds (it waits and retries).
            start = client.get("sdk/", prefix=True).header.revision
            for i in range(200):
                client.put(f"sdk/{i:03}", b"v")
            done = client.get("sdk/", prefix=True)
            assert len(done.kvs) == 200
            assert done.header.revision == start + 200


def test_an_idle_connection_is_closed_and_the_sync_client_redials(tmp_path: Path) -> None:
    with ProcessCluster(tmp_path, 1, extra_args=["--client-idle-timeout", "300"]
                        ).started() as cluster:
        m = cluster.members[0]
        with Client(f"127.0.0.1:{m.client_port}") as client:
            client.put("a", b"1")
            conn = client.async_client._conn
            assert conn is not None
            assert conn.usable
            wait_for("the member closed the idle connection",
                     lambda: "limit=idle" in m.log_text(), timeout=20)
            wait_for("the client saw it", lambda: not conn.usable, timeout=20)
            client.put("a", b"2")  # a write: sent only on a fresh connection
            assert client.get("a").kvs[0].value == b"2"
            assert client.async_client._conn is not conn


def test_cli_shows_the_key_size_error_and_nothing_changes(tmp_path: Path) -> None:
    with ProcessCluster(tmp_path, 1, extra_args=["--max-key-bytes", "1024"]
                        ).started() as cluster:
        m = cluster.members[0]
        ep = f"127.0.0.1:{m.client_port}"

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "discoverd.cli", "--endpoints", ep,
                                   *args], capture_output=True, text=True, timeout=60,
                                  env=dict(os.environ))

        fits = cli("put", "k" * 1024, "v")
        assert (fits.returncode, fits.stdout) == (0, "OK\n"), fits.stderr
        over = cli("put", "k" * 1025, "v")
        assert over.returncode == 1
        assert over.stdout == ""
        assert over.stderr == "Error: key of 1025 bytes exceeds --max-key-bytes 1024\n"
        listed = cli("get", "", "--from-key", "--keys-only")
        assert listed.stdout.split() == ["k" * 1024]
