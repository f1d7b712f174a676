"""The etcd v3 gateway against a real ``discoverd serve`` process over HTTP: every route,
etcd's shapes and error codes, streams framed one JSON object per chunk, and bad input that
gets a clear 4xx and changes nothing (the revision does not move)."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import pytest
from gateway_helpers import (
    BOUND,
    Stream,
    b64,
    ok,
    post,
    request,
    revision,
    status,
    unb64,
)

from discoverd.testing.cluster import MemberProcess, wait_for

HEADER_KEYS = {"cluster_id", "member_id", "revision", "raft_term"}


def header_ok(obj: dict[str, Any], revision: int | None = None) -> None:
    header = obj["header"]
    assert set(header) == HEADER_KEYS, header
    assert all(isinstance(v, str) and v.isdigit() for v in header.values()), header
    if revision is not None:
        assert header["revision"] == str(revision)


def test_version_and_health(member: MemberProcess) -> None:
    reply = request(member.client_port, "GET", "/version")
    assert reply.status == 200
    assert reply.body == b'{"etcdserver":"3.4.0","etcdcluster":"3.4.0"}'
    reply = request(member.client_port, "GET", "/health")
    assert (reply.status, reply.body) == (200, b'{"health":"true"}')
    assert reply.headers["content-type"] == "application/json"


def test_put_range_delete_round_trip(member: MemberProcess) -> None:
    port = member.client_port
    put = ok(port, "/v3/kv/put", {"key": b64("rt/a"), "value": b64("1")})
    assert list(put) == ["header"]
    rev = int(put["header"]["revision"])
    ok(port, "/v3/kv/put", {"key": b64("rt/b"), "value": b64(""), "lease": 0})
    got = ok(port, "/v3/kv/range", {"key": b64("rt/"), "range_end": b64("rt0")})
    header_ok(got, rev + 1)
    assert got["kvs"] == [
        {"key": b64("rt/a"), "create_revision": str(rev), "mod_revision": str(rev),
         "version": "1", "value": b64("1")},
        {"key": b64("rt/b"), "create_revision": str(rev + 1),
         "mod_revision": str(rev + 1), "version": "1"},  # empty value: no "value"
    ]
    assert got["count"] == "2"
    assert "more" not in got
    # etcd3gw's sort parameters are numbers; limit and more; count_only; keys_only
    desc = ok(port, "/v3/kv/range", {"key": b64("rt/"), "range_end": b64("rt0"),
                                      "sort_order": 2, "sort_target": 0, "limit": 1})
    assert [unb64(kv["key"]) for kv in desc["kvs"]] == [b"rt/b"]
    assert desc["more"] is True
    counted = ok(port, "/v3/kv/range", {"key": b64("rt/"), "range_end": b64("rt0"),
                                         "count_only": True})
    assert "kvs" not in counted
    assert counted["count"] == "2"
    keys = ok(port, "/v3/kv/range", {"key": b64("rt/a"), "keys_only": True})
    assert keys["kvs"] == [{"key": b64("rt/a"), "create_revision": str(rev),
                            "mod_revision": str(rev), "version": "1"}]
    old = ok(port, "/v3/kv/range", {"key": b64("rt/b"), "revision": str(rev)})
    assert "kvs" not in old, "rt/b did not exist at the earlier revision"
    # prev_kv on put and delete
    put = ok(port, "/v3/kv/put", {"key": b64("rt/a"), "value": b64("2"), "prev_kv": True})
    assert put["prev_kv"]["value"] == b64("1")
    deleted = ok(port, "/v3/kv/deleterange", {"key": b64("rt/"), "range_end": b64("rt0"),
                                              "prev_kv": True})
    assert deleted["deleted"] == "2"
    assert sorted(unb64(kv["value"]) for kv in deleted["prev_kvs"] if "value" in kv) == [b"2"]
    nothing = ok(port, "/v3/kv/deleterange", {"key": b64("rt/a")})
    assert list(nothing) == ["header"], "etcd3gw's delete() tests 'deleted' in result"


def test_txn_compare_and_nested(member: MemberProcess) -> None:
    port = member.client_port
    key = b64("txn/k")
    create = {"compare": [{"key": key, "result": "EQUAL", "target": "CREATE",
                           "create_revision": 0}],
              "success": [{"request_put": {"key": key, "value": b64("v1")}}],
              "failure": [{"request_range": {"key": key}}]}
    first = ok(port, "/v3/kv/txn", create)
    assert first["succeeded"] is True
    rev = first["header"]["revision"]
    assert first["responses"] == [{"response_put": {"header": {"revision": rev}}}]
    second = ok(port, "/v3/kv/txn", create)
    assert "succeeded" not in second, "false is left out"
    assert second["responses"][0]["response_range"]["kvs"][0]["value"] == b64("v1")
    nested = ok(port, "/v3/kv/txn", {"success": [{"requestTxn": {"success": [
        {"requestDeleteRange": {"key": key}}]}}]})
    assert nested["responses"][0]["response_txn"]["header"] == {}
    inner = nested["responses"][0]["response_txn"]["responses"][0]
    assert inner["response_delete_range"]["deleted"] == "1"


def test_compaction(member: MemberProcess) -> None:
    port = member.client_port
    rev = int(ok(port, "/v3/kv/put", {"key": b64("cmp"), "value": b64("x")})["header"]
              ["revision"])
    ok(port, "/v3/kv/put", {"key": b64("cmp"), "value": b64("y")})
    assert list(ok(port, "/v3/kv/compaction", {"revision": str(rev)})) == ["header"]
    reply = post(port, "/v3/kv/range", {"key": b64("cmp"), "revision": rev - 1})
    assert (reply.status, reply.json()["code"]) == (400, 11)
    assert reply.json()["error"] == "etcdserver: mvcc: required revision has been compacted"


def test_leases_and_their_legacy_paths(member: MemberProcess) -> None:
    port = member.client_port
    lease_id = 7_000_001
    granted = ok(port, "/v3/lease/grant", {"TTL": 30, "ID": lease_id})
    assert (granted["ID"], granted["TTL"]) == (str(lease_id), "30")
    auto = ok(port, "/v3/lease/grant", {"TTL": "20", "ID": 0})
    assert int(auto["ID"]) > 0
    ok(port, "/v3/kv/put", {"key": b64("leased"), "value": b64("x"), "lease": lease_id})
    for path in ("/v3/lease/timetolive", "/v3/kv/lease/timetolive"):
        ttl = ok(port, path, {"ID": lease_id, "keys": True})
        assert ttl["ID"] == str(lease_id)
        assert 0 < int(ttl["TTL"]) <= 30
        assert (ttl["grantedTTL"], ttl["keys"]) == ("30", [b64("leased")])
    missing = ok(port, "/v3/lease/timetolive", {"ID": 999})
    assert (missing["ID"], missing["TTL"]) == ("999", "-1")
    for path in ("/v3/lease/leases", "/v3/kv/lease/leases"):
        ids = {item["ID"] for item in ok(port, path)["leases"]}
        assert {str(lease_id), auto["ID"]} <= ids
    reply = post(port, "/v3/lease/grant", {"TTL": 30, "ID": lease_id})
    assert (reply.status, reply.json()["code"]) == (412, 9)
    reply = post(port, "/v3/lease/grant", {"TTL": 90_000_000_000})
    assert (reply.status, reply.json()["error"]) == (400, "etcdserver: too large lease TTL")
    ok(port, "/v3/kv/lease/revoke", {"ID": lease_id})
    assert "kvs" not in ok(port, "/v3/kv/range", {"key": b64("leased")})
    ok(port, "/v3/lease/revoke", {"ID": auto["ID"]})
    reply = post(port, "/v3/lease/revoke", {"ID": lease_id})
    assert reply.status == 404
    assert reply.json() == {"error": "etcdserver: requested lease not found",
                            "message": "etcdserver: requested lease not found", "code": 5}


def test_keepalive_is_one_result_per_request_object(member: MemberProcess) -> None:
    port = member.client_port
    lease_id = int(ok(port, "/v3/lease/grant", {"TTL": 10})["ID"])
    with Stream(port, "/v3/lease/keepalive", {"ID": lease_id}) as s:
        assert s.head() == 200
        assert s.headers["transfer-encoding"] == "chunked"
        result = s.result()
        assert result is not None
        assert (result["result"]["ID"], result["result"]["TTL"]) == (str(lease_id), "10")
        assert s.chunk() is None, "exactly one object, then the response ends"
    # etcd3gw reads the answer with resp.json(): it must parse as one object
    reply = post(port, "/v3/lease/keepalive", {"ID": lease_id})
    assert reply.json()["result"]["TTL"] == "10"
    gone = post(port, "/v3/lease/keepalive", {"ID": 424242}).json()["result"]
    assert "TTL" not in gone, "a lease that is gone has TTL 0, so no TTL field"
    two = post(port, "/v3/lease/keepalive", f'{{"ID":{lease_id}}}{{"ID":424242}}')
    assert [json.loads(line)["result"].get("TTL") for line in two.body.splitlines()] == [
        "10", None]
    ok(port, "/v3/lease/revoke", {"ID": lease_id})


def test_status_and_member_list(member: MemberProcess) -> None:
    port = member.client_port
    st = ok(port, "/v3/maintenance/status")
    header_ok(st)
    assert st["version"] == "3.4.0"
    assert st["leader"] == st["header"]["member_id"]
    assert int(st["raftIndex"]) >= int(st["raftAppliedIndex"]) > 0
    assert "isLearner" not in st
    expected = [{"ID": st["header"]["member_id"], "name": "m1",
                 "peerURLs": [f"http://127.0.0.1:{member.peer_port}"],
                 "clientURLs": [f"http://127.0.0.1:{port}"]}]  # once published
    wait_for("the member list", lambda: ok(port, "/v3/cluster/member/list")["members"]
             == expected, timeout=BOUND)


def test_metrics_route(member: MemberProcess) -> None:
    reply = request(member.client_port, "GET", "/metrics")
    # 503 until the member has metrics (wired separately); then Prometheus text.
    assert reply.status in (200, 503), reply
    assert reply.headers["content-type"].startswith("text/plain")
    if reply.status == 200:
        assert b"# TYPE" in reply.body


def test_registry_validation_failure_is_a_failed_precondition(member: MemberProcess) -> None:
    port = member.client_port
    before = revision(port)
    reply = post(port, "/v3/kv/put", {"key": b64("/config/gw-app"), "value": b64("[1, 2]")})
    assert reply.status == 412
    body = reply.json()
    assert body["code"] == 9
    assert body["message"].startswith("validation failed: /config/gw-app")
    (detail,) = body["details"]
    assert detail["@type"] == "discoverd/validation_failed"
    assert detail["violations"][0]["key"] == "/config/gw-app"
    assert revision(port) == before


# ----------------------------------------------------------------------------- watches


def test_watch_streams_one_object_per_chunk(member: MemberProcess) -> None:
    port = member.client_port
    key = b64("w/one")
    with Stream(port, "/v3/watch", {"create_request": {"key": key, "prev_kv": True}}) as s:
        assert s.head() == 200
        created = s.result()
        assert created is not None
        assert created["result"]["created"] is True
        assert "watch_id" not in created["result"], "watch id 0 is left out"
        start = int(created["result"]["header"]["revision"])
        big = "x" * 10_000
        ok(port, "/v3/kv/put", {"key": key, "value": b64("1")})
        ok(port, "/v3/kv/put", {"key": key, "value": b64(big)})
        ok(port, "/v3/kv/deleterange", {"key": key})
        events = []
        while len(events) < 3:
            result = s.result()
            assert result is not None
            events.extend(result["result"]["events"])
        assert [e.get("type", "PUT") for e in events] == ["PUT", "PUT", "DELETE"]
        assert events[0]["kv"]["mod_revision"] == str(start + 1)
        assert unb64(events[1]["kv"]["value"]) == big.encode()
        assert unb64(events[1]["prev_kv"]["value"]) == b"1"
        assert events[2]["kv"] == {"key": key, "mod_revision": str(start + 3)}


def test_watch_history_filters_and_ids(member: MemberProcess) -> None:
    port = member.client_port
    rev = int(ok(port, "/v3/kv/put", {"key": b64("wh/a"), "value": b64("1")})["header"]
              ["revision"])
    ok(port, "/v3/kv/deleterange", {"key": b64("wh/a")})
    body = (json.dumps({"create_request": {"key": b64("wh/"), "range_end": b64("wh0"),
                                           "start_revision": rev}})
            + json.dumps({"create_request": {"key": b64("wh/"), "range_end": b64("wh0"),
                                             "start_revision": str(rev),
                                             "filters": ["NOPUT"]}}))
    with Stream(port, "/v3/watch", body) as s:
        assert s.head() == 200
        seen: dict[str, list[str]] = {"0": [], "1": []}
        created = 0
        while created < 2 or len(seen["0"]) < 2 or len(seen["1"]) < 1:
            result = s.result()
            assert result is not None
            r = result["result"]
            wid = r.get("watch_id", "0")
            created += bool(r.get("created"))
            seen[wid].extend(e.get("type", "PUT") for e in r.get("events", []))
        assert seen == {"0": ["PUT", "DELETE"], "1": ["DELETE"]}


def test_watch_cancel_request_ends_the_stream(member: MemberProcess) -> None:
    port = member.client_port
    body = (json.dumps({"create_request": {"key": b64("wc")}})
            + json.dumps({"cancel_request": {"watch_id": 0}}))
    with Stream(port, "/v3/watch", body) as s:
        assert s.head() == 200
        first, second = s.result(), s.result()
        assert first is not None
        assert second is not None
        assert first["result"]["created"] is True
        assert second["result"]["canceled"] is True
        assert s.chunk() is None, "no watch left: the response ends"


def test_watch_from_a_compacted_revision(member: MemberProcess) -> None:
    port = member.client_port
    ok(port, "/v3/kv/put", {"key": b64("wz"), "value": b64("1")})
    rev = int(ok(port, "/v3/kv/put", {"key": b64("wz"), "value": b64("2")})["header"]
              ["revision"])
    ok(port, "/v3/kv/compaction", {"revision": rev})
    with Stream(port, "/v3/watch", {"create_request": {"key": b64("wz"),
                                                        "start_revision": 1}}) as s:
        assert s.head() == 200
        created, canceled = s.result(), s.result()
        assert created is not None
        assert canceled is not None
        assert created["result"]["created"] is True
        assert canceled["result"]["canceled"] is True
        assert int(canceled["result"]["compact_revision"]) >= rev
        assert s.chunk() is None


def test_closing_the_connection_frees_the_watch(member: MemberProcess) -> None:
    port = member.client_port
    baseline = status(port)["watchers"]
    streams = [Stream(port, "/v3/watch", {"create_request": {"key": b64(f"wf/{i}")}})
               for i in range(3)]
    for s in streams:
        assert s.head() == 200
        assert s.result() is not None
    assert status(port)["watchers"] == baseline + 3
    for s in streams:
        s.sock.shutdown(socket.SHUT_RDWR)  # as etcd3gw's cancel() does
        s.close()
    wait_for("the watchers to be freed", lambda: status(port)["watchers"] == baseline,
             timeout=BOUND)


@pytest.mark.parametrize(("body", "complaint"), [
    ({"create_request": {"key": ""}}, "etcdserver: key is not provided"),
    ("garbage", "invalid JSON"),
    ({"create_request": {"key": "!!"}}, "not valid base64"),
    ({"create_request": {"key": b64("k"), "filters": ["NOPE"]}}, "NOPUT or NODELETE"),
    ({"nothing": {}}, "exactly one of"),
])
def test_bad_watch_requests_are_4xx(member: MemberProcess, body: Any, complaint: str) -> None:
    reply = post(member.client_port, "/v3/watch", body)
    assert reply.status == 400
    assert complaint in reply.json()["message"]


# ----------------------------------------------------------------------------- bad input


def _nested_txn(depth: int) -> dict[str, Any]:
    txn: dict[str, Any] = {"success": [{"request_put": {"key": "YQ==", "value": "YQ=="}}]}
    for _ in range(depth):
        txn = {"success": [{"request_txn": txn}]}
    return txn


NESTED_TXN = _nested_txn(40)
BAD_INPUTS: list[tuple[str, str, Any, int, str]] = [
    # (method, path, body, status, text in the message)
    ("POST", "/v3/kv/put", '{"key":', 400, "invalid JSON"),
    ("POST", "/v3/kv/put", '{"key": "Zm9v"} trailing', 400, "invalid JSON"),
    ("POST", "/v3/kv/put", b'\xff{"key": "Zm9v"}', 400, "not UTF-8"),
    ("POST", "/v3/kv/put", '[{"key": "Zm9v"}]', 400, "must be a JSON object"),
    ("POST", "/v3/kv/put", {"key": "Zm9v!", "value": "YmFy"}, 400, "not valid base64"),
    ("POST", "/v3/kv/put", {"key": "Zm9v", "value": 5}, 400, "must be a base64 string"),
    ("POST", "/v3/kv/put", {"key": "Zm9v", "lease": "x"}, 400, "must be an integer"),
    ("POST", "/v3/kv/put", {"key": "Zm9v", "prev_kv": "yes"}, 400, "true or false"),
    ("POST", "/v3/kv/put", {"value": "YmFy"}, 400, "etcdserver: key is not provided"),
    ("POST", "/v3/kv/put", {"key": "Zm9v", "lease": 123456789}, 404, "lease not found"),
    ("POST", "/v3/kv/put", {"key": "Zm9v", "value": "YQ==", "ignore_value": True}, 400,
     "value is provided"),
    ("POST", "/v3/kv/txn", {"success": [{"request_put": {"key": "YQ=="}}] * 129}, 400,
     "too many operations"),
    ("POST", "/v3/kv/txn", {"success": [{"request_put": {"key": "YQ=="}}] * 2}, 400,
     "duplicate key"),
    ("POST", "/v3/kv/txn", {"success": [{}]}, 400, "exactly one request_* field"),
    ("POST", "/v3/kv/txn", {"compare": [{"key": "YQ==", "target": "NOPE"}]}, 400, "target"),
    ("POST", "/v3/kv/txn", NESTED_TXN, 400, "nested deeper than 64"),
    ("POST", "/v3/kv/compaction", {"revision": 10**9}, 400, "future revision"),
    ("POST", "/v3/kv/deleterange", {"key": "Zm9v", "range_end": 7}, 400, "base64"),
    ("POST", "/v3/kv/put", {"key": b64("/config-history/x/1"), "value": "e30="}, 400,
     "config-history"),
    ("POST", "/v3/lease/grant", {"TTL": [30]}, 400, "must be an integer"),
    ("POST", "/v3/lease/revoke", {"ID": 1.5}, 400, "must be an integer"),
    ("POST", "/v3/nope", {}, 404, "no such path"),
    ("GET", "/v3/kv/put", None, 405, "not allowed"),
    ("PUT", "/v3/kv/range", {}, 405, "not allowed"),
    ("POST", "/version", {}, 405, "not allowed"),
]


def test_bad_input_is_a_clear_4xx_and_writes_nothing(member: MemberProcess) -> None:
    port = member.client_port
    before = revision(port)
    leases = len(ok(port, "/v3/lease/leases").get("leases", []))
    for method, path, body, expected, text in BAD_INPUTS:
        reply = request(port, method, path, body)
        assert reply.status == expected, (method, path, body, reply)
        message = reply.json()["message"]
        assert text in message, (path, body, message)
    assert revision(port) == before, "a rejected request changed the store"
    assert len(ok(port, "/v3/lease/leases").get("leases", [])) == leases


def test_oversized_requests(member: MemberProcess) -> None:
    port = member.client_port
    before = revision(port)
    limit = 1536 * 1024  # the member's default --max-request-bytes
    # Over the HTTP body limit: 413 before the body is read.
    reply = post(port, "/v3/kv/put", {"key": b64("big"), "value": b64(b"x" * (limit + 60_000))})
    assert reply.status == 413
    assert "over the limit" in reply.json()["message"]
    # Within the body limit, but over --max-request-bytes once decoded: etcd's answer.
    reply = post(port, "/v3/kv/put", {"key": b64("big"), "value": b64(b"x" * (limit + 100))})
    assert reply.status == 400
    assert reply.json()["message"] == "etcdserver: request is too large"
    assert revision(port) == before
    # Just under the limit is served.
    ok(port, "/v3/kv/put", {"key": b64("big"), "value": b64(b"x" * (limit - 100))})
    ok(port, "/v3/kv/deleterange", {"key": b64("big")})


def test_a_stalled_client_holds_up_no_one(member: MemberProcess) -> None:
    port = member.client_port
    stalled = socket.create_connection(("127.0.0.1", port), timeout=BOUND)
    try:
        stalled.sendall(b"POST /v3/kv/put HTTP/1.1\r\nHost: x\r\nContent-Le")
        started = time.monotonic()
        ok(port, "/v3/kv/range", {"key": b64("anything")})
        assert time.monotonic() - started < BOUND
    finally:
        stalled.close()
