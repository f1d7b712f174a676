"""discoverd as a system of the shared side-by-side harness (issue 12).

An ``ExternalClientSystem`` (the harness's ``systems.py``) like ``EtcdSystem``: ``start()``
spawns ``discoverd serve`` members as our own subprocesses on fixed loopback ports, data dirs
under ``$BENCH_LAB`` (wiped first), and waits for an agreed leader that has committed a
write; ``target()`` is the leader's client address; ``stop()`` kills only those PIDs
(``kill_pids``: SIGTERM, SIGKILL after 5 s). Load comes from the harness's ``loadgen.py``
processes with ``discoverd_adapter:DiscoverdAdapter`` (``run.py`` puts this folder on their
``PYTHONPATH``).

Members run with discoverd's defaults, which are etcd's: heartbeat 100 ms, election 1000 ms,
and every Ready's WAL write fsynced before it is acknowledged. Only the log level is lowered
(warning), as the etcd members run at ``--log-level warn``.

Importing this module needs the harness (``systems``) on ``sys.path``; ``run.py`` does that.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shutil
import subprocess
import time
from typing import Any

import systems as S  # the shared harness's module (on sys.path via run.py)

from discoverd.testing.cluster import ClientFailure, NativeClient

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class DiscoverdSystem(S.ExternalClientSystem):
    adapter = "discoverd_adapter:DiscoverdAdapter"

    def __init__(self, members: int = 3, base_port: int = 27379) -> None:
        self.n = members
        self.name = f"discoverd-{members}node"
        self.base_port = base_port
        self.procs: list[subprocess.Popen[bytes]] = []
        self.client_ports = [base_port + 10 * i for i in range(members)]
        self.peer_ports = [p + 1 for p in self.client_ports]
        self.datadir = os.path.join(S.LAB, "discoverd-data", self.name)
        self._leader: str | None = None

    # -- lifecycle

    def start(self) -> None:
        shutil.rmtree(self.datadir, ignore_errors=True)
        os.makedirs(self.datadir)
        os.makedirs(os.path.join(S.LAB, "logs"), exist_ok=True)
        cluster = ",".join(f"m{i}=http://127.0.0.1:{p}" for i, p in enumerate(self.peer_ports))
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        for i in range(self.n):
            log_path = os.path.join(S.LAB, "logs", f"{self.name}-m{i}.log")
            with open(log_path, "wb") as log:
                self.procs.append(subprocess.Popen(
                    [S.PY, "-m", "discoverd.cli", "serve", "--name", f"m{i}",
                     "--data-dir", os.path.join(self.datadir, f"m{i}"),
                     "--listen-client-urls", f"http://127.0.0.1:{self.client_ports[i]}",
                     "--advertise-client-urls", f"http://127.0.0.1:{self.client_ports[i]}",
                     "--listen-peer-urls", f"http://127.0.0.1:{self.peer_ports[i]}",
                     "--initial-advertise-peer-urls",
                     f"http://127.0.0.1:{self.peer_ports[i]}",
                     "--initial-cluster", cluster,
                     "--initial-cluster-token", "bench-" + self.name,
                     "--initial-cluster-state", "new",
                     "--log-level", "warning"],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env))
        deadline = time.time() + 30
        while time.time() < deadline:
            dead = [p.pid for p in self.procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"discoverd member(s) {dead} exited at start; logs in "
                                   + os.path.join(S.LAB, "logs"))
            port = self._find_leader()
            if port is not None and self._can_write(port):
                self._leader = f"127.0.0.1:{port}"
                return
            time.sleep(0.3)
        raise RuntimeError("discoverd cluster did not elect a leader")

    def _status(self, port: int) -> dict[str, Any] | None:
        try:
            with NativeClient(port, timeout=2.0) as c:
                return c.status()
        except (OSError, ClientFailure):
            return None

    def _find_leader(self) -> int | None:
        """The leader's client port, once every member answers and names the same leader."""
        seen = {port: self._status(port) for port in self.client_ports}
        if any(st is None for st in seen.values()):
            return None
        leaders = [port for port, st in seen.items()
                   if st is not None and st["role"] == "leader"]
        if len(leaders) != 1:
            return None
        lead_id = seen[leaders[0]]["header"]["member_id"]  # type: ignore[index]
        if any(st is None or st["leader"] != lead_id for st in seen.values()):
            return None
        return leaders[0]

    def _can_write(self, port: int) -> bool:
        """A write and a linearizable read through the leader succeed (it has committed an
        entry of its term, so ReadIndex is open)."""
        try:
            with NativeClient(port, timeout=3.0) as c:
                c.put(b"/bench-ready", b"1")
                c.get(b"/bench-ready")
            return True
        except (OSError, ClientFailure):
            return False

    def target(self) -> str:
        assert self._leader is not None, "start() first"
        return self._leader

    def server_pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        S.kill_pids(self.procs)
        self.procs = []

    def version(self) -> str:
        rev = ""
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                                 capture_output=True, timeout=5)
            rev = out.stdout.decode().strip()
        tree = f" (git {rev} + working tree)" if rev else ""
        return f"discoverd {importlib.metadata.version('discoverd')}{tree}"
