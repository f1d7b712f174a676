"""The registry's formats (DESIGN §7): key layout, JSON values, and what makes a value valid.

Everything that reads or writes registry keys shares this module — the members validating
writes when they are applied (``registry/``), and later the SDK, the CLI and the HTTP
gateway — so that there is one definition of a service record, a config history entry or a
config name. It is pure data handling: no I/O, no clock (``registered_at`` is whatever the
registering process says), and every check returns the same answer on every member.

Keys (bytes, UTF-8 names; a name is non-empty and has no empty ``/`` segments):

* ``/services/<service>/<instance-id>`` — one registered instance, a ``ServiceInstance``;
* ``/config/<name>`` — a config document, a JSON object;
* ``/schemas/<name>`` — the JSON Schema ``/config/<name>`` must satisfy;
* ``/config-history/<name>/<generation>`` — written by discoverd only: one generation of the
  document, ``generation`` as 20 zero-padded decimal digits so that key order is generation
  order (``HistoryEntry``);
* ``/config-status/<name>/<instance>`` — what a consumer has applied (``ConfigStatus``).

Values are JSON rather than cbor so that ``discoverd get --prefix /services``, curl and
etcd's tools read them. JSON here is strict: UTF-8, no ``NaN``/``Infinity``, no duplicate
object keys (which document would be meant?), nested at most ``MAX_JSON_DEPTH`` levels (a
bound every member enforces identically, unlike the interpreter's recursion limit).

Problems are reported as *violations*, ``{"key", "path", "message", "schema_path"}`` with
JSON pointers (RFC 6901), the shape ``ValidationError`` carries to clients.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from discoverd.errors import ValidationError

SERVICES_PREFIX = b"/services/"
CONFIG_PREFIX = b"/config/"
SCHEMAS_PREFIX = b"/schemas/"
CONFIG_HISTORY_PREFIX = b"/config-history/"
CONFIG_STATUS_PREFIX = b"/config-status/"
REGISTRY_PREFIXES = (
    SERVICES_PREFIX,
    CONFIG_PREFIX,
    SCHEMAS_PREFIX,
    CONFIG_HISTORY_PREFIX,
    CONFIG_STATUS_PREFIX,
)
"""Every key the registry has rules for starts with one of these."""

GENERATION_DIGITS = 20
MAX_JSON_DEPTH = 64
MAX_PORT = 65535

Violation = dict[str, str]


class Health(enum.StrEnum):
    """An instance's health, set by its owner. Discovery returns ``passing`` by default
    (``warning`` when asked), so ``draining`` takes an instance out of rotation before it
    stops, and ``critical`` keeps a registered but broken one out."""

    PASSING = "passing"
    WARNING = "warning"
    CRITICAL = "critical"
    DRAINING = "draining"


DEFAULT_HEALTH: frozenset[Health] = frozenset({Health.PASSING})
"""What discovery returns when the caller does not say."""


# ------------------------------------------------------------------------------ keys


def prefix_end(prefix: bytes) -> bytes:
    """The ``range_end`` selecting every key that starts with ``prefix`` (etcd's
    ``GetPrefixRangeEnd``; ``b"\\0"``, "no end", for a prefix of 0xff bytes only)."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


def name_problem(name: bytes) -> str | None:
    """Why ``name`` (the part of a key after its prefix) is not a valid name, or ``None``."""
    if not name:
        return "the name is empty"
    try:
        name.decode("utf-8")
    except UnicodeDecodeError:
        return "the name is not UTF-8"
    if b"" in name.split(b"/"):
        return "the name has an empty segment (a leading, trailing or double '/')"
    return None


def _name(name: str, what: str = "name") -> bytes:
    encoded = name.encode("utf-8")
    problem = name_problem(encoded)
    if problem is not None:
        raise ValueError(f"invalid {what} {name!r}: {problem}")
    return encoded


def _segment(segment: str, what: str) -> bytes:
    if "/" in segment:
        raise ValueError(f"invalid {what} {segment!r}: it may not contain '/'")
    return _name(segment, what)


def config_key(name: str) -> bytes:
    return CONFIG_PREFIX + _name(name)


def schema_key(name: str) -> bytes:
    return SCHEMAS_PREFIX + _name(name)


def history_prefix(name: str) -> bytes:
    """The prefix of ``name``'s history keys (which also prefixes the history of names
    below ``name``, such as ``name/sub``: use ``history_range`` to read one name's)."""
    return CONFIG_HISTORY_PREFIX + _name(name) + b"/"


def history_key(name: str, generation: int) -> bytes:
    if not 0 < generation < 10**GENERATION_DIGITS:
        raise ValueError(f"generation {generation} out of range")
    return history_prefix(name) + b"%0*d" % (GENERATION_DIGITS, generation)


def history_range(name: str) -> tuple[bytes, bytes]:
    """``(key, range_end)`` covering ``name``'s history entries, oldest first. Keys of
    names below ``name`` whose next segment starts with a digit may fall inside; skip
    them with ``parse_generation``."""
    prefix = history_prefix(name)
    return prefix + b"0", prefix + b":"  # ':' follows '9'


def parse_generation(prefix: bytes, key: bytes) -> int | None:
    """The generation of history key ``key`` under ``prefix`` (``history_prefix``), or
    ``None`` if ``key`` is not one of that name's entries."""
    rest = key[len(prefix) :]
    if not key.startswith(prefix) or len(rest) != GENERATION_DIGITS or not rest.isdigit():
        return None
    return int(rest)


def status_key(name: str, instance: str) -> bytes:
    return CONFIG_STATUS_PREFIX + _name(name) + b"/" + _segment(instance, "instance")


def service_prefix(service: str | None = None) -> bytes:
    """``/services/`` (every service) or ``/services/<service>/`` (its instances)."""
    if service is None:
        return SERVICES_PREFIX
    return SERVICES_PREFIX + _segment(service, "service name") + b"/"


def service_key(service: str, instance_id: str) -> bytes:
    return service_prefix(service) + _segment(instance_id, "instance id")


def parse_service_key(key: bytes) -> tuple[str, str]:
    """``(service, instance id)`` of a ``/services/<service>/<instance-id>`` key.

    Raises:
        ValueError: the key does not have that shape.
    """
    if not key.startswith(SERVICES_PREFIX):
        raise ValueError(f"{key!r} is not under {SERVICES_PREFIX.decode()}")
    parts = key[len(SERVICES_PREFIX) :].split(b"/")
    if len(parts) != 2 or not all(parts):
        raise ValueError("a service key is /services/<service>/<instance-id>")
    try:
        return parts[0].decode("utf-8"), parts[1].decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("a service key must be UTF-8") from None


# ------------------------------------------------------------------------------ JSON


class JsonProblem(ValueError):
    """A value is not strict JSON (see the module docstring); the message says why."""


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise ValueError(f"duplicate object key {k!r}")
            seen.add(k)
    return obj


def parse_json(data: bytes) -> Any:
    """``data`` as strict JSON.

    Raises:
        JsonProblem: not UTF-8, not JSON, ``NaN``/``Infinity``, a duplicate key, or nested
            deeper than ``MAX_JSON_DEPTH``.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise JsonProblem(f"not UTF-8 text: {e}") from None
    try:
        value = json.loads(text, object_pairs_hook=_unique_pairs, parse_constant=_no_constants)
    except RecursionError:
        raise JsonProblem(f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as e:
        raise JsonProblem(f"not valid JSON: {e}") from None
    if _too_deep(value):
        raise JsonProblem(f"nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def _too_deep(value: Any) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[Any] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > MAX_JSON_DEPTH:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def json_type(value: Any) -> str:
    """JSON's name for the type of a parsed value (for messages)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def json_pointer(parts: Iterable[str | int]) -> str:
    """RFC 6901: ``["a/b", 0]`` → ``"/a~1b/0"``; no parts → ``""`` (the whole value)."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def violation(key: bytes, message: str, path: str = "", schema_path: str = "") -> Violation:
    return {
        "key": key.decode("utf-8", "backslashreplace"),
        "path": path,
        "message": message,
        "schema_path": schema_path,
    }


def _violation_order(v: Mapping[str, str]) -> tuple[str, str, str, str]:
    return (v["key"], v["path"], v["message"], v["schema_path"])


def sort_violations(violations: Iterable[Violation]) -> list[Violation]:
    """The order every member reports violations in: by key, then path, then message."""
    return sorted(violations, key=_violation_order)


def object_violations(key: bytes, value: bytes, what: str) -> tuple[Any, list[Violation]]:
    """``value`` parsed, if it is a strict JSON object; else the violation saying why."""
    try:
        parsed = parse_json(value)
    except JsonProblem as e:
        return None, [violation(key, f"{what} must be a JSON object: {e}")]
    if not isinstance(parsed, dict):
        return None, [violation(key, f"{what} must be a JSON object, got {json_type(parsed)}")]
    return parsed, []


# ------------------------------------------------------------------------------ services


@dataclass(frozen=True, slots=True)
class ServiceInstance:
    """One registered instance of a service: the value at ``service_key(service, id)``.

    ``port`` ``None``: the service has no port (or one known out of band). ``weight`` is
    relative, for pickers; ``registered_at`` is Unix seconds as the registering process
    saw them. Empty ``zone``/``version`` mean unknown.
    """

    service: str
    id: str
    address: str = ""
    port: int | None = None
    tags: tuple[str, ...] = ()
    meta: Mapping[str, str] = field(default_factory=dict)
    weight: int = 1
    zone: str = ""
    version: str = ""
    health: Health = Health.PASSING
    registered_at: float = 0.0

    @property
    def key(self) -> bytes:
        return service_key(self.service, self.id)

    def to_obj(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "id": self.id,
            "address": self.address,
            "port": self.port,
            "tags": list(self.tags),
            "meta": dict(self.meta),
            "weight": self.weight,
            "zone": self.zone,
            "version": self.version,
            "health": str(self.health),
            "registered_at": self.registered_at,
        }

    def to_json(self) -> bytes:
        """The value to store: compact JSON, fields in DESIGN §7's order."""
        return json.dumps(self.to_obj(), separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, key: bytes, value: bytes) -> ServiceInstance:
        """The instance stored at ``key``.

        Raises:
            ValidationError: the value is not a valid instance for that key.
        """
        obj, problems = object_violations(key, value, "a service instance")
        if not problems:
            problems = instance_violations(key, obj)
        if problems:
            raise ValidationError(violations=sort_violations(problems))
        return cls(
            service=obj["service"],
            id=obj["id"],
            address=obj.get("address") or "",
            port=obj.get("port"),
            tags=tuple(obj.get("tags") or ()),
            meta=dict(obj.get("meta") or {}),
            weight=1 if obj.get("weight") is None else obj["weight"],
            zone=obj.get("zone") or "",
            version=obj.get("version") or "",
            health=Health(obj.get("health") or Health.PASSING),
            registered_at=float(obj.get("registered_at") or 0.0),
        )


def service_value_violations(key: bytes, value: bytes) -> list[Violation]:
    """Every reason ``value`` may not be stored at service key ``key`` (none: it may)."""
    obj, problems = object_violations(key, value, "a service instance")
    return problems or instance_violations(key, obj)


def instance_violations(key: bytes, obj: Mapping[str, Any]) -> list[Violation]:
    """Every reason the parsed JSON object ``obj`` is not a valid instance at ``key``.

    Required: ``service`` and ``id``, equal to the key's segments. Optional, but typed when
    present (``null`` counts as absent): ``address``/``zone``/``version`` strings, ``port``
    an integer in 0..65535, ``tags`` a list of strings, ``meta`` an object of strings,
    ``weight`` an integer >= 0, ``health`` one of ``Health``, ``registered_at`` a number
    >= 0. Unknown fields are allowed, so that newer writers do not break older members.
    """
    out: list[Violation] = []

    def bad(path: str, message: str) -> None:
        out.append(violation(key, message, path))

    service: str | None = None
    instance_id: str | None = None
    try:
        service, instance_id = parse_service_key(key)
    except ValueError as e:
        bad("", str(e))
    for name, expected in (("service", service), ("id", instance_id)):
        got = obj.get(name)
        if not isinstance(got, str):
            bad(f"/{name}", f"{name!r} is required and must be a string")
        elif expected is not None and got != expected:
            bad(f"/{name}", f"{name!r} is {got!r} but the key says {expected!r}")
    for name in ("address", "zone", "version"):
        if obj.get(name) is not None and not isinstance(obj[name], str):
            bad(f"/{name}", f"{name!r} must be a string, got {json_type(obj[name])}")
    port = obj.get("port")
    if port is not None and not (_is_int(port) and 0 <= port <= MAX_PORT):
        bad("/port", f"'port' must be an integer in 0..{MAX_PORT} or null, got {port!r}")
    weight = obj.get("weight")
    if weight is not None and not (_is_int(weight) and weight >= 0):
        bad("/weight", f"'weight' must be an integer >= 0, got {weight!r}")
    tags = obj.get("tags")
    if tags is not None:
        if not isinstance(tags, list):
            bad("/tags", f"'tags' must be an array of strings, got {json_type(tags)}")
        else:
            for i, tag in enumerate(tags):
                if not isinstance(tag, str):
                    bad(f"/tags/{i}", f"a tag must be a string, got {json_type(tag)}")
    meta = obj.get("meta")
    if meta is not None:
        if not isinstance(meta, dict):
            bad("/meta", f"'meta' must be an object of strings, got {json_type(meta)}")
        else:
            for k, v in meta.items():
                if not isinstance(v, str):
                    bad(json_pointer(["meta", k]), f"a meta value must be a string, got "
                        f"{json_type(v)}")
    health = obj.get("health")
    if health is not None and health not in _HEALTH_VALUES:
        bad("/health", f"'health' must be one of {'|'.join(_HEALTH_VALUES)}, got {health!r}")
    at = obj.get("registered_at")
    if at is not None and not (isinstance(at, int | float) and not isinstance(at, bool)
                               and at >= 0):
        bad("/registered_at", f"'registered_at' must be a number >= 0, got {at!r}")
    return out


_HEALTH_VALUES = tuple(h.value for h in Health)


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def filter_instances(
    instances: Iterable[ServiceInstance],
    *,
    tags: Iterable[str] = (),
    meta: Mapping[str, str] | None = None,
    health: Iterable[Health | str] = DEFAULT_HEALTH,
) -> list[ServiceInstance]:
    """The instances with every one of ``tags``, every ``meta`` pair, and a health in
    ``health`` (by default passing only), in their given order."""
    wanted_tags = set(tags)
    wanted_meta = dict(meta or {})
    wanted_health = {Health(h) for h in health}
    return [
        inst
        for inst in instances
        if inst.health in wanted_health
        and wanted_tags.issubset(inst.tags)
        and all(inst.meta.get(k) == v for k, v in wanted_meta.items())
    ]


# ------------------------------------------------------------------------------ config


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One generation of a config document: the value at ``history_key(name, generation)``.

    ``revision`` is the store revision that wrote it; ``document`` the document (``None``
    when the generation is a delete, ``deleted`` True).
    """

    generation: int
    revision: int
    document: dict[str, Any] | None = None
    deleted: bool = False

    @classmethod
    def from_json(cls, value: bytes) -> HistoryEntry:
        """Raises ``ValueError`` if ``value`` is not a history entry."""
        obj = parse_json(value)
        if not isinstance(obj, dict):
            raise ValueError("a history entry is a JSON object")
        generation, revision = obj.get("generation"), obj.get("revision")
        if not _is_int(generation) or not _is_int(revision):
            raise ValueError("a history entry has integer 'generation' and 'revision'")
        deleted = obj.get("deleted") is True
        document = obj.get("document")
        if not deleted and not isinstance(document, dict):
            raise ValueError("a history entry holds a 'document' object unless 'deleted'")
        return cls(generation, revision, None if deleted else document, deleted)


def encode_history_entry(generation: int, revision: int, document: bytes | None) -> bytes:
    """A history entry holding ``document`` verbatim (JSON text already checked), or a
    delete when ``document`` is ``None``. Verbatim: the stored generation is the bytes the
    writer sent, formatting and number spelling included, and costs no re-encoding."""
    head = b'{"generation":%d,"revision":%d,' % (generation, revision)
    if document is None:
        return head + b'"deleted":true}'
    return head + b'"document":' + document + b"}"


@dataclass(frozen=True, slots=True)
class ConfigStatus:
    """What a consumer reports at ``status_key(name, instance)``: the generation it last
    tried, whether applying it worked, and why not."""

    generation: int
    applied: bool
    error: str | None = None

    def to_json(self) -> bytes:
        obj: dict[str, Any] = {"generation": self.generation, "applied": self.applied}
        if self.error is not None:
            obj["error"] = self.error
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, value: bytes) -> ConfigStatus:
        """Raises ``ValueError`` if ``value`` is not a status report."""
        obj = parse_json(value)
        if not isinstance(obj, dict):
            raise ValueError("a config status is a JSON object")
        generation, applied, error = obj.get("generation"), obj.get("applied"), obj.get("error")
        if not _is_int(generation) or not isinstance(applied, bool):
            raise ValueError("a config status has an integer 'generation' and bool 'applied'")
        if error is not None and not isinstance(error, str):
            raise ValueError("a config status 'error' is a string")
        return cls(generation, applied, error)


def decode_document(key: bytes, value: bytes) -> dict[str, Any]:
    """The config document stored at ``key``.

    Raises:
        ValidationError: the value is not a JSON object.
    """
    doc, problems = object_violations(key, value, "a config document")
    if problems:
        raise ValidationError(violations=problems)
    result: dict[str, Any] = doc
    return result


__all__ = [
    "CONFIG_HISTORY_PREFIX",
    "CONFIG_PREFIX",
    "CONFIG_STATUS_PREFIX",
    "DEFAULT_HEALTH",
    "GENERATION_DIGITS",
    "MAX_JSON_DEPTH",
    "REGISTRY_PREFIXES",
    "SCHEMAS_PREFIX",
    "SERVICES_PREFIX",
    "ConfigStatus",
    "Health",
    "HistoryEntry",
    "JsonProblem",
    "ServiceInstance",
    "Violation",
    "config_key",
    "decode_document",
    "encode_history_entry",
    "filter_instances",
    "history_key",
    "history_prefix",
    "history_range",
    "instance_violations",
    "json_pointer",
    "json_type",
    "name_problem",
    "object_violations",
    "parse_generation",
    "parse_json",
    "parse_service_key",
    "prefix_end",
    "schema_key",
    "service_key",
    "service_prefix",
    "service_value_violations",
    "sort_violations",
    "status_key",
    "violation",
]
