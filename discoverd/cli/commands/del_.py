"""``discoverd del KEY [RANGE_END]``: etcdctl's ``del``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from discoverd.cli.options import arg_bytes, global_options, take_globals
from discoverd.cli.output import CliError, write_out

F = TypeVar("F", bound=Callable[..., Any])


def del_flags(f: F) -> F:
    """``del``'s own flags (shared with ``del`` lines inside ``txn``)."""
    options = [
        click.argument("args", nargs=-1, metavar="KEY [RANGE_END]"),
        click.option("--prefix", is_flag=True, help="Delete keys with matching prefix."),
        click.option("--prev-kv", is_flag=True, help="Return deleted key-value pairs."),
        click.option("--from-key", is_flag=True,
                     help="Delete keys that are greater than or equal to the given key."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def delete_request(
    args: tuple[str, ...], *, prefix: bool, prev_kv: bool, from_key: bool, **_: Any,
) -> dict[str, Any]:
    """etcdctl's ``getDelOp``: the arguments of ``Client.delete``/``Op.delete``."""
    if not args or len(args) > 2:
        raise CliError("del command needs one argument as key and an optional argument as "
                       "range_end")
    if prefix and from_key:
        raise CliError("`--prefix` and `--from-key` cannot be set at the same time, choose one")
    request: dict[str, Any] = {"key": arg_bytes(args[0])}
    if len(args) > 1:
        if prefix or from_key:
            raise CliError("too many arguments, only accept one argument when `--prefix` or "
                           "`--from-key` is set")
        request["range_end"] = arg_bytes(args[1])
    request.update(prefix=prefix, from_key=from_key, prev_kv=prev_kv)
    return request


@click.command("del", short_help="Removes the specified key or range of keys [key, range_end).")
@global_options(root=False)
@del_flags
@click.pass_context
def del_(ctx: click.Context, /, **flags: Any) -> None:
    """Delete KEY, or the keys of [KEY, RANGE_END); prints how many were deleted."""
    g = take_globals(ctx, flags)
    request = delete_request(**flags)
    printer = g.printer()
    printer.check_kv_format()
    with g.client() as client:
        response = client.delete(**request)
    write_out(printer.delete(response))
