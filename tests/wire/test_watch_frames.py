"""``wire.watch_frames``: watch frames joined from pieces encoded once decode to exactly the
maps the general path builds (``encode_event`` inside the ``ok`` body), and a native stream's
frame carries them under its stream id."""

from __future__ import annotations

import cbor2
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from discoverd.kv.revision import Event, EventType, KeyValue
from discoverd.server.api_server import NativeEmit
from discoverd.wire.framing import FrameDecoder
from discoverd.wire.lease_watch_codec import encode_event
from discoverd.wire.watch_frames import EventBytes, WatchFrameHeads, array_head

INT = st.integers(0, 2**63 - 1)
KVS = st.builds(KeyValue, key=st.binary(min_size=1, max_size=30), value=st.binary(max_size=300),
                create_revision=INT, mod_revision=INT, version=INT, lease=INT)
EVENTS = st.builds(Event, type=st.sampled_from(EventType), kv=KVS, prev_kv=st.none() | KVS)
HEADERS = st.fixed_dictionaries({"cluster_id": INT, "member_id": INT, "revision": INT,
                                 "raft_term": INT})


@pytest.mark.parametrize("n", [0, 1, 23, 24, 255, 256, 65535, 65536])
def test_array_head_at_every_head_size_boundary(n: int) -> None:
    encoded = array_head(n) + b"".join(cbor2.dumps(i % 7) for i in range(n))
    assert cbor2.loads(encoded) == [i % 7 for i in range(n)]


@given(st.lists(EVENTS, max_size=30), HEADERS, INT, st.booleans())
def test_a_joined_body_decodes_as_the_general_map(events: list[Event], header: dict[str, int],
                                                   watch_id: int, progress: bool) -> None:
    body = WatchFrameHeads(watch_id).body(cbor2.dumps(header), EventBytes().array(events),
                                          progress=progress)
    want: dict[str, object] = {"header": header, "watch_id": watch_id,
                               "events": [encode_event(e) for e in events]}
    if progress:
        want["progress"] = True
    assert cbor2.loads(body) == want


def _event(key: bytes, rev: int) -> Event:
    return Event(EventType.PUT, KeyValue(key, b"v", rev, rev, 1))


def test_each_event_is_encoded_once_and_an_equal_but_other_event_separately() -> None:
    cache = EventBytes()
    a = _event(b"a", 2)
    twin = _event(b"a", 2)
    first = cache.array([a])
    assert cache.array([a, a]) == array_head(2) + first[1:] * 2
    assert len(cache) == 1
    assert cache.array([twin]) == first  # same bytes, its own entry (identity, not equality)
    assert len(cache) == 2


def test_past_its_limit_the_cache_starts_over_and_stays_correct() -> None:
    cache = EventBytes(limit=4)
    events = [_event(b"k%d" % i, i + 2) for i in range(10)]
    for i in range(0, 10, 3):
        chunk = events[i:i + 3]
        assert cbor2.loads(cache.array(chunk)) == [encode_event(e) for e in chunk]
        assert len(cache) <= 4
    assert cbor2.loads(cache.array(events)) == [encode_event(e) for e in events]


async def test_a_native_stream_sends_maps_and_encoded_bodies_as_its_own_frames() -> None:
    sent: list[bytes] = []
    answered: list[dict[str, object]] = []

    async def answer(frame: dict[str, object]) -> None:
        answered.append(frame)

    async def put_frame(frame: bytes) -> None:
        sent.append(frame)

    emit = NativeEmit(1234567, answer, put_frame)
    await emit({"created": True})
    event = _event(b"k", 9)
    await emit.encoded(WatchFrameHeads(5).body(cbor2.dumps({"revision": 9}),
                                               EventBytes().array([event])))
    await trio.lowlevel.checkpoint()
    assert answered == [{"id": 1234567, "ok": {"created": True}}]
    decoder = FrameDecoder(1 << 20)
    decoder.feed(b"".join(sent))
    payload = decoder.next_frame()
    assert payload is not None
    assert decoder.next_frame() is None
    assert cbor2.loads(payload) == {"id": 1234567, "ok": {
        "watch_id": 5, "header": {"revision": 9}, "events": [encode_event(event)]}}
