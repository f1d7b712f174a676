"""Raft's vocabulary: log entries, durable state, and one frozen dataclass per message kind.

One class per message (not etcd's union ``pb.Message``) so that a field always means one
thing. Every message carries ``term``, ``src`` and ``dst``; everything else is specific.

``to_obj``/``from_obj`` turn these into plain lists/ints/bytes and back, validating every
field on the way in, so that any encoder of plain data (``wire.peer`` uses cbor2) can carry
them. A malformed object raises ``PeerError``: a peer's garbage must never crash a member.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from discoverd.errors import PeerError

NONE = 0
"""The node id meaning "nobody" (no vote, no known leader). Real ids are positive."""


class EntryKind(enum.IntEnum):
    NORMAL = 0
    CONF_CHANGE = 1


@dataclass(frozen=True, slots=True)
class Entry:
    term: int
    index: int
    kind: EntryKind = EntryKind.NORMAL
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be on disk before a vote or an append response leaves the node."""

    term: int = 0
    vote: int = NONE
    commit: int = 0


@dataclass(frozen=True, slots=True)
class ConfState:
    """The membership: voters count toward quorums, learners only receive the log."""

    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    index: int = 0
    term: int = 0
    conf_state: ConfState = field(default_factory=ConfState)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The state machine's image at ``meta.index``; ``data`` is opaque to Raft."""

    meta: SnapshotMeta = field(default_factory=SnapshotMeta)
    data: bytes = b""

    @property
    def is_empty(self) -> bool:
        return self.meta.index == 0


class ConfChangeKind(enum.IntEnum):
    ADD_VOTER = 0
    ADD_LEARNER = 1
    REMOVE_NODE = 2


@dataclass(frozen=True, slots=True)
class ConfChange:
    """One single-server membership change (we do not use joint consensus)."""

    kind: ConfChangeKind
    node_id: int
    context: bytes = b""

    def encode(self) -> bytes:
        ctx = self.context
        return bytes([int(self.kind)]) + self.node_id.to_bytes(8, "big") + ctx

    @classmethod
    def decode(cls, data: bytes) -> ConfChange:
        if len(data) < 9 or data[0] not in (0, 1, 2):
            raise PeerError(f"malformed conf change entry ({len(data)} bytes)")
        return cls(ConfChangeKind(data[0]), int.from_bytes(data[1:9], "big"), bytes(data[9:]))


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read may be served once the state machine has applied ``index``."""

    index: int
    context: bytes


# ----------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class Message:
    term: int
    src: int
    dst: int


@dataclass(frozen=True, slots=True)
class RequestVote(Message):
    """A vote request; with ``pre_vote`` it is a PreVote at ``term`` (the sender's term + 1)
    that changes nobody's term. ``transfer`` marks a campaign started by TimeoutNow, which
    voters honour even while they believe a leader is alive."""

    last_log_index: int = 0
    last_log_term: int = 0
    pre_vote: bool = False
    transfer: bool = False


@dataclass(frozen=True, slots=True)
class RequestVoteResponse(Message):
    granted: bool = False
    pre_vote: bool = False


@dataclass(frozen=True, slots=True)
class AppendEntries(Message):
    prev_log_index: int = 0
    prev_log_term: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0


@dataclass(frozen=True, slots=True)
class AppendEntriesResponse(Message):
    """Success: ``index`` is the follower's last index matching the leader. Rejection:
    ``index`` is the rejected ``prev_log_index`` and (``reject_hint``, ``hint_term``) say
    where the follower's log might match, so the leader can skip a whole term at once."""

    index: int = 0
    reject: bool = False
    reject_hint: int = 0
    hint_term: int = 0


@dataclass(frozen=True, slots=True)
class Heartbeat(Message):
    """Keeps followers from campaigning; ``read_round`` > 0 also confirms a ReadIndex batch."""

    commit: int = 0
    read_round: int = 0


@dataclass(frozen=True, slots=True)
class HeartbeatResponse(Message):
    read_round: int = 0


@dataclass(frozen=True, slots=True)
class InstallSnapshot(Message):
    snapshot: Snapshot = field(default_factory=Snapshot)


@dataclass(frozen=True, slots=True)
class TimeoutNow(Message):
    """Leadership transfer: the recipient campaigns at once."""


@dataclass(frozen=True, slots=True)
class ReadIndexRequest(Message):
    """A follower forwards a batch of read contexts to the leader."""

    contexts: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class ReadIndexResponse(Message):
    index: int = 0
    contexts: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class ForwardProposal(Message):
    """A follower hands client proposals to its leader (the leader appends them as its own)."""

    entries: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class AppMessage(Message):
    """Not Raft's: an opaque payload the member layer sends to a peer over the same link
    (e.g. a follower forwarding a lease keep-alive to the leader, which only the leader can
    serve). Raft never sees one; the runtime routes it before stepping."""

    payload: bytes = b""


# ----------------------------------------------------------------------------- plain-data codec

_MESSAGE_TYPES: tuple[type[Message], ...] = (
    RequestVote,
    RequestVoteResponse,
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    TimeoutNow,
    ReadIndexRequest,
    ReadIndexResponse,
    ForwardProposal,
    AppMessage,
)
_TYPE_CODE = {t: i for i, t in enumerate(_MESSAGE_TYPES)}


def _int(v: Any, what: str) -> int:
    if type(v) is not int or v < 0:
        raise PeerError(f"{what}: expected a non-negative integer, got {type(v).__name__}")
    return v


def _bool(v: Any, what: str) -> bool:
    if type(v) is not bool:
        raise PeerError(f"{what}: expected a boolean, got {type(v).__name__}")
    return v


def _bytes(v: Any, what: str) -> bytes:
    if not isinstance(v, bytes | bytearray):
        raise PeerError(f"{what}: expected bytes, got {type(v).__name__}")
    return bytes(v)


def _list(v: Any, what: str, length: int | None = None) -> list[Any]:
    if not isinstance(v, list | tuple) or (length is not None and len(v) != length):
        raise PeerError(f"{what}: expected a list" + (f" of {length}" if length else ""))
    return list(v)


def entry_to_obj(e: Entry) -> list[Any]:
    return [e.term, e.index, int(e.kind), e.data]


def entry_from_obj(o: Any) -> Entry:
    term, index, kind, data = _list(o, "entry", 4)
    k = _int(kind, "entry.kind")
    if k not in (0, 1):
        raise PeerError(f"entry.kind: unknown kind {k}")
    return Entry(_int(term, "entry.term"), _int(index, "entry.index"), EntryKind(k),
                 _bytes(data, "entry.data"))


def conf_state_to_obj(cs: ConfState) -> list[Any]:
    return [list(cs.voters), list(cs.learners)]


def conf_state_from_obj(o: Any) -> ConfState:
    voters, learners = _list(o, "conf_state", 2)
    return ConfState(
        tuple(_int(v, "voter") for v in _list(voters, "voters")),
        tuple(_int(v, "learner") for v in _list(learners, "learners")),
    )


def snapshot_to_obj(s: Snapshot) -> list[Any]:
    return [s.meta.index, s.meta.term, conf_state_to_obj(s.meta.conf_state), s.data]


def snapshot_from_obj(o: Any) -> Snapshot:
    index, term, cs, data = _list(o, "snapshot", 4)
    meta = SnapshotMeta(_int(index, "snapshot.index"), _int(term, "snapshot.term"),
                        conf_state_from_obj(cs))
    return Snapshot(meta, _bytes(data, "snapshot.data"))


def hard_state_to_obj(hs: HardState) -> list[int]:
    return [hs.term, hs.vote, hs.commit]


def hard_state_from_obj(o: Any) -> HardState:
    term, vote, commit = _list(o, "hard_state", 3)
    return HardState(_int(term, "term"), _int(vote, "vote"), _int(commit, "commit"))


def to_obj(m: Message) -> list[Any]:
    """A message as a list of plain values: ``[type_code, term, src, dst, *fields]``."""
    head: list[Any] = [_TYPE_CODE[type(m)], m.term, m.src, m.dst]
    match m:
        case RequestVote():
            return [*head, m.last_log_index, m.last_log_term, m.pre_vote, m.transfer]
        case RequestVoteResponse():
            return [*head, m.granted, m.pre_vote]
        case AppendEntries():
            ents = [entry_to_obj(e) for e in m.entries]
            return [*head, m.prev_log_index, m.prev_log_term, ents, m.commit]
        case AppendEntriesResponse():
            return [*head, m.index, m.reject, m.reject_hint, m.hint_term]
        case Heartbeat():
            return [*head, m.commit, m.read_round]
        case HeartbeatResponse():
            return [*head, m.read_round]
        case InstallSnapshot():
            return [*head, snapshot_to_obj(m.snapshot)]
        case TimeoutNow():
            return head
        case ReadIndexRequest():
            return [*head, list(m.contexts)]
        case ReadIndexResponse():
            return [*head, m.index, list(m.contexts)]
        case ForwardProposal():
            return [*head, list(m.entries)]
        case AppMessage():
            return [*head, m.payload]
    raise AssertionError(f"unknown message type {type(m).__name__}")


def from_obj(o: Any) -> Message:
    """Rebuild a message from ``to_obj``'s output; raise ``PeerError`` on anything else."""
    items = _list(o, "message")
    if len(items) < 4:
        raise PeerError("message: too short")
    code = _int(items[0], "message.type")
    if code >= len(_MESSAGE_TYPES):
        raise PeerError(f"message.type: unknown type code {code}")
    term, src, dst = (_int(items[i], n) for i, n in ((1, "term"), (2, "src"), (3, "dst")))
    rest = items[4:]
    cls = _MESSAGE_TYPES[code]

    def want(n: int) -> list[Any]:
        if len(rest) != n:
            raise PeerError(f"{cls.__name__}: expected {n} fields, got {len(rest)}")
        return rest

    if cls is RequestVote:
        a, b, c, d = want(4)
        return RequestVote(term, src, dst, _int(a, "last_log_index"), _int(b, "last_log_term"),
                           _bool(c, "pre_vote"), _bool(d, "transfer"))
    if cls is RequestVoteResponse:
        a, b = want(2)
        return RequestVoteResponse(term, src, dst, _bool(a, "granted"), _bool(b, "pre_vote"))
    if cls is AppendEntries:
        a, b, c, d = want(4)
        ents = tuple(entry_from_obj(e) for e in _list(c, "entries"))
        return AppendEntries(term, src, dst, _int(a, "prev_log_index"),
                             _int(b, "prev_log_term"), ents, _int(d, "commit"))
    if cls is AppendEntriesResponse:
        a, b, c, d = want(4)
        return AppendEntriesResponse(term, src, dst, _int(a, "index"), _bool(b, "reject"),
                                     _int(c, "reject_hint"), _int(d, "hint_term"))
    if cls is Heartbeat:
        a, b = want(2)
        return Heartbeat(term, src, dst, _int(a, "commit"), _int(b, "read_round"))
    if cls is HeartbeatResponse:
        (a,) = want(1)
        return HeartbeatResponse(term, src, dst, _int(a, "read_round"))
    if cls is InstallSnapshot:
        (a,) = want(1)
        return InstallSnapshot(term, src, dst, snapshot_from_obj(a))
    if cls is TimeoutNow:
        want(0)
        return TimeoutNow(term, src, dst)
    if cls is ReadIndexRequest:
        (a,) = want(1)
        return ReadIndexRequest(term, src, dst,
                                tuple(_bytes(c, "context") for c in _list(a, "contexts")))
    if cls is AppMessage:
        (a,) = want(1)
        return AppMessage(term, src, dst, _bytes(a, "payload"))
    if cls is ForwardProposal:
        (a,) = want(1)
        datas = tuple(_bytes(d, "entry") for d in _list(a, "entries"))
        return ForwardProposal(term, src, dst, datas)
    a, b = want(2)
    return ReadIndexResponse(term, src, dst, _int(a, "index"),
                             tuple(_bytes(c, "context") for c in _list(b, "contexts")))
