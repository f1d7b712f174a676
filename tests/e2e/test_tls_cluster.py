"""TLS end to end, with real ``discoverd serve`` processes: a 3-member cluster whose client
and peer ports both demand certificates from the cluster's CA; clients and peers that
cannot show one are refused and the cluster does not notice; ``discoverd dev --tls``."""

from __future__ import annotations

import base64
import http.client
import json
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from discoverd.errors import PermissionDenied, Unauthenticated, Unavailable
from discoverd.sdk import Client
from discoverd.testing.cluster import (
    NativeClient,
    ProcessCluster,
    endpoints,
    free_port,
    free_port_block,
    wait_for,
)
from discoverd.tls_certs import CertificateAuthority

MakeCluster = Callable[..., ProcessCluster]  # the `clusters` fixture (conftest.py)


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "discoverd.cli", *args],
                          capture_output=True, text=True, timeout=timeout)


def gateway(port: int, ctx: ssl.SSLContext, path: str, body: dict[str, str]) -> dict[str, object]:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        assert resp.status == 200, (resp.status, data)
        result: dict[str, object] = json.loads(data)
        return result
    finally:
        conn.close()


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def refused_by(port: int, ctx: ssl.SSLContext) -> str:
    """Dial ``port`` with ``ctx`` and say how the connection failed (it must)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            s.sendall(b"DSC1")
            data = s.recv(100)  # TLS 1.3: a refused certificate shows on the first read
            return "closed" if not data else f"answered {data!r}"
    except (ssl.SSLError, ConnectionError) as e:
        return f"refused: {e}"


def test_tls_cluster_serves_only_certified_clients_and_peers(clusters: MakeCluster,
                                                             tmp_path: Path) -> None:
    c = clusters(3, tls=True)
    assert c.tls is not None
    tls = c.tls
    with c.started():
        m1, m2, m3 = c.members
        leader = c.wait_for_leader()
        eps = endpoints(c.members)
        assert eps.startswith("https://")
        # SDK write, readable through every member (linearizable reads over TLS).
        with Client(eps, **tls.sdk_kwargs()) as client:
            client.put("tls/sdk", "v1")
        for m in c.members:
            with m.client() as nc:
                assert nc.get(b"tls/sdk") == b"v1"
        # CLI with --cacert/--cert/--key, through each member.
        for m in c.members:
            done = cli("--endpoints", f"https://127.0.0.1:{m.client_port}", *tls.cli_flags(),
                       "put", f"tls/cli/{m.name}", m.name)
            assert done.returncode == 0, done.stderr
            assert done.stdout.strip() == "OK"
        got = cli("--endpoints", eps, *tls.cli_flags(), "get", "tls/cli/", "--prefix")
        assert got.returncode == 0, got.stderr
        assert got.stdout.split() == ["tls/cli/m1", "m1", "tls/cli/m2", "m2",
                                      "tls/cli/m3", "m3"]
        # The HTTP gateway over https, on the same port.
        ctx = tls.client_context()
        gateway(m2.client_port, ctx, "/v3/kv/put", {"key": b64("tls/http"), "value": b64("h")})
        for m in c.members:
            resp = gateway(m.client_port, ctx, "/v3/kv/range", {"key": b64("tls/http")})
            kvs = resp["kvs"]
            assert isinstance(kvs, list)
            assert base64.b64decode(kvs[0]["value"]) == b"h"

        # -- clients refused
        evil = CertificateAuthority.create("evil", tmp_path / "evil")
        evil_cert, evil_key = evil.issue("evil-client", common_name="client")
        old_cert, old_key = tls.ca.issue("old-client", common_name="client", expired=True)
        # Trusting the wrong CA: the client refuses the member, in one clear line.
        done = cli("--endpoints", eps, "--cacert", str(evil.cert_path), "--cert",
                   str(tls.client_cert), "--key", str(tls.client_key), "put", "tls/no", "x")
        assert done.returncode != 0
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "TLS: certificate verify failed" in done.stderr
        # No client certificate; one from another CA; an expired one: the member refuses.
        for cert_flags in ([], ["--cert", str(evil_cert), "--key", str(evil_key)],
                           ["--cert", str(old_cert), "--key", str(old_key)]):
            done = cli("--endpoints", eps, "--cacert", str(tls.cacert), *cert_flags,
                       "put", "tls/no", "x")
            assert done.returncode != 0, cert_flags
            assert len(done.stderr.strip().splitlines()) == 1, done.stderr
            assert "TLS: the member ended the handshake" in done.stderr, done.stderr
        with pytest.raises(Unavailable, match="TLS: "), \
                Client(eps, cacert=str(tls.cacert), command_timeout=3) as client:
            client.put("tls/no", "x")
        # Plain text and random bytes to a TLS port: closed, nothing answered.
        with socket.create_connection(("127.0.0.1", m1.client_port), timeout=10) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(100) == b""
        with socket.create_connection(("127.0.0.1", m1.client_port), timeout=10) as s:
            s.sendall(random.Random(7).randbytes(4096))
            assert s.recv(100) == b""
        for m in c.members:
            assert "client TLS handshake failed" in m.log_text()

        # -- peers refused: the peer port wants a certificate from the peer CA
        peer_ctx = ssl.create_default_context(cafile=str(tls.cacert))
        assert refused_by(m1.peer_port, peer_ctx).startswith(("refused", "closed"))
        peer_ctx.load_cert_chain(evil_cert, evil_key)
        assert refused_by(m1.peer_port, peer_ctx).startswith(("refused", "closed"))
        wait_for("m1 to log the refused peer handshakes",
                 lambda: m1.log_text().count("peer refused: TLS handshake failed") >= 2)

        # A 4th member with a peer certificate from another CA, same token: it trusts the
        # cluster's CA, the cluster does not trust it; it never hears from the cluster.
        cport, pport = free_port(), free_port()
        intruder_cert, intruder_key = evil.issue("m4", common_name="m4")
        initial = ",".join([*(f"{m.name}=https://127.0.0.1:{m.peer_port}" for m in c.members),
                            f"m4=https://127.0.0.1:{pport}"])
        m4 = c.new_member("m4", initial_cluster=initial)
        m4.args = [
            "--name", "m4", "--data-dir", str(m4.data_dir),
            "--initial-advertise-peer-urls", f"https://127.0.0.1:{pport}",
            "--initial-cluster", initial, "--initial-cluster-state", "existing",
            "--initial-cluster-token", c.token,
            "--listen-client-urls", f"http://127.0.0.1:{cport}",
            "--advertise-client-urls", f"http://127.0.0.1:{cport}",
            "--listen-peer-urls", f"https://127.0.0.1:{pport}",
            "--peer-cert-file", str(intruder_cert), "--peer-key-file", str(intruder_key),
            "--peer-trusted-ca-file", str(tls.cacert), "--peer-client-cert-auth",
            "--heartbeat-interval", "50", "--election-timeout", "500"]
        c.start(m4)
        wait_for("the intruder to be refused by every member",
                 lambda: all(m.log_text().count("peer refused: TLS handshake failed") >= 3
                             for m in (m1, m2, m3)), timeout=30)
        with NativeClient(cport) as nc:  # its own client port is plain http
            st = nc.status()
        assert st["leader"] == 0
        assert st["raft_applied_index"] == 0
        assert "peer refused: TLS" in m4.log_text()
        c.kill(m4)
        c.members.remove(m4)
        # The cluster did not notice: same leader, still 3 members, writes work.
        assert c.wait_for_leader().name == leader.name
        with Client(eps, **tls.sdk_kwargs()) as client:
            assert len(client.member_list().members) == 3
            client.put("tls/after", "ok")
            assert client.get("tls/after").kvs[0].value == b"ok"
        for m in (m1, m2, m3):
            assert m.running


def test_a_client_refuses_a_member_with_an_expired_certificate(clusters: MakeCluster) -> None:
    c = clusters(1, tls=True)
    assert c.tls is not None
    m1 = c.members[0]
    c.tls.ca.issue("m1", common_name="m1", expired=True)  # overwrites m1's files
    c.start(m1)
    try:
        wait_for("m1 to be ready", lambda: "member ready" in m1.log_text())
        expired = "TLS: certificate verify failed: certificate has expired"
        with pytest.raises(Unavailable, match=expired), \
                Client(endpoints(c.members), **c.tls.sdk_kwargs(), command_timeout=3) as cl:
            cl.put("k", "v")
        done = cli("--endpoints", endpoints(c.members), *c.tls.cli_flags(), "get", "k")
        assert done.returncode != 0
        assert "certificate has expired" in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
        assert m1.running
    finally:
        c.close()


# ------------------------------------------------------------------ discoverd dev --tls


def test_dev_tls_prints_how_to_connect_and_serves_over_tls(tmp_path: Path) -> None:
    port = free_port_block(6)
    proc = subprocess.Popen(
        [sys.executable, "-m", "discoverd.cli", "dev", "--tls", "--port", str(port)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list[str] = []
    cond = threading.Condition()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with cond:
                lines.append(line.rstrip("\n"))
                cond.notify_all()

    threading.Thread(target=read, daemon=True).start()

    def wait_line(start: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        with cond:
            while True:
                for line in lines:
                    if line.startswith(start):
                        return line
                left = deadline - time.monotonic()
                assert left > 0, f"no line {start!r} in:\n" + "\n".join(lines)
                cond.wait(left)

    try:
        connect = wait_line("connect with: discoverd ").removeprefix("connect with: discoverd ")
        flags = connect.split()
        assert flags[0] == "--endpoints"
        assert flags[2] == "--cacert"
        assert flags[1] == ",".join(f"https://127.0.0.1:{port + 2 * i}" for i in range(3))
        wait_line("export DISCOVERD_ENDPOINTS=https://")
        assert cli(*flags, "put", "hello", "tls").stdout.strip() == "OK"
        got = cli(*flags, "get", "hello")
        assert got.returncode == 0, got.stderr
        assert got.stdout.split() == ["hello", "tls"]
        # Without --cacert the members' certificates are not trusted.
        plain = cli("--endpoints", flags[1], "get", "hello")
        assert plain.returncode != 0
        assert "TLS: certificate verify failed" in plain.stderr
        # The peer ports are TLS with client certificates required.
        ctx = ssl.create_default_context(cafile=flags[3])
        assert refused_by(port + 1, ctx).startswith(("refused", "closed"))
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        with cond:
            assert "m1 stopped" in lines
            assert "stopping (SIGINT)" in lines
    finally:
        proc.kill()
        proc.wait(10)


# ------------------------------------------------------------------ docs/security.md


def test_a_client_certificate_names_the_user_when_auth_is_on(clusters: MakeCluster) -> None:
    """etcd's CN authentication: on a --client-cert-auth member with auth on, a client that
    sends no token is the user its certificate's CN names — natively and over HTTP — and is
    held to that user's roles; a CN naming no user is unauthenticated."""
    c = clusters(1, "--bcrypt-cost", "4", tls=True)
    assert c.tls is not None
    tls = c.tls
    with c.started():
        (m,) = c.members
        c.wait_for_leader()
        eps = endpoints(c.members)
        with Client(eps, **tls.sdk_kwargs()) as admin:
            admin.user_add("root", "rootpw")
            admin.put("/cn/secret", "s")
            admin.auth_enable()
        with Client(eps, user="root", password="rootpw", **tls.sdk_kwargs()) as root:
            root.role_add("cn-role")
            root.role_grant_permission("cn-role", "readwrite", "/cn/mine/", prefix=True)
            root.user_add("client", no_password=True)  # the CN of tls.client_cert
            root.user_grant_role("client", "cn-role")
        with Client(eps, **tls.sdk_kwargs()) as by_cert:  # no user, no password
            by_cert.put("/cn/mine/a", "1")
            assert by_cert.get("/cn/mine/a").kvs[0].value == b"1"
            with pytest.raises(PermissionDenied):
                by_cert.get("/cn/secret")
        ctx = tls.client_context()
        conn = http.client.HTTPSConnection("127.0.0.1", m.client_port, context=ctx,
                                           timeout=10)
        try:
            for key, status in ((b"/cn/mine/a", 200), (b"/cn/secret", 403)):
                conn.request("POST", "/v3/kv/range", json.dumps(
                    {"key": base64.b64encode(key).decode()}))
                resp = conn.getresponse()
                body = resp.read()
                assert resp.status == status, body
        finally:
            conn.close()
        # A certificate whose CN is no user: unauthenticated, as with no certificate.
        other_cert, other_key = tls.ca.issue("stranger", common_name="stranger")
        with Client(eps, cacert=str(tls.cacert), cert=str(other_cert),
                    key=str(other_key)) as stranger, pytest.raises(Unauthenticated):
            stranger.get("/cn/mine/a")
