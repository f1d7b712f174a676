"""PeerTransport over real TCP on 127.0.0.1 (dynamic ports), several members in one trio run.

Discipline (trio-websocket's test header): localhost only, port 0 everywhere, every test under
``trio.fail_after``, and no sleep is ever a synchronisation: tests wait for a condition
(``wait_for``, which polls under its own deadline) or for an event.
"""

from __future__ import annotations

import random
import socket
from collections.abc import AsyncIterator, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import cbor2
import pytest
import structlog
import trio
from structlog.testing import LogCapture

from discoverd.consensus.messages import (
    AppendEntries,
    ConfState,
    Entry,
    Heartbeat,
    InstallSnapshot,
    Message,
    Snapshot,
    SnapshotMeta,
)
from discoverd.errors import ClientError
from discoverd.server.transport import PROTO, PeerTransport, refuse_self_connection
from discoverd.wire.framing import FrameDecoder, encode_frame
from discoverd.wire.peer_codec import encode_message

CLUSTER = 0xC0FFEE
LOCALHOST = "127.0.0.1"


class Member:
    """One PeerTransport plus everything its callbacks reported."""

    def __init__(self, member_id: int, *, cluster_id: int = CLUSTER, **kw: Any) -> None:
        self.id = member_id
        self.received: list[Message] = []
        self.unreachable: list[int] = []
        self.snapshot_status: list[tuple[int, bool]] = []
        self.logs = LogCapture()
        self.t = PeerTransport(
            cluster_id=cluster_id,
            member_id=member_id,
            peers={},
            on_message=self.received.append,
            on_unreachable=self.unreachable.append,
            on_snapshot_status=lambda peer, ok: self.snapshot_status.append((peer, ok)),
            log=structlog.wrap_logger(None, processors=[self.logs]),
            rng=random.Random(member_id),
            **kw,
        )

    @property
    def addr(self) -> tuple[str, int]:
        host, port = self.t.listeners[0].socket.getsockname()[:2]
        return host, port

    def events(self, prefix: str) -> list[MutableMapping[str, Any]]:
        return [e for e in self.logs.entries if str(e["event"]).startswith(prefix)]


async def wait_for(cond: Callable[[], object], what: str, within: float = 5.0) -> None:
    """Poll ``cond`` until it holds; fail with ``what`` after ``within`` seconds.

    The conditions are changed by callbacks and log lines in the transport's own tasks; a
    short bounded poll observes all of them without test hooks in the production class.
    """
    with trio.move_on_after(within):
        while not cond():  # noqa: ASYNC110 - see the docstring
            await trio.sleep(0.002)
        return
    pytest.fail(f"timed out waiting for {what}")


async def start(nursery: trio.Nursery, m: Member, port: int = 0) -> None:
    await nursery.start(m.t.serve, (LOCALHOST, port))


@asynccontextmanager
async def cluster(*members: Member) -> AsyncIterator[trio.Nursery]:
    """Serve every member, tell each about all the others, run them; close all on exit."""
    async with trio.open_nursery() as nursery:
        for m in members:
            await start(nursery, m)
        addrs = {m.id: m.addr for m in members}
        for m in members:
            m.t.set_peers(addrs)
            await nursery.start(m.t.run)
        yield nursery
        for m in members:
            await m.t.aclose()


async def connected(sender: Member, receiver: Member) -> None:
    """Wait until ``sender``'s link to ``receiver`` carries messages (one probe delivered)."""
    probe = Heartbeat(term=99, src=sender.id, dst=receiver.id)
    sender.t.send([probe])
    await wait_for(lambda: probe in receiver.received, f"link {sender.id}->{receiver.id}")


def hb(src: int, dst: int, n: int) -> Heartbeat:
    return Heartbeat(term=1, src=src, dst=dst, commit=n)


def free_port() -> int:
    """A port nobody listens on (bound then released), for "connection refused"."""
    with socket.socket() as s:
        s.bind((LOCALHOST, 0))
        port: int = s.getsockname()[1]
        return port


# ---------------------------------------------------------------------- delivery


async def test_messages_are_delivered_in_order_on_every_link() -> None:
    with trio.fail_after(10):
        a, b, c = Member(1), Member(2), Member(3)
        async with cluster(a, b, c):
            for n in range(300):
                a.t.send([hb(1, 2, n), hb(1, 3, n)])
                b.t.send([hb(2, 1, n)])
                if n % 50 == 0:
                    await trio.lowlevel.checkpoint()  # let writers run: several batches
            await wait_for(lambda: len(b.received) == 300 and len(c.received) == 300
                           and len(a.received) == 300, "300 messages on each link")
            for got, src in ((b.received, 1), (c.received, 1), (a.received, 2)):
                assert [m.commit for m in got if isinstance(m, Heartbeat)] == list(range(300))
                assert {m.src for m in got} == {src}
            # The sender counts a frame once its write returns, which may be after the
            # receiver has it.
            await wait_for(lambda: a.t.stats[2].messages_sent == 300, "the sender's count")
            assert b.t.stats[1].messages_received == 300
            assert not a.unreachable


async def test_many_sends_before_the_writer_runs_become_one_frame() -> None:
    with trio.fail_after(10):
        a, b = Member(1), Member(2)
        async with cluster(a, b):
            await connected(a, b)
            frames_before = b.t.stats[1].frames_received
            for n in range(500):  # no checkpoint in between: the writer cannot run
                a.t.send([hb(1, 2, n)])
            await wait_for(lambda: len(b.received) == 501, "500 messages")
            frames = b.t.stats[1].frames_received - frames_before
            assert frames == 1, f"500 messages took {frames} frames"
            await wait_for(lambda: a.t.stats[2].frames_sent == b.t.stats[1].frames_received,
                           "the sender's frame count")


async def test_batches_are_bounded_by_the_frame_size_target() -> None:
    with trio.fail_after(10):
        a, b = Member(1, chunk_bytes=4096), Member(2, chunk_bytes=4096)
        async with cluster(a, b):
            await connected(a, b)
            entry = Entry(term=1, index=1, data=b"x" * 100)
            msgs = [AppendEntries(term=1, src=1, dst=2, commit=n, entries=(entry,))
                    for n in range(200)]
            bytes_before = b.t.stats[1].bytes_received
            frames_before = b.t.stats[1].frames_received
            a.t.send(msgs)
            await wait_for(lambda: len(b.received) == 201, "200 appends")
            assert b.received[1:] == msgs
            frames = b.t.stats[1].frames_received - frames_before
            total = b.t.stats[1].bytes_received - bytes_before
            assert total > 4 * 4096  # the batch needed several frames...
            assert total / frames <= 4096 + 4  # ...each within the target plus its header
            assert frames < len(msgs)


# ---------------------------------------------------------------------- round-trip probes


async def test_probes_time_the_round_trip_both_ways_beside_raft_traffic() -> None:
    with trio.fail_after(10):
        rtts: dict[int, list[tuple[int, float]]] = {1: [], 2: []}
        a = Member(1, probe_interval=0.01, on_rtt=lambda p, s: rtts[1].append((p, s)))
        b = Member(2, probe_interval=0.01, on_rtt=lambda p, s: rtts[2].append((p, s)))
        async with cluster(a, b):
            for n in range(1, 301):
                a.t.send([hb(1, 2, n)])
                b.t.send([hb(2, 1, n)])
                if n % 30 == 0:
                    await trio.sleep(0.005)  # let probes interleave with the messages
            await wait_for(lambda: len(rtts[1]) >= 5 and len(rtts[2]) >= 5,
                           "five round trips each way")
            assert {p for p, _ in rtts[1]} == {2}
            assert {p for p, _ in rtts[2]} == {1}
            assert all(0 < s < 1 for _, s in rtts[1] + rtts[2])
            # Probes are not Raft messages: every message arrives once, in order, and only
            # messages are counted as messages (the frames and bytes include the probes).
            await wait_for(lambda: len(a.received) == 300 and len(b.received) == 300,
                           "every message")
            assert b.received == [hb(1, 2, n) for n in range(1, 301)]
            assert a.received == [hb(2, 1, n) for n in range(1, 301)]
            assert a.t.stats[2].messages_sent == b.t.stats[1].messages_received == 300
            assert a.t.stats[2].frames_sent > 300 // 30


async def test_unanswered_pings_are_forgotten_and_never_pair_with_a_later_pong() -> None:
    """b accepts a's pings but has no link back, so it cannot answer; a remembers only the
    last eight. Once b can answer, each pong pairs with its own ping: a sample well under
    the age of the oldest remembered ping (eight intervals, 0.4 s) shows that no pong was
    paired with an older, unanswered ping."""
    with trio.fail_after(10):
        rtts: list[float] = []
        a = Member(1, probe_interval=0.05, on_rtt=lambda p, s: rtts.append(s))
        b = Member(2)
        async with trio.open_nursery() as nursery:
            await start(nursery, a)
            await start(nursery, b)
            a.t.set_peers({2: b.addr})
            await nursery.start(a.t.run)
            await nursery.start(b.t.run)
            link = a.t._links[2]
            await wait_for(lambda: link.next_ping > 12, "twelve unanswered pings")
            assert rtts == []
            assert len(link.pings) == 8
            b.t.set_peers({1: a.addr})
            await wait_for(lambda: len(rtts) >= 3, "answered pings")
            assert max(rtts) < 0.2
            await a.t.aclose()
            await b.t.aclose()


def test_probe_interval_must_be_positive() -> None:
    with pytest.raises(ClientError, match="probe_interval"):
        Member(1, probe_interval=0)


# ---------------------------------------------------------------------- snapshots


async def test_large_snapshot_is_chunked_and_reassembled_intact() -> None:
    with trio.fail_after(10):
        a, b = Member(1), Member(2)
        data = random.Random(7).randbytes(5 * 1024 * 1024)
        snap = InstallSnapshot(term=3, src=1, dst=2, snapshot=Snapshot(
            SnapshotMeta(index=1000, term=3, conf_state=ConfState(voters=(1, 2))), data))
        async with cluster(a, b):
            await connected(a, b)
            a.t.send([hb(1, 2, 1), snap, hb(1, 2, 2)])
            await wait_for(lambda: a.snapshot_status, "the snapshot status")
            await wait_for(lambda: len(b.received) == 4, "the snapshot and both heartbeats")
            assert a.snapshot_status == [(2, True)]
            got = [m for m in b.received if isinstance(m, InstallSnapshot)]
            assert got == [snap]
            assert got[0].snapshot.data == data
            assert a.t.stats[2].frames_sent >= 5 + 2  # five 1 MiB chunks at least
            assert b.t.stats[1].snapshots_received == 1
            # Heartbeats are not held up behind the transfer: both went before it ended.
            assert b.received[-1] == snap


async def test_heartbeats_overtake_a_snapshot_transfer_and_the_wire_format_holds() -> None:
    """The receiving end is a raw socket read at the test's pace, so the transfer is
    provably still in progress when the heartbeat is queued."""
    with trio.fail_after(10):
        a = Member(1, chunk_bytes=256 * 1024)
        data = random.Random(3).randbytes(16 * 1024 * 1024)
        snap = InstallSnapshot(term=2, src=1, dst=2, snapshot=Snapshot(
            SnapshotMeta(index=50, term=2, conf_state=ConfState(voters=(1, 2))), data))
        (listener,) = await trio.open_tcp_listeners(0, host=LOCALHOST)
        # A small receive buffer (no autotuning) keeps the sender from finishing the
        # 16 MiB transfer into kernel buffers while the test is not reading.
        listener.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        a.t.set_peers({2: listener.socket.getsockname()[:2]})
        async with trio.open_nursery() as nursery:
            await nursery.start(a.t.run)
            a.t.send([snap])
            stream = await listener.accept()
            decoder = FrameDecoder(1024 * 1024)

            async def next_frame() -> Any:
                while (frame := decoder.next_frame()) is None:
                    decoder.feed(await stream.receive_some(65536))
                return cbor2.loads(frame)

            hello = await next_frame()
            assert hello == {"proto": PROTO, "cluster": CLUSTER, "from": 1, "to": 2}
            await stream.send_all(encode_frame(cbor2.dumps({"ok": True})))
            first = await next_frame()
            assert (first["seq"], first["last"]) == (0, False)
            a.t.send([hb(1, 2, 1)])
            kinds, parts = [], [first["data"]]
            while True:
                frame = await next_frame()
                if isinstance(frame, list):
                    kinds.append("batch")
                    assert frame == [encode_message(hb(1, 2, 1))]
                    continue
                assert frame["snap"] == first["snap"]
                assert frame["seq"] == len(parts)
                parts.append(frame["data"])
                if frame["last"]:
                    kinds.append("last chunk")
                    break
            assert kinds == ["batch", "last chunk"]
            assert b"".join(parts) == encode_message(snap)
            assert max(len(p) for p in parts) == 256 * 1024
            await wait_for(lambda: a.snapshot_status == [(2, True)], "the snapshot status")
            await stream.aclose()
            await listener.aclose()
            await a.t.aclose()


async def test_small_snapshot_travels_in_a_batch_and_is_reported() -> None:
    with trio.fail_after(10):
        a, b = Member(1), Member(2)
        snap = InstallSnapshot(term=1, src=1, dst=2, snapshot=Snapshot(
            SnapshotMeta(index=5, term=1, conf_state=ConfState(voters=(1, 2))), b"tiny"))
        async with cluster(a, b):
            await connected(a, b)
            a.t.send([snap])
            await wait_for(lambda: snap in b.received, "the snapshot")
            await wait_for(lambda: a.snapshot_status == [(2, True)], "its status")


async def test_snapshot_to_an_unreachable_peer_is_reported_failed() -> None:
    with trio.fail_after(10):
        a = Member(1)
        a.t.set_peers({2: (LOCALHOST, free_port())})
        snap = InstallSnapshot(term=1, src=1, dst=2, snapshot=Snapshot(
            SnapshotMeta(index=5, term=1), b"s" * (2 * 1024 * 1024)))
        async with trio.open_nursery() as nursery:
            await nursery.start(a.t.run)
            a.t.send([snap, hb(1, 2, 1)])
            await wait_for(lambda: a.snapshot_status == [(2, False)], "a failed snapshot")
            await wait_for(lambda: 2 in a.unreachable, "unreachable report")
            assert a.t.stats[2].messages_dropped == 2
            assert a.events("peer unreachable")
            await a.t.aclose()


# ---------------------------------------------------------------------- refusal


async def test_member_of_another_cluster_is_refused_and_both_sides_say_why() -> None:
    with trio.fail_after(10):
        good, stranger = Member(1), Member(2, cluster_id=0xBAD)
        async with trio.open_nursery() as nursery:
            await start(nursery, good)
            stranger.t.set_peers({1: good.addr})
            await nursery.start(stranger.t.run)
            stranger.t.send([hb(2, 1, n) for n in range(10)])
            await wait_for(lambda: stranger.events("refused by peer"), "the dialler's log")
            await wait_for(lambda: 1 in stranger.unreachable, "unreachable report")

            (refused,) = good.events("peer refused: cluster id mismatch")[:1]
            assert refused["log_level"] == "warning"
            assert "--initial-cluster-token" in refused["reason"]
            (told,) = stranger.events("refused by peer")[:1]
            assert told["log_level"] == "warning"
            assert told["peer"] == 1
            assert "cluster id mismatch" in told["reason"]
            assert "--initial-cluster-token" in told["reason"]
            assert good.received == []
            assert good.t.inbound_refused >= 1
            assert stranger.t.stats[1].messages_sent == 0
            assert stranger.t.stats[1].messages_dropped == 10
            await stranger.t.aclose()
            await good.t.aclose()


async def test_dialling_the_wrong_member_is_refused() -> None:
    with trio.fail_after(10):
        a, b = Member(1), Member(2)
        async with trio.open_nursery() as nursery:
            await start(nursery, b)
            a.t.set_peers({3: b.addr})  # a believes member 3 lives at b's address
            await nursery.start(a.t.run)
            a.t.send([hb(1, 3, 0)])
            await wait_for(lambda: a.events("refused by peer"), "the refusal")
            assert "member id mismatch" in a.events("refused by peer")[0]["reason"]
            assert b.events("peer refused: member id mismatch")
            assert b.received == []
            await a.t.aclose()
            await b.t.aclose()


# ---------------------------------------------------------------------- failures


async def test_reconnects_after_the_remote_restarts_on_the_same_port() -> None:
    with trio.fail_after(10):
        a, b = Member(1), Member(2)
        async with trio.open_nursery() as nursery:
            await start(nursery, a)
            await start(nursery, b)
            port = b.addr[1]
            a.t.set_peers({2: b.addr})
            await nursery.start(a.t.run)
            await connected(a, b)

            await b.t.aclose()
            await wait_for(lambda: 2 in a.unreachable, "the lost connection to be reported")
            assert a.events("peer disconnected")

            b2 = Member(2)
            await start(nursery, b2, port)

            def delivered() -> bool:
                a.t.send([hb(1, 2, 7)])  # messages sent while b was down were dropped
                return bool(b2.received)

            await wait_for(delivered, "delivery to the restarted member")
            assert b2.received[0] == hb(1, 2, 7)
            assert a.t.stats[2].reconnects >= 1
            await a.t.aclose()
            await b2.t.aclose()


GOOD_HELLO = {"proto": PROTO, "cluster": CLUSTER, "from": 3, "to": 2}

# (name, bytes a raw socket sends, whether it performs the handshake first)
GARBAGE: list[tuple[str, bytes, bool]] = [
    ("http request instead of a handshake", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", False),
    ("handshake that is not cbor", encode_frame(b"\xff\xfe\xfd"), False),
    ("handshake of the wrong protocol", encode_frame(cbor2.dumps({"proto": "x"})), False),
    ("data frame that is not cbor", encode_frame(b"\xff\xfe not cbor"), True),
    ("data frame of the wrong shape", encode_frame(cbor2.dumps({"what": 1})), True),
    ("batch item that is not a message", encode_frame(cbor2.dumps([b"\x01\x02"])), True),
    ("oversized frame header", b"\x7f\xff\xff\xff", True),
    ("message for another member",
     encode_frame(cbor2.dumps([encode_message(hb(3, 9, 0))])), True),
    ("message from someone else than the handshake said",
     encode_frame(cbor2.dumps([encode_message(hb(1, 2, 0))])), True),
    ("snapshot chunk without its start",
     encode_frame(cbor2.dumps({"snap": 1, "seq": 3, "last": True, "data": b"x"})), True),
    ("ping whose id is not an integer", encode_frame(cbor2.dumps({"ping": "1"})), True),
    ("pong with extra fields", encode_frame(cbor2.dumps({"pong": 1, "x": 0})), True),
]


@pytest.mark.parametrize(("name", "garbage", "handshake"), GARBAGE,
                         ids=[g[0] for g in GARBAGE])
async def test_garbage_drops_that_connection_only(
    name: str, garbage: bytes, handshake: bool
) -> None:
    with trio.fail_after(10):
        a, b = Member(1), Member(2)
        async with cluster(a, b):
            await connected(a, b)
            raw = await trio.open_tcp_stream(*b.addr)
            if handshake:
                await raw.send_all(encode_frame(cbor2.dumps(GOOD_HELLO)))
                decoder = FrameDecoder(1024)
                while (answer := decoder.next_frame()) is None:
                    decoder.feed(await raw.receive_some(1024))
                assert cbor2.loads(answer) == {"ok": True}
            await raw.send_all(garbage)

            async def closed_by_b() -> None:
                try:
                    while await raw.receive_some(1024):
                        pass
                except trio.BrokenResourceError:
                    pass  # a reset is a close too

            await closed_by_b()
            await raw.aclose()
            if handshake:
                assert b.events("peer connection dropped: protocol error")
                assert b.t.inbound_protocol_errors == 1
            else:
                assert b.events("peer refused")
                assert b.t.inbound_refused == 1
            assert [m for m in b.received if m.src == 3] == []
            # The member carries on: the real peer's link is untouched.
            a.t.send([hb(1, 2, 42)])
            await wait_for(lambda: hb(1, 2, 42) in b.received, "delivery after the garbage")


def test_full_queue_drops_and_reports_unreachable() -> None:
    """send() is synchronous: no trio run, no I/O needed to fill a queue."""
    a = Member(1, queue_limit=4)
    a.t.set_peers({2: (LOCALHOST, free_port())})  # not running: nothing drains
    snap = InstallSnapshot(term=1, src=1, dst=2)
    a.t.send([hb(1, 2, n) for n in range(4)])
    assert a.unreachable == []
    a.t.send([hb(1, 2, 4), hb(1, 2, 5), snap])
    assert a.unreachable == [2]  # once per send() call, not per message
    assert a.snapshot_status == [(2, False)]
    assert a.t.stats[2].messages_dropped == 3
    a.t.send([hb(1, 9, 0)])  # unknown peer: dropped quietly
    assert a.t.dropped_unknown_peer == 1
    assert a.unreachable == [2]
    assert repr(a.t) == (
        "<PeerTransport member=1 idle peers=1 connected=0 queued=4 inbound=0>"
    )


async def test_peers_can_be_added_and_removed_at_runtime() -> None:
    with trio.fail_after(10):
        a, b = Member(1), Member(2)
        async with trio.open_nursery() as nursery:
            await start(nursery, b)
            await nursery.start(a.t.run)
            a.t.send([hb(1, 2, 0)])
            assert a.t.dropped_unknown_peer == 1
            a.t.set_peers({2: b.addr})
            await connected(a, b)
            a.t.set_peers({})
            a.t.send([hb(1, 2, 1)])
            assert a.t.dropped_unknown_peer == 2
            await wait_for(lambda: b.events("peer inbound connection closed"),
                           "the removed link to close")
            assert hb(1, 2, 1) not in b.received
            await a.t.aclose()
            await b.t.aclose()


async def test_aclose_stops_run_and_serve_and_silences_send() -> None:
    with trio.fail_after(10):
        a, b = Member(1), Member(2)
        async with cluster(a, b):
            await connected(a, b)
            addr = a.addr
            await a.t.aclose()
            await a.t.aclose()  # idempotent
            a.t.send([hb(1, 2, 5)])
            assert a.t.stats[2].messages_dropped == 0  # nothing was queued any more
            assert "closed" in repr(a.t)
            with pytest.raises(OSError, match="connect"):  # the listener is closed
                await trio.open_tcp_stream(*addr)


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ClientError):
        Member(1, queue_limit=0)
    with pytest.raises(ClientError):
        Member(1, chunk_bytes=1024, max_frame_bytes=1024)


def test_a_dial_that_connected_to_itself_counts_as_refused() -> None:
    """Regression (found by the fault suite): dialling a dead member's port can connect the
    socket to itself (TCP simultaneous open, when the kernel picks that port as the source
    port); the dialler then held the port and the member could not restart ("address
    already in use"). Such a connection is refused and closed; a real one is not."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.connect(("127.0.0.1", s.getsockname()[1]))  # no listener: it meets itself
        assert s.getsockname() == s.getpeername()
        with pytest.raises(ConnectionRefusedError, match="itself"):
            refuse_self_connection(s)
    with socket.create_server(("127.0.0.1", 0)) as listener, \
            socket.create_connection(listener.getsockname()) as client:
        refuse_self_connection(client)  # a real peer: nothing raised
    with socket.socket() as unconnected:
        refuse_self_connection(unconnected)  # not connected: nothing to refuse
