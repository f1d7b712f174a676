"""Backup and restore with real processes: ``discoverd snapshot save`` from a running
3-member cluster, ``snapshot status``, ``snapshot restore`` into three empty data
directories, and a new cluster started from them serves an identical keyspace — same keys,
values, create/mod revisions, versions, leases, current and compacted revision."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from discoverd.errors import Compacted
from discoverd.sdk import Client, Op
from discoverd.testing.cluster import ProcessCluster


def cli(*args: str, endpoints: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ}
    if endpoints:
        env["DISCOVERD_ENDPOINTS"] = endpoints
    return subprocess.run([sys.executable, "-m", "discoverd.cli", *args], capture_output=True,
                          text=True, timeout=120, env=env)


def endpoints(cluster: ProcessCluster) -> str:
    return ",".join(f"127.0.0.1:{m.client_port}" for m in cluster.members)


def keyspace(client: Client) -> list[tuple[bytes, bytes, int, int, int, int]]:
    resp = client.get(b"\0", from_key=True)
    return [(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)
            for kv in resp.kvs]


def test_save_status_restore_gives_an_identical_keyspace(tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    with ProcessCluster(tmp_path / "old", 3).started() as old:
        with Client(endpoints(old)) as client:
            for i in range(150):
                client.put(f"/app/k{i:03}", f"v{i}")
            compact_at = client.put("/app/k000", "again").header.revision
            client.compact(compact_at)
            for i in range(0, 150, 7):
                client.delete(f"/app/k{i:03}")
            client.txn([], [Op.put("/txn/a", "1"), Op.put("/txn/b", "2")])
            lease = client.lease_grant(600)
            client.put("/services/api/1", '{"id":"1","service":"api"}', lease=lease.id)
            before = keyspace(client)
            revision = client.get("/app/k001").header.revision
        leader = old.wait_for_leader()
        backup = tmp_path / "backup.snap"
        saved = cli("snapshot", "save", str(backup),
                    endpoints=f"127.0.0.1:{leader.client_port}")
        assert saved.returncode == 0, saved.stderr
        assert saved.stdout.startswith(f"Snapshot saved at {backup}\nsha256 ")
        sha = saved.stdout.split("sha256 ")[1].strip()
    status = cli("snapshot", "status", str(backup), "-w", "json")
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert (info["hash"], info["revision"], info["totalKey"]) == (sha, revision, len(before))
    assert info["compactRevision"] == compact_at
    assert info["totalSize"] == backup.stat().st_size

    new = ProcessCluster(tmp_path / "new", 3, token="restored-cluster")
    initial = ",".join(f"{m.name}=http://127.0.0.1:{m.peer_port}" for m in new.members)
    for m in new.members:
        done = cli("snapshot", "restore", str(backup), "--data-dir", str(m.data_dir),
                   "--name", m.name, "--initial-cluster", initial,
                   "--initial-cluster-token", "restored-cluster",
                   "--initial-advertise-peer-urls", f"http://127.0.0.1:{m.peer_port}")
        assert done.returncode == 0, done.stderr
        assert f"revision {revision}, {len(before)} keys" in done.stdout
    with new.started(), Client(endpoints(new)) as client:
        assert keyspace(client) == before
        assert client.get("/app/k001").header.revision == revision
        with pytest.raises(Compacted):
            client.get("/app/k001", revision=compact_at - 1)
        ttl = client.lease_time_to_live(lease.id)
        assert 0 < ttl.ttl <= 600
        # A working cluster, not a frozen copy: writes continue from the old revision.
        assert client.put("/after", "restore").header.revision == revision + 1
        statuses = new.statuses()
        assert len({s["header"]["cluster_id"] for s in statuses.values()}) == 1
        # The new cluster's members, not the old one's.
        peers = sorted(u for m in client.member_list().members for u in m.peer_urls)
        assert peers == sorted(f"http://127.0.0.1:{m.peer_port}" for m in new.members)


def test_a_damaged_or_misused_snapshot_is_refused(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    with ProcessCluster(tmp_path / "c", 1).started() as c:
        with Client(endpoints(c)) as client:
            client.put("a", "1")
        backup = tmp_path / "b.snap"
        assert cli("snapshot", "save", str(backup), endpoints=endpoints(c)).returncode == 0
        two = cli("snapshot", "save", str(tmp_path / "x.snap"),
                  endpoints=f"{endpoints(c)},127.0.0.1:1")
        assert two.returncode == 1
        assert "one selected node" in two.stderr
    data = bytearray(backup.read_bytes())
    data[-40] ^= 0xFF  # inside the image (the hash is the last 32 bytes)
    damaged = tmp_path / "damaged.snap"
    damaged.write_bytes(bytes(data))
    status = cli("snapshot", "status", str(damaged))
    assert status.returncode == 1
    assert "hash mismatch" in status.stderr
    truncated = tmp_path / "truncated.snap"
    truncated.write_bytes(backup.read_bytes()[:-40])
    assert "truncated" in cli("snapshot", "status", str(truncated)).stderr
    restore = cli("snapshot", "restore", str(damaged), "--data-dir", str(tmp_path / "r"))
    assert restore.returncode == 1
    assert not (tmp_path / "r" / "member").exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "something").write_text("x")
    refused = cli("snapshot", "restore", str(backup), "--data-dir", str(busy))
    assert refused.returncode == 1
    assert "already holds data" in refused.stderr
