"""A connection's streams and the watch on top of them, in-process: a scripted member on the
far side of a fake byte stream answers exactly what each test says, so buffering, overflow,
ends, cancellation and resuming are checked frame by frame, under both anyio backends.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import cbor2
import pytest

from discoverd.sdk import ConnectionLost, WatchResponse
from discoverd.sdk._auth import TokenKeeper
from discoverd.sdk._connection import Connection, Endpoint, Stream
from discoverd.sdk._errors import StreamOverflow
from discoverd.sdk._watch import Watch
from discoverd.wire.framing import FrameDecoder, encode_frame

BACKENDS = ["trio", "asyncio"]


class FakeMember(anyio.abc.ByteStream):
    """The member's end of one connection: requests the client sends go to ``requests``,
    ``answer`` hands frames to the client's reader (several in one read when given
    together), ``hang_up`` ends the byte stream. A ``watch_cancel`` is answered at once."""

    def __init__(self) -> None:
        self._to_client, self._incoming = anyio.create_memory_object_stream[bytes | None](100)
        self._requests_in, self.requests = anyio.create_memory_object_stream[
            dict[str, Any]](100)
        self._decoder = FrameDecoder(1 << 20)

    def answer(self, *frames: dict[str, Any]) -> None:
        self._to_client.send_nowait(b"".join(encode_frame(cbor2.dumps(f)) for f in frames))

    def hang_up(self) -> None:
        self._to_client.send_nowait(None)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        data = await self._incoming.receive()
        if data is None:
            raise anyio.EndOfStream
        return data

    async def send(self, item: bytes) -> None:
        self._decoder.feed(item)
        while (payload := self._decoder.next_frame()) is not None:
            request = cbor2.loads(payload)
            if request["op"] == "watch_cancel":
                self.answer({"id": request["id"], "ok": {"header": header(0)}})
            self._requests_in.send_nowait(request)

    async def send_eof(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


def header(revision: int) -> dict[str, int]:
    return {"cluster_id": 1, "member_id": 2, "revision": revision, "raft_term": 3}


def events_frame(rid: int, *revisions: int, revision: int | None = None) -> dict[str, Any]:
    return {"id": rid, "ok": {
        "header": header(revision if revision is not None else max(revisions)),
        "watch_id": 7, "events": [
            {"type": "PUT", "kv": {"key": b"k%d" % r, "value": b"v", "create_revision": r,
                                   "mod_revision": r, "version": 1, "lease": 0}}
            for r in revisions]}}


def run(backend: str, body: Callable[[Connection, FakeMember, anyio.abc.TaskGroup],
                                     Awaitable[None]]) -> None:
    async def main() -> None:
        member = FakeMember()
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                conn = Connection(Endpoint("fake", 1), member, send_timeout=5.0,
                                  max_request_bytes=1 << 20)
                conn.start(tg)
                await body(conn, member, tg)
                conn.close()

    anyio.run(main, backend=backend)


async def open_stream(conn: Connection, member: FakeMember, buffer: int) -> Stream:
    stream = await conn.open_stream("watch", {"key": b"k"}, buffer=buffer)
    assert (await member.requests.receive())["id"] == stream.rid
    return stream


@pytest.mark.parametrize("backend", BACKENDS)
def test_frames_arrive_in_order_and_the_end_comes_after_them(backend: str) -> None:
    async def body(conn: Connection, member: FakeMember, tg: anyio.abc.TaskGroup) -> None:
        stream = await open_stream(conn, member, 10)
        rid = stream.rid
        member.answer(events_frame(rid, 1), events_frame(rid, 2), events_frame(rid, 3),
                      {"id": rid, "ok": {"header": header(3), "canceled": True}})
        await anyio.wait_all_tasks_blocked()
        assert conn.streams == 0  # the terminal frame ended it on the reader's side
        got = [await stream.receive() for _ in range(4)]
        assert [f["ok"]["header"]["revision"] for f in got] == [1, 2, 3, 3]
        with pytest.raises(anyio.EndOfStream):
            await stream.receive()
        with pytest.raises(anyio.EndOfStream):
            stream.receive_nowait()

    run(backend, body)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_full_buffer_ends_only_that_stream_after_what_it_holds(backend: str) -> None:
    async def body(conn: Connection, member: FakeMember, tg: anyio.abc.TaskGroup) -> None:
        slow = await open_stream(conn, member, 2)
        other = await open_stream(conn, member, 2)
        member.answer(*(events_frame(slow.rid, r) for r in (1, 2, 3, 4)),
                      events_frame(other.rid, 1))
        assert [(await slow.receive())["ok"]["header"]["revision"] for _ in range(2)] == [1, 2]
        with pytest.raises(StreamOverflow, match="fell more than 2 frames behind"):
            await slow.receive()
        assert (await other.receive())["ok"]["header"]["revision"] == 1
        assert conn.usable
        assert conn.streams == 1

    run(backend, body)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_broken_connection_fails_the_stream_after_its_frames(backend: str) -> None:
    async def body(conn: Connection, member: FakeMember, tg: anyio.abc.TaskGroup) -> None:
        stream = await open_stream(conn, member, 10)
        member.answer(events_frame(stream.rid, 1), events_frame(stream.rid, 2))
        member.hang_up()
        await anyio.wait_all_tasks_blocked()
        assert stream.receive_nowait() is not None
        assert (await stream.receive())["ok"]["header"]["revision"] == 2
        with pytest.raises(ConnectionLost):
            await stream.receive()

    run(backend, body)


@pytest.mark.parametrize("backend", BACKENDS)
def test_close_wakes_a_parked_receiver_and_later_frames_are_dropped(backend: str) -> None:
    async def body(conn: Connection, member: FakeMember, tg: anyio.abc.TaskGroup) -> None:
        stream = await open_stream(conn, member, 10)
        ended: list[BaseException] = []

        async def parked() -> None:
            try:
                await stream.receive()
            except anyio.EndOfStream as e:
                ended.append(e)

        tg.start_soon(parked)
        await anyio.wait_all_tasks_blocked()
        stream.close()
        await anyio.wait_all_tasks_blocked()
        assert len(ended) == 1
        assert conn.streams == 0
        member.answer(events_frame(stream.rid, 1))
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(anyio.EndOfStream):
            stream.receive_nowait()
        assert conn.usable

    run(backend, body)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_receive_cancelled_while_parked_loses_no_frame(backend: str) -> None:
    async def body(conn: Connection, member: FakeMember, tg: anyio.abc.TaskGroup) -> None:
        stream = await open_stream(conn, member, 10)
        with anyio.CancelScope() as scope:
            tg.start_soon(_cancel_when_blocked, scope)
            await stream.receive()
        assert scope.cancelled_caught
        member.answer(events_frame(stream.rid, 1))
        assert (await stream.receive())["ok"]["header"]["revision"] == 1

    run(backend, body)


async def _cancel_when_blocked(scope: anyio.CancelScope) -> None:
    await anyio.wait_all_tasks_blocked()
    scope.cancel()


# ----------------------------------------------------------------------------- the watch


class FakeClient:
    """What a ``Watch`` asks of its ``AsyncClient``: one connection, no auth."""

    command_timeout = 5.0

    def __init__(self, conn: Connection, tg: anyio.abc.TaskGroup) -> None:
        self.conn = conn
        self.tg = tg
        self.endpoint = conn.endpoint
        self.endpoints = [conn.endpoint]
        self._auth = TokenKeeper(None, None)
        self.moved_on = 0

    def _task_group(self) -> anyio.abc.TaskGroup:
        return self.tg

    async def _connect_current(self) -> Connection:
        return self.conn

    async def _authenticate_token(self) -> None:
        raise AssertionError("no auth here")

    def _learn(self, endpoint: Endpoint, ok: dict[str, Any]) -> None:
        pass

    def _move_on(self, conn: Connection, leader: int = 0) -> None:
        self.moved_on += 1


async def created(member: FakeMember, start: int,
                  request: dict[str, Any] | None = None) -> int:
    """Answer the (next) watch request: created, from ``start``; its stream id."""
    if request is None:
        request = await member.requests.receive()
    assert request["op"] == "watch"
    assert request.get("start_revision", 0) == start
    member.answer({"id": request["id"], "ok": {"header": header(max(start - 1, 0)),
                                               "watch_id": 7, "created": True,
                                               "progress_interval_ms": 0}})
    rid: int = request["id"]
    return rid


def revisions(resp: WatchResponse) -> list[int]:
    return [e.kv.mod_revision for e in resp.events]


@pytest.mark.parametrize("backend", BACKENDS)
def test_watch_skips_replayed_events_keeps_fresh_bookmarks_and_resumes_after_overflow(
    backend: str,
) -> None:
    async def body(conn: Connection, member: FakeMember, tg: anyio.abc.TaskGroup) -> None:
        client = FakeClient(conn, tg)
        watch = Watch(client, {"key": b"k"}, start_revision=5, buffer=2)  # type: ignore[arg-type]
        async with anyio.create_task_group() as setup:
            setup.start_soon(created, member, 5)
            await watch.__aenter__()
        rid = watch._stream.rid if watch._stream else 0
        member.answer(events_frame(rid, 5, 6), events_frame(rid, 4, 6, 7))
        assert revisions(await watch.__anext__()) == [5, 6]
        resp = await watch.__anext__()
        assert revisions(resp) == [7]
        assert watch.next_revision == 8
        # A bookmark at the delivered revision is passed on; one behind it is not.
        member.answer({"id": rid, "ok": {"header": header(5), "watch_id": 7, "events": [],
                                         "progress": True}},
                      {"id": rid, "ok": {"header": header(9), "watch_id": 7, "events": [],
                                         "progress": True}})
        resp = await watch.__anext__()
        assert resp.progress
        assert resp.revision == 9
        assert watch.next_revision == 10
        # Three frames into a buffer of two: the watch drops the stream and resumes from
        # the first revision it has not delivered; the member replays from there.
        member.answer(*(events_frame(rid, r) for r in (10, 11, 12)))
        await anyio.wait_all_tasks_blocked()
        assert revisions(await watch.__anext__()) == [10]

        async def resume() -> None:
            # The old stream's cancel goes in the background: either may come first.
            first, second = [await member.requests.receive() for _ in range(2)]
            cancel, again = (first, second) if first["op"] == "watch_cancel" else (
                second, first)
            assert cancel == {"id": cancel["id"], "op": "watch_cancel", "watch_id": 7}
            new = await created(member, 12, again)
            member.answer(events_frame(new, 11, 12, 13))

        tg.start_soon(resume)
        assert revisions(await watch.__anext__()) == [11]
        assert revisions(await watch.__anext__()) == [12, 13]
        assert watch.resumes == 1
        assert client.moved_on == 0
        await watch.aclose()

    run(backend, body)


@pytest.mark.parametrize("backend", BACKENDS)
def test_aclose_from_another_task_ends_a_parked_iteration(backend: str) -> None:
    async def body(conn: Connection, member: FakeMember, tg: anyio.abc.TaskGroup) -> None:
        client = FakeClient(conn, tg)
        watch = Watch(client, {"key": b"k"}, start_revision=1, buffer=8)  # type: ignore[arg-type]
        async with anyio.create_task_group() as setup:
            setup.start_soon(created, member, 1)
            await watch.__aenter__()
        seen: list[int] = []

        async def iterate() -> None:
            async for resp in watch:
                seen.extend(revisions(resp))
            seen.append(-1)  # the loop ended without an error

        async with anyio.create_task_group() as inner:
            inner.start_soon(iterate)
            member.answer(events_frame(watch._stream.rid if watch._stream else 0, 1))
            await anyio.wait_all_tasks_blocked()
            await watch.aclose()
        assert seen == [1, -1]
        cancel = await member.requests.receive()
        assert cancel["op"] == "watch_cancel"
        assert client.moved_on == 0
        assert conn.streams == 0
        assert conn.usable

    run(backend, body)
