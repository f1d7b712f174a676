"""``discoverd role add|delete|get|list|grant-permission|revoke-permission``: etcdctl 3.4's
role verbs, arguments (``KEY [RANGE_END]``, ``--prefix``, ``--from-key``) and messages."""

from __future__ import annotations

from typing import Any

import click

from discoverd.cli.commands.auth import (
    check_format,
    emit,
    header_of,
    perm_json,
    role_get_text,
)
from discoverd.cli.options import arg_bytes, global_options, take_globals
from discoverd.cli.output import CliError


@click.group("role", short_help="Role related commands.")
@global_options(root=False)
def role(**_flags: Any) -> None:
    """Add, delete, list and inspect roles; grant and revoke their permissions."""


@role.command("add", short_help="Adds a new role.")
@click.argument("name")
@global_options(root=False)
@click.pass_context
def add(ctx: click.Context, /, name: str, **flags: Any) -> None:
    g = take_globals(ctx, flags)
    check_format(g)
    with g.client() as client:
        emit(g, f"Role {name} created\n", client.role_add(name))


@role.command("delete", short_help="Deletes a role.")
@click.argument("name")
@global_options(root=False)
@click.pass_context
def delete(ctx: click.Context, /, name: str, **flags: Any) -> None:
    g = take_globals(ctx, flags)
    check_format(g)
    with g.client() as client:
        emit(g, f"Role {name} deleted\n", client.role_delete(name))


@role.command("get", short_help="Gets detailed information of a role.")
@click.argument("name")
@global_options(root=False)
@click.pass_context
def get(ctx: click.Context, /, name: str, **flags: Any) -> None:
    from discoverd.sdk._auth import Permission

    g = take_globals(ctx, flags)
    check_format(g)
    with g.client() as client:
        ok = client.call("role_get", {"role": name}, retry_safe=True)
    perms = [Permission.from_wire(p) for p in ok.get("perm") or ()]
    emit(g, role_get_text(name, perms), header_of(ok), [("perm", [perm_json(p) for p in perms])])


@role.command("list", short_help="Lists all roles.")
@global_options(root=False)
@click.pass_context
def list_(ctx: click.Context, /, **flags: Any) -> None:
    g = take_globals(ctx, flags)
    check_format(g)
    with g.client() as client:
        ok = client.call("role_list", {}, retry_safe=True)
    roles = [str(r) for r in ok.get("roles") or ()]
    emit(g, "".join(f"{r}\n" for r in roles), header_of(ok), [("roles", roles)])


def _range(key: str, range_end: str | None, prefix: bool, from_key: bool
           ) -> tuple[bytes, bytes]:
    """etcdctl's ``rangeEndFromPermFlags``, with its messages."""
    from discoverd.sdk._auth import perm_range

    if range_end is not None:
        if prefix:
            raise CliError("unexpected endkey argument with --prefix flag")
        if from_key:
            raise CliError("unexpected endkey argument with --from-key flag")
        return arg_bytes(key), arg_bytes(range_end)
    if prefix and from_key:
        raise CliError("--from-key and --prefix flags are mutually exclusive")
    return perm_range(arg_bytes(key), prefix=prefix, from_key=from_key)


_prefix_option = click.option("--prefix", is_flag=True, default=False,
                              help="Grant a prefix permission.")
_from_key_option = click.option("--from-key", is_flag=True, default=False,
                                help="Grant a permission of keys that are greater than or "
                                     "equal to the given key using byte compare.")


@role.command("grant-permission", short_help="Grants a key to a role.")
@click.argument("name")
@click.argument("perm_type", metavar="PERMISSION_TYPE")
@click.argument("key_", metavar="KEY")
@click.argument("range_end", required=False)
@_prefix_option
@_from_key_option
@global_options(root=False)
@click.pass_context
def grant_permission(ctx: click.Context, /, name: str, perm_type: str, key_: str,
                     range_end: str | None, prefix: bool, from_key: bool, **flags: Any
                     ) -> None:
    """PERMISSION_TYPE is read, write or readwrite."""
    g = take_globals(ctx, flags)
    check_format(g)
    if perm_type.upper() not in ("READ", "WRITE", "READWRITE"):
        raise CliError(f"invalid permission type {perm_type}")
    k, end = _range(key_, range_end, prefix, from_key)
    with g.client() as client:
        emit(g, f"Role {name} updated\n",
             client.role_grant_permission(name, perm_type.upper(), k, end))


@role.command("revoke-permission", short_help="Revokes a key from a role.")
@click.argument("name")
@click.argument("key_", metavar="KEY")
@click.argument("range_end", required=False)
@_prefix_option
@_from_key_option
@global_options(root=False)
@click.pass_context
def revoke_permission(ctx: click.Context, /, name: str, key_: str, range_end: str | None,
                      prefix: bool, from_key: bool, **flags: Any) -> None:
    g = take_globals(ctx, flags)
    check_format(g)
    k, end = _range(key_, range_end, prefix, from_key)
    with g.client() as client:
        header = client.role_revoke_permission(name, k, end)
    key_text = k.decode("utf-8", "surrogateescape")
    end_text = end.decode("utf-8", "surrogateescape")
    if not end:
        text = f"Permission of key {key_text} is revoked from role {name}\n"
    elif end != b"\x00":
        text = f"Permission of range [{key_text}, {end_text}) is revoked from role {name}\n"
    else:
        text = f"Permission of range [{key_text}, <open ended> is revoked from role {name}\n"
    emit(g, text, header)
