"""The exception tree shared by every layer.

The split follows h11: a ``ClientError`` is the caller's fault (bad request, misuse of an
API), a ``PeerError`` is a remote member's fault (reject it and keep going), and a broken
internal invariant is an ``assert`` that stops the member. ``Unavailable`` and its children
are conditions a caller may retry elsewhere or later.
"""

from __future__ import annotations


class DiscoverdError(Exception):
    """Root of every error discoverd raises on purpose."""

    code = "unknown"


class ClientError(DiscoverdError):
    """The caller asked for something illegal; retrying the same request will not help."""

    code = "invalid_argument"


class PeerError(DiscoverdError):
    """A peer sent something malformed or from another cluster; drop it, keep running."""

    code = "peer_error"


class Unavailable(DiscoverdError):
    """The operation could not be done now; it may succeed later or on another member."""

    code = "unavailable"


class NotLeader(Unavailable):
    """This member is not the leader; ``leader`` names the leader when it is known (0 if not)."""

    code = "not_leader"

    def __init__(self, message: str = "not leader", *, leader: int = 0) -> None:
        super().__init__(message)
        self.leader = leader


class ProposalDropped(Unavailable):
    """A proposal was refused by the consensus core (no leader, transfer in progress, …)."""

    code = "proposal_dropped"

    def __init__(self, message: str = "proposal dropped", *, leader: int = 0) -> None:
        super().__init__(message)
        self.leader = leader


class Compacted(DiscoverdError):
    """The requested index or revision has been compacted away."""

    code = "compacted"


class SnapshotTemporarilyUnavailable(Unavailable):
    """The storage is building a snapshot; ask again shortly."""

    code = "snapshot_unavailable"


class LogUnavailable(DiscoverdError):
    """The requested log index is past the end of the stored log."""

    code = "log_unavailable"


class CorruptData(DiscoverdError):
    """Durable state failed a check (CRC, framing, identity): refuse to start rather than guess."""

    code = "corrupt"


class RequestTimeout(Unavailable):
    """No answer in time; for a write the outcome is unknown (it may still be applied)."""

    code = "timeout"
