"""The exception tree shared by every layer.

The split follows h11: a ``ClientError`` is the caller's fault (bad request, misuse of an
API), a ``PeerError`` is a remote member's fault (reject it and keep going), and a broken
internal invariant is an ``assert`` that stops the member. ``Unavailable`` and its children
are conditions a caller may retry elsewhere or later.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class DiscoverdError(Exception):
    """Root of every error discoverd raises on purpose."""

    code = "unknown"

    def details(self) -> dict[str, Any]:
        """Structured fields an error answer carries besides ``code`` and ``message``, so a
        client can act on them without parsing the message."""
        return {}


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


# --- MVCC key-value errors (kv/). Messages are etcd v3.4's, so etcd users recognise them. ---


class FutureRevision(ClientError):
    """A read or compaction named a revision the store has not reached yet."""

    code = "future_revision"

    def __init__(self, message: str = "mvcc: required revision is a future revision") -> None:
        super().__init__(message)


class EmptyKey(ClientError):
    """A range, put, delete or compare without a key (etcd refuses the empty key)."""

    code = "empty_key"

    def __init__(self, message: str = "etcdserver: key is not provided") -> None:
        super().__init__(message)


class KeyNotFound(ClientError):
    """A put with ``ignore_value``/``ignore_lease`` on a missing key, or an empty txn op."""

    code = "key_not_found"

    def __init__(self, message: str = "etcdserver: key not found") -> None:
        super().__init__(message)


class ValueProvided(ClientError):
    """A put set both ``ignore_value`` and a value."""

    code = "value_provided"

    def __init__(self, message: str = "etcdserver: value is provided") -> None:
        super().__init__(message)


class LeaseProvided(ClientError):
    """A put set both ``ignore_lease`` and a lease."""

    code = "lease_provided"

    def __init__(self, message: str = "etcdserver: lease is provided") -> None:
        super().__init__(message)


class LeaseNotFound(ClientError):
    """A put attached a lease that does not exist (or has expired)."""

    code = "lease_not_found"

    def __init__(self, message: str = "etcdserver: requested lease not found") -> None:
        super().__init__(message)


class TooManyOps(ClientError):
    """A txn's compare, success or failure list is longer than the configured maximum."""

    code = "too_many_ops"

    def __init__(self, message: str = "etcdserver: too many operations in txn request") -> None:
        super().__init__(message)


class DuplicateKey(ClientError):
    """A txn writes one key twice (two puts, or a put inside a delete's range)."""

    code = "duplicate_key"

    def __init__(self, message: str = "etcdserver: duplicate key given in txn request") -> None:
        super().__init__(message)


class LeaseExists(ClientError):
    """A grant named a lease id that is already in use."""

    code = "lease_exists"

    def __init__(self, message: str = "etcdserver: lease already exists") -> None:
        super().__init__(message)


class LeaseTTLTooLarge(ClientError):
    """A grant asked for a TTL above the maximum (9,000,000,000 s, as etcd)."""

    code = "lease_ttl_too_large"

    def __init__(self, message: str = "etcdserver: too large lease TTL") -> None:
        super().__init__(message)


class WatchNotFound(ClientError):
    """A cancel or progress request named a watch this connection does not have."""

    code = "watch_not_found"

    def __init__(self, message: str = "watch not found") -> None:
        super().__init__(message)


class NoSpace(ClientError):
    """A write that adds data while the NOSPACE alarm is active (the store reached
    ``--quota-backend-bytes``): delete or compact, then ``alarm disarm``."""

    code = "no_space"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or "etcdserver: mvcc: database space exceeded")


class DiskFull(Unavailable):
    """This member's data directory is on a full disk (ENOSPC, EDQUOT, EFBIG from a WAL
    write): the request was refused before it was proposed, so nothing was written. Retry
    once space is freed, or on another member (the SDK does that by itself)."""

    code = "disk_full"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (
            "the disk of this member's data directory is full: nothing was written; "
            "retry once space is freed, or on another member"))


class TooManyWatches(ClientError):
    """A connection asked for more concurrent watches than the member allows."""

    code = "too_many_watches"


class NoLeader(Unavailable):
    """The member has no leader (etcd's ``require leader``): a watch fails fast instead of
    hanging; resume on another member."""

    code = "unavailable"

    def __init__(self, message: str = "etcdserver: no leader") -> None:
        super().__init__(message)


# --- client protocol errors (docs/protocol.md) that the SDK maps answers to. ---


class RequestTooLarge(ClientError):
    """A request frame was over the member's ``--max-request-bytes``; the member closes the
    connection after saying so, because the rest of the frame cannot be skipped safely."""

    code = "request_too_large"


class BadRequest(ClientError):
    """A frame was not a cbor map, or not a frame at all (``bad_request``/``bad_frame``)."""

    code = "bad_request"


# --- the registry (registry/): documents refused when their write is applied. ---

_MAX_SUMMARISED = 3


class ValidationError(ClientError):
    """A write was refused because a value it writes is not what its key requires (a config
    document that fails its schema, a schema that is not one, a malformed service record).

    ``violations`` lists each problem as ``{"key", "path", "message", "schema_path"}``:
    ``key`` the key whose value is at fault, ``path`` a JSON pointer (RFC 6901) to the
    offending place in that value ("" for the whole value), ``schema_path`` a JSON pointer
    to the schema keyword that failed ("" when no schema was involved). The message
    summarises the first few, so a client that only prints messages still says why.
    """

    code = "validation_failed"

    def __init__(
        self,
        message: str | None = None,
        *,
        violations: Sequence[Mapping[str, Any]] = (),
        total: int | None = None,
    ) -> None:
        self.violations: list[dict[str, Any]] = [dict(v) for v in violations]
        self.total = max(total or 0, len(self.violations))
        """How many violations there were; ``violations`` may list only the first ones."""
        super().__init__(message or _summarise(self.violations, self.total))

    def details(self) -> dict[str, Any]:
        return {"violations": [dict(v) for v in self.violations]}


def _summarise(violations: Sequence[Mapping[str, Any]], total: int) -> str:
    if not violations:
        return "validation failed"
    parts = []
    for v in violations[:_MAX_SUMMARISED]:
        where = str(v.get("key", ""))
        path = str(v.get("path", ""))
        if path:
            where = f"{where} at {path}" if where else f"at {path}"
        parts.append(f"{where}: {v.get('message', '')}" if where else str(v.get("message", "")))
    more = total - min(len(violations), _MAX_SUMMARISED)
    tail = f"; and {more} more" if more > 0 else ""
    return "validation failed: " + "; ".join(parts) + tail


# --- membership errors (docs/protocol.md "Membership"). Messages are etcd v3.4's. ---


class MemberNotFound(ClientError):
    """No member has the id a membership request named."""

    code = "member_not_found"

    def __init__(self, message: str = "etcdserver: member not found") -> None:
        super().__init__(message)


class MemberExists(ClientError):
    """``member add`` of an id that is already a member (same name, peer URLs and token)."""

    code = "member_exists"

    def __init__(self, message: str = "etcdserver: member ID already exist") -> None:
        super().__init__(message)


class PeerURLExists(ClientError):
    """A peer URL given to ``member add``/``member update`` belongs to another member."""

    code = "peer_url_exists"

    def __init__(self, message: str = "etcdserver: Peer URLs already exists") -> None:
        super().__init__(message)


class MemberNotLearner(ClientError):
    """``member promote`` of a member that is already a voter."""

    code = "member_not_learner"

    def __init__(self, message: str = "etcdserver: can only promote a learner member") -> None:
        super().__init__(message)


class LearnerNotReady(ClientError):
    """``member promote`` of a learner that has not caught up with the leader's log: as a
    voter it would at once count towards quorums it cannot yet acknowledge."""

    code = "learner_not_ready"

    def __init__(self, message: str = "etcdserver: can only promote a learner member which "
                                      "is in sync with leader") -> None:
        super().__init__(message)


class TooManyLearners(ClientError):
    """``member add --learner`` while the cluster already has its one learner (etcd's
    default limit)."""

    code = "too_many_learners"

    def __init__(self, message: str = "etcdserver: too many learner members in cluster"
                 ) -> None:
        super().__init__(message)


class NotEnoughStartedMembers(ClientError):
    """A voter added or promoted now would leave fewer connected voters than the new
    configuration's quorum (etcd's strict reconfiguration check)."""

    code = "not_enough_started"

    def __init__(self, message: str = "etcdserver: re-configuration failed due to not "
                                      "enough started members") -> None:
        super().__init__(message)


class UnhealthyCluster(ClientError):
    """Removing this voter now would leave fewer connected voters than a quorum (etcd's
    strict reconfiguration check)."""

    code = "unhealthy_cluster"

    def __init__(self, message: str = "etcdserver: unhealthy cluster") -> None:
        super().__init__(message)


class ConfChangeInProgress(Unavailable):
    """Another membership change is proposed but not yet applied (one at a time, see
    ``consensus/confchange.py``); nothing was proposed, so retrying shortly is safe."""

    code = "conf_change_in_progress"


class BadLeaderTransferee(ClientError):
    """``move_leader`` to a member that is not a voter of the cluster."""

    code = "bad_leader_transferee"

    def __init__(self, message: str = "etcdserver: bad leader transferee") -> None:
        super().__init__(message)


# --- security (DESIGN §12, docs/security.md): authentication, authorization and limits. ---


class Unauthenticated(ClientError):
    """Authentication is enabled and the request carried no token (nor a client certificate
    naming a user): authenticate first (``--user``; ``Authorization`` over HTTP)."""

    code = "unauthenticated"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (
            "etcdserver: user name is empty: authentication is enabled, "
            "authenticate first (--user NAME)"))


class InvalidAuthToken(ClientError):
    """The token is not one this cluster issued, has expired, or was issued before its
    user's password changed or auth was re-enabled: authenticate again (the SDK does)."""

    code = "invalid_auth_token"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or "etcdserver: invalid auth token")


class AuthFailed(ClientError):
    """Wrong user name or password (one message for both: which one is wrong is not told)."""

    code = "auth_failed"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or
                         "etcdserver: authentication failed, invalid user ID or password")


class PermissionDenied(ClientError):
    """The authenticated user's roles do not grant what the request needs."""

    code = "permission_denied"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or "etcdserver: permission denied")


class AuthNotEnabled(ClientError):
    code = "auth_not_enabled"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or "etcdserver: authentication is not enabled")


class AuthOldRevision(Unavailable):
    """The auth state changed between a request's permission check and its apply; the
    member checks it again and re-proposes (clients only see it if that keeps happening)."""

    code = "auth_old_revision"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or "etcdserver: revision of auth store is old")


class AuthManagementError(ClientError):
    """A user or role operation that the auth store refuses; ``code`` is set per case
    (``user_exists``, ``user_not_found``, ``role_exists``, ``role_not_found``,
    ``role_not_granted``, ``permission_not_granted``, ``root_user_not_exist``,
    ``root_role_not_exist``, ``invalid_auth_mgmt``, ``user_empty``, ``role_empty``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class TooManyRequests(ClientError):
    """A connection sent requests faster than ``--max-requests-per-second`` allows; retry
    after ``retry_after`` seconds (the SDK does)."""

    code = "too_many_requests"

    def __init__(self, message: str | None = None, *, retry_after: float = 0.0) -> None:
        super().__init__(message or "etcdserver: too many requests")
        self.retry_after = retry_after

    def details(self) -> dict[str, Any]:
        return {"retry_after": self.retry_after} if self.retry_after else {}


class KeyTooLarge(ClientError):
    """A key (or range end) is longer than ``--max-key-bytes``."""

    code = "key_too_large"


class ValueTooLarge(ClientError):
    """A value is longer than ``--max-value-bytes``."""

    code = "value_too_large"


class TooManyStreams(ClientError):
    """A connection has ``--max-concurrent-streams`` streams open (watches, keep-alives,
    snapshots); close one or open another connection."""

    code = "too_many_streams"
