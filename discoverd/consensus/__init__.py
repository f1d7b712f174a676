"""Sans-I/O Raft: the consensus core, publishable on its own.

Imports only the standard library and ``discoverd.errors``: no clock, no sockets, no threads,
no global randomness (an RNG is passed in), so a seed replays a run exactly. The runtime
(``server/raft_loop.py``, or the simulator in ``testing/sim``) drives a ``RawNode``:

1. feed it ``tick()`` at a fixed interval, ``step(msg)`` for each peer message, and
   ``propose``/``read_index``/``transfer_leader`` for local requests;
2. when ``has_ready()``: ``rd = ready()``; send ``rd.early_messages`` (a leader's, safe at
   once); persist ``rd.snapshot``, ``rd.entries``, ``rd.hard_state`` (fsync if
   ``rd.must_sync``); then send ``rd.messages``; apply ``rd.snapshot`` and
   ``rd.committed_entries``; serve ``rd.read_states``;
3. ``advance(rd)``.

The contract in full is the docstring of ``rawnode``; ``ARCHITECTURE.md`` explains why.
Membership changes are single-server (one at a time, no joint consensus).
"""

from discoverd.consensus.messages import (
    NONE,
    AppendEntries,
    AppendEntriesResponse,
    ConfChange,
    ConfChangeKind,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    ReadState,
    RequestVote,
    RequestVoteResponse,
    Snapshot,
    SnapshotMeta,
    TimeoutNow,
)
from discoverd.consensus.raft import Config, Role
from discoverd.consensus.rawnode import RawNode, Ready, SoftState, Status
from discoverd.consensus.storage import LogStorage, MemoryStorage

__all__ = [
    "NONE",
    "AppendEntries",
    "AppendEntriesResponse",
    "ConfChange",
    "ConfChangeKind",
    "ConfState",
    "Config",
    "Entry",
    "EntryKind",
    "HardState",
    "Heartbeat",
    "HeartbeatResponse",
    "InstallSnapshot",
    "LogStorage",
    "MemoryStorage",
    "Message",
    "RawNode",
    "ReadIndexRequest",
    "ReadIndexResponse",
    "ReadState",
    "Ready",
    "RequestVote",
    "RequestVoteResponse",
    "Role",
    "Snapshot",
    "SnapshotMeta",
    "SoftState",
    "Status",
    "TimeoutNow",
]
