"""Running the ``discoverd`` CLI (and etcdctl) as subprocesses, for tests/cli."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from discoverd.testing.cluster import ProcessCluster

SEED = (("foo", "bar"), ("foo1", "bar1"), ("foo2", "bar2"), ("foo3", "bar3"))


@dataclass(frozen=True)
class Run:
    """One finished command: exit code and raw output."""

    argv: tuple[str, ...]
    code: int
    out: bytes
    err: bytes

    def __str__(self) -> str:
        return f"$ {' '.join(self.argv)} -> {self.code}\n  out={self.out!r}\n  err={self.err!r}"


def clean_env() -> dict[str, str]:
    """The environment without any DISCOVERD_*/ETCDCTL_* setting that could change a run."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DISCOVERD_", "ETCDCTL_"))}
    env["ETCDCTL_API"] = "3"
    return env


def run(argv: Sequence[str], stdin: bytes = b"", timeout: float = 30.0) -> Run:
    proc = subprocess.run(list(argv), input=stdin, capture_output=True, timeout=timeout,
                          env=clean_env(), check=False)
    return Run(tuple(argv), proc.returncode, proc.stdout, proc.stderr)


def discoverd(endpoints: str, *args: str, stdin: bytes = b"", timeout: float = 30.0) -> Run:
    """``discoverd --endpoints ENDPOINTS ARGS...`` (``python -m discoverd.cli``)."""
    return run([sys.executable, "-m", "discoverd.cli", "--endpoints", endpoints, *args],
               stdin=stdin, timeout=timeout)


def endpoint_of(cluster: ProcessCluster) -> str:
    return ",".join(f"127.0.0.1:{m.client_port}" for m in cluster.members)


@dataclass(frozen=True)
class Header:
    """A member's response-header identity, to fill into expected JSON and fields outputs."""

    cluster_id: int
    member_id: int
    raft_term: int

    def json(self, revision: int) -> str:
        return (f'"header":{{"cluster_id":{self.cluster_id},"member_id":{self.member_id},'
                f'"revision":{revision},"raft_term":{self.raft_term}}}')

    def fields(self, revision: int) -> str:
        return (f'"ClusterID" : {self.cluster_id}\n"MemberID" : {self.member_id}\n'
                f'"Revision" : {revision}\n"RaftTerm" : {self.raft_term}\n')


def started_member(root: Path) -> Iterator[ProcessCluster]:
    """A running single-member cluster (generator for a fixture)."""
    root.mkdir(parents=True, exist_ok=True)
    cluster = ProcessCluster(root, 1)
    try:
        cluster.start_all()
        cluster.wait_for_leader()
        yield cluster
    finally:
        cluster.close()


_ETCD_LOG = re.compile(rb'^\{"level":.*\n', re.MULTILINE)


def error_lines(err: bytes) -> bytes:
    """stderr without the JSON log lines etcdctl's gRPC client writes before its error."""
    return _ETCD_LOG.sub(b"", err)
