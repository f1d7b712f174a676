"""The gateway on a 3-member cluster of real processes: every member answers, writes through a
follower are forwarded, a watch on a follower sees them, the member list names everyone, and
``/health`` turns false (HTTP 503) once a member has no quorum."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gateway_helpers import BOUND, Stream, b64, ok, post, request, unb64

from discoverd.testing.cluster import ProcessCluster, wait_for


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessCluster]:
    c = ProcessCluster(Path(tmp_path_factory.mktemp("http-cluster")), 3)
    try:
        c.start_all()
        c.wait_for_leader()
        yield c
    finally:
        c.close()


def test_every_member_serves_the_gateway(cluster: ProcessCluster) -> None:
    leader = cluster.wait_for_leader()
    followers = [m for m in cluster.members if m is not leader]
    with Stream(followers[1].client_port, "/v3/watch",
                {"create_request": {"key": b64("cl/k")}}) as watch:
        assert watch.head() == 200
        assert watch.result() is not None
        put = ok(followers[0].client_port, "/v3/kv/put", {"key": b64("cl/k"),
                                                           "value": b64("via follower")})
        rev = put["header"]["revision"]
        for m in cluster.members:
            got = ok(m.client_port, "/v3/kv/range", {"key": b64("cl/k")})  # linearizable
            assert unb64(got["kvs"][0]["value"]) == b"via follower"
            assert got["kvs"][0]["mod_revision"] == rev
        event = watch.result()
        assert event is not None
        assert event["result"]["events"][0]["kv"]["mod_revision"] == rev
    # leader-only lease ops through a follower are forwarded too
    lease = ok(followers[0].client_port, "/v3/lease/grant", {"TTL": 30})
    assert ok(followers[1].client_port, "/v3/lease/keepalive",
              {"ID": lease["ID"]})["result"]["TTL"] == "30"
    ttl = ok(followers[1].client_port, "/v3/kv/lease/timetolive", {"ID": lease["ID"]})
    assert ttl["grantedTTL"] == "30"


def test_member_list_and_status(cluster: ProcessCluster) -> None:
    expected = {m.name: ([f"http://127.0.0.1:{m.peer_port}"],
                         [f"http://127.0.0.1:{m.client_port}"]) for m in cluster.members}

    def listing(port: int) -> dict[str, Any] | None:
        body = ok(port, "/v3/cluster/member/list")
        found = {x.get("name"): (x.get("peerURLs"), x.get("clientURLs"))
                 for x in body["members"]}
        return body if found == expected else None  # client URLs come once published

    leader_ids = set()
    for m in cluster.members:
        body = wait_for(f"{m.name} to list every member", lambda p=m.client_port: listing(p),
                        timeout=BOUND)
        assert "revision" not in body["header"]
        me = next(x for x in body["members"] if x["name"] == m.name)
        assert me["ID"] == body["header"]["member_id"]
        assert "isLearner" not in me
        leader_ids.add(ok(m.client_port, "/v3/maintenance/status")["leader"])
    assert len(leader_ids) == 1


def test_health_is_false_without_quorum(cluster: ProcessCluster) -> None:
    """The last test on the module's cluster: it kills two of its members."""
    for m in cluster.members:
        assert request(m.client_port, "GET", "/health").body == b'{"health":"true"}'
    survivor, *others = cluster.members
    watch = Stream(survivor.client_port, "/v3/watch", {"create_request": {"key": b64("lost")}})
    assert watch.head() == 200
    assert watch.result() is not None
    for m in others:
        cluster.kill(m)

    def unhealthy() -> bool:
        reply = request(survivor.client_port, "GET", "/health", timeout=BOUND)
        return reply.status == 503 and reply.body == b'{"health":"false"}'

    wait_for("/health to say false", unhealthy, timeout=3 * BOUND)
    # The watch stream ends with grpc-gateway's mid-stream error object once the member has
    # been without a leader for a while (so its client resumes elsewhere).
    with watch:
        last = watch.result()
        assert last is not None
        assert last == {"error": {"grpc_code": 14, "http_code": 503,
                                  "message": last["error"]["message"],
                                  "http_status": "Service Unavailable"}}
        assert "no leader" in last["error"]["message"]
        assert watch.chunk() is None
    reply = post(survivor.client_port, "/v3/kv/put", {"key": b64("x"), "value": b64("y")})
    assert reply.status == 503
    assert reply.json()["code"] == 14


def test_health_is_false_with_an_alarm(tmp_path: Path) -> None:
    """A member whose store reached --quota-backend-bytes raises NOSPACE: writes fail with
    etcd's ResourceExhausted and /health says false until the alarm is lifted."""
    c = ProcessCluster(tmp_path, 1, extra_args=["--quota-backend-bytes", "20000"])
    try:
        c.start_all()
        c.wait_for_leader()
        port = c.members[0].client_port
        assert request(port, "GET", "/health").status == 200
        refused = None
        for i in range(10):
            reply = post(port, "/v3/kv/put", {"key": b64(f"q{i}"), "value": b64("x" * 5000)})
            if reply.status != 200:
                refused = reply
                break
        assert refused is not None, "the quota never stopped a write"
        assert refused.status == 403
        assert refused.json() == {"error": "etcdserver: mvcc: database space exceeded",
                                  "message": "etcdserver: mvcc: database space exceeded",
                                  "code": 8}
        wait_for("/health to say false", lambda: request(port, "GET", "/health").body
                 == b'{"health":"false"}', timeout=BOUND)
        status = ok(port, "/v3/maintenance/status")
        assert status["errors"] == [f"memberID:{status['header']['member_id']} alarm:NOSPACE"]
    finally:
        c.close()
