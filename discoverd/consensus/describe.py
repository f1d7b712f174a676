"""One stable, human-readable text form for entries, messages and Readys.

The same strings are the simulator's ``--trace`` output, the golden transcripts in
``tests/consensus/testdata/*.txt`` and log lines, so a reviewer reads Raft behaviour the way
the code prints it. Changing a format here means regenerating those transcripts.
"""

from __future__ import annotations

from discoverd.consensus.messages import (
    AppendEntries,
    AppendEntriesResponse,
    ConfChange,
    Entry,
    EntryKind,
    ForwardProposal,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    RequestVote,
    RequestVoteResponse,
    Snapshot,
    TimeoutNow,
)
from discoverd.errors import PeerError


def _data(data: bytes) -> str:
    if not data:
        return ""
    try:
        text = data.decode("ascii")
        if text.isprintable():
            return f' "{text}"' if len(text) <= 40 else f' "{text[:37]}..."'
    except UnicodeDecodeError:
        pass
    return f" 0x{data[:16].hex()}" + ("..." if len(data) > 16 else "")


def describe_entry(e: Entry) -> str:
    if e.kind is EntryKind.CONF_CHANGE:
        try:
            cc = ConfChange.decode(e.data)
            return f"{e.term}/{e.index} {cc.kind.name.lower()} {cc.node_id}"
        except PeerError:
            return f"{e.term}/{e.index} conf-change(bad)"
    return f"{e.term}/{e.index}{_data(e.data)}"


def describe_entries(ents: list[Entry] | tuple[Entry, ...]) -> str:
    return "[" + ", ".join(describe_entry(e) for e in ents) + "]"


def describe_snapshot(s: Snapshot) -> str:
    cs = s.meta.conf_state
    learners = f" learners={list(cs.learners)}" if cs.learners else ""
    return f"snap {s.meta.term}/{s.meta.index} voters={list(cs.voters)}{learners}"


def describe_hard_state(hs: HardState) -> str:
    return f"term={hs.term} vote={hs.vote} commit={hs.commit}"


def describe_message(m: Message) -> str:
    head = f"{m.src}->{m.dst} {type(m).__name__} t{m.term}"
    match m:
        case RequestVote():
            kind = "PreVote" if m.pre_vote else "RequestVote"
            tr = " transfer" if m.transfer else ""
            last = f"{m.last_log_term}/{m.last_log_index}"
            return f"{m.src}->{m.dst} {kind} t{m.term} last {last}{tr}"
        case RequestVoteResponse():
            kind = "PreVoteResponse" if m.pre_vote else "RequestVoteResponse"
            verdict = "granted" if m.granted else "rejected"
            return f"{m.src}->{m.dst} {kind} t{m.term} {verdict}"
        case AppendEntries():
            ents = f" {describe_entries(m.entries)}" if m.entries else ""
            return f"{head} log {m.prev_log_term}/{m.prev_log_index} commit {m.commit}{ents}"
        case AppendEntriesResponse():
            if m.reject:
                return (f"{head} rejected {m.index} hint {m.hint_term}/{m.reject_hint}")
            return f"{head} match {m.index}"
        case Heartbeat():
            rr = f" read {m.read_round}" if m.read_round else ""
            return f"{head} commit {m.commit}{rr}"
        case HeartbeatResponse():
            return f"{head} read {m.read_round}" if m.read_round else head
        case InstallSnapshot():
            return f"{head} {describe_snapshot(m.snapshot)}"
        case TimeoutNow():
            return head
        case ReadIndexRequest():
            return f"{head} {[c.decode('latin-1') for c in m.contexts]}"
        case ForwardProposal():
            return f"{head} {[_data(d).strip() for d in m.entries]}"
        case ReadIndexResponse():
            return f"{head} index {m.index} {[c.decode('latin-1') for c in m.contexts]}"
    return head
