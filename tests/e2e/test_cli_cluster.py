"""The ``discoverd`` CLI against a real 3-member cluster, through a leader kill -9 in the
middle of a stream of writes (issue 4, "Done when": no acknowledged write lost, none applied
twice).

Each write is its own ``discoverd put kI vI`` process with ``--endpoints`` naming all three
members, so a write meets the failover as a user's shell loop would: the CLI (the SDK under
it) moves to another member when its member dies or is not the leader, and never re-sends a
write whose outcome is unknown — it fails with one ``Error:`` line instead. Keys are unique
per write, so a write applied twice would show as ``version`` 2.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from discoverd.testing.cluster import ProcessCluster, wait_for

WRITES = 45
KILL_AT = 15


def cli(endpoints: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISCOVERD_")}
    return subprocess.run(
        [sys.executable, "-m", "discoverd.cli", "--endpoints", endpoints,
         "--command-timeout", "5s", *args],
        capture_output=True, timeout=60, env=env, check=False)


def test_puts_through_a_leader_kill_are_kept_once(tmp_path: Path) -> None:
    with ProcessCluster(tmp_path, 3) as cluster:
        cluster.start_all()
        leader = cluster.wait_for_leader()
        endpoints = ",".join(f"127.0.0.1:{m.client_port}" for m in cluster.members)
        acknowledged: dict[str, str] = {}
        failed: dict[str, bytes] = {}
        killer: threading.Timer | None = None
        for i in range(WRITES):
            if i == KILL_AT:  # the kill lands while this write's process is running
                killer = threading.Timer(0.15, cluster.kill, args=(leader,))
                killer.start()
            key, value = f"k{i}", f"v{i}"
            r = cli(endpoints, "put", key, value)
            if r.returncode == 0:
                assert r.stdout == b"OK\n", (key, r)
                assert r.stderr == b"", (key, r)
                acknowledged[key] = value
            else:
                # a write may fail during the election, with exactly one error line
                assert r.returncode == 1, (key, r)
                assert r.stdout == b"", (key, r)
                assert r.stderr.startswith(b"Error: "), (key, r)
                assert r.stderr.count(b"\n") == 1, (key, r)
                failed[key] = r.stderr
        assert killer is not None
        killer.join()
        assert not leader.running

        survivors = [m for m in cluster.members if m is not leader]
        cluster.wait_for_leader(survivors)

        def read_all() -> subprocess.CompletedProcess[bytes] | None:
            res = cli(endpoints, "get", "--prefix", "k", "-w", "json")
            return res if res.returncode == 0 else None

        r = wait_for("a linearizable read of every key", read_all)
        kvs = {base64.b64decode(kv["key"]).decode(): kv
               for kv in json.loads(r.stdout).get("kvs", [])}

        for key, value in acknowledged.items():
            assert key in kvs, f"acknowledged {key} lost (failed: {failed})"
            assert base64.b64decode(kvs[key]["value"]).decode() == value
        # none applied twice: each key was written by one command, so version 1
        assert {k: kv["version"] for k, kv in kvs.items() if kv["version"] != 1} == {}
        # only the writes in doubt (failed) may be missing; nothing else appeared
        assert set(kvs) <= set(acknowledged) | set(failed)
        # the cluster kept taking writes after the kill: the last third all went through
        late = [f"k{i}" for i in range(2 * WRITES // 3, WRITES)]
        assert all(k in acknowledged for k in late), failed
        # and each key is also read back alone through the CLI, as a user would
        for key in (f"k{KILL_AT - 1}", f"k{WRITES - 1}"):
            one = cli(endpoints, "get", key, "-w", "json")
            assert one.returncode == 0, one
            assert json.loads(one.stdout)["kvs"][0]["version"] == 1
        print(f"{len(acknowledged)} acknowledged, {len(failed)} failed during the failover: "
              f"{failed}")
