"""The SDK's fast watch-frame decoder (``watch_response_from_wire``) against the general one
(``WatchResponse.from_wire``): for any map, members' or not, both give the same objects —
same values *and* same types, field by field — or raise the same error. No cluster needed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from discoverd.kv.revision import Event, EventType, KeyValue
from discoverd.sdk import WatchResponse
from discoverd.sdk._types import watch_response_from_wire
from discoverd.wire.lease_watch_codec import encode_event

INT64 = st.integers(min_value=0, max_value=(1 << 63) - 1)
# What members send, and what they never send but a decoder must survive all the same.
ODD = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=False, allow_infinity=False),
                st.text(max_size=3), st.just([1, 2]), st.just({}))
WIRE_INT = st.one_of(INT64, INT64, INT64, ODD)
WIRE_BYTES = st.one_of(st.binary(max_size=40), st.binary(max_size=40),
                       st.binary(max_size=4).map(bytearray), ODD)


def _maps(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=fields)


def _ok_maps(ints: st.SearchStrategy[Any], blobs: st.SearchStrategy[Any],
             odd: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Watch ``ok`` maps whose numbers are ``ints``, bytes ``blobs``, and where any other
    value may be ``odd``; every field may be missing."""
    kv = _maps({"key": blobs, "value": blobs, "create_revision": ints, "mod_revision": ints,
                "version": ints, "lease": ints})
    event = _maps({
        "type": st.one_of(st.sampled_from(["PUT", "DELETE"]), odd),
        "kv": st.one_of(kv, kv, kv, st.none(), st.just({})),
        "prev_kv": st.one_of(kv, st.none(), st.just({})),
    })
    header = st.one_of(
        _maps({"cluster_id": ints, "member_id": ints, "revision": ints, "raft_term": ints}),
        st.fixed_dictionaries({"cluster_id": INT64, "member_id": INT64, "revision": INT64,
                               "raft_term": INT64}),
        odd)
    return _maps({
        "header": header,
        "watch_id": ints,
        "events": st.one_of(st.lists(st.one_of(event, event, event, odd), max_size=4), odd),
        "progress": st.one_of(st.booleans(), odd),
        "compact_revision": ints,
    })


# What members send (exact types, so the fast path is taken)...
CLEAN_OK = _ok_maps(INT64, st.binary(max_size=40), st.nothing())
# ... and what they never send but a decoder must treat exactly as the general one does.
MESSY_OK = _ok_maps(WIRE_INT, WIRE_BYTES, st.one_of(ODD, st.sampled_from(
    ["put", "Delete", "BOGUS", "", 0])))


def shape(x: Any) -> Any:
    """``x`` with the type of every value spelled out: ``==`` alone would take ``1`` for
    ``True`` and ``bytearray`` for ``bytes``."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return (type(x), tuple((f.name, shape(getattr(x, f.name)))
                               for f in dataclasses.fields(x)))
    if isinstance(x, list):
        return (list, tuple(shape(i) for i in x))
    return (type(x), x)


def outcome(decode: Any, ok: Any) -> Any:
    try:
        return shape(decode(ok))
    except Exception as e:  # the same failure, from the same general code
        return ("raised", type(e), str(e))


@settings(max_examples=400, deadline=None)
@given(CLEAN_OK)
def test_fast_decoder_agrees_with_the_general_one_on_members_maps(ok: dict[str, Any]) -> None:
    assert outcome(watch_response_from_wire, ok) == outcome(WatchResponse.from_wire, ok)


@settings(max_examples=600, deadline=None)
@given(MESSY_OK)
def test_fast_decoder_agrees_with_the_general_one_on_any_map(ok: dict[str, Any]) -> None:
    assert outcome(watch_response_from_wire, ok) == outcome(WatchResponse.from_wire, ok)


@settings(max_examples=100, deadline=None)
@given(st.one_of(ODD, st.lists(MESSY_OK, max_size=2)))
def test_fast_decoder_agrees_on_what_is_not_a_map(ok: Any) -> None:
    assert outcome(watch_response_from_wire, ok) == outcome(WatchResponse.from_wire, ok)


STORE_KV = st.builds(KeyValue, key=st.binary(min_size=1, max_size=30),
                     value=st.binary(max_size=300), create_revision=INT64,
                     mod_revision=INT64, version=INT64, lease=INT64)
STORE_EVENT = st.builds(Event, type=st.sampled_from(EventType), kv=STORE_KV,
                        prev_kv=st.one_of(st.none(), STORE_KV))


@settings(max_examples=300, deadline=None)
@given(events=st.lists(STORE_EVENT, max_size=5), revision=INT64, watch_id=INT64,
       progress=st.booleans(), canceled=st.booleans(), compact=INT64)
def test_frames_as_the_member_encodes_them_round_trip(
    events: list[Event], revision: int, watch_id: int, progress: bool, canceled: bool,
    compact: int,
) -> None:
    """The member's own encoder (``encode_event``) → cbor → both decoders: every field of
    every event comes back, prev_kv and deletes included; progress and cancel frames too."""
    ok: dict[str, Any] = {
        "header": {"cluster_id": 7, "member_id": 9, "revision": revision, "raft_term": 3},
        "watch_id": watch_id, "events": [encode_event(e) for e in events],
    }
    if progress:
        ok["progress"] = True
    if canceled:
        ok.update(canceled=True, cancel_reason="r", compact_revision=compact)
    ok = cbor2.loads(cbor2.dumps({"id": 5, "ok": ok}))["ok"]
    resp = watch_response_from_wire(ok)
    assert shape(resp) == shape(WatchResponse.from_wire(ok))
    assert (resp.header.cluster_id, resp.header.member_id, resp.revision,
            resp.header.raft_term) == (7, 9, revision, 3)
    assert resp.progress is progress
    assert resp.compact_revision == (compact if canceled else 0)
    assert len(resp.events) == len(events)
    for got, sent in zip(resp.events, events, strict=True):
        assert got.type == sent.type.name
        for mine, theirs in ((got.kv, sent.kv), (got.prev_kv, sent.prev_kv)):
            if theirs is None:
                assert mine is None
                continue
            assert mine is not None
            assert (mine.key, mine.value, mine.create_revision, mine.mod_revision,
                    mine.version, mine.lease) == (
                theirs.key, theirs.value, theirs.create_revision, theirs.mod_revision,
                theirs.version, theirs.lease)


def test_equal_headers_share_one_object_and_different_ones_do_not() -> None:
    def frame(revision: int, member: int = 2) -> dict[str, Any]:
        return {"header": {"cluster_id": 1, "member_id": member, "revision": revision,
                           "raft_term": 4}, "watch_id": 0, "events": []}

    a, b = watch_response_from_wire(frame(10)), watch_response_from_wire(frame(10))
    assert a.header is b.header
    c = watch_response_from_wire(frame(11))
    d = watch_response_from_wire(frame(11, member=3))
    e = watch_response_from_wire(frame(10))
    assert (c.revision, d.revision, d.header.member_id, e.revision) == (11, 11, 3, 10)
    assert c.header is not d.header
    assert c.header != d.header
    assert e.header == a.header


def test_decoded_values_are_the_public_frozen_types() -> None:
    ok = {"header": {"revision": 3}, "events": [
        {"type": "DELETE", "kv": {"key": b"k", "mod_revision": 3},
         "prev_kv": {"key": b"k", "value": b"v", "create_revision": 2, "mod_revision": 2,
                     "version": 1}}]}
    resp = watch_response_from_wire(ok)
    event = resp.events[0]
    assert event.type == "DELETE"
    assert event.prev_kv is not None
    assert event.prev_kv.value == b"v"
    assert event.kv.value == b""
    assert resp == WatchResponse.from_wire(ok)
    assert hash(event.kv) == hash(WatchResponse.from_wire(ok).events[0].kv)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.kv.key = b"x"  # type: ignore[misc]
    assert dataclasses.replace(event.kv, key=b"x").key == b"x"
