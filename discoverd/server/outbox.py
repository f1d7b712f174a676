"""``Outbox``: one client connection's outgoing frames, written by one task in as few sends
as it can.

Many request tasks answer on one connection at once (64 clients multiplexed on one SDK
connection is the common shape). Writing each answer with its own ``send`` costs a syscall
and a trip through trio's socket machinery per answer — the largest single item in the
leader's profile under load (issue 12). Here an answer is only appended to a list; the
writer task joins whatever has piled up while its last send ran and writes it with one
``send_all``. At low load nothing waits (the writer wakes as the first answer arrives); under
load the batch grows by itself, like the WAL's batching of proposals.

Order is kept: frames go out in the order ``put`` was called. A reader that stops reading
cannot make the member queue without bound: once ``high_water`` bytes are queued, ``put``
waits until the writer has taken them (the writer's own send is bounded by the client write
timeout, see ``server/limits.BoundedWrites``). A failed send ends the writer task with its
error, which ends the connection.
"""

from __future__ import annotations

import trio

DEFAULT_HIGH_WATER = 1 << 20
"""Bytes queued (not yet taken by the writer) before ``put`` waits."""


class Outbox:
    def __init__(self, stream: trio.abc.SendStream, *,
                 high_water: int = DEFAULT_HIGH_WATER) -> None:
        self._stream = stream
        self.high_water = high_water
        self._frames: list[bytes] = []
        self._queued = 0
        self._sending = False
        self._work = trio.Event()
        self._progress = trio.Event()
        """Set (and replaced) each time the writer takes a batch or finishes a send."""
        self.sends = 0
        self.frames_sent = 0

    def __repr__(self) -> str:
        return f"<Outbox queued={len(self._frames)} bytes={self._queued} sends={self.sends}>"

    async def put(self, frame: bytes) -> None:
        """Queue ``frame`` (a whole encoded frame) for the writer; waits only while more
        than ``high_water`` bytes are already queued."""
        while self._queued >= self.high_water:
            await self._progress.wait()
        self._frames.append(frame)
        self._queued += len(frame)
        self._work.set()

    async def flush(self) -> None:
        """Wait until everything queued so far has been written (e.g. a last error frame
        before the connection is closed)."""
        while self._frames or self._sending:
            await self._progress.wait()

    async def run(self) -> None:
        """The writer task; runs until cancelled or a send fails (which it raises)."""
        while True:
            if not self._frames:
                self._work = trio.Event()
                await self._work.wait()
                continue
            frames, self._frames, self._queued = self._frames, [], 0
            data = frames[0] if len(frames) == 1 else b"".join(frames)
            self._sending = True
            self._step()
            try:
                await self._stream.send_all(data)
            finally:
                self._sending = False
            self.sends += 1
            self.frames_sent += len(frames)
            self._step()

    def _step(self) -> None:
        self._progress.set()
        self._progress = trio.Event()
