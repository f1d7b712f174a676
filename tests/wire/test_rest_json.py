"""The registry REST codec (``wire/rest_json``) on its own: what a request body or query
becomes, what a native answer becomes, and what is refused before any op runs."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from discoverd.errors import ClientError, ValidationError
from discoverd.wire import rest_json as rj
from discoverd.wire.registry_codec import (
    Health,
    ServiceInstance,
    history_key,
    history_range,
    service_key,
)

NOW = 1_700_000_000.5


def body(obj: Any) -> bytes:
    return json.dumps(obj).encode()


# ------------------------------------------------------------------------------ ids


def test_lease_ids_are_16_hex_digits_both_ways() -> None:
    assert rj.format_lease_id(0xA1) == "00000000000000a1"
    assert rj.parse_lease_id("00000000000000a1") == 0xA1
    assert rj.parse_lease_id("A1") == 0xA1
    assert rj.parse_lease_id("7fffffffffffffff") == (1 << 63) - 1


@pytest.mark.parametrize("text", ["", "0", "8000000000000000", "00000000000000001", "g1",
                                  "-1", "0x1", " 1"])
def test_bad_lease_ids_are_refused(text: str) -> None:
    with pytest.raises(ClientError):
        rj.parse_lease_id(text)


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(("code", "status"), [
    ("validation_failed", 422), ("invalid_argument", 400), ("empty_key", 400),
    ("lease_not_found", 404), ("not_found", 404), ("generation_mismatch", 412),
    ("lease_exists", 409), ("request_too_large", 413), ("not_leader", 503),
    ("unavailable", 503), ("timeout", 503), ("compacted", 400), ("too_many_watches", 429),
    ("method_not_allowed", 405), ("something_new", 500),
])
def test_error_statuses(code: str, status: int) -> None:
    assert rj.error_status(code) == status


def test_error_body_keeps_violations_and_names_the_leader_in_hex() -> None:
    violations = [{"key": "/config/a", "path": "/x", "message": "m", "schema_path": "/t"}]
    status, out = rj.error_response({"code": "validation_failed", "message": "no",
                                     "violations": violations})
    assert (status, out) == (422, {"error": "validation_failed", "message": "no",
                                   "violations": violations})
    status, out = rj.error_response({"code": "not_leader", "message": "m", "leader": 255})
    assert (status, out) == (503, {"error": "not_leader", "message": "m", "leader": "ff"})


# ------------------------------------------------------------------------------ registration


def test_registration_builds_the_record_the_members_accept() -> None:
    reg = rj.parse_registration("api", body({"id": "a1", "ttl": 10, "port": 8080,
                                             "tags": ["v2"], "meta": {"az": "1"}}), now=NOW)
    assert reg.ttl == 10
    assert reg.lease == 0
    assert reg.instance == ServiceInstance(service="api", id="a1", port=8080, tags=("v2",),
                                           meta={"az": "1"}, registered_at=NOW)
    assert reg.instance.key == service_key("api", "a1")


def test_registration_may_name_its_lease_and_time() -> None:
    reg = rj.parse_registration("api", body({"id": "a1", "ttl": 5, "lease": "a1",
                                             "registered_at": 7, "service": "api"}), now=NOW)
    assert (reg.lease, reg.instance.registered_at) == (0xA1, 7.0)


@pytest.mark.parametrize(("raw", "why"), [
    (b"", "missing"), (b"{", "not valid JSON"), (b"[]", "must be a JSON object"),
    (b'{"id":"a","ttl":1,"id":"b"}', "duplicate"), (b"\xff", "not valid JSON"),
    (body({"id": "a"}), "'ttl' is required"), (body({"id": "a", "ttl": "10"}), "'ttl'"),
    (body({"id": "a", "ttl": 0}), "'ttl'"), (body({"id": "a", "ttl": True}), "'ttl'"),
    (body({"id": "a", "ttl": 1.5}), "'ttl'"), (body({"ttl": 1}), "'id' is required"),
    (body({"id": 3, "ttl": 1}), "'id' is required"), (body({"id": "a/b", "ttl": 1}), "'/'"),
    (body({"id": "", "ttl": 1}), "empty"), (body({"id": "a", "ttl": 1, "tag": []}), "tag"),
    (body({"id": "a", "ttl": 1, "lease": 5}), "'lease'"),
    (body({"id": "a", "ttl": 1, "lease": "zz"}), "lease id"),
])
def test_bad_registrations_are_client_errors(raw: bytes, why: str) -> None:
    with pytest.raises(ClientError, match=why) as info:
        rj.parse_registration("api", raw, now=NOW)
    assert not isinstance(info.value, ValidationError)


@pytest.mark.parametrize("name", ["", "a/b"])
def test_bad_service_names_are_client_errors(name: str) -> None:
    with pytest.raises(ClientError):
        rj.parse_registration(name, body({"id": "a", "ttl": 1}), now=NOW)


def test_bad_instance_fields_are_the_members_violations() -> None:
    raw = body({"id": "a1", "ttl": 1, "port": 70000, "health": "ok", "service": "web",
                "meta": {"k": 1}})
    with pytest.raises(ValidationError) as info:
        rj.parse_registration("api", raw, now=NOW)
    assert [(v["path"], v["key"]) for v in info.value.violations] == [
        ("/health", "/services/api/a1"), ("/meta/k", "/services/api/a1"),
        ("/port", "/services/api/a1"), ("/service", "/services/api/a1")]


def test_registered_answer_says_what_to_keep_alive() -> None:
    inst = ServiceInstance("api", "a1", registered_at=1.0)
    assert rj.encode_registered(inst, 0xA1, 10, 7) == {
        "instance": inst.to_obj(), "lease": "00000000000000a1", "ttl": 10, "revision": 7,
        "keepalive": "/v1/leases/00000000000000a1/keepalive"}


# ------------------------------------------------------------------------------ discovery


def kv(key: bytes, value: bytes, mod: int = 1, create: int = 1) -> dict[str, Any]:
    return {"key": key, "value": value, "mod_revision": mod, "create_revision": create,
            "version": 1, "lease": 0}


def instances() -> list[ServiceInstance]:
    return [
        ServiceInstance("api", "a", tags=("x", "y"), meta={"az": "1"}),
        ServiceInstance("api", "b", health=Health.WARNING, tags=("x",)),
        ServiceInstance("api", "c", health=Health.DRAINING, meta={"az": "2"}),
        ServiceInstance("web", "w", health=Health.CRITICAL),
    ]


def test_malformed_records_are_skipped_not_fatal() -> None:
    good = instances()
    kvs = [kv(i.key, i.to_json()) for i in good]
    kvs.insert(1, kv(b"/services/api/bad", b"{not json"))
    kvs.insert(2, kv(b"/services/api/x", json.dumps({"service": "api", "id": "y"}).encode()))
    assert rj.decode_instances(kvs) == good


@pytest.mark.parametrize(("query", "default", "ids"), [
    ({}, Health, ["a", "b", "c", "w"]),
    ({}, {Health.PASSING}, ["a"]),
    ({"health": ["any"]}, {Health.PASSING}, ["a", "b", "c", "w"]),
    ({"health": ["passing,warning"]}, {Health.PASSING}, ["a", "b"]),
    ({"health": ["draining", "critical"]}, {Health.PASSING}, ["c", "w"]),
    ({"tag": ["x"]}, Health, ["a", "b"]),
    ({"tag": ["x", "y"]}, Health, ["a"]),
    ({"meta": ["az=2"]}, Health, ["c"]),
    ({"meta": ["az=1"], "tag": ["x"], "health": ["any"]}, {Health.PASSING}, ["a"]),
])
def test_filters_are_the_sdks(query: dict[str, list[str]], default: Any, ids: list[str]
                              ) -> None:
    filters = rj.parse_filters(query, default)
    assert [i.id for i in filters.apply(instances())] == ids


@pytest.mark.parametrize("query", [{"health": ["fine"]}, {"meta": ["az"]}, {"meta": ["=1"]}])
def test_bad_filters_are_refused(query: dict[str, list[str]]) -> None:
    with pytest.raises(ClientError):
        rj.parse_filters(query, Health)


def test_unknown_and_repeated_query_parameters_are_refused() -> None:
    with pytest.raises(ClientError, match="heath"):
        rj.check_query({"heath": ["any"]}, rj.FILTER_PARAMS)
    with pytest.raises(ClientError, match="2 times"):
        rj.query_int({"n": ["1", "2"]}, "n", 0)
    for bad in ("\u00b2", "\u0663", "1" * 5000, "-1", "1.0", "9223372036854775808"):
        with pytest.raises(ClientError):
            rj.query_int({"n": [bad]}, "n", 0)
    assert rj.query_int({"n": ["9223372036854775807"]}, "n", 0) == (1 << 63) - 1
    assert rj.query_bool({"p": [""]}, "p")
    assert not rj.query_bool({}, "p")
    with pytest.raises(ClientError):
        rj.query_bool({"p": ["yes"]}, "p")


def test_service_listings_group_by_service_in_key_order() -> None:
    out = rj.encode_services(reversed(instances()), 9)
    assert out["revision"] == 9
    assert {s: [i["id"] for i in lst] for s, lst in out["services"].items()} == {
        "api": ["a", "b", "c"], "web": ["w"]}
    assert list(out["services"]) == ["api", "web"]
    assert rj.encode_instances("api", [], 3) == {"service": "api", "revision": 3,
                                                 "instances": []}


# ------------------------------------------------------------------------------ config


def txn(*ranges: list[dict[str, Any]], succeeded: bool = True, revision: int = 9
        ) -> dict[str, Any]:
    return {"header": {"revision": revision}, "succeeded": succeeded,
            "responses": [{"response_range": {"kvs": kvs, "more": False, "count": len(kvs)}}
                          for kvs in ranges]}


def hist(name: str, generation: int, mod: int) -> dict[str, Any]:
    return kv(history_key(name, generation), b"", mod)


def test_config_read_pairs_the_document_with_its_own_generation() -> None:
    req = rj.config_read("app")
    start, end = history_range("app")
    assert req == {"success": [{"request_range": {"key": b"/config/app"}},
                               {"request_range": {"key": start, "range_end": end,
                                                  "keys_only": True}}]}
    resp = txn([kv(b"/config/app", b'{"a":1}', mod=7)],
               [hist("app", 1, 3), hist("app", 2, 7),
                kv(b"/config-history/app/0sub/00000000000000000009", b"", 7)])
    state = rj.decode_config_read("app", resp)
    assert state == rj.ConfigState("app", b'{"a":1}', 2, 7)
    assert rj.encode_config(state) == {"name": "app", "document": {"a": 1},
                                       "generation": 2, "revision": 7}


def test_a_stored_value_that_is_not_an_object_is_an_error_not_a_crash() -> None:
    with pytest.raises(ValidationError):
        rj.encode_config(rj.ConfigState("app", b"[1]", 1, 1))
    with pytest.raises(ValidationError):
        rj.encode_schema("app", b"not json", 1)


def test_config_read_of_a_deleted_or_missing_document() -> None:
    assert rj.decode_config_read("app", txn([], [hist("app", 1, 3), hist("app", 2, 5)])) == \
        rj.ConfigState("app", None, 2, 5)
    assert rj.decode_config_read("app", txn([], [])) == rj.ConfigState("app", None, 0, 0)


@pytest.mark.parametrize(("header", "expected"), [
    (None, None), ("3", 3), ('"3"', 3), (' "0" ', 0), ("12", 12)])
def test_if_match_takes_a_generation(header: str | None, expected: int | None) -> None:
    assert rj.parse_if_match(header) == expected


@pytest.mark.parametrize("header", ["*", '"1", "2"', 'W/"1"', "", "-1", "x", '"', "\u00b2",
                                    "1" * 5000, "9223372036854775808", "+1", " 1 2"])
def test_if_match_that_is_not_one_generation_is_refused(header: str) -> None:
    with pytest.raises(ClientError, match="If-Match"):
        rj.parse_if_match(header)


def test_config_writes_unguarded_and_guarded() -> None:
    assert rj.config_write("app", b"{}", None) == ("put", {"key": b"/config/app",
                                                           "value": b"{}"})
    op, req = rj.config_write("app", b"{}", 4)
    assert op == "txn"
    assert req["compare"] == [
        {"key": history_key("app", 4), "target": "VERSION", "result": "GREATER", "version": 0},
        {"key": history_key("app", 5), "target": "VERSION", "result": "EQUAL", "version": 0}]
    assert req["success"] == [{"request_put": {"key": b"/config/app", "value": b"{}"}}]
    start, end = history_range("app")
    op, req = rj.config_write("app", b"{}", 0)
    assert req["compare"] == [{"key": start, "range_end": end, "target": "VERSION",
                               "result": "EQUAL", "version": 0}]


@pytest.mark.parametrize("name", ["a//b", "", "a/"])
@pytest.mark.parametrize("call", [
    lambda n: rj.config_write(n, b"{}", None), lambda n: rj.config_write(n, b"{}", 1),
    rj.config_read, lambda n: rj.generation_read(n, 3), rj.schema_key_of, rj.document_key])
def test_bad_config_names_are_client_errors(name: str, call: Callable[[str], Any]) -> None:
    with pytest.raises(ClientError):
        call(name)


def test_a_conflict_reports_the_newest_generation() -> None:
    resp = txn([hist("app", 4, 8), hist("app", 6, 9), hist("app", 5, 8)], succeeded=False)
    assert rj.decode_conflict("app", resp) == 6
    assert rj.decode_conflict("app", txn([], succeeded=False)) == 0


def test_generation_of_an_unguarded_put() -> None:
    req = rj.generation_read("app", 12)
    assert (req["min_mod_revision"], req["max_mod_revision"], req["keys_only"]) == (12, 12, True)
    found = {"kvs": [hist("app", 3, 11), hist("app", 4, 12)]}
    assert rj.decode_generation("app", found, 12) == 4
    assert rj.decode_generation("app", {"kvs": []}, 12) == 0


def test_config_list_finds_each_documents_generation() -> None:
    resp = txn([kv(b"/config/a", b"", 5), kv(b"/config/a/b", b"", 5), kv(b"/config/c", b"", 2)],
               [hist("a", 1, 3), hist("a", 2, 5), hist("a/b", 1, 5), hist("c", 1, 2),
                hist("gone", 1, 4)])
    assert rj.decode_config_list(resp) == [
        {"name": "a", "generation": 2, "revision": 5},
        {"name": "a/b", "generation": 1, "revision": 5},
        {"name": "c", "generation": 1, "revision": 2}]


@pytest.mark.parametrize("raw", [b"", b" ", b"[1]", b'"x"', b"{", b'{"a":1,"a":2}',
                                 b'{"a":NaN}'])
def test_documents_must_be_one_strict_json_object(raw: bytes) -> None:
    with pytest.raises(ClientError):
        rj.parse_document(raw)


def test_documents_are_stored_verbatim_without_surrounding_space() -> None:
    assert rj.parse_document(b' \n{ "a" : 1.50 }\n') == b'{ "a" : 1.50 }'


def test_status_names_members_in_hex() -> None:
    status = {"header": {"member_id": 0xAB, "cluster_id": 0xC, "revision": 4}, "name": "m1",
              "role": "follower", "version": "0.1.0", "leader": 0xCD, "raft_term": 3}
    members = {"members": [
        {"id": 0xAB, "name": "m1", "peer_urls": ["p1"], "client_urls": ["c1"],
         "is_learner": False},
        {"id": 0xCD, "name": "m2", "peer_urls": ["p2"], "client_urls": [], "is_learner": False}]}
    out = rj.encode_status(status, members)
    assert out["member"] == {"id": "ab", "name": "m1", "role": "follower", "version": "0.1.0"}
    assert (out["leader"], out["cluster_id"], out["raft_term"], out["revision"]) == \
        ("cd", "c", 3, 4)
    assert [(m["id"], m["is_leader"]) for m in out["members"]] == [("ab", False), ("cd", True)]
    assert rj.encode_status({**status, "leader": 0}, members)["leader"] is None
