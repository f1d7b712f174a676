"""``KvMachine``: the replicated state machine members run — the MVCC store, the leases on
it, and the watch hub that turns applied writes into watch events.

A committed entry holds one command as the protocol's own map (``{"op": "put", ...}``,
cbor2), decoded again here on every member by the same decoders the server used to refuse
bad requests before proposing them; so a member applies exactly what it was asked,
identically everywhere. An entry that fails (e.g. ``compacted``, ``lease_not_found``)
applies as a no-op and answers its proposer with the error — deterministically, on every
member alike.

Commands: the client writes (``put``, ``delete_range``, ``txn``, ``compact``,
``lease_grant``, ``lease_revoke``) and two that only a leader proposes: ``lease_expire``
(many expired leases, one revision each, one entry for all) and ``lease_checkpoint``
(remaining TTLs, see ``leases/lessor.py``); and the member table's two (``member_update``:
new peer URLs; ``member_attributes``: a member publishing its name and client URLs), which
only the membership service proposes. Membership (``CONF_CHANGE``) entries update the member
table too (``machine/members.py``). The auth commands (``machine/auth.py`` ``AUTH_OPS``)
change users and roles. A client command carries the auth revision its permissions were
judged at (``_auth_rev``); at any other revision it fails with ``auth_old_revision`` and its
member judges it again.

The replicated state is the store, the leases' replicated half, the member table and the
auth store. The
lessor's primary half and the watch hub are local to this member: they are driven from here
because they must see every change in apply order, but nothing they hold goes into a
snapshot.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cbor2

from discoverd.consensus.messages import ConfChange, Entry, EntryKind
from discoverd.errors import (
    AuthOldRevision,
    ClientError,
    CorruptData,
    DiscoverdError,
    NoSpace,
    PermissionDenied,
)
from discoverd.kv.requests import (
    CompactionRequest,
    DeleteRangeRequest,
    PutRequest,
    RangeRequest,
    TxnRequest,
)
from discoverd.kv.revision import Event, EventType
from discoverd.kv.store import MvccStore, load_versions
from discoverd.kv.watch import WatchHub
from discoverd.leases.lessor import Lessor
from discoverd.machine.alarms import NOSPACE, Alarms
from discoverd.machine.auth import AUTH_OPS, AUTH_REV_FIELD, AUTH_USER_FIELD, AuthStore
from discoverd.machine.members import MemberInfo, MemberTable, Seed
from discoverd.registry import RegistryHook
from discoverd.wire import lazy_array
from discoverd.wire.kv_codec import WRITE_OPS, decode_request
from discoverd.wire.lazy_array import LazyArray
from discoverd.wire.lease_watch_codec import (
    decode_checkpoints,
    decode_lease_grant,
    decode_lease_id,
    decode_lease_ids,
)

LEASE_WRITE_OPS = ("lease_grant", "lease_revoke")
"""Lease commands a client may send (the member proposes them)."""

INTERNAL_OPS = ("lease_expire", "lease_checkpoint")
"""Commands only the leader's own lease timer proposes; never accepted from a client."""

SNAPSHOT_FORMAT = 4
"""3 added the member table (``"members"``); a format-2 image has none and is read with
the table taken from ``--initial-cluster`` (``MemberTable.restore(None)``). 4 added the auth
store (``"auth"``); older images have none: auth off, no users."""


class _DryRun(Exception):
    """Raised by ``validate_put``'s hook to undo a write that passed validation."""


def encode_command(op: str, fields: dict[str, Any]) -> bytes:
    """The entry data for a command (``fields`` as received, minus ``id``/``op``)."""
    return cbor2.dumps({**fields, "op": op})


@dataclass(frozen=True, slots=True)
class AlarmsChanged:
    header_revision: int
    changed: list[tuple[int, str]]
    active: list[tuple[int, str]]


def adds_data(req: Any) -> bool:
    """Whether a kv write request may grow the store (a put, or a txn with one anywhere)."""
    if isinstance(req, PutRequest):
        return True
    if isinstance(req, TxnRequest):
        return any(op.request_put is not None or
                   (op.request_txn is not None and adds_data(op.request_txn))
                   for op in (*req.success, *req.failure))
    return False


@dataclass(frozen=True, slots=True)
class AuthChanged:
    header_revision: int
    auth_revision: int


@dataclass(frozen=True, slots=True)
class LeaseGranted:
    header_revision: int
    id: int
    ttl: int


@dataclass(frozen=True, slots=True)
class LeaseRevoked:
    header_revision: int


@dataclass(frozen=True, slots=True)
class LeasesExpired:
    header_revision: int
    revoked: int


class KvMachine:
    """The state machine of DESIGN §1. ``min_ttl``/``grace`` configure the lessor."""

    def __init__(
        self,
        *,
        max_txn_ops: int = 128,
        min_ttl: int = 2,
        grace: float = 1.0,
        max_buffered_events: int = 1024,
        members_seed: Seed | None = None,
    ) -> None:
        self.store = MvccStore(max_txn_ops=max_txn_ops)
        self.max_txn_ops = max_txn_ops
        self.lessor = Lessor(min_ttl=min_ttl, grace=grace)
        self.hub = WatchHub(self.store, max_buffered_events=max_buffered_events)
        self.registry = RegistryHook()
        """Judges kv writes to registry keys as they are applied (DESIGN §7)."""
        self.applied = 0
        self.woken: set[int] = set()
        """Watchers with something new to send since the shell last emptied this set."""
        self._ops: dict[str, Callable[[dict[str, Any]], Any]] = {
            "lease_grant": self._lease_grant,
            "lease_revoke": self._lease_revoke,
            "lease_expire": self._lease_expire,
            "lease_checkpoint": self._lease_checkpoint,
            "alarm": self._alarm,
            "member_update": self._member_update,
            "member_attributes": self._member_attributes,
        }
        self.members = MemberTable(members_seed)
        """The cluster's members (seeded with ``--initial-cluster`` for the founders)."""
        self._term = 0  # the term of the entry being applied (member change log lines)
        self.alarms = Alarms()
        self.auth = AuthStore()
        """Users, roles, permissions (``machine/auth.py``); judged by ``server/auth_service``."""

    def __repr__(self) -> str:
        return (f"<KvMachine applied={self.applied} revision={self.store.revision}"
                f" leases={len(self.lessor)} watchers={len(self.hub)}>")

    def apply(self, entry: Entry) -> Any:
        """Apply one committed entry; returns the response, or the error it failed with."""
        self.applied = entry.index
        self._term = entry.term
        if entry.kind is EntryKind.CONF_CHANGE:
            # The member core hands us the change with its proposer's context unwrapped.
            self.members.apply_conf_change(ConfChange.decode(entry.data), index=entry.index,
                                           term=entry.term)
            return None
        if entry.kind is not EntryKind.NORMAL or not entry.data:
            return None
        try:
            cmd = cbor2.loads(entry.data)
            if not isinstance(cmd, dict):
                raise ClientError("not a command")
            op = cmd.get("op")
            checked_at = cmd.get(AUTH_REV_FIELD)
            if checked_at is not None and checked_at != self.auth.revision:
                # Permissions were judged against an auth state that has changed since:
                # the proposer judges again (server/auth_service.py) and re-proposes.
                raise AuthOldRevision()
            if op in WRITE_OPS:
                req = decode_request(op, cmd)
                if NOSPACE in self.alarms and adds_data(req):
                    raise NoSpace()
                return self._execute(req)
            if op == "lease_grant" and NOSPACE in self.alarms:
                raise NoSpace()
            if op in AUTH_OPS:
                self.auth.apply(cmd)
                return AuthChanged(self.store.revision, self.auth.revision)
            handler = self._ops.get(op) if isinstance(op, str) else None
            if handler is None:
                raise ClientError(f"unknown command {op!r}")
            return handler(cmd)
        except DiscoverdError as e:
            return e
        except (ValueError, TypeError, EOFError, cbor2.CBORDecodeError) as e:
            return ClientError(f"malformed command: {e}")

    # ------------------------------------------------------------------ kv

    def _execute(self, req: Any) -> Any:
        store = self.store
        exists = self.lessor.exists
        resp: Any
        events: list[Event]
        hook = self.registry
        if isinstance(req, PutRequest):
            resp, events = store.put(req, lease_exists=exists, hook=hook)
        elif isinstance(req, DeleteRangeRequest):
            resp, events = store.delete_range(req, hook=hook)
        elif isinstance(req, TxnRequest):
            resp, events = store.txn(req, lease_exists=exists, hook=hook)
        elif isinstance(req, CompactionRequest):
            resp = store.compact(req)
            self.woken |= self.hub.on_compact()
            return resp
        else:
            raise ClientError("not a kv write command")
        self._changed(events)
        return resp

    def _changed(self, events: list[Event]) -> None:
        """One revision's events: keep lease attachments in step, then tell the watchers."""
        if not events:
            return
        lessor = self.lessor
        for ev in events:
            prev = ev.prev_kv
            if prev is not None and prev.lease:
                lessor.detach(prev.key, prev.lease)
            if ev.type is EventType.PUT and ev.kv.lease:
                lessor.attach(ev.kv.key, ev.kv.lease)
        self.woken |= self.hub.notify(events)

    def validate_put(self, key: bytes, value: bytes) -> None:
        """Judge a put of ``value`` at ``key`` as the registry would when applying it, and
        change nothing (a dry run: ``discoverd config validate``). The put is made inside the
        store and always undone by the hook before it commits, so no revision, event or
        history entry results; it runs synchronously, so nothing else can observe it.

        Raises:
            ValidationError (or another ``DiscoverdError``): the put would be refused.
        """
        registry = self.registry

        def judge_then_undo(view: Any, events: Any) -> None:
            registry(view, events)
            raise _DryRun

        try:
            self.store.put(PutRequest(key=key, value=value), hook=judge_then_undo)
        except _DryRun:
            return

    # ------------------------------------------------------------------ leases

    def _lease_grant(self, cmd: dict[str, Any]) -> LeaseGranted:
        lease_id, ttl = decode_lease_grant(cmd)
        lease = self.lessor.grant(lease_id, ttl)
        return LeaseGranted(self.store.revision, lease.id, lease.ttl)

    def _revoke(self, lease_id: int) -> None:
        keys = self.lessor.revoke(lease_id)
        if keys:
            _, events = self.store.delete_keys(keys)
            self._changed(events)

    def _lease_revoke(self, cmd: dict[str, Any]) -> LeaseRevoked:
        lease_id = decode_lease_id(cmd)
        user = cmd.get(AUTH_USER_FIELD)
        if self.auth.enabled and isinstance(user, str) and not all(
                self.auth.permitted(user, key, b"", write=True)
                for key in self.lessor.keys_of(lease_id)):
            raise PermissionDenied()
        self._revoke(lease_id)
        return LeaseRevoked(self.store.revision)

    def _lease_expire(self, cmd: dict[str, Any]) -> LeasesExpired:
        revoked = 0
        for lease_id in decode_lease_ids(cmd):
            if self.lessor.exists(lease_id):  # renewed-and-revoked races land here
                self._revoke(lease_id)
                revoked += 1
        return LeasesExpired(self.store.revision, revoked)

    def _lease_checkpoint(self, cmd: dict[str, Any]) -> None:
        self.lessor.checkpoint(decode_checkpoints(cmd))

    # ------------------------------------------------------------------ alarms

    def _alarm(self, cmd: dict[str, Any]) -> AlarmsChanged:
        return AlarmsChanged(self.store.revision, self.alarms.apply(cmd), self.alarms.active())

    # ------------------------------------------------------------------ members

    def _member_update(self, cmd: dict[str, Any]) -> MemberInfo:
        member_id = cmd.get("member")
        if type(member_id) is not int:
            raise ClientError("field 'member' must be an integer member id")
        return self.members.update(member_id, cmd.get("peer_urls") or (),
                                   index=self.applied, term=self._term)

    def _member_attributes(self, cmd: dict[str, Any]) -> bool:
        member_id, name, urls = cmd.get("member"), cmd.get("name"), cmd.get("client_urls")
        if type(member_id) is not int or not isinstance(name, str) or not isinstance(
                urls, list) or not all(isinstance(u, str) for u in urls):
            raise ClientError("member_attributes needs 'member', 'name' and 'client_urls'")
        return self.members.publish(member_id, name, urls, index=self.applied, term=self._term)

    # ------------------------------------------------------------------ snapshots

    def snapshot(self) -> bytes:
        return self.snapshot_builder()()

    def snapshot_builder(self) -> Callable[[], bytes]:
        """Freeze the store (two C-level copies) and take the small parts as plain data
        now; the returned builder encodes the versions chunk by chunk on whatever thread
        runs it, so a large store does not stop the event loop (see ``wire.lazy_array``)."""
        frozen = self.store.freeze()
        image = {
            "format": SNAPSHOT_FORMAT,
            "applied": self.applied,
            "store": None,
            "leases": self.lessor.to_obj(),
            "alarms": self.alarms.to_obj(),
            "members": self.members.to_obj(),
            "auth": self.auth.to_obj(),
        }

        def build() -> bytes:
            store = frozen.to_obj(LazyArray(frozen.version_chunks()))
            return lazy_array.dumps({**image, "store": store})

        return build

    def restore(self, data: bytes) -> None:
        if not data:
            self.store.restore(MvccStore(max_txn_ops=self.max_txn_ops).to_obj())
            self.lessor.restore(None, ())
            self.alarms.restore(None)
            self.members.restore(None)
            self.auth.restore(None)
            self.applied = 0
            self.woken |= self.hub.on_restore()
            return
        try:
            # The versions (a million rows at scale) go into the store's structures as
            # they are decoded, never all at once as rows (see wire.lazy_array.load).
            image = lazy_array.load(data, ("store", "versions"), load_versions)
            applied, store = image["applied"], image["store"]
            leases = image.get("leases")
        except (ValueError, TypeError, KeyError, EOFError, cbor2.CBORDecodeError) as e:
            raise CorruptData(f"snapshot is not a kv machine image: {e}") from e
        self.store.restore(store)
        everything = RangeRequest(key=b"\0", range_end=b"\0")
        attached = [(kv.key, kv.lease) for kv in self.store.range(everything).kvs if kv.lease]
        self.lessor.restore(leases, attached)
        self.alarms.restore(image.get("alarms"))
        self.members.restore(image.get("members"))
        self.auth.restore(image.get("auth"))
        self.applied = applied
        self.woken |= self.hub.on_restore()
