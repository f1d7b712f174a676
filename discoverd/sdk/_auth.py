"""Authentication and RBAC on the client side: the token the client carries, and the types of
the user/role administration answers (etcd's auth API, docs/security.md).

**Tokens.** A client built with ``user=``/``password=`` authenticates lazily, on its first
request, and attaches the token to every request it sends (streams included, because the
``Connection`` reads it when it encodes a frame). Tokens expire (``--auth-token-ttl``) and die
with a password change or an ``auth disable``/``enable``; etcd's clients then fail long-lived
watches and keep-alives with "invalid auth token" (etcd-io/etcd#8287, #13975). Here the
client re-authenticates once and sends the request again: the member refused it before acting
on it, so even a write is safe to repeat. A token is valid on every member (it is signed with
a cluster-wide key), so failing over does not need a new one.

A cluster with auth disabled answers ``authenticate`` with ``auth_not_enabled``; the client
then sends no token (as etcd's clientv3 does) and authenticates again only if a member later
says ``unauthenticated`` — which happens when auth is enabled while the client is running.

The password is kept (it is needed to authenticate again) but never shown: not in a repr,
a log line or an exception message.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from discoverd.errors import AuthNotEnabled, ClientError
from discoverd.sdk._types import BytesLike, ResponseHeader, to_bytes
from discoverd.wire.registry_codec import prefix_end

PERM_TYPES = ("READ", "WRITE", "READWRITE")
FROM_KEY_END = b"\x00"
"""etcd's ``range_end`` for "every key from ``key`` on" (``--from-key``)."""


@dataclass(frozen=True, slots=True)
class AuthStatus:
    enabled: bool
    auth_revision: int


@dataclass(frozen=True, slots=True)
class Permission:
    """What a role grants: ``perm_type`` (``READ``, ``WRITE`` or ``READWRITE``) on ``key``
    alone (``range_end`` empty), on ``[key, range_end)``, or on every key ``>= key``
    (``range_end`` ``b"\\x00"``)."""

    perm_type: str
    key: bytes
    range_end: bytes = b""

    @property
    def prefix(self) -> bool:
        """Whether the range is exactly the keys starting with ``key`` (how etcdctl prints
        it: ``(prefix key)``)."""
        return bool(self.range_end) and self.range_end == prefix_end(self.key) and \
            self.range_end != FROM_KEY_END

    @property
    def from_key(self) -> bool:
        return self.range_end == FROM_KEY_END

    @classmethod
    def from_wire(cls, obj: Any) -> Permission:
        if not isinstance(obj, Mapping):
            raise ClientError("malformed permission in the member's answer")
        return cls(str(obj.get("perm_type", "")), bytes(obj.get("key") or b""),
                   bytes(obj.get("range_end") or b""))


def perm_type_name(perm_type: str | int) -> str:
    """``read``/``write``/``readwrite`` (any case) or etcd's enum numbers 0/1/2 → the
    protocol's upper-case name."""
    if isinstance(perm_type, int) and not isinstance(perm_type, bool):
        if 0 <= perm_type < len(PERM_TYPES):
            return PERM_TYPES[perm_type]
    elif isinstance(perm_type, str) and perm_type.upper() in PERM_TYPES:
        return perm_type.upper()
    raise ClientError(f"permission type must be read, write or readwrite, not {perm_type!r}")


def perm_range(key: BytesLike, range_end: BytesLike = b"", *, prefix: bool = False,
               from_key: bool = False) -> tuple[bytes, bytes]:
    """``(key, range_end)`` as the member stores a permission's range (etcdctl's rules:
    ``--prefix`` and ``--from-key`` exclude each other and an explicit range end)."""
    k = to_bytes(key, "key")
    end = to_bytes(range_end, "range_end")
    if prefix and from_key:
        raise ClientError("--from-key and --prefix flags are mutually exclusive")
    if (prefix or from_key) and end:
        raise ClientError("range_end cannot be given with --prefix or --from-key")
    if prefix:
        return k, prefix_end(k) if k else FROM_KEY_END
    if from_key:
        return k, FROM_KEY_END
    return k, end


Authenticate = Callable[[str, str], Awaitable[str]]


class TokenKeeper:
    """The client's credentials and current token; one per ``AsyncClient``.

    ``token`` is read by every ``Connection`` when it encodes a request. ``ensure`` and
    ``refresh`` take a lock, so that concurrent requests hitting an expired token cause one
    ``authenticate``, not one each.
    """

    __slots__ = ("_authenticate", "_lock", "_password", "_state", "token", "user")

    def __init__(self, user: str | None, password: str | None) -> None:
        self.user = user or None
        self._password = password
        self.token: str | None = None
        self._state = "new"
        """``new`` (not yet authenticated), ``token`` (holding one), ``open`` (the cluster
        said auth is not enabled: requests go without a token)."""
        self._lock: anyio.Lock | None = None

    def __repr__(self) -> str:
        return f"<TokenKeeper user={self.user!r} state={self._state}>"

    @property
    def has_credentials(self) -> bool:
        return self.user is not None

    def current(self) -> str | None:
        """What a request encoded now carries (the ``Connection``'s token source)."""
        return self.token

    async def ensure(self, authenticate: Authenticate) -> None:
        """Authenticate before the first request (no-op without credentials)."""
        if self.user is None or self._state != "new":
            return
        await self.refresh(authenticate, None)

    async def refresh(self, authenticate: Authenticate, stale: str | None) -> None:
        """Get a new token unless another task already replaced ``stale`` (the token the
        refused request carried). ``AuthFailed`` if the credentials are wrong now."""
        if self.user is None:
            return
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            if self._state != "new" and self.token != stale:
                return  # someone else refreshed it while we waited
            try:
                token = await authenticate(self.user, self._password or "")
            except AuthNotEnabled:
                self.token, self._state = None, "open"
                return
            self.token, self._state = token, "token"


class AuthMixin:
    """``AsyncClient``'s authentication and user/role administration (etcd's ``Auth``
    service). Kept apart from the client's core so the auth surface reads in one place."""

    if TYPE_CHECKING:
        _auth: TokenKeeper

        async def _call(self, op: str, fields: dict[str, Any], *, retry_safe: bool,
                        limit: float | None = None) -> tuple[dict[str, Any], Any]: ...

    async def _authenticate_token(self, name: str, password: str) -> str:
        ok, _ = await self._call("authenticate", {"name": name, "password": password},
                                 retry_safe=True)
        token = ok.get("token")
        if not isinstance(token, str) or not token:
            raise ClientError("the member's authenticate answer has no token")
        return token

    async def authenticate(self, name: str, password: str) -> str:
        """A token for ``name`` (``AuthFailed`` if the name or password is wrong). The client
        does not start using it: a client authenticates itself from its ``user``/
        ``password``. Useful to hand a token to an HTTP client (``Authorization`` header)."""
        return await self._authenticate_token(name, password)

    async def _admin(self, op: str, fields: dict[str, Any], *, read: bool = False
                     ) -> dict[str, Any]:
        ok, _ = await self._call(op, fields, retry_safe=read)
        return ok

    async def auth_enable(self) -> ResponseHeader:
        """Turn authentication on (``AuthManagementError`` ``root_user_not_exist`` unless a
        user ``root`` exists; the member grants it the ``root`` role if needed)."""
        return ResponseHeader.from_wire((await self._admin("auth_enable", {})).get("header"))

    async def auth_disable(self) -> ResponseHeader:
        return ResponseHeader.from_wire((await self._admin("auth_disable", {})).get("header"))

    async def auth_status(self) -> AuthStatus:
        ok = await self._admin("auth_status", {}, read=True)
        return AuthStatus(bool(ok.get("enabled")), int(ok.get("auth_revision") or 0))

    async def user_add(self, name: str, password: str | None = None, *,
                       no_password: bool = False) -> ResponseHeader:
        """Add a user with ``password`` (hashed by the member before it is replicated), or
        with none (``no_password``: it can only authenticate by client certificate)."""
        fields: dict[str, Any] = {"name": name}
        if no_password:
            if password:
                raise ClientError("a user cannot have both a password and no_password")
            fields["no_password"] = True
        else:
            if password is None:
                raise ClientError("user_add needs a password (or no_password=True)")
            fields["password"] = password
        return ResponseHeader.from_wire((await self._admin("user_add", fields)).get("header"))

    async def user_get(self, name: str) -> list[str]:
        """The roles granted to ``name``."""
        ok = await self._admin("user_get", {"name": name}, read=True)
        return [str(r) for r in ok.get("roles") or ()]

    async def user_list(self) -> list[str]:
        ok = await self._admin("user_list", {}, read=True)
        return [str(u) for u in ok.get("users") or ()]

    async def user_delete(self, name: str) -> ResponseHeader:
        return ResponseHeader.from_wire(
            (await self._admin("user_delete", {"name": name})).get("header"))

    async def user_change_password(self, name: str, password: str) -> ResponseHeader:
        """Tokens issued to ``name`` before the change stop working; a client logged in as
        ``name`` with the old password then fails with ``AuthFailed``."""
        return ResponseHeader.from_wire((await self._admin(
            "user_change_password", {"name": name, "password": password})).get("header"))

    async def user_grant_role(self, user: str, role: str) -> ResponseHeader:
        return ResponseHeader.from_wire((await self._admin(
            "user_grant_role", {"user": user, "role": role})).get("header"))

    async def user_revoke_role(self, user: str, role: str) -> ResponseHeader:
        return ResponseHeader.from_wire((await self._admin(
            "user_revoke_role", {"name": user, "role": role})).get("header"))

    async def role_add(self, name: str) -> ResponseHeader:
        return ResponseHeader.from_wire(
            (await self._admin("role_add", {"name": name})).get("header"))

    async def role_get(self, name: str) -> list[Permission]:
        """The permissions ``name`` grants, in the member's order (by key)."""
        ok = await self._admin("role_get", {"role": name}, read=True)
        return [Permission.from_wire(p) for p in ok.get("perm") or ()]

    async def role_list(self) -> list[str]:
        ok = await self._admin("role_list", {}, read=True)
        return [str(r) for r in ok.get("roles") or ()]

    async def role_delete(self, name: str) -> ResponseHeader:
        return ResponseHeader.from_wire(
            (await self._admin("role_delete", {"role": name})).get("header"))

    async def role_grant_permission(
        self, name: str, perm_type: str | int, key: BytesLike, range_end: BytesLike = b"",
        *, prefix: bool = False, from_key: bool = False,
    ) -> ResponseHeader:
        """Let role ``name`` read, write or both (``perm_type``: ``read``/``write``/
        ``readwrite``) ``key``, ``[key, range_end)``, the keys starting with ``key``
        (``prefix``) or every key ``>= key`` (``from_key``)."""
        k, end = perm_range(key, range_end, prefix=prefix, from_key=from_key)
        perm = {"perm_type": perm_type_name(perm_type), "key": k, "range_end": end}
        return ResponseHeader.from_wire((await self._admin(
            "role_grant_permission", {"name": name, "perm": perm})).get("header"))

    async def role_revoke_permission(
        self, name: str, key: BytesLike, range_end: BytesLike = b"", *,
        prefix: bool = False, from_key: bool = False,
    ) -> ResponseHeader:
        """Take back the permission on exactly that range (``AuthManagementError``
        ``permission_not_granted`` if the role has none on it)."""
        k, end = perm_range(key, range_end, prefix=prefix, from_key=from_key)
        return ResponseHeader.from_wire((await self._admin(
            "role_revoke_permission", {"role": name, "key": k, "range_end": end})
        ).get("header"))


class SyncAuthMixin:
    """The blocking ``Client``'s side of ``AuthMixin``: the same methods, run on the
    client's event loop thread."""

    if TYPE_CHECKING:
        from discoverd.sdk._client import AsyncClient

        _async: AsyncClient

        def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any: ...

    def authenticate(self, name: str, password: str) -> str:
        """See ``AsyncClient.authenticate``."""
        result: str = self._run(self._async.authenticate, name, password)
        return result

    def auth_enable(self) -> ResponseHeader:
        result: ResponseHeader = self._run(self._async.auth_enable)
        return result

    def auth_disable(self) -> ResponseHeader:
        result: ResponseHeader = self._run(self._async.auth_disable)
        return result

    def auth_status(self) -> AuthStatus:
        result: AuthStatus = self._run(self._async.auth_status)
        return result

    def user_add(self, name: str, password: str | None = None, *,
                 no_password: bool = False) -> ResponseHeader:
        result: ResponseHeader = self._run(self._async.user_add, name, password,
                                           no_password=no_password)
        return result

    def user_get(self, name: str) -> list[str]:
        result: list[str] = self._run(self._async.user_get, name)
        return result

    def user_list(self) -> list[str]:
        result: list[str] = self._run(self._async.user_list)
        return result

    def user_delete(self, name: str) -> ResponseHeader:
        result: ResponseHeader = self._run(self._async.user_delete, name)
        return result

    def user_change_password(self, name: str, password: str) -> ResponseHeader:
        result: ResponseHeader = self._run(self._async.user_change_password, name, password)
        return result

    def user_grant_role(self, user: str, role: str) -> ResponseHeader:
        result: ResponseHeader = self._run(self._async.user_grant_role, user, role)
        return result

    def user_revoke_role(self, user: str, role: str) -> ResponseHeader:
        result: ResponseHeader = self._run(self._async.user_revoke_role, user, role)
        return result

    def role_add(self, name: str) -> ResponseHeader:
        result: ResponseHeader = self._run(self._async.role_add, name)
        return result

    def role_get(self, name: str) -> list[Permission]:
        result: list[Permission] = self._run(self._async.role_get, name)
        return result

    def role_list(self) -> list[str]:
        result: list[str] = self._run(self._async.role_list)
        return result

    def role_delete(self, name: str) -> ResponseHeader:
        result: ResponseHeader = self._run(self._async.role_delete, name)
        return result

    def role_grant_permission(
        self, name: str, perm_type: str | int, key: BytesLike, range_end: BytesLike = b"",
        *, prefix: bool = False, from_key: bool = False,
    ) -> ResponseHeader:
        result: ResponseHeader = self._run(
            self._async.role_grant_permission, name, perm_type, key, range_end,
            prefix=prefix, from_key=from_key)
        return result

    def role_revoke_permission(
        self, name: str, key: BytesLike, range_end: BytesLike = b"", *,
        prefix: bool = False, from_key: bool = False,
    ) -> ResponseHeader:
        result: ResponseHeader = self._run(
            self._async.role_revoke_permission, name, key, range_end, prefix=prefix,
            from_key=from_key)
        return result


__all__ = ["AuthMixin", "AuthStatus", "Permission", "SyncAuthMixin", "TokenKeeper",
           "perm_range", "perm_type_name"]
