"""``Outbox``: frames from many tasks leave in order, in as few sends as the writer can
manage, and a reader that stops reading makes ``put`` wait instead of queueing forever."""

from __future__ import annotations

import trio
import trio.testing

from discoverd.server.outbox import Outbox


class RecordingStream(trio.abc.SendStream):
    """Records each ``send_all``; a send blocks while ``gate`` is closed (a slow reader)."""

    def __init__(self) -> None:
        self.sends: list[bytes] = []
        self.open_gate = trio.Event()
        self.open_gate.set()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.open_gate.wait()
        self.sends.append(bytes(data))

    async def wait_send_all_might_not_block(self) -> None:
        await self.open_gate.wait()

    async def aclose(self) -> None:
        pass


async def test_frames_queued_during_a_send_go_out_together_in_order() -> None:
    stream = RecordingStream()
    outbox = Outbox(stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(outbox.run)
        stream.open_gate = trio.Event()  # the first send will hang, like a full socket
        await outbox.put(b"a")
        await trio.testing.wait_all_tasks_blocked()
        for frame in (b"b", b"c", b"d"):  # answered while "a" is being written
            await outbox.put(frame)
        stream.open_gate.set()
        await outbox.flush()
        nursery.cancel_scope.cancel()
    assert stream.sends == [b"a", b"bcd"]
    assert (outbox.sends, outbox.frames_sent) == (2, 4)


async def test_put_waits_once_high_water_is_queued_and_resumes_when_taken() -> None:
    stream = RecordingStream()
    outbox = Outbox(stream, high_water=10)
    stream.open_gate = trio.Event()
    done: list[int] = []

    async def producer() -> None:
        for i in range(5):
            await outbox.put(b"x" * 6)
            done.append(i)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(outbox.run)
        nursery.start_soon(producer)
        await trio.testing.wait_all_tasks_blocked()
        # The writer took frames 0 and 1 (stuck sending them); 2 and 3 are queued, 12
        # bytes, past high water: the producer waits before its fifth put.
        assert done == [0, 1, 2, 3]
        stream.open_gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert done == [0, 1, 2, 3, 4]
        await outbox.flush()
        nursery.cancel_scope.cancel()
    assert b"".join(stream.sends) == b"x" * 30


async def test_a_failed_send_ends_the_writer_with_its_error() -> None:
    class Broken(RecordingStream):
        async def send_all(self, data: bytes | bytearray | memoryview) -> None:
            raise trio.BrokenResourceError("client went away")

    outbox = Outbox(Broken())
    failed = False
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(outbox.run)
            await outbox.put(b"a")
    except* trio.BrokenResourceError:
        failed = True
    assert failed
