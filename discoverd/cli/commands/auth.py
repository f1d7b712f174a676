"""``discoverd auth enable|disable|status``: etcdctl 3.4's auth verbs, and the helpers the
``user`` and ``role`` verbs share (password prompts, etcdctl's printers for roles).

Output is etcdctl's: the simple format's sentences ("Authentication Enabled", "Role R
created", ...), and with ``-w json`` the response message as etcd's JSON (header, then the
answer's fields, zero values left out). ``fields`` and ``table`` are refused before the
request, so a refused format never leaves a change half-reported.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from discoverd.cli.options import Globals, global_options, take_globals
from discoverd.cli.output import CliError, go_json, header_json, write_out

if TYPE_CHECKING:
    from discoverd.sdk import ResponseHeader
    from discoverd.sdk._auth import Permission

_PERM_NUMBER = {"READ": 0, "WRITE": 1, "READWRITE": 2}


def check_format(g: Globals) -> None:
    if g.write_out not in ("simple", "json"):
        raise CliError(f"{g.write_out} not supported as output format")


def header_of(ok: dict[str, Any]) -> ResponseHeader:
    from discoverd.sdk import ResponseHeader

    return ResponseHeader.from_wire(ok.get("header"))


def emit(g: Globals, simple: str, header: ResponseHeader,
         fields: Sequence[tuple[str, Any]] = ()) -> None:
    """Print ``simple`` (the simple format's text, newline included), or the response as
    etcd's JSON: ``{"header":{...}, <fields without zero values>}``."""
    if g.write_out == "json":
        body: dict[str, Any] = {"header": header_json(header)}
        body.update((k, v) for k, v in fields if v not in (None, 0, False, "", [], {}))
        write_out((go_json(body) + "\n").encode())
    else:
        write_out(simple.encode("utf-8", "surrogateescape"))


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def role_get_text(role: str, perms: Sequence[Permission]) -> str:
    """etcdctl's ``role get``: the keys each permission type covers, a single key as is, a
    range as ``[key, end)`` (``[key, <open ended>`` for ``--from-key``), a prefix marked."""
    from discoverd.wire.registry_codec import prefix_end

    def line(p: Permission) -> str:
        key, end = _text(p.key), _text(p.range_end)
        if not p.range_end:
            return f"\t{key}\n"
        text = f"\t[{key}, {end})" if p.range_end != b"\x00" else f"\t[{key}, <open ended>"
        if p.key and prefix_end(p.key) == p.range_end:
            text += f" (prefix {key})"
        return text + "\n"

    out = [f"Role {role}\n", "KV Read:\n"]
    out += [line(p) for p in perms if p.perm_type in ("READ", "READWRITE")]
    out.append("KV Write:\n")
    out += [line(p) for p in perms if p.perm_type in ("WRITE", "READWRITE")]
    return "".join(out)


def perm_json(p: Permission) -> dict[str, Any]:
    """etcd's ``authpb.Permission`` as encoding/json writes it (the enum as its number)."""
    import base64

    return {k: v for k, v in (
        ("permType", _PERM_NUMBER.get(p.perm_type, 0)),
        ("key", base64.b64encode(p.key).decode()),
        ("range_end", base64.b64encode(p.range_end).decode()),
    ) if v not in (0, "")}


def read_password(name: str, *, interactive: bool) -> str:
    """etcdctl's password input: asked twice on the terminal without echo, or one line from
    stdin with ``--interactive=false`` (for scripts)."""
    if not interactive:
        line = sys.stdin.readline()
        password = line.split()[0] if line.split() else ""
        if not password:
            raise CliError("password is empty")
        return password
    first = click.prompt(f"Password of {name}", hide_input=True, prompt_suffix=": ",
                         default="", show_default=False)
    second = click.prompt(f"Type password of {name} again for confirmation",
                          hide_input=True, prompt_suffix=": ", default="",
                          show_default=False)
    if first != second:
        raise CliError("given passwords are different")
    return first


interactive_option = click.option(
    "--interactive", type=click.BOOL, default=True, show_default=True,
    help="Ask for the password on the terminal; false: read one line from stdin.")


@click.group("auth", short_help="Enable or disable authentication.")
@global_options(root=False)
def auth(**_flags: Any) -> None:
    """Turn authentication on or off, and show whether it is on."""


@auth.command("enable", short_help="Enables authentication.")
@global_options(root=False)
@click.pass_context
def enable(ctx: click.Context, /, **flags: Any) -> None:
    """Needs a user ``root`` (which gets the ``root`` role if it lacks it)."""
    g = take_globals(ctx, flags)
    check_format(g)
    with g.client() as client:
        emit(g, "Authentication Enabled\n", client.auth_enable())


@auth.command("disable", short_help="Disables authentication.")
@global_options(root=False)
@click.pass_context
def disable(ctx: click.Context, /, **flags: Any) -> None:
    g = take_globals(ctx, flags)
    check_format(g)
    with g.client() as client:
        emit(g, "Authentication Disabled\n", client.auth_disable())


@auth.command("status", short_help="Returns authentication status.")
@global_options(root=False)
@click.pass_context
def status(ctx: click.Context, /, **flags: Any) -> None:
    g = take_globals(ctx, flags)
    check_format(g)
    with g.client() as client:
        ok = client.call("auth_status", {}, retry_safe=True)
    enabled, revision = bool(ok.get("enabled")), int(ok.get("auth_revision") or 0)
    emit(g, f"Authentication Status: {str(enabled).lower()}\nAuthRevision: {revision}\n",
         header_of(ok), [("enabled", enabled), ("authRevision", revision)])
