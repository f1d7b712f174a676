"""``discoverd compaction REV``: etcdctl's ``compaction``."""

from __future__ import annotations

from typing import Any

import click

from discoverd.cli.options import global_options, parse_int, take_globals
from discoverd.cli.output import CliError, Printer, write_out


@click.command("compaction", short_help="Compacts the event history (keeps the latest versions).")
@global_options(root=False)
@click.argument("args", nargs=-1, metavar="REV")
@click.option("--physical", is_flag=True,
              help="Wait until the compaction is physically applied.")
@click.pass_context
def compaction(ctx: click.Context, /, args: tuple[str, ...], physical: bool, **flags: Any) -> None:
    """Forget the key history before revision REV (reads at older revisions then fail).
    Prints ``compacted revision REV`` whatever the output format, as etcdctl."""
    g = take_globals(ctx, flags)
    if len(args) != 1:
        raise CliError("compaction command needs 1 argument")
    revision = parse_int(args[0])
    with g.client() as client:
        client.compact(revision, physical=physical)
    write_out(Printer.compaction(revision))
