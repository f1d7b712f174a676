"""The space quota and the NOSPACE alarm, with real processes: past ``--quota-backend-bytes``
a write is refused and NOSPACE raised for the whole cluster; puts, txns with puts and lease
grants are refused on every member while deletes, reads and compaction go on; ``alarm
disarm`` lifts it, and so does getting back under the quota (by itself)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from discoverd.errors import NoSpace
from discoverd.sdk import Client, Op
from discoverd.testing.cluster import ProcessCluster, wait_for

QUOTA = 200_000
VALUE = b"x" * 10_000


def cli(endpoints: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "discoverd.cli", "--endpoints", endpoints,
                           *args], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ))


def test_nospace_blocks_puts_not_deletes_and_reads_and_disarms(tmp_path: Path) -> None:
    with ProcessCluster(tmp_path, 3, extra_args=["--quota-backend-bytes", str(QUOTA)]
                        ).started() as cluster:
        eps = [f"127.0.0.1:{m.client_port}" for m in cluster.members]
        with Client(eps) as client:
            refused: NoSpace | None = None
            written = 0
            while refused is None and written < 100:
                try:
                    client.put(f"big/{written:03}", VALUE)
                    written += 1
                except NoSpace as e:
                    refused = e
            assert refused is not None, "the quota was never enforced"
            assert "database space exceeded" in str(refused)
            assert 10 <= written < 100
            alarms = wait_for("NOSPACE listed", client.alarm_list)
            assert [a for _, a in alarms] == ["NOSPACE"]
            raised_by = alarms[0][0]
            assert raised_by in {client.status(e).member_id for e in eps}
            # Every member refuses data, whichever one is asked; small writes too.
            for ep in eps:
                with Client(ep) as one, pytest.raises(NoSpace):
                    one.put("small", "1")
            with pytest.raises(NoSpace):
                client.txn([], [Op.put("t", "1")])
            with pytest.raises(NoSpace):
                client.lease_grant(60)
            # Reads, deletes and a txn that only deletes still work.
            assert client.get("big/000").kvs[0].value == VALUE
            client.delete("big/000")
            client.txn([], [Op.delete("big/001")])
            # The CLI, as etcdctl: the alarm line, and the ERRORS column of endpoint status.
            listed = cli(eps[0], "alarm", "list")
            assert listed.stdout == f"memberID:{raised_by} alarm:NOSPACE\n"
            table = cli(eps[0], "endpoint", "status", "-w", "table").stdout
            # (etcdctl's table wraps cells at 30 characters, at the space)
            cells = [c.strip() for line in table.splitlines() for c in line.split("|")]
            assert f"memberID:{raised_by}" in cells
            assert "alarm:NOSPACE" in cells
            # Disarm: writes are accepted again (until the quota is crossed again).
            disarmed = cli(eps[0], "alarm", "disarm")
            assert disarmed.returncode == 0, disarmed.stderr
            assert disarmed.stdout == f"memberID:{raised_by} alarm:NOSPACE\n"
            assert client.alarm_list() == []
            client.put("small", "1")
            with pytest.raises(NoSpace):
                client.put("big/again", VALUE * 3)
            wait_for("NOSPACE again", client.alarm_list)
            # Making room lifts it by itself: delete, compact, and the leader disarms.
            client.delete("big/", prefix=True)
            client.compact(client.get("small").header.revision)
            wait_for("NOSPACE lifted by the leader", lambda: client.alarm_list() == [],
                     timeout=15)
            client.put("after", VALUE)
            assert client.get("after").kvs[0].value == VALUE
