"""The sidecar agent (DESIGN §11, docs/agent.md): a directory of config files and a prefix
of the cluster, kept in sync through the SDK — the I/O shell around ``sync_core``.

One task, the *actor*, owns every decision and every file write: it takes one input at a
time from its inbox (a file that settled, the cluster's listing or a batch of its changes, a
retry tick), asks the core what follows, writes files and pushes documents itself, then
persists what changed. Because pushes are awaited inside the actor, the core always learns
a push's outcome before any later event from the cluster — so a write of ours is never
mistaken for somebody else's.

Around it: a watchdog observer thread whose events are debounced per document (an editor's
save — backup, temp file, rename, partial writes — settles into one change; a document is
read only when its file has been quiet for ``debounce`` seconds); an informer (list, then
watch) of the prefix that survives member failures and re-lists after compaction; an exec
runner; an optional registration of the sidecar's own service; and the state store
(diskcache) holding each document's record, pending pushes and last-known copies, so that
the agent serves files and keeps local edits while no member answers, and resumes after a
restart without pushing anything twice.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
import diskcache  # type: ignore[import-untyped]
import structlog
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from discoverd.agents import files
from discoverd.agents.files import Content, DocumentError, UnsafeName
from discoverd.agents.sync_core import (
    UNKNOWN,
    Action,
    DocState,
    Note,
    Pending,
    SyncCore,
    WriteFile,
)
from discoverd.errors import ClientError, DiscoverdError, Unavailable, ValidationError
from discoverd.sdk import (
    AsyncClient,
    Compare,
    Op,
    RangeResponse,
    Registration,
    Resync,
    Snapshot,
)

_BACKOFF_FIRST = 0.2
_BACKOFF_MAX = 5.0
_PUSH_TIMEOUT = 3.0
STATE_DIRNAME = ".discoverd-agent"
_RESCAN = "\x00rescan"  # the debouncer's key for "scan the whole directory"


@dataclass(frozen=True, slots=True)
class AgentOptions:
    directory: Path
    prefix: str = "/config/"
    push: bool = True
    pull: bool = True
    delete: bool = False
    exec_command: str | None = None
    exec_timeout: float = 60.0
    debounce: float = 0.25
    state_dir: Path | None = None
    register: str | None = None
    register_port: int | None = None
    register_ttl: int = 10
    register_address: str | None = None
    pull_format: str = "json"

    @property
    def state_path(self) -> Path:
        return self.state_dir if self.state_dir is not None else \
            self.directory / STATE_DIRNAME


def normalize_prefix(prefix: str) -> str:
    if not prefix.startswith("/"):
        raise ClientError(f"--prefix {prefix!r} must start with '/'")
    return prefix if prefix.endswith("/") else prefix + "/"


class StateStore:
    """The agent's durable memory in a diskcache directory: one record per document and
    whether the prefix was ever listed."""

    def __init__(self, path: Path, prefix: str) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self._cache = diskcache.Cache(str(path))
        self._scope = prefix

    def load(self) -> tuple[dict[str, DocState], bool]:
        states: dict[str, DocState] = {}
        head = f"{self._scope}\x00doc\x00"
        for key in list(self._cache.iterkeys()):
            if isinstance(key, str) and key.startswith(head):
                obj = self._cache.get(key)
                if isinstance(obj, dict):
                    states[key[len(head):]] = DocState.from_obj(obj)
        return states, bool(self._cache.get(f"{self._scope}\x00observed", False))

    def save(self, core: SyncCore) -> None:
        if not core.dirty:
            return
        with self._cache.transact():
            for name in sorted(core.dirty):
                key = f"{self._scope}\x00doc\x00{name}"
                st = core.states.get(name)
                if st is None or (st.remote is None and st.local is None and st.pending is None):
                    self._cache.delete(key)
                    core.states.pop(name, None)
                else:
                    self._cache.set(key, st.to_obj())
            self._cache.set(f"{self._scope}\x00observed", core.observed)
        core.dirty.clear()

    def close(self) -> None:
        self._cache.close()


class Debouncer:
    """Per-name quiet windows: ``touch`` (re)starts a name's window; ``due`` waits for the
    first name whose window has passed."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._due: dict[str, float] = {}
        self._wake = anyio.Event()

    def touch(self, name: str) -> None:
        self._due[name] = anyio.current_time() + self.window
        self._wake.set()

    async def due(self) -> list[str]:
        while True:
            now = anyio.current_time()
            ready = sorted(n for n, t in self._due.items() if t <= now)
            if ready:
                for n in ready:
                    del self._due[n]
                return ready
            self._wake = anyio.Event()
            deadline = min(self._due.values(), default=math.inf)
            with anyio.move_on_after(deadline - now if deadline < math.inf else math.inf):
                await self._wake.wait()


class ExecRunner:
    """Runs the ``--exec`` command after files changed: once for every change that arrives
    within a debounce window, never two at a time, never twice within one window; the
    changed names and files are in its environment."""

    def __init__(self, command: str, *, window: float, timeout: float, directory: Path,
                 prefix: str, log: Any) -> None:
        self.command = command
        self.window = window
        self.timeout = timeout
        self.directory = directory
        self.prefix = prefix
        self.log = log
        self.runs = 0
        self._names: set[str] = set()
        self._paths: set[str] = set()
        self._wake = anyio.Event()
        self._last_start = -math.inf

    def changed(self, name: str, path: Path) -> None:
        self._names.add(name)
        self._paths.add(str(path))
        self._wake.set()

    async def flush(self) -> None:
        """Run now for the changes collected so far, if any (``--once``)."""
        names, paths = sorted(self._names), sorted(self._paths)
        self._names.clear()
        self._paths.clear()
        if names:
            self._last_start = anyio.current_time()
            await self._run_once(names, paths)

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            # Let the rest of this burst arrive, and keep one window between two starts.
            await anyio.sleep(max(self.window,
                                  self._last_start + self.window - anyio.current_time()))
            await self.flush()

    async def _run_once(self, names: list[str], paths: list[str]) -> None:
        env = dict(os.environ, DISCOVERD_CHANGED=" ".join(names),
                   DISCOVERD_CHANGED_FILES=os.pathsep.join(paths),
                   DISCOVERD_AGENT_DIR=str(self.directory), DISCOVERD_PREFIX=self.prefix)
        self.runs += 1
        started = time.monotonic()
        process = await anyio.open_process(self.command, stdin=None, stdout=None, stderr=None,
                                           env=env, start_new_session=True)
        code: int | None = None
        try:
            with anyio.move_on_after(self.timeout):
                code = await process.wait()
        finally:
            if code is None:
                _kill_group(process)
                with anyio.CancelScope(shield=True):
                    await process.wait()
        seconds = round(time.monotonic() - started, 3)
        if code is None:
            self.log.error("agent.exec_timeout", command=self.command, changed=names,
                           timeout=self.timeout)
        elif code != 0:
            self.log.error("agent.exec_failed", command=self.command, changed=names,
                           exit_code=code, seconds=seconds)
        else:
            self.log.info("agent.exec", command=self.command, changed=names, seconds=seconds)


def _kill_group(process: anyio.abc.Process) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        process.kill()


class _DirHandler(FileSystemEventHandler):
    """watchdog's thread → the event loop: a document touched, or the tree re-shaped."""

    def __init__(self, agent: Agent, token: Any) -> None:
        self._agent = agent
        self._token = token

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        paths = [event.src_path, getattr(event, "dest_path", "") or ""]
        rescan = event.is_directory and event.event_type in ("moved", "deleted", "created")
        with contextlib.suppress(RuntimeError):  # the event loop is gone: we are stopping
            anyio.from_thread.run_sync(self._agent.touched, [os.fsdecode(p) for p in paths
                                                            if p], rescan, token=self._token)


class Agent:
    def __init__(self, options: AgentOptions, client: AsyncClient, *, log: Any = None) -> None:
        if not options.push and not options.pull:
            raise ClientError("the agent needs --push, --pull or both")
        self.options = options
        self.root = options.directory.resolve()
        self.prefix = normalize_prefix(options.prefix)
        self.client = client
        self.log = log if log is not None else structlog.get_logger("discoverd.agent")
        self.store = StateStore(options.state_path, self.prefix)
        states, observed = self.store.load()
        self.core = SyncCore(push=options.push, pull=options.pull, delete=options.delete,
                             states=states, observed=observed)
        self.debouncer = Debouncer(options.debounce)
        self.exec: ExecRunner | None = None
        if options.exec_command:
            self.exec = ExecRunner(options.exec_command, window=options.debounce,
                                   timeout=options.exec_timeout, directory=self.root,
                                   prefix=self.prefix, log=self.log)
        send, receive = anyio.create_memory_object_stream[tuple[str, Any]](math.inf)
        self._send, self._inbox = send, receive
        self.online = False
        self._backoff = _BACKOFF_FIRST
        self._retry_at = math.inf
        self._warned_twins: set[str] = set()
        self.changes = 0
        self._announced_offline = False
        """Files written or removed by pulls (``--once`` reports it)."""

    # ------------------------------------------------------------------ inputs

    def touched(self, paths: list[str], rescan: bool) -> None:
        """Called on the event loop for every file-system event. A directory created,
        moved or removed re-shapes the tree: the whole directory is scanned again (once
        it is quiet too)."""
        for p in paths:
            if rescan and files.visible(self.root, Path(p)):
                self.debouncer.touch(_RESCAN)
            named = files.name_of(self.root, Path(p))
            if named is not None:
                self.debouncer.touch(named[0])

    def _read_local(self, name: str) -> tuple[Content | None, Path | None, str | None]:
        """The document in ``name``'s file now: ``(content, path, problem)``."""
        candidates = [files.path_of(self.root, name, fmt) for fmt in ("json", "toml")]
        present = [p for p in candidates if p.exists()]
        if len(present) == 2 and name not in self._warned_twins:
            self._warned_twins.add(name)
            self.log.warning("agent.duplicate_files", name=name, used=str(present[0]),
                             ignored=str(present[1]))
        if not present:
            return None, None, None
        path = present[0]
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None, None, None
        except OSError as e:
            return None, path, str(e)
        try:
            return files.parse_file(raw, files.FORMATS[path.suffix]), path, None
        except DocumentError as e:
            return None, path, str(e)

    def _local_input(self, name: str, *, startup: bool = False) -> list[Action]:
        content, path, problem = self._read_local(name)
        if problem is not None:
            # A partial write or a syntax error: wait for the next change of the file.
            self.log.warning("agent.unreadable", name=name, file=str(path), error=problem)
            return []
        return self.core.local(name, content, startup=startup)

    def _remote_content(self, name: str, value: bytes) -> Content:
        try:
            return files.parse_remote(value)
        except DocumentError as e:
            self.log.warning("agent.remote_not_a_document", name=name, error=str(e))
            return Content(value, "raw:" + Content.of(value.hex()).digest)

    def _name_of_key(self, key: bytes) -> str | None:
        try:
            name = key.decode("utf-8")[len(self.prefix):]
            files.check_name(name)
        except (UnicodeDecodeError, UnsafeName) as e:
            self.log.error("agent.unsafe_name", key=key.decode("utf-8", "replace"),
                           error=str(e))
            return None
        return name

    def _listing_input(self, kvs: Iterable[Any], revision: int) -> list[Action]:
        docs: dict[str, tuple[Content, int]] = {}
        for kv in kvs:
            name = self._name_of_key(kv.key)
            if name is not None:
                docs[name] = (self._remote_content(name, kv.value), kv.mod_revision)
        return self.core.listing(docs, revision)

    def _events_input(self, resp: Any) -> list[Action]:
        actions: list[Action] = []
        for event in resp.events:
            name = self._name_of_key(event.kv.key)
            if name is None:
                continue
            if event.type.value == "PUT":
                actions += self.core.remote(name, self._remote_content(name, event.kv.value),
                                            event.kv.mod_revision, event.kv.mod_revision)
            else:
                actions += self.core.remote(name, None, 0, event.kv.mod_revision)
        return actions

    # ------------------------------------------------------------------ outputs

    def _carry_out(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Note):
                getattr(self.log, action.level)(action.event, **action.fields)
            elif isinstance(action, WriteFile):
                self._write(action)

    def _target(self, name: str) -> Path:
        for fmt in ("json", "toml"):
            path = files.path_of(self.root, name, fmt)
            if path.exists():
                return path
        return files.path_of(self.root, name, self.options.pull_format)

    def _write(self, action: WriteFile) -> None:
        path = self._target(action.name)
        keep = action.keep
        if not keep:
            # Edited since the agent last read it (the edit is still in its debounce window)?
            content, _, problem = self._read_local(action.name)
            found = content.digest if content is not None else None
            keep = problem is not None or found != action.replaces
        if keep:
            copy = files.keep_copy(path, action.tag)
            if copy is not None:
                self.log.warning("agent.kept_local_copy", name=action.name, file=str(copy))
        if action.content is None:
            if files.remove(path):
                self.log.info("agent.pulled", name=action.name, file=str(path), deleted=True)
                self._changed(action.name, path)
            return
        try:
            data = files.render(action.content, files.FORMATS[path.suffix])
        except DocumentError as e:
            self.log.error("agent.cannot_write", name=action.name, file=str(path),
                           error=str(e))
            return
        try:
            if path.read_bytes() == data:
                return
        except OSError:
            pass
        files.write_atomic(path, data)
        self.log.info("agent.pulled", name=action.name, file=str(path))
        self._changed(action.name, path)

    def _changed(self, name: str, path: Path) -> None:
        self.changes += 1
        if self.exec is not None:
            self.exec.changed(name, path)

    # ------------------------------------------------------------------ pushing

    async def _push_pending(self) -> None:
        """Try every pushable local change once; on an unreachable cluster, back off."""
        self._retry_at = math.inf
        for name, pending in self.core.pending():
            if pending.base == UNKNOWN:
                continue  # settled by the first listing
            try:
                with anyio.fail_after(_PUSH_TIMEOUT):
                    await self._push(name, pending)
            except ValidationError as e:
                self._carry_out(self.core.refused(name, pending, str(e), [
                    v.get("message", "") if not v.get("path") else
                    f"{v.get('path')}: {v.get('message', '')}" for v in e.violations]))
            except (Unavailable, TimeoutError) as e:
                self._offline(e)
                return
            except ClientError as e:
                self._carry_out(self.core.refused(name, pending, str(e), []))
            self._online()  # any answer, a refusal included, says the cluster is there
            self.store.save(self.core)

    async def _push(self, name: str, pending: Pending) -> None:
        key = (self.prefix + name).encode("utf-8")
        op = Op.put(key, pending.content.value) if pending.content is not None \
            else Op.delete(key)
        resp = await self.client.txn([Compare.mod(key) == pending.base], [op], [Op.get(key)])
        if resp.succeeded:
            self._carry_out(self.core.pushed(name, pending, resp.header.revision))
            return
        got = resp.responses[0] if resp.responses else None
        kvs = got.kvs if isinstance(got, RangeResponse) else ()
        if kvs:
            kv = kvs[0]
            actions = self.core.remote(name, self._remote_content(name, kv.value),
                                       kv.mod_revision, resp.header.revision)
        else:
            actions = self.core.remote(name, None, 0, resp.header.revision)
        self._carry_out(actions)

    def _offline(self, error: BaseException) -> None:
        if self.online or not self._announced_offline:
            self._announced_offline = True
            self.log.warning("agent.offline", error=str(error) or type(error).__name__,
                             pending=[n for n, _ in self.core.pending()])
        else:
            self.log.debug("agent.still_offline", error=str(error) or type(error).__name__,
                           retry_in=self._backoff)
        self.online = False
        self._retry_at = anyio.current_time() + self._backoff * random.uniform(0.8, 1.2)
        self._backoff = min(self._backoff * 2, _BACKOFF_MAX)

    def _online(self) -> None:
        if not self.online:
            self.log.info("agent.online", endpoint=self.client.endpoint)
        self.online = True
        self._backoff = _BACKOFF_FIRST
        self._retry_at = math.inf

    # ------------------------------------------------------------------ running

    def scan(self, *, startup: bool) -> None:
        names = set(files.scan(self.root)) | {n for n, st in self.core.states.items()
                                              if st.local is not None}
        for name in sorted(names):
            self._carry_out(self._local_input(name, startup=startup))

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        """Sync until cancelled (SIGTERM/SIGINT end it from ``run_agent``)."""
        self.root.mkdir(parents=True, exist_ok=True)
        token = anyio.lowlevel.current_token()
        observer = Observer()
        observer.schedule(_DirHandler(self, token), str(self.root), recursive=True)
        observer.daemon = True
        observer.start()
        registration: list[Registration] = []
        try:
            # The observer runs first, so nothing written during the scan is missed.
            self.scan(startup=True)
            self.store.save(self.core)
            self.log.info("agent.started", dir=str(self.root), prefix=self.prefix,
                          push=self.options.push, pull=self.options.pull,
                          delete=self.options.delete, documents=len(self.core.states),
                          pending=len(self.core.pending()))
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._follow_cluster)
                tg.start_soon(self._settle_files)
                if self.exec is not None:
                    tg.start_soon(self.exec.run)
                if self.options.register:
                    tg.start_soon(self._keep_registered, registration)
                task_status.started()
                await self._act()
        finally:
            with anyio.CancelScope(shield=True):
                for reg in registration:
                    with anyio.move_on_after(2):
                        await reg.close()
                await anyio.to_thread.run_sync(observer.stop)
                await anyio.to_thread.run_sync(observer.join, 5)
                self.store.save(self.core)
                self.store.close()
                self.log.info("agent.stopped", pending=[n for n, _ in self.core.pending()])

    async def _act(self) -> None:
        """The actor: one input at a time, then pushes, then persistence."""
        while True:
            timeout = self._retry_at - anyio.current_time()
            item: tuple[str, Any] | None = None
            with anyio.move_on_after(max(timeout, 0)):
                item = await self._inbox.receive()
            actions: list[Action] = []
            # Push after a local change unless backing off; after the cluster spoke (it is
            # reachable, whatever the backoff said); and when the backoff is over.
            push = item is None or self._retry_at == math.inf
            if item is not None:
                kind, value = item
                if kind == "local":
                    for name in value:
                        actions += self._local_input(name)
                elif kind == "rescan":
                    self.scan(startup=False)
                else:
                    self._online()
                    push = True
                    actions += (self._listing_input(*value) if kind == "listing"
                                else self._events_input(value))
            self._carry_out(actions)
            if push and self.core.pending():
                await self._push_pending()
            self.store.save(self.core)

    async def _settle_files(self) -> None:
        while True:
            names = await self.debouncer.due()
            if _RESCAN in names:
                await self._send.send(("rescan", None))
            else:
                await self._send.send(("local", names))

    async def _follow_cluster(self) -> None:
        """The prefix's listing, then its changes — resumed by the SDK across member
        failures; only the first listing can fail, and is retried with backoff."""
        delay = _BACKOFF_FIRST
        while True:
            try:
                async with self.client.watch_prefix(self.prefix) as informer:
                    async for item in informer:
                        delay = _BACKOFF_FIRST
                        if isinstance(item, Snapshot | Resync):
                            await self._send.send(("listing", (item.kvs, item.revision)))
                        elif item.events:
                            await self._send.send(("events", item))
            except DiscoverdError as e:
                self.log.warning("agent.cluster_unreachable", error=str(e) or type(e).__name__,
                                 serving="the files as last synced", retry_in=delay)
                await anyio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, _BACKOFF_MAX)

    async def _keep_registered(self, out: list[Registration]) -> None:
        opts = self.options
        delay = _BACKOFF_FIRST
        while True:
            reg = self.client.register(opts.register or "", port=opts.register_port,
                                       ttl=opts.register_ttl, address=opts.register_address)
            try:
                await reg.start()
            except Unavailable as e:
                self.log.warning("agent.register_failed", service=opts.register, error=str(e),
                                 retry_in=delay)
                await anyio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX)
                continue
            out.append(reg)
            self.log.info("agent.registered", service=opts.register, id=reg.id,
                          lease=reg.lease_id, ttl=reg.ttl)
            return

    async def run_once(self) -> bool:
        """Sync both ways once and return: True if the cluster answered."""
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            self.scan(startup=True)
            try:
                resp = await self.client.get(self.prefix.encode("utf-8"), prefix=True)
            except Unavailable as e:
                self.log.error("agent.cluster_unreachable", error=str(e),
                               serving="the files as last synced",
                               pending=len(self.core.pending()))
                return False
            self._online()
            self._carry_out(self._listing_input(resp.kvs, resp.header.revision))
            await self._push_pending()
            if not self.online:
                return False
            if self.exec is not None:
                await self.exec.flush()
            self.log.info("agent.synced", revision=resp.header.revision,
                          documents=len(self.core.states), changed=self.changes)
            return True
        finally:
            self.store.save(self.core)
            self.store.close()


async def run_agent(options: AgentOptions, *, endpoints: list[str], dial_timeout: float,
                    command_timeout: float, once: bool, log: Any = None,
                    cacert: str | None = None, cert: str | None = None,
                    key: str | None = None, user: str | None = None,
                    password: str | None = None) -> int:
    """The agent until SIGTERM/SIGINT (exit 0), or one sync with ``once`` (exit 1 if the
    cluster did not answer). ``cacert``/``cert``/``key``: the CLI's TLS flags;
    ``user``/``password``: its credentials (the SDK logs in again when a token expires)."""
    log = log if log is not None else structlog.get_logger("discoverd.agent")
    async with AsyncClient(endpoints, dial_timeout=dial_timeout,
                           command_timeout=command_timeout, cacert=cacert, cert=cert, key=key,
                           user=user, password=password,
                           cache_dir=options.state_path / "sdk-cache") as client:
        agent = Agent(options, client, log=log)
        if once:
            return 0 if await agent.run_once() else 1
        async with anyio.create_task_group() as tg:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                tg.start_soon(agent.run)
                async for signum in signals:
                    log.info("agent.stopping", signal=signal.Signals(signum).name)
                    tg.cancel_scope.cancel()
                    break
    return 0

