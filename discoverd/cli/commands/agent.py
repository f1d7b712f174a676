"""``discoverd agent``: the sidecar (DESIGN §11, docs/agent.md) from the command line —
also ``python -m discoverd.agents``. Runs in the foreground until SIGTERM or Ctrl-C (exit 0),
or syncs once with ``--once`` (exit 1 if no member answered: the files are left as last
synced and local changes stay pending in the state directory for the next run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from discoverd.cli.options import global_options, parse_duration, take_globals
from discoverd.cli.output import CliError


@click.command("agent")
@click.option("--dir", "directory", required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="The directory of config files (NAME.json / NAME.toml).")
@click.option("--prefix", default="/config/", show_default=True,
              help="The key prefix the files map to (NAME.json ↔ PREFIX + NAME).")
@click.option("--push", is_flag=True, help="Write changed files to the cluster.")
@click.option("--pull", is_flag=True,
              help="Write the cluster's documents to files (neither flag: both directions).")
@click.option("--delete", is_flag=True,
              help="With --push: removing a file deletes its document (default: kept).")
@click.option("--exec", "exec_command", default=None,
              help="Shell command run after pulled files changed; $DISCOVERD_CHANGED holds "
                   "the changed names, $DISCOVERD_CHANGED_FILES their files.")
@click.option("--exec-timeout", default="60s", show_default=True,
              help="Kill --exec's command after this long.")
@click.option("--debounce", default="250ms", show_default=True,
              help="Quiet time before a changed file is read; also the least time between "
                   "two --exec runs.")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the agent keeps its state (default: DIR/.discoverd-agent).")
@click.option("--format", "pull_format", type=click.Choice(["json", "toml"]), default="json",
              show_default=True, help="The file format of a pulled document with no file yet.")
@click.option("--register", "register", default=None, metavar="NAME",
              help="Also register this sidecar's service NAME (kept alive on a lease).")
@click.option("--port", "register_port", type=int, default=None,
              help="The port registered with --register.")
@click.option("--address", "register_address", default=None,
              help="The address registered with --register (default: primary address).")
@click.option("--ttl", "register_ttl", type=int, default=10, show_default=True,
              help="The registration's lease TTL in seconds.")
@click.option("--once", is_flag=True, help="Sync once and exit (for init containers).")
@click.option("--log-format", type=click.Choice(["console", "json"]), default="console",
              show_default=True)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info", show_default=True)
@global_options(root=False)
@click.pass_context
def agent(ctx: click.Context, /, **kwargs: Any) -> None:
    """Keep a directory of config files and the cluster's documents in sync."""
    g = take_globals(ctx, kwargs)
    import anyio

    from discoverd.agents.agent import AgentOptions, normalize_prefix, run_agent
    from discoverd.errors import ClientError
    from discoverd.logs import configure_logging

    push, pull = kwargs["push"], kwargs["pull"]
    if not push and not pull:
        push = pull = True
    if kwargs["delete"] and not push:
        raise CliError("--delete needs --push")
    if kwargs["register_ttl"] < 1:
        raise CliError("--ttl must be at least 1")
    try:
        prefix = normalize_prefix(kwargs["prefix"])
    except ClientError as e:
        raise CliError(str(e)) from None
    options = AgentOptions(
        directory=kwargs["directory"], prefix=prefix, push=push, pull=pull,
        delete=kwargs["delete"], exec_command=kwargs["exec_command"],
        exec_timeout=parse_duration(kwargs["exec_timeout"]),
        debounce=parse_duration(kwargs["debounce"]), state_dir=kwargs["state_dir"],
        register=kwargs["register"], register_port=kwargs["register_port"],
        register_ttl=kwargs["register_ttl"], register_address=kwargs["register_address"],
        pull_format=kwargs["pull_format"])
    log = configure_logging(kwargs["log_format"], kwargs["log_level"], agent=str(
        options.directory))
    user, password = g.credentials()
    code = anyio.run(lambda: run_agent(
        options, endpoints=list(g.endpoints), dial_timeout=g.dial_timeout,
        command_timeout=g.command_timeout, once=kwargs["once"], log=log, cacert=g.cacert,
        cert=g.cert, key=g.key, user=user, password=password), backend="trio")
    ctx.exit(code)
