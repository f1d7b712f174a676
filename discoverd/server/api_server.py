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
handlers answer once (bounded by the request timeout), each in its own task — unless the
op's *fast* handler (``FastHandler``) has the answer without waiting; *stream* handlers (a
watch) send any number of ``ok`` frames under the request's id with ``emit`` and end by
returning (or raising, which sends an ``err`` frame); they run until then or until the
connection closes, and do not count against the in-flight bound. Every handler gets the
``Connection`` it serves, for per-connection state (its watches).
"""

from __future__ import annotations

import ssl
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import cbor2
import structlog
import trio

from discoverd.errors import (
    AuthOldRevision,
    BadRequest,
    ClientError,
    DiscoverdError,
    RequestTimeout,
    TooManyStreams,
)
from discoverd.machine.auth import AUTH_REV_FIELD, AUTH_USER_FIELD
from discoverd.server.limits import BoundedWrites, TokenBucket
from discoverd.server.outbox import Outbox
from discoverd.server.tls import HANDSHAKE_TIMEOUT_SECONDS, handshake_failure, peer_common_name
from discoverd.wire.framing import FrameDecoder, FrameError, encode_frame

MAGIC = b"DSC1"


class Connection:
    """One client connection, as handlers see it: ``state`` holds what ops keep per
    connection (e.g. its watch ids); ``closing`` is set when it ends."""

    def __init__(self, number: int, *, cert_common_name: str | None = None) -> None:
        self.number = number
        self.state: dict[str, Any] = {}
        self.cert_common_name = cert_common_name
        """The CN of the client certificate verified at the TLS handshake (members with
        ``--client-cert-auth``), else None: the user name when auth is on, as in etcd."""
        self.streams = 0
        """Streams open now (``--max-concurrent-streams``)."""
        self.active = 0
        """Requests and streams being served now: the connection is not idle."""
        self.last_done = 0.0
        """When the last request or stream ended (trio time): idleness counts from it."""
        self.bucket: TokenBucket | None = None
        """The request-rate bucket (``--max-requests-per-second``), made on first use."""

    def __repr__(self) -> str:
        return f"<Connection {self.number}>"


Handler = Callable[[dict[str, Any], Connection], Awaitable[dict[str, Any]]]
Emit = Callable[[dict[str, Any]], Awaitable[None]]
"""A stream's way to send one ``ok`` body (a native frame, or an HTTP chunk)."""


class NativeEmit:
    """A native stream's ``Emit``: each body goes out as ``{"id": stream id, "ok": body}``.

    ``encoded`` also takes a body that is already CBOR: what lets the watch service encode
    each event once for all its watchers instead of once per watcher (wire/watch_frames.py).
    The HTTP gateway's emitters have no ``encoded`` and get maps.
    """

    __slots__ = ("_answer", "_prefix", "_put", "stream_id")

    def __init__(self, stream_id: int, answer: Callable[[dict[str, Any]], Awaitable[None]],
                 put_frame: Callable[[bytes], Awaitable[None]]) -> None:
        self.stream_id = stream_id
        self._answer = answer
        self._put = put_frame
        self._prefix = b"\xa2" + cbor2.dumps("id") + cbor2.dumps(stream_id) + cbor2.dumps("ok")

    async def __call__(self, body: dict[str, Any]) -> None:
        await self._answer({"id": self.stream_id, "ok": body})

    async def encoded(self, body: bytes) -> None:
        """Send ``body``, the CBOR encoding of an ``ok`` map."""
        await self._put(encode_frame(self._prefix + body))


FastHandler = Callable[[dict[str, Any], Connection], dict[str, Any] | None]
"""A unary op's synchronous path: its answer when it can be had without waiting (a lease
keep-alive on the primary, a serializable range), else None — and the op's ``Handler``
runs as usual. Served in the connection's reader without a task, a cancel scope or an
in-flight slot each: that machinery is ~20 µs of the ~170 µs a keep-alive costs the leader
(issue 12). Only while auth is off (the gate and its re-check stay on the one path)."""
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


def bad_request_body(exc: Exception) -> dict[str, Any]:
    """The ``err`` body for a request that could not be decoded or understood."""
    return {"code": "bad_request", "message": f"bad request: {exc}"}


class AuthGate(Protocol):
    """What ``ClientApi`` asks of the auth service (``server/auth_service.AuthService``)."""

    @property
    def store(self) -> Any: ...

    def gate(self, op: str, req: dict[str, Any], token: Any, conn: Connection
             ) -> tuple[Any, str | None]:
        """Judge ``op``: returns (what it needed, the user) or raises the refusal."""

    def recheck(self, what: Any, op: str, req: dict[str, Any], token: Any,
                conn: Connection, judged_at: int) -> None:
        """After a read ran: judge it again if the auth state moved meanwhile."""


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
        max_concurrent_streams: int = 1000,
        idle_timeout: float | None = None,
        write_timeout: float | None = None,
        max_requests_per_second: int = 0,
        auth: AuthGate | None = None,
        fast: dict[str, FastHandler] | None = None,
    ) -> None:
        self.ops = ops
        self.fast = fast or {}
        self.auth = auth
        """Judges every request when set (``server/auth_service.py``)."""
        self.on_request = on_request
        self.http = http
        # Bounded here rather than in the dispatch so the HTTP gateway's streams (which
        # run these handlers directly) count against the same per-connection limit.
        self.streams = {op: self._bounded_stream(h) for op, h in (streams or {}).items()}
        self.max_concurrent_streams = max_concurrent_streams
        self.idle_timeout = idle_timeout
        self.write_timeout = write_timeout
        self.max_requests_per_second = max_requests_per_second
        self.limit_refusals: Counter[str] = Counter()
        """Connections closed by a limit (``idle``, ``write_timeout``) and HTTP requests
        refused for their rate; requests refused with an error code are counted from their
        code by whoever observes ``on_request`` (the metrics)."""
        self._numbers = 0
        self.request_timeout = request_timeout
        self.max_request_bytes = max_request_bytes
        self.max_in_flight = max_in_flight
        self.log = log if log is not None else structlog.get_logger("api")
        self.connections = 0
        self.requests = 0
        self.errors = 0
        self.listeners: list[trio.SocketListener] = []
        self.tls_refused = 0
        """Client connections whose TLS handshake failed."""

    async def serve(
        self,
        listeners: list[trio.SocketListener],
        *,
        tls: list[ssl.SSLContext | None] | None = None,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """``tls``: per listener, the context of an https:// URL's, None for http://."""
        self.listeners = listeners
        contexts = tls or [None] * len(listeners)
        wrapped: list[trio.abc.Listener[trio.abc.Stream]] = [
            lst if ctx is None else trio.SSLListener(lst, ctx)
            for lst, ctx in zip(listeners, contexts, strict=True)]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._handle, wrapped)
            task_status.started(listeners)  # the sockets, as without TLS (bound ports)

    async def _handle(self, stream: trio.abc.Stream) -> None:
        self.connections += 1
        try:
            if isinstance(stream, trio.SSLStream) and not await self._tls_handshake(stream):
                return
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

    async def _tls_handshake(self, stream: trio.SSLStream[trio.SocketStream]) -> bool:
        """Complete the handshake before the DSC1/HTTP sniff, so both protocols run over
        TLS alike. A client that fails it (untrusted or expired certificate, none when one
        is required, plain text) loses its connection and is logged, nothing more."""
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT_SECONDS):
                await stream.do_handshake()
        except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError,
                OSError) as e:
            reason = ("no TLS handshake in time" if isinstance(e, trio.TooSlowError)
                      else handshake_failure(e))
            self.tls_refused += 1
            self.log.info("client TLS handshake failed", remote=_peer_address(stream),
                          reason=reason)
            return False
        return True

    async def _converse(self, stream: trio.abc.Stream) -> None:
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
            conn = Connection(self._numbers, cert_common_name=_cert_cn(stream))
            await self.http.serve(stream, head + rest, conn, self)
            return
        if head != MAGIC:
            body = b"this port speaks discoverd's native protocol (magic DSC1)\n"
            await stream.send_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n"
                b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            return
        limiter = trio.Semaphore(self.max_in_flight)
        self._numbers += 1
        conn = Connection(self._numbers, cert_common_name=_cert_cn(stream))
        conn.last_done = trio.current_time()
        outbox = Outbox(BoundedWrites(stream, self.write_timeout,
                                      lambda: self.closed_by("write_timeout", conn)))

        async def answer(frame: dict[str, Any]) -> None:
            await outbox.put(encode_frame(cbor2.dumps(frame)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(outbox.run)
            while True:
                try:
                    frame = decoder.next_frame()
                except FrameError as e:
                    await answer({"id": 0, "err": {
                        "code": "request_too_large" if e.too_large else "bad_frame",
                        "message": str(e)}})
                    await outbox.flush()
                    nursery.cancel_scope.cancel()
                    return
                if frame is None:
                    data = await self._receive(stream, conn)
                    if not data:
                        nursery.cancel_scope.cancel()
                        return
                    decoder.feed(data)
                    continue
                started = trio.current_time()
                self.requests += 1
                req = await self._admit_frame(frame, conn, answer, started)
                if req is None or await self._served_fast(req, conn, answer, started):
                    continue
                await limiter.acquire()
                nursery.start_soon(self._serve_one, req, conn, answer, outbox.put, limiter,
                                   started)

    async def _admit_frame(
        self, frame: bytes, conn: Connection,
        answer: Callable[[dict[str, Any]], Awaitable[None]], started: float,
    ) -> dict[str, Any] | None:
        """The request in ``frame``, checked (a map with a usable ``id`` and ``op``, within
        the connection's rate); else None, its error answered here."""
        rid: Any = 0
        try:
            req = cbor2.loads(frame)
            if not isinstance(req, dict):
                raise BadRequest("a request must be a cbor map")
            rid = req.get("id")
            if type(rid) is not int or rid < 0:
                raise ClientError("request 'id' must be a non-negative integer")
            self.check_rate(conn)  # before anything else is done for it
            if not isinstance(req.get("op"), str):
                raise ClientError("request 'op' must be a string")
            return req
        except DiscoverdError as e:
            await self._refuse(conn, answer, rid, e.code, error_body(e), started, "unknown")
        except (cbor2.CBORDecodeError, ValueError, TypeError, EOFError) as e:
            await self._refuse(conn, answer, rid, "bad_request", bad_request_body(e),
                               started, "unknown")
        return None

    async def _served_fast(
        self, req: dict[str, Any], conn: Connection,
        answer: Callable[[dict[str, Any]], Awaitable[None]], started: float,
    ) -> bool:
        """Whether ``req`` was answered by its op's ``FastHandler``."""
        op = req["op"]
        fast = self.fast.get(op)
        if fast is None or self.auth is not None:
            return False
        rid = req["id"]
        try:
            result = fast(req, conn)
        except DiscoverdError as e:
            await self._refuse(conn, answer, rid, e.code, error_body(e), started, op)
            return True
        except (ValueError, TypeError) as e:
            await self._refuse(conn, answer, rid, "bad_request", bad_request_body(e),
                               started, op)
            return True
        if result is None:
            return False
        await answer({"id": rid, "ok": result})
        self._done(conn, op, "ok", started)
        return True

    async def _refuse(self, conn: Connection,
                      answer: Callable[[dict[str, Any]], Awaitable[None]], rid: Any,
                      code: str, body: dict[str, Any], started: float, label: str) -> None:
        self.errors += 1
        await answer({"id": rid if type(rid) is int else 0, "err": body})
        self._done(conn, label, code, started)

    def _done(self, conn: Connection, label: str, code: str, started: float,
              timed: bool = True) -> None:
        now = conn.last_done = trio.current_time()
        if self.on_request is not None:
            self.on_request(label, code, now - started if timed else None)

    async def _serve_one(
        self,
        req: dict[str, Any],
        conn: Connection,
        answer: Callable[[dict[str, Any]], Awaitable[None]],
        put_frame: Callable[[bytes], Awaitable[None]],
        limiter: trio.Semaphore,
        started: float,
    ) -> None:
        """Serve one admitted request (``_admit_frame``) as its own task."""
        released = False
        op, rid = req["op"], req["id"]
        # A client's made-up op must not become a label value.
        label = op if op in self.ops or op in self.streams else "unknown"
        code, timed = "canceled", True  # what on_request will be told
        conn.active += 1
        try:
            try:
                stream = self.streams.get(op)
                if stream is not None:
                    timed = False
                    # A stream lives as long as the client wants it: it holds no in-flight
                    # slot and has no request timeout (its op bounds its own resources).
                    limiter.release()
                    released = True
                    await self.open_stream(op, req, conn, NativeEmit(rid, answer, put_frame))
                    code = "ok"
                    return
                result = await self.call(op, req, conn)
                code = "ok"
                await answer({"id": rid, "ok": result})
            except DiscoverdError as e:
                self.errors += 1
                code = e.code
                await answer({"id": rid, "err": error_body(e)})
            except (cbor2.CBORDecodeError, ValueError, TypeError, EOFError) as e:
                self.errors += 1
                code = "bad_request"
                await answer({"id": rid, "err": bad_request_body(e)})
        finally:
            conn.active -= 1
            if not released:
                limiter.release()
            self._done(conn, label, code, started, timed)

    async def call(self, op: str, req: dict[str, Any], conn: Connection) -> dict[str, Any]:
        """Run the unary op ``op`` as a request on ``conn``, bounded by the request timeout.
        The native path and the HTTP gateway both come through here, so an op behaves the
        same whichever protocol asked for it."""
        handler = self.ops.get(op)
        if handler is None:
            raise ClientError(f"unknown op {op!r}")
        req, token = _admit(req)
        with trio.move_on_after(self.request_timeout):
            for _ in range(AUTH_ATTEMPTS):
                what = self._judge(op, req, token, conn)
                try:
                    result = await handler(req, conn)
                except AuthOldRevision:
                    continue  # the auth state moved between judging and applying
                if self.auth is not None and what is not None:
                    self.auth.recheck(what, op, req, token, conn, req[AUTH_REV_FIELD])
                return result
            raise AuthOldRevision("the auth state kept changing while this request was "
                                  "judged; retry")
        raise RequestTimeout(
            f"no answer within {self.request_timeout:g}s; a write may still apply"
        )

    async def open_stream(self, op: str, req: dict[str, Any], conn: Connection,
                          emit: Emit) -> None:
        """Run the stream op ``op`` (native and HTTP alike), judged by the gate first."""
        handler = self.streams.get(op)
        if handler is None:
            raise ClientError(f"unknown stream op {op!r}")
        req, token = _admit(req)
        self._judge(op, req, token, conn)
        await handler(req, conn, emit)

    def _judge(self, op: str, req: dict[str, Any], token: Any, conn: Connection) -> Any:
        """Let the auth gate judge the request; stamp it with the auth revision judged at
        (and the user), which proposals carry into the log."""
        auth = self.auth
        if auth is None:
            return None
        req[AUTH_REV_FIELD] = auth.store.revision
        what, user = auth.gate(op, req, token, conn)
        if user is not None:
            req[AUTH_USER_FIELD] = user
        return what


    def check_rate(self, conn: Connection) -> None:
        """Spend one of ``conn``'s request tokens or raise ``TooManyRequests`` (with its
        ``retry_after``): one greedy client is slowed, the member and others are not."""
        if not self.max_requests_per_second:
            return
        now = trio.current_time()
        if conn.bucket is None:
            conn.bucket = TokenBucket(self.max_requests_per_second, now)
        conn.bucket.take(now)

    def _bounded_stream(self, handler: StreamHandler) -> StreamHandler:
        async def bounded(req: dict[str, Any], conn: Connection, emit: Emit) -> None:
            if conn.streams >= self.max_concurrent_streams:
                raise TooManyStreams(
                    f"this connection already has {conn.streams} streams open "
                    f"(--max-concurrent-streams {self.max_concurrent_streams})")
            conn.streams += 1
            try:
                await handler(req, conn, emit)
            finally:
                conn.streams -= 1
        return bounded

    async def _receive(self, stream: trio.abc.Stream, conn: Connection) -> bytes:
        """The next bytes from the client; b"" (as at EOF) once it has been idle — nothing received,
        nothing in flight, no stream open — for the idle timeout, so an abandoned
        connection does not hold its socket and buffers forever."""
        timeout = self.idle_timeout
        if timeout is None:
            return bytes(await stream.receive_some(65536))
        deadline = trio.current_time() + timeout
        while True:
            with trio.move_on_at(deadline):
                return bytes(await stream.receive_some(65536))
            now = trio.current_time()
            if conn.active:
                deadline = now + timeout  # busy: look again once it may have become idle
            elif now >= conn.last_done + timeout:
                self.closed_by("idle", conn)
                return b""
            else:
                deadline = conn.last_done + timeout

    def closed_by(self, limit: str, conn: Connection) -> None:
        """Count and log a connection ``limit`` ended (the HTTP front calls it too)."""
        self.limit_refusals[limit] += 1
        self.log.info("client connection closed by a limit", limit=limit,
                      connection=conn.number)


def _cert_cn(stream: trio.abc.Stream) -> str | None:
    """The verified client certificate's CN on a TLS connection; None otherwise."""
    if not isinstance(stream, trio.SSLStream):
        return None
    try:
        return peer_common_name(stream.getpeercert())
    except (AttributeError, ValueError):  # no handshake yet: no certificate to name
        return None


def _peer_address(stream: trio.SSLStream[trio.SocketStream]) -> str:
    try:
        host, port = stream.transport_stream.socket.getpeername()[:2]
    except (OSError, AttributeError, ValueError):
        return "?"
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


AUTH_ATTEMPTS = 5
"""Times a request is judged and run again when the auth state changed under it."""


def _admit(req: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """The request without its token and without any field a client may not set (those
    starting with ``_`` are the member's own, e.g. the auth revision a write was judged at),
    and the token."""
    token = req.get("token")
    if token is not None or any(k[:1] == "_" for k in req if isinstance(k, str)):
        req = {k: v for k, v in req.items()
               if k != "token" and not (isinstance(k, str) and k[:1] == "_")}
    return req, token


def stamp(req: dict[str, Any]) -> dict[str, Any]:
    """The member's own fields of a judged request, for a handler that builds its command
    itself (``{**fields, **stamp(req)}``)."""
    return {k: req[k] for k in (AUTH_REV_FIELD, AUTH_USER_FIELD) if k in req}


def _is_disconnect(exc: BaseException) -> bool:
    """True if ``exc`` (or every exception in the group) only says the peer went away."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_disconnect(e) for e in exc.exceptions)
    return isinstance(exc, trio.BrokenResourceError | trio.ClosedResourceError)

