"""``discoverd watch [KEY [RANGE_END]] [-- CMD ARGS...]``: etcdctl's ``watch``.

Each response is printed as it arrives: in the simple format one ``PUT``/``DELETE`` line per
event, then (with ``--prev-kv``, when the key existed) the previous key and value lines, then
the key and value lines; ``-w json`` prints clientv3's ``WatchResponse`` per line; ``-w
fields`` the header, then ``"Type"`` and the (``Prev``) key-value fields per event.
``--progress-notify`` (etcdctl 3.5's flag) adds ``progress notify: REV`` lines when the
member reports progress on an idle watch.

``-- CMD ARGS`` runs CMD once per event, after the response is printed, with etcdctl's
variables ``ETCD_WATCH_REVISION`` (the response's revision), ``ETCD_WATCH_EVENT_TYPE``,
``ETCD_WATCH_KEY``, ``ETCD_WATCH_VALUE`` — the last three quoted as Go's ``%q``, quotes
included, exactly as etcdctl sets them — and the same values as ``DISCOVERD_WATCH_*``. CMD's
stdin is ``/dev/null``; if it fails, ``command [...] error (exit status N)`` goes to stderr
and the watch stops with exit code 1, as etcdctl's does.

A watch whose start revision has been compacted (or that the member cancels) ends as
etcdctl's: ``watch was canceled (...)`` and ``Error: watch is canceled by the server`` on
stderr, exit code 5. Ctrl-C ends the watch as it ends etcdctl: at once, killed by SIGINT.

``-i`` reads ``watch ARGS [-- CMD ARGS]`` lines from stdin and runs each watch concurrently
until stdin ends (etcdctl's interactive mode; its ``progress`` line is not offered).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from discoverd.cli.options import GO_INT, arg_bytes, global_options, take_globals
from discoverd.cli.output import (
    CliError,
    Printer,
    etcd_error_message,
    go_quote,
    go_quote_list,
    write_out,
)

if TYPE_CHECKING:
    from discoverd.sdk import Client, ResponseHeader, SyncWatch, WatchEvent, WatchResponse

F = TypeVar("F", bound=Callable[..., Any])

ENV_PREFIXES = ("ETCD_WATCH_", "DISCOVERD_WATCH_")
_EXEC = "discoverd.watch.exec"  # ctx.meta: the words after "--" (None: no "--")
_EXIT_INTERRUPTED = 5  # etcdctl's ExitInterrupted: the member canceled the watch
_EXIT_INVALID_INPUT = 3  # etcdctl's ExitInvalidInput: -i and stdin ended
_OUTPUT = threading.Lock()  # -i: one response (and its commands) at a time on stdout


# ----------------------------------------------------------------------------- Ctrl-C


def die_of_sigint() -> NoReturn:
    """End the process the way a Go program (etcdctl) ends on Ctrl-C: killed by SIGINT, so
    the shell and any parent see an interrupted command; what was printed is flushed."""
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)
    sys.exit(128 + signal.SIGINT)  # only where a signal cannot end the process


@contextlib.contextmanager
def exit_on_interrupt() -> Iterator[None]:
    """Turn Ctrl-C (``KeyboardInterrupt``) into ``die_of_sigint`` once the ``with`` block,
    and whatever it holds open, has been left."""
    try:
        yield
    except KeyboardInterrupt:
        die_of_sigint()


# ----------------------------------------------------------------------------- arguments


class _WatchCommand(click.Command):
    """Takes ``-- CMD ARGS`` off the command line before click parses it (click would drop
    the ``--`` and mix CMD's words into the keys)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta[_EXEC] = None
        if "--" in args:
            at = args.index("--")
            ctx.meta[_EXEC] = args[at + 1:]
            args = args[:at]
        return super().parse_args(ctx, args)


def watch_flags(f: F) -> F:
    """``watch``'s own flags (shared with the lines of ``watch -i``)."""
    options = [
        click.argument("args", nargs=-1, metavar="[KEY [RANGE_END]] [-- CMD ARGS...]"),
        click.option("--prefix", is_flag=True, help="Watch on a prefix if prefix is set."),
        click.option("--rev", type=GO_INT, default=0, help="Revision to start watching."),
        click.option("--prev-kv", is_flag=True,
                     help="Get the previous key-value pair before the event happens."),
        click.option("--progress-notify", is_flag=True,
                     help="Get periodic watch progress notification from the member."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def watch_request(
    args: tuple[str, ...] | list[str], *, prefix: bool, rev: int, prev_kv: bool,
    progress_notify: bool, **_: Any,
) -> dict[str, Any]:
    """etcdctl's ``getWatchChan``: the arguments of ``Client.watch``, or ``CliError`` worded
    as etcdctl's. As in etcdctl, a second argument is the range end only when there are
    exactly two. Progress notifications are always asked for, whatever ``progress_notify``
    says: they are how the SDK notices a member gone silent and resumes elsewhere
    (``print_watch`` shows them only when the user asked)."""
    if not args:
        raise CliError("bad number of arguments")
    request: dict[str, Any] = {"key": arg_bytes(args[0]), "prefix": prefix,
                               "start_revision": rev, "prev_kv": prev_kv,
                               "progress_notify": True}
    if len(args) == 2:
        if prefix:
            raise CliError("`range_end` and `--prefix` are mutually exclusive")
        request["range_end"] = arg_bytes(args[1])
    return request


def _exec_args(words: list[str] | None) -> list[str]:
    if words is not None and not words:
        raise CliError("bad number of arguments (found separator --, but no commands)")
    return words or []


# ----------------------------------------------------------------------------- -- CMD


class _CommandFailed(Exception):
    """The command run for an event failed (already reported on stderr)."""


def _go_exec_error(argv: list[str], e: OSError) -> str:
    """The error Go's ``exec.Cmd.Run`` gives when the command cannot be started."""
    name = argv[0]
    path = name if "/" in name else shutil.which(name)
    if path is None:
        return f"exec: {go_quote(name)}: executable file not found in $PATH"
    reason = e.strerror or str(e)
    return f"fork/exec {path}: {reason[:1].lower()}{reason[1:]}"


def _go_exit_error(code: int) -> str:
    """Go's ``*exec.ExitError`` text: ``exit status 1``, ``signal: killed``."""
    if code > 0:
        return f"exit status {code}"
    try:
        name = signal.strsignal(-code) or f"signal {-code}"
    except ValueError:
        name = f"signal {-code}"
    return f"signal: {name[:1].lower()}{name[1:]}"


def run_command(argv: list[str], revision: int, event: WatchEvent) -> None:
    """Run CMD for one event with the watch variables in its environment; ``_CommandFailed``
    (after etcdctl's stderr line) if it cannot start or exits non-zero."""
    values = {"REVISION": str(revision), "EVENT_TYPE": go_quote(str(event.type)),
              "KEY": go_quote(event.kv.key), "VALUE": go_quote(event.kv.value)}
    env = dict(os.environ)
    for prefix in ENV_PREFIXES:
        env.update((prefix + name, value) for name, value in values.items())
    sys.stdout.flush()
    try:
        code = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, check=False).returncode
        error = _go_exit_error(code) if code else ""
    except OSError as e:
        error = _go_exec_error(argv, e)
    if error:
        write_out(f"command {go_quote_list(argv)} error ({error})\n".encode(), err=True)
        raise _CommandFailed


# ----------------------------------------------------------------------------- the watch


_COMPACTED = "etcdserver: mvcc: required revision has been compacted"  # etcd's ErrCompacted


def print_watch(
    watch: SyncWatch[WatchResponse], argv: list[str], printer: Printer, *, progress: bool
) -> None:
    """Print (and run ``argv`` for) every response of one watch (``Client.watch``, not yet
    entered) until it ends. Returns when the member ends the watch (a compacted start
    revision included, after printing what etcdctl prints for it: etcd's error text, the
    canceled response) or the watch is closed; ``_CommandFailed`` if CMD failed.
    ``progress``: whether the user asked for progress notifications."""
    from dataclasses import replace

    from discoverd.errors import Compacted
    from discoverd.sdk import WatchResponse

    try:
        with watch as responses:
            for response in responses:
                if response.progress and not progress:
                    continue  # asked for the SDK's liveness check, not for printing
                with _OUTPUT:
                    write_out(printer.watch(response))
                    for event in response.events if argv else ():
                        run_command(argv, response.revision, event)
    except Compacted as e:
        header = getattr(e, "header", None)
        canceled = WatchResponse(
            # etcd's cancel response carries no revision
            replace(header, revision=0) if header is not None else _no_header(),
            [], compact_revision=int(getattr(e, "compact_revision", 0) or 0))
        with _OUTPUT:
            write_out(f"watch was canceled ({_COMPACTED})\n".encode(), err=True)
            write_out(printer.watch(canceled, canceled=True))


def _no_header() -> ResponseHeader:
    from discoverd.sdk import ResponseHeader

    return ResponseHeader.from_wire(None)


@click.command("watch", cls=_WatchCommand,
               short_help="Watches events stream on keys or prefixes.")
@global_options(root=False)
@watch_flags
@click.option("-i", "--interactive", is_flag=True, help="Interactive mode.")
@click.pass_context
def watch(ctx: click.Context, /, interactive: bool, **flags: Any) -> None:
    """Print every change to KEY (or to the keys of [KEY, RANGE_END), or with --prefix to
    the keys starting with KEY) as it happens, from revision --rev when given. After --,
    run CMD ARGS once per event, with ETCD_WATCH_REVISION, ETCD_WATCH_EVENT_TYPE,
    ETCD_WATCH_KEY and ETCD_WATCH_VALUE (and DISCOVERD_WATCH_*) set. -i reads
    "watch ..." lines from stdin."""
    g = take_globals(ctx, flags)
    printer = g.printer()
    printer.check_kv_format()
    if interactive:
        with exit_on_interrupt(), g.client() as client:
            _interactive(client, printer)
    argv = _exec_args(ctx.meta.get(_EXEC))
    request = watch_request(**flags)
    with exit_on_interrupt(), g.client() as client:
        try:
            print_watch(client.watch(**request), argv, printer,
                        progress=flags["progress_notify"])
        except _CommandFailed:
            ctx.exit(1)
    raise CliError("watch is canceled by the server", exit_code=_EXIT_INTERRUPTED)


# ----------------------------------------------------------------------------- -i


@click.command("watch", cls=_WatchCommand, add_help_option=False)
@watch_flags
@click.pass_context
def _watch_line(ctx: click.Context, /, **flags: Any) -> tuple[dict[str, Any], list[str]]:
    return flags, ctx.meta[_EXEC] if ctx.meta[_EXEC] is not None else []


def _say(text: str) -> None:
    with _OUTPUT:
        write_out(text.encode("utf-8", "surrogateescape") + b"\n", err=True)


def _interactive(client: Client, printer: Printer) -> NoReturn:
    """etcdctl's ``watchInteractiveFunc``: one concurrent watch per ``watch`` line until
    stdin ends (``Error reading watch request line: EOF``, exit code 3). A line that is not
    a watch is reported and skipped; a line whose flags do not parse ends the command."""
    from discoverd.cli.commands.txn import argify

    closing = threading.Event()
    watches: list[SyncWatch[WatchResponse]] = []
    try:
        while True:
            raw = sys.stdin.buffer.readline()
            if not raw.endswith(b"\n"):
                raise CliError("Error reading watch request line: EOF",
                               exit_code=_EXIT_INVALID_INPUT)
            shown = os.fsdecode(raw[:-1])
            words = [os.fsdecode(a) for a in argify(raw[:-1])]
            if not words:
                _say(f"Invalid command: {shown} (watch and progress supported)")
                continue
            if words[0] != "watch":
                _say(f"Invalid command {shown} (only support watch)")
                continue
            if len(words) < 2:
                _say(f"Invalid command {shown} (command type or key is not provided)")
                continue
            if words[-1] == "--":
                raise CliError("bad number of arguments (found separator --, but no commands)")
            try:
                flags, argv = _watch_line.main(words[1:], prog_name="watch",
                                               standalone_mode=False)
            except click.exceptions.NoSuchOption as e:
                raise CliError(f"unknown flag: {e.option_name}") from None
            except click.ClickException as e:
                raise CliError(e.format_message().replace("\n", " ")) from None
            try:
                request = watch_request(**flags)
            except CliError as e:
                _say(f"Invalid command {shown} ({e})")
                continue
            watches.append(client.watch(**request))
            threading.Thread(target=_background_watch, name="discoverd-watch", daemon=True,
                             args=(watches[-1], argv, printer, flags["progress_notify"],
                                   closing)).start()
    finally:
        # The client cannot close while a watch is open: end them (their threads return).
        closing.set()
        for w in watches:
            with contextlib.suppress(Exception):
                w.close()


def _background_watch(watch: SyncWatch[WatchResponse], argv: list[str], printer: Printer,
                      progress: bool, closing: threading.Event) -> None:
    """One watch of ``-i``. A failed CMD ends the whole process with exit code 1, as it
    ends etcdctl."""
    from discoverd.errors import DiscoverdError

    try:
        print_watch(watch, argv, printer, progress=progress)
    except _CommandFailed:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        os._exit(1)
    except DiscoverdError as e:
        if not closing.is_set():
            _say(f"watch was canceled ({etcd_error_message(e)})")
