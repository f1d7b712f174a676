"""Length-prefixed framing, sans-I/O (the shape of h11's ``receive_data``/``next_event``).

A frame on the wire is a 4-byte big-endian length followed by that many payload bytes. The
peer transport uses it for Raft traffic and the native client protocol will use it after its
``DSC1`` magic, so this module knows nothing about what a payload means.

Bytes in, frames out: the caller owns the socket, hands every chunk it reads to
``FrameDecoder.feed`` and then calls ``next_frame`` until it returns ``None`` ("need more
data"). Nothing here blocks, sleeps or touches a socket, so the whole protocol is testable by
feeding byte strings, split wherever a test likes.

Whose fault: the decoder only ever parses bytes a remote sent, so a ``FrameError`` is always
the remote's fault. It is not a ``PeerError`` or a ``ClientError`` because the same decoder
serves both kinds of remote; each caller maps it (the peer transport drops the connection as
it would for a ``PeerError``; the client server answers "request too large" when
``too_large`` is set and closes the connection).
"""

from __future__ import annotations

import struct

from discoverd.errors import ClientError, DiscoverdError

HEADER_BYTES = 4
"""Size of the length prefix."""

MAX_PAYLOAD_BYTES = 2**32 - 1
"""The largest payload a 4-byte length can announce."""

_HEADER = struct.Struct(">I")

# Compact the buffer (drop consumed bytes) only once this much has been consumed *and* the
# consumed part is at least half the buffer: every byte is then moved O(1) times on average,
# however many tiny frames arrive in one read, instead of once per frame.
_COMPACT_AFTER_BYTES = 64 * 1024


class FrameError(DiscoverdError):
    """The remote broke the framing rules; the connection cannot be resynchronised.

    Attributes:
        too_large: the remote announced a frame over the limit (``size`` > ``limit``); the
            frame's body was not buffered. False for other violations (a connection closed in
            the middle of a frame).
        size: the announced payload size, when ``too_large``.
        limit: the decoder's ``max_frame_bytes`` at the time.
    """

    code = "bad_frame"

    def __init__(
        self, message: str, *, too_large: bool = False, size: int = 0, limit: int = 0
    ) -> None:
        super().__init__(message)
        self.too_large = too_large
        self.size = size
        self.limit = limit


def encode_frame(payload: bytes | bytearray | memoryview) -> bytes:
    """Return ``payload`` with its 4-byte big-endian length in front.

    Raises:
        ClientError: ``payload`` is longer than a 4-byte length can announce (a local bug:
            callers chunk large data long before this).
    """
    n = len(payload)
    if n > MAX_PAYLOAD_BYTES:
        raise ClientError(f"frame payload of {n} bytes exceeds the {MAX_PAYLOAD_BYTES} limit")
    return _HEADER.pack(n) + bytes(payload)


class FrameDecoder:
    """Turns a byte stream into frames; one instance per connection and direction.

    ``max_frame_bytes`` bounds the payload of a single frame. It is checked as soon as a
    header is complete, before any of the body is waited for, so a remote cannot make us
    buffer more than one read past the limit. It is a public attribute on purpose: a server
    may read a small handshake under a tight limit and then raise it.

    After a ``FrameError`` the decoder is broken for good (as h11 moves to ``ERROR``): every
    later ``next_frame`` raises again, because the stream has lost its frame boundaries.
    """

    __slots__ = ("_buf", "_error", "_start", "max_frame_bytes")

    def __init__(self, max_frame_bytes: int) -> None:
        if not 0 <= max_frame_bytes <= MAX_PAYLOAD_BYTES:
            raise ClientError(f"max_frame_bytes must be in [0, {MAX_PAYLOAD_BYTES}]")
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()
        self._start = 0  # bytes of _buf already consumed
        self._error: FrameError | None = None

    def __repr__(self) -> str:
        state = "error" if self._error is not None else "ok"
        return (
            f"<FrameDecoder {state} buffered={self.buffered} "
            f"max_frame_bytes={self.max_frame_bytes}>"
        )

    @property
    def buffered(self) -> int:
        """Bytes fed but not yet returned as (part of) a frame."""
        return len(self._buf) - self._start

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes read from the connection. Only buffers; never raises on content.

        Call ``next_frame`` until it returns ``None`` after each ``feed``: that is what keeps
        an oversized frame from being buffered.
        """
        if self._start and self._start == len(self._buf):
            # Everything consumed: restart at offset 0 without moving any byte.
            self._buf.clear()
            self._start = 0
        self._buf += data

    def next_frame(self) -> bytes | None:
        """Return the next complete payload, or ``None`` if more bytes are needed.

        Raises:
            FrameError: the next header announces more than ``max_frame_bytes`` (with
                ``too_large`` set), or the decoder failed before.
        """
        if self._error is not None:
            raise self._error
        buf, start = self._buf, self._start
        if len(buf) - start < HEADER_BYTES:
            return None
        (size,) = _HEADER.unpack_from(buf, start)
        if size > self.max_frame_bytes:
            self._error = FrameError(
                f"frame of {size} bytes exceeds the limit of {self.max_frame_bytes} bytes",
                too_large=True,
                size=size,
                limit=self.max_frame_bytes,
            )
            raise self._error
        end = start + HEADER_BYTES + size
        if len(buf) < end:
            return None
        payload = self._copy(start + HEADER_BYTES, end)
        self._consume_to(end)
        return payload

    def read_raw(self, n: int) -> bytes | None:
        """Consume exactly ``n`` unframed bytes (a protocol magic such as ``DSC1``), or
        return ``None`` and consume nothing if fewer are buffered.

        A server that sniffs the protocol reads the magic this way and, when it is not
        ``DSC1``, hands ``magic + read_raw(decoder.buffered)`` to its HTTP parser.
        """
        if n < 0:
            raise ClientError("read_raw: n must be non-negative")
        if self.buffered < n:
            return None
        end = self._start + n
        data = self._copy(self._start, end)
        self._consume_to(end)
        return data

    def feed_eof(self) -> None:
        """Tell the decoder the remote closed its side.

        Raises:
            FrameError: the stream ended in the middle of a frame (bytes are still
                buffered), so the last frame was truncated.
        """
        if self._error is None and self.buffered:
            self._error = FrameError(
                f"connection closed in the middle of a frame ({self.buffered} bytes pending)"
            )
        if self._error is not None:
            raise self._error

    def _copy(self, start: int, end: int) -> bytes:
        # One copy through a view (a bytearray slice would copy twice); the views are
        # released at once so the buffer can be resized again.
        with memoryview(self._buf) as view, view[start:end] as part:
            return bytes(part)

    def _consume_to(self, end: int) -> None:
        self._start = end
        if end >= _COMPACT_AFTER_BYTES and end * 2 >= len(self._buf):
            del self._buf[:end]
            self._start = 0
