"""One multiplexed connection to one member's client port (docs/protocol.md).

The client sends the magic ``DSC1`` and then length-prefixed cbor2 frames. Any number of
requests are in flight at once (pipelined): each gets a fresh id, registers a slot in
``_pending`` and waits on it; a single reader task decodes answers and hands each to the slot
with its id. The design keeps three promises:

* **Cancellation-safe.** A caller cancelled while waiting only removes its slot; when its
  answer arrives later the reader finds no slot and drops it, and the connection stays usable
  for everyone else. A frame is written whole or not at all — the write is shielded from the
  caller's cancellation (and bounded by its own timeout, after which the connection is
  useless and closed) — because half a frame would desynchronise the stream for every other
  request. Frames go out through one writer task per connection: a request queues its frame
  and waits for its answer, and the writer sends whatever queued meanwhile in one write. That
  keeps frames whole without a lock and a shielded, timed send per request (most of a small
  request's client CPU under anyio) and coalesces the frames of concurrent requests. A frame
  whose caller gave up before the writer took it is never sent.
* **Failure is total and typed.** When the connection breaks (EOF, reset, a frame we cannot
  parse) every pending request fails with ``ConnectionLost``, which records whether that
  request's frame had been handed to the network; the caller uses that to decide whether a
  write can be retried.
* **Retire, don't cut.** ``retire`` stops new requests but lets the ones in flight finish, so
  moving the client to another member does not turn concurrent writes into "outcome unknown".
  Open streams count as in flight: a watch keeps its retired connection until it ends.

**Streams** (a watch, a snapshot) are requests answered by many frames with one id, until a
frame with ``canceled: true`` (a watch) or ``done: true`` (a snapshot), or an ``err`` frame.
The reader appends each frame to the stream's bounded buffer (``Stream._deliver``): it
never waits for a consumer, because one application that stops reading a watch must not
stall every other answer on the connection. If a stream's buffer is full, the reader ends
that stream alone with ``StreamOverflow`` (after the frames already buffered); the watch
then re-creates it from the last revision it delivered, so a slow consumer costs a replay
from history, never a lost event.

Only anyio is used, so the same code runs under trio and asyncio.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import cbor2
from anyio.streams.tls import TLSStream

from discoverd.errors import ClientError, RequestTooLarge, Unavailable
from discoverd.sdk._errors import ConnectionLost, StreamOverflow
from discoverd.sdk._tls import TlsFiles, tls_failure
from discoverd.wire.framing import FrameDecoder, FrameError, encode_frame

MAGIC = b"DSC1"
DEFAULT_PORT = 2379
DEFAULT_MAX_REQUEST_BYTES = 1536 * 1024
"""A member's default ``--max-request-bytes``; bigger requests are refused before sending,
because the member would answer with id 0 and close the connection under every request."""

MAX_ANSWER_BYTES = 512 * 1024 * 1024
"""Answers larger than this break the connection: it bounds what a garbled length prefix can
make us buffer, while staying far above any answer a member sends."""

_READ_CHUNK = 65536


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A member's client address; ``tls``: given as ``https://`` (dialled over TLS even
    without TLS files). Not part of equality: one member is one endpoint."""

    host: str
    port: int
    tls: bool = field(default=False, compare=False)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_endpoint(text: str) -> Endpoint:
    """``host:port``, ``http(s)://host:port[/]``, ``[v6]:port`` or a bare host (port
    2379)."""
    s = text.strip()
    tls = False
    if "://" in s:
        scheme, s = s.split("://", 1)
        if scheme.lower() not in ("http", "https", "tcp"):
            raise ClientError(
                f"endpoint {text!r}: scheme {scheme!r} is not supported (use host:port, "
                "http://host:port or https://host:port)")
        tls = scheme.lower() == "https"
        s = s.split("/", 1)[0]
    if not s:
        raise ClientError(f"endpoint {text!r} has no host")
    if s.startswith("["):
        host, sep, rest = s[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ClientError(f"endpoint {text!r} is not [ipv6]:port")
        port_text = rest[1:] if rest else ""
    elif s.count(":") == 1:
        host, port_text = s.split(":")
    elif ":" in s:  # a bare IPv6 address
        host, port_text = s, ""
    else:
        host, port_text = s, ""
    if not host:
        raise ClientError(f"endpoint {text!r} has no host")
    if not port_text:
        return Endpoint(host, DEFAULT_PORT, tls)
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ClientError(f"endpoint {text!r}: port must be 1..65535")
    return Endpoint(host, int(port_text), tls)


async def _confirm_accepted(stream: anyio.abc.ByteStream) -> None:
    """Wait for the member's answer to one ``status`` request (id 0, read here, before the
    reader starts). Under TLS 1.3 the member judges the client's certificate only after
    the client's side of the handshake is done, so a refused certificate (none, expired,
    from another CA) shows up as an alert on the first read: this makes it a dial failure
    that names the TLS reason, rather than a broken connection under the first request."""
    await stream.send(encode_frame(cbor2.dumps({"id": 0, "op": "status"})))
    decoder = FrameDecoder(MAX_ANSWER_BYTES)
    while decoder.next_frame() is None:
        decoder.feed(await stream.receive(_READ_CHUNK))


@dataclass(slots=True)
class _Outgoing:
    """A frame waiting for the writer: a request's (``slot``: skipped if its caller gave
    up first) or a stream opener's (``sent``: set once written, or once it never will be)."""

    frame: bytes
    rid: int
    slot: _Slot | None
    sent: anyio.Event | None = None


class _Slot:
    """Where the reader leaves one request's answer (or the connection's failure)."""

    __slots__ = ("answer", "error", "event", "sent")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.answer: dict[str, Any] | None = None
        self.error: ConnectionLost | None = None
        self.sent = False


class Stream:
    """The receiving end of one stream request; built by ``Connection.open_stream``.

    Frames the reader delivered before the stream ended are still received after its end,
    and only then does ``receive`` raise why it ended — so a consumer sees everything the
    member sent before a failure, which is what lets a watch resume exactly where it was.

    The buffer is a plain deque and a consumer that finds it empty parks on one event,
    rather than an anyio memory object stream: a busy connection delivers a frame per
    watch per change (250 watches on one connection means 250 frames per put), and the
    memory stream's per-item bookkeeping (a fresh receiver object and an event, a
    checkpoint before parking) was a large share of a watcher's CPU per event. A frame
    stays in the deque until the consumer takes it, so a consumer cancelled while
    waiting loses nothing.
    """

    __slots__ = ("_buffer", "_closed", "_ended", "_failure", "_frames", "_new_event",
                 "_waiter", "conn", "last_arrival", "rid")

    def __init__(self, conn: Connection, rid: int, buffer: int) -> None:
        self.conn = conn
        self.rid = rid
        self._buffer = max(1, buffer)
        self._frames: deque[dict[str, Any]] = deque()
        self._new_event = conn._new_event
        self._waiter: anyio.Event | None = None
        self._ended = False  # the reader will deliver nothing more
        self._closed = False  # the consumer called close()
        self._failure: Unavailable | None = None
        self.last_arrival = anyio.current_time()
        """When the reader last delivered a frame (``anyio.current_time()`` at the read
        that brought it), or the stream was opened: how a consumer tells a silent stream
        from a slow application."""

    def __repr__(self) -> str:
        return f"<Stream {self.rid} on {self.conn.endpoint}>"

    async def receive(self) -> dict[str, Any]:
        """The next frame (``ok`` or ``err`` map, as the member sent it). A checkpoint, as
        any anyio receive is: it yields to the event loop before taking a buffered frame,
        and parks (cancellably) when there is none.

        Raises:
            ConnectionLost: the connection broke (after the frames received before it).
            StreamOverflow: the consumer fell behind by more than the buffer.
            anyio.EndOfStream: the terminal frame was already received, or ``close`` was
                called.
        """
        if self._frames:
            await anyio.lowlevel.checkpoint()
        while True:
            frame = self.receive_nowait()
            if frame is not None:
                return frame
            waiter = self._waiter
            if waiter is None:
                waiter = self._waiter = self._new_event()
            await waiter.wait()

    def receive_nowait(self) -> dict[str, Any] | None:
        """A frame already buffered, or None; raises as ``receive`` once the stream ended."""
        if self._closed:
            raise self._why_ended()
        if self._frames:
            return self._frames.popleft()
        if self._ended:
            raise self._why_ended()
        return None

    def _why_ended(self) -> Exception:
        # A fresh exception each time: re-raising one instance would pile up tracebacks.
        failure = self._failure
        if failure is None:
            return anyio.EndOfStream()
        if isinstance(failure, ConnectionLost):
            return ConnectionLost(str(failure), request_sent=failure.request_sent)
        return type(failure)(str(failure))

    def close(self) -> None:
        """Stop receiving: later frames with this id are dropped by the reader, and a task
        waiting in ``receive`` gets ``EndOfStream`` (or the reason the stream had ended).
        Only the local end; ending the member's side (``watch_cancel``) is the caller's
        business."""
        self.conn._forget_stream(self)
        self._closed = True
        self._frames.clear()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            waiter.set()

    def _deliver(self, answer: dict[str, Any], now: float) -> bool:
        """Reader side: queue one frame that arrived at ``now``; False if the stream is
        over (full or abandoned)."""
        if self._ended or self._closed:
            return False
        frames = self._frames
        if len(frames) >= self._buffer:
            self._end(StreamOverflow(
                f"{self.conn.endpoint}: stream {self.rid} fell more than "
                f"{self._buffer:g} frames behind"))
            return False
        frames.append(answer)
        self.last_arrival = now
        if self._waiter is not None:
            self._wake()
        return True

    def _end(self, failure: Unavailable | None) -> None:
        if failure is not None and self._failure is None:
            self._failure = failure
        self._ended = True
        self._wake()


class DialError(Exception):
    """Connecting to an endpoint failed; nothing was sent, so any request may go elsewhere.
    Internal: the client turns a run of these into ``Unavailable``."""

    def __init__(self, endpoint: Endpoint, reason: str) -> None:
        super().__init__(f"{endpoint}: {reason}")
        self.endpoint = endpoint


class Connection:
    """A connected, multiplexed stream to ``endpoint``; build it with ``Connection.open``."""

    def __init__(
        self,
        endpoint: Endpoint,
        stream: anyio.abc.ByteStream,
        *,
        send_timeout: float,
        max_request_bytes: int,
        token: Callable[[], str | None] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._token = token
        """Read as each frame is encoded, so a token renewed by the client goes out on the
        next request, streams and ``watch_cancel`` included (``_auth.TokenKeeper``)."""
        self._stream = stream
        self._send_timeout = send_timeout
        self._max_request_bytes = max_request_bytes
        self._decoder = FrameDecoder(MAX_ANSWER_BYTES)
        self._pending: dict[int, _Slot] = {}
        self._streams: dict[int, Stream] = {}
        self._ids = itertools.count(1)  # id 0 is the member's "could not parse your frame"
        self._outgoing: list[_Outgoing] = []
        self._work = anyio.Event()
        self._scope = anyio.CancelScope()
        self._write_scope = anyio.CancelScope()
        self._new_event: Callable[[], anyio.Event] = type(anyio.Event())
        """The running backend's event class, found once: ``anyio.Event()`` asks sniffio
        which library is running every time, and a stream makes an event per wait."""
        self._broken: str | None = None
        self._retired = False

    @classmethod
    async def open(
        cls,
        endpoint: Endpoint,
        task_group: anyio.abc.TaskGroup,
        *,
        dial_timeout: float,
        send_timeout: float,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        token: Callable[[], str | None] | None = None,
        tls: TlsFiles | None = None,
    ) -> Connection:
        """Connect, send the magic and start the reader in ``task_group`` (which outlives
        the calling request, so the connection serves later requests too). Over TLS when
        the endpoint is ``https://`` or ``tls`` names any file.

        Raises:
            DialError: refused, unreachable, unresolvable, not done within
                ``dial_timeout``, or the TLS handshake failed (the reason says ``TLS: ...``).
            ClientError: a TLS file cannot be used (see ``TlsFiles.context``).
        """
        ssl_context = None
        if endpoint.tls or (tls is not None and tls.enabled):
            ssl_context = (tls or TlsFiles()).context()
        stream: anyio.abc.ByteStream | None = None
        handshaking = False
        try:
            with anyio.fail_after(dial_timeout):
                stream = await anyio.connect_tcp(endpoint.host, endpoint.port)
                if (stream.extra(anyio.abc.SocketAttribute.local_address)
                        == stream.extra(anyio.abc.SocketAttribute.remote_address)):
                    # A dial to a local port with no listener that the kernel answered by
                    # connecting the socket to itself (TCP simultaneous open): it would hold
                    # the member's port and stop it from restarting. It is a refusal.
                    raise ConnectionRefusedError("connected to itself: no listener")
                if ssl_context is not None:
                    handshaking = True
                    stream = await TLSStream.wrap(
                        stream, hostname=endpoint.host, ssl_context=ssl_context,
                        standard_compatible=False)
                await stream.send(MAGIC)
                if ssl_context is not None:
                    await _confirm_accepted(stream)
        except TimeoutError:
            if stream is not None:
                await anyio.aclose_forcefully(stream)
            raise DialError(endpoint, f"no connection within {dial_timeout:g}s") from None
        except (OSError, anyio.BrokenResourceError, anyio.EndOfStream, FrameError) as e:
            if stream is not None:
                await anyio.aclose_forcefully(stream)
            why = tls_failure(e) if handshaking else None
            if handshaking and (why is None or "certificate verify failed" not in why):
                # The member hung up mid-handshake: what it does when it does not accept
                # our certificate (or the lack of one), or when it does not speak TLS.
                why = ("TLS: the member ended the handshake (does it require a client "
                       "certificate from its CA? give cert/key, --cert/--key on the CLI): "
                       f"{(why or '').removeprefix('TLS: ') or str(e) or type(e).__name__}")
            raise DialError(endpoint, why or str(e) or type(e).__name__) from None
        except BaseException:
            if stream is not None:
                await anyio.aclose_forcefully(stream)
            raise
        conn = cls(endpoint, stream, send_timeout=send_timeout,
                   max_request_bytes=max_request_bytes, token=token)
        conn.start(task_group)
        return conn

    def start(self, task_group: anyio.abc.TaskGroup) -> None:
        """Start the reader and the writer in ``task_group``: ``open`` does, after dialling
        (a test driving a connection over its own byte stream calls it directly)."""
        task_group.start_soon(self._read_loop, name=f"discoverd.sdk reader {self.endpoint}")
        task_group.start_soon(self._write_loop, name=f"discoverd.sdk writer {self.endpoint}")

    def __repr__(self) -> str:
        state = f"broken: {self._broken}" if self._broken else (
            "retired" if self._retired else "open")
        return (f"<Connection {self.endpoint} {state} pending={len(self._pending)} "
                f"streams={len(self._streams)}>")

    @property
    def usable(self) -> bool:
        """Whether new requests may be sent on this connection."""
        return self._broken is None and not self._retired

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def streams(self) -> int:
        return len(self._streams)

    @property
    def closed(self) -> bool:
        """Whether the connection is broken or closed (a retired one may still be open)."""
        return self._broken is not None

    def _encode(
        self, op: str, fields: dict[str, Any], even_if_retired: bool = False
    ) -> tuple[int, bytes]:
        if self._broken is not None or (self._retired and not even_if_retired):
            raise ConnectionLost(f"{self.endpoint}: {self._broken or 'connection retired'}")
        rid = next(self._ids)
        request = {**fields, "id": rid, "op": op}
        token = self._token() if self._token is not None and op != "authenticate" else None
        if token is not None and "token" not in fields:
            request["token"] = token
        try:
            body = cbor2.dumps(request)
        except (cbor2.CBOREncodeError, TypeError, ValueError) as e:
            raise ClientError(f"cannot encode the {op} request: {e}") from None
        if len(body) > self._max_request_bytes:
            raise RequestTooLarge(
                f"the {op} request is {len(body)} bytes; members accept at most "
                f"{self._max_request_bytes}")
        return rid, encode_frame(body)

    def _close_if_idle(self) -> None:
        if self._retired and not self._pending and not self._streams:
            self.close("retired")

    async def request(
        self, op: str, fields: dict[str, Any], *, even_if_retired: bool = False
    ) -> dict[str, Any]:
        """Send one request and return the member's answer frame (``ok`` or ``err``).

        ``even_if_retired``: send it on a retired (not yet closed) connection too — for
        ending a stream that lives there (``watch_cancel`` only works on the watch's own
        connection).

        Raises:
            ConnectionLost: the connection is or became unusable; ``request_sent`` tells
                whether the member may have seen the request.
            ClientError: the request cannot be encoded, or is over ``max_request_bytes``.
        """
        rid, frame = self._encode(op, fields, even_if_retired)
        slot = _Slot()
        self._pending[rid] = slot
        try:
            self._queue(_Outgoing(frame, rid, slot))
            await slot.event.wait()
        finally:
            self._pending.pop(rid, None)
            self._close_if_idle()
        if slot.error is not None:
            raise slot.error
        assert slot.answer is not None
        return slot.answer

    async def open_stream(self, op: str, fields: dict[str, Any], *, buffer: int) -> Stream:
        """Send a stream request; its frames go to the returned ``Stream``, which buffers at
        most ``buffer`` of them (see the module doc). Returns once the request is sent.

        Raises:
            ConnectionLost: the connection is or became unusable.
            ClientError: the request cannot be encoded, or is too large.
        """
        rid, frame = self._encode(op, fields)
        stream = Stream(self, rid, max(1, buffer))
        self._streams[rid] = stream
        sent = anyio.Event()
        try:
            self._queue(_Outgoing(frame, rid, None, sent))
            await sent.wait()
            if self._broken is not None:
                raise ConnectionLost(f"{self.endpoint}: {self._broken}", request_sent=True)
        except BaseException:
            stream.close()
            raise
        return stream

    def _forget_stream(self, stream: Stream) -> None:
        if self._streams.get(stream.rid) is stream:
            del self._streams[stream.rid]
            stream._end(None)
            self._close_if_idle()

    def _queue(self, item: _Outgoing) -> None:
        if self._broken is not None:
            raise ConnectionLost(f"{self.endpoint}: {self._broken}")
        self._outgoing.append(item)
        self._work.set()

    async def _write_loop(self) -> None:
        """Send queued frames, all that piled up in one write. A write is bounded by the
        send timeout: a member that stopped reading costs the connection (and fails every
        request on it), never a caller's wait forever."""
        try:
            with self._write_scope:
                while True:
                    if not self._outgoing:
                        self._work = self._new_event()
                        await self._work.wait()
                        continue
                    batch, self._outgoing = self._outgoing, []
                    frames = []
                    for item in batch:
                        if item.slot is not None:
                            if self._pending.get(item.rid) is not item.slot:
                                continue  # its caller gave up before it was sent
                            item.slot.sent = True
                        frames.append(item.frame)
                    failure = ""
                    if frames:
                        with anyio.move_on_after(self._send_timeout) as scope:
                            try:
                                await self._stream.send(
                                    frames[0] if len(frames) == 1 else b"".join(frames))
                            except (anyio.BrokenResourceError, anyio.ClosedResourceError,
                                    OSError) as e:
                                failure = f"send failed: {e or type(e).__name__}"
                        if scope.cancelled_caught:
                            failure = f"could not send a request within {self._send_timeout:g}s"
                    if failure:
                        self.close(failure)
                    for item in batch:
                        if item.sent is not None:
                            item.sent.set()
                    if failure:
                        return
        finally:
            self._fail_unsent()

    def _fail_unsent(self) -> None:
        """Wake stream openers whose frames will never be sent (the connection closed)."""
        unsent, self._outgoing = self._outgoing, []
        for item in unsent:
            if item.sent is not None:
                item.sent.set()

    def retire(self) -> None:
        """Take no new requests; close once the requests in flight are answered and the
        open streams have ended."""
        self._retired = True
        self._close_if_idle()

    def close(self, reason: str = "closed by the client") -> None:
        """Fail every pending request with ``ConnectionLost`` and stop the reader (which
        closes the stream). Idempotent; safe from any task of the client's event loop."""
        if self._broken is None:
            self._broken = reason
        for slot in self._pending.values():
            if not slot.event.is_set():
                slot.error = ConnectionLost(f"{self.endpoint}: {self._broken}",
                                            request_sent=slot.sent)
                slot.event.set()
        self._pending.clear()
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            stream._end(ConnectionLost(f"{self.endpoint}: {self._broken}", request_sent=True))
        self._scope.cancel()
        self._write_scope.cancel()
        self._fail_unsent()

    async def _read_loop(self) -> None:
        reason = "the member closed the connection"
        try:
            with self._scope:
                while True:
                    try:
                        data = await self._stream.receive(_READ_CHUNK)
                    except anyio.EndOfStream:
                        break
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as e:
                        reason = f"connection broken: {e or type(e).__name__}"
                        break
                    now = anyio.current_time()  # once per read, not per frame
                    self._decoder.feed(data)
                    while (frame := self._decoder.next_frame()) is not None:
                        failure = self._dispatch(frame, now)
                        if failure:
                            reason = failure
                            return
        except FrameError as e:
            reason = f"bad frame from the member: {e}"
        except Exception as e:
            # A bug or a protocol surprise costs this connection, never the client's task
            # group (which would tear down the application's own tasks).
            reason = f"reader failed: {type(e).__name__}: {e}"
        finally:
            self.close(reason)
            await anyio.aclose_forcefully(self._stream)

    def _dispatch(self, frame: bytes, now: float) -> str:
        """Hand one answer (read at ``now``) to its request; return a reason to drop the
        connection, or ""."""
        try:
            answer = cbor2.loads(frame)
        except (cbor2.CBORDecodeError, ValueError, TypeError, EOFError) as e:
            return f"undecodable answer from the member: {e}"
        if not isinstance(answer, dict) or type(answer.get("id")) is not int:
            return "answer without an integer id"
        rid = answer["id"]
        if rid == 0:
            # The member could not parse one of our frames and says so under id 0; it
            # cannot tell which request it was, so neither can we.
            err = answer.get("err") or {}
            return f"the member refused a frame: {err.get('code')}: {err.get('message')}"
        if not isinstance(answer.get("ok"), dict) and not isinstance(answer.get("err"), dict):
            return f"answer {rid} has neither an 'ok' nor an 'err' map"
        slot = self._pending.pop(rid, None)
        if slot is not None:  # None: its caller was cancelled or timed out; drop the answer
            slot.answer = answer
            slot.event.set()
            return ""
        stream = self._streams.get(rid)
        if stream is not None:  # None: an abandoned stream's late frames are dropped
            ok = answer.get("ok")
            last = not isinstance(ok, dict) or bool(ok.get("canceled") or ok.get("done"))
            if not stream._deliver(answer, now) or last:
                del self._streams[rid]
                stream._end(None)
                self._close_if_idle()
        return ""

