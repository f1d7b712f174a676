"""``wire/etcd_json``: etcd's gateway JSON ⇄ native maps, with no member and no I/O. The
expected strings are etcd 3.4's answers (captured from a real etcd 3.4.23 with curl)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from discoverd.errors import ClientError
from discoverd.wire import etcd_json as ej
from discoverd.wire.kv_codec import decode_request

HEADER = {"cluster_id": 15118495548433857066 & ((1 << 63) - 1), "member_id": 1366,
          "revision": 2, "raft_term": 2}
HEADER_JSON = {"cluster_id": str(HEADER["cluster_id"]), "member_id": "1366", "revision": "2",
               "raft_term": "2"}


# ----------------------------------------------------------------------------- requests


def test_range_request_fields_become_the_native_map() -> None:
    native = ej.decode_range({
        "key": "Zm9v", "range_end": "Zm9w", "limit": "10", "revision": 3,
        "sort_order": 2, "sort_target": "MOD", "serializable": True, "keys_only": False,
        "min_mod_revision": "1", "max_create_revision": 9, "unknown_field": [1, 2],
    })
    assert native == {"key": b"foo", "range_end": b"fop", "limit": 10, "revision": 3,
                      "sort_order": "DESCEND", "sort_target": "MOD", "serializable": True,
                      "keys_only": False, "min_mod_revision": 1, "max_create_revision": 9}
    decode_request("range", native)  # and the native decoder takes it as it is


def test_lower_camel_case_names_are_accepted_as_etcd_does() -> None:
    assert ej.decode_range({"key": "Zm9v", "rangeEnd": "AA==", "keysOnly": True,
                            "countOnly": True}) == {
        "key": b"foo", "range_end": b"\0", "keys_only": True, "count_only": True}
    txn = ej.decode_txn({
        "compare": [{"key": "Zm9v", "result": "EQUAL", "target": "CREATE",
                     "createRevision": 0}],
        "success": [{"requestPut": {"key": "Zm9v", "value": "YmFy"}}],
        "failure": [{"requestRange": {"key": "Zm9v"}}],
    })
    assert txn == {
        "compare": [{"key": b"foo", "result": "EQUAL", "target": "CREATE",
                     "create_revision": 0}],
        "success": [{"request_put": {"key": b"foo", "value": b"bar"}}],
        "failure": [{"request_range": {"key": b"foo"}}],
    }
    decode_request("txn", txn)


def test_absent_key_reaches_the_handler_as_empty_and_null_means_unset() -> None:
    assert ej.decode_range({}) == {"key": b""}
    assert ej.decode_put({"key": None, "value": None, "lease": None}) == {"key": b""}
    assert ej.parse_json_body(b"") == {}
    assert ej.parse_json_body(b" null ") == {}


def test_nested_txn_and_every_request_op() -> None:
    txn = ej.decode_txn({"success": [
        {"request_delete_range": {"key": "YQ==", "prev_kv": True}},
        {"request_txn": {"compare": [{"key": "YQ==", "target": 3, "result": 3,
                                      "value": ""}],
                         "failure": [{"request_put": {"key": "Yg==", "lease": "7"}}]}},
    ]})
    assert txn == {"success": [
        {"request_delete_range": {"key": b"a", "prev_kv": True}},
        {"request_txn": {"compare": [{"key": b"a", "target": "VALUE", "result": "NOT_EQUAL",
                                      "value": b""}],
                         "failure": [{"request_put": {"key": b"b", "lease": 7}}]}},
    ]}
    decode_request("txn", txn)


def test_lease_and_compaction_requests() -> None:
    assert ej.decode_lease_grant({"TTL": 30, "ID": "1234"}) == {"ttl": 30, "lease": 1234}
    assert ej.decode_lease_grant({"ttl": 30}) == {"ttl": 0}, "etcd's names are TTL and ID"
    assert ej.decode_lease_id({"ID": -5}) == {"lease": -5}
    assert ej.decode_lease_id({}) == {"lease": 0}
    assert ej.decode_lease_timetolive({"ID": 9, "keys": True}) == {"lease": 9, "keys": True}
    assert ej.decode_compaction({"revision": "5", "physical": True}) == {
        "revision": 5, "physical": True}
    assert ej.decode_compaction({}) == {"revision": 0}


def test_watch_requests() -> None:
    create = ej.decode_watch_request({"create_request": {
        "key": "Zm9v", "range_end": "Zm9w", "start_revision": "4", "prev_kv": True,
        "filters": ["NOPUT", 1], "progress_notify": True, "watch_id": 5, "fragment": False}})
    assert create == ej.WatchCreate({"key": b"foo", "range_end": b"fop", "start_revision": 4,
                                     "prev_kv": True, "progress_notify": True,
                                     "filters": ["NOPUT", "NODELETE"]}, watch_id=5)
    assert ej.decode_watch_request({"cancelRequest": {"watch_id": "3"}}) == ej.WatchCancel(3)
    assert ej.decode_watch_request({"progress_request": {}}) == ej.WatchProgress()


@pytest.mark.parametrize(("decode", "obj", "complaint"), [
    (ej.decode_range, {"key": "!!!"}, "'key' is not valid base64"),
    (ej.decode_range, {"key": "Zm9v_-"}, "not valid base64"),
    (ej.decode_range, {"key": "Zm9"}, "not valid base64"),
    (ej.decode_range, {"key": 123}, "'key' must be a base64 string, got number"),
    (ej.decode_range, {"key": "Zm9v", "limit": True}, "'limit' must be an integer"),
    (ej.decode_range, {"key": "Zm9v", "limit": 1.5}, "'limit' must be an integer"),
    (ej.decode_range, {"key": "Zm9v", "limit": "1e2"}, "'limit' must be an integer"),
    (ej.decode_range, {"key": "Zm9v", "revision": "99999999999999999999"}, "int64 range"),
    (ej.decode_range, {"key": "Zm9v", "serializable": "true"}, "must be true or false"),
    (ej.decode_range, {"key": "Zm9v", "sort_order": "descend"}, "NONE|ASCEND|DESCEND"),
    (ej.decode_range, {"key": "Zm9v", "sort_order": 9}, "NONE|ASCEND|DESCEND"),
    (ej.decode_range, {"key": "Zm9v", "sort_target": True}, "KEY|VERSION"),
    (ej.decode_range, [], "must be a JSON object, got array"),
    (ej.decode_txn, {"compare": {}}, "'compare' must be an array"),
    (ej.decode_txn, {"success": [{"request_put": {"key": "YQ=="},
                                  "request_range": {"key": "YQ=="}}]}, "only one of"),
    (ej.decode_txn, {"success": ["x"]}, "a txn operation must be a JSON object"),
    (ej.decode_txn, {"compare": [{"key": "YQ==", "target": "SIZE"}]}, "'target'"),
    (ej.decode_lease_grant, {"TTL": "ten"}, "'TTL' must be an integer"),
    (ej.decode_watch_request, {}, "exactly one of create_request"),
    (ej.decode_watch_request, {"create_request": {"key": "YQ=="},
                               "progress_request": {}}, "exactly one of"),
    (ej.decode_watch_request, {"create_request": {"key": "YQ==", "filters": ["NOPE"]}},
     "NOPUT or NODELETE"),
    (ej.decode_watch_request, {"create_request": {"key": "YQ==", "watch_id": -1}},
     "must not be negative"),
])
def test_wrong_json_types_are_refused_naming_the_field(
    decode: Any, obj: Any, complaint: str,
) -> None:
    with pytest.raises(ClientError, match=re.escape(complaint)):
        decode(obj)


@pytest.mark.parametrize(("body", "complaint"), [
    (b'{"key":', "invalid JSON"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b'{"a": NaN}', "NaN is not valid JSON"),
    (b'{"a": 1} {"b": 2}', "more than one value"),
    (b'"text"', "must be a JSON object, got string"),
    (b"[" * 100 + b"]" * 100, "nested"),
    (b"[" * 100_000, "nested too deeply"),
    (b'{"a": 1' + b"0" * 5000 + b"}", "invalid JSON"),
])
def test_bodies_that_are_not_one_json_object(body: bytes, complaint: str) -> None:
    with pytest.raises(ClientError, match=re.escape(complaint)):
        ej.parse_json_body(body)


def test_a_stream_body_is_a_sequence_of_values() -> None:
    assert ej.parse_json_stream(b'{"a":1}{"b":2}\n {"c":3}\n') == [{"a": 1}, {"b": 2},
                                                                  {"c": 3}]
    assert ej.parse_json_stream(b"  \n") == []


# ----------------------------------------------------------------------------- answers


def test_range_answer_is_etcds_bytes() -> None:
    resp = {"header": HEADER, "kvs": [
        {"key": b"foo", "value": b"bar", "create_revision": 2, "mod_revision": 2,
         "version": 1, "lease": 0},
        {"key": b"foo2", "value": b"", "create_revision": 3, "mod_revision": 4,
         "version": 2, "lease": 7}], "more": False, "count": 2}
    assert ej.dumps(ej.encode_range(resp)) == (
        b'{"header":' + ej.dumps(HEADER_JSON) + b',"kvs":['
        b'{"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1","value":"YmFy"},'
        b'{"key":"Zm9vMg==","create_revision":"3","mod_revision":"4","version":"2",'
        b'"lease":"7"}],"count":"2"}')


def test_zero_values_are_left_out() -> None:
    empty_header = {"cluster_id": 0, "member_id": 0, "revision": 0, "raft_term": 0}
    assert ej.encode_range({"header": empty_header, "kvs": [], "more": False,
                            "count": 0}) == {"header": {}}
    assert ej.encode_delete_range({"header": HEADER, "deleted": 0, "prev_kvs": []}) == {
        "header": HEADER_JSON}, "etcd3gw's delete() tests 'deleted' in result"
    assert ej.encode_txn({"header": HEADER, "succeeded": False, "responses": []}) == {
        "header": HEADER_JSON}
    assert ej.encode_lease_keepalive({"header": HEADER, "id": 9, "ttl": 0}) == {
        "header": HEADER_JSON, "ID": "9"}, "TTL absent means gone (etcd3gw: -1)"


def test_txn_sub_responses_carry_only_their_revision() -> None:
    resp = {"header": HEADER, "succeeded": True, "responses": [
        {"response_put": {"header": {"revision": 5}}},
        {"response_txn": {"header": {"revision": 5}, "succeeded": True, "responses": [
            {"response_delete_range": {"header": {"revision": 5}, "deleted": 1,
                                       "prev_kvs": []}}]}},
    ]}
    assert ej.encode_txn(resp) == {"header": HEADER_JSON, "succeeded": True, "responses": [
        {"response_put": {"header": {"revision": "5"}}},
        {"response_txn": {"header": {}, "succeeded": True, "responses": [
            {"response_delete_range": {"header": {"revision": "5"}, "deleted": "1"}}]}},
    ]}


def test_lease_answers() -> None:
    assert ej.encode_lease_grant({"header": HEADER, "id": 1234, "ttl": 30}) == {
        "header": HEADER_JSON, "ID": "1234", "TTL": "30"}
    assert ej.encode_lease_timetolive({"header": HEADER, "id": 999, "ttl": -1,
                                       "granted_ttl": 0, "keys": []}) == {
        "header": HEADER_JSON, "ID": "999", "TTL": "-1"}
    assert ej.encode_lease_timetolive({"header": HEADER, "id": 5, "ttl": 29,
                                       "granted_ttl": 30, "keys": [b"lk"]}) == {
        "header": HEADER_JSON, "ID": "5", "TTL": "29", "grantedTTL": "30", "keys": ["bGs="]}
    assert ej.encode_lease_leases({"header": HEADER, "leases": [{"id": 1}, {"id": 2}]}) == {
        "header": HEADER_JSON, "leases": [{"ID": "1"}, {"ID": "2"}]}


def test_status_and_member_list() -> None:
    status = ej.encode_status({"header": HEADER, "version": "0.1.0", "leader": 1366,
                               "raft_index": 26, "raft_term": 2, "raft_applied_index": 26,
                               "db_size": 20480, "is_learner": False, "role": "leader"})
    assert json.dumps(status, separators=(",", ":")) == (
        '{"header":' + json.dumps(HEADER_JSON, separators=(",", ":")) + ',"version":"3.4.0",'
        '"dbSize":"20480","leader":"1366","raftIndex":"26","raftTerm":"2",'
        '"raftAppliedIndex":"26","dbSizeInUse":"20480"}')
    members = ej.encode_member_list({"header": HEADER, "members": [
        {"id": 1366, "name": "default", "peer_urls": ["http://127.0.0.1:23801"],
         "client_urls": ["http://127.0.0.1:23791"], "is_learner": False},
        {"id": 7, "name": "", "peer_urls": [], "client_urls": [], "is_learner": True}]})
    assert members == {"header": {k: v for k, v in HEADER_JSON.items() if k != "revision"},
                       "members": [{"ID": "1366", "name": "default",
                                    "peerURLs": ["http://127.0.0.1:23801"],
                                    "clientURLs": ["http://127.0.0.1:23791"]},
                                   {"ID": "7", "isLearner": True}]}


def test_watch_frames() -> None:
    created = {"header": HEADER, "watch_id": 17, "created": True, "progress_interval_ms": 10}
    assert ej.encode_watch_response(created, 0) == {"result": {"header": HEADER_JSON,
                                                               "created": True}}
    events = {"header": HEADER, "watch_id": 17, "events": [
        {"type": "PUT", "kv": {"key": b"a", "value": b"1", "create_revision": 2,
                               "mod_revision": 2, "version": 1, "lease": 0}},
        {"type": "DELETE", "kv": {"key": b"b", "value": b"", "create_revision": 0,
                                  "mod_revision": 2, "version": 0, "lease": 0},
         "prev_kv": {"key": b"b", "value": b"x", "create_revision": 1, "mod_revision": 1,
                     "version": 1, "lease": 0}}]}
    assert ej.dumps(ej.encode_watch_response(events, 1)) == (
        b'{"result":{"header":' + ej.dumps(HEADER_JSON) + b',"watch_id":"1","events":['
        b'{"kv":{"key":"YQ==","create_revision":"2","mod_revision":"2","version":"1",'
        b'"value":"MQ=="}},{"type":"DELETE","kv":{"key":"Yg==","mod_revision":"2"},'
        b'"prev_kv":{"key":"Yg==","create_revision":"1","mod_revision":"1","version":"1",'
        b'"value":"eA=="}}]}}')
    canceled = {"header": HEADER, "watch_id": 17, "canceled": True, "compact_revision": 2,
                "cancel_reason": "mvcc: required revision has been compacted"}
    assert ej.encode_watch_response(canceled, 0)["result"] == {
        "header": HEADER_JSON, "canceled": True, "compact_revision": "2",
        "cancel_reason": "mvcc: required revision has been compacted"}


def test_dumps_escapes_as_go_does() -> None:
    assert ej.dumps({"m": "<a&b>", "u": "é\u2028", "s": "\ud800"}) == (
        '{"m":"\\u003ca\\u0026b\\u003e","u":"é\\u2028","s":"\ufffd"}'.encode())


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("code", "message", "status", "grpc", "etcd_message"), [
    ("future_revision", "mvcc: required revision is a future revision", 400, 11,
     "etcdserver: mvcc: required revision is a future revision"),
    ("compacted", "mvcc: required revision has been compacted", 400, 11,
     "etcdserver: mvcc: required revision has been compacted"),
    ("lease_not_found", "etcdserver: requested lease not found", 404, 5, None),
    ("lease_exists", "etcdserver: lease already exists", 412, 9, None),
    ("lease_ttl_too_large", "etcdserver: too large lease TTL", 400, 11, None),
    ("empty_key", "etcdserver: key is not provided", 400, 3, None),
    ("too_many_ops", "etcdserver: too many operations in txn request", 400, 3, None),
    ("request_too_large", "frame of 9 bytes", 400, 3, "etcdserver: request is too large"),
    ("no_space", "etcdserver: mvcc: database space exceeded", 403, 8, None),
    ("disk_full", "the disk of this member's data directory is full", 503, 14, None),
    ("member_not_found", "etcdserver: member not found", 404, 5, None),
    ("not_leader", "etcdserver: no leader", 503, 14, None),
    ("timeout", "no answer within 5s", 503, 14, None),
    ("something_new", "?", 500, 2, None),
])
def test_error_mapping(code: str, message: str, status: int, grpc: int,
                       etcd_message: str | None) -> None:
    got_status, body = ej.error_response({"code": code, "message": message})
    expected = etcd_message or message
    assert (got_status, body) == (status, {"error": expected, "message": expected,
                                           "code": grpc})
    assert list(body) == ["error", "message", "code"], "etcd 3.4's key order"


def test_validation_failures_keep_their_violations() -> None:
    violation = {"key": "/config/app", "path": "/port", "message": "'x' is not of type "
                 "'integer'", "schema_path": "/properties/port/type"}
    status, body = ej.error_response({"code": "validation_failed", "message": "validation "
                                      "failed: ...", "violations": [violation]})
    assert status == 412
    assert body["code"] == 9
    assert body["details"] == [{"@type": "discoverd/validation_failed",
                                "violations": [violation]}]


def test_stream_errors_use_grpc_gateway_v1s_shape() -> None:
    assert ej.stream_error({"code": "unavailable", "message": "etcdserver: no leader"}) == {
        "error": {"grpc_code": 14, "http_code": 503, "message": "etcdserver: no leader",
                  "http_status": "Service Unavailable"}}
