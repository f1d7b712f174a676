"""``discoverd services list|register|watch``: the service registry (DESIGN §7) from a shell.

``list`` prints the registered instances (``passing`` ones unless ``--all``), ``register``
keeps one registration alive in the foreground, ``watch`` prints every change to a
service's instances. The formats are discoverd's own (etcdctl has no registry):

* ``list -w simple``: one line per instance, ``service id address:port health``;
  ``-w table``: SERVICE, ID, ADDRESS, PORT, HEALTH, ZONE, VERSION, TAGS; ``-w json``: one line,
  a JSON list of the instances as stored (DESIGN §7's fields).
* ``register``: ``registered NAME/ID (lease HEX, ttl N)`` once the instance is stored (N is
  the TTL granted, which a member raises to its minimum), a line when the lease was lost
  and the instance registered again under a new one, ``deregistered NAME/ID`` after Ctrl-C
  or SIGTERM — the instance is deleted and its lease revoked at once, rather than left to
  expire — and exit code 0.
* ``watch``: ``[REV] + id address:port health`` for an instance added, ``~`` for one
  changed, ``[REV] - id`` for one removed, REV being the revision of the change; first the
  instances registered when the watch starts, whatever their health. Until Ctrl-C, which
  ends it as it ends ``discoverd watch``.

An address without a port prints alone (``-`` when empty too); an IPv6 address with a port
is bracketed (``[::1]:80``).
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from discoverd.cli.commands.watch import exit_on_interrupt
from discoverd.cli.options import GO_INT, Globals, global_options, take_globals
from discoverd.cli.output import CliError, go_hex_id, render_table, write_out

if TYPE_CHECKING:
    from discoverd.sdk import ServiceInstance

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_POLL_S = 0.5  # register: how often the foreground checks whether the lease was replaced


def _formats(g: Globals, allowed: Sequence[str]) -> str:
    if g.write_out not in allowed:
        raise CliError(f"{g.write_out} not supported as output format")
    return g.write_out


def parse_meta(items: Iterable[str]) -> dict[str, str]:
    """``--meta K=V`` flags as a dict (a later K wins)."""
    meta: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise CliError(f"bad --meta {item!r}: expected KEY=VALUE")
        meta[key] = value
    return meta


def host_port(address: str, port: int | None) -> str:
    """``address:port`` (``[v6]:port``); the address alone without a port, ``-`` if both
    are missing."""
    if port is None:
        return address or "-"
    host = f"[{address}]" if ":" in address else address
    return f"{host}:{port}"


def _line(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape") + b"\n"


def format_instances(instances: Sequence[ServiceInstance], fmt: str) -> bytes:
    """``services list``'s output in ``fmt`` (simple, table or json)."""
    if fmt == "json":
        return _line(json.dumps([i.to_obj() for i in instances], ensure_ascii=False,
                                separators=(",", ":")))
    if fmt == "table":
        header = ("service", "id", "address", "port", "health", "zone", "version", "tags")
        rows = [[i.service, i.id, i.address, "" if i.port is None else str(i.port),
                 str(i.health), i.zone, i.version, ",".join(i.tags)] for i in instances]
        return render_table(header, rows).encode("utf-8", "surrogateescape")
    return b"".join(_line(f"{i.service} {i.id} {host_port(i.address, i.port)} {i.health}")
                    for i in instances)


@click.group("services", short_help="Service registry commands.")
@global_options(root=False)
def services(**_flags: Any) -> None:
    """List, register and watch the instances of services (/services/<service>/<id>)."""


@services.command("list", short_help="Lists the registered instances.")
@global_options(root=False)
@click.argument("name", required=False)
@click.option("--all", "all_", is_flag=True, help="Every instance, whatever its health "
                                                 "(default: passing ones only).")
@click.option("--tag", "tags", multiple=True, help="Only instances with this tag (repeatable).")
@click.option("--meta", "meta", multiple=True, metavar="K=V",
              help="Only instances with this meta pair (repeatable).")
@click.pass_context
def list_(ctx: click.Context, /, name: str | None, all_: bool, tags: tuple[str, ...],
          meta: tuple[str, ...], **flags: Any) -> None:
    """The instances of service NAME, or of every service (passing ones unless --all).
    Formats: simple (service id address:port health), table, json."""
    g = take_globals(ctx, flags)
    fmt = _formats(g, ("simple", "table", "json"))
    wanted_meta = parse_meta(meta)
    with g.client() as client:
        found = client.discover(name, tags=tags, meta=wanted_meta,
                                health=None if all_ else ("passing",))
    write_out(format_instances(found, fmt))


@contextmanager
def _signals_blocked() -> Iterator[None]:
    """SIGINT and SIGTERM held pending for the whole process while the block runs — the
    SDK's threads, started inside it, inherit the mask — so that the foreground takes them
    with ``sigtimedwait`` whichever thread the kernel would have picked."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        # A second Ctrl-C while deregistering is absorbed rather than delivered afterwards.
        while signal.sigtimedwait(_STOP_SIGNALS, 0) is not None:
            pass
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@services.command("register", short_help="Registers an instance until interrupted.")
@global_options(root=False)
@click.argument("name")
@click.option("--id", "instance_id", default=None,
              help="Instance id (default: generated, stable for this registration).")
@click.option("--address", default=None, help="Address (default: the host's primary one).")
@click.option("--port", type=GO_INT, default=None, help="Port (default: none).")
@click.option("--ttl", type=GO_INT, default=10, show_default=True,
              help="Lease TTL in seconds: how long the instance outlives this process.")
@click.option("--tag", "tags", multiple=True, help="A tag (repeatable).")
@click.option("--meta", "meta", multiple=True, metavar="K=V",
              help="A meta pair (repeatable).")
@click.option("--zone", default="", help="Zone (for zone-preferring pickers).")
@click.option("--weight", type=GO_INT, default=1, show_default=True,
              help="Relative weight (for pickers).")
@click.option("--version", "version_", default="", help="The instance's version.")
@click.pass_context
def register(ctx: click.Context, /, name: str, instance_id: str | None, address: str | None,
             port: int | None, ttl: int, tags: tuple[str, ...], meta: tuple[str, ...],
             zone: str, weight: int, version_: str, **flags: Any) -> None:
    """Register an instance of service NAME on a lease kept alive from here, until Ctrl-C
    or SIGTERM, which deregister it at once. A lost lease (e.g. after a long pause) is
    replaced and the instance registered again."""
    g = take_globals(ctx, flags)
    wanted_meta = parse_meta(meta)
    with _signals_blocked(), g.client() as client:
        # The signals are this command's to handle: the SDK's own SIGTERM handler stays out.
        with client.register(name, ttl=ttl, address=address, port=port, id=instance_id,
                             tags=tags, meta=wanted_meta, weight=weight, zone=zone,
                             version=version_, handle_sigterm=False) as registration:
            what = f"{name}/{registration.id}"
            lease_id = registration.lease_id
            write_out(_line(f"registered {what} (lease {go_hex_id(lease_id)}, "
                            f"ttl {registration.ttl})"))
            while signal.sigtimedwait(_STOP_SIGNALS, _POLL_S) is None:
                if registration.lease_id not in (lease_id, 0):
                    old, lease_id = lease_id, registration.lease_id
                    write_out(_line(f"lease {go_hex_id(old)} lost: registered {what} again "
                                    f"(lease {go_hex_id(lease_id)}, ttl {registration.ttl})"))
        write_out(_line(f"deregistered {what}"))


@services.command("watch", short_help="Prints every change to a service's instances.")
@global_options(root=False)
@click.argument("name")
@click.pass_context
def watch(ctx: click.Context, /, name: str, **flags: Any) -> None:
    """Print the instances of service NAME, then every change: "[REV] + id address:port
    health" added, "~" changed, "[REV] - id" removed. Until Ctrl-C."""
    g = take_globals(ctx, flags)
    with exit_on_interrupt(), g.client() as client, \
            client.watch_services(name, health=None) as changes:
        for change in changes:
            rev = change.revision
            out = [f"[{rev}] + {i.id} {host_port(i.address, i.port)} {i.health}"
                   for i in _by_id(change.added)]
            out += [f"[{rev}] ~ {i.id} {host_port(i.address, i.port)} {i.health}"
                    for i in _by_id(change.updated)]
            out += [f"[{rev}] - {i.id}" for i in _by_id(change.removed)]
            write_out(b"".join(_line(text) for text in out))
    raise CliError("watch is canceled by the server")


def _by_id(instances: Iterable[ServiceInstance]) -> list[ServiceInstance]:
    return sorted(instances, key=lambda i: i.id)
