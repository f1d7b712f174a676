"""The PyPI package ``etcd3gw`` (etcd's HTTP gateway client) against a real discoverd member:
its public API — put, get, get_prefix, get_all, delete, delete_prefix, replace, create,
lease, refresh, ttl, keys, revoke, lock, watch, watch_prefix, watch_once, status, members —
works unchanged (issue 8's "done when"). No sleeps: watches are waited on with deadlines."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from gateway_helpers import BOUND, status

from discoverd.testing.cluster import MemberProcess, wait_for

etcd3gw = pytest.importorskip("etcd3gw")
from etcd3gw.client import Etcd3Client  # noqa: E402
from etcd3gw.exceptions import WatchTimedOut  # noqa: E402


@pytest.fixture
def client(member: MemberProcess) -> Iterator[Etcd3Client]:
    c = Etcd3Client(host="127.0.0.1", port=member.client_port, timeout=BOUND)
    yield c
    c.session.close()


def test_status_and_members(client: Etcd3Client, member: MemberProcess) -> None:
    st = client.status()
    assert st["version"] == "3.4.0"
    assert int(st["header"]["cluster_id"]) > 0
    assert client.api_path == "/v3/", "picked from /version, as against etcd 3.4"
    (m,) = client.members()
    assert m["clientURLs"] == [f"http://127.0.0.1:{member.client_port}"]
    assert m["peerURLs"] == [f"http://127.0.0.1:{member.peer_port}"]


def test_put_get_delete(client: Etcd3Client) -> None:
    assert client.put("gw/k1", "v1") is True
    assert client.get("gw/k1") == [b"v1"]
    assert client.get("gw/none") == []
    ((value, meta),) = client.get("gw/k1", metadata=True)
    assert value == b"v1"
    assert meta["key"] == b"gw/k1"
    assert int(meta["version"]) == 1
    assert client.delete("gw/k1") is True
    assert client.delete("gw/k1") is False
    assert client.get("gw/k1") == []


def test_prefixes_sorting_and_get_all(client: Etcd3Client) -> None:
    for i in (3, 1, 2):
        client.put(f"gp/{i}", f"value{i}")
    got = client.get_prefix("gp/")
    assert [v for v, _ in got] == [b"value1", b"value2", b"value3"]
    desc = client.get_prefix("gp/", sort_order="descend", sort_target="key")
    assert [v for v, _ in desc] == [b"value3", b"value2", b"value1"]
    by_create = client.get_prefix("gp/", sort_order="ascend", sort_target="create")
    assert [v for v, _ in by_create] == [b"value3", b"value1", b"value2"]
    assert {meta["key"] for _, meta in client.get_all()} >= {b"gp/1", b"gp/2", b"gp/3"}
    assert client.delete_prefix("gp/") is True
    assert client.get_prefix("gp/") == []


def test_replace_and_create(client: Etcd3Client) -> None:
    client.put("gr/k", "old")
    assert client.replace("gr/k", "old", "new") is True
    assert client.replace("gr/k", "old", "newer") is False
    assert client.get("gr/k") == [b"new"]
    assert client.create("gr/fresh", "1") is True
    assert client.create("gr/fresh", "2") is False
    assert client.get("gr/fresh") == [b"1"]
    lease = client.lease(30)
    assert client.create("gr/leased", "x", lease=lease) is True
    assert lease.keys() == [b"gr/leased"]
    lease.revoke()
    assert client.get("gr/leased") == []


def test_leases(client: Etcd3Client) -> None:
    lease = client.lease(20)
    assert lease.id > 0
    assert 0 < lease.ttl() <= 20
    assert lease.refresh() == 20
    assert client.put("gl/k", "v", lease=lease) is True
    assert lease.keys() == [b"gl/k"]
    assert lease.revoke() is True
    assert client.get("gl/k") == []
    assert lease.ttl() == -1
    assert lease.refresh() == -1, "etcd3gw reads a missing TTL as -1"


def test_locks(client: Etcd3Client) -> None:
    lock = client.lock("gw-lock", ttl=20)
    assert lock.acquire() is True
    assert lock.is_acquired() is True
    other = client.lock("gw-lock", ttl=20)
    assert other.acquire() is False, "held by the first"
    assert lock.refresh() == 20
    assert lock.release() is True
    assert lock.is_acquired() is False
    assert other.acquire() is True
    assert other.release() is True
    with client.lock("gw-lock-2", ttl=20) as held:
        assert held.is_acquired()


def _next(events: Iterator[dict[str, Any]]) -> dict[str, Any]:
    """The iterator blocks; read it on a thread so a missing event fails within BOUND."""
    box: queue.Queue[dict[str, Any]] = queue.Queue()
    threading.Thread(target=lambda: box.put(next(events)), daemon=True).start()
    try:
        return box.get(timeout=BOUND)
    except queue.Empty:
        raise AssertionError(f"no watch event within {BOUND}s") from None


def test_watch_key_with_a_huge_value(client: Etcd3Client, member: MemberProcess) -> None:
    baseline = status(member.client_port)["watchers"]
    events, cancel = client.watch("gwatch/k")  # returns once the watch is created
    client.put("gwatch/k", "small")
    client.put("gwatch/k", "x" * 10_000)
    client.delete("gwatch/k")
    first, second, third = _next(events), _next(events), _next(events)
    assert (first["kv"]["key"], first["kv"]["value"]) == (b"gwatch/k", b"small")
    assert second["kv"]["value"] == b"x" * 10_000
    assert third["type"] == "DELETE"
    cancel()
    wait_for("the watch to be freed",
             lambda: status(member.client_port)["watchers"] == baseline, timeout=BOUND)


def test_watch_prefix(client: Etcd3Client) -> None:
    events, cancel = client.watch_prefix("gwp/")
    try:
        client.put("gwp/a", "1")
        client.put("gwq", "outside")
        client.put("gwp/b", "2")
        got = [_next(events), _next(events)]
        assert [(e["kv"]["key"], e["kv"]["value"]) for e in got] == [(b"gwp/a", b"1"),
                                                                     (b"gwp/b", b"2")]
    finally:
        cancel()


def test_watch_once(client: Etcd3Client) -> None:
    rev = int(client.status()["header"]["revision"])
    client.put("gwo/k", "v")
    event = client.watch_once("gwo/k", timeout=BOUND, start_revision=rev + 1)
    assert event["kv"]["value"] == b"v"
    with pytest.raises(WatchTimedOut):
        client.watch_once("gwo/quiet", timeout=0.3)
