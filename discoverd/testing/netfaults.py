"""Network faults between members: a proxy in front of each member's peer port, and
``PeerFaults``, the switchboard that tells every proxy what to do to which link.

Why a proxy, and where it sits. A member dials each peer and only writes on the
connections it dialled (``discoverd.server.transport``), so every TCP connection between
members carries exactly one *directed link*: dialler → acceptor. With
``ProcessCluster(peer_proxies=True)`` every member advertises its proxy's port instead of
the port it listens on, so a connection from ``a`` to ``b`` is made to ``b``'s proxy. The
proxy reads the connection's first frame — the handshake, whose ``from`` and ``to`` name
the dialler and the member it meant to reach — and from then on knows which link it
carries. That is what makes a *one-way* partition exact: blocking ``a → b`` cuts the
connection ``a`` dialled to ``b`` (``a``'s appends, votes, heartbeats no longer reach
``b``) and leaves the one ``b`` dialled to ``a`` alone (``b``'s answers still reach ``a``).
No guesswork from ports, no need to know member ids before the members exist.

The faults, per directed link (``src → dst``, member ids):

* **block** (a partition): open connections of the link are cut at once, and new ones are
  accepted, their handshake read, and closed without an answer. The dialler sees "connection
  closed before a complete frame" — an unreachable peer — reports it to Raft, backs off and
  redials; each redial counts as ``refused``. Closing (rather than black-holing) makes the
  dialler notice within one round trip instead of one dial timeout, which keeps the fault's
  onset sharp; Raft must treat both the same way anyway.
* **delay** ``(seconds, jitter)``: each data frame is forwarded ``seconds ± jitter`` after
  it was read. Frames wait in a per-connection queue stamped with their due time, and one
  writer thread sends whatever is due, so a delay adds latency without limiting throughput.
  Due times never go backwards on one connection (a frame is never sent before the one read
  before it): TCP does not reorder, and neither do we.
* **drop** ``(probability)``: each data frame after the handshake is discarded with that
  probability. Frames, not bytes: a frame is one batch of Raft messages (or one snapshot
  chunk, or one RTT probe), so dropping frames is message loss as Raft knows it — the stream
  stays well-framed and the receiver carries on. Dropping bytes would only corrupt the stream
  and make the receiver close the connection, which is a disconnect, not a lost message.
  Draws come from a ``random.Random`` seeded by ``PeerFaults(seed=...)``; with several
  connections' threads drawing, which frames are lost is not replayable, the rate is.

Rules are changed from any thread at any time and take effect with the next frame (a block
at once). ``*_all`` rules apply to every link, including links whose ids are not known yet;
where a per-link rule and the all-links rule both apply, the link is blocked if either
says so and the larger delay, jitter and drop probability win. ``heal`` clears one link's
rule, ``heal_all`` every rule.

Each link counts what happened to it (``LinkStats``): connections passed and refused or cut,
frames forwarded, dropped and delayed. Tests assert on these to prove a fault was really
applied rather than trusting that it was.

The proxy never looks inside data frames and forwards the acceptor's side (the handshake
answer, then nothing) untouched. Threads, like ``proxy.TcpProxy``: it must keep working
while a test blocks its main thread, whatever event loops the clients run.
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

import cbor2

from discoverd.server.transport import refuse_self_connection

if TYPE_CHECKING:
    from typing import TypeAlias

    from discoverd.testing.cluster import MemberProcess

    Member: TypeAlias = int | str | MemberProcess
    """A member named in a rule: its id, its name, or its ``MemberProcess``."""

Link = tuple[int, int]
"""A directed link: (dialler's member id, acceptor's member id)."""

_HANDSHAKE_MAX_BYTES = 64 * 1024
_HANDSHAKE_TIMEOUT = 10.0
_CONNECT_TIMEOUT = 2.0
_RECV_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class LinkRule:
    """What is done to one link's frames. The default rule passes everything untouched."""

    blocked: bool = False
    delay: float = 0.0
    jitter: float = 0.0
    drop: float = 0.0

    @property
    def clear(self) -> bool:
        return self == LinkRule()

    def merge(self, other: LinkRule) -> LinkRule:
        return LinkRule(self.blocked or other.blocked, max(self.delay, other.delay),
                        max(self.jitter, other.jitter), max(self.drop, other.drop))

    def __str__(self) -> str:
        parts = []
        if self.blocked:
            parts.append("blocked")
        if self.delay or self.jitter:
            parts.append(f"delay {self.delay * 1000:.0f}±{self.jitter * 1000:.0f}ms")
        if self.drop:
            parts.append(f"drop {self.drop:.0%}")
        return ", ".join(parts) or "clear"


@dataclass(slots=True)
class LinkStats:
    """What a link's proxy did. Data frames only: the handshake is not counted as a frame."""

    connections: int = 0
    """Connections passed to the acceptor (handshake forwarded)."""
    refused: int = 0
    """Connections closed after their handshake because the link was blocked."""
    cut: int = 0
    """Open connections closed because the link became blocked."""
    frames_forwarded: int = 0
    frames_dropped: int = 0
    frames_delayed: int = 0
    """Frames forwarded (or still waiting) with a delay greater than zero."""
    bytes_forwarded: int = 0

    def __add__(self, other: LinkStats) -> LinkStats:
        return LinkStats(*(getattr(self, f.name) + getattr(other, f.name)
                           for f in fields(LinkStats)))


class PeerFaults:
    """The rules and counters of every directed link, and the proxies that apply them.

    ``resolve`` turns a member name into its id (``ProcessCluster.member_id`` does this);
    without it only ids can be named. ``roster`` lists the names of every member, for
    ``isolate``. Every method is safe to call from any thread.
    """

    def __init__(self, *, seed: int = 0, resolve: Callable[[str], int] | None = None,
                 roster: Callable[[], Iterable[str]] | None = None) -> None:
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._resolve = resolve
        self._roster = roster
        self._rules: dict[Link, LinkRule] = {}
        self._all = LinkRule()
        self._stats: dict[Link, LinkStats] = {}
        self._open: dict[Link, set[_Connection]] = {}
        self._names: dict[int, str] = {}
        self.proxies: list[PeerProxy] = []

    # ------------------------------------------------------------------ setup

    def add_proxy(self, target_port: int, *, name: str = "",
                  host: str = "127.0.0.1") -> PeerProxy:
        """A new proxy in front of the peer port ``target_port`` (``name``: for logs)."""
        proxy = PeerProxy(self, target_port, name=name, host=host)
        with self._lock:
            self.proxies.append(proxy)
        return proxy

    def seed(self, seed: int) -> None:
        """Restart the drop decisions' random sequence."""
        with self._lock:
            self._rng.seed(seed)

    def close(self) -> None:
        for proxy in list(self.proxies):
            proxy.close()

    def member_id(self, who: Member) -> int:
        if isinstance(who, int):
            return who
        name = who if isinstance(who, str) else who.name
        if self._resolve is None:
            raise ValueError(f"cannot name member {name!r}: no resolver, use member ids")
        mid = self._resolve(name)
        with self._lock:
            self._names[mid] = name
        return mid

    def _ids(self, group: Iterable[Member]) -> list[int]:
        return [self.member_id(w) for w in group]

    # ------------------------------------------------------------------ per link

    def block(self, src: Member, dst: Member) -> None:
        """Cut ``src → dst``: open connections closed now, new ones refused. One way only."""
        self._update([(self.member_id(src), self.member_id(dst))], blocked=True)

    def delay(self, src: Member, dst: Member,
              seconds: float, jitter: float = 0.0) -> None:
        self._check_delay(seconds, jitter)
        self._update([(self.member_id(src), self.member_id(dst))], delay=seconds,
                     jitter=jitter)

    def drop(self, src: Member, dst: Member,
             probability: float) -> None:
        self._check_probability(probability)
        self._update([(self.member_id(src), self.member_id(dst))], drop=probability)

    def heal(self, src: Member | None = None,
             dst: Member | None = None) -> None:
        """Clear the rule of ``src → dst``; with no arguments, every rule (``heal_all``)."""
        if src is None and dst is None:
            self.heal_all()
            return
        if src is None or dst is None:
            raise ValueError("heal a link with both src and dst, or everything with neither")
        with self._lock:
            self._rules.pop((self.member_id(src), self.member_id(dst)), None)

    # ------------------------------------------------------------------ helpers

    def partition(self, group_a: Iterable[Member],
                  group_b: Iterable[Member]) -> None:
        """Block every link between the groups, both ways (links inside a group stay)."""
        a, b = self._ids(group_a), self._ids(group_b)
        links = [(x, y) for x in a for y in b if x != y]
        links += [(y, x) for x, y in links]
        self._update(links, blocked=True)

    def partition_one_way(self, src: Member,
                          dst: Member) -> None:
        """``src`` can no longer reach ``dst``; ``dst`` still reaches ``src``."""
        self.block(src, dst)

    def isolate(self, member: Member,
                others: Iterable[Member] | None = None) -> None:
        """Block every link to and from ``member``; ``others`` defaults to the ``roster``,
        every member named so far and every id seen on a connection so far."""
        mid = self.member_id(member)
        if others is None:
            roster = set(self._ids(self._roster())) if self._roster is not None else set()
            with self._lock:
                known = roster | set(self._names) | {i for link in self._stats for i in link}
        else:
            known = set(self._ids(others))
        self.partition([mid], sorted(known - {mid}))

    def delay_all(self, seconds: float, jitter: float = 0.0) -> None:
        self._check_delay(seconds, jitter)
        with self._lock:
            self._all = replace(self._all, delay=seconds, jitter=jitter)

    def drop_all(self, probability: float) -> None:
        self._check_probability(probability)
        with self._lock:
            self._all = replace(self._all, drop=probability)

    def heal_all(self) -> None:
        with self._lock:
            self._rules.clear()
            self._all = LinkRule()

    # ------------------------------------------------------------------ observation

    def rule(self, src: Member, dst: Member) -> LinkRule:
        """The rule in force on ``src → dst`` (the all-links rule merged in)."""
        link = (self.member_id(src), self.member_id(dst))
        with self._lock:
            return self._effective(link)

    def stats(self, src: Member | None = None,
              dst: Member | None = None) -> LinkStats:
        """Counters summed over the links from ``src`` to ``dst`` (None: any member)."""
        s = None if src is None else self.member_id(src)
        d = None if dst is None else self.member_id(dst)
        total = LinkStats()
        with self._lock:
            for (a, b), st in self._stats.items():
                if (s is None or a == s) and (d is None or b == d):
                    total = total + st
        return total

    def links(self) -> dict[Link, LinkStats]:
        """A copy of every link's counters."""
        with self._lock:
            return {link: replace(st) for link, st in self._stats.items()}

    def open_connections(self, src: Member,
                         dst: Member) -> int:
        link = (self.member_id(src), self.member_id(dst))
        with self._lock:
            return len(self._open.get(link, ()))

    def describe(self) -> str:
        """The rules in force, one line, for logs: ``all: delay 20±5ms; m1→m2: blocked``."""
        with self._lock:
            parts = [] if self._all.clear else [f"all: {self._all}"]
            parts += [f"{self._name(a)}→{self._name(b)}: {r}"
                      for (a, b), r in sorted(self._rules.items()) if not r.clear]
        return "; ".join(parts) or "no faults"

    def _name(self, mid: int) -> str:
        return self._names.get(mid, str(mid))

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _check_delay(seconds: float, jitter: float) -> None:
        if seconds < 0 or jitter < 0:
            raise ValueError("delay and jitter must not be negative")

    @staticmethod
    def _check_probability(p: float) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError("a drop probability is between 0 and 1")

    def _update(self, links: list[Link], **changes: Any) -> None:
        cut: list[_Connection] = []
        with self._lock:
            for link in links:
                self._rules[link] = replace(self._rules.get(link, LinkRule()), **changes)
                if changes.get("blocked"):
                    conns = self._open.pop(link, set())
                    self._stat(link).cut += len(conns)
                    cut.extend(conns)
        for conn in cut:
            conn.close()

    def _effective(self, link: Link) -> LinkRule:
        return self._rules.get(link, LinkRule()).merge(self._all)

    def _stat(self, link: Link) -> LinkStats:
        st = self._stats.get(link)
        if st is None:
            st = self._stats[link] = LinkStats()
        return st

    def _admit(self, conn: _Connection) -> bool:
        """Register a connection whose handshake named its link; False: refuse it."""
        with self._lock:
            if self._effective(conn.link).blocked:
                self._stat(conn.link).refused += 1
                return False
            self._open.setdefault(conn.link, set()).add(conn)
            return True

    def _connected(self, link: Link) -> None:
        with self._lock:
            self._stat(link).connections += 1

    def _forget(self, conn: _Connection) -> None:
        with self._lock:
            conns = self._open.get(conn.link)
            if conns is not None:
                conns.discard(conn)

    def _judge(self, link: Link) -> tuple[bool, float]:
        """For one data frame of ``link``: (drop it?, seconds to hold it)."""
        with self._lock:
            rule = self._effective(link)
            st = self._stat(link)
            if rule.drop and self._rng.random() < rule.drop:
                st.frames_dropped += 1
                return True, 0.0
            hold = rule.delay
            if rule.jitter:
                hold += self._rng.uniform(-rule.jitter, rule.jitter)
            hold = max(0.0, hold)
            if hold > 0:
                st.frames_delayed += 1
            return False, hold

    def _forwarded(self, link: Link, frames: int, nbytes: int) -> None:
        with self._lock:
            st = self._stat(link)
            st.frames_forwarded += frames
            st.bytes_forwarded += nbytes


class PeerProxy:
    """One member's peer port, fronted: listens on ``port``, forwards to ``target_port``
    under the rules of its ``PeerFaults``."""

    def __init__(self, faults: PeerFaults, target_port: int, *, name: str = "",
                 host: str = "127.0.0.1") -> None:
        self.faults = faults
        self.name = name
        self.target = (host, target_port)
        self._listener = socket.create_server((host, 0))
        self.port: int = self._listener.getsockname()[1]
        self._closed = False
        self._lock = threading.Lock()
        self._conns: set[_Connection] = set()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True,
                                        name=f"peer-proxy-{name or self.port}")
        self._thread.start()

    def __repr__(self) -> str:
        return f"<PeerProxy {self.name} :{self.port} -> :{self.target[1]}>"

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns = list(self._conns)
        _close(self._listener)
        for conn in conns:
            conn.close()
        self._thread.join(5)

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._closed:
                _close(client)
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True,
                             name=f"peer-proxy-{self.name or self.port}-conn").start()

    def _serve(self, client: socket.socket) -> None:
        client.settimeout(_HANDSHAKE_TIMEOUT)
        try:
            head = _recv_exact(client, 4)
            (size,) = struct.unpack(">I", head)
            if size > _HANDSHAKE_MAX_BYTES:
                raise ValueError("handshake too large")
            body = _recv_exact(client, size)
            hello = cbor2.loads(body)
            link = (int(hello["from"]), int(hello["to"]))
        except Exception:  # not a peer (or gone): nothing to forward, nothing to count
            _close(client)
            return
        conn = _Connection(self.faults, link, client)
        with self._lock:
            if self._closed:
                _close(client)
                return
            self._conns.add(conn)
        try:
            if self.faults._admit(conn):
                conn.run(self.target, head + body)
        finally:
            conn.close()
            self.faults._forget(conn)
            with self._lock:
                self._conns.discard(conn)


class _Connection:
    """One dialler's connection through a proxy: the reader (this thread) splits the
    dialler's bytes into frames and queues each with its due time; a writer thread sends
    them to the acceptor when due; a third thread copies the acceptor's bytes back."""

    def __init__(self, faults: PeerFaults, link: Link, client: socket.socket) -> None:
        self.faults = faults
        self.link = link
        self.client = client
        self.upstream: socket.socket | None = None
        self._cond = threading.Condition()
        self._queue: deque[tuple[float, bytes]] = deque()
        self._last_due = 0.0
        self._closed = False

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._cond.notify_all()
            upstream = self.upstream
        _close(self.client)
        if upstream is not None:
            _close(upstream)

    def run(self, target: tuple[str, int], handshake: bytes) -> None:
        try:
            upstream = socket.create_connection(target, timeout=_CONNECT_TIMEOUT)
        except OSError:
            return
        try:
            refuse_self_connection(upstream)  # a dead member's port, held by ourselves
        except OSError:
            _close(upstream)
            return
        with self._cond:
            self.upstream = upstream
            closed = self._closed
        if closed:  # cut while we connected
            _close(upstream)
            return
        try:
            upstream.settimeout(None)
            self.client.settimeout(None)
            upstream.sendall(handshake)
        except OSError:
            return
        self.faults._connected(self.link)
        threading.Thread(target=self._write_loop, args=(upstream,), daemon=True).start()
        threading.Thread(target=self._copy_back, args=(upstream,), daemon=True).start()
        self._read_loop()

    def _read_loop(self) -> None:
        buf = bytearray()
        while True:
            try:
                data = self.client.recv(_RECV_BYTES)
            except OSError:
                return
            if not data:
                return
            buf += data
            start = 0
            while len(buf) - start >= 4:
                (size,) = struct.unpack_from(">I", buf, start)
                end = start + 4 + size
                if len(buf) < end:
                    break
                frame = bytes(buf[start:end])
                start = end
                dropped, hold = self.faults._judge(self.link)
                if not dropped:
                    self._enqueue(frame, hold)
            del buf[:start]

    def _enqueue(self, frame: bytes, hold: float) -> None:
        due = max(time.monotonic() + hold, self._last_due)
        self._last_due = due
        with self._cond:
            if self._closed:
                return
            self._queue.append((due, frame))
            self._cond.notify()

    def _write_loop(self, upstream: socket.socket) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                if not self._queue:
                    self._cond.wait()
                    continue
                wait = self._queue[0][0] - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                now = time.monotonic()
                batch = []
                while self._queue and self._queue[0][0] <= now:
                    batch.append(self._queue.popleft()[1])
            data = b"".join(batch)
            try:
                upstream.sendall(data)
            except OSError:
                self.close()
                return
            self.faults._forwarded(self.link, len(batch), len(data))

    def _copy_back(self, upstream: socket.socket) -> None:
        try:
            while data := upstream.recv(_RECV_BYTES):
                self.client.sendall(data)
        except OSError:
            pass
        self.close()


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return bytes(buf)


def _close(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        s.close()
