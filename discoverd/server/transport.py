"""The TCP links between members: Raft messages out through a queue, Raft messages in
through a callback.

Shape (etcd's rafthttp, trio-websocket's task discipline):

* **Outbound**, one *link* per peer: ``send()`` appends to the link's bounded queue and never
  blocks; one writer task per link owns the connection it dials (the single-writer rule, so
  frames never interleave) and drains the whole queue into as few frames as it can. A member
  dials every peer and only writes on that connection; it reads what peers say to it on the
  connections they dialled. Two one-way connections per pair keep each stream's ownership
  trivial.
* **Inbound**, one reader task per accepted connection: frames from
  ``wire.framing.FrameDecoder``, messages from ``wire.peer_codec.decode_message``, each handed
  to ``on_message``. Anything malformed drops that one connection with a warning; a peer's
  garbage never stops the member.

Raft tolerates loss, duplication and reordering, so this layer never retries a message and
never blocks the raft loop: a full queue, a failed dial or a broken connection drops messages
and reports the peer unreachable (``on_unreachable``), which makes the leader fall back to
probing that follower. Snapshots are the one message whose fate Raft must hear about
(``on_snapshot_status``), because the leader stops replicating to a follower while it waits
for one.

Wire format (after each side's TCP connect):

1. Handshake. The dialler sends one frame holding the cbor2 map ``{"proto":
   "discoverd-peer/1", "cluster": <cluster id>, "from": <its member id>, "to": <the id it
   believes it dialled>}``; the acceptor answers ``{"ok": true}`` or ``{"ok": false,
   "error": <reason>}`` and closes. A member started with another ``--initial-cluster-token``
   has another cluster id, and both sides log why the link is refused.
2. Data frames, dialler to acceptor only: a cbor2 *list* of encoded messages (a batch), or a
   cbor2 *map* ``{"snap": transfer id, "seq": n, "last": bool, "data": bytes}`` carrying a
   slice of one encoded ``InstallSnapshot`` too big for a batch (more than ``chunk_bytes``).
   Batches may be interleaved between a transfer's chunks, so heartbeats keep flowing while
   a large snapshot streams; one transfer at a time per connection, and the receiver holds
   only that transfer's chunks.
3. Round-trip probes (when ``probe_interval`` is set): the dialler writes ``{"ping": n}``
   every interval; the acceptor answers ``{"pong": n}`` on *its own* link to the dialler
   (connections stay one-way). The id pairs each answer with its own ping, so a lost
   answer never skews another sample. The time is the member-to-member round trip
   through both transports (sockets, queues behind Raft traffic, both event loops) but not
   through Raft or a disk: etcd's peer prober measures the same way.

Callbacks are plain synchronous calls, made from the transport's tasks and, for messages
dropped on a full queue, from inside ``send()`` itself. They must not block: call a
``RawNode`` method that is legal between ``ready()`` and ``advance()`` (``step``,
``report_unreachable``, ``report_snapshot``) or enqueue for the raft loop. An exception from
a callback is a bug in the caller and propagates (it stops the member rather than hiding).
"""

from __future__ import annotations

import errno
import math
import random
import ssl
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import cbor2
import structlog
import trio

from discoverd.consensus.messages import InstallSnapshot, Message
from discoverd.errors import ClientError, PeerError
from discoverd.server.tls import handshake_failure
from discoverd.wire.framing import FrameDecoder, FrameError, encode_frame
from discoverd.wire.peer_codec import decode_message, encode_message

PROTO = "discoverd-peer/1"
"""Handshake protocol name; bump the suffix for an incompatible wire change."""

DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024
DEFAULT_CHUNK_BYTES = 1024 * 1024

BACKOFF_MIN_SECONDS = 0.05
BACKOFF_MAX_SECONDS = 1.0

PROBE_INTERVAL_SECONDS = 1.0
"""How often a member times the round trip to each peer (``probe_interval``): two frames
of a few bytes per peer per second, for a sample a second in the RTT histogram."""

# The handshake is a few dozen bytes; a tight limit means a stray client (an HTTP request,
# a port scanner) is refused after its first four bytes instead of being buffered.
_HANDSHAKE_FRAME_BYTES = 64 * 1024
# cbor2 headers around the payloads of a frame: a list or map header plus, per item, at most
# a 9-byte bytes header; chunk maps add their four short keys and small ints.
_ITEM_OVERHEAD = 9
_FRAME_OVERHEAD = 64
_RECEIVE_BYTES = 256 * 1024
# A repeated connection problem (a peer down for an hour, a wrong cluster token) is logged
# at warning level when it starts or changes, then at most this often; debug otherwise.
_REPEAT_LOG_SECONDS = 30.0
# How long a refused dialler gets to read our answer before we close on it.
_REFUSAL_LINGER_SECONDS = 1.0

_STREAM_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)

MessageCallback = Callable[[Message], None]
UnreachableCallback = Callable[[int], None]
SnapshotStatusCallback = Callable[[int, bool], None]
RttCallback = Callable[[int, float], None]

# Pings a link remembers while waiting for their pongs; an older one is forgotten (its pong,
# should it come, is ignored), so a peer that never answers costs a bounded dict. Pongs owed
# to a peer are bounded alike.
_MAX_PINGS_OUTSTANDING = 8


class Log(Protocol):
    """The part of a structlog bound logger the transport uses."""

    def bind(self, **new_values: Any) -> Log: ...
    def debug(self, event: str, **kw: Any) -> Any: ...
    def info(self, event: str, **kw: Any) -> Any: ...
    def warning(self, event: str, **kw: Any) -> Any: ...
    def error(self, event: str, **kw: Any) -> Any: ...


@dataclass(slots=True)
class PeerStats:
    """Monotonic counters for one peer, both directions; read by the metrics module.

    ``messages_dropped`` counts messages to the peer that were never written (full queue,
    no connection, too large, peer removed); ``reconnects`` counts successful handshakes
    after the first one.
    """

    messages_sent: int = 0
    messages_received: int = 0
    messages_dropped: int = 0
    frames_sent: int = 0
    frames_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    connects: int = 0
    reconnects: int = 0
    dial_failures: int = 0
    snapshots_sent: int = 0
    snapshots_failed: int = 0
    snapshots_received: int = 0


@dataclass(slots=True)
class _Transfer:
    """An outbound chunked snapshot: the encoded message and how much of it is written."""

    transfer_id: int
    data: bytes
    offset: int = 0
    seq: int = 0


@dataclass(slots=True)
class _Reassembly:
    """An inbound chunked snapshot being put back together (one per connection)."""

    transfer_id: int
    next_seq: int = 0
    parts: list[bytes] = field(default_factory=list)


class _Link:
    """Everything about the outbound side of one peer: its queue and its writer's state."""

    def __init__(self, peer: int, addr: tuple[str, int], stats: PeerStats) -> None:
        self.peer = peer
        self.addr = addr
        self.stats = stats
        self.queue: deque[Message] = deque()
        self.wakeup = trio.Event()
        self.scope = trio.CancelScope()  # the writer task's lifetime (peer removed, close)
        self.conn_scope: trio.CancelScope | None = None  # the current connection's lifetime
        self.connected = False
        # Encoded InstallSnapshot messages waiting for their turn, and the one being written.
        self.snapshots: deque[bytes] = deque()
        self.transfer: _Transfer | None = None
        self.next_transfer_id = 1
        self.problem = ""  # the last connection problem logged, for rate limiting
        self.problem_logged_at = -math.inf
        # Round-trip probes: our pings awaiting the peer's pong (id -> time written), whether
        # a ping is due, and pongs we owe the peer for its pings.
        self.pings: dict[int, float] = {}
        self.next_ping = 1
        self.ping_due = False
        self.pongs: list[int] = []

    def __repr__(self) -> str:
        state = "connected" if self.connected else "disconnected"
        transfer = "" if self.transfer is None else f" transfer={self.transfer.transfer_id}"
        return (
            f"<_Link peer={self.peer} {state} queued={len(self.queue)} "
            f"snapshots={len(self.snapshots)}{transfer}>"
        )

    def take_all(self) -> list[Message]:
        batch = list(self.queue)
        self.queue.clear()
        return batch

    async def wait_for_work(self) -> None:
        if (self.queue or self.snapshots or self.transfer is not None or self.pongs
                or self.ping_due):
            return
        self.wakeup = trio.Event()
        await self.wakeup.wait()


class _Inbound:
    """One accepted connection after its handshake."""

    def __init__(self, peer: int, remote: str, stats: PeerStats) -> None:
        self.peer = peer
        self.remote = remote
        self.stats = stats
        self.reassembly: _Reassembly | None = None


class PeerTransport:
    """TCP links to the other members of one cluster (see the module docstring).

    Run ``serve`` (inbound) and ``run`` (outbound) as tasks of the member's nursery, call
    ``send`` from the raft loop, ``set_peers`` when membership changes, and ``aclose`` (or
    cancel the nursery) to stop.

    Args:
        cluster_id: this cluster's id; connections from another cluster are refused.
        member_id: this member's id; the handshake's ``to`` must equal it.
        peers: member id -> (host, port) of its peer listener. This member's own id is
            ignored if present.
        on_message: called with every message received (``msg.dst == member_id``).
        on_unreachable: called with a peer id whenever messages to it were lost.
        on_snapshot_status: called ``(peer, True)`` once an InstallSnapshot is entirely
            written to the peer's connection, ``(peer, False)`` if it was dropped instead.
        log: a structlog logger; ``member`` is bound to it.
        queue_limit: messages queued per peer before ``send`` starts dropping.
        max_frame_bytes: largest frame accepted from a peer (and written to one).
        chunk_bytes: target size of a frame; an InstallSnapshot whose encoding is larger is
            sent as chunks of this size.
        dial_timeout: seconds for one connect plus handshake.
        rng: jitter source for reconnect backoff.
        probe_interval: seconds between round-trip probes on each outbound connection
            (the first right after connecting); ``None``: no probes.
        on_rtt: called ``(peer, seconds)`` with each probe's round-trip time.
        server_ssl: accepted connections are TLS with this context (https:// peer URLs);
            a failed handshake refuses the connection before it can say anything.
        client_ssl: the context for dials over TLS (the peer's name is verified).
        dial_tls: whether to dial an address over TLS (its peer URL is https://);
            default: every address when ``client_ssl`` is given.

    Raises:
        ClientError: a limit is not positive, or ``chunk_bytes`` leaves no room for a
            chunk's header within ``max_frame_bytes``.
    """

    def __init__(
        self,
        *,
        cluster_id: int,
        member_id: int,
        peers: dict[int, tuple[str, int]],
        on_message: MessageCallback,
        on_unreachable: UnreachableCallback,
        on_snapshot_status: SnapshotStatusCallback,
        log: Log | None = None,
        queue_limit: int = 4096,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        dial_timeout: float = 1.0,
        rng: random.Random | None = None,
        probe_interval: float | None = None,
        on_rtt: RttCallback | None = None,
        server_ssl: ssl.SSLContext | None = None,
        client_ssl: ssl.SSLContext | None = None,
        dial_tls: Callable[[tuple[str, int]], bool] | None = None,
    ) -> None:
        if queue_limit <= 0 or chunk_bytes <= 0 or dial_timeout <= 0:
            raise ClientError("queue_limit, chunk_bytes and dial_timeout must be positive")
        if probe_interval is not None and probe_interval <= 0:
            raise ClientError("probe_interval must be positive")
        if chunk_bytes + _FRAME_OVERHEAD > max_frame_bytes:
            raise ClientError(
                f"chunk_bytes ({chunk_bytes}) + {_FRAME_OVERHEAD} must not exceed "
                f"max_frame_bytes ({max_frame_bytes})"
            )
        self.cluster_id = cluster_id
        self.member_id = member_id
        self._on_message = on_message
        self._on_unreachable = on_unreachable
        self._on_snapshot_status = on_snapshot_status
        base: Log = log if log is not None else structlog.get_logger("discoverd.transport")
        self._log = base.bind(member=member_id)
        self._queue_limit = queue_limit
        self._max_frame_bytes = max_frame_bytes
        self._chunk_bytes = chunk_bytes
        self._dial_timeout = dial_timeout
        self._accept_timeout = max(5.0, 2 * dial_timeout)
        self._rng = rng if rng is not None else random.Random()
        self._probe_interval = probe_interval
        self.on_rtt = on_rtt
        self._server_ssl = server_ssl
        self._client_ssl = client_ssl
        self._dial_tls = dial_tls if dial_tls is not None else (
            lambda addr: client_ssl is not None)

        self.stats: dict[int, PeerStats] = {}
        """Per-peer counters, kept after a peer is removed so that they stay monotonic."""
        self.inbound_refused = 0
        """Inbound connections refused at the handshake (wrong cluster, wrong id, garbage,
        a failed TLS handshake)."""
        self.inbound_tls_refused = 0
        """Of those, the ones whose TLS handshake failed (no or an untrusted certificate)."""
        self.inbound_protocol_errors = 0
        """Accepted connections dropped because the peer sent something malformed."""
        self.dropped_unknown_peer = 0
        """Messages passed to ``send`` for a peer this transport does not know."""
        self.listeners: list[trio.SocketListener] = []
        """The peer listeners, once ``serve`` has started (ask them for the bound port)."""

        self._links: dict[int, _Link] = {}
        self._inbound: dict[int, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None
        self._run_scope: trio.CancelScope | None = None
        self._serve_scopes: list[trio.CancelScope] = []
        self._running: list[trio.Event] = []  # set when run()/serve() have exited
        self._closed = False
        self.set_peers(peers)

    def __repr__(self) -> str:
        connected = sum(1 for link in self._links.values() if link.connected)
        queued = sum(len(link.queue) for link in self._links.values())
        state = "closed" if self._closed else "running" if self._nursery else "idle"
        return (
            f"<PeerTransport member={self.member_id} {state} peers={len(self._links)} "
            f"connected={connected} queued={queued} inbound={len(self._inbound)}>"
        )

    # ------------------------------------------------------------------ the raft loop's side

    def send(self, messages: Iterable[Message]) -> None:
        """Queue messages for their ``dst``; never blocks, never raises for a peer's state.

        A message to an unknown peer is dropped (debug log). When a peer's queue is full the
        message is dropped, ``on_unreachable(peer)`` is called once for this call, and an
        InstallSnapshot among the dropped gets ``on_snapshot_status(peer, False)``.
        Must be called from the trio thread.
        """
        overflowed: set[int] = set()
        failed_snapshots: list[int] = []
        if self._closed:
            return
        for m in messages:
            link = self._links.get(m.dst)
            if link is None:
                self.dropped_unknown_peer += 1
                self._log.debug("message to unknown peer dropped", peer=m.dst,
                                type=type(m).__name__)
                continue
            if len(link.queue) >= self._queue_limit:
                link.stats.messages_dropped += 1
                overflowed.add(m.dst)
                if isinstance(m, InstallSnapshot):
                    failed_snapshots.append(m.dst)
                continue
            link.queue.append(m)
            link.wakeup.set()
        for peer in sorted(overflowed):
            self._log.debug("peer queue full, messages dropped", peer=peer)
            self._on_unreachable(peer)
        for peer in failed_snapshots:
            self._snapshot_failed(self._links[peer])

    def is_connected(self, peer: int) -> bool:
        """Whether our link to ``peer`` is up (handshake done, not broken since): what the
        leader's strict reconfiguration checks call a connected member, as etcd asks its
        transport."""
        link = self._links.get(peer)
        return link is not None and link.connected

    def set_peers(self, peers: dict[int, tuple[str, int]]) -> None:
        """Replace the set of peers (membership changed): start a link for each new peer,
        stop and forget removed ones (their queued messages are dropped), and redial a peer
        whose address changed."""
        wanted = {pid: addr for pid, addr in peers.items() if pid != self.member_id}
        for pid in sorted(set(self._links) - set(wanted)):
            gone = self._links.pop(pid)
            gone.scope.cancel()
            gone.stats.messages_dropped += len(gone.queue)
            gone.queue.clear()
            self._log.info("peer removed", peer=pid)
        for pid, addr in sorted(wanted.items()):
            link = self._links.get(pid)
            if link is None:
                stats = self.stats.setdefault(pid, PeerStats())
                link = self._links[pid] = _Link(pid, addr, stats)
                self._log.debug("peer added", peer=pid, addr=_fmt(addr))
                if self._nursery is not None:
                    self._nursery.start_soon(self._link_main, link)
            elif link.addr != addr:
                self._log.info("peer address changed", peer=pid, addr=_fmt(addr))
                link.addr = addr
                if link.conn_scope is not None:
                    link.conn_scope.cancel()

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run one writer task per peer until cancelled or ``aclose``; ``started()`` once the
        writers exist (the first dials may still be in progress).

        Raises:
            ClientError: ``run`` is already running.
        """
        if self._nursery is not None:
            raise ClientError("PeerTransport.run is already running")
        exited = trio.Event()
        self._running.append(exited)
        try:
            async with trio.open_nursery() as nursery:
                self._run_scope = nursery.cancel_scope
                if self._closed:
                    nursery.cancel_scope.cancel()
                self._nursery = nursery
                for link in self._links.values():
                    nursery.start_soon(self._link_main, link)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            self._run_scope = None
            exited.set()

    async def serve(
        self,
        where: list[trio.SocketListener] | tuple[str, int],
        *,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept peer connections until cancelled or ``aclose``.

        Args:
            where: listeners to serve, or ``(host, port)`` to open them (port 0 picks a free
                port; read it from ``self.listeners[0].socket.getsockname()``).

        ``task_status.started(listeners)`` is called once the listeners accept connections.
        The listeners are closed when ``serve`` returns.
        """
        scope = trio.CancelScope()
        if self._closed:
            scope.cancel()
        exited = trio.Event()
        self._serve_scopes.append(scope)
        self._running.append(exited)
        listeners = where if isinstance(where, list) else []
        try:
            with scope:
                if isinstance(where, tuple):
                    host, port = where
                    listeners = await trio.open_tcp_listeners(port, host=host)
                self.listeners = listeners
                self._log.info(
                    "peer listener started",
                    addrs=[_fmt(lst.socket.getsockname()) for lst in listeners],
                )
                await trio.serve_listeners(
                    self._handle_inbound, listeners, task_status=task_status
                )
        finally:
            # serve_listeners closes them itself, unless we were cancelled before it ran.
            for lst in listeners:
                await trio.aclose_forcefully(lst)
            self._serve_scopes.remove(scope)
            exited.set()

    async def aclose(self) -> None:
        """Stop accepting, drop every connection and queued message, and wait until ``run``
        and ``serve`` have returned. Idempotent; ``send`` drops everything afterwards."""
        self._closed = True
        if self._run_scope is not None:
            self._run_scope.cancel()
        for scope in self._serve_scopes:
            scope.cancel()
        for scope in self._inbound.values():
            scope.cancel()
        for exited in self._running:
            await exited.wait()
        for link in self._links.values():
            link.stats.messages_dropped += len(link.queue)
            link.queue.clear()
        await trio.lowlevel.checkpoint()

    # ------------------------------------------------------------------ outbound

    async def _link_main(self, link: _Link) -> None:
        """The writer task of one peer: dial, handshake, write until the connection breaks,
        report what was lost, back off, repeat."""
        failures = 0
        with link.scope:
            while True:
                stream = await self._dial(link)
                if stream is None:
                    failures += 1
                    link.stats.dial_failures += 1
                    self._drop_queued(link)
                    await trio.sleep(self._backoff(failures))
                    continue
                failures = 0
                link.connected = True
                link.pongs.clear()  # sent now, they would time our outage, not a round trip
                link.stats.connects += 1
                if link.stats.connects > 1:
                    link.stats.reconnects += 1
                link.problem = ""
                self._log.info("peer connected", peer=link.peer, addr=_fmt(link.addr))
                try:
                    with trio.CancelScope() as conn_scope:
                        link.conn_scope = conn_scope
                        reason = await self._pump(link, stream)
                    if conn_scope.cancelled_caught:
                        reason = "peer address changed"
                finally:
                    link.conn_scope = None
                    link.connected = False
                    await trio.aclose_forcefully(stream)
                self._log.info("peer disconnected", peer=link.peer, reason=reason)
                self._fail_snapshots(link)
                self._on_unreachable(link.peer)
                await trio.sleep(self._backoff(1))

    async def _dial(self, link: _Link) -> trio.abc.Stream | None:
        """Connect and handshake within ``dial_timeout``; None (and a log line) on failure."""
        host, port = link.addr
        hello = {"proto": PROTO, "cluster": self.cluster_id, "from": self.member_id,
                 "to": link.peer}
        stream: trio.abc.Stream | None = None
        answer: object = None
        connected = False
        tls = self._client_ssl is not None and self._dial_tls(link.addr)
        try:
            with trio.fail_after(self._dial_timeout):
                raw = stream = await trio.open_tcp_stream(host, port)
                refuse_self_connection(raw.socket)
                if tls:
                    assert self._client_ssl is not None
                    stream = trio.SSLStream(raw, self._client_ssl, server_hostname=host)
                    await stream.do_handshake()
                await stream.send_all(encode_frame(cbor2.dumps(hello)))
                frame = await _receive_frame(stream, FrameDecoder(_HANDSHAKE_FRAME_BYTES))
            answer = _loads(frame, "handshake answer")
            if isinstance(answer, dict) and answer.get("ok") is True:
                connected = True
                return stream
        except trio.TooSlowError:
            self._problem(link, "info", "peer unreachable", reason="dial timed out")
            return None
        except (*_STREAM_ERRORS, PeerError, FrameError) as e:
            if tls and _is_tls_error(e):
                # A certificate problem is a misconfiguration, not a peer being down.
                self._problem(link, "warning", "peer refused: TLS",
                              reason=f"TLS: {handshake_failure(e)}")
            else:
                self._problem(link, "info", "peer unreachable", reason=_reason(e))
            return None
        finally:
            if stream is not None and not connected:
                await trio.aclose_forcefully(stream)
        error = answer.get("error") if isinstance(answer, dict) else None
        if not isinstance(error, str):
            error = f"malformed handshake answer: {answer!r:.200}"
        self._problem(link, "warning", "refused by peer", reason=error)
        return None

    async def _pump(self, link: _Link, stream: trio.abc.Stream) -> str:
        """Write queued work to ``stream`` until it breaks; return why it broke.

        A watcher reads the stream at the same time: the acceptor never writes after the
        handshake, so EOF (or anything at all) means the connection is gone. Without it a
        dead connection would only be noticed at the next write that fails.
        """
        reason = "connection lost"
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                nonlocal reason
                try:
                    data = await stream.receive_some(_RECEIVE_BYTES)
                    reason = "closed by peer" if not data else "unexpected data from peer"
                except _STREAM_ERRORS as e:
                    reason = _reason(e)
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            if self._probe_interval is not None:
                nursery.start_soon(self._probe_timer, link, self._probe_interval)
            try:
                await self._write_loop(link, stream)
            except _STREAM_ERRORS as e:
                reason = f"write failed: {_reason(e)}"
            nursery.cancel_scope.cancel()
        return reason

    async def _probe_timer(self, link: _Link, interval: float) -> None:
        """Make a ping due every ``interval`` for as long as this connection lives."""
        while True:
            link.ping_due = True
            link.wakeup.set()
            await trio.sleep(interval)

    async def _write_probes(self, link: _Link, stream: trio.abc.Stream) -> None:
        """Pongs first (a peer is timing them), then our ping if one is due."""
        pongs, link.pongs = link.pongs, []
        for n in pongs:
            await self._write_frame(link, stream, cbor2.dumps({"pong": n}))
        if link.ping_due:
            link.ping_due = False
            n = link.next_ping
            link.next_ping += 1
            link.pings[n] = trio.current_time()
            while len(link.pings) > _MAX_PINGS_OUTSTANDING:
                del link.pings[next(iter(link.pings))]  # the oldest: dicts keep order
            await self._write_frame(link, stream, cbor2.dumps({"ping": n}))

    async def _write_loop(self, link: _Link, stream: trio.abc.Stream) -> None:
        """Take everything queued, write it as few frames as possible, then at most one
        snapshot chunk, and go round again (so batches interleave with a long transfer)."""
        while True:
            await link.wait_for_work()
            if link.pongs or link.ping_due:
                await self._write_probes(link, stream)
            for payload, messages in self._encode_batches(link, link.take_all()):
                await self._write_frame(link, stream, payload)
                link.stats.messages_sent += len(messages)
                for m in messages:
                    if isinstance(m, InstallSnapshot):
                        link.stats.snapshots_sent += 1
                        self._on_snapshot_status(link.peer, True)
            if link.transfer is None and link.snapshots:
                link.transfer = _Transfer(link.next_transfer_id, link.snapshots.popleft())
                link.next_transfer_id += 1
            t = link.transfer
            if t is None:
                continue
            chunk = t.data[t.offset : t.offset + self._chunk_bytes]
            last = t.offset + len(chunk) >= len(t.data)
            payload = cbor2.dumps({"snap": t.transfer_id, "seq": t.seq, "last": last,
                                   "data": chunk})
            await self._write_frame(link, stream, payload)
            t.offset += len(chunk)
            t.seq += 1
            if last:
                link.transfer = None
                link.stats.messages_sent += 1
                link.stats.snapshots_sent += 1
                self._log.info("snapshot sent", peer=link.peer, bytes=len(t.data),
                               chunks=t.seq)
                self._on_snapshot_status(link.peer, True)

    def _encode_batches(
        self, link: _Link, messages: list[Message]
    ) -> list[tuple[bytes, list[Message]]]:
        """Group messages into frame payloads of about ``chunk_bytes`` each.

        An InstallSnapshot too large for that is set aside for chunking; a message too large
        for any frame (a misconfigured entry size limit) is dropped with an error.
        """
        frames: list[tuple[bytes, list[Message]]] = []
        items: list[bytes] = []
        batch: list[Message] = []
        size = 0
        lost = False
        for m in messages:
            data = encode_message(m)
            if isinstance(m, InstallSnapshot) and len(data) > self._chunk_bytes:
                link.snapshots.append(data)
                continue
            if len(data) + _FRAME_OVERHEAD > self._max_frame_bytes:
                link.stats.messages_dropped += 1
                lost = True
                self._log.error("message too large for a peer frame, dropped", peer=link.peer,
                                type=type(m).__name__, bytes=len(data),
                                max_frame_bytes=self._max_frame_bytes)
                continue
            if items and size + len(data) + _ITEM_OVERHEAD > self._chunk_bytes:
                frames.append((cbor2.dumps(items), batch))
                items, batch, size = [], [], 0
            items.append(data)
            batch.append(m)
            size += len(data) + _ITEM_OVERHEAD
        if items:
            frames.append((cbor2.dumps(items), batch))
        if lost:
            self._on_unreachable(link.peer)
        return frames

    async def _write_frame(self, link: _Link, stream: trio.abc.Stream, payload: bytes) -> None:
        frame = encode_frame(payload)
        await stream.send_all(frame)
        link.stats.frames_sent += 1
        link.stats.bytes_sent += len(frame)

    def _drop_queued(self, link: _Link) -> None:
        """No connection: drop what is queued rather than deliver it stale later (Raft will
        resend what still matters), and say so."""
        dropped = link.take_all()
        if not dropped and not link.snapshots:
            return
        link.stats.messages_dropped += len(dropped)
        for m in dropped:
            if isinstance(m, InstallSnapshot):
                self._snapshot_failed(link)
        self._fail_snapshots(link)
        self._on_unreachable(link.peer)

    def _fail_snapshots(self, link: _Link) -> None:
        """The connection is gone: the transfer in progress and those waiting have failed."""
        pending = len(link.snapshots) + (link.transfer is not None)
        link.snapshots.clear()
        link.transfer = None
        link.stats.messages_dropped += pending
        for _ in range(pending):
            self._snapshot_failed(link)

    def _snapshot_failed(self, link: _Link) -> None:
        link.stats.snapshots_failed += 1
        self._log.info("snapshot to peer failed", peer=link.peer)
        self._on_snapshot_status(link.peer, False)

    def _backoff(self, failures: int) -> float:
        """Exponential backoff with jitter: 50 ms doubling per failure up to 1 s, each wait
        drawn from the upper half so that members do not redial in lockstep."""
        doublings = min(max(failures - 1, 0), 16)
        ceiling = min(BACKOFF_MAX_SECONDS, BACKOFF_MIN_SECONDS * (1 << doublings))
        return ceiling * (0.5 + 0.5 * self._rng.random())

    def _problem(self, link: _Link, level: str, event: str, *, reason: str) -> None:
        """Log a connection problem loudly when it starts or changes, quietly while it
        repeats (a peer that is down is redialled every second)."""
        now = trio.current_time()
        key = f"{event}: {reason}"
        if key != link.problem or now - link.problem_logged_at >= _REPEAT_LOG_SECONDS:
            link.problem = key
            link.problem_logged_at = now
            getattr(self._log, level)(event, peer=link.peer, addr=_fmt(link.addr),
                                      reason=reason)
        else:
            self._log.debug(event, peer=link.peer, addr=_fmt(link.addr), reason=reason)

    # ------------------------------------------------------------------ inbound

    async def _handle_inbound(self, raw: trio.SocketStream) -> None:
        """One accepted connection: handshake, then read frames until it ends or misbehaves.
        ``serve_listeners`` closes the stream when this returns."""
        remote = _remote(raw)
        stream: trio.abc.Stream = raw
        if self._server_ssl is not None:
            tls = trio.SSLStream(raw, self._server_ssl, server_side=True)
            try:
                with trio.fail_after(self._accept_timeout):
                    await tls.do_handshake()
            except (trio.TooSlowError, *_STREAM_ERRORS) as e:
                # No (or an untrusted) certificate under --peer-client-cert-auth, or not
                # TLS at all: it never reaches the peer handshake, let alone Raft.
                self.inbound_refused += 1
                self.inbound_tls_refused += 1
                self._log.warning("peer refused: TLS handshake failed", remote=remote,
                                  reason="no handshake in time"
                                  if isinstance(e, trio.TooSlowError) else handshake_failure(e))
                return
            stream = tls
        decoder = FrameDecoder(_HANDSHAKE_FRAME_BYTES)
        try:
            with trio.fail_after(self._accept_timeout):
                hello = _loads(await _receive_frame(stream, decoder), "handshake")
        except trio.TooSlowError:
            self.inbound_refused += 1
            self._log.warning("peer refused: no handshake in time", remote=remote)
            return
        except (PeerError, FrameError) as e:
            self.inbound_refused += 1
            self._log.warning("peer refused: malformed handshake", remote=remote,
                              error=str(e))
            await self._refuse(stream, f"malformed handshake: {e}")
            return
        except _STREAM_ERRORS as e:
            self._log.debug("inbound connection lost during handshake", remote=remote,
                            error=_reason(e))
            return
        peer, event, reason = self._check_hello(hello)
        if reason:
            self.inbound_refused += 1
            self._log.warning(event, remote=remote, reason=reason)
            await self._refuse(stream, reason)
            return
        try:
            await stream.send_all(encode_frame(cbor2.dumps({"ok": True})))
        except _STREAM_ERRORS:
            return
        decoder.max_frame_bytes = self._max_frame_bytes
        conn = _Inbound(peer, remote, self.stats.setdefault(peer, PeerStats()))
        self._log.info("peer accepted", peer=peer, remote=remote)
        # One inbound connection per peer: a redial replaces a connection that may be dead.
        if (old := self._inbound.get(peer)) is not None:
            old.cancel()
        with trio.CancelScope() as scope:
            self._inbound[peer] = scope
            try:
                await self._read_loop(stream, decoder, conn)
            except (PeerError, FrameError) as e:
                self.inbound_protocol_errors += 1
                self._log.warning("peer connection dropped: protocol error", peer=peer,
                                  remote=remote, error=str(e))
            except _STREAM_ERRORS as e:
                self._log.info("peer inbound connection lost", peer=peer, reason=_reason(e))
            finally:
                if self._inbound.get(peer) is scope:
                    del self._inbound[peer]

    def _check_hello(self, hello: object) -> tuple[int, str, str]:
        """Validate a handshake; return ``(peer, "", "")`` or ``(0, log event, reason)``."""
        if not isinstance(hello, dict) or hello.get("proto") != PROTO:
            proto = hello.get("proto") if isinstance(hello, dict) else None
            return 0, "peer refused: not a discoverd peer", (
                f"unsupported protocol {proto!r:.100}, this member speaks {PROTO!r}"
            )
        cluster, frm, to = hello.get("cluster"), hello.get("from"), hello.get("to")
        if not all(type(v) is int and v >= 0 for v in (cluster, frm, to)):
            return 0, "peer refused: malformed handshake", (
                "malformed handshake: cluster, from and to must be non-negative integers"
            )
        assert isinstance(cluster, int)
        assert isinstance(frm, int)
        assert isinstance(to, int)
        if cluster != self.cluster_id:
            return 0, "peer refused: cluster id mismatch", (
                f"cluster id mismatch: member {self.member_id} belongs to cluster "
                f"{self.cluster_id:x}, member {frm} to cluster {cluster:x} "
                "(was one of them started with another --initial-cluster-token?)"
            )
        if to != self.member_id:
            return 0, "peer refused: member id mismatch", (
                f"member id mismatch: member {frm} dialled member {to} but reached member "
                f"{self.member_id} (check the peer URLs in --initial-cluster)"
            )
        if frm == self.member_id or frm == 0:
            return 0, "peer refused: member id conflict", (
                f"member id conflict: the dialling member claims id {frm}, which is not a "
                "valid peer id for this member"
            )
        return frm, "", ""

    async def _refuse(self, stream: trio.abc.Stream, reason: str) -> None:
        """Tell the dialler why, then close once it has had a chance to read it (closing
        with unread input would reset the connection and lose the answer)."""
        try:
            await stream.send_all(encode_frame(cbor2.dumps({"ok": False, "error": reason})))
            if isinstance(stream, trio.abc.HalfCloseableStream):  # TLS cannot half-close
                await stream.send_eof()
            with trio.move_on_after(_REFUSAL_LINGER_SECONDS):
                while await stream.receive_some(_RECEIVE_BYTES):
                    pass
        except _STREAM_ERRORS:
            pass

    async def _read_loop(
        self, stream: trio.abc.Stream, decoder: FrameDecoder, conn: _Inbound
    ) -> None:
        while True:
            while (frame := decoder.next_frame()) is not None:
                conn.stats.frames_received += 1
                self._on_frame(conn, frame)
            data = await stream.receive_some(_RECEIVE_BYTES)
            if not data:
                decoder.feed_eof()
                self._log.info("peer inbound connection closed", peer=conn.peer)
                return
            conn.stats.bytes_received += len(data)
            decoder.feed(data)

    def _on_frame(self, conn: _Inbound, frame: bytes) -> None:
        """Dispatch one data frame. Raises PeerError for anything off-protocol."""
        obj = _loads(frame, "data frame")
        if isinstance(obj, list):
            for item in obj:
                if not isinstance(item, bytes):
                    raise PeerError(f"batch item is {type(item).__name__}, not bytes")
                self._deliver(conn, _decode(item))
        elif isinstance(obj, dict) and "snap" in obj:
            self._on_chunk(conn, obj)
        elif isinstance(obj, dict) and ("ping" in obj or "pong" in obj):
            self._on_probe(conn, obj)
        else:
            raise PeerError(f"data frame is neither a batch, a snapshot chunk nor a probe: "
                            f"{type(obj).__name__}")

    def _on_probe(self, conn: _Inbound, probe: dict[Any, Any]) -> None:
        """A ping: owe its pong on our own link to that peer (dropped if we have none). A
        pong: the round trip of our ping with that id, if we still remember it."""
        kind = "ping" if "ping" in probe else "pong"
        n = probe.get(kind)
        if len(probe) != 1 or type(n) is not int:
            raise PeerError(f"malformed {kind} frame")
        link = self._links.get(conn.peer)
        if link is None:
            return
        if kind == "ping":
            if link.connected and len(link.pongs) < _MAX_PINGS_OUTSTANDING:
                link.pongs.append(n)
                link.wakeup.set()
            return
        sent = link.pings.pop(n, None)
        if sent is not None and self.on_rtt is not None:
            self.on_rtt(conn.peer, trio.current_time() - sent)

    def _on_chunk(self, conn: _Inbound, chunk: dict[Any, Any]) -> None:
        tid, seq, last, data = (chunk.get(k) for k in ("snap", "seq", "last", "data"))
        if not (type(tid) is int and type(seq) is int and type(last) is bool
                and isinstance(data, bytes)):
            raise PeerError("malformed snapshot chunk")
        r = conn.reassembly
        if r is None:
            if seq != 0:
                raise PeerError(f"snapshot chunk {seq} of transfer {tid} without its start")
            r = conn.reassembly = _Reassembly(tid)
        elif (tid, seq) != (r.transfer_id, r.next_seq):
            raise PeerError(
                f"snapshot chunk out of order: expected transfer {r.transfer_id} chunk "
                f"{r.next_seq}, got transfer {tid} chunk {seq}"
            )
        r.parts.append(data)
        r.next_seq += 1
        if last:
            conn.reassembly = None
            msg = _decode(b"".join(r.parts))
            if not isinstance(msg, InstallSnapshot):
                raise PeerError(f"chunked transfer carried a {type(msg).__name__}")
            conn.stats.snapshots_received += 1
            self._deliver(conn, msg)

    def _deliver(self, conn: _Inbound, msg: Message) -> None:
        if msg.dst != self.member_id or msg.src != conn.peer:
            raise PeerError(
                f"message {msg.src}->{msg.dst} on the connection from member {conn.peer} "
                f"to member {self.member_id}"
            )
        conn.stats.messages_received += 1
        self._on_message(msg)


# ---------------------------------------------------------------------- helpers


def refuse_self_connection(sock: Any) -> None:
    """Raise ``ConnectionRefusedError`` if ``sock`` is connected to itself.

    Dialling a local port nobody listens on can succeed anyway: when the kernel picks that
    very port as the source port, TCP's simultaneous open connects the socket to itself. The
    dialler then holds the dead peer's port, so the peer cannot bind it when it restarts —
    seen in the fault suite as a restarted member failing with "address already in use".
    Treated as what it is, a refused connection; closing it frees the port at once.
    """
    try:
        itself = sock.getsockname() == sock.getpeername()
    except OSError:
        return
    if itself:
        raise ConnectionRefusedError(errno.ECONNREFUSED, "connected to itself: no listener")


async def _receive_frame(stream: trio.abc.Stream, decoder: FrameDecoder) -> bytes:
    """Read until ``decoder`` yields a frame. Raises PeerError on EOF before one."""
    while (frame := decoder.next_frame()) is None:
        data = await stream.receive_some(_RECEIVE_BYTES)
        if not data:
            raise PeerError("connection closed before a complete frame")
        decoder.feed(data)
    return frame


def _loads(frame: bytes, what: str) -> object:
    """cbor2-decode a peer's frame; any failure at all is the peer's fault."""
    try:
        return cbor2.loads(frame)
    except Exception as e:
        raise PeerError(f"undecodable {what}: {e!r:.200}") from e


def _decode(data: bytes) -> Message:
    try:
        return decode_message(data)
    except PeerError:
        raise
    except Exception as e:  # the codec validates, but a peer must never crash us
        raise PeerError(f"undecodable message: {e!r:.200}") from e


def _is_tls_error(e: BaseException) -> bool:
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _remote(stream: trio.SocketStream) -> str:
    try:
        return _fmt(stream.socket.getpeername())
    except OSError:
        return "?"


def _fmt(addr: Any) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        host, port = addr[0], addr[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(addr)


def _reason(e: BaseException) -> str:
    return str(e) or type(e).__name__
