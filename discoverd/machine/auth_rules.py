"""What each client op needs when authentication is on — one table, pure.

``need(op, req)`` reads a request (with the same decoders its handler uses) and says what the
caller must be: nobody in particular (``PUBLIC``: authenticate, status), any authenticated
user (``USER``), an administrator (``ADMIN``: the ``root`` role), the user the request names
or an administrator (``SELF``), or someone allowed to read/write every key range it touches
(``KEYS``; a txn lists every compare and every op of *both* branches, nested ones included,
since which branch runs is only known at apply). ``lease_revoke`` deletes the lease's keys,
so it needs write permission on them (``LEASE``), which only the member's state can list.

An op missing from the table needs ``ADMIN``: a new op is closed until someone decides who may
call it (tests/machine/test_auth_rules.py checks that every op a member serves is listed).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from discoverd.errors import PermissionDenied
from discoverd.kv.requests import (
    DeleteRangeRequest,
    PutRequest,
    RangeRequest,
    RequestOp,
    TxnRequest,
)
from discoverd.machine.auth import AuthStore
from discoverd.wire.kv_codec import decode_request
from discoverd.wire.lease_watch_codec import decode_lease_id, decode_watch
from discoverd.wire.registry_codec import config_key


class Level(enum.Enum):
    PUBLIC = "public"
    USER = "user"
    SELF = "self"
    ADMIN = "admin"
    KEYS = "keys"
    LEASE = "lease"


KeyNeed = tuple[bytes, bytes, bool]
"""(key, range_end, write) — etcd's range encoding; ``write`` False means read."""


@dataclass(frozen=True, slots=True)
class Need:
    level: Level
    keys: tuple[KeyNeed, ...] = ()
    subject: str = ""
    """``SELF``: the user the request is about."""
    lease: int = 0


PUBLIC_OPS = frozenset({"authenticate", "status", "auth_status"})
USER_OPS = frozenset({
    "lease_grant", "lease_keepalive", "lease_timetolive", "lease_leases", "member_list",
    "alarm_list", "watch_cancel", "watch_progress",
})
ADMIN_OPS = frozenset({
    "compact", "member_add", "member_remove", "member_promote", "member_update",
    "move_leader", "alarm_disarm", "snapshot", "auth_enable", "auth_disable", "user_add",
    "user_delete", "user_list", "user_grant_role", "user_revoke_role", "role_add",
    "role_get", "role_list", "role_delete", "role_grant_permission",
    "role_revoke_permission",
})
SELF_OPS = {"user_get": "name", "user_change_password": "name"}
KEY_OPS = frozenset({"range", "put", "delete_range", "txn", "watch", "config_validate"})
KNOWN_OPS = PUBLIC_OPS | USER_OPS | ADMIN_OPS | KEY_OPS | {"lease_revoke", *SELF_OPS}


def need(op: str, req: dict[str, Any]) -> Need:
    """What ``op`` with ``req`` needs. Raises the decoder's ``ClientError`` for a malformed
    request (the handler would refuse it the same way)."""
    if op in PUBLIC_OPS:
        return Need(Level.PUBLIC)
    if op in USER_OPS:
        return Need(Level.USER)
    if op in SELF_OPS:
        subject = req.get(SELF_OPS[op])
        return Need(Level.SELF, subject=subject if isinstance(subject, str) else "")
    if op == "lease_revoke":
        return Need(Level.LEASE, lease=decode_lease_id(req))
    if op in ("range", "put", "delete_range", "txn"):
        return Need(Level.KEYS, tuple(_request_keys(decode_request(op, req))))
    if op == "watch":
        w = decode_watch(req)
        return Need(Level.KEYS, ((w.key, w.range_end, False),))
    if op == "config_validate":
        name = req.get("name")
        return Need(Level.KEYS, ((config_key(name if isinstance(name, str) else ""), b"",
                                  False),))
    return Need(Level.ADMIN)


def _request_keys(r: Any) -> Iterable[KeyNeed]:
    if isinstance(r, RangeRequest):
        yield r.key, r.range_end, False
    elif isinstance(r, PutRequest):
        yield r.key, b"", True
        if r.prev_kv:
            yield r.key, b"", False
    elif isinstance(r, DeleteRangeRequest):
        yield r.key, r.range_end, True
        if r.prev_kv:
            yield r.key, r.range_end, False
    elif isinstance(r, TxnRequest):
        for c in r.compare:
            yield c.key, c.range_end, False
        for op in (*r.success, *r.failure):
            yield from _op_keys(op)


def _op_keys(op: RequestOp) -> Iterable[KeyNeed]:
    for r in (op.request_range, op.request_put, op.request_delete_range, op.request_txn):
        if r is not None:
            yield from _request_keys(r)


def judge(store: AuthStore, user: str, what: Need,
          lease_keys: Callable[[int], Iterable[bytes]]) -> None:
    """Raise ``PermissionDenied`` unless ``user`` (authenticated) may do ``what``."""
    if what.level in (Level.PUBLIC, Level.USER):
        return
    if store.is_admin(user):
        return
    if what.level is Level.SELF and what.subject == user:
        return
    if what.level is Level.KEYS:
        for key, range_end, write in what.keys:
            if not store.permitted(user, key, range_end, write=write):
                raise PermissionDenied()
        return
    if what.level is Level.LEASE:
        for key in lease_keys(what.lease):
            if not store.permitted(user, key, b"", write=True):
                raise PermissionDenied()
        return
    raise PermissionDenied()
