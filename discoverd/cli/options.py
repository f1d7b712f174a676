"""etcdctl's global flags, its value parsing rules, and the client the verbs share.

etcdctl's global flags are "persistent": ``etcdctl -w json get foo`` and ``etcdctl get foo -w
json`` mean the same. ``global_options`` therefore decorates both the ``discoverd`` group and
every client verb; ``Globals.resolve`` takes a flag from the verb's command line when it was
given there, else from the group (which also reads ``DISCOVERD_*`` variables and defaults).

Values are parsed the way etcdctl's (Go) flag library parses them, so error messages match:
durations like ``2s``/``500ms``, integers with ``strconv.ParseInt`` wording.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import click
from click.core import ParameterSource

from discoverd.cli.output import FORMATS, CliError, Printer, go_quote

if TYPE_CHECKING:
    from discoverd.sdk import Client

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_ENDPOINT = "127.0.0.1:2379"
GLOBAL_NAMES = ("endpoints", "dial_timeout", "command_timeout", "write_out", "hex_",
                "cacert", "cert", "key", "user", "password")


def parse_int(text: str, *, base: int = 10, what: str = "") -> int:
    """Go's ``strconv.ParseInt(text, base, 64)``; ``CliError`` worded as Go's error."""
    digits = "[0-9a-fA-F]" if base == 16 else "[0-9]"
    if not re.fullmatch(f"[+-]?{digits}+", text):
        raise CliError(f"{what}strconv.ParseInt: parsing {go_quote(text)}: invalid syntax")
    value = int(text, base)
    if not -(2**63) <= value < 2**63:
        raise CliError(f"{what}strconv.ParseInt: parsing {go_quote(text)}: value out of range")
    return value


_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0,
                   "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Go's ``time.ParseDuration`` (``"2s"``, ``"1m30s"``, ``"500ms"``) in seconds; a bare
    number is taken as seconds."""
    s = text.strip()
    if re.fullmatch(r"\d+(\.\d*)?", s):
        return float(s)
    pos, total = 0, 0.0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None:
            raise CliError(f"time: invalid duration {go_quote(text)}")
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if not s:
        raise CliError(f"time: invalid duration {go_quote(text)}")
    return total


class GoInt(click.ParamType):  # type: ignore[type-arg,unused-ignore]
    """An integer flag whose errors read as pflag's:
    ``invalid argument "x" for "--rev" flag: strconv.ParseInt: parsing "x": invalid syntax``."""

    name = "int"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> int:
        if isinstance(value, int):
            return value
        flag = param.opts[0] if param is not None and param.opts else "value"
        return parse_int(str(value), what=f"invalid argument {go_quote(str(value))} for "
                                          f"{go_quote(flag)} flag: ")


GO_INT = GoInt()


@dataclass(frozen=True, slots=True)
class Globals:
    """The resolved global flags of one invocation."""

    endpoints: tuple[str, ...]
    dial_timeout: float
    command_timeout: float
    write_out: str
    hex: bool
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    user: str | None = None
    """``NAME`` or ``NAME:PASSWORD`` (etcdctl's ``--user``)."""
    password: str | None = None

    @classmethod
    def resolve(cls, ctx: click.Context) -> Globals:
        """The global flags as typed nearest to the verb: on the verb's own command line, else
        on an enclosing group's (``endpoint -w json status``), else the root's (which also
        reads ``DISCOVERD_*`` variables and holds the defaults)."""
        root = ctx.find_root()
        merged: dict[str, Any] = {}
        for name in GLOBAL_NAMES:
            c: click.Context | None = ctx
            while c is not None and c is not root:
                if name in c.params and c.get_parameter_source(name) is \
                        ParameterSource.COMMANDLINE:
                    merged[name] = c.params[name]
                    break
                c = c.parent
            else:
                merged[name] = root.params.get(name)
        endpoints = tuple(e.strip() for e in str(merged["endpoints"] or DEFAULT_ENDPOINT)
                          .split(",") if e.strip())
        if not endpoints:
            raise CliError("no endpoints given")
        if merged["write_out"] not in FORMATS:
            raise CliError("unsupported output format")
        return cls(endpoints=endpoints,
                   dial_timeout=parse_duration(str(merged["dial_timeout"])),
                   command_timeout=parse_duration(str(merged["command_timeout"])),
                   write_out=str(merged["write_out"]), hex=bool(merged["hex_"]),
                   cacert=merged["cacert"], cert=merged["cert"], key=merged["key"],
                   user=merged["user"], password=merged["password"])

    def printer(self, *, value_only: bool = False) -> Printer:
        return Printer(self.write_out, hex_keys=self.hex, value_only=value_only)

    def credentials(self) -> tuple[str | None, str | None]:
        """``--user NAME:PASSWORD``, or ``--user NAME`` with ``--password`` (else asked on
        the terminal, as etcdctl does)."""
        if not self.user:
            return None, None
        name, sep, password = self.user.partition(":")
        if not name:
            raise CliError("--user needs a user name")
        if sep:
            return name, password
        if self.password is not None:
            return name, self.password
        return name, click.prompt("Password", hide_input=True, err=True)

    @contextmanager
    def client(self, endpoints: tuple[str, ...] | None = None) -> Iterator[Client]:
        """A connected-on-demand SDK client of ``endpoints`` (default: ``--endpoints``)."""
        from discoverd.sdk import Client

        if self.dial_timeout <= 0 or self.command_timeout <= 0:
            raise CliError("--dial-timeout and --command-timeout must be positive")
        user, password = self.credentials()
        with Client(list(endpoints or self.endpoints), dial_timeout=self.dial_timeout,
                    command_timeout=self.command_timeout, user=user, password=password,
                    cacert=self.cacert, cert=self.cert, key=self.key) as client:
            yield client


def global_options(*, root: bool) -> Callable[[F], F]:
    """The global flags; ``root`` for the group (environment variables and defaults),
    otherwise for a verb (no defaults: only what is typed after the verb counts)."""

    def env(name: str) -> str | None:
        return f"DISCOVERD_{name}" if root else None

    def decorate(f: F) -> F:
        options = [
            click.option("--endpoints", envvar=env("ENDPOINTS"),
                         default=DEFAULT_ENDPOINT if root else None,
                         help="Comma-separated member client addresses (host:port)."),
            click.option("--dial-timeout", envvar=env("DIAL_TIMEOUT"),
                         default="2s" if root else None,
                         help="Dial timeout for client connections (e.g. 2s)."),
            click.option("--command-timeout", envvar=env("COMMAND_TIMEOUT"),
                         default="5s" if root else None,
                         help="Timeout for a command, retries included (e.g. 5s)."),
            click.option("-w", "--write-out", envvar=env("WRITE_OUT"),
                         default="simple" if root else None,
                         help="Output format: simple, json, fields or table."),
            click.option("--hex", "hex_", is_flag=True, envvar=env("HEX"),
                         default=False if root else None,
                         help="Print keys and values as hex-escaped byte strings."),
            click.option("--cacert", envvar=env("CACERT"), default=None,
                         help="Verify members' TLS certificates with this CA bundle."),
            click.option("--cert", envvar=env("CERT"), default=None,
                         help="Client TLS certificate (for --client-cert-auth members)."),
            click.option("--key", envvar=env("KEY"), default=None,
                         help="Private key of --cert."),
            click.option("--user", envvar=env("USER"), default=None,
                         help="NAME[:PASSWORD] to authenticate as (auth enabled)."),
            click.option("--password", envvar=env("PASSWORD"), default=None,
                         help="Password of --user (instead of NAME:PASSWORD)."),
        ]
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


def take_globals(ctx: click.Context, kwargs: dict[str, Any]) -> Globals:
    """Drop a verb's global flags from its keyword arguments and resolve them."""
    for name in GLOBAL_NAMES:
        kwargs.pop(name, None)
    return Globals.resolve(ctx)


def arg_bytes(text: str) -> bytes:
    """A command-line argument as the bytes the user typed (undoing Python's decoding)."""
    return os.fsencode(text)
