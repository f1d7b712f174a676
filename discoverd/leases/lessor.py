"""``Lessor``: leases — TTLs that keys can be attached to, and that delete those keys when
they run out (DESIGN §5).

A lease has two halves, kept apart on purpose:

* the **replicated** half, changed only by committed log entries and identical on every
  member: the lease's id, its granted TTL, the keys attached to it, and ``remaining_ms`` —
  its remaining TTL as last *checkpointed* through Raft;
* the **primary** half, held by the leader only, in its own monotonic clock: the lease's
  deadline. Renewals (keep-alives) change only this half, so a keep-alive costs no log entry.

Why checkpoints. Followers cannot age ``remaining_ms`` (members share no clock), so after a
leader change the new leader sets every deadline to ``now + remaining_ms`` (at least a short
grace, about an election timeout, so keep-alive clients can find it). etcd resets every lease
to its full TTL instead (etcd-io/etcd#9395): a lease can then outlive its owner by a whole
TTL per failover. Here the leader proposes a checkpoint of a lease when the replicated value
has drifted too far from the truth:

* *too low* (a renewal brought the true remaining TTL above it): a failover would expire the
  lease early — checkpoint at once (``remaining_ms`` becomes the full TTL again);
* *too high* (the lease is not being renewed): a failover would keep it too long — checkpoint
  once the excess passes half the TTL.

A lease kept alive every TTL/3, as the SDK does, therefore never needs a checkpoint after its
grant; a forgotten one needs one, half-way. After a failover a lease expires no earlier than
its true deadline (give or take the batching of renewals) and no later than half a TTL plus
the grace after it: it is never reset, and never resurrected.

The lessor is pure: time is a float of seconds passed in by the caller, nothing here reads a
clock, and iteration orders are deterministic.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from discoverd.errors import (
    ClientError,
    CorruptData,
    LeaseExists,
    LeaseNotFound,
    LeaseTTLTooLarge,
)

MAX_LEASE_TTL = 9_000_000_000
"""etcd's ``MaxLeaseTTL`` (seconds)."""

MAX_LEASE_ID = (1 << 63) - 1

SNAPSHOT_FORMAT = 1


@dataclass(slots=True)
class Lease:
    """One lease. ``deadline`` belongs to the primary half (None elsewhere, or until the
    primary first looks at a lease granted after it took over)."""

    id: int
    ttl: int
    remaining_ms: int
    keys: set[bytes] = field(default_factory=set)
    deadline: float | None = None
    expiring: bool = False  # handed out by ``expired``: no renewal may bring it back

    def __repr__(self) -> str:
        return (f"<Lease {self.id:x} ttl={self.ttl} remaining_ms={self.remaining_ms}"
                f" keys={len(self.keys)} deadline={self.deadline}>")


class Lessor:
    """Every lease of the store. See the module docstring for the two halves.

    Args:
        min_ttl: the smallest TTL granted (a smaller request is raised to it, as etcd does):
            about 1.5 election timeouts, so a lease can survive a leader change.
        grace: what a new primary adds at least to every lease's deadline (seconds).
        revoke_retry: how long (seconds) an expired lease handed out by ``expired`` waits
            before it is handed out again, should its revoke have been lost.
    """

    def __init__(self, *, min_ttl: int = 2, grace: float = 1.0, revoke_retry: float = 3.0) -> None:
        if min_ttl < 1:
            raise ClientError("min_ttl must be at least 1 second")
        self.min_ttl = min_ttl
        self.grace = grace
        self.revoke_retry = revoke_retry
        self._leases: dict[int, Lease] = {}
        self._primary = False
        self._heap: list[tuple[float, int]] = []  # (deadline, id), stale entries skipped
        self._fresh: set[int] = set()  # leases without a deadline yet (primary only)

    def __repr__(self) -> str:
        return f"<Lessor leases={len(self._leases)} primary={self._primary}>"

    def __len__(self) -> int:
        return len(self._leases)

    # ------------------------------------------------------------------ replicated half

    def grant(self, lease_id: int, ttl: int) -> Lease:
        """Create a lease (applied from a committed entry). ``ttl`` below ``min_ttl`` is
        raised to it.

        Raises:
            ClientError: ``lease_id`` is not a positive int64.
            LeaseExists: the id is taken.
            LeaseTTLTooLarge: ``ttl`` is above ``MAX_LEASE_TTL``.
        """
        if not 0 < lease_id <= MAX_LEASE_ID:
            raise ClientError(f"lease id must be in 1..{MAX_LEASE_ID}")
        if ttl > MAX_LEASE_TTL:
            raise LeaseTTLTooLarge()
        if lease_id in self._leases:
            raise LeaseExists()
        ttl = max(ttl, self.min_ttl)
        lease = Lease(lease_id, ttl, ttl * 1000)
        self._leases[lease_id] = lease
        if self._primary:
            self._fresh.add(lease_id)
        return lease

    def revoke(self, lease_id: int) -> list[bytes]:
        """Remove a lease; returns its keys (sorted) for the caller to delete in one write.

        Raises:
            LeaseNotFound: no such lease.
        """
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            raise LeaseNotFound()
        self._fresh.discard(lease_id)
        return sorted(lease.keys)

    def checkpoint(self, remaining: Iterable[tuple[int, int]]) -> None:
        """Record checkpointed remaining TTLs (ms); unknown ids (revoked since) are skipped."""
        for lease_id, remaining_ms in remaining:
            lease = self._leases.get(lease_id)
            if lease is not None:
                lease.remaining_ms = max(0, min(remaining_ms, lease.ttl * 1000))

    def attach(self, key: bytes, lease_id: int) -> None:
        lease = self._leases.get(lease_id)
        if lease is not None:
            lease.keys.add(key)

    def detach(self, key: bytes, lease_id: int) -> None:
        lease = self._leases.get(lease_id)
        if lease is not None:
            lease.keys.discard(key)

    def exists(self, lease_id: int) -> bool:
        return lease_id in self._leases

    def keys_of(self, lease_id: int) -> list[bytes]:
        """The keys attached to a lease (none if there is no such lease)."""
        lease = self._leases.get(lease_id)
        return sorted(lease.keys) if lease is not None else []

    def get(self, lease_id: int) -> Lease | None:
        return self._leases.get(lease_id)

    def leases(self) -> list[int]:
        return sorted(self._leases)

    # ------------------------------------------------------------------ primary half

    @property
    def primary(self) -> bool:
        return self._primary

    def promote(self, now: float) -> None:
        """This member became the leader (and has applied the log up to its own term):
        every lease gets ``now + max(remaining, grace)``."""
        self._primary = True
        self._fresh.clear()
        self._heap = []
        for lease in self._leases.values():
            lease.expiring = False
            lease.deadline = now + max(lease.remaining_ms / 1000, self.grace)
            self._heap.append((lease.deadline, lease.id))
        heapq.heapify(self._heap)

    def demote(self) -> None:
        """This member stopped leading: forget every deadline (the next leader decides)."""
        self._primary = False
        self._fresh.clear()
        self._heap = []
        for lease in self._leases.values():
            lease.deadline = None
            lease.expiring = False

    def _settle(self, now: float) -> None:
        """Give leases granted since the last look their first deadline."""
        for lease_id in sorted(self._fresh):
            lease = self._leases.get(lease_id)
            if lease is not None and lease.deadline is None:
                lease.deadline = now + lease.remaining_ms / 1000
                heapq.heappush(self._heap, (lease.deadline, lease_id))
        self._fresh.clear()

    def renew(self, lease_id: int, now: float) -> int:
        """A keep-alive (primary only): the lease runs its full TTL again from ``now``.
        Returns the TTL, or 0 if the lease does not exist (etcd's answer for a dead lease).
        """
        assert self._primary, "only the primary renews leases"
        self._settle(now)
        lease = self._leases.get(lease_id)
        if lease is None:
            return 0
        if lease.expiring or (lease.deadline is not None and lease.deadline <= now):
            return 0  # expired; its revoke is on its way
        lease.deadline = now + lease.ttl
        heapq.heappush(self._heap, (lease.deadline, lease_id))
        return lease.ttl

    def remaining(self, lease_id: int, now: float) -> float:
        """Seconds left (the primary's view; elsewhere the last checkpoint). -1: no lease."""
        lease = self._leases.get(lease_id)
        if lease is None:
            return -1.0
        if self._primary:
            self._settle(now)
            assert lease.deadline is not None
            return 0.0 if lease.expiring else max(0.0, lease.deadline - now)
        return lease.remaining_ms / 1000

    def remaining_seconds(self, lease_id: int, now: float) -> int:
        """``remaining`` as etcd reports it: whole seconds, truncated (a lease granted for
        100 s shows 99 a moment later); -1 if not found."""
        left = self.remaining(lease_id, now)
        return -1 if left < 0 else int(left)

    def expired(self, now: float, limit: int = 1000) -> list[int]:
        """Up to ``limit`` leases whose deadline has passed, earliest first (primary only).

        Each is handed out once and then again only after ``revoke_retry`` seconds, in case
        the revoke proposed for it was lost; a lease renewed meanwhile is not handed out.
        """
        if not self._primary:
            return []
        self._settle(now)
        out: list[int] = []
        heap = self._heap
        while heap and heap[0][0] <= now and len(out) < limit:
            deadline, lease_id = heapq.heappop(heap)
            lease = self._leases.get(lease_id)
            if lease is None or lease.deadline != deadline:
                continue  # revoked, or renewed: a stale heap entry
            out.append(lease_id)
            lease.expiring = True
            lease.deadline = now + self.revoke_retry
            heapq.heappush(heap, (lease.deadline, lease_id))
        return out

    def checkpoints_due(self, now: float, limit: int = 10_000) -> list[tuple[int, int]]:
        """``(id, remaining_ms)`` for leases whose replicated remaining TTL has drifted (see
        the module docstring), in id order; the caller proposes them as one checkpoint."""
        if not self._primary:
            return []
        self._settle(now)
        due: list[tuple[int, int]] = []
        for lease_id in sorted(self._leases):
            lease = self._leases[lease_id]
            assert lease.deadline is not None
            if lease.expiring:
                continue
            true_ms = max(0, int((lease.deadline - now) * 1000))
            too_low = true_ms - lease.remaining_ms > 500
            too_high = lease.remaining_ms - true_ms > lease.ttl * 500
            if too_low or too_high:
                due.append((lease_id, true_ms))
                if len(due) >= limit:
                    break
        return due

    # ------------------------------------------------------------------ snapshots

    def to_obj(self) -> dict[str, Any]:
        """The replicated half as plain data (attached keys are rebuilt from the kv store)."""
        return {
            "format": SNAPSHOT_FORMAT,
            "leases": [[lease.id, lease.ttl, lease.remaining_ms]
                       for lease in sorted(self._leases.values(), key=lambda x: x.id)],
        }

    def restore(self, obj: Mapping[str, Any] | None, keys: Iterable[tuple[bytes, int]]) -> None:
        """Replace the replicated half with ``obj`` (from ``to_obj``; None: no leases) and
        re-attach ``keys`` (``(key, lease id)`` of every live key with a lease). A primary
        stays primary: restored leases get deadlines on its next look.

        Raises:
            CorruptData: ``obj`` is malformed; nothing changed.
        """
        leases: dict[int, Lease] = {}
        try:
            if obj is not None:
                if obj["format"] != SNAPSHOT_FORMAT:
                    raise ValueError(f"unknown format {obj['format']!r}")
                for lease_id, ttl, remaining_ms in obj["leases"]:
                    if not all(type(v) is int for v in (lease_id, ttl, remaining_ms)):
                        raise TypeError("lease fields must be ints")
                    leases[lease_id] = Lease(lease_id, ttl, remaining_ms)
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptData(f"lease snapshot: {e}") from e
        for key, lease_id in keys:
            lease = leases.get(lease_id)
            if lease is not None:
                lease.keys.add(key)
        self._leases = leases
        self._heap = []
        self._fresh = set(leases) if self._primary else set()
