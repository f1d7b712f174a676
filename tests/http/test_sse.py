"""``GET /v1/watch`` as Server-Sent Events against a real member: one event per revision with
the revision as id, resuming with ``Last-Event-ID`` after a dropped connection with no gap and
no duplicate while writes go on, pings when idle, progress ids, compaction, clean-up."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator

import pytest
from gateway_helpers import request
from rest_helpers import SseEvent, SseStream, own_member

from discoverd.testing.cluster import MemberProcess, NativeClient, wait_for


@pytest.fixture(scope="module")
def member(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MemberProcess]:
    with own_member(tmp_path_factory.mktemp("sse")) as m:
        yield m


@pytest.fixture(scope="module")
def chatty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MemberProcess]:
    """A member of its own for compaction (which would break other tests' history reads),
    with progress notifications every 100 ms instead of every 10 s."""
    with own_member(tmp_path_factory.mktemp("sse-compact"),
                    "--experimental-watch-progress-notify-interval", "100") as m:
        yield m


def revision_of(port: int) -> int:
    with NativeClient(port) as c:
        return int(c.status()["header"]["revision"])


def watch(port: int, query: str, last_event_id: int | None = None) -> SseStream:
    headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
    stream = SseStream(port, f"/v1/watch?{query}", headers)
    assert stream.head() == 200, stream.body()
    assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
    return stream


def test_events_one_per_revision(member: MemberProcess) -> None:
    port = member.client_port
    start = revision_of(port)
    with watch(port, "key=/sse/a/&prefix=true&prev_kv=true") as s:
        created = s.next_event()
        assert created is not None
        assert created.event == "created"
        assert created.id == str(start)
        assert created.json() == {"revision": start}
        with NativeClient(port) as c:
            r1 = c.put(b"/sse/a/one", b"1")
            c.put(b"/sse/elsewhere", b"x")  # not watched
            txn = c.call("txn", success=[
                {"request_put": {"key": b"/sse/a/one", "value": b"2"}},
                {"request_put": {"key": b"/sse/a/two", "value": b"\xff\xfe"}}])
            r3 = int(c.call("delete_range", key=b"/sse/a/one")["header"]["revision"])
        r2 = int(txn["header"]["revision"])
        events = [s.next_event() for _ in range(3)]
    assert [(e.event, e.id) for e in events if e] == [
        ("message", str(r1)), ("message", str(r2)), ("message", str(r3))]
    first, second, third = (e.json() for e in events if e)
    assert first == {"revision": r1, "events": [{"type": "PUT", "kv": {
        "key": "/sse/a/one", "value": "1", "create_revision": r1, "mod_revision": r1,
        "version": 1}}]}
    # a txn's changes are one event; a non-UTF-8 value comes as base64, saying so
    one, two = second["events"]
    assert one["kv"]["value"] == "2"
    assert one["prev_kv"]["value"] == "1"
    assert two["kv"]["encoding"] == "base64"
    assert base64.b64decode(two["kv"]["key"]) == b"/sse/a/two"
    assert base64.b64decode(two["kv"]["value"]) == b"\xff\xfe"
    assert third["events"][0]["type"] == "DELETE"
    assert third["events"][0]["kv"]["key"] == "/sse/a/one"


class Writer(threading.Thread):
    """Puts keys under a prefix, one revision each, until told to stop; records them."""

    def __init__(self, port: int, prefix: bytes) -> None:
        super().__init__(daemon=True)
        self.port, self.prefix = port, prefix
        self.revisions: list[int] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with NativeClient(self.port) as c:
                n = 0
                while not self.stop.is_set() or n < 5:
                    n += 1
                    self.revisions.append(c.put(self.prefix + b"%d" % (n % 7), b"%d" % n))
        except BaseException as e:  # reported by the test
            self.error = e


def read_ids(stream: SseStream, count: int) -> list[int]:
    """The ids of the next ``count`` change events."""
    out: list[int] = []

    def enough(event: SseEvent) -> bool:
        if event.event == "message":
            assert event.json()["revision"] == int(event.id or -1)
            out.append(int(event.id or -1))
        return len(out) >= count

    stream.until(enough)
    return out


def test_resume_with_last_event_id_has_no_gap_and_no_duplicate(member: MemberProcess
                                                                ) -> None:
    """The connection is cut three times mid-stream — once in the middle of an event's
    bytes — while a writer keeps writing; each reconnect sends the last id it saw. Together
    the four connections must see every revision the writer made, each exactly once."""
    port = member.client_port
    start = revision_of(port)
    writer = Writer(port, b"/sse/resume/")
    writer.start()
    seen: list[int] = []
    last: int | None = None
    try:
        for cut in range(3):
            query = f"key=/sse/resume/&prefix=true&start_revision={start + 1}"
            with watch(port, query, last) as s:
                created = s.next_event()
                assert created is not None
                assert created.event == "created"
                assert int(created.id or -1) == (last if last is not None else start)
                ids = read_ids(s, 15)
                if cut == 1:
                    # cut inside an event: bytes of the next one arrive, and are lost
                    assert s.read_raw()
            seen += ids
            last = ids[-1]
        writer.stop.set()
        writer.join(30)
        assert writer.error is None, writer.error
        final = writer.revisions[-1]
        with watch(port, "key=/sse/resume/&prefix=true", last) as s:
            while not seen or seen[-1] < final:
                seen += read_ids(s, 1)
    finally:
        writer.stop.set()
    assert seen == writer.revisions, (len(seen), len(writer.revisions))
    assert len(set(seen)) == len(seen)


def test_pings_when_idle_and_watchers_freed_on_disconnect(member: MemberProcess) -> None:
    port = member.client_port
    # streams closed by earlier tests may still be on their way out
    wait_for("no watchers", lambda: member.status()["watchers"] == 0, timeout=10)
    baseline = 0
    streams = [watch(port, "key=/sse/quiet/&prefix=true&keepalive=0.1") for _ in range(3)]
    for s in streams:
        created = s.next_event()
        assert created is not None
        assert created.event == "created"
        assert s.chunk() == b": ping\n\n"  # nothing happens under the prefix: a ping
    assert member.status()["watchers"] == baseline + 3
    for s in streams:
        s.close()
    wait_for("the closed streams' watchers to go",
             lambda: member.status()["watchers"] == baseline, timeout=10)


def test_progress_events_advance_the_resume_point(chatty: MemberProcess) -> None:
    port = chatty.client_port
    with watch(port, "key=/sse/idle/&prefix=true") as s:
        assert s.next_event() is not None  # created
        with NativeClient(port) as c:
            elsewhere = c.put(b"/sse/busy", b"x")
        progress = s.until(lambda e: e.event == "progress" and int(e.id or 0) >= elsewhere)
    last = progress[-1]
    assert all(e.event == "progress" for e in progress)
    assert last.json() == {"revision": int(last.id or 0)}
    # resuming from a progress id: nothing before it again, the next change next
    with watch(port, "key=/sse/idle/&prefix=true", int(last.id or 0)) as s:
        assert s.next_event() is not None
        with NativeClient(port) as c:
            r = c.put(b"/sse/idle/k", b"v")
        changes = s.until(lambda e: e.event == "message")
        assert changes[-1].id == str(r)


def test_compacted_resume_says_so_and_ends(chatty: MemberProcess) -> None:
    port = chatty.client_port
    with NativeClient(port) as c:
        first = c.put(b"/sse/old/k", b"1")
        c.put(b"/sse/old/k", b"2")
        compact = c.put(b"/sse/old/k", b"3")
        c.call("compact", revision=compact)
    with watch(port, "key=/sse/old/&prefix=true", first) as s:
        events: list[SseEvent] = []
        while (event := s.next_event()) is not None:
            events.append(event)
        assert s.ended
    assert [e.event for e in events] == ["created", "compacted"]
    assert events[1].json() == {"compact_revision": compact}
    assert events[1].id is None


@pytest.mark.parametrize(("query", "headers"), [
    ("", {}), ("key=", {}), ("key=a&prefix=true&range_end=b", {}), ("key=a&bogus=1", {}),
    ("key=a&start_revision=x", {}), ("key=a&keepalive=0", {}),
    ("key=a", {"Last-Event-ID": "abc"}), ("key=a&start_revision=%C2%B2", {}),
    ("key=a", {"Last-Event-ID": "\u00b2"}),
])
def test_bad_watch_requests_are_400(member: MemberProcess, query: str,
                                    headers: dict[str, str]) -> None:
    reply = request(member.client_port, "GET", f"/v1/watch?{query}", headers=headers)
    assert reply.status == 400, reply
    assert reply.json()["error"] == "invalid_argument"
