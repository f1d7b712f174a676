"""Clusters of real ``discoverd serve`` processes on 127.0.0.1, for tests and benchmarks.

``ProcessCluster`` picks free ports, starts members as subprocesses (logs to files in their
data dirs), and offers the faults tests need: ``kill`` (SIGKILL), ``pause``/``resume``
(SIGSTOP/SIGCONT), ``stop`` (SIGTERM, graceful), ``restart``; with ``peer_proxies=True``
every member-to-member connection also passes a fault-injecting proxy (``cluster.faults``,
see ``discoverd.testing.netfaults``); with ``tls=True`` every member serves clients and
peers over TLS with mutual certificate checks (``cluster.tls``: the files and the flags a
client needs). ``NativeClient`` is a minimal
blocking client of the native protocol — just enough to drive and observe a member; the SDK
(``discoverd.sdk``) is what applications use.

Every wait is bounded: ``wait_for`` polls a condition until a deadline and then fails with
what it last saw, so a broken cluster fails a test instead of hanging it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import cbor2

from discoverd.server.config import member_id_for
from discoverd.testing.netfaults import PeerFaults, PeerProxy
from discoverd.tls_certs import CertificateAuthority

T = TypeVar("T")


class ClientFailure(Exception):
    """The member answered with an error (``code`` is the protocol's error code)."""

    def __init__(self, code: str, message: str, leader: int = 0) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.leader = leader


def _ephemeral_ports() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, chosen *below* the kernel's ephemeral range when
    there is room. A port from that range (what binding port 0 gives) can be taken by any
    outgoing connection's source port between this call and the member binding it — or
    after the member dies, before it restarts — and a restarted member then fails with
    "address already in use"."""
    low, _ = _ephemeral_ports()
    rng = random.SystemRandom()  # parallel test workers must not draw the same sequence
    for _ in range(100 if low > 11000 else 0):
        port = rng.randrange(10000, low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])



def free_port_block(size: int) -> int:
    """A port P with P..P+size-1 all free on 127.0.0.1 now (``discoverd dev`` takes
    consecutive ports), below the ephemeral range as ``free_port``'s."""
    low, _ = _ephemeral_ports()
    rng = random.SystemRandom()
    for _ in range(200):
        base = rng.randrange(10000, max(low, 10000 + 2 * size) - size, 2)
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + size):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError(f"no block of {size} free ports")


def wait_for(
    what: str, probe: Callable[[], T | None], *, timeout: float = 20.0, interval: float = 0.05
) -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = probe()
            if result:
                return result
        except (OSError, ClientFailure) as e:
            last_error = e
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                                 + (f" (last error: {last_error})" if last_error else ""))
        time.sleep(interval)


class NativeClient:
    """One connection to one member; requests are sent and answered one at a time."""

    def __init__(self, port: int, *, timeout: float = 5.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if ssl_context is not None:
            try:
                sock = ssl_context.wrap_socket(sock, server_hostname="127.0.0.1")
            except BaseException:
                sock.close()
                raise
        self.sock = sock
        self.sock.sendall(b"DSC1")
        self._ids = itertools.count(1)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> NativeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send_raw(self, payload: bytes) -> None:
        self.sock.sendall(struct.pack(">I", len(payload)) + payload)

    def read_frame(self) -> Any:
        return cbor2.loads(self.read_frame_bytes())

    def read_frame_bytes(self) -> bytes:
        """The next frame's payload as sent (for tests that inspect the raw answer)."""
        header = self._recv_exact(4)
        (size,) = struct.unpack(">I", header)
        return self._recv_exact(size)

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("member closed the connection")
            buf += chunk
        return bytes(buf)

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        rid = next(self._ids)
        self.send_raw(cbor2.dumps({"id": rid, "op": op, **fields}))
        answer = self.read_frame()
        if "err" in answer:
            err = answer["err"]
            raise ClientFailure(err.get("code", "?"), err.get("message", ""),
                                err.get("leader", 0))
        assert answer["id"] == rid, f"answer for {answer['id']}, expected {rid}"
        result: dict[str, Any] = answer["ok"]
        return result

    def put(self, key: bytes, value: bytes) -> int:
        return int(self.call("put", key=key, value=value)["header"]["revision"])

    def get(self, key: bytes, *, serializable: bool = False) -> bytes | None:
        kvs = self.call("range", key=key, serializable=serializable)["kvs"]
        return bytes(kvs[0]["value"]) if kvs else None

    def status(self) -> dict[str, Any]:
        return self.call("status")


def peer_url(m: MemberProcess) -> str:
    """The peer URL ``m`` advertises (its proxy's, when the cluster has peer proxies)."""
    return f"{m.scheme}://127.0.0.1:{m.advertised_peer_port or m.peer_port}"


def endpoints(members: list[MemberProcess]) -> str:
    """``--endpoints`` for these members (comma-separated ``127.0.0.1:PORT``, or
    ``https://127.0.0.1:PORT`` for TLS members)."""
    return ",".join(f"https://127.0.0.1:{m.client_port}" if m.scheme == "https"
                    else f"127.0.0.1:{m.client_port}" for m in members)


@dataclass
class ClusterTls:
    """The certificates of a ``ProcessCluster(tls=True)``: one CA; per member a
    certificate used for its client port, its peer port and its dials; one client
    certificate (CN ``client``) for the SDK, the CLI and ``NativeClient``."""

    ca: CertificateAuthority
    client_cert: Path
    client_key: Path
    members: dict[str, tuple[Path, Path]] = field(default_factory=dict)

    @classmethod
    def create(cls, root: Path) -> ClusterTls:
        ca = CertificateAuthority.create("ca", root / "tls")
        cert, key = ca.issue("client", common_name="client")
        return cls(ca, cert, key)

    @property
    def cacert(self) -> Path:
        return self.ca.cert_path

    def member_files(self, name: str) -> tuple[Path, Path]:
        """``name``'s certificate and key, issued on first use."""
        if name not in self.members:
            self.members[name] = self.ca.issue(name, common_name=name)
        return self.members[name]

    def serve_flags(self, name: str) -> list[str]:
        """``discoverd serve`` flags: TLS on both ports, certificates required on both."""
        cert, key = (str(p) for p in self.member_files(name))
        ca = str(self.cacert)
        return ["--cert-file", cert, "--key-file", key, "--trusted-ca-file", ca,
                "--client-cert-auth", "--peer-cert-file", cert, "--peer-key-file", key,
                "--peer-trusted-ca-file", ca, "--peer-client-cert-auth"]

    def sdk_kwargs(self) -> dict[str, str]:
        """``cacert=``, ``cert=``, ``key=`` for ``discoverd.sdk.Client``."""
        return {"cacert": str(self.cacert), "cert": str(self.client_cert),
                "key": str(self.client_key)}

    def cli_flags(self) -> list[str]:
        """``--cacert``, ``--cert``, ``--key`` for the ``discoverd`` CLI."""
        return ["--cacert", str(self.cacert), "--cert", str(self.client_cert),
                "--key", str(self.client_key)]

    def client_context(self) -> ssl.SSLContext:
        """What a blocking client (``NativeClient``, ``http.client``) dials members with."""
        ctx = ssl.create_default_context(cafile=str(self.cacert))
        ctx.load_cert_chain(self.client_cert, self.client_key)
        return ctx


@dataclass
class MemberProcess:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(default_factory=Path)
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment for the process (``DISCOVERD_*`` flags)."""
    advertised_peer_port: int = 0
    """The peer port the others dial when it is not ``peer_port`` (its proxy's); 0: same."""
    launcher: list[str] = field(default_factory=lambda: ["-m", "discoverd.cli"])
    """What runs ``serve``: the real CLI, or a deliberately broken build
    (``discoverd.testing.mutants``) that the fault tests must catch."""
    scheme: str = "http"
    """Of its client and peer URLs: "https" in a ``tls=True`` cluster."""
    ssl_context: ssl.SSLContext | None = None
    """What ``client()`` dials with (a TLS cluster's client certificate)."""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self, timeout: float = 5.0) -> NativeClient:
        return NativeClient(self.client_port, timeout=timeout, ssl_context=self.ssl_context)

    def status(self) -> dict[str, Any]:
        with self.client(timeout=2.0) as c:
            return c.status()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class ProcessCluster:
    """N members of one cluster, each a ``python -m discoverd serve`` subprocess."""

    def __init__(
        self,
        root: Path,
        size: int = 3,
        *,
        token: str = "test-cluster",
        heartbeat_ms: int = 50,
        election_ms: int = 500,
        extra_args: list[str] | None = None,
        peer_proxies: bool = False,
        tls: bool = False,
    ) -> None:
        """``peer_proxies``: each member listens for peers on its own port but advertises
        the port of a proxy in front of it, so that every connection to it from a peer
        passes the proxy and ``self.faults`` can cut, delay or thin it (plain TCP only).
        ``tls``: certificates in ``root/tls`` (``self.tls``), https:// client and peer
        URLs, client and peer certificates required."""
        self.root = root
        assert not (tls and peer_proxies), "the peer proxies do not speak TLS"
        self.tls: ClusterTls | None = ClusterTls.create(root) if tls else None
        self._scheme = "https" if tls else "http"
        self._client_ssl = self.tls.client_context() if self.tls is not None else None
        self.faults: PeerFaults | None = (
            PeerFaults(resolve=lambda name: self.member_id(self.member(name)),
                       roster=lambda: [m.name for m in self.members])
            if peer_proxies else None)
        self._member_ids: dict[str, int] = {}
        self._proxies: dict[str, PeerProxy] = {}
        self.token = token
        self.members: list[MemberProcess] = []
        self._timing = ["--heartbeat-interval", str(heartbeat_ms),
                        "--election-timeout", str(election_ms)]
        self._extra_args = list(extra_args or [])
        names = [f"m{i}" for i in range(1, size + 1)]
        ports = {n: (free_port(), free_port()) for n in names}
        initial = ",".join(
            f"{n}={self._scheme}://127.0.0.1:{self.advertised_peer_port(n, ports[n][1])}"
            for n in names)
        for n in names:
            self.members.append(self._member(n, *ports[n], initial))
        self.election_s = election_ms / 1000

    def _member(self, name: str, cport: int, pport: int, initial_cluster: str | None,
                *extra: str) -> MemberProcess:
        """``initial_cluster`` None: the name and the initial-cluster flags are left to the
        ``DISCOVERD_*`` environment (``MemberProcess.env``)."""
        data_dir = self.root / f"{name}.discoverd"
        aport = self.advertised_peer_port(name, pport)
        scheme = self._scheme
        identity = [] if initial_cluster is None else [
            "--name", name, "--initial-advertise-peer-urls", f"{scheme}://127.0.0.1:{aport}",
            "--initial-cluster", initial_cluster]
        tls = self.tls.serve_flags(name) if self.tls is not None else []
        args = [
            *identity, "--data-dir", str(data_dir),
            "--listen-client-urls", f"{scheme}://127.0.0.1:{cport}",
            "--advertise-client-urls", f"{scheme}://127.0.0.1:{cport}",
            "--listen-peer-urls", f"{scheme}://127.0.0.1:{pport}",
            "--initial-cluster-token", self.token,
            *self._timing, *tls, *self._extra_args, *extra,
        ]
        return MemberProcess(name, cport, pport, data_dir, args,
                             log_path=self.root / f"{name}.log",
                             advertised_peer_port=aport if aport != pport else 0,
                             scheme=scheme, ssl_context=self._client_ssl)

    def advertised_peer_port(self, name: str, peer_port: int) -> int:
        """The peer port member ``name``, listening on ``peer_port``, advertises:
        ``peer_port`` itself, or with peer proxies that of its proxy (made on first use).
        With proxies, call it before ``member add`` to learn the URL to add, then
        ``new_member(name, peer_port=peer_port, ...)``."""
        if self.faults is None:
            return peer_port
        proxy = self._proxies.get(name)
        if proxy is None:
            proxy = self._proxies[name] = self.faults.add_proxy(peer_port, name=name)
        assert proxy.target[1] == peer_port, f"{name}'s proxy forwards to {proxy.target[1]}"
        return proxy.port

    def member_id(self, m: MemberProcess) -> int:
        """``m``'s member id, asked of ``m`` once (bounded wait) and remembered. A member
        that is not running and was never asked: the id its flags derive (what it starts
        with when its data directory is new)."""
        mid = self._member_ids.get(m.name)
        if mid is None:
            if not m.running and "--initial-advertise-peer-urls" in m.args:
                urls = m.args[m.args.index("--initial-advertise-peer-urls") + 1]
                return member_id_for(m.name, urls.split(","), self.token)
            mid = int(wait_for(f"{m.name} to tell its member id",
                               lambda: m.status()["header"]["member_id"]))
            self._member_ids[m.name] = mid
        return mid

    def member_by_id(self, member_id: int) -> MemberProcess:
        """The member whose id is ``member_id`` (asking, once, each running member whose id
        is not known yet)."""
        for m in self.members:
            if m.name not in self._member_ids and m.running:
                with contextlib.suppress(OSError, ClientFailure, KeyError):
                    self._member_ids[m.name] = int(m.status()["header"]["member_id"])
            if self._member_ids.get(m.name) == member_id:
                return m
        raise KeyError(f"no member has id {member_id}")

    def peer_proxy(self, m: MemberProcess) -> PeerProxy:
        """The proxy in front of ``m``'s peer port (``peer_proxies=True`` only)."""
        return self._proxies[m.name]

    def new_member(self, name: str, *extra: str, peer_port: int | None = None,
                   client_port: int | None = None, initial_cluster: str | None = None,
                   env: dict[str, str] | None = None) -> MemberProcess:
        """A member that joins the running cluster (not started; add it with ``member add``
        first): free ports, its own data dir, and either ``env`` — the ``DISCOVERD_*``
        lines ``member add`` prints, which then give its name and initial-cluster flags — or
        ``--initial-cluster-state existing`` with ``initial_cluster`` (default: every member
        of ``members`` plus this one). Appended to ``members``; ``name`` must be new."""
        assert all(m.name != name for m in self.members), f"{name} exists"
        cport, pport = client_port or free_port(), peer_port or free_port()
        aport = self.advertised_peer_port(name, pport)
        if env is not None:
            m = self._member(name, cport, pport, None, *extra)
            m.env = dict(env)
        else:
            if initial_cluster is None:
                initial_cluster = ",".join([*(f"{m.name}={peer_url(m)}" for m in self.members),
                                            f"{name}={self._scheme}://127.0.0.1:{aport}"])
            m = self._member(name, cport, pport, initial_cluster,
                             "--initial-cluster-state", "existing", *extra)
        self.members.append(m)
        return m

    def __enter__(self) -> ProcessCluster:
        return self

    @contextlib.contextmanager
    def started(self) -> Iterator[ProcessCluster]:
        """Every member started and a leader agreed; every member killed afterwards (also
        when starting failed)."""
        try:
            self.start_all()
            self.wait_for_leader()
            yield self
        finally:
            self.close()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def member(self, name: str) -> MemberProcess:
        return next(m for m in self.members if m.name == name)

    # -- process control

    def start(self, m: MemberProcess, *extra: str) -> None:
        assert not m.running, f"{m.name} is already running"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **m.env}
        log = m.log_path.open("ab")
        m.proc = subprocess.Popen(
            [sys.executable, *m.launcher, "serve", *m.args, *extra],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        )
        log.close()

    def start_all(self) -> None:
        for m in self.members:
            self.start(m)

    def kill(self, m: MemberProcess) -> None:
        """SIGKILL: no flush, no goodbye — what a crash looks like to the others."""
        assert m.proc is not None
        m.proc.kill()
        m.proc.wait(10)

    def stop(self, m: MemberProcess, *, timeout: float = 15.0) -> int:
        """SIGTERM, then wait for a graceful exit; returns the exit code."""
        assert m.proc is not None
        m.proc.send_signal(signal.SIGTERM)
        return m.proc.wait(timeout)

    def pause(self, m: MemberProcess) -> None:
        assert m.proc is not None
        m.proc.send_signal(signal.SIGSTOP)

    def resume(self, m: MemberProcess) -> None:
        assert m.proc is not None
        m.proc.send_signal(signal.SIGCONT)

    def restart(self, m: MemberProcess) -> None:
        if m.running:
            self.kill(m)
        self.start(m)

    def close(self) -> None:
        for m in self.members:
            if m.proc is not None and m.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    m.proc.send_signal(signal.SIGCONT)
                m.proc.kill()
                m.proc.wait(10)
        if self.faults is not None:
            self.faults.close()

    def print_log_tails(self, lines: int = 40) -> None:
        """Print the end of every member's log: a test fixture's teardown calls it, so a
        failure report shows what the members were doing (pytest prints captured output
        only for failures)."""
        for m in self.members:
            tail = m.log_text().splitlines()[-lines:]
            print(f"----- {m.log_path} (last {len(tail)} lines)")
            print("\n".join(tail))

    # -- observation

    def running(self) -> list[MemberProcess]:
        return [m for m in self.members if m.running]

    def statuses(self) -> dict[str, dict[str, Any]]:
        out = {}
        for m in self.running():
            with contextlib.suppress(OSError, ClientFailure):
                out[m.name] = m.status()
        return out

    def leader(self, among: list[MemberProcess] | None = None) -> MemberProcess | None:
        """The member that says it leads, if exactly one of ``among`` (default: all
        running) does and every answering member agrees on its id."""
        candidates = among if among is not None else self.running()
        seen: dict[str, dict[str, Any]] = {}
        for m in candidates:
            with contextlib.suppress(OSError, ClientFailure):
                seen[m.name] = m.status()
        leaders = [n for n, st in seen.items() if st["role"] == "leader"]
        if len(leaders) != 1:
            return None
        lead = self.member(leaders[0])
        lead_id = seen[lead.name]["header"]["member_id"]
        if any(st["leader"] != lead_id for st in seen.values()):
            return None
        return lead

    def wait_for_leader(
        self, among: list[MemberProcess] | None = None, timeout: float = 20.0
    ) -> MemberProcess:
        return wait_for("a single agreed leader", lambda: self.leader(among), timeout=timeout)

    def wait_ready(self, m: MemberProcess, timeout: float = 20.0) -> dict[str, Any]:
        return wait_for(f"{m.name} to answer", m.status, timeout=timeout)

