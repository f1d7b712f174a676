"""``discoverd bench put|range|txn|watch|lease|register``: a load generator with etcd
``benchmark``'s flags and report (the load and the report: ``discoverd/cli/bench.py``).

Every scenario takes the shared load flags (``--clients``, ``--conns``, ``--total`` or
``--duration``, the key and value shape, ``--seed``) and the global flags: the load runs
through SDK clients made with the same endpoints, timeouts, credentials and TLS files as
any other verb's, under trio. ``-w json`` prints one JSON object; ``simple`` (the default)
etcd's text report. Other formats are refused before any load is sent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from discoverd.cli.commands.watch import exit_on_interrupt
from discoverd.cli.options import GO_INT, Globals, global_options, parse_duration, take_globals
from discoverd.cli.output import CliError, write_out

if TYPE_CHECKING:
    from discoverd.cli.bench import Connect, LoadSpec, Progress, Report

F = TypeVar("F", bound=Callable[..., Any])

_LOAD_NAMES = ("clients", "conns", "total", "duration", "key_size", "val_size", "key_space",
               "sequential_keys", "seed", "prefix")


def load_options(*, prefix_default: str = "", default_total: int = 10000
                 ) -> Callable[[F], F]:
    """The flags every scenario shares (etcd benchmark's names)."""

    def decorate(f: F) -> F:
        options = [
            click.option("--clients", type=GO_INT, default=16, show_default=True,
                         help="Concurrent closed-loop clients."),
            click.option("--conns", type=GO_INT, default=1, show_default=True,
                         help="Connections the clients share (round-robin)."),
            click.option("--total", type=GO_INT, default=None,
                         help=f"Requests to send (default {default_total} unless --duration)."),
            click.option("--duration", default=None,
                         help="Send for this long instead of --total (e.g. 10s)."),
            click.option("--key-size", type=GO_INT, default=8, show_default=True,
                         help="Digits of a key after --prefix (zero-padded)."),
            click.option("--val-size", type=GO_INT, default=256, show_default=True,
                         help="Bytes of a value."),
            click.option("--key-space", type=GO_INT, default=10000, show_default=True,
                         help="Distinct keys the requests pick from."),
            click.option("--sequential-keys", is_flag=True, default=False,
                         help="Take keys in order (wrapping round the key space) instead "
                              "of at random."),
            click.option("--seed", type=GO_INT, default=None,
                         help="Seed of the random keys and value (repeatable runs)."),
            click.option("--prefix", default=prefix_default, show_default=bool(prefix_default),
                         help="Prefix of every key."),
        ]
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


def _spec(kwargs: dict[str, Any], *, default_total: int = 10000) -> LoadSpec:
    from discoverd.cli.bench import LoadSpec

    load = {name: kwargs.pop(name) for name in _LOAD_NAMES}
    duration = parse_duration(load["duration"]) if load["duration"] is not None else None
    total = load["total"]
    if total is not None and duration is not None:
        raise CliError("--total and --duration cannot be used together")
    if total is None and duration is None:
        total = default_total
    spec = LoadSpec(clients=load["clients"], conns=load["conns"], total=total,
                    duration=duration, key_size=load["key_size"], val_size=load["val_size"],
                    key_space=load["key_space"], sequential_keys=load["sequential_keys"],
                    seed=load["seed"], prefix=str(load["prefix"]).encode())
    try:
        spec.check()
    except ValueError as e:
        raise CliError(str(e)) from None
    return spec


def _connect(g: Globals) -> Connect:
    from discoverd.cli.bench import Connect

    if g.dial_timeout <= 0 or g.command_timeout <= 0:
        raise CliError("--dial-timeout and --command-timeout must be positive")
    user, password = g.credentials()
    return Connect(g.endpoints, dial_timeout=g.dial_timeout,
                   command_timeout=g.command_timeout, user=user, password=password,
                   cacert=g.cacert, cert=g.cert, key=g.key)


Runner = Callable[["LoadSpec", "Connect", "Progress"], Awaitable["Report"]]


def _run(ctx: click.Context, kwargs: dict[str, Any], runner: Runner, *,
         default_total: int = 10000) -> None:
    """Resolve the flags, run ``runner`` under trio, print its report."""
    import anyio

    from discoverd.cli.bench import BenchFailed, Progress, render

    g = take_globals(ctx, kwargs)
    if g.write_out not in ("simple", "json"):
        raise CliError(f"bench prints -w simple or json, not {g.write_out}")
    spec = _spec(kwargs, default_total=default_total)
    connect = _connect(g)
    progress = Progress()
    with exit_on_interrupt():
        try:
            try:
                report = anyio.run(runner, spec, connect, progress, backend="trio")
            except BaseExceptionGroup as group:
                # A failure inside a task group (the progress bar's, a scenario's) arrives
                # wrapped; one failure is reported as itself, with its one-line message.
                raise _only(group) from None
        except (ValueError, BenchFailed) as e:
            raise CliError(str(e)) from None
    write_out(render(report, g.write_out).encode())


def _only(exc: BaseException) -> BaseException:
    """The single exception inside nested one-member groups (else the group itself)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


@click.group("bench", short_help="Load generator (etcd's benchmark).")
@global_options(root=False)
def bench(**_flags: Any) -> None:
    """Put load on the cluster and report latencies and throughput, as etcd's benchmark
    tool does: put, range, txn, watch, lease (keep-alives) and register (services)."""


@bench.command("put", short_help="Benchmark puts.")
@global_options(root=False)
@load_options()
@click.pass_context
def put(ctx: click.Context, /, **kwargs: Any) -> None:
    """Puts of --val-size values to keys drawn from --key-space."""
    from discoverd.cli.bench import run_put

    _run(ctx, kwargs, run_put)


@bench.command("range", short_help="Benchmark gets.")
@global_options(root=False)
@load_options()
@click.option("--consistency", type=click.Choice(["l", "s"]), default="l", show_default=True,
              help="l: linearizable, s: serializable.")
@click.option("--no-fill", is_flag=True, help="Do not put every key of the key space first.")
@click.pass_context
def range_(ctx: click.Context, /, consistency: str, no_fill: bool, **kwargs: Any) -> None:
    """Gets of random keys; the key space is filled first (not measured)."""
    from discoverd.cli.bench import run_range

    async def runner(spec: LoadSpec, connect: Connect, progress: Progress) -> Report:
        return await run_range(spec, connect, progress, consistency=consistency,
                               prefill=not no_fill)

    _run(ctx, kwargs, runner)


@bench.command("txn", short_help="Benchmark txns (compare version, then put).")
@global_options(root=False)
@load_options()
@click.pass_context
def txn(ctx: click.Context, /, **kwargs: Any) -> None:
    """One txn per request: if the key's version is 0 put it, else put it (etcd's
    txn-put, with a compare); the report counts which branch ran."""
    from discoverd.cli.bench import run_txn

    _run(ctx, kwargs, run_txn)


@bench.command("watch", short_help="Benchmark watch delivery.")
@global_options(root=False)
@load_options(prefix_default="bench-watch/", default_total=1000)
@click.option("--watchers", type=GO_INT, default=100, show_default=True,
              help="Watchers of --prefix (spread over --conns).")
@click.option("--puts", type=GO_INT, default=1, show_default=True,
              help="Writer clients putting under --prefix (--total puts in all).")
@click.option("--grace", default="5s", show_default=True,
              help="How long delivery may lag the last put.")
@click.pass_context
def watch(ctx: click.Context, /, watchers: int, puts: int, grace: str, **kwargs: Any
          ) -> None:
    """Watchers of one prefix while writers put under it: events delivered per second,
    put→event latency, events expected vs delivered (default --total 1000 puts)."""
    from discoverd.cli.bench import run_watch

    grace_s = parse_duration(grace)

    async def runner(spec: LoadSpec, connect: Connect, progress: Progress) -> Report:
        return await run_watch(spec, connect, progress, watchers=watchers, writers=puts,
                               grace=grace_s)

    _run(ctx, kwargs, runner, default_total=1000)


@bench.command("lease", short_help="Benchmark lease keep-alives.")
@global_options(root=False)
@load_options()
@click.option("--leases", type=GO_INT, default=100, show_default=True,
              help="Leases granted first and kept alive round-robin.")
@click.option("--ttl", type=GO_INT, default=10, show_default=True, help="Their TTL (s).")
@click.pass_context
def lease(ctx: click.Context, /, leases: int, ttl: int, **kwargs: Any) -> None:
    """Grant --leases leases, renew them as fast as the clients can (keep-alives/s), then
    revoke them."""
    from discoverd.cli.bench import run_lease

    async def runner(spec: LoadSpec, connect: Connect, progress: Progress) -> Report:
        return await run_lease(spec, connect, progress, leases=leases, ttl=ttl)

    _run(ctx, kwargs, runner)


@bench.command("register", short_help="Benchmark service registrations.")
@global_options(root=False)
@load_options()
@click.option("--services", type=GO_INT, default=100, show_default=True,
              help="Instances to register.")
@click.option("--ttl", type=GO_INT, default=10, show_default=True,
              help="Their lease TTL (s).")
@click.option("--service", default="bench", show_default=True, help="The service's name.")
@click.pass_context
def register(ctx: click.Context, /, services: int, ttl: int, service: str, **kwargs: Any
             ) -> None:
    """Register --services instances (SDK registrations, kept alive), hold them for
    --duration (default 10s; --total is not used), count the keep-alive trouble and the
    instances still registered, then deregister them."""
    from discoverd.cli.bench import run_register

    if kwargs["total"] is not None:
        raise CliError("bench register takes --duration (how long to hold), not --total")
    hold = parse_duration(kwargs["duration"]) if kwargs["duration"] is not None else 10.0

    async def runner(spec: LoadSpec, connect: Connect, progress: Progress) -> Report:
        return await run_register(spec, connect, progress, services=services, ttl=ttl,
                                  service=service, hold=hold)

    _run(ctx, kwargs, runner)
