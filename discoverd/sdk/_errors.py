"""Protocol error codes → ``discoverd.errors`` exceptions, and the SDK's own failure types.

Every exception the SDK raises derives from ``DiscoverdError`` so that one ``except`` clause
covers the library. The families say what a caller can do:

* ``ClientError`` (``invalid_argument``, ``key_not_found``, ``too_many_ops``, …): the request
  is wrong; retrying it unchanged cannot help.
* ``Unavailable`` (``not_leader``, ``unavailable``, ``timeout``, ``proposal_dropped``, and the
  SDK's ``ConnectionLost``): the cluster could not serve it now. The client already retried
  what was safe to retry before raising one of these.
* ``Compacted``: the revision asked for is gone; re-list at a newer revision.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from discoverd import errors
from discoverd.errors import (
    AuthManagementError,
    BadRequest,
    ClientError,
    Compacted,
    DiscoverdError,
    DuplicateKey,
    FutureRevision,
    KeyNotFound,
    NotLeader,
    ProposalDropped,
    RequestTimeout,
    RequestTooLarge,
    TooManyOps,
    TooManyRequests,
    Unavailable,
    ValidationError,
)


class ConnectionLost(Unavailable):
    """The connection to a member broke while a request was outstanding.

    ``request_sent`` says whether the request's frame had (possibly) been handed to the
    network: when False the member certainly never saw it, so the client retries it on
    another member whatever it is. When True, a write's outcome is unknown — it may have been
    applied — and the client raises this instead of retrying.
    """

    code = "connection_lost"

    def __init__(self, message: str = "connection lost", *, request_sent: bool = False) -> None:
        super().__init__(message)
        self.request_sent = request_sent


class StreamOverflow(Unavailable):
    """A stream's consumer fell so far behind that its buffer filled; the connection's
    reader ended that one stream rather than stall every other request behind it. A watch
    recovers by itself: it re-creates the stream from the last revision it delivered."""

    code = "stream_overflow"


class WatchCompacted(Compacted):
    """A watch needed history that has been compacted (its ``start_revision``, or the
    revision it had to resume from, is older than ``compact_revision``). Re-list the keys
    and watch again from the listing's revision + 1 — ``watch_prefix`` does exactly that."""

    def __init__(self, message: str, *, compact_revision: int, header: Any = None) -> None:
        super().__init__(message)
        self.compact_revision = compact_revision
        self.header = header
        """The ``ResponseHeader`` of the member's canceled frame (None if not from one)."""


class NoInstances(Unavailable):
    """A picker found no instance to choose: none registered, none passing, or every
    passing one has weight 0. In the ``Unavailable`` family because it is a condition of the
    moment (an instance may register a second later), not a mistake in the call."""

    code = "no_instances"


class ConfigNotFound(KeyNotFound):
    """The config document (or the generation of it asked for) does not exist."""

    code = "config_not_found"


class ConfigConflict(ClientError):
    """A ``put_config(..., expect_generation=G)`` found another generation current:
    someone else wrote the document since it was read. Read it again, merge, retry.

    ``expected`` is the generation asked for, ``actual`` the current one (0: the document
    has never been written)."""

    code = "config_conflict"

    def __init__(self, message: str, *, expected: int, actual: int) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual


# The codes docs/protocol.md lists. Codes not listed here but carried by a class in
# discoverd.errors (e.g. ``empty_key``, ``lease_not_found``) are found by ``_by_code``, so a
# member newer than this table still gets its errors typed.
_PROTOCOL_CODES: dict[str, type[DiscoverdError]] = {
    "invalid_argument": ClientError,
    "bad_request": BadRequest,
    "bad_frame": BadRequest,
    "request_too_large": RequestTooLarge,
    "too_many_ops": TooManyOps,
    "duplicate_key": DuplicateKey,
    "key_not_found": KeyNotFound,
    "compacted": Compacted,
    "future_revision": FutureRevision,
    "not_leader": NotLeader,
    "proposal_dropped": ProposalDropped,
    "timeout": RequestTimeout,
    "unavailable": Unavailable,
    "validation_failed": ValidationError,
}


def _by_code() -> dict[str, type[DiscoverdError]]:
    table: dict[str, type[DiscoverdError]] = {}
    for obj in vars(errors).values():
        if isinstance(obj, type) and issubclass(obj, DiscoverdError):
            table.setdefault(obj.code, obj)
    table.update(_PROTOCOL_CODES)
    return table


_CODES = _by_code()


AUTH_MANAGEMENT_CODES = frozenset({
    "user_exists", "user_not_found", "role_exists", "role_not_found", "role_not_granted",
    "permission_not_granted", "root_user_not_exist", "root_role_not_exist",
    "invalid_auth_mgmt", "user_empty", "role_empty",
})
"""The auth store's refusals of a user/role operation: one class, ``code`` per case."""


def error_from_wire(err: Mapping[str, Any]) -> DiscoverdError:
    """The exception for an answer's ``err`` map. An unknown code still gives a
    ``DiscoverdError`` whose ``code`` is the member's, so nothing escapes the tree."""
    code = str(err.get("code", "unknown"))
    message = str(err.get("message", "") or code)
    if code in AUTH_MANAGEMENT_CODES:
        return AuthManagementError(code, message)
    cls = _CODES.get(code)
    if cls is ValidationError:
        return _validation_error(err, message)
    exc = cls(message) if cls is not None else DiscoverdError(message)
    if cls is None:
        exc.code = code
    leader = err.get("leader", 0)
    if isinstance(exc, NotLeader | ProposalDropped) and type(leader) is int:
        exc.leader = leader
    retry_after = err.get("retry_after")
    if (isinstance(exc, TooManyRequests) and isinstance(retry_after, int | float)
            and not isinstance(retry_after, bool)):
        exc.retry_after = float(retry_after)
    return exc


_MORE = re.compile(r"; and (\d+) more$")


def _validation_error(err: Mapping[str, Any], message: str) -> ValidationError:
    """``validation_failed`` with its ``violations`` (docs/protocol.md "Registry
    validation"). The member lists at most 100; the total is only in its message ("…; and N
    more" after the first three), so it is read back from there to keep ``total`` honest."""
    raw = err.get("violations")
    violations = [
        {k: str(v.get(k, "")) for k in ("key", "path", "message", "schema_path")}
        for v in (raw if isinstance(raw, list) else ())
        if isinstance(v, Mapping)
    ]
    total = len(violations)
    more = _MORE.search(message)
    if more is not None:
        total = max(total, min(len(violations), 3) + int(more.group(1)))
    return ValidationError(message, violations=violations, total=total)


def is_retryable(exc: DiscoverdError, *, retry_safe: bool) -> bool:
    """Whether the client may send the request again (to another member).

    ``not_leader`` and ``unavailable`` mean the member did not act on the request, so any
    request may go elsewhere. ``timeout`` and ``proposal_dropped`` leave a write's outcome
    unknown: only requests that cannot change the store (``retry_safe``) are retried.
    """
    if isinstance(exc, RequestTimeout | ProposalDropped):
        return retry_safe
    return isinstance(exc, Unavailable)
