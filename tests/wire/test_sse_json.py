"""The SSE watch codec (``wire/sse_json``): the query → the native watch request, and
native watch frames → SSE text, parsed back the way a browser's ``EventSource`` parses it."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from discoverd.errors import ClientError
from discoverd.wire import sse_json


def parse_sse(text: bytes) -> list[dict[str, str]]:
    """SSE events as the HTML standard's parser sees them: fields per blank-line block,
    comments dropped."""
    events: list[dict[str, str]] = []
    for block in text.decode().split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value
        if fields:
            events.append(fields)
    return events


def kv(key: bytes, value: bytes, mod: int, lease: int = 0) -> dict[str, Any]:
    return {"key": key, "value": value, "create_revision": 1, "mod_revision": mod,
            "version": 2, "lease": lease}


def frame(*events: dict[str, Any], revision: int = 0, **extra: Any) -> dict[str, Any]:
    return {"header": {"revision": revision}, "watch_id": 1, "events": list(events), **extra}


def put(key: bytes, value: bytes, mod: int, **extra: Any) -> dict[str, Any]:
    return {"type": "PUT", "kv": kv(key, value, mod), **extra}


# ------------------------------------------------------------------------------ query


def test_a_prefix_watch_from_now() -> None:
    q = sse_json.parse_watch_query({"key": ["/services/"], "prefix": ["true"]}, None)
    assert q.native == {"key": b"/services/", "range_end": b"/services0", "start_revision": 0,
                        "progress_notify": True}
    assert q.keepalive == sse_json.DEFAULT_KEEPALIVE


def test_range_start_prev_kv_and_keepalive() -> None:
    q = sse_json.parse_watch_query({"key": ["a"], "range_end": ["\x00"], "prev_kv": ["1"],
                                    "start_revision": ["7"], "keepalive": ["0.5"]}, None)
    assert q.native == {"key": b"a", "range_end": b"\0", "start_revision": 7,
                        "progress_notify": True, "prev_kv": True}
    assert q.keepalive == 0.5


def test_last_event_id_resumes_after_it_and_wins_over_start_revision() -> None:
    q = sse_json.parse_watch_query({"key": ["a"], "start_revision": ["2"]}, "41")
    assert q.native["start_revision"] == 42
    assert sse_json.parse_watch_query({"key": ["a"]}, " ").native["start_revision"] == 0


@pytest.mark.parametrize(("query", "last"), [
    ({}, None), ({"key": [""]}, None), ({"key": ["a", "b"]}, None),
    ({"key": ["a"], "prefix": ["true"], "range_end": ["b"]}, None),
    ({"key": ["a"], "start_revision": ["-1"]}, None),
    ({"key": ["a"], "start_revision": ["x"]}, None),
    ({"key": ["a"], "keepalive": ["0"]}, None), ({"key": ["a"], "keepalive": ["nan"]}, None),
    ({"key": ["a"], "keepalive": ["1", "2"]}, None),
    ({"key": ["a"], "prefix": ["maybe"]}, None), ({"key": ["a"], "filter": ["x"]}, None),
    ({"key": ["a"]}, "abc"), ({"key": ["a"]}, "-3"), ({"key": ["a"]}, "\u00b2"),
    ({"key": ["a"]}, "9" * 5000), ({"key": ["a"]}, "9223372036854775807"),
    ({"key": ["a"], "start_revision": ["\u0663"]}, None),
])
def test_bad_watch_queries_are_refused(query: dict[str, list[str]], last: str | None) -> None:
    with pytest.raises(ClientError):
        sse_json.parse_watch_query(query, last)


# ------------------------------------------------------------------------------ frames


def test_one_sse_event_per_revision_with_the_revision_as_id() -> None:
    text, ended = sse_json.encode_frame(frame(
        put(b"/a", b"1", 5), put(b"/b", b"2", 5), {"type": "DELETE", "kv": kv(b"/a", b"", 6)},
        put(b"/c", b"3", 8), revision=9))
    assert not ended
    events = parse_sse(text)
    assert [e["id"] for e in events] == ["5", "6", "8"]
    assert all("event" not in e for e in events)  # plain "message" events
    first = json.loads(events[0]["data"])
    assert first == {"revision": 5, "events": [
        {"type": "PUT", "kv": {"key": "/a", "value": "1", "create_revision": 1,
                               "mod_revision": 5, "version": 2}},
        {"type": "PUT", "kv": {"key": "/b", "value": "2", "create_revision": 1,
                               "mod_revision": 5, "version": 2}}]}
    assert json.loads(events[1]["data"])["events"][0]["type"] == "DELETE"


def test_data_is_one_line_whatever_the_value_holds() -> None:
    text, _ = sse_json.encode_frame(frame(put(b"/k", "line1\nline2\r\n\u2028".encode(), 3)))
    assert text.count(b"\n") == 3  # id line, data line, blank line
    (event,) = parse_sse(text)
    assert json.loads(event["data"])["events"][0]["kv"]["value"].startswith("line1\nline2\r\n")


def test_non_utf8_key_values_fall_back_to_base64_and_say_so() -> None:
    (event,) = parse_sse(sse_json.encode_frame(frame(put(b"/bin", b"\xff\x00", 4)))[0])
    out = json.loads(event["data"])["events"][0]["kv"]
    assert out["encoding"] == "base64"
    assert base64.b64decode(out["key"]) == b"/bin"
    assert base64.b64decode(out["value"]) == b"\xff\x00"


def test_leases_are_hex_and_prev_kv_is_kept() -> None:
    ev = put(b"/k", b"new", 4, prev_kv=kv(b"/k", b"old", 3))
    ev["kv"]["lease"] = 0xA1
    out = sse_json.encode_event(ev)
    assert out["kv"]["lease"] == "00000000000000a1"
    assert out["prev_kv"]["value"] == "old"
    assert "lease" not in out["prev_kv"]


def test_created_progress_compacted_and_canceled() -> None:
    (created,) = parse_sse(sse_json.created_event(frame(revision=6, created=True)))
    assert created == {"event": "created", "id": "6", "data": '{"revision":6}'}
    text, ended = sse_json.encode_frame(frame(revision=11, progress=True))
    assert parse_sse(text) == [{"event": "progress", "id": "11", "data": '{"revision":11}'}]
    assert not ended
    text, ended = sse_json.encode_frame({"header": {"revision": 3}, "canceled": True,
                                         "compact_revision": 20, "cancel_reason": "x"})
    assert ended
    assert parse_sse(text) == [{"event": "compacted",
                                          "data": '{"compact_revision":20}'}]
    text, ended = sse_json.encode_frame({"header": {"revision": 3}, "canceled": True,
                                         "cancel_reason": "canceled by the client"})
    assert ended
    (event,) = parse_sse(text)
    assert "id" not in event
    assert event["event"] == "canceled"
    assert json.loads(event["data"]) == {"error": "canceled",
                                         "message": "canceled by the client"}


def test_an_empty_frame_sends_nothing_and_a_ping_is_a_comment() -> None:
    assert sse_json.encode_frame(frame(revision=3)) == (b"", False)
    assert parse_sse(sse_json.PING) == []
