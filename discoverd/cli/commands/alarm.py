"""``discoverd alarm list|disarm``: etcdctl's alarm verbs (docs/operations.md "Space
quota"). Each alarm prints as etcdctl prints it: ``memberID:<decimal id> alarm:NOSPACE``."""

from __future__ import annotations

from typing import Any

import click

from discoverd.cli.options import global_options, take_globals
from discoverd.cli.output import write_out


def _lines(alarms: list[tuple[int, str]]) -> bytes:
    return "".join(f"memberID:{m} alarm:{k}\n" for m, k in alarms).encode()


@click.group("alarm", short_help="Alarm related commands.")
@global_options(root=False)
def alarm(**_flags: Any) -> None:
    """List and disarm the cluster's alarms (NOSPACE)."""


@alarm.command("list", short_help="Lists all alarms.")
@global_options(root=False)
@click.pass_context
def list_(ctx: click.Context, /, **flags: Any) -> None:
    g = take_globals(ctx, flags)
    with g.client() as client:
        write_out(_lines(client.alarm_list()))


@alarm.command("disarm", short_help="Disarms all alarms.")
@global_options(root=False)
@click.pass_context
def disarm(ctx: click.Context, /, **flags: Any) -> None:
    g = take_globals(ctx, flags)
    with g.client() as client:
        write_out(_lines(client.alarm_disarm()))
