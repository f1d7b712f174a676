"""etcd v3's auth routes on the gateway: ``/v3/auth/authenticate|enable|disable|status``,
``/v3/auth/user/*`` and ``/v3/auth/role/*``, etcd 3.4's JSON in, the native auth ops run.

Only the request and answer shapes live here: each route is a unary gateway route (see
``etcd_gateway.UNARY``, which takes these in), so the token of the ``Authorization`` header,
the permission gate, size limits and error answers are exactly those of the KV routes
(``router.GatewayContext``). etcd's ``hashedPassword`` (a bcrypt hash computed by the
client) is refused: a member hashes passwords itself, at its own ``--bcrypt-cost``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import Any

from discoverd.errors import ClientError
from discoverd.wire import etcd_json as ej


class PermType(enum.IntEnum):
    """etcd's ``authpb.Permission.Type``."""

    READ = 0
    WRITE = 1
    READWRITE = 2


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ClientError(f"field {name!r} must be a string")
    return value


def _object(obj: Any, what: str) -> dict[str, Any]:
    return ej.as_object(obj, what)


def _names(obj: Any, what: str, *fields: str) -> dict[str, Any]:
    """The named string fields (absent: empty, so the member answers etcd's "name is
    empty" rather than a decoding error)."""
    src = _object(obj, what)
    return {f: _text(src.get(f, ""), f) for f in fields}


def _nothing(obj: Any) -> dict[str, Any]:
    _object(obj, "request body")
    return {}


def decode_authenticate(obj: Any) -> dict[str, Any]:
    return _names(obj, "an authenticate request", "name", "password")


def decode_user_add(obj: Any) -> dict[str, Any]:
    src = _object(obj, "a user add request")
    if src.get("hashedPassword") or src.get("hashed_password"):
        raise ClientError("hashedPassword is not supported: members hash passwords "
                          "themselves; send password")
    out: dict[str, Any] = {"name": _text(src.get("name", ""), "name")}
    options = _object(src.get("options") or {}, "options")
    no_password = options.get("no_password", options.get("noPassword", False))
    if not isinstance(no_password, bool):
        raise ClientError("field 'no_password' must be true or false")
    if no_password:
        out["no_password"] = True
    else:
        out["password"] = _text(src.get("password", ""), "password")
    return out


def decode_change_password(obj: Any) -> dict[str, Any]:
    src = _object(obj, "a change password request")
    if src.get("hashedPassword") or src.get("hashed_password"):
        raise ClientError("hashedPassword is not supported: send password")
    return _names(src, "a change password request", "name", "password")


def decode_role_grant(obj: Any) -> dict[str, Any]:
    src = _object(obj, "a role grant request")
    perm = _object(src.get("perm") or {}, "perm")
    perm_type = perm.get("permType", perm.get("perm_type", 0))
    return {
        "name": _text(src.get("name", ""), "name"),
        "perm": {
            "perm_type": ej._enum(perm_type, "permType", PermType),
            "key": ej._b64(perm.get("key", ""), "key"),
            "range_end": ej._b64(perm.get("range_end", perm.get("rangeEnd", "")),
                                 "range_end"),
        },
    }


def decode_role_revoke(obj: Any) -> dict[str, Any]:
    src = _object(obj, "a role revoke request")
    return {"role": _text(src.get("role", ""), "role"),
            "key": ej._b64(src.get("key", ""), "key"),
            "range_end": ej._b64(src.get("range_end", src.get("rangeEnd", "")), "range_end")}


def _with_header(resp: Mapping[str, Any]) -> dict[str, Any]:
    return {"header": ej.encode_header(resp.get("header", {}))}


def encode_authenticate(resp: Mapping[str, Any]) -> dict[str, Any]:
    out = _with_header(resp)
    ej._set(out, "token", resp.get("token", ""))
    return out


def encode_status(resp: Mapping[str, Any]) -> dict[str, Any]:
    out = _with_header(resp)
    ej._set(out, "enabled", bool(resp.get("enabled")))
    revision = resp.get("auth_revision") or 0
    ej._set(out, "authRevision", ej._i64(revision) if revision else None)
    return out


def _list_of(field: str) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    def encode(resp: Mapping[str, Any]) -> dict[str, Any]:
        out = _with_header(resp)
        ej._set(out, field, [str(v) for v in resp.get(field) or ()])
        return out
    return encode


def encode_role_get(resp: Mapping[str, Any]) -> dict[str, Any]:
    out = _with_header(resp)
    perms = []
    for p in resp.get("perm") or ():
        one: dict[str, Any] = {}
        if p.get("perm_type") in ("WRITE", "READWRITE"):
            one["permType"] = p["perm_type"]  # READ is the enum's zero: left out
        ej._set(one, "key", ej.b64(p.get("key") or b"") if p.get("key") else None)
        ej._set(one, "range_end",
                ej.b64(p.get("range_end") or b"") if p.get("range_end") else None)
        perms.append(one)
    ej._set(out, "perm", perms)
    return out


def _named(*fields: str) -> Callable[[Any], dict[str, Any]]:
    return lambda obj: _names(obj, "request body", *fields)


ROUTES: dict[str, tuple[str, Callable[[Any], dict[str, Any]],
                        Callable[[Mapping[str, Any]], dict[str, Any]]]] = {
    "/v3/auth/authenticate": ("authenticate", decode_authenticate, encode_authenticate),
    "/v3/auth/enable": ("auth_enable", _nothing, _with_header),
    "/v3/auth/disable": ("auth_disable", _nothing, _with_header),
    "/v3/auth/status": ("auth_status", _nothing, encode_status),
    "/v3/auth/user/add": ("user_add", decode_user_add, _with_header),
    "/v3/auth/user/get": ("user_get", _named("name"), _list_of("roles")),
    "/v3/auth/user/list": ("user_list", _nothing, _list_of("users")),
    "/v3/auth/user/delete": ("user_delete", _named("name"), _with_header),
    "/v3/auth/user/changepw": ("user_change_password", decode_change_password,
                               _with_header),
    "/v3/auth/user/grant": ("user_grant_role", _named("user", "role"), _with_header),
    "/v3/auth/user/revoke": ("user_revoke_role", _named("name", "role"), _with_header),
    "/v3/auth/role/add": ("role_add", _named("name"), _with_header),
    "/v3/auth/role/get": ("role_get", _named("role"), encode_role_get),
    "/v3/auth/role/list": ("role_list", _nothing, _list_of("roles")),
    "/v3/auth/role/delete": ("role_delete", _named("role"), _with_header),
    "/v3/auth/role/grant": ("role_grant_permission", decode_role_grant, _with_header),
    "/v3/auth/role/revoke": ("role_revoke_permission", decode_role_revoke, _with_header),
}
"""Path → (native op, JSON decoder, answer encoder), as ``etcd_gateway.UNARY``."""
