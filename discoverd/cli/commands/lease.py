"""``discoverd lease grant|revoke|timetolive|list|keep-alive``: etcdctl's ``lease`` verbs.

Lease ids are printed and parsed in hexadecimal, as etcdctl does (``%016x``; ``strconv.
ParseInt(id, 16, 64)``); JSON and ``fields`` show them in decimal. ``table`` is refused, as
by etcdctl, but before the request is sent (etcdctl grants or revokes first, then fails).

``keep-alive`` renews the lease every third of its TTL (clientv3's rhythm) and prints each
answer until the lease is gone — revoked, expired, or not renewed in time because no member
answered — then prints ``lease ID expired or revoked.`` (simple format only) and exits 0,
as etcdctl does. ``keep-alive --once`` on a lease that is gone fails with etcd's ``requested
lease not found`` and exit code 2 (etcdctl's). Ctrl-C ends it as it ends etcdctl: at once,
killed by SIGINT.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import click

from discoverd.cli.commands.watch import exit_on_interrupt
from discoverd.cli.options import Globals, global_options, parse_int, take_globals
from discoverd.cli.output import CliError, Printer, etcd_error_message, go_hex_id, write_out

if TYPE_CHECKING:
    from discoverd.sdk import Client

_NOT_FOUND = "etcdserver: requested lease not found"
_EXIT_BAD_CONNECTION = 2  # etcdctl's ExitBadConnection (keep-alive --once on a lost lease)
_RETRY_INTERVAL = 0.5  # how often keep-alive retries while no member answers


def parse_lease_id(text: str) -> int:
    """A lease id argument (hexadecimal), or ``CliError`` worded as etcdctl's."""
    try:
        return parse_int(text, base=16)
    except CliError as e:
        raise CliError(f"bad lease ID arg ({e}), expecting ID in Hex") from None


def _one_id(args: tuple[str, ...], usage: str) -> int:
    if len(args) != 1:
        raise CliError(usage)
    return parse_lease_id(args[0])


def _start(ctx: click.Context, flags: dict[str, Any]) -> tuple[Globals, Printer]:
    g = take_globals(ctx, flags)
    printer = g.printer()
    printer.check_lease_format()
    return g, printer


@click.group("lease", short_help="Lease related commands.")
@global_options(root=False)
def lease(**_flags: Any) -> None:
    """Grant, revoke, inspect and keep alive leases (ids in hexadecimal)."""


@lease.command("grant", short_help="Creates leases.")
@global_options(root=False)
@click.argument("args", nargs=-1, metavar="TTL")
@click.pass_context
def grant(ctx: click.Context, /, args: tuple[str, ...], **flags: Any) -> None:
    """Grant a lease of TTL seconds (a TTL below the member's minimum is raised to it)."""
    from discoverd.errors import DiscoverdError

    if len(args) != 1:
        raise CliError("lease grant command needs TTL argument")
    try:
        ttl = parse_int(args[0])
    except CliError as e:
        raise CliError(f"bad TTL ({e})") from None
    g, printer = _start(ctx, flags)
    with g.client() as client:
        try:
            response = client.lease_grant(ttl)
        except DiscoverdError as e:
            raise CliError(f"failed to grant lease ({etcd_error_message(e)})") from None
    write_out(printer.lease_grant(response))


@lease.command("revoke", short_help="Revokes leases.")
@global_options(root=False)
@click.argument("args", nargs=-1, metavar="LEASE_ID")
@click.pass_context
def revoke(ctx: click.Context, /, args: tuple[str, ...], **flags: Any) -> None:
    """Revoke a lease; every key attached to it is deleted (in one revision)."""
    from discoverd.errors import DiscoverdError

    lease_id = _one_id(args, "lease revoke command needs 1 argument")
    g, printer = _start(ctx, flags)
    with g.client() as client:
        try:
            header = client.lease_revoke(lease_id)
        except DiscoverdError as e:
            raise CliError(f"failed to revoke lease ({etcd_error_message(e)})") from None
    write_out(printer.lease_revoke(lease_id, header))


@lease.command("timetolive", short_help="Get lease information.")
@global_options(root=False)
@click.argument("args", nargs=-1, metavar="LEASE_ID")
@click.option("--keys", is_flag=True, help="Get keys attached to this lease.")
@click.pass_context
def timetolive(ctx: click.Context, /, args: tuple[str, ...], keys: bool, **flags: Any) -> None:
    """The lease's granted and remaining TTL (``already expired`` if it is gone), and with
    --keys the keys attached to it."""
    lease_id = _one_id(args, "lease timetolive command needs lease ID as argument")
    g, printer = _start(ctx, flags)
    with g.client() as client:
        response = client.lease_time_to_live(lease_id, keys=keys)
    write_out(printer.lease_timetolive(response, keys=keys))


@lease.command("list", short_help="List all active leases.")
@global_options(root=False)
@click.argument("args", nargs=-1, metavar="")
@click.pass_context
def list_(ctx: click.Context, /, args: tuple[str, ...], **flags: Any) -> None:
    """Every lease the cluster has (arguments are ignored, as by etcdctl)."""
    from discoverd.errors import DiscoverdError
    from discoverd.sdk import ResponseHeader

    g, printer = _start(ctx, flags)
    with g.client() as client:
        try:
            if printer.fmt == "simple":
                header, ids = ResponseHeader.from_wire(None), list(client.leases())
            else:
                # ``Client.leases()`` returns the ids only; JSON and fields need the header.
                ok = client.call("lease_leases", {}, retry_safe=True)
                header = ResponseHeader.from_wire(ok.get("header"))
                ids = [int(item["id"]) for item in ok.get("leases") or ()]
        except DiscoverdError as e:
            raise CliError(f"failed to list leases ({etcd_error_message(e)})") from None
    write_out(printer.lease_list(header, ids))


@lease.command("keep-alive", short_help="Keeps leases alive (renew).")
@global_options(root=False)
@click.argument("args", nargs=-1, metavar="LEASE_ID")
@click.option("--once", is_flag=True, help="Resets the keep-alive time to its original value "
                                          "and exits immediately.")
@click.pass_context
def keep_alive(ctx: click.Context, /, args: tuple[str, ...], once: bool, **flags: Any) -> None:
    """Renew the lease every TTL/3 and print each renewal, until the lease is gone or
    Ctrl-C; --once renews it one time."""
    lease_id = _one_id(args, "lease keep-alive command needs lease ID as argument")
    g, printer = _start(ctx, flags)
    with exit_on_interrupt(), g.client() as client:
        if once:
            response = client.lease_keepalive_once(lease_id)
            if response.ttl <= 0:
                raise CliError(_NOT_FOUND, exit_code=_EXIT_BAD_CONNECTION)
            write_out(printer.lease_keepalive(response))
            return
        _keep_alive(client, lease_id, printer)
    if printer.fmt == "simple":
        write_out(f"lease {go_hex_id(lease_id)} expired or revoked.\n".encode())


def _keep_alive(client: Client, lease_id: int, printer: Printer) -> None:
    """Renew until the lease is gone. A renewal that cannot reach a member is retried until
    the lease's last known TTL has run out (then it is taken as expired, as clientv3 does);
    a failure before the first renewal is an error."""
    from discoverd.errors import Unavailable

    deadline: float | None = None  # when the lease runs out if no renewal gets through
    while True:
        try:
            response = client.lease_keepalive_once(lease_id)
        except Unavailable:
            if deadline is None:
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(_RETRY_INTERVAL, left))
            continue
        if response.ttl <= 0:
            return
        write_out(printer.lease_keepalive(response))
        deadline = time.monotonic() + response.ttl
        time.sleep(response.ttl / 3)
