"""HTTP/1.1 on one client-port connection: h11 (sans-I/O) driven by trio.

One request at a time per connection (keep-alive; pipelined requests wait their turn), each
read whole — headers within ``header_timeout`` of their first byte, the body within
``body_timeout`` after the headers — and answered with a plain response or a chunked stream.

Bad input never reaches a handler and never costs more than its own connection: a request h11
cannot parse gets 400, headers over 16 KiB 431, a body over ``max_body_bytes`` 413 (without
reading it), a client too slow to send its request 408; each of those then closes the
connection, since its remaining bytes cannot be trusted. An unknown path gets 404, a known
path with the wrong method 405 (with ``Allow``), and the connection stays usable. Every
error body is JSON in etcd's gateway shape ``{"error","message","code"}``.

While a streaming response runs the server keeps reading the socket, so a client that goes
away (etcd3gw cancels a watch by closing its socket) ends the stream and frees what it held,
even when nothing is being sent.
"""

from __future__ import annotations

import contextlib
import math
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import h11
import structlog
import trio

from discoverd.errors import DiscoverdError, TooManyRequests
from discoverd.server.api_server import ClientApi, Connection, error_body
from discoverd.server.http.router import (
    GatewayContext,
    HttpRequest,
    HttpResponse,
    MetricsSource,
    Router,
    StreamingResponse,
)
from discoverd.server.limits import BoundedWrites
from discoverd.wire import rest_json
from discoverd.wire.etcd_json import GrpcCode, error_response, plain_error
from discoverd.wire.etcd_json import dumps as json_dumps

MAX_HEADER_BYTES = 16 * 1024
BODY_SLACK_BYTES = 64 * 1024
PIPELINE_BUFFER_BYTES = 64 * 1024
"""How much of a next, pipelined request is buffered while a stream is being sent; past
that the server stops reading until the stream ends."""

LINGER_SECONDS = 2.0
LINGER_BYTES = 8 * 1024 * 1024
"""After refusing a request: how long, and how much, the server keeps reading and dropping
what the client still sends before closing (see ``_linger``)."""

JSON = ("content-type", "application/json")

_ERROR_CODES = {400: GrpcCode.INVALID_ARGUMENT, 404: GrpcCode.NOT_FOUND,
                405: GrpcCode.UNIMPLEMENTED, 408: GrpcCode.DEADLINE_EXCEEDED,
                413: GrpcCode.RESOURCE_EXHAUSTED, 431: GrpcCode.RESOURCE_EXHAUSTED,
                500: GrpcCode.INTERNAL}


def body_limit(max_request_bytes: int) -> int:
    """The largest HTTP body accepted for a member whose native limit is
    ``max_request_bytes``: base64 makes bytes 4/3 longer and JSON adds field names and
    quotes, so every request the native protocol accepts fits; the decoded request is then
    held to ``max_request_bytes`` exactly as a native frame is (``GatewayContext``)."""
    return math.ceil(max_request_bytes * 4 / 3) + BODY_SLACK_BYTES


def error(status: int, message: str, headers: list[tuple[str, str]] | None = None
          ) -> HttpResponse:
    grpc = _ERROR_CODES.get(status, GrpcCode.UNKNOWN)
    return HttpResponse(status, plain_error(grpc, message), [JSON, *(headers or [])])


class _Timeout(Exception):
    pass


class _Refused(Exception):
    """The request cannot be served and the connection must close after this answer."""

    def __init__(self, response: HttpResponse) -> None:
        super().__init__(response.status)
        self.response = response


class HttpServer:
    """Serves ``router`` on connections ``ClientApi`` hands over (``HttpFront``)."""

    def __init__(
        self,
        router: Router,
        *,
        metrics: MetricsSource | None = None,
        header_timeout: float = 10.0,
        body_timeout: float = 10.0,
        idle_timeout: float = 60.0,
        log: Any = None,
    ) -> None:
        self.router = router
        self.metrics = metrics
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.idle_timeout = idle_timeout
        self.log = log if log is not None else structlog.get_logger("http")
        self.requests = 0
        self.refused = 0

    async def serve(
        self, stream: trio.abc.Stream, data: bytes, conn: Connection, api: ClientApi
    ) -> None:
        h = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        h.receive_data(bytes(data))
        max_body = body_limit(api.max_request_bytes)
        # A client that stops reading must not hold this task (and a watch's resources).
        stream = BoundedWrites(stream, api.write_timeout,
                               lambda: api.closed_by("write_timeout", conn))
        while True:
            try:
                request = await self._read_request(h, stream, conn, max_body)
            except _Refused as r:
                self.refused += 1
                await self._send_refusal(h, stream, r.response)
                await _linger(stream)
                return
            if request is None:  # the client closed (or idled out) between requests
                if h.their_state is not h11.CLOSED:
                    api.closed_by("idle", conn)
                return
            self.requests += 1
            try:
                api.check_rate(conn)
            except TooManyRequests as e:
                api.limit_refusals["rate"] += 1
                await self._send_whole(h, stream, _rate_refusal(request.path, e),
                                       head_only=request.method == "HEAD")
                keep_open = True
            else:
                keep_open = await self._respond(h, stream, request, api)
            if not keep_open or h.our_state is not h11.DONE or h.their_state is not h11.DONE:
                return
            h.start_next_cycle()

    # ------------------------------------------------------------------ reading

    async def _receive(self, h: h11.Connection, stream: trio.abc.Stream, deadline: float,
                       ) -> Any:
        """The next h11 event, reading as needed until ``deadline``."""
        while True:
            event = h.next_event()
            if event is not h11.NEED_DATA:
                return event
            with trio.move_on_at(deadline):
                data = await stream.receive_some(65536)
                h.receive_data(bytes(data))
                continue
            raise _Timeout

    async def _read_request(
        self, h: h11.Connection, stream: trio.abc.Stream, conn: Connection, max_body: int,
    ) -> HttpRequest | None:
        try:
            head = await self._read_head(h, stream)
            if head is None:
                return None
            length = _content_length(head)
            if length is not None and length > max_body:
                raise _Refused(error(413, f"request body of {length} bytes is over the "
                                          f"limit of {max_body} bytes"))
            method = head.method.decode("latin-1").upper()
            try:
                parts = urlsplit(head.target.decode("latin-1"))
            except ValueError as e:  # e.g. "//[": an invalid IPv6 authority
                raise _Refused(error(400, f"malformed request target: {e}")) from None
            path = unquote(parts.path or "/", errors="replace")
            if h.they_are_waiting_for_100_continue:
                refusal = self._routing_error(method, path)
                if refusal is not None:
                    raise _Refused(refusal)  # a final answer instead of "100 Continue"
                await stream.send_all(h.send(h11.InformationalResponse(status_code=100,
                                                                       headers=[])) or b"")
            body = await self._read_body(h, stream, max_body)
        except h11.RemoteProtocolError as e:
            status = e.error_status_hint if 400 <= e.error_status_hint < 500 else 400
            raise _Refused(error(status, f"malformed HTTP request: {e}")) from None
        headers: dict[str, str] = {}
        for name, value in head.headers:
            key = name.decode("latin-1")
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        return HttpRequest(
            method=method, path=path,
            query=parse_qs(parts.query, keep_blank_values=True, errors="replace"),
            headers=headers, body=body, conn=conn,
        )

    def _routing_error(self, method: str, path: str) -> HttpResponse | None:
        """404 or 405 if no handler serves ``method`` on ``path``."""
        route = self.router.resolve(method, path)
        if route.handler is not None:
            return None
        if route.allowed:
            return error(405, f"method {method} not allowed on {path}",
                         [("allow", ", ".join(route.allowed))])
        return error(404, f"no such path: {path}")

    async def _read_head(self, h: h11.Connection, stream: trio.abc.Stream
                         ) -> h11.Request | None:
        """The request line and headers. The idle timeout runs until the request's first
        byte; from then on, the header timeout (a client that sends half a header and
        stalls holds nothing for long)."""
        now = trio.current_time()
        deadline = now + (self.header_timeout if h.trailing_data[0] else self.idle_timeout)
        started = bool(h.trailing_data[0])
        while True:
            event = h.next_event()
            if isinstance(event, h11.Request):
                return event
            if isinstance(event, h11.ConnectionClosed):
                return None
            if event is not h11.NEED_DATA:  # PAUSED cannot happen here; be safe
                raise _Refused(error(400, "unexpected data"))
            data = b""
            with trio.move_on_at(deadline) as scope:
                data = bytes(await stream.receive_some(65536))
            if scope.cancelled_caught:
                if not started:
                    return None
                raise _Refused(error(408, f"request headers not received within "
                                          f"{self.header_timeout:g}s"))
            if data and not started:
                started = True
                deadline = min(deadline, trio.current_time() + self.header_timeout)
            h.receive_data(bytes(data))

    async def _read_body(self, h: h11.Connection, stream: trio.abc.Stream, max_body: int
                         ) -> bytes:
        deadline = trio.current_time() + self.body_timeout
        parts: list[bytes] = []
        size = 0
        while True:
            try:
                event = await self._receive(h, stream, deadline)
            except _Timeout:
                raise _Refused(error(408, f"request body not received within "
                                          f"{self.body_timeout:g}s")) from None
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > max_body:
                    raise _Refused(error(413, f"request body is over the limit of "
                                              f"{max_body} bytes"))
                parts.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(parts)
            else:  # ConnectionClosed mid-body: h11 raises for that; anything else is odd
                raise _Refused(error(400, "request body ended early"))

    # ------------------------------------------------------------------ answering

    async def _respond(self, h: h11.Connection, stream: trio.abc.Stream, req: HttpRequest,
                       api: ClientApi) -> bool:
        """Run the handler and send its answer; False if the connection must close."""
        route = self.router.resolve(req.method, req.path)
        head_only = req.method == "HEAD"
        async with trio.open_nursery() as nursery:
            ctx = GatewayContext(api, req.conn, nursery=nursery, metrics=self.metrics,
                                 authorization=req.headers.get("authorization"))
            resp: HttpResponse | StreamingResponse
            if route.handler is None:
                resp = self._routing_error(req.method, req.path) or error(404, "no route")
            else:
                resp = await self._run_handler(route.handler, req, ctx)
            try:
                if isinstance(resp, StreamingResponse):
                    keep_open = await self._send_stream(h, stream, resp, head_only)
                else:
                    await self._send_whole(h, stream, resp, head_only)
                    keep_open = True
            finally:
                nursery.cancel_scope.cancel()  # whatever the handler left running
        self.log.debug("http request", method=req.method, path=req.path, status=resp.status)
        return keep_open

    async def _run_handler(self, handler: Any, req: HttpRequest, ctx: GatewayContext
                           ) -> HttpResponse | StreamingResponse:
        try:
            resp: HttpResponse | StreamingResponse = await handler(req, ctx)
        except DiscoverdError as e:  # handlers map their own; this is the safety net
            status, body = error_response(error_body(e))
            return HttpResponse(status, json_dumps(body), [JSON])
        except Exception:
            # A bug in one handler costs one request, never the member.
            self.log.exception("http handler failed", method=req.method, path=req.path)
            return error(500, "internal error")
        return resp

    async def _send_whole(self, h: h11.Connection, stream: trio.abc.Stream,
                          resp: HttpResponse, head_only: bool) -> None:
        headers = [*resp.headers, ("content-length", str(len(resp.body)))]
        out = h.send(h11.Response(status_code=resp.status, headers=_encode(headers),
                                reason=_reason(resp.status))) or b""
        if resp.body and not head_only:
            out += h.send(h11.Data(data=resp.body)) or b""
        out += h.send(h11.EndOfMessage()) or b""
        await stream.send_all(out)

    async def _send_refusal(self, h: h11.Connection, stream: trio.abc.Stream,
                            resp: HttpResponse) -> None:
        if h.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        resp.headers.append(("connection", "close"))
        try:
            await self._send_whole(h, stream, resp, head_only=False)
        except h11.LocalProtocolError:
            pass  # h11 will not frame an answer here: closing says enough
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _send_stream(self, h: h11.Connection, stream: trio.abc.Stream,
                           resp: StreamingResponse, head_only: bool) -> bool:
        """Headers, then one HTTP chunk per item, each flushed at once; stops early (and
        returns False) when the client goes away."""
        await stream.send_all(
            h.send(h11.Response(status_code=resp.status, headers=_encode(resp.headers),
                         reason=_reason(resp.status))) or b"")
        if head_only:
            await stream.send_all(h.send(h11.EndOfMessage()) or b"")
            return True
        gone = trio.Event()
        chunks = resp.chunks()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_client, h, stream, gone, nursery.cancel_scope)
                async for chunk in chunks:
                    if chunk:
                        await stream.send_all(h.send(h11.Data(data=chunk)) or b"")
                await stream.send_all(h.send(h11.EndOfMessage()) or b"")
                nursery.cancel_scope.cancel()
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await aclose()
        return not gone.is_set()

    async def _watch_client(self, h: h11.Connection, stream: trio.abc.Stream,
                            gone: trio.Event, scope: trio.CancelScope) -> None:
        """Read while a stream is sent: EOF or a reset means the client left; bytes are a
        pipelined next request, buffered in h11 (up to a bound) for after the stream."""
        buffered = 0
        while buffered < PIPELINE_BUFFER_BYTES:
            try:
                data = await stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                gone.set()
                scope.cancel()
                return
            buffered += len(data)
            h.receive_data(bytes(data))
        await trio.sleep_forever()


def _rate_refusal(path: str, exc: TooManyRequests) -> HttpResponse:
    """429 with ``Retry-After`` (whole seconds, as HTTP has them) and the error body of
    the API asked: etcd's shape for the gateway, discoverd's for ``/v1``."""
    mapping = rest_json.error_response if path.startswith("/v1") else error_response
    _, body = mapping(error_body(exc))
    retry = max(1, math.ceil(exc.retry_after))
    return HttpResponse(429, json_dumps(body), [JSON, ("retry-after", str(retry))])


async def _linger(stream: trio.abc.Stream) -> None:
    """After a refusal, close our side but keep reading (and dropping) what the client is
    still sending, for a bounded time: closing a socket with unread bytes makes the kernel
    send a reset, which can destroy the answer before the client reads it — a client still
    uploading an oversized body would see "connection reset" instead of 413."""
    if isinstance(stream, trio.abc.HalfCloseableStream):
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_eof()
    drained = 0
    with trio.move_on_after(LINGER_SECONDS), contextlib.suppress(
            trio.BrokenResourceError, trio.ClosedResourceError):
        while drained < LINGER_BYTES:
            data = await stream.receive_some(65536)
            if not data:
                return
            drained += len(data)


def _content_length(req: h11.Request) -> int | None:
    for name, value in req.headers:
        if name == b"content-length":
            return int(value)  # h11 has validated it
    return None


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


def _encode(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
