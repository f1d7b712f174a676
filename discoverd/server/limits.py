"""Per-connection bounds on the client port, shared by the native protocol and HTTP:
the request rate (a token bucket), and a write deadline so a client that stops reading
cannot hold a member's task (and what that task holds) forever.

A connection's limits are its own: one greedy or stuck client is slowed or dropped while
every other connection goes on as before (DESIGN §12: a member never suffers for client
input).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import trio

from discoverd.errors import TooManyRequests

LIMIT_CODES = {"key_too_large": "key_size", "value_too_large": "value_size",
               "too_many_streams": "streams", "too_many_requests": "rate"}
"""Error codes that are a limit refusing a request → the ``limit`` label of
``discoverd_client_limit_refusals_total`` (idle and write_timeout are counted where the
connection is closed)."""


class TokenBucket:
    """``rate`` requests a second, bursts of ``2 * rate``; time is passed in (trio's clock,
    so tests can drive it). ``rate`` 0 means no bound."""

    def __init__(self, rate: int, now: float) -> None:
        self.rate = rate
        self.capacity = 2.0 * rate
        self.tokens = self.capacity
        self.updated = now

    def take(self, now: float) -> None:
        """Spend one token, or raise ``TooManyRequests`` saying when one will be there."""
        if not self.rate:
            return
        elapsed = max(0.0, now - self.updated)
        self.updated = now
        self.tokens = min(self.capacity, self.tokens + elapsed * self.rate)
        if self.tokens >= 1.0 - 1e-9:  # float slack: retry_after later must be enough
            self.tokens -= 1.0
            return
        wait = (1.0 - self.tokens) / self.rate
        # Rounded up to the millisecond, so a client that waits exactly this long finds
        # its token there.
        raise TooManyRequests(retry_after=math.ceil(wait * 1000) / 1000)


class WriteTimedOut(trio.BrokenResourceError):
    """A send to a client did not finish within the write timeout; the connection is
    given up (a ``BrokenResourceError``, so it ends quietly, like any client gone away)."""


class BoundedWrites(trio.abc.HalfCloseableStream):
    """``stream`` whose ``send_all`` must finish within ``timeout`` seconds (None: no
    bound). On a timeout ``on_timeout`` is told once and this and every later send raise
    ``WriteTimedOut``: a send cut short leaves the stream mid-frame, unusable."""

    def __init__(self, stream: trio.abc.Stream, timeout: float | None,
                 on_timeout: Callable[[], None]) -> None:
        self.stream = stream
        self.timeout = timeout
        self._on_timeout = on_timeout
        self.timed_out = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.timed_out:
            raise WriteTimedOut("an earlier write to this client timed out")
        if self.timeout is None:
            await self.stream.send_all(data)
            return
        with trio.move_on_after(self.timeout):
            await self.stream.send_all(data)
            return
        self.timed_out = True
        self._on_timeout()
        raise WriteTimedOut(f"client did not read for {self.timeout:g}s")

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.stream.receive_some(max_bytes)

    async def send_eof(self) -> None:
        if not isinstance(self.stream, trio.abc.HalfCloseableStream):
            raise trio.ClosedResourceError("this stream cannot half-close")
        await self.stream.send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()


def seconds(ms: int) -> float | None:
    """A ``--client-*-timeout`` flag's milliseconds as seconds; 0 (never) as None."""
    return ms / 1000 if ms else None
