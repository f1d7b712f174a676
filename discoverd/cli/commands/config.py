"""``discoverd config ...``: config documents and their JSON Schemas (DESIGN §7).

``/config/<name>`` holds a JSON document, ``/schemas/<name>`` the schema it must satisfy.
The members judge every write when it is applied, so an invalid document is refused here
exactly as through a raw ``put`` or a ``txn``: ``Error: validation failed: N violation(s)``
on stderr, then ``  <key> <path>: <message>`` per violation, exit code 1
(``output.error_report``).

Documents and schemas are read from FILE, or stdin for ``-``. JSON is sent as it is: the
members judge it exactly as they judge a raw ``put`` of the same text (not JSON, not an
object, a duplicate key: the same violation lines), and the stored generation keeps its
formatting. A FILE ending in ``.toml`` is read as TOML and sent as compact JSON (TOML dates
and times have no JSON form and are refused here). Outputs (discoverd's own; etcdctl has no
registry):

* ``get``/``schema-get`` ``-w simple``: the document, pretty-printed (2-space indent, keys in
  their stored order); ``-w json``: one line, ``{"name", "generation", "revision", "stale",
  "document"}`` (``get``) or the schema itself (``schema-get``). ``get --rev R``: the
  document as of revision R, ``--gen G``: generation G, both from the kept history (which
  survives compaction). When no member answers, ``get`` prints the last copy the SDK kept
  on local disk (its warning on stderr; ``"stale": true`` in JSON).
* ``put``/``rollback``: ``NAME: generation G, revision R``; ``schema-set``: ``OK``;
  ``validate``: ``valid``.
* ``history``, newest first: ``-w simple`` ``GENERATION REVISION DIGEST`` per line (``deleted``
  instead of the digest for a delete), ``-w table``, ``-w json`` (a list, documents
  included). The digest is the first 12 hex digits of the SHA-256 of the document's
  canonical JSON (sorted keys, no spaces), so equal documents have equal digests however
  they were formatted.
* ``diff NAME GEN1 GEN2``: a unified diff of the two generations pretty-printed with sorted
  keys (a deleted generation is empty); nothing when they are equal. Exit code 0 either way.
* ``status``: ``INSTANCE GENERATION applied`` (or ``failed: ERROR``) per consumer; ``-w
  table``; ``-w json`` (an object by instance).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from discoverd.cli.options import GO_INT, Globals, global_options, parse_int, take_globals
from discoverd.cli.output import CliError, render_table, write_out

if TYPE_CHECKING:
    from discoverd.sdk import Client, ConfigStatus, HistoryEntry

_JSON_FORMATS = ("simple", "json")
_ALL_FORMATS = ("simple", "table", "json")


def _start(ctx: click.Context, flags: dict[str, Any], allowed: Sequence[str]) -> Globals:
    g = take_globals(ctx, flags)
    if g.write_out not in allowed:
        raise CliError(f"{g.write_out} not supported as output format")
    return g


def _line(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape") + b"\n"


def pretty(document: Any, *, sort_keys: bool = False) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False, sort_keys=sort_keys)


def compact(document: Any) -> str:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"))


def digest(document: Any) -> str:
    """The first 12 hex digits of the SHA-256 of ``document``'s canonical JSON."""
    canonical = json.dumps(document, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


# ----------------------------------------------------------------------------- input


def _toml_problem(value: Any, path: str = "") -> str | None:
    """Where a TOML value has no JSON form (dates, times, inf/nan), or None."""
    if isinstance(value, dict):
        for k, v in value.items():
            found = _toml_problem(v, f"{path}/{k.replace('~', '~0').replace('/', '~1')}")
            if found:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = _toml_problem(v, f"{path}/{i}")
            if found:
                return found
    elif isinstance(value, float) and not math.isfinite(value):
        return f"{path or '/'}: {value} is not a JSON number"
    elif not isinstance(value, str | int | float | bool):
        return f"{path or '/'}: a TOML {type(value).__name__} has no JSON form (quote it)"
    return None


def read_document(source: str) -> bytes | dict[str, Any]:
    """The document in file ``source`` (stdin for ``-``): JSON text as it is — sent
    verbatim, so the members judge it exactly as a raw ``put`` of it and the stored
    generation keeps its formatting — or, for a ``.toml`` file, its table."""
    shown = "stdin" if source == "-" else source
    try:
        data = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except OSError as e:
        raise CliError(f"open {source}: {e.strerror or e}") from None
    if source == "-" or not source.endswith(".toml"):
        return data
    import tomllib

    try:
        table = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise CliError(f"{shown}: not valid TOML: {e}") from None
    problem = _toml_problem(table)
    if problem is not None:
        raise CliError(f"{shown}: {problem}")
    return table


def _generation(text: str) -> int:
    try:
        value = parse_int(text)
    except CliError as e:
        raise CliError(f"bad generation ({e})") from None
    if value <= 0:
        raise CliError(f"bad generation {text}: generations start at 1")
    return value


def _history(client: Client, name: str) -> list[HistoryEntry]:
    entries = client.config_history(name)
    if not entries:
        raise CliError(f"config {name} has no history")
    return entries


def _entry(entries: Sequence[HistoryEntry], name: str, generation: int) -> HistoryEntry:
    for entry in entries:
        if entry.generation == generation:
            return entry
    kept = sorted(e.generation for e in entries)
    raise CliError(f"generation {generation} of {name} is not in its history "
                   f"(kept: {kept[0]}..{kept[-1]})")


def _as_of(entries: Sequence[HistoryEntry], name: str, revision: int) -> HistoryEntry:
    """The generation current at ``revision``: the newest written at or before it."""
    before = [e for e in entries if e.revision <= revision]
    if not before:
        oldest = min(entries, key=lambda e: e.generation)
        raise CliError(f"no generation of {name} at or before revision {revision} (oldest "
                       f"kept: generation {oldest.generation} at revision {oldest.revision})")
    return max(before, key=lambda e: e.generation)


# ----------------------------------------------------------------------------- the verbs


@click.group("config", short_help="Config document commands.")
@global_options(root=False)
def config(**_flags: Any) -> None:
    """Config documents (/config/<name>) validated against their JSON Schemas
    (/schemas/<name>) by the members, with their history of generations."""


@config.command("schema-set", short_help="Sets the JSON Schema of a config document.")
@global_options(root=False)
@click.argument("name")
@click.argument("source", metavar="FILE|-")
@click.pass_context
def schema_set(ctx: click.Context, /, name: str, source: str, **flags: Any) -> None:
    """Set the JSON Schema NAME's document must satisfy (refused if it is not a valid
    schema, or if the current document would not satisfy it)."""
    g = _start(ctx, flags, _ALL_FORMATS)
    schema = read_document(source)
    with g.client() as client:
        client.put_schema(name, schema)
    write_out(b"OK\n")


@config.command("schema-get", short_help="Prints the JSON Schema of a config document.")
@global_options(root=False)
@click.argument("name")
@click.pass_context
def schema_get(ctx: click.Context, /, name: str, **flags: Any) -> None:
    """Print NAME's JSON Schema (pretty; -w json: one line)."""
    g = _start(ctx, flags, _JSON_FORMATS)
    with g.client() as client:
        schema = client.get_schema(name)
    if schema is None:
        raise CliError(f"config {name} has no schema")
    write_out(_line(compact(schema) if g.write_out == "json" else pretty(schema)))


@config.command("put", short_help="Writes a config document.")
@global_options(root=False)
@click.argument("name")
@click.argument("source", metavar="FILE|-")
@click.option("--expect-generation", type=GO_INT, default=None,
              help="Write only if the document is at this generation now.")
@click.pass_context
def put(ctx: click.Context, /, name: str, source: str, expect_generation: int | None,
        **flags: Any) -> None:
    """Write NAME's document from FILE (JSON, or TOML for *.toml) or stdin (-); refused,
    with every violation, if it does not satisfy NAME's schema."""
    g = _start(ctx, flags, _JSON_FORMATS)
    document = read_document(source)
    with g.client() as client:
        written = client.put_config(name, document, expect_generation=expect_generation)
    _print_written(g, name, written.generation, written.revision)


def _print_written(g: Globals, name: str, generation: int, revision: int) -> None:
    if g.write_out == "json":
        write_out(_line(compact({"name": name, "generation": generation,
                                 "revision": revision})))
    else:
        write_out(_line(f"{name}: generation {generation}, revision {revision}"))


@config.command("get", short_help="Prints a config document.")
@global_options(root=False)
@click.argument("name")
@click.option("--rev", type=GO_INT, default=0, help="The document as of this revision "
                                                   "(from the kept history).")
@click.option("--gen", type=GO_INT, default=0, help="The document's generation GEN "
                                                   "(from the kept history).")
@click.pass_context
def get(ctx: click.Context, /, name: str, rev: int, gen: int, **flags: Any) -> None:
    """Print NAME's document, pretty (-w json: with its generation and revision)."""
    g = _start(ctx, flags, _JSON_FORMATS)
    if rev and gen:
        raise CliError("--rev and --gen cannot be set at the same time, choose one")
    if rev < 0 or gen < 0:
        raise CliError("--rev and --gen must be positive")
    with g.client() as client:
        if rev or gen:
            entries = _history(client, name)
            entry = _entry(entries, name, gen) if gen else _as_of(entries, name, rev)
            if entry.deleted or entry.document is None:
                raise CliError(f"config {name} was deleted at revision {entry.revision} "
                               f"(generation {entry.generation})")
            document, generation, revision, stale = (entry.document, entry.generation,
                                                     entry.revision, False)
        else:
            current = client.get_config(name)
            document, generation, revision, stale = (current.document, current.generation,
                                                     current.revision, current.stale)
    if g.write_out == "json":
        write_out(_line(compact({"name": name, "generation": generation, "revision": revision,
                                 "stale": stale, "document": document})))
    else:
        write_out(_line(pretty(document)))


@config.command("validate", short_help="Checks a document against the schema (dry run).")
@global_options(root=False)
@click.argument("name")
@click.argument("source", metavar="FILE|-")
@click.pass_context
def validate(ctx: click.Context, /, name: str, source: str, **flags: Any) -> None:
    """Judge FILE as a write of NAME's document would be judged, changing nothing: prints
    "valid", or the violations with exit code 1."""
    g = _start(ctx, flags, _ALL_FORMATS)
    document = read_document(source)
    with g.client() as client:
        client.validate_config(name, document)
    write_out(b"valid\n")


@config.command("history", short_help="Lists the kept generations of a config document.")
@global_options(root=False)
@click.argument("name")
@click.pass_context
def history(ctx: click.Context, /, name: str, **flags: Any) -> None:
    """NAME's kept generations, newest first: generation, revision, and a digest of the
    document (or "deleted")."""
    g = _start(ctx, flags, _ALL_FORMATS)
    with g.client() as client:
        entries = client.config_history(name)
    write_out(format_history(entries, g.write_out))


def format_history(entries: Sequence[HistoryEntry], fmt: str) -> bytes:
    def shown(e: HistoryEntry) -> str:
        return "deleted" if e.deleted else digest(e.document)

    if fmt == "json":
        return _line(compact([{"generation": e.generation, "revision": e.revision,
                               "deleted": e.deleted,
                               "digest": None if e.deleted else digest(e.document),
                               "document": e.document} for e in entries]))
    if fmt == "table":
        rows = [[str(e.generation), str(e.revision), str(e.deleted).lower(),
                 "" if e.deleted else digest(e.document)] for e in entries]
        return render_table(("generation", "revision", "deleted", "digest"), rows).encode()
    return b"".join(_line(f"{e.generation} {e.revision} {shown(e)}") for e in entries)


@config.command("diff", short_help="Diffs two generations of a config document.")
@global_options(root=False)
@click.argument("name")
@click.argument("gen1", metavar="GEN1")
@click.argument("gen2", metavar="GEN2")
@click.pass_context
def diff(ctx: click.Context, /, name: str, gen1: str, gen2: str, **flags: Any) -> None:
    """A unified diff from generation GEN1 to GEN2 of NAME (pretty JSON, sorted keys)."""
    g = take_globals(ctx, flags)
    first, second = _generation(gen1), _generation(gen2)
    with g.client() as client:
        entries = _history(client, name)
    a, b = _entry(entries, name, first), _entry(entries, name, second)
    write_out(diff_text(name, a, b).encode("utf-8", "surrogateescape"))


def diff_text(name: str, a: HistoryEntry, b: HistoryEntry) -> str:
    def text(e: HistoryEntry) -> list[str]:
        return [] if e.deleted else (pretty(e.document, sort_keys=True) + "\n").splitlines(
            keepends=True)

    def label(e: HistoryEntry) -> str:
        return f"{name}@{e.generation}" + (" (deleted)" if e.deleted else "")

    lines = difflib.unified_diff(text(a), text(b), fromfile=label(a), tofile=label(b))
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


@config.command("rollback", short_help="Writes an earlier generation again.")
@global_options(root=False)
@click.argument("name")
@click.argument("gen", metavar="GEN")
@click.pass_context
def rollback(ctx: click.Context, /, name: str, gen: str, **flags: Any) -> None:
    """Write generation GEN of NAME's document again, as a new generation (validated
    against the current schema like any write)."""
    g = _start(ctx, flags, _JSON_FORMATS)
    generation = _generation(gen)
    with g.client() as client:
        written = client.rollback_config(name, generation)
    _print_written(g, name, written.generation, written.revision)


@config.command("status", short_help="Shows which generation each consumer applied.")
@global_options(root=False)
@click.argument("name")
@click.pass_context
def status(ctx: click.Context, /, name: str, **flags: Any) -> None:
    """What each consumer of NAME reported: instance, generation, applied or failed."""
    g = _start(ctx, flags, _ALL_FORMATS)
    with g.client() as client:
        reports = client.config_status(name)
    instances = sorted(reports)
    if g.write_out == "json":
        write_out(_line(compact({i: {"generation": reports[i].generation,
                                     "applied": reports[i].applied,
                                     "error": reports[i].error} for i in instances})))
    elif g.write_out == "table":
        rows = [[i, str(reports[i].generation), str(reports[i].applied).lower(),
                 reports[i].error or ""] for i in instances]
        write_out(render_table(("instance", "generation", "applied", "error"), rows).encode())
    else:
        write_out(b"".join(_line(f"{i} {reports[i].generation} {_outcome(reports[i])}")
                           for i in instances))


def _outcome(report: ConfigStatus) -> str:
    if report.applied:
        return "applied"
    return f"failed: {report.error}" if report.error else "failed"
