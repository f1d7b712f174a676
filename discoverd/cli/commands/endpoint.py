"""``discoverd endpoint status|health``: etcdctl's ``endpoint`` verbs, for every endpoint of
``--endpoints`` — or, with ``--cluster``, for every client URL in the member list that
``--endpoints`` gives (members publish theirs when they start; an unstarted member has none
and is left out, as by etcdctl)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import click

from discoverd.cli.options import Globals, global_options, take_globals
from discoverd.cli.output import (
    CliError,
    EndpointHealth,
    EndpointStatus,
    etcd_error_message,
    write_out,
)


@click.group("endpoint", short_help="Endpoint related commands.")
@global_options(root=False)
def endpoint(**_flags: Any) -> None:
    """Status and health of the members named by --endpoints."""


_CLUSTER_HELP = "use all endpoints from the cluster member list"


def _targets(g: Globals, cluster: bool) -> tuple[str, ...]:
    """The endpoints to check: ``--endpoints``, or the members' client URLs."""
    from discoverd.errors import DiscoverdError

    if not cluster:
        return g.endpoints
    try:
        with g.client() as client:
            members = client.member_list().members
    except DiscoverdError as e:
        raise CliError("failed to fetch endpoints from etcd cluster member list: "
                       f"{etcd_error_message(e)}") from None
    return tuple(url for m in members for url in m.client_urls)


@endpoint.command("status", short_help="Prints out the status of endpoints specified in "
                                       "`--endpoints` flag.")
@global_options(root=False)
@click.option("--cluster", is_flag=True, default=False, help=_CLUSTER_HELP)
@click.pass_context
def status(ctx: click.Context, /, cluster: bool, **flags: Any) -> None:
    """One line per endpoint: endpoint, ID, version, db size, is leader, is learner, raft
    term, raft index, raft applied index, errors. An endpoint that cannot answer is reported
    on stderr and makes the exit code 1."""
    from discoverd.errors import DiscoverdError

    g = take_globals(ctx, flags)
    printer = g.printer()
    found: list[EndpointStatus] = []
    failed = False
    targets = _targets(g, cluster)
    with g.client() as client:
        for ep in targets:
            try:
                found.append(EndpointStatus(ep, client.status(ep)))
            except DiscoverdError as e:
                failed = True
                write_out(f"Failed to get the status of endpoint {ep} "
                          f"({etcd_error_message(e)})\n".encode(), err=True)
    write_out(printer.endpoint_status(found))
    if failed:
        ctx.exit(1)


def _check_health(g: Globals, ep: str) -> EndpointHealth:
    """etcdctl's check: a linearizable read through this endpoint alone (it needs a leader
    and a quorum to answer) — of the auth status, which needs no credentials, so a cluster
    with authentication on is not reported unhealthy for a missing permission."""
    from discoverd.errors import DiscoverdError

    start = time.monotonic_ns()
    try:
        with g.client((ep,)) as client:
            start = time.monotonic_ns()
            client.auth_status()
    except DiscoverdError as e:
        return EndpointHealth(ep, False, time.monotonic_ns() - start, etcd_error_message(e))
    return EndpointHealth(ep, True, time.monotonic_ns() - start)


@endpoint.command("health", short_help="Checks the healthiness of endpoints specified in "
                                       "`--endpoints` flag.")
@global_options(root=False)
@click.option("--cluster", is_flag=True, default=False, help=_CLUSTER_HELP)
@click.pass_context
def health(ctx: click.Context, /, cluster: bool, **flags: Any) -> None:
    """Whether each endpoint serves a linearizable read, and how long it took; exit code 1
    (``Error: unhealthy cluster``) if any does not."""
    g = take_globals(ctx, flags)
    printer = g.printer()
    targets = _targets(g, cluster)
    with ThreadPoolExecutor(max_workers=max(1, len(targets))) as pool:
        results = list(pool.map(lambda ep: _check_health(g, ep), targets))
    out, err = printer.endpoint_health(results)
    write_out(out)
    write_out(err, err=True)
    if not all(h.health for h in results):
        raise CliError("unhealthy cluster")
