"""``sdk._connection.Connection``'s writer against a scripted member on a real TCP socket
(127.0.0.1, a free port): the cases a real member cannot be made to show on demand — a peer
that stops reading, a frame still queued when its caller gives up.

The scripted member reads the magic, then frames; it answers each request ``{"id": n,
"ok": {"op": <op>}}``. While it is told not to read, the client's writes pile up in the
socket buffers until the writer's ``send`` blocks: that is how a queued-but-unsent frame is
made to exist.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import cbor2
import pytest

from discoverd.sdk import ConnectionLost
from discoverd.sdk._connection import Connection, Endpoint
from discoverd.wire.framing import FrameDecoder, encode_frame

BACKENDS = ["trio", "asyncio"]
BIG = b"x" * (16 * 1024 * 1024)  # more than the socket buffers hold (see serve)


class ScriptedMember:
    """Accepts one connection; reads (and answers) only while ``reading`` is set."""

    def __init__(self) -> None:
        self.reading = anyio.Event()
        self.ops: list[str] = []
        self.port = 0

    async def serve(self, tg: anyio.abc.TaskGroup) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        # A small, fixed receive buffer (inherited by the accepted socket; no autotuning):
        # what the kernel can absorb for a member that does not read stays far below BIG.
        listener.extra(anyio.abc.SocketAttribute.raw_socket).setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        tg.start_soon(listener.serve, self._handle)

    async def _handle(self, stream: anyio.abc.SocketStream) -> None:
        decoder = FrameDecoder(64 * 1024 * 1024)
        magic_seen = False
        async with stream:
            await self.reading.wait()
            while True:
                try:
                    data = await stream.receive(1 << 20)
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return
                if not magic_seen:
                    magic_seen = True
                    data = data[4:]
                decoder.feed(data)
                while (frame := decoder.next_frame()) is not None:
                    req = cbor2.loads(frame)
                    self.ops.append(req["op"])
                    await stream.send(encode_frame(cbor2.dumps(
                        {"id": req["id"], "ok": {"op": req["op"]}})))


def run(backend: str, body: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        with anyio.fail_after(30):
            await body()

    anyio.run(bounded, backend=backend)


async def _eventually(probe: Callable[[], bool]) -> None:
    while not probe():  # noqa: ASYNC110 -- internal state, no event to wait on; bounded
        await anyio.sleep(0.005)


async def _open(tg: anyio.abc.TaskGroup, member: ScriptedMember,
                send_timeout: float = 10.0) -> Connection:
    return await Connection.open(Endpoint("127.0.0.1", member.port), tg, dial_timeout=5.0,
                                 send_timeout=send_timeout, max_request_bytes=2 * len(BIG))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_request_given_up_before_it_was_sent_is_never_sent(backend: str) -> None:
    async def body() -> None:
        member = ScriptedMember()
        async with anyio.create_task_group() as tg:
            await member.serve(tg)
            conn = await _open(tg, member)
            answers: list[dict[str, Any]] = []

            async def big() -> None:
                answers.append(await conn.request("big", {"v": BIG}))

            tg.start_soon(big)
            await _eventually(lambda: conn.pending == 1 and not conn._outgoing)
            # The writer is stuck in send(): a new frame now waits in the queue.
            with anyio.CancelScope() as given_up:
                tg.start_soon(lambda: _cancel_when_queued(conn, given_up))
                await conn.request("given_up", {})
            assert given_up.cancelled_caught
            member.reading.set()
            assert (await conn.request("after", {}))["ok"] == {"op": "after"}
            await _eventually(lambda: len(answers) == 1)
            assert member.ops == ["big", "after"]
            conn.close()
            tg.cancel_scope.cancel()

    run(backend, body)


async def _cancel_when_queued(conn: Connection, scope: anyio.CancelScope) -> None:
    await _eventually(lambda: len(conn._outgoing) == 1)
    scope.cancel()


def test_a_member_that_stops_reading_costs_the_connection_within_the_send_timeout() -> None:
    """trio only: under asyncio, anyio's ``send`` returns once the transport has buffered
    the frame in user space, so no send ever waits on a member that stopped reading there;
    the request's own timeout (``command_timeout``) is what bounds such a call."""

    async def body() -> None:
        member = ScriptedMember()  # never reads
        async with anyio.create_task_group() as tg:
            await member.serve(tg)
            conn = await _open(tg, member, send_timeout=0.5)
            failures: list[ConnectionLost] = []

            async def request(value: bytes) -> None:
                try:
                    await conn.request("put", {"v": value})
                except ConnectionLost as e:
                    failures.append(e)

            tg.start_soon(request, BIG)
            await _eventually(lambda: conn.pending == 1 and not conn._outgoing)
            tg.start_soon(request, b"small")  # queued behind the stuck write
            start = anyio.current_time()
            await _eventually(lambda: len(failures) == 2)
            assert anyio.current_time() - start < 0.5 + 2.0
            assert conn.closed
            assert all("could not send a request within 0.5s" in str(e) for e in failures)
            assert sorted(e.request_sent for e in failures) == [False, True]  # queued: unsent
            with pytest.raises(ConnectionLost):
                await conn.open_stream("watch", {}, buffer=4)
            tg.cancel_scope.cancel()

    run("trio", body)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_stream_opener_returns_once_its_frame_is_written(backend: str) -> None:
    async def body() -> None:
        member = ScriptedMember()
        member.reading.set()
        async with anyio.create_task_group() as tg:
            await member.serve(tg)
            conn = await _open(tg, member)
            stream = await conn.open_stream("watch", {"key": b"k"}, buffer=4)
            assert not conn._outgoing
            assert (await stream.receive())["ok"] == {"op": "watch"}
            assert member.ops == ["watch"]
            conn.close()
            tg.cancel_scope.cancel()

    run(backend, body)
