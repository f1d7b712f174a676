"""``discoverd put KEY [VALUE]``: etcdctl's ``put``; the value is read from stdin when it is
not given."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from discoverd.cli.options import arg_bytes, global_options, parse_int, take_globals
from discoverd.cli.output import CliError, write_out

F = TypeVar("F", bound=Callable[..., Any])

_NEEDS_VALUE = "put command needs 1 argument and input from stdin or 2 arguments"


def put_flags(f: F) -> F:
    """``put``'s own flags (shared with ``put`` lines inside ``txn``)."""
    options = [
        click.argument("args", nargs=-1, metavar="KEY [VALUE]"),
        click.option("--lease", default="0",
                     help="Lease ID (in hexadecimal) to attach to the key."),
        click.option("--prev-kv", is_flag=True,
                     help="Return the previous key-value pair before modification."),
        click.option("--ignore-value", is_flag=True,
                     help="Update the key using its current value."),
        click.option("--ignore-lease", is_flag=True,
                     help="Update the key using its current lease."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def put_request(
    args: tuple[str, ...], *, lease: str, prev_kv: bool, ignore_value: bool,
    ignore_lease: bool, stdin: Callable[[], bytes] | None = None, **_: Any,
) -> dict[str, Any]:
    """etcdctl's ``getPutOp``: the arguments of ``Client.put``/``Op.put``. ``stdin`` gives
    the value when only the key is given (None: the value is required)."""
    if not args:
        raise CliError(_NEEDS_VALUE)
    if ignore_value and len(args) > 1:
        raise CliError("put command needs only 1 argument when 'ignore-value' is set")
    value = b""
    if not ignore_value:
        if len(args) > 1:
            value = arg_bytes(args[1])
        else:
            value = stdin() if stdin is not None else b""
            if not value:
                raise CliError(_NEEDS_VALUE)
    try:
        lease_id = parse_int(lease, base=16)
    except CliError as e:
        raise CliError(f"bad lease ID ({e}), expecting ID in Hex") from None
    return {"key": arg_bytes(args[0]), "value": value, "lease": lease_id, "prev_kv": prev_kv,
            "ignore_value": ignore_value, "ignore_lease": ignore_lease}


def _read_stdin() -> bytes:
    return sys.stdin.buffer.read()


@click.command("put", short_help="Puts the given key into the store.")
@global_options(root=False)
@put_flags
@click.pass_context
def put(ctx: click.Context, /, **flags: Any) -> None:
    """Put KEY = VALUE; without VALUE, the value is read from stdin (all of it, as etcdctl)."""
    g = take_globals(ctx, flags)
    request = put_request(**flags, stdin=_read_stdin)
    printer = g.printer()
    printer.check_kv_format()
    with g.client() as client:
        response = client.put(**request)
    write_out(printer.put(response))
