"""Users, roles and permissions (etcd's auth store) — replicated state, changed only by
committed auth commands, so every member judges a request the same way — pure.

* **Users** hold a bcrypt hash (computed by the member that took the request, before
  proposing: the log and snapshots never see a password) or none (``no_password``: such a
  user can only be a client certificate's CN), a set of role names and a ``generation`` that
  changes with the password, so tokens issued before a password change stop working.
* **Roles** grant ``READ``, ``WRITE`` or ``READWRITE`` on a key, a range ``[key,
  range_end)``, or everything from a key (``range_end == b"\\0"``), as etcd's. The role
  ``root`` grants everything, including administration (users, roles, membership,
  compaction, snapshots).
* **Enabled** turns checking on. Enabling needs a user ``root``; it gets the ``root`` role
  if it lacks it (etcdctl does that dance client-side; doing it here makes every client,
  HTTP included, behave alike). Each enable draws a new token key (``secret``, proposed by
  the member that took the request), so tokens from before a disable die with it.
* ``revision`` counts every change. A write is checked by the member that took it at the
  revision it saw and carries that revision (``_auth_rev``); applying it at another revision
  fails with ``AuthOldRevision`` and the member checks again — so a permission revoked
  between check and apply can never let the write through.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from discoverd.errors import AuthManagementError, ClientError

ROOT = "root"
PERM_TYPES = ("READ", "WRITE", "READWRITE")

AUTH_OPS = (
    "auth_enable", "auth_disable", "user_add", "user_delete", "user_change_password",
    "user_grant_role", "user_revoke_role", "role_add", "role_delete", "role_grant_permission",
    "role_revoke_permission",
)
"""The commands that change the auth store (each proposed by the auth service)."""

AUTH_REV_FIELD = "_auth_rev"
"""The field a proposed client command carries: the auth revision it was judged at."""

AUTH_USER_FIELD = "_auth_user"
"""The user a ``lease_revoke`` was judged for: its keys are judged again at apply, since a
key attached to the lease after the check would otherwise be deleted unjudged."""


@dataclass(frozen=True, slots=True)
class Permission:
    perm_type: str
    key: bytes
    range_end: bytes = b""

    @property
    def reads(self) -> bool:
        return self.perm_type in ("READ", "READWRITE")

    @property
    def writes(self) -> bool:
        return self.perm_type in ("WRITE", "READWRITE")

    def to_wire(self) -> dict[str, Any]:
        return {"perm_type": self.perm_type, "key": self.key, "range_end": self.range_end}

    @classmethod
    def from_wire(cls, obj: Any) -> Permission:
        if not isinstance(obj, dict):
            raise ClientError("field 'perm' must be a map {perm_type, key, range_end}")
        perm_type = obj.get("perm_type")
        if isinstance(perm_type, int) and 0 <= perm_type < len(PERM_TYPES):
            perm_type = PERM_TYPES[perm_type]
        if not isinstance(perm_type, str) or perm_type.upper() not in PERM_TYPES:
            raise ClientError(f"perm_type must be one of {', '.join(PERM_TYPES)}")
        key, range_end = _key_field(obj, "key"), _key_field(obj, "range_end")
        if not key:
            raise ClientError("a permission needs a key")
        return cls(perm_type.upper(), key, range_end)


@dataclass(slots=True)
class User:
    name: str
    password_hash: bytes | None
    roles: set[str] = field(default_factory=set)
    generation: int = 1


def interval(key: bytes, range_end: bytes) -> tuple[bytes, bytes | None]:
    """A key or range in etcd's encoding as a half-open interval; ``None``: no upper end.
    A range whose end is not after its key is empty in the store, but is judged as its key
    alone: a permission question about it is then never vacuously 'yes'."""
    if range_end == b"\0":
        return key, None
    if range_end and range_end > key:
        return key, range_end
    return key, key + b"\0"


def _covered(want: tuple[bytes, bytes | None], granted: Iterable[tuple[bytes, bytes | None]]
             ) -> bool:
    """Whether the union of ``granted`` intervals contains ``want``."""
    start, end = want
    for lo, hi in sorted(granted, key=lambda i: i[0]):
        if lo > start:
            return False  # sorted: nothing later starts at or before ``start`` either
        if hi is None:
            return True
        if hi > start:
            start = hi  # covered up to hi; now need [hi, end)
            if end is not None and start >= end:
                return True
    return False


class AuthStore:
    def __init__(self) -> None:
        self._clear()

    def _clear(self) -> None:
        self.enabled = False
        self.revision = 1
        self.secret = b""
        self.users: dict[str, User] = {}
        self.roles: dict[str, list[Permission]] = {}

    # ------------------------------------------------------------------ questions

    def is_admin(self, user: str) -> bool:
        u = self.users.get(user)
        return u is not None and ROOT in u.roles

    def permitted(self, user: str, key: bytes, range_end: bytes, *, write: bool) -> bool:
        """Whether ``user``'s roles together grant reading (or writing) all of the range."""
        u = self.users.get(user)
        if u is None:
            return False
        if ROOT in u.roles:
            return True
        granted = [interval(p.key, p.range_end)
                   for role in u.roles for p in self.roles.get(role, ())
                   if (p.writes if write else p.reads)]
        return _covered(interval(key, range_end), granted)

    def user_roles(self, name: str) -> list[str]:
        return sorted(self._user(name).roles)

    def role_permissions(self, name: str) -> list[Permission]:
        if name not in self.roles:
            raise AuthManagementError("role_not_found", "etcdserver: role name not found")
        return list(self.roles[name])

    # ------------------------------------------------------------------ changes

    def apply(self, cmd: dict[str, Any]) -> None:
        """One auth command (``op`` one of ``AUTH_OPS``); raises the refusal, changing
        nothing, or changes the store and bumps ``revision``."""
        op = cmd.get("op")
        handler = getattr(self, f"_{op}", None) if op in AUTH_OPS else None
        if handler is None:
            raise ClientError(f"unknown auth command {op!r}")
        handler(cmd)
        self.revision += 1

    def _auth_enable(self, cmd: dict[str, Any]) -> None:
        root = self.users.get(ROOT)
        if root is None:
            raise AuthManagementError("root_user_not_exist",
                                      "etcdserver: root user does not exist")
        secret = cmd.get("secret")
        if not isinstance(secret, bytes) or len(secret) < 16:
            raise ClientError("auth_enable needs a 'secret' of at least 16 bytes")
        self.roles.setdefault(ROOT, [])
        root.roles.add(ROOT)
        self.enabled = True
        self.secret = secret

    def _auth_disable(self, cmd: dict[str, Any]) -> None:
        self.enabled = False  # already off: nothing to do, no error (as etcd)
        self.secret = b""

    def _user_add(self, cmd: dict[str, Any]) -> None:
        name = _name(cmd, "name", "user")
        if name in self.users:
            raise AuthManagementError("user_exists", "etcdserver: user name already exists")
        password_hash = cmd.get("password_hash")
        if password_hash is not None and not isinstance(password_hash, bytes):
            raise ClientError("field 'password_hash' must be bytes")
        self.users[name] = User(name, password_hash)

    def _user_delete(self, cmd: dict[str, Any]) -> None:
        name = _name(cmd, "name", "user")
        self._user(name)
        if self.enabled and name == ROOT:
            raise AuthManagementError(
                "invalid_auth_mgmt",
                "etcdserver: invalid auth management: the root user cannot be deleted "
                "while authentication is enabled")
        del self.users[name]

    def _user_change_password(self, cmd: dict[str, Any]) -> None:
        user = self._user(_name(cmd, "name", "user"))
        password_hash = cmd.get("password_hash")
        if password_hash is not None and not isinstance(password_hash, bytes):
            raise ClientError("field 'password_hash' must be bytes")
        user.password_hash = password_hash
        user.generation += 1

    def _user_grant_role(self, cmd: dict[str, Any]) -> None:
        user = self._user(_name(cmd, "user", "user"))
        role = _name(cmd, "role", "role")
        if role == ROOT:
            self.roles.setdefault(ROOT, [])  # the root role always exists (etcd's too)
        if role not in self.roles:
            raise AuthManagementError("role_not_found", "etcdserver: role name not found")
        user.roles.add(role)

    def _user_revoke_role(self, cmd: dict[str, Any]) -> None:
        user = self._user(_name(cmd, "name", "user"))
        role = _name(cmd, "role", "role")
        if role not in user.roles:
            raise AuthManagementError("role_not_granted",
                                      "etcdserver: role is not granted to the user")
        if self.enabled and user.name == ROOT and role == ROOT:
            raise AuthManagementError(
                "invalid_auth_mgmt",
                "etcdserver: invalid auth management: the root role cannot be revoked from "
                "the root user while authentication is enabled")
        user.roles.discard(role)

    def _role_add(self, cmd: dict[str, Any]) -> None:
        role = _name(cmd, "name", "role")
        if role in self.roles:
            raise AuthManagementError("role_exists", "etcdserver: role name already exists")
        self.roles[role] = []

    def _role_delete(self, cmd: dict[str, Any]) -> None:
        role = _name(cmd, "role", "role")
        self.role_permissions(role)
        if self.enabled and role == ROOT:
            raise AuthManagementError(
                "invalid_auth_mgmt",
                "etcdserver: invalid auth management: the root role cannot be deleted "
                "while authentication is enabled")
        del self.roles[role]
        for user in self.users.values():
            user.roles.discard(role)

    def _role_grant_permission(self, cmd: dict[str, Any]) -> None:
        role = _name(cmd, "name", "role")
        perms = self.role_permissions(role)
        perm = Permission.from_wire(cmd.get("perm"))
        # One entry per (key, range_end), as etcd: granting again replaces its type.
        kept = [p for p in perms if (p.key, p.range_end) != (perm.key, perm.range_end)]
        self.roles[role] = sorted([*kept, perm], key=lambda p: (p.key, p.range_end))

    def _role_revoke_permission(self, cmd: dict[str, Any]) -> None:
        role = _name(cmd, "role", "role")
        perms = self.role_permissions(role)
        key, range_end = _key_field(cmd, "key"), _key_field(cmd, "range_end")
        kept = [p for p in perms if (p.key, p.range_end) != (key, range_end)]
        if len(kept) == len(perms):
            raise AuthManagementError("permission_not_granted",
                                      "etcdserver: permission is not granted to the role")
        self.roles[role] = kept

    def _user(self, name: str) -> User:
        user = self.users.get(name)
        if user is None:
            raise AuthManagementError("user_not_found", "etcdserver: user name not found")
        return user

    # ------------------------------------------------------------------ snapshots

    def to_obj(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled, "revision": self.revision, "secret": self.secret,
            "users": [[u.name, u.password_hash, sorted(u.roles), u.generation]
                      for u in self.users.values()],
            "roles": [[name, [p.to_wire() for p in perms]]
                      for name, perms in self.roles.items()],
        }

    def restore(self, obj: Any) -> None:
        self._clear()
        if not obj:
            return
        self.enabled = bool(obj["enabled"])
        self.revision = int(obj["revision"])
        self.secret = bytes(obj["secret"])
        for name, password_hash, roles, generation in obj["users"]:
            self.users[name] = User(name, password_hash, set(roles), int(generation))
        for name, perms in obj["roles"]:
            self.roles[name] = [Permission.from_wire(p) for p in perms]


def _name(cmd: dict[str, Any], field_name: str, what: str) -> str:
    value = cmd.get(field_name)
    if not isinstance(value, str):
        raise ClientError(f"field {field_name!r} must be a string (the {what} name)")
    if not value:
        raise AuthManagementError(f"{what}_empty", f"etcdserver: {what} name is empty")
    return value


def _key_field(obj: dict[str, Any], name: str) -> bytes:
    value = obj.get(name, b"")
    if isinstance(value, str):
        value = value.encode()
    if not isinstance(value, bytes):
        raise ClientError(f"field {name!r} must be bytes")
    return value
