"""The agent's side of the directory: which files are documents, what a file's document is,
and how a document becomes a file again — safely.

* A document file is ``<name>.json`` or ``<name>.toml`` under the directory; a sub-directory
  makes a name with ``/`` (``team/db.json`` → ``team/db``). Anything else is ignored: hidden
  files and directories (editors' swap files, the agent's own temp files and state), backups
  (``app.json~``), conflict copies (``app.json.conflict-r42``), files of other types.
* Documents are compared by a *digest* of their canonical JSON (sorted keys, no spaces), so a
  reformatting or a TOML file with the same content is no change — that is what stops a
  pulled write from being pushed back, and what lets an unchanged file survive a restart.
* A pulled document is written atomically: a hidden temp file in the same directory, fsync,
  rename over the target, fsync of the directory. A reader sees the old file or the new one,
  never half of one; a crash leaves one of the two.
* Names from the cluster are untrusted: a name with an empty, ``.``/``..`` or hidden segment
  (or a backslash or NUL) is refused, so no key can make the agent write outside its
  directory.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

FORMATS = {".json": "json", ".toml": "toml"}
SUFFIX = {fmt: suffix for suffix, fmt in FORMATS.items()}
CONFLICT_MARK = ".conflict-"
_temp_numbers = itertools.count(1)


class DocumentError(ValueError):
    """A file or a stored value that is not a document the agent can sync."""


class UnsafeName(ValueError):
    """A document name that cannot be a path inside the directory."""


@dataclass(frozen=True, slots=True)
class Content:
    """A document as one side holds it: ``value`` is the JSON text written to (or read from)
    the cluster, ``digest`` identifies its content whatever its formatting."""

    value: bytes
    digest: str

    @classmethod
    def of(cls, obj: Any, value: bytes | None = None) -> Content:
        canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                               allow_nan=False)
        if value is None:
            value = json.dumps(obj, separators=(",", ":"), ensure_ascii=False,
                               allow_nan=False).encode("utf-8")
        return cls(value, hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32])


def _reject_constant(name: str) -> Any:
    raise DocumentError(f"{name} is not JSON")


def parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8-sig"), parse_constant=_reject_constant)
    except UnicodeDecodeError as e:
        raise DocumentError(f"not UTF-8: {e}") from None
    except json.JSONDecodeError as e:
        raise DocumentError(f"not JSON: {e}") from None


def parse_file(raw: bytes, fmt: str) -> Content:
    """The document in a file's bytes; ``DocumentError`` says why there is none (a partial
    write, a syntax error, a TOML value JSON cannot hold)."""
    if fmt == "json":
        obj = parse_json(raw)
        if not isinstance(obj, dict):
            raise DocumentError(f"a document is a JSON object, not {type(obj).__name__}")
        # The file's own text goes to the cluster, so its history keeps the author's layout.
        return Content.of(obj, raw.decode("utf-8-sig").strip().encode("utf-8"))
    try:
        obj = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DocumentError(f"not UTF-8: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise DocumentError(f"not TOML: {e}") from None
    try:
        return Content.of(obj)
    except TypeError as e:  # a TOML date or time
        raise DocumentError(f"a TOML date/time has no JSON form (quote it): {e}") from None
    except ValueError as e:  # inf or nan
        raise DocumentError(f"a value has no JSON form: {e}") from None


def parse_remote(value: bytes) -> Content:
    obj = parse_json(value)
    if not isinstance(obj, dict):
        raise DocumentError(f"the stored value is a JSON {type(obj).__name__}, not an object")
    return Content.of(obj, value)


def render(content: Content, fmt: str) -> bytes:
    """A document as file bytes: indented JSON, or TOML (``DocumentError`` if the document
    has what TOML cannot hold, such as ``null``)."""
    obj = parse_json(content.value)
    if fmt == "json":
        return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    try:
        return tomli_w.dumps(obj).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise DocumentError(f"cannot be written as TOML: {e}") from None


def visible(root: Path, path: Path) -> bool:
    """``path`` is inside ``root`` and no part of it below ``root`` is hidden."""
    try:
        return not any(p.startswith(".") for p in path.relative_to(root).parts)
    except ValueError:
        return False


def name_of(root: Path, path: Path) -> tuple[str, str] | None:
    """``(name, format)`` of the document file at ``path``, or ``None`` if it is not one."""
    try:
        rel = path.relative_to(root)
    except ValueError:
        return None
    parts = rel.parts
    if not parts or any(p.startswith(".") for p in parts):
        return None
    fmt = FORMATS.get(Path(parts[-1]).suffix)
    stem = parts[-1][: -len(SUFFIX[fmt])] if fmt else ""
    if fmt is None or not stem or stem.startswith("."):
        return None
    name = "/".join((*parts[:-1], stem))
    try:
        check_name(name)
    except UnsafeName:
        return None
    return name, fmt


def check_name(name: str) -> None:
    for segment in name.split("/"):
        if not segment or segment in (".", "..") or segment.startswith("."):
            raise UnsafeName(f"document name {name!r} has an empty, '.', '..' or hidden "
                             "segment: it cannot be a file in the directory")
        if "\\" in segment or "\x00" in segment:
            raise UnsafeName(f"document name {name!r} has a backslash or NUL")


def path_of(root: Path, name: str, fmt: str) -> Path:
    check_name(name)
    *dirs, last = name.split("/")
    return root.joinpath(*dirs, last + SUFFIX[fmt])


def scan(root: Path) -> dict[str, list[tuple[Path, str]]]:
    """Every document file under ``root``, by name (a name with both a ``.json`` and a
    ``.toml`` file has both, ``.json`` first)."""
    found: dict[str, list[tuple[Path, str]]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in sorted(filenames):
            path = Path(dirpath) / filename
            named = name_of(root, path)
            if named is not None:
                found.setdefault(named[0], []).append((path, named[1]))
    for files in found.values():
        files.sort(key=lambda f: f[1])  # "json" < "toml"
    return found


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """``path`` holds ``data`` afterwards, and at no moment holds anything in between."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{next(_temp_numbers)}")
    try:
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def remove(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    fsync_dir(path.parent)
    return True


def keep_copy(path: Path, tag: str) -> Path | None:
    """Copy ``path`` aside as ``<file>.conflict-<tag>`` (which the agent never syncs) before
    it is replaced; ``None`` if there is no file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    copy = path.with_name(f"{path.name}{CONFLICT_MARK}{tag}")
    write_atomic(copy, data)
    return copy
