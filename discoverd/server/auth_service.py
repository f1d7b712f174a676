"""Authentication and authorization on a member: the auth ops, tokens, and the gate every
client request passes (``ClientApi`` calls ``gate`` before any handler runs, whichever
protocol the request came by).

* **Passwords** are hashed with bcrypt (``--bcrypt-cost``) here, in a worker thread, before
  anything is proposed: the log, snapshots and logs only ever hold the hash. Checking one
  (``authenticate``) also runs in a thread, at most ``HASH_THREADS`` at once, so a flood of
  logins cannot stall the event loop.
* **Tokens** are JWTs (HS256, PyJWT) signed with the cluster's token key, which
  ``auth_enable`` draws and Raft replicates: a token from any member works on every member
  and survives restarts, so a client that fails over need not log in again. A token names
  its user and the user's password generation and expires after ``--auth-token-ttl``; a
  password change, a deleted user, or auth disabled and enabled again make it invalid.
* **The gate** resolves who is asking (the token, else a verified client certificate's CN
  naming a user), then judges the op with ``machine/auth_rules.py`` against this member's
  applied auth state. It returns the auth revision it judged at; writes carry it into the
  log and fail at apply if the auth state moved meanwhile (``AuthOldRevision``), and
  ``ClientApi`` then judges again — so a revoked permission cannot let a racing write
  through. Reads are judged again after they ran if the auth state moved while they waited
  for their ReadIndex round.
"""

from __future__ import annotations

import os
import time
from typing import Any

import bcrypt
import jwt
import trio

from discoverd.errors import (
    AuthFailed,
    AuthNotEnabled,
    ClientError,
    DiscoverdError,
    InvalidAuthToken,
    Unauthenticated,
)
from discoverd.machine.applier import AuthChanged, KvMachine, encode_command
from discoverd.machine.auth import AUTH_REV_FIELD, Permission
from discoverd.machine.auth_rules import Level, Need, judge, need
from discoverd.server.api_server import Connection, Handler
from discoverd.server.raft_loop import RaftLoop

HASH_THREADS = 2
"""bcrypt runs at most this many at once (each takes tens of milliseconds at cost 10)."""

TOKEN_CACHE_SIZE = 4096
CLOCK_LEEWAY = 5.0
"""Seconds of clock difference between members tolerated when checking a token's expiry."""

_DUMMY_HASH = bcrypt.hashpw(b"not a password", bcrypt.gensalt(4))


def _text(req: dict[str, Any], name: str) -> str:
    value = req.get(name)
    if not isinstance(value, str):
        raise ClientError(f"field {name!r} must be a string")
    return value


class AuthService:
    def __init__(self, machine: KvMachine, loop: RaftLoop, *, header: Any, token_ttl: int,
                 bcrypt_cost: int, log: Any) -> None:
        self.machine = machine
        self.store = machine.auth
        self.loop = loop
        self.header = header
        self.token_ttl = token_ttl
        self.bcrypt_cost = bcrypt_cost
        self.log = log
        self._hashing = trio.CapacityLimiter(HASH_THREADS)
        self._verified: dict[str, tuple[str, int, float]] = {}
        self._verified_secret = b""
        self.authentications = 0
        self.failed_authentications = 0
        self.denials = 0

    def ops(self) -> dict[str, Handler]:
        return {
            "authenticate": self.op_authenticate,
            "auth_enable": self.op_enable,
            "auth_disable": self._change("auth_disable"),
            "auth_status": self.op_status,
            "user_add": self.op_user_add,
            "user_get": self.op_user_get,
            "user_list": self.op_user_list,
            "user_delete": self._change("user_delete", "name"),
            "user_change_password": self.op_change_password,
            "user_grant_role": self._change("user_grant_role", "user", "role"),
            "user_revoke_role": self._change("user_revoke_role", "name", "role"),
            "role_add": self._change("role_add", "name"),
            "role_get": self.op_role_get,
            "role_list": self.op_role_list,
            "role_delete": self._change("role_delete", "role"),
            "role_grant_permission": self.op_grant_permission,
            "role_revoke_permission": self._change("role_revoke_permission", "role", "key",
                                                   "range_end"),
        }

    # ------------------------------------------------------------------ the gate

    def gate(self, op: str, req: dict[str, Any], token: Any, conn: Connection
             ) -> tuple[Need | None, str | None]:
        """Judge ``op``; returns what it needed (for ``recheck``) and the user, or
        (None, None) when auth is off.

        Raises:
            Unauthenticated / InvalidAuthToken / PermissionDenied.
        """
        store = self.store
        if not store.enabled:
            return None, None
        what = need(op, req)
        if what.level is Level.PUBLIC:
            return what, None
        user = ""
        try:
            user = self.principal(token, conn)
            judge(store, user, what, self.machine.lessor.keys_of)
        except DiscoverdError as e:
            self.denials += 1
            self.log.info("request refused", code=e.code, user=user or None, op=op,
                          conn=conn.number, auth_revision=store.revision)
            raise
        return what, user

    def recheck(self, what: Need | None, op: str, req: dict[str, Any], token: Any,
                conn: Connection, judged_at: int) -> None:
        """After a read ran: if the auth state moved while it waited, judge it again (a
        read must not return what the caller may no longer see)."""
        if self.store.revision == judged_at or what is None or what.level is not Level.KEYS:
            return  # unchanged; or an op whose effect is judged at apply, or not a read
        if any(write for *_, write in what.keys):
            return  # a write: judged at apply
        self.gate(op, req, token, conn)

    def principal(self, token: Any, conn: Connection) -> str:
        """The user a request comes from (auth is on)."""
        if token is not None:
            if not isinstance(token, str) or not token:
                raise InvalidAuthToken()
            return self.verify(token)
        cn = getattr(conn, "cert_common_name", None)
        if cn and cn in self.store.users:
            return str(cn)
        raise Unauthenticated()

    def verify(self, token: str) -> str:
        store = self.store
        if self._verified_secret != store.secret:
            self._verified.clear()
            self._verified_secret = store.secret
        cached = self._verified.get(token)
        if cached is None:
            try:
                claims = jwt.decode(token, store.secret, algorithms=["HS256"],
                                    options={"require": ["exp", "sub", "gen"]},
                                    leeway=CLOCK_LEEWAY)
            except jwt.PyJWTError:
                raise InvalidAuthToken() from None
            name, generation, expires = claims["sub"], claims["gen"], float(claims["exp"])
            if not isinstance(name, str) or type(generation) is not int:
                raise InvalidAuthToken()
            if len(self._verified) >= TOKEN_CACHE_SIZE:
                self._verified.clear()
            cached = self._verified[token] = (name, generation, expires)
        name, generation, expires = cached
        user = store.users.get(name)
        if (user is None or user.generation != generation
                or time.time() > expires + CLOCK_LEEWAY):
            raise InvalidAuthToken()
        return name

    def issue(self, name: str, generation: int) -> str:
        now = int(time.time())
        return jwt.encode({"sub": name, "gen": generation, "iat": now,
                           "exp": now + self.token_ttl}, self.store.secret, algorithm="HS256")

    # ------------------------------------------------------------------ ops

    async def op_authenticate(self, req: dict[str, Any], conn: Connection) -> dict[str, Any]:
        name, password = _text(req, "name"), _text(req, "password")
        await self.loop.read_barrier()  # judge against the latest users, not a stale copy
        if not self.store.enabled:
            raise AuthNotEnabled()
        user = self.store.users.get(name)
        stored = user.password_hash if user is not None else None
        # Check a hash even for an unknown user, so the time taken does not tell.
        ok = await trio.to_thread.run_sync(
            bcrypt.checkpw, password.encode(), stored or _DUMMY_HASH, limiter=self._hashing)
        user = self.store.users.get(name)  # it may have changed while we hashed
        if not ok or stored is None or user is None or user.password_hash != stored:
            self.failed_authentications += 1
            self.log.warning("authentication failed", user=name, conn=conn.number)
            raise AuthFailed()
        self.authentications += 1
        return {"header": self.header(), "token": self.issue(name, user.generation)}

    async def op_status(self, req: dict[str, Any], conn: Connection) -> dict[str, Any]:
        await self.loop.read_barrier()
        return {"header": self.header(), "enabled": self.store.enabled,
                "auth_revision": self.store.revision}

    async def op_enable(self, req: dict[str, Any], conn: Connection) -> dict[str, Any]:
        return await self._propose("auth_enable", req, {"secret": os.urandom(32)})

    async def op_user_add(self, req: dict[str, Any], conn: Connection) -> dict[str, Any]:
        name = _text(req, "name")
        no_password = req.get("no_password", False)
        if type(no_password) is not bool:
            raise ClientError("field 'no_password' must be bool")
        if no_password:
            return await self._propose("user_add", req, {"name": name, "password_hash": None})
        hashed = await self._hash(req)
        return await self._propose("user_add", req, {"name": name, "password_hash": hashed})

    async def op_change_password(self, req: dict[str, Any], conn: Connection
                                 ) -> dict[str, Any]:
        name = _text(req, "name")
        hashed = await self._hash(req)
        return await self._propose("user_change_password", req,
                                   {"name": name, "password_hash": hashed})

    async def op_grant_permission(self, req: dict[str, Any], conn: Connection
                                  ) -> dict[str, Any]:
        perm = Permission.from_wire(req.get("perm"))
        return await self._propose("role_grant_permission", req,
                                   {"name": _text(req, "name"), "perm": perm.to_wire()})

    async def op_user_get(self, req: dict[str, Any], conn: Connection) -> dict[str, Any]:
        await self.loop.read_barrier()
        return {"header": self.header(), "roles": self.store.user_roles(_text(req, "name"))}

    async def op_user_list(self, req: dict[str, Any], conn: Connection) -> dict[str, Any]:
        await self.loop.read_barrier()
        return {"header": self.header(), "users": sorted(self.store.users)}

    async def op_role_get(self, req: dict[str, Any], conn: Connection) -> dict[str, Any]:
        await self.loop.read_barrier()
        perms = self.store.role_permissions(_text(req, "role"))
        return {"header": self.header(), "perm": [p.to_wire() for p in perms]}

    async def op_role_list(self, req: dict[str, Any], conn: Connection) -> dict[str, Any]:
        await self.loop.read_barrier()
        return {"header": self.header(), "roles": sorted(self.store.roles)}

    def _change(self, op: str, *fields: str) -> Handler:
        """An op proposed as is: the named fields, checked for type by the store."""
        async def handle(req: dict[str, Any], conn: Connection) -> dict[str, Any]:
            return await self._propose(op, req, {f: req.get(f) for f in fields
                                                 if f in req})
        return handle

    async def _hash(self, req: dict[str, Any]) -> bytes:
        password = _text(req, "password")
        if not password:
            raise ClientError("etcdserver: password is empty (use no_password for a user "
                              "that authenticates by client certificate only)")
        salt = bcrypt.gensalt(self.bcrypt_cost)
        return await trio.to_thread.run_sync(bcrypt.hashpw, password.encode(), salt,
                                             limiter=self._hashing)

    async def _propose(self, op: str, req: dict[str, Any], fields: dict[str, Any]
                       ) -> dict[str, Any]:
        if AUTH_REV_FIELD in req:
            fields[AUTH_REV_FIELD] = req[AUTH_REV_FIELD]
        result = await self.loop.propose(encode_command(op, fields))
        if isinstance(result, DiscoverdError):
            raise result
        assert isinstance(result, AuthChanged)
        # Name the op and who it was about, never a password or hash.
        self.log.info("auth changed", op=op, auth_revision=result.auth_revision,
                      **{k: v for k, v in fields.items()
                         if k in ("name", "user", "role") and isinstance(v, str)})
        return {"header": self.header(result.header_revision)}
