"""``discoverd dev``: a local cluster in the foreground, for trying things (DESIGN §10).

Starts ``--members`` ``discoverd serve`` processes on 127.0.0.1 (client ports ``PORT``,
``PORT+2``, …; peer ports one above each), data and logs under ``--data-dir``
(``./default.discoverd-dev``), prints the endpoints and a ready-to-paste
``export DISCOVERD_ENDPOINTS=...``, then reports every leader change and every member that
exits until Ctrl-C or SIGTERM, which stops all members gracefully (a leader hands over
first) and exits 0. Restarting the command reuses the data: the cluster comes back as it
was.

``--tls``: a throwaway CA (kept in ``<data-dir>/tls``, so clients configured with its path
keep working across runs) and a certificate per member; client and peer URLs are https://,
peers must present a certificate from the CA (mutual TLS), and the command prints the
``--endpoints``/``--cacert`` to connect with (plus a client certificate, for trying
``--client-cert-auth`` members).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING

import click

from discoverd.cli.output import CliError
from discoverd.errors import DiscoverdError

if TYPE_CHECKING:
    from discoverd.sdk import Client

_POLL_S = 0.25
_READY_S = 30.0


@dataclass
class _Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    scheme: str = "http"
    tls_flags: tuple[str, ...] = ()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://{self.endpoint}"

    @property
    def peer_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.peer_port}"


def _check_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As the members will bind: connections of a previous run in TIME_WAIT don't count.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise CliError(f"port {port} is in use (another cluster? pick another --port)"
                           ) from None


def _plan(members: int, port: int, root: Path) -> list[_Member]:
    plan = []
    for i in range(members):
        name = f"m{i + 1}"
        plan.append(_Member(name, port + 2 * i, port + 2 * i + 1, root / name,
                            root / f"{name}.log"))
    return plan


def _serve_args(m: _Member, initial: str, heartbeat: int, election: int) -> list[str]:
    return [sys.executable, "-m", "discoverd.cli", "serve", "--name", m.name,
            "--data-dir", str(m.data_dir),
            "--listen-client-urls", m.client_url,
            "--advertise-client-urls", m.client_url,
            "--listen-peer-urls", m.peer_url,
            "--initial-advertise-peer-urls", m.peer_url,
            "--initial-cluster", initial, "--initial-cluster-token", "discoverd-dev",
            "--heartbeat-interval", str(heartbeat), "--election-timeout", str(election),
            *m.tls_flags]


def _make_certs(root: Path, plan: list[_Member]) -> tuple[Path, Path, Path]:
    """The dev CA (created once, then reused) and fresh member and client certificates;
    returns the CA certificate and the client certificate and key."""
    from discoverd.tls_certs import CertificateAuthority

    tls_dir = root / "tls"
    try:
        ca = CertificateAuthority.load("ca", tls_dir)
    except (OSError, ValueError):
        ca = CertificateAuthority.create("ca", tls_dir)
    for m in plan:
        cert, key = (str(p) for p in ca.issue(m.name, common_name=m.name))
        m.scheme = "https"
        m.tls_flags = ("--cert-file", cert, "--key-file", key,
                       "--peer-cert-file", cert, "--peer-key-file", key,
                       "--peer-trusted-ca-file", str(ca.cert_path), "--peer-client-cert-auth")
    client_cert, client_key = ca.issue("client", common_name="root")
    return ca.cert_path, client_cert, client_key


class _Stop(Exception):
    pass


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


@click.command("dev")
@click.option("--members", type=click.IntRange(1, 9), default=3, show_default=True,
              help="How many members.")
@click.option("--port", type=click.IntRange(1, 65000), default=2379, show_default=True,
              help="Client port of the first member (the others: +2, +4, …; peer ports +1).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("default.discoverd-dev"), show_default=True,
              help="Where the members keep their data and logs.")
@click.option("--heartbeat-interval", type=int, default=100, show_default=True,
              help="Heartbeat interval (ms).")
@click.option("--election-timeout", type=int, default=1000, show_default=True,
              help="Election timeout (ms).")
@click.option("--tls", is_flag=True, default=False,
              help="TLS on client and peer ports (peers mutually authenticated), with "
                   "certificates from a throwaway CA under --data-dir.")
def dev(members: int, port: int, data_dir: Path, heartbeat_interval: int,
        election_timeout: int, tls: bool) -> None:
    """Run a local cluster in the foreground until Ctrl-C."""
    from discoverd.sdk import Client

    root = data_dir.resolve()
    root.mkdir(parents=True, exist_ok=True)
    plan = _plan(members, port, root)
    for m in plan:
        _check_free(m.client_port)
        _check_free(m.peer_port)
    cacert: Path | None = None
    client_cert = client_key = Path()
    if tls:
        cacert, client_cert, client_key = _make_certs(root, plan)
    initial = ",".join(f"{m.name}={m.peer_url}" for m in plan)
    out: IO[str] = sys.stdout
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for m in plan:
            log = m.log_path.open("ab")
            m.proc = subprocess.Popen(
                _serve_args(m, initial, heartbeat_interval, election_timeout),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
            log.close()
            print(f"{m.name}: pid {m.proc.pid}, client {m.endpoint}, peer "
                  f"127.0.0.1:{m.peer_port}, data {m.data_dir}, log {m.log_path}", file=out)
        endpoints = ",".join(m.client_url if tls else m.endpoint for m in plan)
        with Client(endpoints, dial_timeout=0.5, command_timeout=2.0,
                    cacert=cacert) as client:
            ids: dict[int, str] = {}
            leader = _wait_ready(client, plan, ids)
            print(f"ready: {members} member(s), leader {leader}", file=out)
            if cacert is not None:
                print(f"connect with: discoverd --endpoints {endpoints} --cacert {cacert}",
                      file=out)
                print(f"client certificate (for --client-cert-auth members): --cert "
                      f"{client_cert} --key {client_key}", file=out)
                print(f"export DISCOVERD_CACERT={cacert}", file=out)
            print(f"export DISCOVERD_ENDPOINTS={endpoints}", file=out, flush=True)
            _follow(client, plan, ids, leader, out)
    except _Stop as stop:
        print(f"stopping ({stop})", file=out, flush=True)
    except DiscoverdError as e:
        _stop_all(plan, out)
        raise CliError(f"the cluster did not come up: {e} (see the logs in {root})") from None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    _stop_all(plan, out)


def _names_by_id(client: Client, plan: list[_Member]) -> dict[int, str]:
    ids = {}
    for m in plan:
        try:
            ids[client.status(m.endpoint).member_id] = m.name
        except DiscoverdError:  # a member that does not answer has no id to show
            continue
    return ids


def _leader(client: Client, plan: list[_Member], ids: dict[int, str]) -> tuple[str | None, int]:
    """The leader's name as the first answering member sees it, and the term."""
    for m in plan:
        if m.proc is None or m.proc.poll() is not None:
            continue
        try:
            st = client.status(m.endpoint)
        except DiscoverdError:
            continue
        if not st.leader:
            return None, st.raft_term
        if st.leader not in ids:
            ids.update(_names_by_id(client, plan))
        return ids.get(st.leader, f"{st.leader:x}"), st.raft_term
    return None, 0


def _wait_ready(client: Client, plan: list[_Member], ids: dict[int, str]) -> str:
    deadline = time.monotonic() + _READY_S
    while time.monotonic() < deadline:
        for m in plan:
            if m.proc is not None and m.proc.poll() is not None:
                raise CliError(f"{m.name} exited with code {m.proc.returncode}; its log "
                               f"({m.log_path}) ends with:\n{_tail(m.log_path)}")
        name, _ = _leader(client, plan, ids)
        if name is not None:
            return name
        time.sleep(_POLL_S)
    raise CliError(f"no leader after {_READY_S:g}s; see the logs in {plan[0].log_path.parent}")


def _follow(client: Client, plan: list[_Member], ids: dict[int, str], leader: str,
            out: IO[str]) -> None:
    reported: set[str] = set()
    current: str | None = leader
    while True:
        time.sleep(_POLL_S)
        for m in plan:
            if m.name not in reported and m.proc is not None and m.proc.poll() is not None:
                reported.add(m.name)
                print(f"{m.name} exited with code {m.proc.returncode} (log: {m.log_path})",
                      file=out, flush=True)
        if len(reported) == len(plan):
            raise _Stop("every member exited")
        name, term = _leader(client, plan, ids)
        if name != current:
            current = name
            print(f"leader: {name} (term {term})" if name else "no leader", file=out,
                  flush=True)


def _stop_all(plan: list[_Member], out: IO[str]) -> None:
    for m in plan:
        if m.proc is not None and m.proc.poll() is None:
            m.proc.send_signal(signal.SIGTERM)
    for m in plan:
        if m.proc is None:
            continue
        try:
            m.proc.wait(15)
        except subprocess.TimeoutExpired:
            m.proc.kill()
            m.proc.wait(5)
        print(f"{m.name} stopped", file=out, flush=True)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
