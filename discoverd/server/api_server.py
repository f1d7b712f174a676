"""The client port: the native protocol (DESIGN §8) — magic ``DSC1``, then length-prefixed
cbor2 frames both ways, requests multiplexed by ``id`` and answered out of order.

Request ``{"id": int, "op": str, ...}``; answer ``{"id", "ok": {..., "header": {...}}}`` or
``{"id", "err": {"code", "message", "leader"?}}``. A malformed frame gets an error naming the
problem; a frame over ``--max-request-bytes`` gets an error and the connection is closed
(its remaining bytes cannot be trusted); nothing a client sends can stop the member.

Ops are a table (``Ops``) so later issues add theirs without touching the connection code.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import cbor2
import structlog
import trio

from discoverd.errors import BadRequest, ClientError, DiscoverdError, RequestTimeout
from discoverd.wire.framing import FrameDecoder, FrameError, encode_frame

MAGIC = b"DSC1"
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def error_body(exc: DiscoverdError) -> dict[str, Any]:
    body: dict[str, Any] = {"code": exc.code, "message": str(exc) or exc.code}
    leader = getattr(exc, "leader", 0)
    if leader:
        body["leader"] = leader
    return body


class ClientApi:
    """Serves ``ops`` on accepted client connections."""

    def __init__(
        self,
        ops: dict[str, Handler],
        *,
        max_request_bytes: int,
        log: Any = None,
        max_in_flight: int = 1024,
        request_timeout: float = 5.0,
    ) -> None:
        self.ops = ops
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
        if head != MAGIC:
            body = b"this port speaks discoverd's native protocol (magic DSC1)\n"
            await stream.send_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n"
                b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            return
        write_lock = trio.StrictFIFOLock()
        limiter = trio.Semaphore(self.max_in_flight)

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
                nursery.start_soon(self._serve_one, frame, answer, limiter)

    async def _serve_one(
        self,
        frame: bytes,
        answer: Callable[[dict[str, Any]], Awaitable[None]],
        limiter: trio.Semaphore,
    ) -> None:
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
                handler = self.ops.get(op)
                if handler is None:
                    raise ClientError(f"unknown op {op!r}")
                result = None
                with trio.move_on_after(self.request_timeout) as scope:
                    result = await handler(req)
                if scope.cancelled_caught:
                    raise RequestTimeout(
                        f"no answer within {self.request_timeout:g}s; a write may still apply"
                    )
                await answer({"id": rid, "ok": result})
            except DiscoverdError as e:
                self.errors += 1
                await answer({"id": rid if type(rid) is int else 0, "err": error_body(e)})
            except (cbor2.CBORDecodeError, ValueError, TypeError, EOFError) as e:
                self.errors += 1
                await answer({"id": rid if type(rid) is int else 0,
                              "err": {"code": "bad_request", "message": f"bad request: {e}"}})
        finally:
            limiter.release()


def _is_disconnect(exc: BaseException) -> bool:
    """True if ``exc`` (or every exception in the group) only says the peer went away."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_disconnect(e) for e in exc.exceptions)
    return isinstance(exc, trio.BrokenResourceError | trio.ClosedResourceError)

