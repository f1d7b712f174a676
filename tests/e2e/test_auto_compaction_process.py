"""Automatic compaction with a real member: it happens by itself (on by default; here in
revision mode with a short check interval), keeps the retention, and never passes a live
watcher that still needs history — until that watcher is gone."""

from __future__ import annotations

import json
from pathlib import Path

import cbor2

from discoverd.errors import Compacted
from discoverd.sdk import Client, Op
from discoverd.testing.cluster import NativeClient, ProcessCluster, wait_for


def compacted_below(client: Client, revision: int) -> bool:
    try:
        client.get("k", revision=revision)
    except Compacted:
        return True
    return False


def log_events(cluster: ProcessCluster, event: str) -> list[dict[str, object]]:
    out = []
    for line in cluster.members[0].log_text().splitlines():
        if line.startswith("{") and f'"{event}"' in line:
            out.append(json.loads(line))
    return out


def test_auto_compaction_keeps_the_retention_and_waits_for_a_behind_watcher(
        tmp_path: Path) -> None:
    args = ["--auto-compaction-mode", "revision", "--auto-compaction-retention", "20",
            "--experimental-auto-compaction-check-interval", "100", "--log-format", "json"]
    with ProcessCluster(tmp_path, 1, extra_args=args).started() as cluster, \
            Client(f"127.0.0.1:{cluster.members[0].client_port}") as client:
        # A watcher on a connection that stops reading, then 12 MB of events for it: its
        # socket fills, its buffer (1,024 events) overflows, and it falls back to reading
        # history — which compaction must then keep for it.
        slow = NativeClient(cluster.members[0].client_port, timeout=15)
        slow.send_raw(cbor2.dumps({"id": 1, "op": "watch", "key": b"w/", "range_end": b"w0"}))
        assert slow.read_frame()["ok"]["created"]
        value = b"x" * 4096
        for t in range(24):
            client.txn([], [Op.put(f"w/{t:02}/{i:03}", value) for i in range(128)])
        for i in range(40):
            client.put("k", f"v{i}")
        revision = client.get("k").header.revision
        wait_for("a compaction held by the watcher", lambda: any(
            e.get("held_by_watcher") for e in log_events(cluster, "auto compaction")))
        # The watcher reads on now: every event arrives, none lost to a compaction.
        keys: list[bytes] = []
        while len(keys) < 24 * 128:
            ok = slow.read_frame()["ok"]
            assert not ok.get("canceled"), ok
            keys += [bytes(e["kv"]["key"]) for e in ok.get("events", [])]
        assert keys == [f"w/{t:02}/{i:03}".encode() for t in range(24) for i in range(128)]
        slow.close()
        # The watcher is gone: compaction catches up to the retention.
        wait_for("compaction past the watcher",
                 lambda: compacted_below(client, revision - 25), timeout=20)
        assert not compacted_below(client, revision - 19)  # 20 revisions are kept
        assert client.get("k").kvs[0].value == b"v39"


def test_auto_compaction_is_on_by_default_and_can_be_turned_off(tmp_path: Path) -> None:
    (tmp_path / "on").mkdir()
    (tmp_path / "off").mkdir()
    with ProcessCluster(tmp_path / "on", 1, extra_args=["--log-format", "json"]
                        ).started() as on:
        started = wait_for("the compactor's first line",
                           lambda: log_events(on, "auto compaction on"))
        assert started[0]["mode"] == "periodic"
        assert started[0]["retention"] == 3600.0
    with ProcessCluster(tmp_path / "off", 1, extra_args=[
            "--auto-compaction-retention", "0", "--log-format", "json"]).started() as off:
        wait_for("the compactor's first line", lambda: log_events(off, "auto compaction off"))
