"""A real agent process (``python -m discoverd.agents``) for tests: started with JSON logs to
a file, read back as events, stopped with SIGTERM — plus bounded waits on files and keys."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from discoverd.testing.cluster import ProcessCluster

T = TypeVar("T")


def wait_until(what: str, probe: Callable[[], T | None], timeout: float = 15.0) -> T:
    """Poll ``probe`` until truthy; fail after ``timeout`` seconds saying what was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


class AgentProcess:
    def __init__(self, directory: Path, endpoints: str, *args: str, log: Path,
                 state_dir: Path | None = None) -> None:
        self.directory = directory
        self.log_path = log
        self.args = [sys.executable, "-m", "discoverd.agents", "--dir", str(directory),
                     "--endpoints", endpoints, "--log-format", "json",
                     "--dial-timeout", "1s", "--command-timeout", "3s", *args]
        if state_dir is not None:
            self.args += ["--state-dir", str(state_dir)]
        self.proc: subprocess.Popen[bytes] | None = None
        self._offset = 0

    def start(self) -> AgentProcess:
        out = self.log_path.open("ab")
        self._offset = self.log_path.stat().st_size
        self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        out.close()
        self.wait_event("agent.started")
        return self

    def events(self, event: str | None = None, *, since_start: bool = True
               ) -> list[dict[str, Any]]:
        """The agent's log events (of this run, unless ``since_start=False``)."""
        with self.log_path.open("rb") as f:
            if since_start:
                f.seek(self._offset)
            lines = f.read().decode("utf-8", "replace").splitlines()
        out = []
        for line in lines:
            if line.startswith("{"):
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if event is None or rec.get("event") == event:
                    out.append(rec)
        return out

    def wait_event(self, event: str, *, count: int = 1, timeout: float = 15.0,
                   where: Callable[[dict[str, Any]], bool] = lambda e: True
                   ) -> list[dict[str, Any]]:
        def probe() -> list[dict[str, Any]] | None:
            assert self.proc is not None
            found = [e for e in self.events(event) if where(e)]
            if len(found) >= count:
                return found
            if self.proc.poll() is not None:
                raise AssertionError(f"the agent exited ({self.proc.returncode}) before "
                                     f"{event}:\n{self.log_path.read_text()[-3000:]}")
            return None

        return wait_until(f"{count} x {event} in the agent's log", probe, timeout)

    def stop(self) -> int:
        """SIGTERM; the agent must exit by itself, cleanly."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(15)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@contextmanager
def running_agent(directory: Path, endpoints: str, *args: str, log: Path,
                  state_dir: Path | None = None) -> Iterator[AgentProcess]:
    agent = AgentProcess(directory, endpoints, *args, log=log, state_dir=state_dir)
    try:
        yield agent.start()
    finally:
        agent.kill()


def endpoints_of(cluster: ProcessCluster) -> str:
    return ",".join(f"127.0.0.1:{m.client_port}" for m in cluster.members)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def write_file(path: Path, text: str) -> None:
    """An ordinary (non-atomic) write, as most programs do it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        f.write(text)
