"""The MVCC vocabulary: revisions, key-value versions and change events.

A ``Revision`` is etcd's ``(main, sub)`` pair: ``main`` is the store-wide revision of the
write request that made the change, ``sub`` orders the changes inside that request (a txn
that puts three keys makes ``(r, 0)``, ``(r, 1)``, ``(r, 2)``). Ordering is lexicographic, so
revisions sort in the order the changes happened. The store keeps no ``Revision`` object per
version (a version's ``main`` is its ``mod_revision``, see ``store.py`` for ``sub``).

``KeyValue`` mirrors etcd's ``mvccpb.KeyValue`` field for field. A deletion is stored as a
*tombstone*: a ``KeyValue`` with ``create_revision == 0`` (a live key always has a positive
create revision, because the first write of any store gets revision 2), which is also exactly
what etcd puts into a DELETE event's ``kv``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple


class Revision(NamedTuple):
    """A change's position in history: ``main`` is the request's revision, ``sub`` its step.

    A ``NamedTuple`` so that comparison, hashing and ``bisect`` are the fast tuple ones.
    """

    main: int
    sub: int = 0


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One version of one key, as etcd reports it.

    Attributes:
        key: the key.
        value: the value (``b""`` for a tombstone, or when a range asked ``keys_only``).
        create_revision: revision of the put that created this incarnation of the key (a key
            deleted and put again gets a new one); 0 marks a tombstone.
        mod_revision: revision of the change that produced this version.
        version: 1 at creation, +1 per put; restarts at 1 after a delete.
        lease: the lease id the key is attached to, 0 for none.
    """

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0

    @property
    def is_tombstone(self) -> bool:
        return self.create_revision == 0


class EventType(enum.IntEnum):
    """etcd's ``mvccpb.Event_EventType`` numbering, so the wire value is the same."""

    PUT = 0
    DELETE = 1


@dataclass(frozen=True, slots=True)
class Event:
    """One change, in the order it happened, for watchers.

    ``kv`` is the new version (for a DELETE, a tombstone carrying the key and the deleting
    revision as ``mod_revision``). ``prev_kv`` is the version it replaced, or ``None`` when
    the key did not exist; it is always filled so a watch hub can serve ``prev_kv`` watches
    without reading history again.
    """

    type: EventType
    kv: KeyValue
    prev_kv: KeyValue | None = None


def tombstone(key: bytes, main: int) -> KeyValue:
    """The record a deletion leaves behind: the key and the deleting revision, nothing else."""
    return KeyValue(key=key, value=b"", create_revision=0, mod_revision=main, version=0)
