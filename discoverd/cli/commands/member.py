"""``discoverd member list|add|remove|promote|update`` and ``discoverd move-leader``:
etcdctl 3.4's membership verbs, with its arguments, messages and output formats.

Member ids are printed and parsed in hexadecimal (``strconv.ParseUint(id, 16, 64)``), as
etcdctl does. A new member's id is derived from its name, peer URLs and the cluster token —
the id ``discoverd serve`` computes from the same flags — so ``member add`` needs the name
(etcd's API does not) and prints the environment to start the member with: ``DISCOVERD_NAME``,
``DISCOVERD_INITIAL_CLUSTER``, ``DISCOVERD_INITIAL_ADVERTISE_PEER_URLS``,
``DISCOVERD_INITIAL_CLUSTER_STATE`` (etcdctl's ``ETCD_*`` lines; ``serve`` reads every flag
from a ``DISCOVERD_*`` variable). A change printed as ``-w fields``/``table`` is refused
before the request (etcdctl makes the change, then fails to print it).
"""

from __future__ import annotations

import re
from typing import Any

import click

from discoverd.cli.options import global_options, take_globals
from discoverd.cli.output import CliError, go_quote, write_out

_URL_SCHEMES = ("http", "https", "unix", "unixs")


def parse_uint(text: str) -> int:
    """Go's ``strconv.ParseUint(text, 16, 64)``; ``CliError`` worded as Go's error."""
    if not re.fullmatch("[0-9a-fA-F]+", text):
        raise CliError(f"strconv.ParseUint: parsing {go_quote(text)}: invalid syntax")
    value = int(text, 16)
    if value >= 2**64:
        raise CliError(f"strconv.ParseUint: parsing {go_quote(text)}: value out of range")
    return value


def _member_id(args: tuple[str, ...]) -> int:
    if len(args) != 1:
        raise CliError("member ID is not provided")
    try:
        return parse_uint(args[0])
    except CliError as e:
        raise CliError(f"bad member ID arg ({e}), expecting ID in Hex") from None


def _peer_urls(text: str) -> list[str]:
    """``--peer-urls`` split as etcdctl splits it, each URL checked as etcd's ``NewURLs``."""
    if not text:
        raise CliError("member peer urls not provided")
    urls = text.split(",")
    for url in urls:
        scheme = url.split("://", 1)[0] if "://" in url else ""
        if scheme not in _URL_SCHEMES:
            raise CliError(f"URL scheme must be http, https, unix, or unixs: {url}")
    return urls


@click.group("member", short_help="Membership related commands.")
@global_options(root=False)
def member(**_flags: Any) -> None:
    """List, add, remove, promote and update the members of the cluster."""


@member.command("list", short_help="Lists all members in the cluster")
@global_options(root=False)
@click.pass_context
def list_(ctx: click.Context, /, **flags: Any) -> None:
    """One line per member: ID, Status (unstarted until the member has run), Name, Peer
    Addrs, Client Addrs, Is Learner. As the answering member knows them (no quorum needed)."""
    g = take_globals(ctx, flags)
    printer = g.printer()
    with g.client() as client:
        write_out(printer.member_list(client.member_list()))


@member.command("add", short_help="Adds a member into the cluster")
@global_options(root=False)
@click.option("--peer-urls", default="", help="comma separated peer URLs for the new member.")
@click.option("--learner", is_flag=True, default=False,
              help="indicates if the new member is raft learner")
@click.argument("args", nargs=-1, metavar="NAME")
@click.pass_context
def add(ctx: click.Context, /, args: tuple[str, ...], peer_urls: str, learner: bool,
        **flags: Any) -> None:
    """Add member NAME (its id derives from NAME and --peer-urls, as `serve` derives it).
    Prints what etcdctl prints, with DISCOVERD_NAME, DISCOVERD_INITIAL_CLUSTER, ... where
    etcdctl has ETCD_* (`serve` reads each flag from DISCOVERD_<FLAG>): export them and
    start the member with `discoverd serve` (initial cluster state existing). A --learner
    catches up first; then `member promote` it."""
    if not args:
        raise CliError("member name not provided")
    if len(args) > 1:
        message = "too many arguments"
        for arg in args:
            if arg.lower().startswith("http"):
                message += f", did you mean --peer-urls={arg}"
        raise CliError(message)
    name = args[0]
    urls = _peer_urls(peer_urls)
    g = take_globals(ctx, flags)
    printer = g.printer()
    printer.check_member_change_format()
    with g.client() as client:
        added = client.member_add(urls, name=name, is_learner=learner)
    write_out(printer.member_add(added, name=name))


@member.command("remove", short_help="Removes a member from the cluster")
@global_options(root=False)
@click.argument("args", nargs=-1, metavar="ID")
@click.pass_context
def remove(ctx: click.Context, /, args: tuple[str, ...], **flags: Any) -> None:
    """Remove member ID (hex). Removing the leader is allowed: it steps down once the removal
    is applied. A removed member stops itself."""
    member_id = _member_id(args)
    g = take_globals(ctx, flags)
    printer = g.printer()
    printer.check_member_change_format()
    with g.client() as client:
        response = client.member_remove(member_id)
    write_out(printer.member_changed(member_id, "removed from", response))


@member.command("promote", short_help="Promotes a non-voting member in the cluster")
@global_options(root=False)
@click.argument("args", nargs=-1, metavar="ID")
@click.pass_context
def promote(ctx: click.Context, /, args: tuple[str, ...], **flags: Any) -> None:
    """Make learner ID (hex) a voter; refused until it has caught up with the leader."""
    member_id = _member_id(args)
    g = take_globals(ctx, flags)
    printer = g.printer()
    printer.check_member_change_format()
    with g.client() as client:
        response = client.member_promote(member_id)
    write_out(printer.member_changed(member_id, "promoted in", response))


@member.command("update", short_help="Updates a member in the cluster")
@global_options(root=False)
@click.option("--peer-urls", default="",
              help="comma separated peer URLs for the updated member.")
@click.argument("args", nargs=-1, metavar="ID")
@click.pass_context
def update(ctx: click.Context, /, args: tuple[str, ...], peer_urls: str, **flags: Any) -> None:
    """Give member ID (hex) new peer URLs; the others dial it there from now on. Restart it
    with the new --listen-peer-urls/--initial-advertise-peer-urls: its id stays (it is read
    from its data directory)."""
    member_id = _member_id(args)
    urls = _peer_urls(peer_urls)
    g = take_globals(ctx, flags)
    printer = g.printer()
    printer.check_member_change_format()
    with g.client() as client:
        response = client.member_update(member_id, urls)
    write_out(printer.member_changed(member_id, "updated in", response))


@click.command("move-leader", short_help="Transfers leadership to another member.")
@global_options(root=False)
@click.argument("args", nargs=-1, metavar="TRANSFEREE_ID")
@click.pass_context
def move_leader(ctx: click.Context, /, args: tuple[str, ...], **flags: Any) -> None:
    """Hand the leadership to voter TRANSFEREE_ID (hex). The leader must be among
    --endpoints (each is asked for its status in turn, as etcdctl does); the transfer gives
    up after an election timeout."""
    if len(args) != 1:
        raise CliError("move-leader command needs 1 argument")
    target = parse_uint(args[0])
    g = take_globals(ctx, flags)
    printer = g.printer()
    printer.check_member_change_format()
    with g.client() as client:
        leader_ep, leader = "", 0
        for ep in g.endpoints:
            status = client.status(ep)
            if status.member_id == status.leader:
                leader_ep, leader = ep, status.leader
                break
        if not leader_ep:
            raise CliError(f"no leader endpoint given at [{' '.join(g.endpoints)}]")
        client.move_leader(target, endpoint=leader_ep)
    write_out(printer.move_leader(leader, target))
