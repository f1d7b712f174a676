"""The client port: the native protocol (DESIGN §8) — magic ``DSC1``, then length-prefixed
cbor2 frames both ways, requests multiplexed by ``id`` and answered out of order.

Request ``{"id": int, "op": str, ...}``; answer ``{"id", "ok": {..., "header": {...}}}`` or
``{"id", "err": {"code", "message", "leader"?}}``. A malformed frame gets an error naming the
problem; a frame over ``--max-request-bytes`` gets an error and the connection is closed
(its remaining bytes cannot be trusted); nothing a client sends can stop the member.

A connection whose first four bytes are not ``DSC1`` is handed, bytes read so far
included, to the HTTP front (``server/http/``: etcd's JSON gateway and discoverd's REST API)
when the member has one; without one it gets an HTTP 400 saying what this port speaks.

Ops are tables so later issues add theirs without touching the connection code: *unary*
handlers answer once (bounded by the request timeout); *stream* handlers (a watch) send any
number of ``ok`` frames under the request's id with ``emit`` and end by returning (or raising,
which sends an ``err`` frame); they run until then or until the connection closes, and do
not count against the in-flight bound. Every handler gets the ``Connection`` it serves, for
per-connection state (its watches).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import cbor2
import structlog
import trio

from discoverd.errors import BadRequest, ClientError, DiscoverdError, RequestTimeout
from discoverd.wire.framing import FrameDecoder, FrameError, encode_frame

MAGIC = b"DSC1"


class Connection:
    """One client connection, as handlers see it: ``state`` holds what ops keep per
    connection (e.g. its watch ids); ``closing`` is set when it ends."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.state: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"<Connection {self.number}>"


Handler = Callable[[dict[str, Any], Connection], Awaitable[dict[str, Any]]]
Emit = Callable[[dict[str, Any]], Awaitable[None]]
StreamHandler = Callable[[dict[str, Any], Connection, Emit], Awaitable[None]]
RequestHook = Callable[[str, str, float | None], None]
"""Told ``(op, code, seconds)`` as each request ends (the metrics): ``op`` is a known op or
"unknown", ``code`` "ok", an error code, or "canceled" (the connection went away first);
``seconds`` is None for a stream, whose length is its client's choice, not a latency."""


class HttpFront(Protocol):
    """Serves a client connection that turned out to be HTTP (``server/http/``)."""

    async def serve(
        self, stream: trio.abc.Stream, data: bytes, conn: Connection, api: ClientApi
    ) -> None:
        """``data``: the bytes already read from ``stream`` (the request's start)."""


def error_body(exc: DiscoverdError) -> dict[str, Any]:
    body: dict[str, Any] = {"code": exc.code, "message": str(exc) or exc.code}
    leader = getattr(exc, "leader", 0)
    if leader:
        body["leader"] = leader
    body.update(exc.details())  # e.g. a validation_failed's violations
    return body


class ClientApi:
    """Serves ``ops`` on accepted client connections."""

    def __init__(
        self,
        ops: dict[str, Handler],
        *,
        streams: dict[str, StreamHandler] | None = None,
        max_request_bytes: int,
        log: Any = None,
        max_in_flight: int = 1024,
        request_timeout: float = 5.0,
        http: HttpFront | None = None,
        on_request: RequestHook | None = None,
    ) -> None:
        self.ops = ops
        self.on_request = on_request
        self.http = http
        self.streams = streams or {}
        self._numbers = 0
        self.request_timeout = request_timeout
        self.max_request_bytes = max_request_bytes
        self.max_in_flight = max_in_flight
        self.log = log if log is not None else structlog.get_logger("api")
        self.connections = 0
        self.requests = 0
        self.errors = 0
        self.listeners: list[trio.SocketListener] = []

    async def serve(
        self,
        listeners: list[trio.SocketListener],
        *,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self.listeners = listeners
        await trio.serve_listeners(self._handle, listeners, task_status=task_status)

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        try:
            await self._converse(stream)
        except Exception as exc:
            # A client that went away (closed or reset the connection) is normal; it arrives
            # wrapped in an ExceptionGroup when a read or write in _converse's nursery saw it.
            if not _is_disconnect(exc):
                # A bug in serving one connection must cost that connection only.
                self.log.exception("client connection failed")
        finally:
            self.connections -= 1
            await trio.aclose_forcefully(stream)

    async def _converse(self, stream: trio.SocketStream) -> None:
        # The limit is on the request itself (the frame's payload), as docs/protocol.md and
        # the SDK's local check (len(body) > max_request_bytes) say: no slack.
        decoder = FrameDecoder(self.max_request_bytes)
        with trio.move_on_after(10):
            while decoder.buffered < len(MAGIC):
                data = await stream.receive_some(65536)
                if not data:
                    return
                decoder.feed(data)
        head = decoder.read_raw(len(MAGIC))
        if head is None:
            return  # four bytes did not come in time: nothing to answer
        if head != MAGIC and self.http is not None:
            self._numbers += 1
            rest = decoder.read_raw(decoder.buffered) or b""
            await self.http.serve(stream, head + rest, Connection(self._numbers), self)
            return
        if head != MAGIC:
            body = b"this port speaks discoverd's native protocol (magic DSC1)\n"
            await stream.send_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n"
                b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            return
        write_lock = trio.StrictFIFOLock()
        limiter = trio.Semaphore(self.max_in_flight)
        self._numbers += 1
        conn = Connection(self._numbers)

        async def answer(frame: dict[str, Any]) -> None:
            payload = encode_frame(cbor2.dumps(frame))
            async with write_lock:
                await stream.send_all(payload)

        async with trio.open_nursery() as nursery:
            while True:
                try:
                    frame = decoder.next_frame()
                except FrameError as e:
                    await answer({"id": 0, "err": {
                        "code": "request_too_large" if e.too_large else "bad_frame",
                        "message": str(e)}})
                    nursery.cancel_scope.cancel()
                    return
                if frame is None:
                    data = await stream.receive_some(65536)
                    if not data:
                        nursery.cancel_scope.cancel()
                        return
                    decoder.feed(data)
                    continue
                await limiter.acquire()
                nursery.start_soon(self._serve_one, frame, conn, answer, limiter)

    async def _serve_one(
        self,
        frame: bytes,
        conn: Connection,
        answer: Callable[[dict[str, Any]], Awaitable[None]],
        limiter: trio.Semaphore,
    ) -> None:
        released = False
        started = trio.current_time()
        label, code, timed = "unknown", "canceled", True  # what on_request will be told
        try:
            self.requests += 1
            rid: Any = 0
            try:
                req = cbor2.loads(frame)
                if not isinstance(req, dict):
                    raise BadRequest("a request must be a cbor map")
                rid = req.get("id")
                if type(rid) is not int or rid < 0:
                    raise ClientError("request 'id' must be a non-negative integer")
                op = req.get("op")
                if not isinstance(op, str):
                    raise ClientError("request 'op' must be a string")
                if op in self.ops or op in self.streams:
                    label = op  # a client's made-up op must not become a label value
                stream = self.streams.get(op)
                if stream is not None:
                    timed = False
                    # A stream lives as long as the client wants it: it holds no in-flight
                    # slot and has no request timeout (its op bounds its own resources).
                    limiter.release()
                    released = True
                    stream_id = rid

                    async def emit(body: dict[str, Any]) -> None:
                        await answer({"id": stream_id, "ok": body})

                    await stream(req, conn, emit)
                    code = "ok"
                    return
                result = await self.call(op, req, conn)
                code = "ok"
                await answer({"id": rid, "ok": result})
            except DiscoverdError as e:
                self.errors += 1
                code = e.code
                await answer({"id": rid if type(rid) is int else 0, "err": error_body(e)})
            except (cbor2.CBORDecodeError, ValueError, TypeError, EOFError) as e:
                self.errors += 1
                code = "bad_request"
                await answer({"id": rid if type(rid) is int else 0,
                              "err": {"code": "bad_request", "message": f"bad request: {e}"}})
        finally:
            if not released:
                limiter.release()
            if self.on_request is not None:
                self.on_request(label, code, trio.current_time() - started if timed else None)

    async def call(self, op: str, req: dict[str, Any], conn: Connection) -> dict[str, Any]:
        """Run the unary op ``op`` as a request on ``conn``, bounded by the request timeout.
        The native path and the HTTP gateway both come through here, so an op behaves the
        same whichever protocol asked for it."""
        handler = self.ops.get(op)
        if handler is None:
            raise ClientError(f"unknown op {op!r}")
        with trio.move_on_after(self.request_timeout):
            return await handler(req, conn)
        raise RequestTimeout(
            f"no answer within {self.request_timeout:g}s; a write may still apply"
        )


def _is_disconnect(exc: BaseException) -> bool:
    """True if ``exc`` (or every exception in the group) only says the peer went away."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_disconnect(e) for e in exc.exceptions)
    return isinstance(exc, trio.BrokenResourceError | trio.ClosedResourceError)

