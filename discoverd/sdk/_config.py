"""Config documents (DESIGN §7): reading and writing them, their schemas, history, rollback,
watching, consumer handles reporting what they applied, and the offline copy.

The members do all the judging — a document is validated against its schema when its write
is applied, and every put or delete makes a new *generation* recorded under
``/config-history/<name>/`` in the same revision (docs/protocol.md "Registry validation").
The SDK only reads those keys well:

* a document's generation is the history entry written in the document's own revision (its
  ``mod_revision``), read in the same read-only txn as the document, so the pair is
  consistent;
* a generation-guarded write (``expect_generation=G``) compares history *keys*: G is the
  newest generation exactly when entry G exists and entry G+1 does not (generations are
  consecutive and never reused), so no extra counter is needed;
* a watch of a document watches its history range instead of the document key: each entry
  carries the generation, the revision and the document (or the deletion), which is
  everything a consumer needs, in one event per change.

Every successful read of a current document is kept in a ``diskcache`` directory, so that a
process starting or running while no member answers still gets the last known document,
flagged ``stale``.
"""

from __future__ import annotations

import collections
import dataclasses
import inspect
import json
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anyio.to_thread
import diskcache  # type: ignore[import-untyped]

from discoverd.errors import (
    ClientError,
    Compacted,
    DiscoverdError,
    Unavailable,
    ValidationError,
)
from discoverd.sdk._errors import ConfigConflict, ConfigNotFound, WatchCompacted
from discoverd.sdk._leased import LeasedKey
from discoverd.sdk._types import (
    BytesLike,
    Compare,
    KeyValue,
    Op,
    RangeResponse,
    TxnResponse,
)
from discoverd.wire.registry_codec import (
    CONFIG_STATUS_PREFIX,
    ConfigStatus,
    HistoryEntry,
    config_key,
    decode_document,
    history_key,
    history_prefix,
    history_range,
    parse_generation,
    schema_key,
    status_key,
)

if TYPE_CHECKING:
    from discoverd.sdk._client import AsyncClient
    from discoverd.sdk._watch import Watch

_log = logging.getLogger("discoverd.sdk")

ENV_CACHE_DIR = "DISCOVERD_CACHE_DIR"
DEFAULT_STATUS_TTL = 10
_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 1.0

Document = Mapping[str, Any] | BytesLike
"""A document to write: a mapping (encoded as compact JSON), or JSON text sent verbatim (so
the stored generation keeps the writer's formatting; the members check it)."""

ChangeCallback = Callable[["ConfigDocument"], Awaitable[Any] | Any]


@dataclass(frozen=True, slots=True)
class ConfigDocument:
    """A config document as of ``revision`` (the store revision that wrote it), with its
    ``generation`` (1 for the first write, +1 for every put or delete).

    ``stale``: the cluster could not be reached and this is the last copy read from it
    (kept on local disk) — possibly outdated. ``deleted``: only from ``watch_config``, when
    the document is deleted (or does not exist when the watch starts); ``document`` is then
    an empty dict and ``revision`` the deleting revision. A deletion is reported as a flag
    rather than ``document=None`` so that ``document`` is always a dict to read settings
    from; code that must not mistake "deleted" for "empty" checks ``deleted``.
    """

    name: str
    document: dict[str, Any]
    revision: int
    generation: int
    stale: bool = False
    deleted: bool = False


def default_cache_dir() -> Path:
    """``$DISCOVERD_CACHE_DIR``, else ``~/.cache/discoverd``."""
    env = os.environ.get(ENV_CACHE_DIR)
    return Path(env) if env else Path.home() / ".cache" / "discoverd"


def encode_document(document: Document, what: str = "document") -> bytes:
    if isinstance(document, Mapping):
        try:
            text = json.dumps(dict(document), separators=(",", ":"), ensure_ascii=False,
                              allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ClientError(f"the {what} cannot be encoded as JSON: {e}") from None
        return text.encode("utf-8")
    if isinstance(document, str):
        return document.encode("utf-8")
    if isinstance(document, bytes | bytearray | memoryview):
        return bytes(document)
    raise ClientError(f"a {what} is a mapping or JSON text, not {type(document).__name__}")


def _key(make: Callable[[str], bytes], name: str) -> bytes:
    if not isinstance(name, str):
        raise ClientError(f"a config name is a str, not {type(name).__name__}")
    try:
        return make(name)
    except ValueError as e:
        raise ClientError(str(e)) from None


def _ranges(resp: TxnResponse) -> list[RangeResponse]:
    out = []
    for r in resp.responses:
        if not isinstance(r, RangeResponse):
            raise ClientError(f"unexpected txn response {type(r).__name__}")
        out.append(r)
    return out


def _generations(name: str, kvs: tuple[KeyValue, ...]) -> list[tuple[int, KeyValue]]:
    """``(generation, kv)`` of ``name``'s history keys among ``kvs`` — the history range
    may also hold entries of names below ``name`` (``history_range``), which are skipped."""
    prefix = history_prefix(name)
    return [(g, kv) for kv in kvs if (g := parse_generation(prefix, kv.key)) is not None]


# ------------------------------------------------------------------------------ cache


class ConfigCache:
    """The last document read per config name, on local disk (``diskcache``).

    Entries are scoped by the client's endpoint list, so two clusters' documents of the same
    name do not mix on one host. Every access runs in a worker thread (sqlite does file
    I/O), and a broken cache never fails the read it serves: it is logged and skipped.
    """

    def __init__(self, directory: Path, scope: str) -> None:
        self.directory = directory
        self._scope = scope
        self._cache: Any = None
        self._lock = threading.Lock()

    def _open(self) -> Any:
        with self._lock:
            if self._cache is None:
                self._cache = diskcache.Cache(str(self.directory))
            return self._cache

    def _key(self, name: str) -> str:
        return f"discoverd.config\0{self._scope}\0{name}"

    async def store(self, doc: ConfigDocument) -> None:
        value = {"document": json.dumps(doc.document, ensure_ascii=False),
                 "revision": doc.revision, "generation": doc.generation}

        def write() -> None:
            self._open().set(self._key(doc.name), value)

        try:
            await anyio.to_thread.run_sync(write)
        except Exception as e:
            _log.warning("discoverd.sdk: could not keep config %r in the cache at %s: %s",
                         doc.name, self.directory, e)

    async def load(self, name: str) -> ConfigDocument | None:
        def read() -> Any:
            return self._open().get(self._key(name))

        try:
            value = await anyio.to_thread.run_sync(read)
            if value is None:
                return None
            document = json.loads(value["document"])
            if not isinstance(document, dict):
                raise ValueError("the cached document is not an object")
            return ConfigDocument(name, document, int(value["revision"]),
                                  int(value["generation"]))
        except Exception as e:
            _log.warning("discoverd.sdk: could not read config %r from the cache at %s: %s",
                         name, self.directory, e)
            return None

    async def forget(self, name: str) -> None:
        def delete() -> None:
            self._open().delete(self._key(name))

        try:
            await anyio.to_thread.run_sync(delete)
        except Exception as e:
            _log.warning("discoverd.sdk: could not drop config %r from the cache: %s", name, e)

    def close(self) -> None:
        with self._lock:
            cache, self._cache = self._cache, None
        if cache is not None:
            cache.close()


# ------------------------------------------------------------------------------ reads


async def read_current(client: AsyncClient, name: str) -> tuple[ConfigDocument, int]:
    """The document now (``deleted`` if there is none) and the revision read at, from one
    read-only txn so that the document and its generation agree."""
    key = _key(config_key, name)
    start, end = history_range(name)
    resp = await client.txn([], [Op.get(key), Op.get(start, range_end=end, keys_only=True)])
    doc_resp, hist_resp = _ranges(resp)
    generations = _generations(name, hist_resp.kvs)
    newest = max(generations, key=lambda g: g[0], default=None)
    if not doc_resp.kvs:
        if newest is None:
            return ConfigDocument(name, {}, 0, 0, deleted=True), resp.header.revision
        return (ConfigDocument(name, {}, newest[1].mod_revision, newest[0], deleted=True),
                resp.header.revision)
    kv = doc_resp.kvs[0]
    mine = [g for g, h in generations if h.mod_revision == kv.mod_revision]
    generation = mine[0] if mine else (newest[0] if newest is not None else 0)
    return (ConfigDocument(name, decode_document(kv.key, kv.value), kv.mod_revision, generation),
            resp.header.revision)


async def get_config(client: AsyncClient, name: str, generation: int | None) -> ConfigDocument:
    if generation is not None:
        return await _get_generation(client, name, generation)
    cache = client._config_cache()
    try:
        doc, _ = await read_current(client, name)
    except Unavailable as e:
        cached = await cache.load(name)
        if cached is None:
            raise
        _log.warning("discoverd.sdk: no member answered (%s); using the cached copy of config "
                     "%r (generation %d, revision %d), which may be stale", e, name,
                     cached.generation, cached.revision)
        return dataclasses.replace(cached, stale=True)
    if doc.deleted:
        # The cluster says there is no document: a cached copy must not resurrect it later.
        await cache.forget(name)
        raise ConfigNotFound(f"config {name!r} does not exist"
                             + (f" (generation {doc.generation} deleted it)"
                                if doc.generation else ""))
    await cache.store(doc)
    return doc


async def _get_generation(client: AsyncClient, name: str, generation: int) -> ConfigDocument:
    if type(generation) is not int or generation < 1:
        raise ClientError(f"a generation is an int >= 1, not {generation!r}")
    key = _key(lambda n: history_key(n, generation), name)
    resp = await client.get(key)
    if not resp.kvs:
        raise ConfigNotFound(f"generation {generation} of config {name!r} is not kept"
                             f"{await _kept(client, name)}")
    entry = _entry(resp.kvs[0])
    if entry is None or entry.deleted or entry.document is None:
        raise ConfigNotFound(f"generation {generation} of config {name!r} is a deletion")
    return ConfigDocument(name, entry.document, entry.revision, entry.generation)


async def _kept(client: AsyncClient, name: str) -> str:
    """`` (history holds generations A..B)`` for error messages."""
    start, end = history_range(name)
    resp = await client.get(start, range_end=end, keys_only=True)
    gens = [g for g, _ in _generations(name, resp.kvs)]
    return f" (history holds generations {min(gens)}..{max(gens)})" if gens else \
        " (it has no history)"


def _entry(kv: KeyValue) -> HistoryEntry | None:
    try:
        return HistoryEntry.from_json(kv.value)
    except ValueError as e:
        _log.warning("discoverd.sdk: skipping malformed history entry %s: %s",
                     kv.key.decode(errors="replace"), e)
        return None


async def get_schema(client: AsyncClient, name: str) -> dict[str, Any] | None:
    key = _key(schema_key, name)
    resp = await client.get(key)
    if not resp.kvs:
        return None
    return decode_document(key, resp.kvs[0].value)


async def config_history(client: AsyncClient, name: str) -> list[HistoryEntry]:
    _key(config_key, name)
    start, end = history_range(name)
    resp = await client.get(start, range_end=end)
    entries = [e for _, kv in _generations(name, resp.kvs) if (e := _entry(kv)) is not None]
    return sorted(entries, key=lambda e: e.generation, reverse=True)


async def config_status(client: AsyncClient, name: str) -> dict[str, ConfigStatus]:
    prefix = CONFIG_STATUS_PREFIX + _key(config_key, name)[len(b"/config/"):] + b"/"
    resp = await client.get(prefix, prefix=True)
    out: dict[str, ConfigStatus] = {}
    for kv in resp.kvs:
        rest = kv.key[len(prefix):]
        if b"/" in rest:
            continue  # a report about a config below this name
        try:
            out[rest.decode("utf-8")] = ConfigStatus.from_json(kv.value)
        except ValueError as e:
            _log.warning("discoverd.sdk: skipping malformed config status %s: %s",
                         kv.key.decode(errors="replace"), e)
    return out


# ------------------------------------------------------------------------------ writes


async def put_config(client: AsyncClient, name: str, document: Document, *,
                     expect_generation: int | None) -> ConfigDocument:
    key = _key(config_key, name)
    value = encode_document(document)
    if expect_generation is None:
        put = await client.put(key, value)
        revision = put.header.revision
        generation = await _generation_at(client, name, revision)
    else:
        revision = await _guarded_put(client, name, key, value, expect_generation)
        generation = expect_generation + 1
    try:
        parsed = decode_document(key, value)
    except ValidationError:  # the members accepted it, so this cannot happen; be safe
        parsed = {}
    doc = ConfigDocument(name, parsed, revision, generation)
    await client._config_cache().store(doc)
    return doc


async def _guarded_put(client: AsyncClient, name: str, key: bytes, value: bytes,
                       expected: int) -> int:
    if type(expected) is not int or expected < 0:
        raise ClientError(f"expect_generation is an int >= 0, not {expected!r}")
    start, end = history_range(name)
    if expected == 0:
        # Never written: no history at all (an entry of a name below this one in the range
        # would refuse the write too — a false conflict, never a lost update).
        compare = [Compare.version(start, range_end=end) == 0]
    else:
        compare = [Compare.version(history_key(name, expected)) > 0,
                   Compare.version(history_key(name, expected + 1)) == 0]
    resp = await client.txn(compare, [Op.put(key, value)],
                            [Op.get(start, range_end=end, keys_only=True)])
    if resp.succeeded:
        return resp.header.revision
    (hist,) = _ranges(resp)
    actual = max((g for g, _ in _generations(name, hist.kvs)), default=0)
    raise ConfigConflict(
        f"config {name!r} is at generation {actual}, not {expected}: it was written "
        "meanwhile; read it again and retry", expected=expected, actual=actual)


async def _generation_at(client: AsyncClient, name: str, revision: int) -> int:
    """The generation written at ``revision`` (the put's own: history entries are written in
    the document's revision and never modified afterwards)."""
    start, end = history_range(name)
    try:
        resp = await client.get(start, range_end=end, keys_only=True, revision=revision,
                                min_mod_revision=revision)
    except Compacted:
        resp = await client.get(start, range_end=end, keys_only=True,
                                min_mod_revision=revision, max_mod_revision=revision)
    for generation, kv in _generations(name, resp.kvs):
        if kv.mod_revision == revision:
            return generation
    return 0


async def put_schema(client: AsyncClient, name: str, schema: Document) -> int:
    key = _key(schema_key, name)
    resp = await client.put(key, encode_document(schema, "schema"))
    return resp.header.revision


async def validate_config(client: AsyncClient, name: str, document: Document) -> None:
    _key(config_key, name)
    await client.call("config_validate", {"name": name, "value": encode_document(document)},
                      retry_safe=True)


async def rollback_config(client: AsyncClient, name: str, generation: int, *,
                          expect_generation: int | None) -> ConfigDocument:
    old = await _get_generation(client, name, generation)
    return await put_config(client, name, old.document, expect_generation=expect_generation)


# ------------------------------------------------------------------------------ watch


class ConfigWatch:
    """A config document, then each change to it. Made by ``AsyncClient.watch_config``::

        async with client.watch_config("app") as docs:
            async for doc in docs:
                if not doc.deleted:
                    apply(doc.document)

    The first item is the document as of entering (``deleted`` when there is none, with
    generation 0 if it never existed). Then one ``ConfigDocument`` per generation, in order
    (a deletion as ``deleted``). It resumes across member failures like every watch; if the
    history it needed was compacted it reads the document again and yields it if it
    changed, so a consumer may miss intermediate generations then, but never the newest.
    """

    def __init__(self, client: AsyncClient, name: str) -> None:
        self._client = client
        self.name = name
        self._key = _key(config_key, name)
        self._range = history_range(name)
        self._watch: Watch | None = None
        self._pending: collections.deque[ConfigDocument] = collections.deque()
        self._generation = -1
        self._state = "new"

    def __repr__(self) -> str:
        return f"<ConfigWatch {self.name!r} {self._state} generation={self._generation}>"

    async def __aenter__(self) -> ConfigWatch:
        if self._state != "new":
            raise ClientError("a config watch can be entered only once")
        self._state = "open"
        try:
            await self._start(retry=False)
        except BaseException:
            self._state = "closed"
            raise
        return self

    async def _start(self, *, retry: bool) -> None:
        """Read the document and watch its history from the next revision."""
        delay = 0.0
        while True:
            if delay:
                await anyio.sleep(delay)
            delay = min(max(delay * 2, _BACKOFF_FIRST), _BACKOFF_MAX)
            try:
                doc, revision = await read_current(self._client, self.name)
                start, end = self._range
                watch = self._client.watch(start, range_end=end, start_revision=revision + 1)
                await watch.__aenter__()
            except WatchCompacted:
                continue
            except Unavailable:
                if not retry:
                    raise
                continue
            self._watch = watch
            if doc.generation != self._generation:
                self._queue(doc)
            return

    def _queue(self, doc: ConfigDocument) -> None:
        self._generation = doc.generation
        self._pending.append(doc)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop watching; an iteration in progress (in another task) ends. Idempotent."""
        self._state = "closed"
        watch, self._watch = self._watch, None
        if watch is not None:
            await watch.aclose()

    def __aiter__(self) -> ConfigWatch:
        if self._state == "new":
            raise ClientError("enter the watch first: 'async with client.watch_config(...) "
                              "as docs: async for doc in docs: ...'")
        return self

    async def __anext__(self) -> ConfigDocument:
        while not self._pending:
            watch = self._watch
            if watch is None or self._state != "open":
                raise StopAsyncIteration
            try:
                resp = await watch.__anext__()
            except WatchCompacted:
                self._watch = None
                await self._start(retry=True)
                continue
            for generation, kv in _generations(self.name,
                                               tuple(e.kv for e in resp.events
                                                     if e.type == "PUT")):
                entry = _entry(kv)
                if entry is None or generation <= self._generation:
                    continue
                self._queue(ConfigDocument(self.name, entry.document or {}, entry.revision,
                                           generation, deleted=entry.deleted))
        doc = self._pending.popleft()
        cache = self._client._config_cache()
        if doc.deleted:
            await cache.forget(self.name)
        else:
            await cache.store(doc)
        return doc


# ------------------------------------------------------------------------------ handle


class ConfigHandle:
    """A consumer of a config document that says what it runs. Made by
    ``AsyncClient.config_handle``::

        async with client.config_handle("app", on_change=reconfigure) as handle:
            ...   # reconfigure(doc) has run for the current document already

    Entering reads the document, calls ``on_change(doc)`` (a function or a coroutine
    function), and reports ``ConfigStatus(generation, applied, error)`` at
    ``/config-status/<name>/<instance>``; a background task in the client's task group then
    does the same for every new generation. ``applied`` is False, with the exception as
    ``error``, when ``on_change`` raised (the handle goes on). Deletions are not passed to
    ``on_change``: the application keeps running what it has, and the status keeps saying
    which generation that is. The report is on a kept-alive lease of the handle's own, so
    it disappears with the process (or on ``aclose``) and comes back after a lost lease.
    """

    def __init__(self, client: AsyncClient, name: str, *, instance: str,
                 on_change: ChangeCallback, ttl: int) -> None:
        self._client = client
        self.name = name
        self.instance = instance
        self._on_change = on_change
        self._status_key = self._make_key(name, instance)
        self._record = LeasedKey(client, self._status_key, ttl, what="config status")
        self._watch = ConfigWatch(client, name)
        self.document: ConfigDocument | None = None
        """The last document passed to ``on_change`` (None before any existed)."""
        self.status: ConfigStatus | None = None
        """The last status reported."""
        self._scope: anyio.CancelScope | None = None
        self._finished: anyio.Event | None = None
        self._state = "new"

    @staticmethod
    def _make_key(name: str, instance: str) -> bytes:
        try:
            return status_key(name, instance)
        except ValueError as e:
            raise ClientError(str(e)) from None

    def __repr__(self) -> str:
        return f"<ConfigHandle {self.name!r} instance={self.instance!r} status={self.status}>"

    async def __aenter__(self) -> ConfigHandle:
        if self._state != "new":
            raise ClientError("a config handle can be entered only once")
        tg = self._client._task_group()
        self._state = "open"
        try:
            await self._record.open(None)
            await self._watch.__aenter__()
            await self._apply(await self._watch.__anext__())
            await tg.start(self._follow)
        except BaseException:
            self._state = "closed"
            with anyio.CancelScope(shield=True):
                await self._watch.aclose()
                await self._record.close()
            raise
        self._client._closables[self] = None
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop following the document and withdraw the status report. Idempotent."""
        if self._state == "closed":
            return
        self._state = "closed"
        self._client._closables.pop(self, None)
        with anyio.CancelScope(shield=True):
            if self._scope is not None:
                self._scope.cancel()
            if self._finished is not None:
                await self._finished.wait()
            await self._watch.aclose()
            await self._record.close()

    async def _follow(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                      ) -> None:
        self._finished = anyio.Event()
        try:
            with anyio.CancelScope() as scope:
                self._scope = scope
                task_status.started()
                async for doc in self._watch:
                    await self._apply(doc)
        except DiscoverdError as e:
            _log.error("discoverd.sdk: the config handle of %r stopped following it: %s",
                       self.name, e)
        finally:
            self._finished.set()

    async def _apply(self, doc: ConfigDocument) -> None:
        if doc.deleted:
            if doc.generation:
                _log.info("discoverd.sdk: config %r deleted (generation %d); keeping the "
                          "current one", self.name, doc.generation)
            return
        self.document = doc
        try:
            result = self._on_change(doc)
            if inspect.isawaitable(result):
                await result
        except Exception as e:
            _log.exception("discoverd.sdk: applying generation %d of config %r failed",
                           doc.generation, self.name)
            status = ConfigStatus(doc.generation, False, f"{type(e).__name__}: {e}")
        else:
            status = ConfigStatus(doc.generation, True)
        self.status = status
        try:
            await self._record.set(status.to_json())
        except DiscoverdError as e:
            # The report is written again when the lease is re-granted, and replaced by the
            # next generation's; the application's state is what it is either way.
            _log.warning("discoverd.sdk: reporting the status of config %r failed: %s",
                         self.name, e)

