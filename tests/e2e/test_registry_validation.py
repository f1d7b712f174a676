"""Config validation on real member processes (issue 6): a document that fails its schema,
written with the raw protocol to a follower and to the leader, by put and by txn, is refused
with ``validation_failed`` and the violations, and every member still holds the old one."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest

from discoverd.testing.cluster import NativeClient, ProcessCluster, wait_for

SCHEMA = {
    "type": "object",
    "properties": {"port": {"type": "integer", "maximum": 65535}},
    "required": ["port"],
}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ProcessCluster]:
    with ProcessCluster(tmp_path, 3).started() as c:
        yield c


def raw(client: NativeClient, op: str, **fields: Any) -> dict[str, Any]:
    """The whole answer frame, so that an ``err`` map is seen with all its fields."""
    client.send_raw(cbor2.dumps({"id": 7, "op": op, **fields}))
    answer: dict[str, Any] = client.read_frame()
    assert answer["id"] == 7
    return answer


def test_an_invalid_document_is_refused_on_every_path_and_nothing_changes(
    cluster: ProcessCluster,
) -> None:
    leader = cluster.wait_for_leader()
    follower = next(m for m in cluster.members if m is not leader)
    with leader.client() as c:
        assert "ok" in raw(c, "put", key=b"/schemas/app", value=json.dumps(SCHEMA).encode())
        good = raw(c, "put", key=b"/config/app", value=b'{"port": 8080}')
        assert "ok" in good
    revision = good["ok"]["header"]["revision"]
    bad = b'{"port": "eighty", "debug": true}'
    expected = {
        "code": "validation_failed",
        "violations": [{"key": "/config/app", "path": "/port",
                        "message": "'eighty' is not of type 'integer'",
                        "schema_path": "/properties/port/type"}],
    }
    txn = {"compare": [], "success": [
        {"request_put": {"key": b"/unrelated", "value": b"x"}},
        {"request_put": {"key": b"/config/app", "value": bad}},
    ]}
    for member in (follower, leader):
        with member.client() as c:
            for op, fields in (("put", {"key": b"/config/app", "value": bad}), ("txn", txn)):
                answer = raw(c, op, **fields)
                assert "err" in answer, answer
                err = answer["err"]
                assert {k: err[k] for k in ("code", "violations")} == expected
                assert err["message"].startswith("validation failed: /config/app at /port:")

    def same_everywhere() -> bool:
        for m in cluster.members:
            with m.client(timeout=2.0) as c:
                kvs = c.call("range", key=b"/config/app", serializable=True)["kvs"]
                if [bytes(kv["value"]) for kv in kvs] != [b'{"port": 8080}']:
                    return False
                if c.get(b"/unrelated", serializable=True) is not None:
                    return False
                history = c.call("range", key=b"/config-history/app/",
                                 range_end=b"/config-history/app0", serializable=True)["kvs"]
                if [json.loads(kv["value"])["generation"] for kv in history] != [1]:
                    return False
        return True

    wait_for("every member to hold the good document only", same_everywhere, timeout=10)
    # the refusals made no revision: the next write is the very next one
    with leader.client() as c:
        assert c.put(b"/after", b"1") == revision + 1


def test_config_validate_is_a_dry_run(cluster: ProcessCluster) -> None:
    """``config_validate`` judges a document against the current schema, on any member,
    and changes nothing: no revision, no history, no document."""
    leader = cluster.wait_for_leader()
    follower = next(m for m in cluster.members if m is not leader)
    with leader.client() as c:
        assert "ok" in raw(c, "put", key=b"/schemas/app", value=json.dumps(SCHEMA).encode())
    with follower.client() as c:
        # a linearizable read: the follower has applied the schema put (status would not wait)
        before = c.call("range", key=b"/schemas/app")["header"]["revision"]
        ok = raw(c, "config_validate", name="app", value=b'{"port": 1}')
        assert ok["ok"]["valid"] is True
        bad = raw(c, "config_validate", name="app", value=b'{"port": 70000}')
        assert bad["err"]["code"] == "validation_failed"
        assert bad["err"]["violations"][0]["path"] == "/port"
        assert raw(c, "config_validate", name="app", value=b"{nope")["err"]["code"] == (
            "validation_failed")
        assert raw(c, "config_validate", name="", value=b"{}")["err"]["code"] == (
            "invalid_argument")
        assert c.call("range", key=b"/schemas/app")["header"]["revision"] == before
        assert c.get(b"/config/app") is None
        history = c.call("range", key=b"/config-history/", range_end=b"/config-history0")
        assert history["kvs"] == []
