"""``discoverd`` — entry point and global options; one module per verb family
(``discoverd/cli/commands/``), printers in ``discoverd/cli/output.py``.

Errors are reported as etcdctl reports them: one line ``Error: <message>`` on stderr and exit
code 1 — usage mistakes (unknown flag, bad value) included; the streams (``watch``, ``lease
keep-alive``) end with etcdctl's own codes where a script may tell them apart. A registry
write the members refuse (etcd has none) adds one line per violation, whichever verb sent it
(``output.error_report``). Heavy modules
(the SDK, the server) are imported inside the verbs that need them, so ``discoverd get``
starts quickly.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click

from discoverd import __version__
from discoverd.cli.commands.agent import agent
from discoverd.cli.commands.alarm import alarm
from discoverd.cli.commands.auth import auth
from discoverd.cli.commands.bench import bench
from discoverd.cli.commands.compaction import compaction
from discoverd.cli.commands.config import config
from discoverd.cli.commands.del_ import del_
from discoverd.cli.commands.dev import dev
from discoverd.cli.commands.endpoint import endpoint
from discoverd.cli.commands.get import get
from discoverd.cli.commands.lease import lease
from discoverd.cli.commands.member import member, move_leader
from discoverd.cli.commands.put import put
from discoverd.cli.commands.role import role
from discoverd.cli.commands.serve import serve
from discoverd.cli.commands.services import services
from discoverd.cli.commands.sim import sim
from discoverd.cli.commands.snapshot import snapshot
from discoverd.cli.commands.txn import txn
from discoverd.cli.commands.user import user
from discoverd.cli.commands.watch import watch
from discoverd.cli.options import global_options
from discoverd.cli.output import CliError, error_report


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="discoverd")
@global_options(root=True)
def cli(**_globals: Any) -> None:
    """Service discovery and shared configuration on a Raft-replicated key-value store."""


for _command in (get, put, del_, txn, compaction, watch, lease, member, move_leader,
                 endpoint, services, config, snapshot, alarm, auth, user, role, agent, serve,
                 dev, sim, bench):
    cli.add_command(_command)


def _fail(message: str, code: int = 1, details: Sequence[str] = ()) -> None:
    sys.stdout.flush()
    sys.stderr.write(f"Error: {message}\n" + "".join(f"{line}\n" for line in details))
    sys.stderr.flush()
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the CLI; exit 1 with one ``Error:`` line on any failure."""
    from discoverd.errors import DiscoverdError

    args = list(sys.argv[1:] if argv is None else argv)
    if not args:  # no verb: the help text, as etcdctl prints it
        click.echo(cli.get_help(click.Context(cli, info_name="discoverd")))
        return
    try:
        code = cli.main(args=args, prog_name="discoverd", standalone_mode=False)
    except click.exceptions.NoSuchOption as e:
        _fail(f"unknown flag: {e.option_name}")
    except click.ClickException as e:
        _fail(e.format_message().replace("\n", " "))
    except click.exceptions.Abort:
        _fail("interrupted")
    except CliError as e:
        _fail(str(e), e.exit_code, e.details)
    except DiscoverdError as e:
        message, details = error_report(e)
        _fail(message, 1, details)
    except BrokenPipeError:
        sys.exit(1)
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
