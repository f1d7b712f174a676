"""Services (DESIGN §7): registering an instance, discovering instances, following the live
set, and picking one.

A registration is a ``ServiceInstance`` (``wire/registry_codec.py``, the one format the
members validate against) at ``/services/<service>/<id>`` on a kept-alive lease: a living
owner keeps it, a dead one disappears within its TTL, an owner that lost its lease writes it
again (``_leased.LeasedKey``). Discovery is a linearizable prefix read; following is the
``watch_prefix`` informer turned into consistent, filtered instance sets; a ``Picker`` chooses
from the latest set locally, so picking costs no round trip.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import functools
import itertools
import logging
import os
import random
import re
import secrets
import socket
import threading
import time
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anyio.to_thread

from discoverd.errors import ClientError, DiscoverdError, ValidationError
from discoverd.sdk._errors import NoInstances
from discoverd.sdk._leased import LeasedKey
from discoverd.sdk._types import KeyValue, Resync, Snapshot, WatchEvent, WatchResponse
from discoverd.wire.registry_codec import (
    Health,
    ServiceInstance,
    filter_instances,
    instance_violations,
    service_key,
    service_prefix,
    sort_violations,
)

if TYPE_CHECKING:
    from discoverd.sdk._client import AsyncClient
    from discoverd.sdk._watch import Informer

_log = logging.getLogger("discoverd.sdk")

DEFAULT_TTL = 10
STRATEGIES = ("random", "round_robin")
UPDATABLE = frozenset(
    {"address", "port", "tags", "meta", "weight", "zone", "version", "health"})
"""What ``Registration.update`` may change: everything but the identity (service, id)."""

_PROBE_ADDRESS = ("8.8.8.8", 53)
"""Any public address: connecting a UDP socket towards it sends nothing, but makes the
kernel choose the source address of the default route — the host's primary address."""


# ------------------------------------------------------------------------------ defaults


@functools.lru_cache(maxsize=1)
def primary_address() -> str:
    """The address other hosts most likely reach this one at: the source address of the
    default route; else what the hostname resolves to; else 127.0.0.1. Computed once per
    process (it may block on DNS: call it from a worker thread)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(_PROBE_ADDRESS)
            address = str(s.getsockname()[0])
            if address and address != "0.0.0.0":
                return address
    except OSError:
        pass
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def generate_instance_id() -> str:
    """``<hostname>-<pid>-<random>``: readable in listings (which host, which process), and
    unique even when a process registers the same service twice or a pid is reused."""
    host = _UNSAFE.sub("-", socket.gethostname().split(".")[0]).strip("-") or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


def _health(value: Health | str) -> Health:
    try:
        return Health(value)
    except ValueError:
        raise ClientError(f"health must be one of {', '.join(h.value for h in Health)}, "
                          f"not {value!r}") from None


def _tags(tags: Iterable[str]) -> tuple[str, ...]:
    # A bare string would otherwise become one tag per character.
    return (tags,) if isinstance(tags, str) else tuple(tags)


def _check(instance: ServiceInstance) -> None:
    """Refuse locally what the members would refuse at apply time (same rules, same
    violations), before any lease is granted."""
    problems = instance_violations(instance.key, instance.to_obj())
    if problems:
        raise ValidationError(violations=sort_violations(problems))


def health_set(health: Iterable[Health | str] | None, include_warning: bool) -> set[Health]:
    """The healths a discovery wants: ``None`` means every one."""
    if health is None:
        return set(Health)
    if isinstance(health, str):
        health = (health,)
    wanted = {_health(h) for h in health}
    if include_warning:
        wanted.add(Health.WARNING)
    return wanted


# ------------------------------------------------------------------------------ register


class Registration:
    """One registered instance, kept alive in the background. Made by
    ``AsyncClient.register``; either awaited or used as a context manager::

        reg = await client.register("api", port=8080)
        ...
        await reg.close()

        async with client.register("api", port=8080) as reg:
            ...

    Registering grants a lease of ``ttl`` seconds, writes the instance on it, and renews
    the lease in the client's task group. If the lease is lost (the process was paused past
    its TTL, the cluster was unreachable, somebody revoked it), a new one is granted and the
    instance written again — same id — so a living process does not stay deregistered.
    ``close()`` deregisters at once (lease revoked, record deleted); the client's ``aclose``
    closes every registration still open.
    """

    def __init__(self, client: AsyncClient, instance: ServiceInstance, ttl: int, *,
                 resolve_address: bool) -> None:
        self._client = client
        self._instance = instance
        self._ttl = ttl
        self._resolve_address = resolve_address
        self._record: LeasedKey | None = None
        self._state = "new"
        self._done: anyio.Event | None = None

    def __repr__(self) -> str:
        return (f"<Registration {self._instance.service}/{self._instance.id} "
                f"lease={self.lease_id} {self._state}>")

    @property
    def instance(self) -> ServiceInstance:
        """The instance as last written (its ``address`` is filled in once started)."""
        return self._instance

    @property
    def id(self) -> str:
        return self._instance.id

    @property
    def service(self) -> str:
        return self._instance.service

    @property
    def key(self) -> bytes:
        return self._instance.key

    @property
    def lease_id(self) -> int:
        """The lease the record is on now (it changes when the lease is re-granted)."""
        return self._record.lease_id if self._record is not None else 0

    @property
    def ttl(self) -> int:
        """The TTL granted (members raise a TTL below their minimum)."""
        return self._record.ttl if self._record is not None else 0

    @property
    def closed(self) -> bool:
        return self._state == "closed"

    # ------------------------------------------------------------------ lifecycle

    def __await__(self) -> Generator[Any, None, Registration]:
        return self.start().__await__()

    async def __aenter__(self) -> Registration:
        if self._state == "open":  # ``async with await client.register(...)``
            return self
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> Registration:
        """Register: grant the lease, write the instance, start the keep-alives."""
        if self._state != "new":
            raise ClientError("a registration is started only once")
        self._client._task_group()  # a closed or un-entered client says so here
        self._state = "starting"
        try:
            if self._resolve_address:
                address = await anyio.to_thread.run_sync(primary_address)
                self._instance = dataclasses.replace(self._instance, address=address)
            self._instance = dataclasses.replace(self._instance, registered_at=time.time())
            record = LeasedKey(self._client, self._instance.key, self._ttl,
                               what="registration")
            await record.open(self._instance.to_json())
        except BaseException:
            self._state = "closed"
            raise
        self._record = record
        self._state = "open"
        self._client._closables[self] = None
        return self

    async def set_health(self, health: Health | str) -> None:
        """Change the instance's health (same lease, same id): ``"draining"`` takes it out
        of default discovery and pickers while it finishes its work."""
        await self.update(health=health)

    async def update(self, **fields: Any) -> None:
        """Change any of ``address port tags meta weight zone version health`` and write the
        instance again on the same lease."""
        unknown = set(fields) - UPDATABLE
        if unknown:
            raise ClientError(f"cannot update {', '.join(sorted(unknown))} of a registration "
                              f"(updatable: {', '.join(sorted(UPDATABLE))})")
        if self._state != "open" or self._record is None:
            raise ClientError("the registration is not open")
        if "health" in fields:
            fields["health"] = _health(fields["health"])
        if "tags" in fields:
            fields["tags"] = _tags(fields["tags"])
        if "meta" in fields:
            fields["meta"] = dict(fields["meta"] or {})
        instance = dataclasses.replace(self._instance, **fields)
        _check(instance)
        self._instance = instance
        await self._record.set(instance.to_json())

    async def close(self) -> None:
        """Deregister: stop the keep-alives, revoke the lease and delete the record (best
        effort, bounded by the client's ``command_timeout``). Idempotent; a second caller
        waits for the first to finish."""
        if self._state == "closed":
            if self._done is not None:
                await self._done.wait()
            return
        was_open = self._state == "open"
        self._state = "closed"
        self._client._closables.pop(self, None)
        if not was_open or self._record is None:
            return
        self._done = anyio.Event()
        try:
            await self._record.close()
        finally:
            self._done.set()

    aclose = close


def build_instance(
    service: str,
    *,
    address: str | None,
    port: int | None,
    id: str | None,
    tags: Iterable[str],
    meta: Mapping[str, str] | None,
    weight: int,
    zone: str,
    version: str,
    health: Health | str,
) -> ServiceInstance:
    """The instance to register (address filled in later when not given), checked."""
    if not isinstance(service, str):
        raise ClientError(f"a service name is a str, not {type(service).__name__}")
    instance_id = id if id is not None else generate_instance_id()
    try:
        service_key(service, instance_id)
    except ValueError as e:
        raise ClientError(str(e)) from None
    instance = ServiceInstance(
        service=service, id=instance_id, address=address or "", port=port,
        tags=_tags(tags), meta=dict(meta or {}), weight=weight, zone=zone, version=version,
        health=_health(health), registered_at=time.time())
    _check(instance)
    return instance


# ------------------------------------------------------------------------------ discover


def decode_instance(kv: KeyValue) -> ServiceInstance | None:
    """The instance in ``kv``, or ``None`` (logged) if it is not one. Members refuse
    malformed records, but a record written before validation existed, or by a newer
    writer, must not take discovery down for everybody."""
    try:
        return ServiceInstance.from_json(kv.key, kv.value)
    except ValidationError as e:
        _log.warning("discoverd.sdk: skipping malformed service record %s: %s",
                     kv.key.decode(errors="replace"), e)
        return None


def select(instances: Iterable[ServiceInstance], *, tags: Iterable[str],
           meta: Mapping[str, str] | None, health: set[Health]) -> list[ServiceInstance]:
    return filter_instances(instances, tags=_tags(tags), meta=meta, health=health)


async def discover(
    client: AsyncClient,
    service: str | None,
    *,
    tags: Iterable[str],
    meta: Mapping[str, str] | None,
    health: Iterable[Health | str] | None,
    include_warning: bool,
) -> list[ServiceInstance]:
    wanted = health_set(health, include_warning)
    prefix = _prefix(service)
    resp = await client.get(prefix, prefix=True)
    instances = [inst for kv in resp.kvs if (inst := decode_instance(kv)) is not None]
    return select(instances, tags=tags, meta=meta, health=wanted)


def _prefix(service: str | None) -> bytes:
    try:
        return service_prefix(service)
    except ValueError as e:
        raise ClientError(str(e)) from None


# ------------------------------------------------------------------------------ watch


@dataclass(frozen=True, slots=True)
class ServiceSet:
    """The matching instances of a service as of ``revision``, and how they differ from
    the previous set: ``added`` and ``updated`` hold the new values, ``removed`` the last
    values seen. The first set of a watch has everything in ``added``.

    Instances are sorted by key (by id, for one service). A set is yielded only when the
    matching instances changed: an instance leaving the filter (its health became
    ``draining``, say) is ``removed``, one entering it ``added``.
    """

    instances: tuple[ServiceInstance, ...]
    added: tuple[ServiceInstance, ...]
    removed: tuple[ServiceInstance, ...]
    updated: tuple[ServiceInstance, ...]
    revision: int

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(i.id for i in self.instances)


class ServiceWatch:
    """Consistent instance sets of a service, following its changes. Made by
    ``AsyncClient.watch_services``::

        async with client.watch_services("api") as sets:
            async for s in sets:
                update_pool(s.instances)

    Built on the ``watch_prefix`` informer: the first set is the full current one, then one
    set per revision that changed the matching instances (all changes of one revision — a
    txn, a lease expiring — arrive together, never half-applied). It resumes across member
    failures without gaps or duplicates, and when the history it needed was compacted it
    re-lists and yields the difference as one set.
    """

    def __init__(self, client: AsyncClient, service: str | None, *, tags: Iterable[str],
                 meta: Mapping[str, str] | None, health: set[Health]) -> None:
        self._client = client
        self._prefix = _prefix(service)
        self._tags = _tags(tags)
        self._meta = dict(meta or {})
        self._health = health
        self._informer: Informer | None = None
        self._all: dict[bytes, ServiceInstance] = {}
        self._view: dict[bytes, ServiceInstance] = {}
        self._pending: collections.deque[ServiceSet] = collections.deque()
        self._state = "new"
        self.revision = 0
        """The revision the last yielded set (or the last change absorbed) is as of."""

    def __repr__(self) -> str:
        return f"<ServiceWatch {self._prefix!r} {self._state} revision={self.revision}>"

    async def __aenter__(self) -> ServiceWatch:
        if self._state != "new":
            raise ClientError("a service watch can be entered only once")
        self._state = "open"
        informer = self._client.watch_prefix(self._prefix)
        try:
            await informer.__aenter__()
        except BaseException:
            self._state = "closed"
            raise
        self._informer = informer
        return self

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
        informer, self._informer = self._informer, None
        if informer is not None:
            await informer.aclose()

    def __aiter__(self) -> ServiceWatch:
        if self._state == "new":
            raise ClientError("enter the watch first: 'async with client.watch_services(...) "
                              "as sets: async for s in sets: ...'")
        return self

    async def __anext__(self) -> ServiceSet:
        while not self._pending:
            informer = self._informer
            if informer is None:
                raise StopAsyncIteration
            self._absorb(await informer.__anext__())
        return self._pending.popleft()

    def _absorb(self, item: Snapshot | Resync | WatchResponse) -> None:
        if isinstance(item, Snapshot | Resync):
            self._all = {kv.key: inst for kv in item.kvs
                         if (inst := decode_instance(kv)) is not None}
            self._emit(item.revision, always=isinstance(item, Snapshot))
            return
        for revision, events in itertools.groupby(item.events,
                                                  key=lambda e: e.kv.mod_revision):
            self._apply(events)
            self._emit(revision, always=False)
        self.revision = max(self.revision, item.revision)

    def _apply(self, events: Iterable[WatchEvent]) -> None:
        for event in events:
            key = event.kv.key
            inst = decode_instance(event.kv) if event.type == "PUT" else None
            if inst is None:
                self._all.pop(key, None)
            else:
                self._all[key] = inst

    def _emit(self, revision: int, *, always: bool) -> None:
        self.revision = max(self.revision, revision)
        matching = select(self._all.values(), tags=self._tags, meta=self._meta,
                          health=self._health)
        view = {inst.key: inst for inst in sorted(matching, key=lambda i: i.key)}
        old = self._view
        added = tuple(v for k, v in view.items() if k not in old)
        removed = tuple(v for k, v in old.items() if k not in view)
        updated = tuple(v for k, v in view.items() if k in old and old[k] != v)
        if not (always or added or removed or updated):
            return
        self._view = view
        self._pending.append(ServiceSet(tuple(view.values()), added, removed, updated,
                                        revision))


# ------------------------------------------------------------------------------ picking


def choose(candidates: Sequence[ServiceInstance], *, strategy: str, zone: str | None,
           rng: random.Random, turn: int, what: str) -> ServiceInstance:
    """One of ``candidates``: passing ones with weight > 0 only, those in ``zone`` when any
    is, then by weight at random, or the ``turn``-th in id order for round robin."""
    usable = [i for i in candidates if i.health is Health.PASSING and i.weight > 0]
    if zone:
        local = [i for i in usable if i.zone == zone]
        if local:
            usable = local
    if not usable:
        raise NoInstances(f"no passing instance of {what} to pick"
                          + (" (every passing one has weight 0)" if candidates else ""))
    if strategy == "round_robin":
        return usable[turn % len(usable)]
    cumulative = list(itertools.accumulate(i.weight for i in usable))
    return usable[bisect.bisect_right(cumulative, rng.random() * cumulative[-1])]


def check_strategy(strategy: str) -> str:
    if strategy not in STRATEGIES:
        raise ClientError(f"strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
    return strategy


class Picker:
    """Chooses an instance of a service from its live set. Made by
    ``AsyncClient.picker``::

        async with client.picker("api", zone="eu-1") as picker:
            inst = picker.pick()        # no round trip: the set is kept current

    Entering waits for the first set; a background task in the client's task group then
    follows ``watch_services`` (passing instances only). ``pick()`` prefers instances in
    ``zone`` whenever one of them is passing, skips weight 0, and either draws at random in
    proportion to ``weight`` or goes round in id order. ``NoInstances`` if none qualifies.
    ``pick()`` is thread-safe (the sync facade calls it from any thread).
    """

    def __init__(self, client: AsyncClient, service: str, *, strategy: str,
                 zone: str | None, tags: Iterable[str], meta: Mapping[str, str] | None,
                 rng: random.Random | None) -> None:
        self._client = client
        self.service = service
        self.strategy = check_strategy(strategy)
        self.zone = zone
        self._watch = ServiceWatch(client, service, tags=tags, meta=meta,
                                   health={Health.PASSING})
        self._rng = rng if rng is not None else random.Random()
        self._lock = threading.Lock()
        self._turn = 0
        self._set: ServiceSet | None = None
        self._scope: anyio.CancelScope | None = None
        self._finished: anyio.Event | None = None
        self._state = "new"

    def __repr__(self) -> str:
        n = len(self._set.instances) if self._set is not None else 0
        return f"<Picker {self.service} {self.strategy} zone={self.zone} instances={n}>"

    @property
    def instances(self) -> tuple[ServiceInstance, ...]:
        """The passing instances as last seen."""
        return self._set.instances if self._set is not None else ()

    @property
    def revision(self) -> int:
        return self._set.revision if self._set is not None else 0

    def pick(self) -> ServiceInstance:
        if self._state != "open":
            raise ClientError("enter the picker first: 'async with client.picker(...)'")
        with self._lock:
            turn = self._turn
            self._turn += 1
            return choose(self.instances, strategy=self.strategy, zone=self.zone,
                          rng=self._rng, turn=turn, what=repr(self.service))

    async def __aenter__(self) -> Picker:
        if self._state != "new":
            raise ClientError("a picker can be entered only once")
        tg = self._client._task_group()
        self._state = "open"
        try:
            await self._watch.__aenter__()
            self._set = await self._watch.__anext__()
            await tg.start(self._follow)
        except BaseException:
            self._state = "closed"
            with anyio.CancelScope(shield=True):
                await self._watch.aclose()
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
        """Stop following the set. Idempotent."""
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

    async def _follow(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                      ) -> None:
        self._finished = anyio.Event()
        try:
            with anyio.CancelScope() as scope:
                self._scope = scope
                task_status.started()
                async for service_set in self._watch:
                    self._set = service_set
        except DiscoverdError as e:
            # Never into the client's task group. The picker keeps choosing from the last
            # set it saw; the error says why it stopped following.
            _log.error("discoverd.sdk: the picker of %r stopped following the service: %s",
                       self.service, e)
        finally:
            self._finished.set()


_one_shot_rng = random.Random()
_one_shot_turns: collections.Counter[str] = collections.Counter()
_one_shot_lock = threading.Lock()


def pick_from(instances: Sequence[ServiceInstance], *, service: str, strategy: str,
              zone: str | None) -> ServiceInstance:
    """``client.pick``: one choice from a fresh discovery. Round robin remembers its turn
    per service name across calls (process-wide), so repeated one-shot picks still rotate."""
    check_strategy(strategy)
    with _one_shot_lock:
        turn = _one_shot_turns[service]
        _one_shot_turns[service] += 1
        return choose(instances, strategy=strategy, zone=zone, rng=_one_shot_rng, turn=turn,
                      what=repr(service))
