"""The SDK's pure parts: request builders (exact protocol dicts), response parsing, the
prefix rule, endpoint parsing and the error-code mapping. No cluster needed."""

from __future__ import annotations

import pytest

from discoverd import errors
from discoverd.sdk import (
    ClientError,
    Compare,
    ConnectionLost,
    DeleteResponse,
    Op,
    PutResponse,
    RangeResponse,
    Status,
    TxnResponse,
    prefix_range_end,
)
from discoverd.sdk._connection import Endpoint, parse_endpoint
from discoverd.sdk._errors import error_from_wire, is_retryable
from discoverd.sdk._types import delete_request, put_request, range_request, txn_request


@pytest.mark.parametrize(("prefix", "end"), [
    (b"a", b"b"),
    (b"abc", b"abd"),
    (b"a\xff", b"b"),
    (b"ab\xfe\xff", b"ab\xff"),
    (b"\xff\xff", b"\0"),
    (b"", b"\0"),
])
def test_prefix_range_end_is_etcds(prefix: bytes, end: bytes) -> None:
    assert prefix_range_end(prefix) == end


def test_range_request_fields() -> None:
    assert range_request("k") == {"key": b"k"}
    assert range_request(b"k", prefix=True) == {"key": b"k", "range_end": b"l"}
    assert range_request("", prefix=True) == {"key": b"\0", "range_end": b"\0"}
    assert range_request("k", from_key=True) == {"key": b"k", "range_end": b"\0"}
    assert range_request("", from_key=True) == {"key": b"\0", "range_end": b"\0"}
    assert range_request("a", range_end="c", limit=3, revision=7, sort_order="descend",
                         sort_target="MOD", serializable=True, keys_only=True,
                         count_only=True, min_mod_revision=1, max_mod_revision=2,
                         min_create_revision=3, max_create_revision=4) == {
        "key": b"a", "range_end": b"c", "limit": 3, "revision": 7, "sort_order": "DESCEND",
        "sort_target": "MOD", "serializable": True, "keys_only": True, "count_only": True,
        "min_mod_revision": 1, "max_mod_revision": 2, "min_create_revision": 3,
        "max_create_revision": 4}
    with pytest.raises(ClientError, match="mutually exclusive"):
        range_request("k", prefix=True, from_key=True)
    with pytest.raises(ClientError, match="sort_order"):
        range_request("k", sort_order="UP")
    with pytest.raises(ClientError, match="key must be bytes or str"):
        range_request(5)  # type: ignore[arg-type]


def test_put_and_delete_request_fields() -> None:
    assert put_request("k", "v") == {"key": b"k", "value": b"v"}
    assert put_request("k", bytearray(b"v"), lease=9, prev_kv=True, ignore_value=True,
                       ignore_lease=True) == {
        "key": b"k", "value": b"v", "lease": 9, "prev_kv": True, "ignore_value": True,
        "ignore_lease": True}
    assert delete_request("p", prefix=True, prev_kv=True) == {
        "key": b"p", "range_end": b"q", "prev_kv": True}


def test_compare_builders() -> None:
    assert (Compare.value("k") == "v").to_wire() == {
        "key": b"k", "target": "VALUE", "result": "EQUAL", "value": b"v"}
    assert (Compare.version("k") > 0).to_wire() == {
        "key": b"k", "target": "VERSION", "result": "GREATER", "version": 0}
    assert (Compare.create("k") < 5).to_wire()["create_revision"] == 5
    assert (Compare.mod_revision("k") != 5).to_wire() == {
        "key": b"k", "target": "MOD", "result": "NOT_EQUAL", "mod_revision": 5}
    assert (Compare.lease("p", prefix=True) == 0).to_wire() == {
        "key": b"p", "range_end": b"q", "target": "LEASE", "result": "EQUAL", "lease": 0}
    with pytest.raises(ClientError):
        _ = Compare.value("k") == 3
    with pytest.raises(ClientError):
        _ = Compare.version("k") == b"x"
    with pytest.raises(TypeError):
        _ = Compare.version("k") >= 1  # type: ignore[operator]


def test_op_builders_and_read_only() -> None:
    assert Op.get("k", prefix=True).to_wire() == {
        "request_range": {"key": b"k", "range_end": b"l"}}
    assert Op.put("k", "v", prev_kv=True).to_wire() == {
        "request_put": {"key": b"k", "value": b"v", "prev_kv": True}}
    assert Op.delete("k").to_wire() == {"request_delete_range": {"key": b"k"}}
    inner = Op.txn([Compare.version("k") == 0], [Op.get("k")], [Op.get("j")])
    assert inner.read_only
    assert inner.to_wire() == {"request_txn": {
        "compare": [{"key": b"k", "target": "VERSION", "result": "EQUAL", "version": 0}],
        "success": [{"request_range": {"key": b"k"}}],
        "failure": [{"request_range": {"key": b"j"}}]}}
    assert not Op.txn([], [inner, Op.put("k", "v")]).read_only
    request, read_only = txn_request([], [inner], [])
    assert read_only
    assert request["success"] == [inner.to_wire()]
    with pytest.raises(ClientError, match="Compare"):
        txn_request([True], [], [])  # type: ignore[list-item]
    with pytest.raises(ClientError, match="Op"):
        txn_request([], [{"request_put": {}}], [])  # type: ignore[list-item]


def test_response_parsing() -> None:
    header = {"cluster_id": 1, "member_id": 2, "revision": 3, "raft_term": 4}
    kv = {"key": b"k", "value": b"v", "create_revision": 2, "mod_revision": 3, "version": 2,
          "lease": 0}
    r = RangeResponse.from_wire({"header": header, "kvs": [kv], "more": True, "count": 5})
    assert (r.header.revision, r.more, r.count, r.kvs[0].value) == (3, True, 5, b"v")
    assert PutResponse.from_wire({"header": header, "prev_kv": kv}).prev_kv == r.kvs[0]
    assert PutResponse.from_wire({"header": header}).prev_kv is None
    d = DeleteResponse.from_wire({"header": header, "deleted": 1, "prev_kvs": [kv]})
    assert (d.deleted, d.prev_kvs) == (1, r.kvs)
    t = TxnResponse.from_wire({"header": header, "succeeded": True, "responses": [
        {"response_range": {"kvs": [kv], "count": 1}}, {"response_put": {}},
        {"response_delete_range": {"deleted": 0}},
        {"response_txn": {"succeeded": False, "responses": []}}]})
    assert [type(x) for x in t.responses] == [RangeResponse, PutResponse, DeleteResponse,
                                              TxnResponse]
    assert all(x.header == t.header for x in t.responses)  # nested share the txn's header
    st = Status.from_wire({"header": header, "name": "m1", "leader": 2, "role": "leader",
                           "voters": [2, 5]}, "h:1")
    assert st.is_leader
    assert (st.endpoint, st.voters, st.db_size) == ("h:1", (2, 5), None)


def test_endpoint_parsing() -> None:
    assert parse_endpoint("127.0.0.1:2379") == Endpoint("127.0.0.1", 2379)
    assert parse_endpoint(" http://h:1/ ") == Endpoint("h", 1)
    assert parse_endpoint("h") == Endpoint("h", 2379)
    assert parse_endpoint("[::1]:5") == Endpoint("::1", 5)
    assert str(parse_endpoint("[::1]")) == "[::1]:2379"
    assert parse_endpoint("https://h:1").tls
    assert not parse_endpoint("http://h:1").tls
    for bad in ("ftp://h:1", "h:0", "h:x", "", "[::1", "http://"):
        with pytest.raises(ClientError):
            parse_endpoint(bad)


@pytest.mark.parametrize(("code", "kind"), [
    ("invalid_argument", errors.ClientError),
    ("bad_request", errors.BadRequest),
    ("bad_frame", errors.BadRequest),
    ("request_too_large", errors.RequestTooLarge),
    ("too_many_ops", errors.TooManyOps),
    ("duplicate_key", errors.DuplicateKey),
    ("key_not_found", errors.KeyNotFound),
    ("compacted", errors.Compacted),
    ("future_revision", errors.FutureRevision),
    ("not_leader", errors.NotLeader),
    ("proposal_dropped", errors.ProposalDropped),
    ("timeout", errors.RequestTimeout),
    ("unavailable", errors.Unavailable),
    ("empty_key", errors.EmptyKey),
    ("lease_not_found", errors.LeaseNotFound),
])
def test_error_codes_map_to_types(code: str, kind: type[errors.DiscoverdError]) -> None:
    exc = error_from_wire({"code": code, "message": "m"})
    assert type(exc) is kind
    assert str(exc) == "m"


def test_error_details() -> None:
    nl = error_from_wire({"code": "not_leader", "message": "m", "leader": 7})
    assert isinstance(nl, errors.NotLeader)
    assert nl.leader == 7
    odd = error_from_wire({"code": "from_the_future", "message": "?"})
    assert type(odd) is errors.DiscoverdError
    assert odd.code == "from_the_future"
    assert isinstance(ConnectionLost("x"), errors.Unavailable)
    # What the client may retry: refusals always, unknown-outcome errors only for reads.
    refused: list[errors.DiscoverdError] = [errors.NotLeader(), errors.Unavailable()]
    unknown: list[errors.DiscoverdError] = [errors.RequestTimeout(), errors.ProposalDropped()]
    final: list[errors.DiscoverdError] = [errors.ClientError(), errors.Compacted()]
    assert all(is_retryable(e, retry_safe=False) for e in refused)
    assert all(is_retryable(e, retry_safe=True) for e in unknown)
    assert not any(is_retryable(e, retry_safe=False) for e in unknown)
    assert not any(is_retryable(e, retry_safe=True) for e in final)
