"""Helpers for the tests of discoverd's own HTTP API (registry REST, SSE, status page): a
member of their own, and a Server-Sent Events reader on a raw socket that sees the stream
exactly as the member framed it."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway_helpers import BOUND, Stream

from discoverd.testing.cluster import MemberProcess, ProcessCluster


@contextlib.contextmanager
def own_member(root: Path, *extra: str) -> Iterator[MemberProcess]:
    """A single-member cluster of its own — these tests grant leases that expire on their own
    clock, which must not land in the middle of another module's "nothing changed" checks —
    checked afterwards as the shared one is: alive, no error escaped a handler."""
    with ProcessCluster(root, 1, extra_args=list(extra)).started() as cluster:
        (m,) = cluster.members
        yield m
        assert m.running, "the member died"
        log = m.log_text()
        assert "http handler failed" not in log, "a handler crashed"
        assert "client connection failed" not in log, "an error escaped a handler"


@dataclass
class SseEvent:
    event: str
    """``message`` when the event has no ``event:`` field (as EventSource names it)."""
    id: str | None
    data: str

    def json(self) -> Any:
        return json.loads(self.data)


class SseStream(Stream):
    """``GET path`` with ``headers``; then ``events()``/``next_event()`` parse the chunked
    body as the HTML standard's EventSource does (comments are kept apart, in ``comments``,
    so pings can be seen)."""

    def __init__(self, port: int, path: str, headers: dict[str, str] | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=BOUND)
        lines = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n{lines}\r\n".encode())
        self.buf = bytearray()
        self.status = 0
        self.headers = {}
        self.text = ""
        self.comments: list[str] = []
        self.ended = False

    def read_raw(self) -> bytes:
        """Whatever bytes arrive next, unparsed (what a client has when its connection
        drops in the middle of an event)."""
        while not self.buf:
            self._fill()
        return bytes(self.buf)

    def next_event(self) -> SseEvent | None:
        """The next complete event (None: the response ended)."""
        while "\n\n" not in self.text:
            if self.ended:
                return None
            chunk = self.chunk()
            if chunk is None:
                self.ended = True
                continue
            self.text += chunk.decode("utf-8")
        block, self.text = self.text.split("\n\n", 1)
        fields: dict[str, str] = {}
        data: list[str] = []
        for line in block.split("\n"):
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
            else:
                fields[name] = value
        if not fields and not data:
            return self.next_event()  # a block of comments only
        return SseEvent(fields.get("event", "message"), fields.get("id"), "\n".join(data))

    def until(self, predicate: Any, timeout: float = BOUND) -> list[SseEvent]:
        """Events up to and including the first one ``predicate`` accepts, within
        ``timeout`` seconds (a stream that keeps sending other events must not hang a
        test)."""
        deadline = time.monotonic() + timeout
        seen: list[SseEvent] = []
        while True:
            assert time.monotonic() < deadline, f"no such event within {timeout}s: {seen}"
            event = self.next_event()
            assert event is not None, f"the stream ended; saw {seen}"
            seen.append(event)
            if predicate(event):
                return seen
