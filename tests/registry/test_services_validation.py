"""Service records: the shared format (``wire/registry_codec.py``) and its enforcement when
a write is applied (``registry/services.py`` through the registry hook and the machine)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from discoverd.consensus.messages import Entry, EntryKind
from discoverd.errors import DiscoverdError, ValidationError
from discoverd.kv import DeleteRangeRequest, MvccStore, PutRequest, RangeRequest
from discoverd.machine.applier import KvMachine, encode_command
from discoverd.registry import RegistryHook
from discoverd.wire.registry_codec import (
    Health,
    ServiceInstance,
    filter_instances,
    parse_service_key,
    prefix_end,
    service_key,
    service_prefix,
)

GOOD = {
    "service": "api", "id": "i-1", "address": "10.0.0.7", "port": 8080, "tags": ["v2", "eu"],
    "meta": {"team": "core"}, "weight": 10, "zone": "eu-1", "version": "2.1.0",
    "health": "passing", "registered_at": 1700000000.5,
}


def put(store: MvccStore, key: bytes, value: Any, hook: RegistryHook) -> Any:
    data = value if isinstance(value, bytes) else json.dumps(value).encode()
    try:
        return store.put(PutRequest(key, data), hook=hook)
    except DiscoverdError as e:
        return e


def violations(result: Any) -> list[tuple[str, str]]:
    assert isinstance(result, ValidationError), result
    return [(v["path"], v["message"]) for v in result.violations]


# -- the format ---------------------------------------------------------------------------------


def test_key_layout() -> None:
    assert service_key("api", "i-1") == b"/services/api/i-1"
    assert service_prefix("api") == b"/services/api/"
    assert service_prefix() == b"/services/"
    assert prefix_end(service_prefix("api")) == b"/services/api0"
    assert parse_service_key(b"/services/api/i-1") == ("api", "i-1")
    for bad in (b"/services/api", b"/services/api/i/x", b"/services//i", b"/other/api/i",
                b"/services/api/\xff"):
        with pytest.raises(ValueError, match=r"service key|not under"):
            parse_service_key(bad)
    with pytest.raises(ValueError, match="may not contain '/'"):
        service_key("a/b", "i")
    with pytest.raises(ValueError, match="empty"):
        service_key("api", "")


def test_an_instance_round_trips_through_its_stored_json() -> None:
    inst = ServiceInstance.from_json(b"/services/api/i-1", json.dumps(GOOD).encode())
    assert inst == ServiceInstance(
        service="api", id="i-1", address="10.0.0.7", port=8080, tags=("v2", "eu"),
        meta={"team": "core"}, weight=10, zone="eu-1", version="2.1.0",
        health=Health.PASSING, registered_at=1700000000.5,
    )
    assert inst.key == b"/services/api/i-1"
    assert json.loads(inst.to_json()) == GOOD
    assert list(json.loads(inst.to_json())) == list(GOOD)  # DESIGN §7's field order
    assert ServiceInstance.from_json(inst.key, inst.to_json()) == inst


def test_a_minimal_instance_gets_the_defaults() -> None:
    inst = ServiceInstance.from_json(b"/services/api/x", b'{"service": "api", "id": "x"}')
    assert (inst.address, inst.port, inst.tags, inst.meta, inst.weight, inst.health) == (
        "", None, (), {}, 1, Health.PASSING
    )


def test_decoding_a_bad_record_raises_the_violations() -> None:
    with pytest.raises(ValidationError) as caught:
        ServiceInstance.from_json(b"/services/api/x", b'{"service": "web", "id": "x"}')
    assert caught.value.violations == [{
        "key": "/services/api/x", "path": "/service",
        "message": "'service' is 'web' but the key says 'api'", "schema_path": "",
    }]


def test_filters_by_tags_meta_and_health() -> None:
    def inst(i: str, tags: tuple[str, ...], health: Health, **meta: str) -> ServiceInstance:
        return ServiceInstance("api", i, tags=tags, meta=meta, health=health)

    all_ = [
        inst("1", ("eu", "v2"), Health.PASSING, team="a"),
        inst("2", ("eu",), Health.WARNING, team="a"),
        inst("3", ("us", "v2"), Health.PASSING, team="b"),
        inst("4", ("eu", "v2"), Health.DRAINING, team="a"),
        inst("5", ("eu", "v2"), Health.CRITICAL, team="a"),
    ]

    def ids(found: list[ServiceInstance]) -> list[str]:
        return [i.id for i in found]

    assert ids(filter_instances(all_)) == ["1", "3"]
    assert ids(filter_instances(all_, health=("passing", "warning"))) == ["1", "2", "3"]
    assert ids(filter_instances(all_, tags=["eu", "v2"])) == ["1"]
    assert ids(filter_instances(all_, meta={"team": "b"})) == ["3"]
    assert ids(filter_instances(all_, tags=["eu"], health=list(Health))) == ["1", "2", "4", "5"]


# -- enforced when applied ----------------------------------------------------------------------


@pytest.mark.parametrize(("change", "expected"), [
    ({"service": "web"}, [("/service", "'service' is 'web' but the key says 'api'")]),
    ({"id": "i-2"}, [("/id", "'id' is 'i-2' but the key says 'i-1'")]),
    ({"id": None}, [("/id", "'id' is required and must be a string")]),
    ({"port": 70000}, [("/port", "'port' must be an integer in 0..65535 or null, got 70000")]),
    ({"port": True}, [("/port", "'port' must be an integer in 0..65535 or null, got True")]),
    ({"port": "80"}, [("/port", "'port' must be an integer in 0..65535 or null, got '80'")]),
    ({"port": None}, []),
    ({"tags": "eu"}, [("/tags", "'tags' must be an array of strings, got string")]),
    ({"tags": ["eu", 2]}, [("/tags/1", "a tag must be a string, got number")]),
    ({"meta": {"a/b": 1}}, [("/meta/a~1b", "a meta value must be a string, got number")]),
    ({"meta": []}, [("/meta", "'meta' must be an object of strings, got array")]),
    ({"weight": -1}, [("/weight", "'weight' must be an integer >= 0, got -1")]),
    ({"weight": 1.5}, [("/weight", "'weight' must be an integer >= 0, got 1.5")]),
    ({"health": "ok"}, [("/health", "'health' must be one of passing|warning|critical|"
                                    "draining, got 'ok'")]),
    ({"health": "draining"}, []),
    ({"address": 10}, [("/address", "'address' must be a string, got number")]),
    ({"registered_at": "now"}, [("/registered_at", "'registered_at' must be a number >= 0, "
                                                   "got 'now'")]),
    ({"unknown_field": {"kept": True}}, []),
])
def test_each_field_is_checked(change: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    store, hook = MvccStore(), RegistryHook()
    result = put(store, b"/services/api/i-1", {**GOOD, **change}, hook)
    if expected:
        assert violations(result) == expected
        assert store.revision == 1
    else:
        assert not isinstance(result, Exception)


@pytest.mark.parametrize(("key", "value", "expected"), [
    (b"/services/api", GOOD, ("", "a service key is /services/<service>/<instance-id>")),
    (b"/services/api/i-1/x", GOOD, ("", "a service key is /services/<service>/<instance-id>")),
    (b"/services/api/i-1", b"[]", ("", "a service instance must be a JSON object, got array")),
    (b"/services/api/i-1", b"up", ("", "a service instance must be a JSON object: not valid "
                                       "JSON: Expecting value: line 1 column 1 (char 0)")),
])
def test_the_key_and_the_value_shape_are_checked(key: bytes, value: Any,
                                                 expected: tuple[str, str]) -> None:
    assert violations(put(MvccStore(), key, value, RegistryHook()))[0] == expected


def test_all_violations_are_listed_sorted_by_path() -> None:
    bad = {**GOOD, "weight": -3, "health": "sick", "port": -1, "tags": [1]}
    assert [p for p, _ in violations(put(MvccStore(), b"/services/api/i-1", bad,
                                         RegistryHook()))] == [
        "/health", "/port", "/tags/0", "/weight"
    ]


def test_deletes_are_always_allowed() -> None:
    store, hook = MvccStore(), RegistryHook()
    put(store, b"/services/api/i-1", GOOD, hook)
    _, events = store.delete_range(DeleteRangeRequest(b"/services/", b"/services0"), hook=hook)
    assert [e.kv.key for e in events] == [b"/services/api/i-1"]


def test_through_the_machine_with_a_lease_whose_expiry_deregisters() -> None:
    m = KvMachine(min_ttl=1)
    index = 0

    def apply(op: str, **fields: Any) -> Any:
        nonlocal index
        index += 1
        return m.apply(Entry(1, index, EntryKind.NORMAL, encode_command(op, fields)))

    apply("lease_grant", lease=5, ttl=10)
    inst = ServiceInstance("api", "i-1", address="10.0.0.7", port=80)
    assert not isinstance(apply("put", key=inst.key, value=inst.to_json(), lease=5), Exception)
    bad = apply("put", key=b"/services/api/i-2", value=b'{"service":"api","id":"i-1"}', lease=5)
    assert violations(bad) == [("/id", "'id' is 'i-1' but the key says 'i-2'")]
    lease = m.lessor.get(5)
    assert lease is not None
    assert lease.keys == {b"/services/api/i-1"}  # the refused put attached nothing
    apply("lease_expire", ids=[5])
    kvs = m.store.range(RangeRequest(b"/services/", b"/services0")).kvs
    assert kvs == ()
