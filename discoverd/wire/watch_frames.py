"""Watch frames assembled from pieces encoded once, for the native protocol.

A write seen by a thousand watchers used to be encoded a thousand times: one map per event
per watcher, then ``cbor2.dumps`` of each watcher's frame — most of a member's CPU under a
watch fan-out (issue 12). The frames differ only in the stream id, the watch id and the
header's revision, so this module encodes each event's map once (``EventBytes``, kept while
the event is recent) and each watcher's frame is a join of ready bytes.

The bytes decode to exactly the maps ``WatchService`` builds for the HTTP gateway
(``encode_event`` inside ``{"header", "watch_id", "events"[, "progress"]}``); only the order
of the map's keys differs, which CBOR maps do not fix.
"""

from __future__ import annotations

from collections.abc import Sequence

import cbor2

from discoverd.kv.revision import Event
from discoverd.wire.lease_watch_codec import encode_event

_K_WATCH_ID = cbor2.dumps("watch_id")
_K_HEADER = cbor2.dumps("header")
_K_EVENTS = cbor2.dumps("events")
_PROGRESS_TRUE = cbor2.dumps("progress") + cbor2.dumps(True)
_MAP3 = b"\xa3"
_MAP4 = b"\xa4"


def array_head(n: int) -> bytes:
    """The CBOR head of a definite-length array of ``n`` items (RFC 8949 §3)."""
    if n < 24:
        return bytes((0x80 | n,))
    if n < 1 << 8:
        return b"\x98" + n.to_bytes(1, "big")
    if n < 1 << 16:
        return b"\x99" + n.to_bytes(2, "big")
    if n < 1 << 32:
        return b"\x9a" + n.to_bytes(4, "big")
    return b"\x9b" + n.to_bytes(8, "big")


class EventBytes:
    """Each event's CBOR map, encoded on first use and kept for the next watchers.

    Keyed by the event object's identity: the hub hands every watcher of one shape the very
    same ``Event`` objects, and an entry keeps its event alive, so an id is never reused
    while it is cached. Bounded: past ``limit`` entries the cache starts over (a lagging
    watcher then costs one more encode per event, nothing else).
    """

    def __init__(self, limit: int = 8192) -> None:
        self._limit = limit
        self._cache: dict[int, tuple[Event, bytes]] = {}

    def __len__(self) -> int:
        return len(self._cache)

    def array(self, events: Sequence[Event]) -> bytes:
        """The CBOR array of ``events``' maps."""
        cache = self._cache
        parts = [array_head(len(events))]
        for event in events:
            hit = cache.get(id(event))
            if hit is not None and hit[0] is event:
                parts.append(hit[1])
                continue
            if len(cache) >= self._limit:
                cache.clear()
            encoded = cbor2.dumps(encode_event(event))
            cache[id(event)] = (event, encoded)
            parts.append(encoded)
        return b"".join(parts)


class WatchFrameHeads:
    """The constant leading bytes of one watch's ``ok`` bodies (its watch id)."""

    __slots__ = ("_events", "_progress")

    def __init__(self, watch_id: int) -> None:
        tail = _K_WATCH_ID + cbor2.dumps(watch_id) + _K_HEADER
        self._events = _MAP3 + tail
        self._progress = _MAP4 + _PROGRESS_TRUE + tail

    def body(self, header: bytes, events: bytes, *, progress: bool = False) -> bytes:
        """``{"watch_id", "header", "events"[, "progress": true]}`` from an encoded header
        and an encoded events array (``EventBytes.array``)."""
        head = self._progress if progress else self._events
        return b"".join((head, header, _K_EVENTS, events))
