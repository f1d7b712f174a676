"""``discoverd get KEY [RANGE_END]``: etcdctl's ``get``, flags and checks in its order."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from discoverd.cli.options import GO_INT, arg_bytes, global_options, take_globals
from discoverd.cli.output import CliError, write_out

F = TypeVar("F", bound=Callable[..., Any])

_ORDERS = {"": "NONE", "ASCEND": "ASCEND", "DESCEND": "DESCEND"}
_TARGETS = {"": "KEY", "CREATE": "CREATE", "KEY": "KEY", "MODIFY": "MOD", "VALUE": "VALUE",
            "VERSION": "VERSION"}


def get_flags(f: F) -> F:
    """``get``'s own flags (shared with ``get`` lines inside ``txn``)."""
    options = [
        click.argument("args", nargs=-1, metavar="KEY [RANGE_END]"),
        click.option("--consistency", default="l", help="Linearizable(l) or Serializable(s)."),
        click.option("--order", default="",
                     help="Order of results; ASCEND or DESCEND (ASCEND by default)."),
        click.option("--sort-by", default="",
                     help="Sort target; CREATE, KEY, MODIFY, VALUE, or VERSION."),
        click.option("--limit", type=GO_INT, default=0, help="Maximum number of results."),
        click.option("--prefix", is_flag=True, help="Get keys with matching prefix."),
        click.option("--from-key", is_flag=True,
                     help="Get keys that are greater than or equal to the given key."),
        click.option("--rev", type=GO_INT, default=0, help="Specify the kv revision."),
        click.option("--keys-only", is_flag=True, help="Get only the keys."),
        click.option("--count-only", is_flag=True,
                     help="Get only the count (with --write-out=fields)."),
        click.option("--print-value-only", is_flag=True,
                     help='Only write values when using the "simple" output format.'),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def range_request(
    args: tuple[str, ...], *, consistency: str, order: str, sort_by: str, limit: int,
    prefix: bool, from_key: bool, rev: int, keys_only: bool, count_only: bool,
    **_: Any,
) -> dict[str, Any]:
    """etcdctl's ``getGetOp``: the arguments of ``Client.get``/``Op.get``, or ``CliError``
    worded as etcdctl's."""
    if not args:
        raise CliError("get command needs one argument as key and an optional argument as "
                       "range_end")
    if prefix and from_key:
        raise CliError("`--prefix` and `--from-key` cannot be set at the same time, choose one")
    if keys_only and count_only:
        raise CliError("`--keys-only` and `--count-only` cannot be set at the same time, "
                       "choose one")
    if consistency not in ("l", "s"):
        raise CliError(f'unknown consistency flag "{consistency}"')
    request: dict[str, Any] = {"key": arg_bytes(args[0]), "serializable": consistency == "s"}
    if len(args) > 1:
        if prefix or from_key:
            raise CliError("too many arguments, only accept one argument when `--prefix` or "
                           "`--from-key` is set")
        request["range_end"] = arg_bytes(args[1])
    request["limit"] = max(limit, 0)
    request["revision"] = max(rev, 0)
    sort_order = _ORDERS.get(order.upper())
    if sort_order is None:
        raise CliError(f"bad sort order {order}")
    sort_target = _TARGETS.get(sort_by.upper())
    if sort_target is None:
        raise CliError(f"bad sort target {sort_by}")
    # clientv3.WithSort: results come sorted by key already, so KEY/ASCEND is sent as NONE.
    if sort_target == "KEY" and sort_order == "ASCEND":
        sort_order = "NONE"
    if sort_order != "NONE":
        request["sort_order"] = sort_order
    if sort_target != "KEY":
        request["sort_target"] = sort_target
    request["prefix"] = prefix
    request["from_key"] = from_key
    request["keys_only"] = keys_only
    request["count_only"] = count_only
    return request


@click.command("get", short_help="Gets the key or a range of keys.")
@global_options(root=False)
@get_flags
@click.pass_context
def get(ctx: click.Context, /, **flags: Any) -> None:
    """Get KEY, or the keys of [KEY, RANGE_END)."""
    g = take_globals(ctx, flags)
    request = range_request(**flags)
    printer = g.printer(value_only=flags["print_value_only"])
    if flags["count_only"] and g.write_out != "fields":
        raise CliError("--count-only is only for `--write-out=fields`")
    if flags["print_value_only"] and g.write_out != "simple":
        raise CliError("print-value-only is only for `--write-out=simple`")
    printer.check_kv_format()
    with g.client() as client:
        response = client.get(**request)
    write_out(printer.get(response))
