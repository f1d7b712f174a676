"""``discoverd txn [-i]``: etcdctl's ``txn``, reading its syntax from stdin.

The input is three blocks, each ended by an empty line::

    mod("key1") > "0"            <- compares: target("key") op "operand"
    value("key2") = "v"

    put key1 "overwrote-key1"    <- success requests: put/get/del lines, with their flags

    put key1 "created-key1"      <- failure requests
    get key2 --prefix

Targets are ``version``/``ver``, ``create``/``c``, ``mod``/``m``, ``value``/``val`` and
``lease`` (hexadecimal, as ``put --lease``); operators ``=``, ``!=``, ``>``, ``<``. Request
lines are split as etcdctl's ``argify`` splits them ("double" and 'single' quotes) and parsed
by the same flag definitions as the ``get``/``put``/``del`` verbs. ``-i`` prints etcdctl's
prompts before each block. A block that ends without its empty line is an error (``EOF``),
as in etcdctl.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any, TypeVar

import click

from discoverd.cli.commands.del_ import del_flags, delete_request
from discoverd.cli.commands.get import get_flags, range_request
from discoverd.cli.commands.put import put_flags, put_request
from discoverd.cli.options import global_options, parse_int, take_globals
from discoverd.cli.output import CliError, go_quote, write_out

if TYPE_CHECKING:
    from discoverd.sdk import Compare, Op

T = TypeVar("T")

_TARGETS = {"ver": "VERSION", "version": "VERSION", "c": "CREATE", "create": "CREATE",
            "m": "MOD", "mod": "MOD", "val": "VALUE", "value": "VALUE", "lease": "LEASE"}
_RESULTS = {"=": "EQUAL", "!=": "NOT_EQUAL", ">": "GREATER", "<": "LESS"}

_SPACE = b" \t\r\v\f"  # what Go's fmt scanning treats as space (newlines never occur here)
_SIMPLE_ESCAPES = {ord("a"): 7, ord("b"): 8, ord("f"): 12, ord("n"): 10, ord("r"): 13,
                   ord("t"): 9, ord("v"): 11, ord("\\"): 92, ord("'"): 39, ord('"'): 34}


# ----------------------------------------------------------------------------- Go scanning


def _scan_quoted(text: bytes, pos: int) -> tuple[bytes, int] | None:
    """Go's ``%q`` scan verb at ``pos`` (leading spaces skipped): a "double-quoted" string
    with Go escapes or a `raw` one; its bytes and the position after it, or None."""
    while pos < len(text) and text[pos] in _SPACE:
        pos += 1
    if pos >= len(text):
        return None
    if text[pos] == ord("`"):
        end = text.find(b"`", pos + 1)
        return None if end < 0 else (text[pos + 1:end], end + 1)
    if text[pos] != ord('"'):
        return None
    out = bytearray()
    i = pos + 1
    while i < len(text):
        ch = text[i]
        if ch == ord('"'):
            return bytes(out), i + 1
        if ch != ord("\\"):
            out.append(ch)
            i += 1
            continue
        if i + 1 >= len(text):
            return None
        esc = text[i + 1]
        if esc in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[esc])
            i += 2
        elif esc == ord("x") and re.fullmatch(rb"[0-9a-fA-F]{2}", text[i + 2:i + 4]):
            out.append(int(text[i + 2:i + 4], 16))
            i += 4
        elif esc in b"01234567" and re.fullmatch(rb"[0-7]{3}", text[i + 1:i + 4]):
            out.append(int(text[i + 1:i + 4], 8) & 0xFF)
            i += 4
        elif esc in b"uU":
            size = 4 if esc == ord("u") else 8
            digits = text[i + 2:i + 2 + size]
            if not re.fullmatch(rb"[0-9a-fA-F]+", digits) or len(digits) != size:
                return None
            out += chr(int(digits, 16)).encode("utf-8", "surrogatepass")
            i += 2 + size
        else:
            return None
    return None


def _scan_compare(rest: bytes) -> tuple[int, bytes, bytes, bytes]:
    """``fmt.Sscanf(rest, "%q) %s %q", &key, &op, &val)``: (items scanned, key, op, val)."""
    scanned = _scan_quoted(rest, 0)
    if scanned is None:
        return 0, b"", b"", b""
    key, pos = scanned
    # ")" must follow at once, then at least one space (a space in a Go format needs one).
    if rest[pos:pos + 1] != b")" or rest[pos + 1:pos + 2] == b"" or \
            rest[pos + 1] not in _SPACE:
        return 1, key, b"", b""
    pos += 1
    while pos < len(rest) and rest[pos] in _SPACE:
        pos += 1
    start = pos
    while pos < len(rest) and rest[pos] not in _SPACE:
        pos += 1
    op = rest[start:pos]
    if not op:
        return 1, key, b"", b""
    tail = _scan_quoted(rest, pos)
    if tail is None:
        return 2, key, op, b""
    return 3, key, op, tail[0]


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def parse_compare(line: bytes) -> Compare:
    """One compare line, as etcdctl's ``parseCompare`` reads it (same error messages)."""
    from discoverd.sdk import Compare

    shown = _text(line)
    target, paren, rest = line.partition(b"(")
    if not paren:
        raise CliError(f"malformed comparison: {shown}")
    n, key, op, val = _scan_compare(rest)
    if n != 3:
        raise CliError(f"malformed comparison: {shown}; got {_text(target)}({go_quote(key)}) "
                       f"{_text(op)} {go_quote(val)}")
    kind = _TARGETS.get(_text(target))
    if kind is None:
        raise CliError(f"malformed comparison: {shown} (unknown target {_text(target)})")
    operand: int | bytes
    if kind == "VALUE":
        operand = val
    else:
        try:
            operand = parse_int(_text(val), base=16 if kind == "LEASE" else 10)
        except CliError:
            raise CliError(f"invalid txn compare request: {shown}") from None
    result = _RESULTS.get(_text(op))
    if result is None:  # etcdctl 3.4 panics here ("Unknown result op")
        raise CliError(f"malformed comparison: {shown} (unknown operator {_text(op)})")
    return Compare(key, kind, result, operand)


_ARG = re.compile(rb"\"(?:[^\"\\]|\\.)*\"|'[^']*'|[^'\"\t\n\f\r ]\S*[^'\"\t\n\f\r ]?")


def argify(line: bytes) -> list[bytes]:
    """etcdctl's ``Argify``: words, "double-quoted" (Go escapes) or 'single-quoted'."""
    args = []
    for word in _ARG.findall(line):
        if word.startswith(b"'"):
            word = word[1:-1]
        elif word.startswith(b'"'):
            scanned = _scan_quoted(word, 0)
            if scanned is None:
                raise CliError(f"invalid syntax: {_text(word)}")
            word = scanned[0]
        args.append(word)
    return args


# ----------------------------------------------------------------------------- request lines


@click.group("requests", add_help_option=False)
def _requests() -> None:
    """The request lines of a txn: ``get``, ``put``, ``del`` with their verbs' flags."""


@_requests.command("get", add_help_option=False)
@get_flags
def _get_line(**flags: Any) -> Op:
    from discoverd.sdk import Op

    return Op.get(**range_request(**flags))


@_requests.command("put", add_help_option=False)
@put_flags
def _put_line(**flags: Any) -> Op:
    from discoverd.sdk import Op

    return Op.put(**put_request(**flags))


@_requests.command("del", add_help_option=False)
@del_flags
def _del_line(**flags: Any) -> Op:
    from discoverd.sdk import Op

    return Op.delete(**delete_request(**flags))


def parse_request(line: bytes) -> Op:
    """One request line, as etcdctl's ``parseRequestUnion`` reads it."""
    from discoverd.sdk import Op

    shown = _text(line)
    args = argify(line)
    if len(args) < 2:
        raise CliError(f"invalid txn compare request: {shown}")
    try:
        op = _requests.main([os.fsdecode(a) for a in args], prog_name="txn",
                            standalone_mode=False)
    except click.ClickException:
        raise CliError(f"invalid txn request: {shown}") from None
    if not isinstance(op, Op):
        raise CliError(f"invalid txn request: {shown}")
    return op


# ----------------------------------------------------------------------------- the verb


def _read_block(stream: IO[bytes], parse: Callable[[bytes], T]) -> list[T]:
    """Parse lines up to the next empty one. Like etcdctl's ``ReadString('\\n')`` loop, a
    line is parsed as soon as it is read, and input ending without the empty line is an
    error (``EOF``)."""
    items: list[T] = []
    while True:
        raw = stream.readline()
        if not raw.endswith(b"\n"):
            raise CliError("EOF")
        line = raw.strip()
        if not line:
            return items
        items.append(parse(line))


def read_txn(
    stream: IO[bytes], *, interactive: bool = False
) -> tuple[list[Compare], list[Op], list[Op]]:
    """Compares, success requests and failure requests from ``stream``; with
    ``interactive`` etcdctl's prompts are printed before each block."""

    def prompt(text: str) -> None:
        if interactive:
            write_out(text.encode() + b"\n")

    prompt("compares:")
    compares = _read_block(stream, parse_compare)
    prompt("success requests (get, put, del):")
    success = _read_block(stream, parse_request)
    prompt("failure requests (get, put, del):")
    failure = _read_block(stream, parse_request)
    return compares, success, failure


@click.command("txn", short_help="Txn processes all the requests in one transaction.")
@global_options(root=False)
@click.argument("args", nargs=-1)
@click.option("-i", "--interactive", is_flag=True, help="Input transaction in interactive mode.")
@click.pass_context
def txn(ctx: click.Context, /, args: tuple[str, ...], interactive: bool, **flags: Any) -> None:
    """Read compares, success requests and failure requests from stdin (etcdctl's syntax,
    each block ended by an empty line) and run them as one atomic transaction."""
    g = take_globals(ctx, flags)
    if args:
        raise CliError("txn command does not accept argument")
    printer = g.printer()
    compares, success, failure = read_txn(sys.stdin.buffer, interactive=interactive)
    printer.check_kv_format()
    with g.client() as client:
        response = client.txn(compares, success, failure)
    write_out(printer.txn(response))
