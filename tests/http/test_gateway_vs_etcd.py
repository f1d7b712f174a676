"""The same HTTP requests against a real etcd 3.4 and a fresh discoverd member: status codes
and bodies must be the same bytes (issue 8: "run Debian's etcd 3.4 and compare byte for
byte").

Both stores start empty, so revisions agree step by step. What inherently differs is masked,
and only that: the ``cluster_id``, ``member_id`` and ``raft_term`` of response headers, and
a lease's remaining TTL (a clock reading). Requests whose answers differ on purpose (the
wording of JSON decoding errors, ``/version``, ``created`` headers of watches from a past
revision) are not in the script; docs/http.md lists those differences.

Needs ``etcd`` 3.4 on PATH (Debian: ``apt-get install etcd-server``); skipped otherwise.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gateway_helpers import BOUND, Stream, request

from discoverd.testing.cluster import ProcessCluster, free_port, wait_for

pytestmark = pytest.mark.skipif(shutil.which("etcd") is None,
                                reason="etcd 3.4 is not installed (apt-get install etcd-server)")

FOO, FOO1, FOP = "Zm9v", "Zm9vMQ==", "Zm9w"
SCRIPT: list[tuple[str, Any]] = [
    ("/v3/kv/put", {"key": FOO, "value": "YmFy"}),
    ("/v3/kv/put", {"key": FOO1, "value": "YmFyMQ==", "prev_kv": True}),
    ("/v3/kv/put", {"key": FOO, "value": "", "prev_kv": True}),
    ("/v3/kv/range", {"key": FOO}),
    ("/v3/kv/range", {"key": FOO, "range_end": FOP}),
    ("/v3/kv/range", {"key": FOO, "range_end": FOP, "limit": 1}),
    ("/v3/kv/range", {"key": FOO, "range_end": FOP, "sort_order": 2, "sort_target": 4}),
    ("/v3/kv/range", {"key": FOO, "range_end": FOP, "sort_order": "ASCEND",
                      "sort_target": "MOD"}),
    ("/v3/kv/range", {"key": "AA==", "range_end": "AA==", "count_only": True}),
    ("/v3/kv/range", {"key": FOO, "keysOnly": True}),
    ("/v3/kv/range", {"key": FOO, "revision": "2"}),
    ("/v3/kv/range", {"key": FOO, "range_end": FOP, "min_mod_revision": 3}),
    ("/v3/kv/range", {"key": "bm9uZQ=="}),
    ("/v3/kv/range", {"key": FOO, "revision": 100}),
    ("/v3/kv/range", {}),
    ("/v3/kv/range", b""),
    ("/v3/kv/range", {"key": FOO, "bogus": 1}),
    ("/v3/kv/put", {"key": ""}),
    ("/v3/kv/put", {"key": "bm9uZQ==", "ignore_value": True}),
    ("/v3/kv/txn", {"compare": [{"key": FOO, "result": "EQUAL", "target": "VALUE",
                                 "value": ""}],
                    "success": [{"request_put": {"key": FOO, "value": "YmFy"}},
                                {"request_range": {"key": FOO}},
                                {"request_delete_range": {"key": "bm9uZQ=="}}],
                    "failure": []}),
    ("/v3/kv/txn", {"compare": [{"key": FOO, "result": "EQUAL", "target": "CREATE",
                                 "createRevision": 0}],
                    "success": [{"requestPut": {"key": FOO, "value": "YmFy"}}],
                    "failure": [{"requestRange": {"key": FOO}}]}),
    ("/v3/kv/txn", {"success": [{"request_txn": {"success": [
        {"request_put": {"key": "eA==", "value": "eQ=="}}]}}]}),
    ("/v3/kv/txn", {"success": [{"request_put": {"key": "eA=="}},
                                {"request_put": {"key": "eA=="}}]}),
    ("/v3/kv/txn", {"compare": [{"key": "eA==", "target": "MOD", "result": "GREATER",
                                 "mod_revision": "1"}],
                    "success": [{"request_delete_range": {"key": "eA==", "prev_kv": True}}]}),
    ("/v3/kv/deleterange", {"key": "bm9uZQ=="}),
    ("/v3/kv/deleterange", {"key": FOO, "range_end": FOP, "prev_kv": True}),
    ("/v3/lease/grant", {"TTL": 30, "ID": 1234}),
    ("/v3/lease/grant", {"TTL": "30", "ID": "1234"}),
    ("/v3/lease/grant", {"TTL": 90000000000}),
    ("/v3/kv/put", {"key": "bGs=", "value": "dg==", "lease": 1234}),
    ("/v3/kv/lease/timetolive", {"ID": 1234, "keys": True}),
    ("/v3/lease/timetolive", {"ID": "1234"}),
    ("/v3/lease/timetolive", {"ID": 999}),
    ("/v3/lease/keepalive", {"ID": 1234}),
    ("/v3/lease/keepalive", {"ID": 999}),
    ("/v3/lease/leases", {}),
    ("/v3/kv/lease/leases", {}),
    ("/v3/lease/revoke", {"ID": 999}),
    ("/v3/kv/lease/revoke", {"ID": 1234}),
    ("/v3/kv/range", {"key": "bGs="}),
    ("/v3/kv/put", {"key": "bGs=", "value": "dg==", "lease": 1234}),
    ("/v3/kv/put", {"key": FOO, "value": "YmF6"}),
    ("/v3/kv/compaction", {"revision": 3}),
    ("/v3/kv/range", {"key": FOO, "revision": 2}),
    ("/v3/kv/compaction", {"revision": 3}),
    ("/v3/kv/compaction", {"revision": 1000}),
    ("/v3/kv/range", {"key": FOO, "revision": 3}),
]

_VOLATILE = re.compile(rb'"(cluster_id|member_id|raft_term)":"\d+"')
_TTL = re.compile(rb'"TTL":"(2\d|30)"')


def normalise(body: bytes) -> bytes:
    return _TTL.sub(b'"TTL":"<ttl>"', _VOLATILE.sub(rb'"\1":"<id>"', body))


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    root = Path(tmp_path_factory.mktemp("etcd"))
    client, peer = free_port(), free_port()
    log = (root / "etcd.log").open("wb")
    proc = subprocess.Popen(
        ["etcd", "--data-dir", str(root / "data"),
         "--listen-client-urls", f"http://127.0.0.1:{client}",
         "--advertise-client-urls", f"http://127.0.0.1:{client}",
         "--listen-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-cluster", f"default=http://127.0.0.1:{peer}"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.close()
    try:
        wait_for("etcd to be healthy", lambda: request(client, "GET", "/health").body
                 == b'{"health":"true"}', timeout=20)
        yield client
    finally:
        proc.kill()
        proc.wait(10)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    cluster = ProcessCluster(Path(tmp_path_factory.mktemp("fresh")), 1)
    try:
        cluster.start_all()
        cluster.wait_for_leader()
        yield cluster.members[0].client_port
    finally:
        cluster.close()


def test_same_answers_as_etcd(etcd: int, fresh: int) -> None:
    mismatches = []
    for i, (path, body) in enumerate(SCRIPT):
        theirs = request(etcd, "POST", path, body)
        ours = request(fresh, "POST", path, body)
        expected = (theirs.status, normalise(theirs.body))
        got = (ours.status, normalise(ours.body))
        if expected != got:
            mismatches.append(f"step {i} POST {path} {json.dumps(body, default=str)}\n"
                              f"  etcd:      {expected}\n  discoverd: {got}")
        assert ours.headers.get("content-type") == theirs.headers.get("content-type"), path
    assert not mismatches, "\n".join(mismatches)
    assert request(fresh, "GET", "/health").body == request(etcd, "GET", "/health").body


def test_same_watch_stream_as_etcd(etcd: int, fresh: int) -> None:
    key = "d2F0Y2g="  # "watch"
    streams = {}
    try:
        for name, port in (("etcd", etcd), ("discoverd", fresh)):
            s = Stream(port, "/v3/watch", {"create_request": {"key": key, "prev_kv": True}})
            assert s.head() == 200
            streams[name] = [s, [normalise(s.chunk() or b"")]]
        for body in ({"key": key, "value": "MQ=="}, {"key": key, "value": "Mg=="}):
            for port in (etcd, fresh):
                assert request(port, "POST", "/v3/kv/put", body).status == 200
        for port in (etcd, fresh):
            assert request(port, "POST", "/v3/kv/deleterange", {"key": key}).status == 200
        for entry in streams.values():
            s, chunks = entry
            with_deadline(s)
            while len(chunks) < 4:
                chunks.append(normalise(s.chunk() or b""))
        assert streams["discoverd"][1] == streams["etcd"][1]
    finally:
        for entry in streams.values():
            entry[0].close()


def with_deadline(s: Stream) -> None:
    s.sock.settimeout(BOUND)
