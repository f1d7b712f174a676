"""Config documents and their schemas, judged when a write is applied (DESIGN §7).

The rules, for every write that touches ``/config/``, ``/schemas/`` or ``/config-status/``:

* a document (``/config/<name>``) is a JSON object — config means named settings, and a
  bare number or list could not be extended later without breaking its readers;
* a schema (``/schemas/<name>``) is a JSON object that is a valid JSON Schema of its
  ``$schema`` draft (2020-12 when absent; drafts 3, 4, 6, 7, 2019-09 and 2020-12 are known,
  any other ``$schema`` is refused), and every ``$ref`` in it resolves inside the schema
  itself (or to a standard meta-schema, which jsonschema ships): validation never touches
  the network, so it cannot differ between members or hang the apply loop;
* after the write, for every name it touched, if both the document and the schema exist,
  the document satisfies the schema. Judging the *resulting* state is what makes a schema
  change that the current document fails a refusal, and a txn replacing both at once fine;
* a status report (``/config-status/<name>/<instance>``) is a JSON object.

``format`` is an annotation, never asserted: format checkers depend on optional packages,
which could make two members disagree. The same reason fixes the recursion budget of one
validation (``_bounded``) instead of inheriting however deep the caller's stack happens to
be.

Each put of a document makes a new *generation* (1 for the first ever, +1 per put or
delete, never restarting) recorded in the same revision under
``/config-history/<name>/<generation>``; the last ``history_limit`` generations are kept.
Live keys survive MVCC compaction, so history and rollback do too. The generation counter is
the newest history entry itself: nothing else to keep in step.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from types import FrameType
from typing import Any, TypeVar
from urllib.parse import urldefrag, urljoin

import jsonschema
import referencing
import referencing.exceptions
import referencing.jsonschema
from jsonschema.protocols import Validator
from jsonschema_specifications import REGISTRY as META_SCHEMAS

from discoverd.kv.revision import Event, EventType, KeyValue
from discoverd.kv.store import WriteView
from discoverd.wire.registry_codec import (
    CONFIG_HISTORY_PREFIX,
    CONFIG_PREFIX,
    CONFIG_STATUS_PREFIX,
    GENERATION_DIGITS,
    SCHEMAS_PREFIX,
    JsonProblem,
    Violation,
    encode_history_entry,
    json_pointer,
    name_problem,
    object_violations,
    parse_generation,
    parse_json,
    sort_violations,
    violation,
)

DEFAULT_HISTORY_LIMIT = 50
DEFAULT_CACHE_SIZE = 1000
MAX_MESSAGE = 500
"""Longest violation message: jsonschema quotes the offending value, which may be huge."""

RECURSION_BUDGET = 1000
"""Stack frames one validation may use (a 64-level document needs about 300)."""

_DRAFTS: tuple[type[Validator], ...] = (
    jsonschema.Draft3Validator,
    jsonschema.Draft4Validator,
    jsonschema.Draft6Validator,
    jsonschema.Draft7Validator,
    jsonschema.Draft201909Validator,
    jsonschema.Draft202012Validator,
)
DEFAULT_DRAFT: type[Validator] = jsonschema.Draft202012Validator
_DRAFT_BY_ID = {str(cls.ID_OF(cls.META_SCHEMA)).rstrip("#"): cls for cls in _DRAFTS}
_NO_ASSERTED_FORMATS = jsonschema.FormatChecker(formats=("regex",))
"""For checking schemas only: a ``pattern`` must compile. ``regex`` is checked with the
standard library alone, unlike the other formats."""

_SKIPPED = ("const", "enum", "default", "examples")
"""Schema keywords holding data rather than schemas: a ``$ref`` in them is not a reference."""


def _refuse(uri: str) -> referencing.Resource[Any]:
    raise LookupError(f"remote reference {uri!r} refused: discoverd resolves $ref only "
                      "inside the schema")


# referencing's attrs field is ``_retrieve``, given as ``retrieve``: mypy sees only the former.
_NO_NETWORK: referencing.Registry[Any] = referencing.Registry(
    retrieve=_refuse,  # type: ignore[call-arg]
)
_meta_validators: dict[type[Validator], Validator] = {}

T = TypeVar("T")


def _bounded(fn: Callable[[], T]) -> T:
    """``fn()`` with ``RECURSION_BUDGET`` frames of stack above this one, rather than
    whatever the interpreter's limit leaves after the caller's frames, so that where a
    schema recursing too deep fails does not depend on how deep the apply was called.

    Only Python frames are counted; C-level recursion already on the caller's stack (the
    same on every member, which all apply through the same code) still shifts the budget
    by a few frames, so a schema needing within a few frames of the budget is the one
    case left that two different call paths could judge differently.
    """
    depth = 0
    frame: FrameType | None = sys._getframe()
    while frame is not None:
        depth += 1
        frame = frame.f_back
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(depth + RECURSION_BUDGET)
    try:
        return fn()
    finally:
        sys.setrecursionlimit(old)


def _short(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."


def _errors_to_violations(
    key: bytes, errors: Iterable[jsonschema.ValidationError]
) -> list[Violation]:
    return [
        violation(key, _short(e.message), json_pointer(e.absolute_path),
                  json_pointer(e.absolute_schema_path))
        for e in errors
    ]


def draft_of(schema: dict[str, Any]) -> type[Validator] | str:
    """The validator class for ``schema``'s ``$schema``, or why there is none."""
    if "$schema" not in schema:
        return DEFAULT_DRAFT
    uri = schema["$schema"]
    if not isinstance(uri, str):
        return "'$schema' must be a string"
    cls = _DRAFT_BY_ID.get(uri.rstrip("#"))
    if cls is None:
        known = ", ".join(sorted(_DRAFT_BY_ID))
        return f"unknown '$schema' {uri!r}; known: {known}"
    return cls


def _meta_validator(cls: type[Validator]) -> Validator:
    found = _meta_validators.get(cls)
    if found is None:
        meta_cls = jsonschema.validators.validator_for(cls.META_SCHEMA, default=cls)
        found = meta_cls(
            cls.META_SCHEMA, format_checker=_NO_ASSERTED_FORMATS, registry=_NO_NETWORK
        )
        _meta_validators[cls] = found
    return found


def _pointers(value: Any) -> dict[int, str]:
    """``id(object) → JSON pointer`` for every object and array in ``value``."""
    found: dict[int, str] = {}
    stack: list[tuple[Any, list[str | int]]] = [(value, [])]
    while stack:
        item, path = stack.pop()
        if isinstance(item, dict):
            found[id(item)] = json_pointer(path)
            stack.extend((v, [*path, k]) for k, v in item.items())
        elif isinstance(item, list):
            found[id(item)] = json_pointer(path)
            stack.extend((v, [*path, i]) for i, v in enumerate(item))
    return found


def _outside_refs(key: bytes, schema: dict[str, Any], cls: type[Validator]) -> list[Violation]:
    """A violation per ``$ref`` (``$dynamicRef``, ``$recursiveRef``) that does not resolve
    inside ``schema`` or to a shipped meta-schema: refused now, so that a reference in a
    branch no document has reached yet cannot fail later, or differently."""
    spec = referencing.jsonschema.specification_with(str(cls.ID_OF(cls.META_SCHEMA)))
    pointers = _pointers(schema)
    resources = {""}
    refs: list[tuple[str, str, str]] = []  # (pointer of the keyword, keyword, target)
    stack: list[tuple[Any, str]] = [(schema, "")]
    while stack:
        contents, base = stack.pop()
        if not isinstance(contents, dict):
            continue
        own = spec.id_of(contents)
        if own:
            base = urljoin(base, own)
            resources.add(urldefrag(base).url)
        for word in ("$ref", "$dynamicRef", "$recursiveRef"):
            ref = contents.get(word)
            if isinstance(ref, str):
                where = json_pointer([word])
                refs.append((pointers.get(id(contents), "") + where, word,
                             urldefrag(urljoin(base, ref)).url))
        stack.extend((sub, base) for sub in spec.subresources_of(contents))
    return [
        violation(key, f"{word} {target!r} is outside the schema: discoverd resolves "
                  "references only inside the schema (no remote $ref)", where)
        for where, word, target in refs
        if target not in resources and target not in META_SCHEMAS
    ]


def _run(validator: Validator, key: bytes, doc: Any) -> list[Violation]:
    """The document's violations; a schema that cannot be applied is one more violation,
    never an exception escaping into the apply loop (DESIGN §12: client input never stops a
    member)."""
    try:
        return _errors_to_violations(key, validator.iter_errors(doc))
    except referencing.exceptions.Unresolvable as e:
        return [violation(key, f"the schema's $ref {e.ref!r} cannot be resolved inside "
                          "the schema")]
    except RecursionError:
        return [violation(key, f"the schema recurses deeper than {RECURSION_BUDGET} "
                          "frames on this document")]
    except Exception as e:  # e.g. a Draft 4 patternProperties regex that does not compile
        return [violation(key, _short(f"the schema cannot be applied: {type(e).__name__}: {e}"))]


class ConfigRules:
    """The config half of the registry hook: checks, the validator cache, generations.

    Args:
        history_limit: generations kept under ``/config-history/<name>/`` (>= 1).
        cache_size: compiled validators kept (least recently used go first).
    """

    def __init__(
        self, *, history_limit: int = DEFAULT_HISTORY_LIMIT, cache_size: int = DEFAULT_CACHE_SIZE
    ) -> None:
        if history_limit < 1:
            raise ValueError("history_limit must be at least 1")
        self.history_limit = history_limit
        self.cache_size = cache_size
        self.compilations = 0
        """Schemas compiled into validators so far (cache misses), for tests and metrics."""
        self._cache: OrderedDict[tuple[bytes, int], tuple[bytes, Validator]] = OrderedDict()

    # -- judging ---------------------------------------------------------------------------

    def check(self, view: WriteView, events: Sequence[Event]) -> list[Violation]:
        """Every violation of the write whose config, schema and status events are
        ``events``, judged on the state ``view`` shows (this write's changes included)."""
        out: list[Violation] = []
        faulty: set[bytes] = set()
        parsed: dict[bytes, Any] = {}  # documents this write puts, parsed once
        touched: dict[bytes, None] = {}
        for ev in events:
            key = ev.kv.key
            if key.startswith(CONFIG_STATUS_PREFIX):
                if ev.type is EventType.PUT:
                    out += self._status_violations(key, ev.kv.value)
                continue
            prefix = SCHEMAS_PREFIX if key.startswith(SCHEMAS_PREFIX) else CONFIG_PREFIX
            name = key[len(prefix) :]
            problem = name_problem(name)
            if ev.type is not EventType.PUT:
                if problem is None:
                    touched[name] = None
                continue  # deleting is always allowed
            found: list[Violation]
            if problem is not None:
                found = [violation(key, f"invalid name: {problem}")]
            elif prefix is SCHEMAS_PREFIX:
                found = self._validator(name, ev.kv)[1]
            else:
                parsed[key], found = object_violations(key, ev.kv.value, "a config document")
            if found:
                faulty.add(key)
                out += found
            else:
                touched[name] = None
        for name in sorted(touched):
            out += self._document_against_schema(view, name, faulty, parsed)
        return out

    @staticmethod
    def _status_violations(key: bytes, value: bytes) -> list[Violation]:
        parts = key[len(CONFIG_STATUS_PREFIX) :].split(b"/")
        if len(parts) < 2 or name_problem(key[len(CONFIG_STATUS_PREFIX) :]) is not None:
            return [violation(key, "a config status key is /config-status/<name>/<instance>")]
        return object_violations(key, value, "a config status")[1]

    def _document_against_schema(
        self, view: WriteView, name: bytes, faulty: set[bytes], parsed: dict[bytes, Any]
    ) -> list[Violation]:
        doc_key, schema_key = CONFIG_PREFIX + name, SCHEMAS_PREFIX + name
        if doc_key in faulty or schema_key in faulty:
            return []  # already refused for what it is; a schema check would only repeat it
        schema_kv = view.get(schema_key)
        doc_kv = view.get(doc_key) if schema_kv is not None else None
        if schema_kv is None or doc_kv is None:
            return []
        validator, problems = self._validator(name, schema_kv)
        if validator is None:  # stored before these rules existed
            first = sort_violations(problems)[0]["message"]
            return [violation(doc_key, f"its schema {schema_key.decode(errors='replace')} is "
                              f"not a valid schema: {first}")]
        if doc_key in parsed:
            doc = parsed[doc_key]
        else:
            try:
                doc = parse_json(doc_kv.value)
            except JsonProblem as e:  # stored before these rules existed
                return [violation(doc_key, f"the stored document is not JSON: {e}")]
        return _bounded(lambda: _run(validator, doc_key, doc))

    # -- the validator cache ---------------------------------------------------------------

    def _validator(
        self, name: bytes, schema_kv: KeyValue
    ) -> tuple[Validator | None, list[Violation]]:
        """The compiled validator of the schema ``schema_kv`` holds, or its violations.

        Cached by (name, mod_revision) — and the value, checked on a hit: a write that was
        refused leaves its revision free for the next write, whose schema at that
        (name, revision) may differ.
        """
        slot = (name, schema_kv.mod_revision)
        cached = self._cache.get(slot)
        if cached is not None and cached[0] == schema_kv.value:
            self._cache.move_to_end(slot)
            return cached[1], []
        validator, problems = self._compile(schema_kv.key, schema_kv.value)
        if validator is not None:
            self._cache[slot] = (schema_kv.value, validator)
            self._cache.move_to_end(slot)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return validator, problems

    def _compile(self, key: bytes, value: bytes) -> tuple[Validator | None, list[Violation]]:
        schema, problems = object_violations(key, value, "a schema")
        if problems:
            return None, problems
        cls = draft_of(schema)
        if isinstance(cls, str):
            return None, [violation(key, cls, "/$schema")]
        meta = _meta_validator(cls)
        try:
            problems = _bounded(lambda: _errors_to_violations(key, meta.iter_errors(schema)))
            if not problems:  # the walk trusts the schema's shape, so only a well-formed one
                problems = _outside_refs(key, schema, cls)
            validator = None if problems else cls(schema, registry=_NO_NETWORK)
        except RecursionError:
            problems = [violation(key, "the schema is too deeply nested to check")]
        except Exception as e:  # client input must never stop the apply loop (DESIGN §12)
            problems = [violation(key, _short(f"the schema cannot be checked: "
                                              f"{type(e).__name__}: {e}"))]
        if problems:
            return None, problems
        self.compilations += 1
        return validator, []

    # -- generations -----------------------------------------------------------------------

    def record_generations(self, view: WriteView, events: Sequence[Event]) -> None:
        """For each document put or deleted by ``events`` (already judged valid), the next
        generation in ``/config-history/``, and the oldest beyond ``history_limit`` gone.

        A name's entries are always one run of consecutive generations ending at the
        newest (each write adds the next one and deletes from the oldest end), so finding
        the newest and deleting below the limit are point operations: the cost does not
        grow with the deleted entries the index keeps until the next compaction.
        """
        for ev in events:
            key = ev.kv.key
            if not key.startswith(CONFIG_PREFIX):
                continue
            name = key[len(CONFIG_PREFIX) :]
            if name_problem(name) is not None:
                continue  # a delete of a key named before the rules existed: no history
            prefix = CONFIG_HISTORY_PREFIX + name + b"/"
            generation = _newest_generation(view, prefix) + 1
            document = ev.kv.value if ev.type is EventType.PUT else None
            view.put(_generation_key(prefix, generation),
                     encode_history_entry(generation, view.revision, document))
            old = generation - self.history_limit
            while old > 0 and view.delete(_generation_key(prefix, old)):
                old -= 1  # more than one only after history_limit was lowered


def _generation_key(prefix: bytes, generation: int) -> bytes:
    return prefix + b"%0*d" % (GENERATION_DIGITS, generation)


def _newest_generation(view: WriteView, prefix: bytes) -> int:
    """The newest generation recorded under ``prefix`` (0: none yet)."""
    low, high = prefix + b"0", prefix + b":"  # ':' follows '9'
    newest = view.range(low, high, reverse=True, limit=1)
    if not newest:
        return 0
    found = parse_generation(prefix, newest[0].key)
    if found is not None:
        return found
    # The history of a name below this one whose next segment starts with a digit
    # ("app/1" under "app") sorts after this name's entries: look past it.
    for kv in view.range(low, high, reverse=True):
        found = parse_generation(prefix, kv.key)
        if found is not None:
            return found
    return 0
