"""Watches as Server-Sent Events (``GET /v1/watch``, docs/http.md "Server-Sent Events"):
the query ⇄ the native ``watch`` request, native watch frames → SSE text. Pure: no I/O.

Why SSE ids are revisions: a revision names a point in the store's one history, so "the last
id I saw" is exactly "resume at the next revision" — the browser's ``EventSource`` sends it
back as ``Last-Event-ID`` when it reconnects, and the stream continues with no gap and no
duplicate. That holds only if an id is never split across events and never repeated, so
every event of one revision (a txn, a lease expiring) goes into one SSE event; the hub
never splits a revision between frames (``kv.watch``), so grouping inside a frame suffices.
Progress notifications carry ids too: a quiet watcher's resume point still advances, and a
reconnect after a long quiet spell does not start in compacted history.

Values are JSON strings when they are UTF-8 (registry values are JSON text, most others
are text too), so a browser needs no base64; a key-value whose key or value is not UTF-8
is sent with both in base64 and ``"encoding": "base64"``.
"""

from __future__ import annotations

import base64
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from discoverd.errors import ClientError
from discoverd.wire import etcd_json as ej
from discoverd.wire.registry_codec import prefix_end
from discoverd.wire.rest_json import (
    MAX_INT64,
    check_query,
    format_lease_id,
    parse_decimal,
    query_bool,
    query_int,
)

DEFAULT_KEEPALIVE = 15.0
"""Seconds of silence before a ``: ping`` comment: under the 30-60 s idle timeouts of
common proxies and load balancers."""
MIN_KEEPALIVE, MAX_KEEPALIVE = 0.1, 3600.0
WATCH_PARAMS = ("key", "prefix", "range_end", "start_revision", "prev_kv", "keepalive")

PING = b": ping\n\n"
HEADERS = [("content-type", "text/event-stream; charset=utf-8"),
           ("cache-control", "no-cache"),
           ("x-accel-buffering", "no")]  # nginx: do not buffer the stream


@dataclass(frozen=True, slots=True)
class WatchQuery:
    """A checked ``GET /v1/watch``: the native ``watch`` request and the ping interval."""

    native: dict[str, Any]
    keepalive: float


def parse_watch_query(query: Mapping[str, list[str]], last_event_id: str | None
                      ) -> WatchQuery:
    """``key`` (required), ``prefix=true`` or ``range_end`` (as for a range; ``%00``: every
    key from ``key`` on), ``start_revision`` (0 or absent: from now), ``prev_kv=true``,
    ``keepalive`` (seconds between pings when idle). ``Last-Event-ID: N`` — an
    ``EventSource`` reconnecting — overrides ``start_revision`` with ``N + 1``.

    Raises:
        ClientError: a missing key, an unknown or repeated parameter, a bad number.
    """
    check_query(query, WATCH_PARAMS)
    keys = query.get("key") or []
    if len(keys) != 1 or not keys[0]:
        raise ClientError("query parameter 'key' is required (once): the key or prefix "
                          "to watch")
    key = keys[0].encode("utf-8", "surrogateescape")
    range_end = (query.get("range_end") or [""])[-1].encode("utf-8", "surrogateescape")
    if len(query.get("range_end", [])) > 1:
        raise ClientError("query parameter 'range_end' is given more than once")
    if query_bool(query, "prefix"):
        if range_end:
            raise ClientError("give either prefix=true or range_end, not both")
        range_end = prefix_end(key)
    start = query_int(query, "start_revision", 0)
    if last_event_id is not None and last_event_id.strip():
        last = parse_decimal(last_event_id.strip())
        if last is None or last == MAX_INT64:
            raise ClientError(f"Last-Event-ID must be a revision, not {last_event_id!r}")
        start = last + 1
    keepalive = _keepalive(query)
    native: dict[str, Any] = {"key": key, "start_revision": start, "progress_notify": True}
    if range_end:
        native["range_end"] = range_end
    if query_bool(query, "prev_kv"):
        native["prev_kv"] = True
    return WatchQuery(native, keepalive)


def _keepalive(query: Mapping[str, list[str]]) -> float:
    values = query.get("keepalive") or []
    if not values:
        return DEFAULT_KEEPALIVE
    try:
        seconds = float(values[-1])
    except ValueError:
        seconds = math.nan
    if len(values) > 1 or not MIN_KEEPALIVE <= seconds <= MAX_KEEPALIVE:
        raise ClientError(f"query parameter 'keepalive' must be seconds in "
                          f"{MIN_KEEPALIVE:g}..{MAX_KEEPALIVE:g}, not {values!r}")
    return seconds


# ------------------------------------------------------------------------------ out


def encode_kv(kv: Mapping[str, Any]) -> dict[str, Any]:
    """A native key-value as JSON: text key and value, or both base64 with
    ``"encoding": "base64"`` when either is not UTF-8; ``lease`` (hex) only when set."""
    key, value = bytes(kv.get("key", b"")), bytes(kv.get("value", b""))
    out: dict[str, Any]
    try:
        out = {"key": key.decode("utf-8"), "value": value.decode("utf-8")}
    except UnicodeDecodeError:
        out = {"key": base64.b64encode(key).decode("ascii"),
               "value": base64.b64encode(value).decode("ascii"), "encoding": "base64"}
    for name in ("create_revision", "mod_revision", "version"):
        out[name] = int(kv.get(name) or 0)
    lease = int(kv.get("lease") or 0)
    if lease:
        out["lease"] = format_lease_id(lease)
    return out


def encode_event(event: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"type": event["type"], "kv": encode_kv(event["kv"])}
    if event.get("prev_kv") is not None:
        out["prev_kv"] = encode_kv(event["prev_kv"])
    return out


def sse_event(data: Mapping[str, Any], *, event: str | None = None, id: int | None = None
              ) -> bytes:
    """One SSE event. The data is one line: compact JSON escapes every newline."""
    head = (f"event: {event}\n" if event else "") + (f"id: {id}\n" if id is not None else "")
    return head.encode("ascii") + b"data: " + ej.dumps(data) + b"\n\n"


def created_event(frame: Mapping[str, Any]) -> bytes:
    """The first event: ``id`` is the revision before the watch's first one, so a client
    that loses the stream before any change still resumes from where it started."""
    revision = int(frame["header"]["revision"])
    return sse_event({"revision": revision}, event="created", id=revision)


def encode_frame(frame: Mapping[str, Any]) -> tuple[bytes, bool]:
    """A native watch frame (after ``created``) as SSE text, and whether the stream ends.

    Events: one SSE event per revision, ``id`` the revision, data
    ``{"revision", "events": [...]}``. Progress: ``event: progress`` with the revision as
    ``id``. Canceled: ``event: compacted`` (``{"compact_revision"}``) when the watch's start
    was compacted, else ``event: canceled`` (``{"error", "message"}``); both end the stream.
    """
    if frame.get("canceled"):
        compact = int(frame.get("compact_revision") or 0)
        if compact:
            return sse_event({"compact_revision": compact}, event="compacted"), True
        return canceled_event("canceled", str(frame.get("cancel_reason") or "canceled")), True
    events = frame.get("events") or ()
    if not events:
        if frame.get("progress"):
            revision = int(frame["header"]["revision"])
            return sse_event({"revision": revision}, event="progress", id=revision), False
        return b"", False
    out = bytearray()
    for revision, group in itertools.groupby(events, key=lambda e: int(e["kv"]["mod_revision"])):
        out += sse_event({"revision": revision, "events": [encode_event(e) for e in group]},
                         id=revision)
    return bytes(out), False


def canceled_event(code: str, message: str) -> bytes:
    """The end of a stream the member cut (an error, its leader gone): the client resumes
    from its last id, here or on another member."""
    return sse_event({"error": code, "message": message}, event="canceled")


__all__ = [
    "DEFAULT_KEEPALIVE",
    "HEADERS",
    "PING",
    "WATCH_PARAMS",
    "WatchQuery",
    "canceled_event",
    "created_event",
    "encode_event",
    "encode_frame",
    "encode_kv",
    "parse_watch_query",
    "sse_event",
]
