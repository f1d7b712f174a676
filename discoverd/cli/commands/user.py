"""``discoverd user add|delete|get|list|passwd|grant-role|revoke-role``: etcdctl 3.4's user
verbs, arguments and messages.

A password is given as ``NAME:PASSWORD``, with ``--new-user-password``, as one line on stdin
(``--interactive=false``) or typed twice without echo; it is sent to the member, which
hashes it before anything is replicated, and is never printed.
"""

from __future__ import annotations

from typing import Any

import click

from discoverd.cli.commands.auth import (
    check_format,
    emit,
    header_of,
    interactive_option,
    read_password,
    role_get_text,
)
from discoverd.cli.options import global_options, take_globals
from discoverd.cli.output import CliError, write_out


@click.group("user", short_help="User related commands.")
@global_options(root=False)
def user(**_flags: Any) -> None:
    """Add, delete, list and inspect users; change passwords; grant and revoke roles."""


@user.command("add", short_help="Adds a new user.")
@click.argument("name_password", metavar="NAME[:PASSWORD]")
@interactive_option
@click.option("--new-user-password", default=None,
              help="The password of the new user (instead of NAME:PASSWORD or a prompt).")
@click.option("--no-password", is_flag=True, default=False,
              help="A user without password (authenticates by client certificate only).")
@global_options(root=False)
@click.pass_context
def add(ctx: click.Context, /, name_password: str, interactive: bool,
        new_user_password: str | None, no_password: bool, **flags: Any) -> None:
    g = take_globals(ctx, flags)
    check_format(g)
    password: str | None
    if new_user_password is not None:
        name, password = name_password, new_user_password
    elif ":" in name_password:
        name, password = name_password.split(":", 1)
        if not name:
            raise CliError("empty user name is not allowed")
    else:
        name = name_password
        password = None if no_password else read_password(name, interactive=interactive)
    with g.client() as client:
        header = client.user_add(name, password if not no_password else None,
                                 no_password=no_password)
    emit(g, f"User {name} created\n", header)


@user.command("delete", short_help="Deletes a user.")
@click.argument("name")
@global_options(root=False)
@click.pass_context
def delete(ctx: click.Context, /, name: str, **flags: Any) -> None:
    g = take_globals(ctx, flags)
    check_format(g)
    with g.client() as client:
        emit(g, f"User {name} deleted\n", client.user_delete(name))


@user.command("get", short_help="Gets detailed information of a user.")
@click.argument("name")
@click.option("--detail", is_flag=True, default=False,
              help="Show permissions of roles granted to the user.")
@global_options(root=False)
@click.pass_context
def get(ctx: click.Context, /, name: str, detail: bool, **flags: Any) -> None:
    g = take_globals(ctx, flags)
    check_format(g)
    with g.client() as client:
        ok = client.call("user_get", {"name": name}, retry_safe=True)
        roles = [str(r) for r in ok.get("roles") or ()]
        if detail and g.write_out == "simple":
            # etcdctl: the user line, then each role as ``role get`` prints it.
            text = [f"User: {name}\n"]
            for role in roles:
                text.append("\n" + role_get_text(role, client.role_get(role)))
            write_out("".join(text).encode("utf-8", "surrogateescape"))
            return
    emit(g, f"User: {name}\nRoles:{''.join(' ' + r for r in roles)}\n", header_of(ok),
         [("roles", roles)])


@user.command("list", short_help="Lists all users.")
@global_options(root=False)
@click.pass_context
def list_(ctx: click.Context, /, **flags: Any) -> None:
    g = take_globals(ctx, flags)
    check_format(g)
    with g.client() as client:
        ok = client.call("user_list", {}, retry_safe=True)
    users = [str(u) for u in ok.get("users") or ()]
    emit(g, "".join(f"{u}\n" for u in users), header_of(ok), [("users", users)])


@user.command("passwd", short_help="Changes password of user.")
@click.argument("name")
@interactive_option
@click.option("--new-user-password", default=None,
              help="The new password (instead of a prompt or stdin).")
@global_options(root=False)
@click.pass_context
def passwd(ctx: click.Context, /, name: str, interactive: bool,
           new_user_password: str | None, **flags: Any) -> None:
    g = take_globals(ctx, flags)
    check_format(g)
    password = (new_user_password if new_user_password is not None
                else read_password(name, interactive=interactive))
    with g.client() as client:
        emit(g, "Password updated\n", client.user_change_password(name, password))


@user.command("grant-role", short_help="Grants a role to a user.")
@click.argument("name")
@click.argument("role")
@global_options(root=False)
@click.pass_context
def grant_role(ctx: click.Context, /, name: str, role: str, **flags: Any) -> None:
    g = take_globals(ctx, flags)
    check_format(g)
    with g.client() as client:
        emit(g, f"Role {role} is granted to user {name}\n", client.user_grant_role(name, role))


@user.command("revoke-role", short_help="Revokes a role from a user.")
@click.argument("name")
@click.argument("role")
@global_options(root=False)
@click.pass_context
def revoke_role(ctx: click.Context, /, name: str, role: str, **flags: Any) -> None:
    g = take_globals(ctx, flags)
    check_format(g)
    with g.client() as client:
        emit(g, f"Role {role} is revoked from user {name}\n",
             client.user_revoke_role(name, role))
