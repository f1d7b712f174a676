"""``discoverd dev``: a local 3-member cluster in the foreground — real processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from discoverd.sdk import Client
from discoverd.testing.cluster import free_port_block


class DevProcess:
    def __init__(self, cwd: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "discoverd.cli", "dev", *args], cwd=cwd,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait_line(self, start: str, timeout: float = 30.0, after: int = 0) -> str:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[after:]:
                    if line.startswith(start):
                        return line
                left = deadline - time.monotonic()
                assert left > 0, f"no line {start!r} in:\n" + "\n".join(self.lines)
                self._cond.wait(left)


def test_dev_runs_a_cluster_reports_leader_changes_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port_block(6)
    dev = DevProcess(tmp_path, "--port", str(port))
    try:
        export = dev.wait_line("export DISCOVERD_ENDPOINTS=")
        endpoints = export.split("=", 1)[1]
        assert endpoints == f"127.0.0.1:{port},127.0.0.1:{port + 2},127.0.0.1:{port + 4}"
        leader = dev.wait_line("ready: 3 member(s), leader ").rsplit(" ", 1)[1]
        pids = {line.split(":")[0]: int(line.split("pid ")[1].split(",")[0])
                for line in dev.lines if line.startswith("m") and " pid " in line}
        assert sorted(pids) == ["m1", "m2", "m3"]
        with Client(endpoints) as client:
            client.put("hello", "world")
            seen = len(dev.lines)
            os.kill(pids[leader], signal.SIGKILL)
            dev.wait_line(f"{leader} exited with code -9", after=seen)
            new = dev.wait_line("leader: ", after=seen)
            assert new.split()[1] != leader
            assert client.get("hello").kvs[0].value == b"world"
        dev.proc.send_signal(signal.SIGINT)
        assert dev.proc.wait(30) == 0
        assert "stopping (SIGINT)" in dev.lines
        for name, pid in pids.items():
            assert f"{name} stopped" in dev.lines
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            raise AssertionError(f"{name} (pid {pid}) is still running")
        assert (tmp_path / "default.discoverd-dev" / "m1.log").exists()
        # The data stays: the next run is the same cluster.
        again = DevProcess(tmp_path, "--port", str(port))
        try:
            again.wait_line("export DISCOVERD_ENDPOINTS=")
            with Client(endpoints) as client:
                assert client.get("hello").kvs[0].value == b"world"
            again.proc.send_signal(signal.SIGTERM)
            assert again.proc.wait(30) == 0
        finally:
            again.proc.kill()
    finally:
        dev.proc.kill()


def test_dev_refuses_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "discoverd.cli", "dev", "--members", "1",
                               "--port", str(port)], cwd=tmp_path, capture_output=True,
                              text=True, timeout=60)
    assert done.returncode == 1
    assert f"port {port} is in use" in done.stderr
