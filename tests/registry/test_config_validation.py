"""Config documents and schemas judged when the write is applied (DESIGN §7, issue 6).

Most tests drive a real ``MvccStore`` with the real ``RegistryHook``; the last ones go
through ``KvMachine.apply`` of encoded log entries, as a member applies them, and through
``error_body``, as a client sees the refusal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from discoverd.consensus.messages import Entry, EntryKind
from discoverd.errors import ClientError, DiscoverdError, ValidationError
from discoverd.kv import (
    CompactionRequest,
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    MvccStore,
    PutRequest,
    RangeRequest,
    RequestOp,
    TxnRequest,
)
from discoverd.machine.applier import KvMachine, encode_command
from discoverd.registry import MAX_VIOLATIONS, RegistryHook
from discoverd.server.api_server import error_body
from discoverd.wire.registry_codec import HistoryEntry, history_range, parse_generation

PORT_SCHEMA = {
    "type": "object",
    "properties": {"port": {"type": "integer", "minimum": 1}, "name": {"type": "string"}},
    "required": ["port"],
}


def js(value: Any) -> bytes:
    return json.dumps(value).encode()


class Registry:
    """A store with the registry hook, answering like the machine: result or error."""

    def __init__(self, **options: Any) -> None:
        self.store = MvccStore()
        self.hook = RegistryHook(**options)

    def put(self, key: bytes, value: bytes | Any) -> Any:
        data = value if isinstance(value, bytes) else js(value)
        try:
            return self.store.put(PutRequest(key, data), hook=self.hook)
        except DiscoverdError as e:
            return e

    def delete(self, key: bytes, range_end: bytes = b"") -> Any:
        try:
            return self.store.delete_range(DeleteRangeRequest(key, range_end), hook=self.hook)
        except DiscoverdError as e:
            return e

    def txn(self, *ops: Any, compare: tuple[Compare, ...] = (), failure: tuple[Any, ...] = ()
            ) -> Any:
        try:
            return self.store.txn(
                TxnRequest(compare=compare, success=[RequestOp.of(o) for o in ops],
                           failure=[RequestOp.of(o) for o in failure]), hook=self.hook)
        except DiscoverdError as e:
            return e

    def get(self, key: bytes) -> Any:
        kvs = self.store.range(RangeRequest(key)).kvs
        return json.loads(kvs[0].value) if kvs else None

    def history(self, name: str) -> list[HistoryEntry]:
        key, end = history_range(name)
        prefix = key[:-1]
        return [HistoryEntry.from_json(kv.value)
                for kv in self.store.range(RangeRequest(key, end)).kvs
                if parse_generation(prefix, kv.key) is not None]


def refused(result: Any) -> list[dict[str, Any]]:
    assert isinstance(result, ValidationError), result
    assert result.code == "validation_failed"
    return result.violations


def paths(result: Any) -> list[tuple[str, str]]:
    return [(v["path"], v["message"]) for v in refused(result)]


@pytest.fixture
def reg() -> Registry:
    r = Registry()
    assert not isinstance(r.put(b"/schemas/app", PORT_SCHEMA), Exception)
    assert not isinstance(r.put(b"/config/app", {"port": 80}), Exception)
    return r


# -- documents ----------------------------------------------------------------------------------


def test_an_invalid_document_is_refused_with_pointer_message_and_schema_path(
    reg: Registry,
) -> None:
    before = reg.store.to_obj()
    result = reg.put(b"/config/app", {"port": 0, "name": 5, "extra": {"a/b": 1}})
    assert refused(result) == [
        {"key": "/config/app", "path": "/name", "message": "5 is not of type 'string'",
         "schema_path": "/properties/name/type"},
        {"key": "/config/app", "path": "/port", "message": "0 is less than the minimum of 1",
         "schema_path": "/properties/port/minimum"},
    ]
    assert str(result).startswith("validation failed: /config/app at /name: 5 is not of type")
    assert reg.store.to_obj() == before
    assert reg.get(b"/config/app") == {"port": 80}


def test_a_missing_required_property_is_reported_at_the_root(reg: Registry) -> None:
    assert paths(reg.put(b"/config/app", {"name": "x"})) == [
        ("", "'port' is a required property")
    ]


def test_json_pointers_escape_slash_and_tilde() -> None:
    r = Registry()
    r.put(b"/schemas/m", {"additionalProperties": {"type": "integer"}})
    assert paths(r.put(b"/config/m", {"a/b~c": "x"})) == [
        ("/a~1b~0c", "'x' is not of type 'integer'")
    ]


@pytest.mark.parametrize(("value", "message"), [
    (b"not json", "a config document must be a JSON object: not valid JSON: Expecting value:"
                  " line 1 column 1 (char 0)"),
    (b"[1, 2]", "a config document must be a JSON object, got array"),
    (b'"text"', "a config document must be a JSON object, got string"),
    (b"", "a config document must be a JSON object: not valid JSON: Expecting value: line 1"
          " column 1 (char 0)"),
    (b'{"a": NaN}', "a config document must be a JSON object: not valid JSON: NaN is not a "
                    "JSON value"),
    (b'{"a": 1, "a": 2}', "a config document must be a JSON object: not valid JSON: "
                          "duplicate object key 'a'"),
    (b'{"a": "\xff"}', "a config document must be a JSON object: not UTF-8 text: 'utf-8' "
                       "codec can't decode byte 0xff in position 7: invalid start byte"),
    (b'{"a":' * 65 + b"1" + b"}" * 65, "a config document must be a JSON object: nested "
                                       "deeper than 64 levels"),
    (b"[" * 100_000 + b"]" * 100_000, "a config document must be a JSON object: nested "
                                       "deeper than 64 levels"),
])
def test_a_value_that_is_not_a_json_object_is_refused_clearly(value: bytes, message: str) -> None:
    r = Registry()
    result = r.put(b"/config/plain", value)  # no schema at all: still must be an object
    assert refused(result) == [
        {"key": "/config/plain", "path": "", "message": message, "schema_path": ""}
    ]
    assert r.store.revision == 1


def test_a_document_without_a_schema_only_has_to_be_an_object() -> None:
    r = Registry()
    assert not isinstance(r.put(b"/config/free", {"anything": [1, {"goes": None}]}), Exception)


@pytest.mark.parametrize("key", [b"/config/", b"/config/a//b", b"/config/a/", b"/schemas/",
                                 b"/config/\xff"])
def test_names_must_be_non_empty_utf8_without_empty_segments(key: bytes) -> None:
    result = Registry().put(key, {"x": 1})
    assert len(refused(result)) == 1
    assert refused(result)[0]["message"].startswith("invalid name: ")


def test_a_nested_name_is_its_own_document() -> None:
    r = Registry()
    r.put(b"/schemas/app", PORT_SCHEMA)
    assert not isinstance(r.put(b"/config/app/db", {"no": "port"}), Exception)
    assert isinstance(r.put(b"/config/app", {"no": "port"}), ValidationError)


# -- txns ---------------------------------------------------------------------------------------


def test_an_invalid_document_in_a_txn_refuses_the_whole_txn(reg: Registry) -> None:
    before = reg.store.to_obj()
    result = reg.txn(PutRequest(b"/other", b"fine"),
                     PutRequest(b"/config/app", js({"port": "eighty"})))
    assert paths(result) == [("/port", "'eighty' is not of type 'integer'")]
    assert reg.store.to_obj() == before


def test_only_the_branch_that_runs_is_judged(reg: Registry) -> None:
    always = Compare(b"/config/app", CompareTarget.VERSION, CompareResult.GREATER, version=0)
    never = Compare(b"/config/app", CompareTarget.VERSION, CompareResult.EQUAL, version=0)
    bad = PutRequest(b"/config/app", js({"port": "x"}))
    good = PutRequest(b"/config/app", js({"port": 81}))
    response, _ = reg.txn(good, compare=(always,), failure=(bad,))
    assert response.succeeded
    assert reg.get(b"/config/app") == {"port": 81}
    assert isinstance(reg.txn(good, compare=(never,), failure=(bad,)), ValidationError)
    assert reg.get(b"/config/app") == {"port": 81}


def test_violations_of_several_documents_are_all_listed_by_key() -> None:
    r = Registry()
    r.put(b"/schemas/a", PORT_SCHEMA)
    r.put(b"/schemas/b", PORT_SCHEMA)
    result = r.txn(PutRequest(b"/config/b", js({})), PutRequest(b"/config/a", js({"port": 0})))
    assert [(v["key"], v["path"]) for v in refused(result)] == [
        ("/config/a", "/port"), ("/config/b", "")
    ]


# -- schemas ------------------------------------------------------------------------------------


def test_a_schema_the_current_document_fails_is_refused(reg: Registry) -> None:
    stricter = {**PORT_SCHEMA, "required": ["port", "name"]}
    result = reg.put(b"/schemas/app", stricter)
    assert refused(result) == [{"key": "/config/app", "path": "",
                                "message": "'name' is a required property",
                                "schema_path": "/required"}]
    assert reg.get(b"/schemas/app") == PORT_SCHEMA


def test_schema_and_document_changed_together_are_judged_as_a_whole(reg: Registry) -> None:
    stricter = {**PORT_SCHEMA, "required": ["port", "name"]}
    ok = reg.txn(PutRequest(b"/schemas/app", js(stricter)),
                 PutRequest(b"/config/app", js({"port": 80, "name": "api"})))
    assert not isinstance(ok, Exception)
    assert reg.get(b"/schemas/app") == stricter
    # both change again, but the new document does not satisfy the new schema
    stricter_still = {**stricter, "properties": {"port": {"type": "integer", "maximum": 10}}}
    bad = reg.txn(PutRequest(b"/schemas/app", js(stricter_still)),
                  PutRequest(b"/config/app", js({"port": 80, "name": "api"})))
    assert paths(bad) == [("/port", "80 is greater than the maximum of 10")]
    assert reg.get(b"/schemas/app") == stricter


def test_deleting_the_schema_frees_the_document_and_deleting_is_always_allowed(
    reg: Registry,
) -> None:
    assert not isinstance(reg.txn(DeleteRangeRequest(b"/schemas/app"),
                                  PutRequest(b"/config/app", js({"port": "any"}))), Exception)
    assert reg.get(b"/config/app") == {"port": "any"}
    assert not isinstance(reg.delete(b"/config/app"), Exception)


@pytest.mark.parametrize(("schema", "expected"), [
    ({"type": "objec"}, ("/type", "'objec' is not valid under any of the given schemas")),
    ({"minimum": "1"}, ("/minimum", "'1' is not of type 'number'")),
    ({"required": "port"}, ("/required", "'port' is not of type 'array'")),
    ({"pattern": "(unclosed"}, ("/pattern", "'(unclosed' is not a 'regex'")),
])
def test_a_schema_is_checked_as_a_schema(schema: Any, expected: tuple[str, str]) -> None:
    r = Registry()
    result = r.put(b"/schemas/app", schema)
    assert paths(result) == [expected]
    assert refused(result)[0]["key"] == "/schemas/app"
    assert r.get(b"/schemas/app") is None


@pytest.mark.parametrize(("value", "message"), [
    (b"true", "a schema must be a JSON object, got boolean"),
    (b"{", "a schema must be a JSON object: not valid JSON: Expecting property name enclosed "
           "in double quotes: line 1 column 2 (char 1)"),
])
def test_a_schema_must_be_a_json_object(value: bytes, message: str) -> None:
    assert paths(Registry().put(b"/schemas/app", value)) == [("", message)]


def test_schema_draft_is_honoured() -> None:
    draft4 = {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "properties": {"n": {"maximum": 10, "exclusiveMaximum": True}},
    }
    r = Registry()
    assert not isinstance(r.put(b"/schemas/d4", draft4), Exception)
    assert paths(r.put(b"/config/d4", {"n": 10})) == [
        ("/n", "10 is greater than or equal to the maximum of 10")
    ]
    assert not isinstance(r.put(b"/config/d4", {"n": 9}), Exception)
    # the same schema under the default draft (2020-12) is not a schema: there,
    # exclusiveMaximum is a number
    no_draft = {k: v for k, v in draft4.items() if k != "$schema"}
    assert paths(r.put(b"/schemas/d2020", no_draft)) == [
        ("/properties/n/exclusiveMaximum", "True is not of type 'number'")
    ]
    # draft 7's tuple form of items, honoured; 2020-12 would refuse it as a schema
    d7 = {"$schema": "http://json-schema.org/draft-07/schema#",
          "properties": {"pair": {"items": [{"type": "string"}, {"type": "integer"}]}}}
    assert not isinstance(r.put(b"/schemas/d7", d7), Exception)
    assert paths(r.put(b"/config/d7", {"pair": ["a", "b"]})) == [
        ("/pair/1", "'b' is not of type 'integer'")
    ]


@pytest.mark.parametrize("uri", ["http://example.com/my-draft", "https://json-schema.org/draft/2099/schema"])
def test_an_unknown_schema_draft_is_refused(uri: str) -> None:
    result = Registry().put(b"/schemas/app", {"$schema": uri})
    assert paths(result)[0][0] == "/$schema"
    assert paths(result)[0][1].startswith(f"unknown '$schema' {uri!r}; known: ")


def test_remote_refs_are_refused_and_local_ones_resolve() -> None:
    r = Registry()
    remote = {"properties": {"a": {"$ref": "https://example.com/schemas/a.json"}},
              "$defs": {"b": {"$ref": "other.json#/x"}}}
    assert sorted(paths(r.put(b"/schemas/app", remote))) == [
        ("/$defs/b/$ref", "$ref 'other.json' is outside the schema: discoverd resolves "
                          "references only inside the schema (no remote $ref)"),
        ("/properties/a/$ref", "$ref 'https://example.com/schemas/a.json' is outside the "
                               "schema: discoverd resolves references only inside the schema"
                               " (no remote $ref)"),
    ]
    local = {
        "$id": "https://example.com/app",
        "$defs": {
            "port": {"type": "integer"},
            "inner": {"$id": "inner.json", "type": "string"},
        },
        "properties": {
            "port": {"$ref": "#/$defs/port"},
            "name": {"$ref": "https://example.com/inner.json"},
            "same": {"$ref": "https://example.com/app#/$defs/port"},
            # data, not a reference: a const may hold anything
            "weird": {"const": {"$ref": "https://example.com/not-a-ref"}},
        },
    }
    assert not isinstance(r.put(b"/schemas/app", local), Exception)
    assert paths(r.put(b"/config/app", {"port": "x", "name": 1, "same": "y"})) == [
        ("/name", "1 is not of type 'string'"),
        ("/port", "'x' is not of type 'integer'"),
        ("/same", "'y' is not of type 'integer'"),
    ]


def test_a_ref_to_a_shipped_meta_schema_needs_no_network() -> None:
    r = Registry()
    schema = {"properties": {"inner": {"$ref": "https://json-schema.org/draft/2020-12/schema"}}}
    assert not isinstance(r.put(b"/schemas/meta", schema), Exception)
    assert paths(r.put(b"/config/meta", {"inner": {"type": 5}})) == [
        ("/inner/type", "5 is not valid under any of the given schemas")
    ]


def test_formats_are_annotations_not_assertions() -> None:
    r = Registry()
    r.put(b"/schemas/f", {"properties": {"mail": {"type": "string", "format": "email"}}})
    assert not isinstance(r.put(b"/config/f", {"mail": "not an address"}), Exception)


def test_a_schema_recursing_forever_is_a_violation_not_a_crash() -> None:
    r = Registry()
    limit = sys.getrecursionlimit()
    assert not isinstance(r.put(b"/schemas/loop", {"$ref": "#"}), Exception)
    assert paths(r.put(b"/config/loop", {"a": 1})) == [
        ("", "the schema recurses deeper than 1000 frames on this document")
    ]
    assert sys.getrecursionlimit() == limit


def test_a_deep_document_within_the_bound_validates() -> None:
    r = Registry()
    node = {"$defs": {"n": {"type": "object", "properties": {"c": {"$ref": "#/$defs/n"}}}},
            "$ref": "#/$defs/n"}
    r.put(b"/schemas/deep", node)
    doc: dict[str, Any] = {}
    cur = doc
    for _ in range(63):
        cur["c"] = {}
        cur = cur["c"]
    assert not isinstance(r.put(b"/config/deep", doc), Exception)
    cur["c"] = 5
    assert paths(r.put(b"/config/deep", doc))[0][0] == "/c" * 64


def test_many_violations_are_capped_and_the_message_gives_the_total() -> None:
    r = Registry()
    r.put(b"/schemas/many", {"additionalProperties": {"type": "integer"}})
    result = r.put(b"/config/many", {f"k{i:04}": "x" for i in range(250)})
    assert isinstance(result, ValidationError)
    assert len(result.violations) == MAX_VIOLATIONS
    assert result.total == 250
    assert result.violations[0]["path"] == "/k0000"
    assert str(result).endswith("; and 247 more")


def test_a_long_message_is_shortened() -> None:
    r = Registry()
    r.put(b"/schemas/long", {"properties": {"v": {"maxLength": 1}}})
    message = paths(r.put(b"/config/long", {"v": "x" * 10_000}))[0][1]
    assert len(message) == 500
    assert message.endswith("...")


# -- the validator cache ------------------------------------------------------------------------


def test_writes_to_a_document_whose_schema_did_not_change_do_not_recompile() -> None:
    r = Registry()
    r.put(b"/schemas/app", PORT_SCHEMA)
    assert r.hook.compilations == 1
    for port in range(1, 20):
        r.put(b"/config/app", {"port": port})
    r.put(b"/config/app", {"port": "bad"})
    assert r.hook.compilations == 1
    r.put(b"/schemas/app", {**PORT_SCHEMA, "title": "new"})
    r.put(b"/config/app", {"port": 5})
    assert r.hook.compilations == 2


def test_the_cache_is_bounded_least_recently_used_first() -> None:
    r = Registry(cache_size=2)
    for name in (b"a", b"b", b"c"):
        r.put(b"/schemas/" + name, PORT_SCHEMA)
    assert r.hook.compilations == 3
    r.put(b"/config/c", {"port": 1})
    r.put(b"/config/b", {"port": 1})
    assert r.hook.compilations == 3
    r.put(b"/config/a", {"port": 1})  # evicted by c
    assert r.hook.compilations == 4


def test_a_refused_write_does_not_leave_its_schema_cached_for_the_revision() -> None:
    r = Registry()
    revision = r.store.revision + 1
    strict = {"properties": {"v": {"type": "integer"}}}
    loose = {"properties": {"v": {"type": "string"}}}
    assert isinstance(r.txn(PutRequest(b"/schemas/x", js(strict)),
                            PutRequest(b"/config/x", js({"v": "s"}))), ValidationError)
    assert r.store.revision == revision - 1
    # the same (name, revision) now holds another schema
    assert not isinstance(r.txn(PutRequest(b"/schemas/x", js(loose)),
                                PutRequest(b"/config/x", js({"v": "s"}))), Exception)
    assert r.store.revision == revision


# -- generations and history ---------------------------------------------------------------------


def test_every_put_is_a_generation_recorded_in_the_same_revision() -> None:
    r = Registry()
    response, events = r.put(b"/config/app", b'{"port": 1}')
    assert [e.kv.key for e in events] == [
        b"/config/app", b"/config-history/app/00000000000000000001"
    ]
    assert {e.kv.mod_revision for e in events} == {response.header_revision}
    r.put(b"/config/app", {"port": 2})
    assert r.history("app") == [
        HistoryEntry(1, 2, {"port": 1}),
        HistoryEntry(2, 3, {"port": 2}),
    ]
    history_value = r.store.range(RangeRequest(b"/config-history/app/00000000000000000001"))
    assert history_value.kvs[0].value == b'{"generation":1,"revision":2,"document":{"port": 1}}'


def test_history_keeps_the_last_n_and_survives_compaction() -> None:
    r = Registry(history_limit=3)
    for i in range(1, 8):
        r.put(b"/config/app", {"v": i})
    assert [(h.generation, h.document) for h in r.history("app")] == [
        (5, {"v": 5}), (6, {"v": 6}), (7, {"v": 7})
    ]
    r.store.compact(CompactionRequest(r.store.revision))
    assert [h.generation for h in r.history("app")] == [5, 6, 7]
    r.put(b"/config/app", {"v": 8})
    assert [h.generation for h in r.history("app")] == [6, 7, 8]


def test_a_delete_records_a_generation_and_generations_never_restart() -> None:
    r = Registry()
    r.put(b"/config/app", {"v": 1})
    r.put(b"/config/app", {"v": 2})
    _, events = r.delete(b"/config/app")
    assert [e.kv.key for e in events] == [
        b"/config/app", b"/config-history/app/00000000000000000003"
    ]
    r.put(b"/config/app", {"v": 3})
    entries = r.history("app")
    assert [(h.generation, h.deleted, h.document) for h in entries] == [
        (1, False, {"v": 1}), (2, False, {"v": 2}), (3, True, None), (4, False, {"v": 3})
    ]
    assert entries[2].revision == 4
    # a range delete of several documents: one generation each
    r.put(b"/config/other", {"v": 1})
    _, events = r.delete(b"/config/", b"/config0")
    assert [e.kv.key for e in events][2:] == [
        b"/config-history/app/00000000000000000005",
        b"/config-history/other/00000000000000000002",
    ]


def test_history_of_a_name_ignores_the_history_of_names_below_it() -> None:
    r = Registry()
    r.put(b"/config/app", {"v": 1})
    for _ in range(3):
        r.put(b"/config/app/1", {"v": 1})  # its history: /config-history/app/1/<gen>
    r.put(b"/config/app", {"v": 2})
    assert [h.generation for h in r.history("app")] == [1, 2]
    assert [h.generation for h in r.history("app/1")] == [1, 2, 3]


def test_a_refused_write_records_no_generation(reg: Registry) -> None:
    reg.put(b"/config/app", {"port": "bad"})
    assert [h.generation for h in reg.history("app")] == [1]


@pytest.mark.parametrize("write", [
    lambda r: r.put(b"/config-history/app/00000000000000000009", b"{}"),
    lambda r: r.delete(b"/config-history/app/00000000000000000001"),
    lambda r: r.delete(b"/config", b"/config."),  # a range covering the history
    lambda r: r.txn(PutRequest(b"/a", b"1"), DeleteRangeRequest(b"/config-history/", b"\0")),
])
def test_client_writes_under_config_history_are_refused(reg: Registry, write: Any) -> None:
    before = reg.store.to_obj()
    result = write(reg)
    assert type(result) is ClientError
    assert result.code == "invalid_argument"
    assert "/config-history/ is reserved for discoverd" in str(result)
    assert reg.store.to_obj() == before


# -- status reports ------------------------------------------------------------------------------


def test_status_reports_are_json_objects_under_name_and_instance() -> None:
    r = Registry()
    ok = {"generation": 3, "applied": False, "error": "bad port"}
    assert not isinstance(r.put(b"/config-status/app/host-1", ok), Exception)
    assert paths(r.put(b"/config-status/app/host-1", b"applied")) == [
        ("", "a config status must be a JSON object: not valid JSON: Expecting value: line 1 "
             "column 1 (char 0)")
    ]
    assert paths(r.put(b"/config-status/app", ok)) == [
        ("", "a config status key is /config-status/<name>/<instance>")
    ]
    assert not isinstance(r.delete(b"/config-status/app/host-1"), Exception)


# -- through the machine -------------------------------------------------------------------------


class Log:
    def __init__(self, machine: KvMachine) -> None:
        self.machine = machine
        self.index = 0

    def apply(self, op: str, **fields: object) -> object:
        self.index += 1
        return self.machine.apply(Entry(1, self.index, EntryKind.NORMAL,
                                        encode_command(op, dict(fields))))


ENTRIES: list[tuple[str, dict[str, Any]]] = [
    ("put", {"key": b"/schemas/app", "value": js(PORT_SCHEMA)}),
    ("put", {"key": b"/config/app", "value": js({"port": 80})}),
    ("put", {"key": b"/config/app", "value": js({"port": -1, "name": ["x"]})}),
    ("txn", {"compare": [], "success": [
        {"request_put": {"key": b"/config/app", "value": js({"port": 81})}},
        {"request_put": {"key": b"/schemas/app", "value": js({**PORT_SCHEMA,
                                                                "required": ["name"]})}}]}),
    ("put", {"key": b"/schemas/app", "value": js({"properties": {"port": {"maximum": 10}}})}),
    ("delete_range", {"key": b"/config-history/", "range_end": b"/config-history0"}),
    ("put", {"key": b"/config/app", "value": js({"port": 82})}),
]


def test_a_member_applying_entries_refuses_and_answers_with_the_violations() -> None:
    m = KvMachine()
    log = Log(m)
    results = [log.apply(op, **fields) for op, fields in ENTRIES]
    assert not isinstance(results[1], Exception)
    assert isinstance(results[2], ValidationError)
    assert isinstance(results[3], ValidationError)
    assert isinstance(results[4], ValidationError)
    assert type(results[5]) is ClientError
    assert not isinstance(results[6], Exception)
    assert m.store.revision == 4  # schema, doc, doc: the refused entries made no revision
    body = error_body(results[2])
    assert body == {
        "code": "validation_failed",
        "message": str(results[2]),
        "violations": [
            {"key": "/config/app", "path": "/name", "message": "['x'] is not of type 'string'",
             "schema_path": "/properties/name/type"},
            {"key": "/config/app", "path": "/port",
             "message": "-1 is less than the minimum of 1",
             "schema_path": "/properties/port/minimum"},
        ],
    }
    assert cbor2.loads(cbor2.dumps(body)) == body  # plain data, as the answer frame carries it
    assert error_body(ClientError("plain")) == {"code": "invalid_argument", "message": "plain"}


def test_members_applying_the_same_entries_reach_the_same_verdicts_and_state() -> None:
    a, b = KvMachine(), KvMachine()
    la, lb = Log(a), Log(b)
    for op, fields in ENTRIES:
        ra, rb = la.apply(op, **fields), lb.apply(op, **fields)
        assert type(ra) is type(rb)
        if isinstance(ra, DiscoverdError):
            assert error_body(ra) == error_body(rb)  # type: ignore[arg-type]
    assert a.snapshot() == b.snapshot()


VERDICTS = textwrap.dedent("""
    import json, sys
    from discoverd.kv import MvccStore, PutRequest
    from discoverd.registry import RegistryHook
    from discoverd.errors import ValidationError
    store, hook = MvccStore(), RegistryHook()
    out = []
    for key, value in json.loads(sys.stdin.read()):
        try:
            store.put(PutRequest(key.encode(), value.encode()), hook=hook)
            out.append(None)
        except ValidationError as e:
            out.append([str(e), e.violations])
    print(json.dumps(out))
""")


def test_verdicts_do_not_depend_on_the_process_hash_seed() -> None:
    schema = {"type": "object", "additionalProperties": False,
              "properties": {"a": {"enum": ["x", "y"]}, "b": {"type": "integer"}},
              "required": ["a", "b", "c", "d"], "dependentRequired": {"a": ["e", "f"]},
              "propertyNames": {"maxLength": 3}}
    writes = [["/schemas/s", json.dumps(schema)],
              ["/config/s", json.dumps({"zz": 1, "yyyy": 2, "a": "q", "xxx": 3, "b": "n"})]]
    outputs = set()
    for seed in ("1", "2", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run([sys.executable, "-c", VERDICTS], input=json.dumps(writes),
                              capture_output=True, text=True, env=env, check=True, timeout=60)
        outputs.add(done.stdout)
    assert len(outputs) == 1
    verdicts = json.loads(outputs.pop())
    assert verdicts[0] is None
    assert len(verdicts[1][1]) >= 6


# -- nothing a client writes stops a member --------------------------------------------------------

_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(-2, 2),
                     st.sampled_from(["", "a", "#", "#/$defs/x", "(", "^a+$", "string",
                                      "integer", "object", "urn:x", "other.json"]))
_WORDS = st.sampled_from(["type", "properties", "items", "$ref", "$defs", "$id", "enum",
                          "required", "pattern", "patternProperties", "minimum", "allOf",
                          "anyOf", "not", "if", "then", "additionalProperties", "const",
                          "$schema", "prefixItems", "dependentSchemas", "x", "a"])
_JSON = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(_WORDS, inner, max_size=4)), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(schema=st.dictionaries(_WORDS, _JSON, max_size=5), doc=st.dictionaries(_WORDS, _JSON,
                                                                               max_size=4))
def test_any_schema_and_document_end_in_a_verdict_never_a_crash(schema: Any, doc: Any) -> None:
    r = Registry()
    for key, value in ((b"/schemas/f", schema), (b"/config/f", doc)):
        result = r.put(key, value)
        assert isinstance(result, tuple | ValidationError), result
        if isinstance(result, ValidationError):
            assert result.violations


def test_a_config_document_or_schema_on_a_lease_is_refused() -> None:
    """Deleting keys on lease expiry bypasses the registry's generation record, so a
    document (or schema) on a lease would vanish without history: refused up front."""
    from discoverd.consensus.messages import Entry, EntryKind
    from discoverd.errors import ValidationError
    from discoverd.machine.applier import KvMachine, encode_command

    m = KvMachine(min_ttl=1)
    entries = [("lease_grant", {"lease": 5, "ttl": 10}),
               ("put", {"key": b"/config/app", "value": b"{}", "lease": 5}),
               ("put", {"key": b"/schemas/app", "value": b"{}", "lease": 5}),
               ("put", {"key": b"/config-status/app/i1", "value": b'{"generation": 1, '
                        b'"applied": true}', "lease": 5})]
    results = [m.apply(Entry(1, i + 1, EntryKind.NORMAL, encode_command(op, f)))
               for i, (op, f) in enumerate(entries)]
    for bad in results[1:3]:
        assert isinstance(bad, ValidationError)
        assert bad.violations[0]["message"] == (
            "config documents and schemas cannot be attached to a lease")
    assert not isinstance(results[3], Exception)  # status reports live on leases
