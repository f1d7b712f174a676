"""``Client``: the blocking façade over ``AsyncClient``, for code without an event loop.

One ``AsyncClient`` runs on an event loop in a background thread (an anyio blocking portal);
each method hands its call to that loop and waits for the result. So the sync client gets the
async one's multiplexed connection, failover and retry rules for free, and it may be shared
by many threads: their calls are pipelined on the one connection.

Leases and watches run on that loop too. A ``SyncLease``'s keep-alives are a task there, so
they go on while the caller's thread does anything at all (even blocks); its callbacks run in
a worker thread, where they may use the ``Client``. A ``SyncWatch`` is a blocking iterator:
each ``next`` waits on the caller's thread for the async watch's next item, and ``close()``
(from any thread) ends an iteration in progress.

The registry's long-lived objects follow the same pattern: a ``SyncRegistration``'s
keep-alives, a ``SyncPicker``'s set and a ``SyncConfigHandle``'s watch are tasks on that loop.
Because a plain script has no shutdown sequence of its own, registrations are also withdrawn
at interpreter exit (``atexit``) and, unless the application handles SIGTERM itself, on
SIGTERM — after which the process dies of SIGTERM as it would have. Clients still open at
exit are closed then too: their loop thread would otherwise be joined forever when the
interpreter finalises the forgotten client.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import random
import signal
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from types import FrameType, TracebackType
from typing import Any, Generic, Self, TypeVar

import anyio
import anyio.to_thread
from anyio.from_thread import BlockingPortal, start_blocking_portal

from discoverd.errors import ClientError
from discoverd.sdk._auth import SyncAuthMixin
from discoverd.sdk._client import DEFAULT_WATCH_BUFFER, AsyncClient
from discoverd.sdk._cluster import MemberAdded, MemberList
from discoverd.sdk._config import (
    DEFAULT_STATUS_TTL,
    ConfigDocument,
    ConfigHandle,
    ConfigWatch,
    Document,
)
from discoverd.sdk._connection import DEFAULT_MAX_REQUEST_BYTES
from discoverd.sdk._lease import KeptAliveLease, LeaseCallback
from discoverd.sdk._maintenance import Progress, SavedSnapshot
from discoverd.sdk._services import DEFAULT_TTL, Picker, Registration, ServiceSet, ServiceWatch
from discoverd.sdk._types import (
    BytesLike,
    Compare,
    DeleteResponse,
    LeaseGrant,
    LeaseKeepAlive,
    LeaseTimeToLive,
    Op,
    PutResponse,
    RangeResponse,
    ResponseHeader,
    Resync,
    Snapshot,
    SortOrder,
    SortTarget,
    Status,
    TxnResponse,
    WatchFilter,
    WatchResponse,
)
from discoverd.sdk._watch import Informer, Watch
from discoverd.wire.registry_codec import ConfigStatus, Health, HistoryEntry, ServiceInstance

T = TypeVar("T")

_log = logging.getLogger("discoverd.sdk")


class Client(SyncAuthMixin):
    """A blocking client of a discoverd cluster; same methods and arguments as
    ``AsyncClient``, plain return values, same exceptions (and the same "outcome unknown"
    rule for writes that raise ``RequestTimeout``, ``ProposalDropped`` or
    ``ConnectionLost``)::

        with Client("127.0.0.1:2379") as client:
            client.put("k", "v")
            print(client.get("k").kvs[0].value)

    ``close()`` (or leaving the ``with`` block) closes the connection and stops the
    background thread.
    """

    def __init__(
        self,
        endpoints: Sequence[str] | str | None = None,
        *,
        dial_timeout: float = 2.0,
        command_timeout: float = 5.0,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        watch_buffer: int = DEFAULT_WATCH_BUFFER,
        cache_dir: str | os.PathLike[str] | None = None,
        user: str | None = None,
        password: str | None = None,
        cacert: str | os.PathLike[str] | None = None,
        cert: str | os.PathLike[str] | None = None,
        key: str | os.PathLike[str] | None = None,
    ) -> None:
        # Build (and validate) the async client first, so a bad argument raises before any
        # thread is started.
        self._async = AsyncClient(endpoints, dial_timeout=dial_timeout,
                                  command_timeout=command_timeout,
                                  max_request_bytes=max_request_bytes,
                                  watch_buffer=watch_buffer, cache_dir=cache_dir,
                                  user=user, password=password,
                                  cacert=cacert, cert=cert, key=key)
        self._stack = contextlib.ExitStack()
        try:
            self._portal: BlockingPortal = self._stack.enter_context(
                start_blocking_portal(name="discoverd.sdk"))
            # The portal enters and exits the client in one task, as a task group requires.
            self._stack.enter_context(self._portal.wrap_async_context_manager(self._async))
        except BaseException:
            self._stack.close()
            raise
        self._closed = False
        _exit.track_client(self)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Client endpoints={','.join(self.endpoints)} current={self.endpoint}>"

    def close(self) -> None:
        """Deregister what this client registered (and close its pickers and config
        handles), close the connection and stop the background thread. Idempotent."""
        if not self._closed:
            for reg in list(_exit.registrations):
                if reg._client is self:
                    reg.close()
            self._closed = True
            self._stack.close()

    @property
    def endpoints(self) -> tuple[str, ...]:
        return self._async.endpoints

    @property
    def endpoint(self) -> str:
        return self._async.endpoint

    @property
    def async_client(self) -> AsyncClient:
        """The ``AsyncClient`` underneath (it lives on the background thread's loop)."""
        return self._async

    def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if self._closed:  # the portal is gone; say so in the library's terms
            raise ClientError("the client is closed")
        return self._portal.call(functools.partial(fn, *args, **kwargs))

    def _enter(self, cm: Any) -> AbstractContextManager[Any]:
        """Enter an async context manager on the loop; the returned one leaves it there
        (entering and leaving happen in one task, as anyio's cancel scopes require)."""
        if self._closed:
            raise ClientError("the client is closed")
        wrapped: AbstractContextManager[Any] = self._portal.wrap_async_context_manager(cm)
        wrapped.__enter__()
        return wrapped

    def get(
        self,
        key: BytesLike,
        *,
        range_end: BytesLike | None = None,
        prefix: bool = False,
        from_key: bool = False,
        limit: int = 0,
        revision: int = 0,
        sort_order: SortOrder | str | None = None,
        sort_target: SortTarget | str | None = None,
        serializable: bool = False,
        keys_only: bool = False,
        count_only: bool = False,
        min_mod_revision: int = 0,
        max_mod_revision: int = 0,
        min_create_revision: int = 0,
        max_create_revision: int = 0,
    ) -> RangeResponse:
        """See ``AsyncClient.get``."""
        result: RangeResponse = self._run(
            self._async.get, key, range_end=range_end, prefix=prefix, from_key=from_key,
            limit=limit, revision=revision, sort_order=sort_order, sort_target=sort_target,
            serializable=serializable, keys_only=keys_only, count_only=count_only,
            min_mod_revision=min_mod_revision, max_mod_revision=max_mod_revision,
            min_create_revision=min_create_revision, max_create_revision=max_create_revision,
        )
        return result

    def put(
        self,
        key: BytesLike,
        value: BytesLike,
        *,
        lease: int = 0,
        prev_kv: bool = False,
        ignore_value: bool = False,
        ignore_lease: bool = False,
    ) -> PutResponse:
        """See ``AsyncClient.put``."""
        result: PutResponse = self._run(
            self._async.put, key, value, lease=lease, prev_kv=prev_kv,
            ignore_value=ignore_value, ignore_lease=ignore_lease)
        return result

    def delete(
        self,
        key: BytesLike,
        *,
        range_end: BytesLike | None = None,
        prefix: bool = False,
        from_key: bool = False,
        prev_kv: bool = False,
    ) -> DeleteResponse:
        """See ``AsyncClient.delete``."""
        result: DeleteResponse = self._run(
            self._async.delete, key, range_end=range_end, prefix=prefix, from_key=from_key,
            prev_kv=prev_kv)
        return result

    def txn(
        self,
        compare: Iterable[Compare],
        success: Iterable[Op] = (),
        failure: Iterable[Op] = (),
    ) -> TxnResponse:
        """See ``AsyncClient.txn``."""
        result: TxnResponse = self._run(self._async.txn, list(compare), list(success),
                                        list(failure))
        return result

    def compact(self, revision: int, *, physical: bool = False) -> ResponseHeader:
        """See ``AsyncClient.compact``."""
        result: ResponseHeader = self._run(self._async.compact, revision, physical=physical)
        return result

    def alarm_list(self) -> list[tuple[int, str]]:
        """See ``AsyncClient.alarm_list``."""
        result: list[tuple[int, str]] = self._run(self._async.alarm_list)
        return result

    def alarm_disarm(self, member_id: int = 0) -> list[tuple[int, str]]:
        """See ``AsyncClient.alarm_disarm``."""
        result: list[tuple[int, str]] = self._run(self._async.alarm_disarm, member_id)
        return result

    def snapshot_save(self, path: str | os.PathLike[str], *,
                      progress: Progress | None = None) -> SavedSnapshot:
        """See ``AsyncClient.snapshot_save``."""
        result: SavedSnapshot = self._run(self._async.snapshot_save, path, progress=progress)
        return result

    def status(self, endpoint: str | None = None) -> Status:
        """See ``AsyncClient.status``."""
        result: Status = self._run(self._async.status, endpoint)
        return result

    def member_list(self) -> MemberList:
        """See ``AsyncClient.member_list``."""
        result: MemberList = self._run(self._async.member_list)
        return result

    def member_add(self, peer_urls: Sequence[str] | str, *, name: str = "default",
                   is_learner: bool = False) -> MemberAdded:
        """See ``AsyncClient.member_add``."""
        result: MemberAdded = self._run(self._async.member_add, peer_urls, name=name,
                                        is_learner=is_learner)
        return result

    def member_remove(self, member_id: int) -> MemberList:
        result: MemberList = self._run(self._async.member_remove, member_id)
        return result

    def member_promote(self, member_id: int) -> MemberList:
        result: MemberList = self._run(self._async.member_promote, member_id)
        return result

    def member_update(self, member_id: int, peer_urls: Sequence[str] | str) -> MemberList:
        result: MemberList = self._run(self._async.member_update, member_id, peer_urls)
        return result

    def move_leader(self, target: int, *, endpoint: str | None = None) -> ResponseHeader:
        """See ``AsyncClient.move_leader``."""
        result: ResponseHeader = self._run(self._async.move_leader, target, endpoint=endpoint)
        return result

    def call(
        self, op: str, fields: dict[str, Any] | None = None, *, retry_safe: bool = False
    ) -> dict[str, Any]:
        """See ``AsyncClient.call``."""
        result: dict[str, Any] = self._run(self._async.call, op, fields, retry_safe=retry_safe)
        return result

    # ------------------------------------------------------------------ leases

    def lease_grant(self, ttl: int, *, id: int = 0) -> LeaseGrant:
        """See ``AsyncClient.lease_grant``."""
        result: LeaseGrant = self._run(self._async.lease_grant, ttl, id=id)
        return result

    def lease_revoke(self, id: int) -> ResponseHeader:
        """See ``AsyncClient.lease_revoke``."""
        result: ResponseHeader = self._run(self._async.lease_revoke, id)
        return result

    def lease_keepalive_once(self, id: int) -> LeaseKeepAlive:
        """See ``AsyncClient.lease_keepalive_once``."""
        result: LeaseKeepAlive = self._run(self._async.lease_keepalive_once, id)
        return result

    def lease_time_to_live(self, id: int, *, keys: bool = False) -> LeaseTimeToLive:
        """See ``AsyncClient.lease_time_to_live``."""
        result: LeaseTimeToLive = self._run(self._async.lease_time_to_live, id, keys=keys)
        return result

    def leases(self) -> list[int]:
        """See ``AsyncClient.leases``."""
        result: list[int] = self._run(self._async.leases)
        return result

    def lease(
        self,
        ttl: int,
        *,
        id: int = 0,
        regrant: bool = True,
        on_lost: Callable[[int], Any] | None = None,
        on_regrant: Callable[[int], Any] | None = None,
    ) -> SyncLease:
        """A lease kept alive by the background thread while the ``with`` block runs::

            with client.lease(10, on_regrant=reattach) as lease:
                client.put("services/api/1", addr, lease=lease.id)
                serve_forever()

        As ``AsyncClient.lease``; the callbacks are plain functions, run in a worker
        thread (so they may call this client)."""
        return SyncLease(self, KeptAliveLease(
            self._async, ttl, id=id, regrant=regrant, on_lost=_in_thread(on_lost),
            on_regrant=_in_thread(on_regrant)))

    # ------------------------------------------------------------------ watches

    def watch(
        self,
        key: BytesLike,
        *,
        range_end: BytesLike | None = None,
        prefix: bool = False,
        from_key: bool = False,
        start_revision: int = 0,
        prev_kv: bool = False,
        filters: Iterable[WatchFilter | str] = (),
        progress_notify: bool = True,
    ) -> SyncWatch[WatchResponse]:
        """A blocking iterator of ``WatchResponse``s; see ``AsyncClient.watch``::

            with client.watch("config/", prefix=True) as watch:
                for resp in watch:
                    ...
        """
        return SyncWatch(self, self._async.watch(
            key, range_end=range_end, prefix=prefix, from_key=from_key,
            start_revision=start_revision, prev_kv=prev_kv, filters=filters,
            progress_notify=progress_notify))

    def watch_prefix(
        self, prefix: BytesLike, *, prev_kv: bool = False
    ) -> SyncWatch[Snapshot | Resync | WatchResponse]:
        """A blocking informer: ``Snapshot``, then ``WatchResponse``s and ``Resync``s; see
        ``AsyncClient.watch_prefix``."""
        return SyncWatch(self, self._async.watch_prefix(prefix, prev_kv=prev_kv))


    # ------------------------------------------------------------------ services

    def register(
        self,
        service: str,
        *,
        ttl: int = DEFAULT_TTL,
        address: str | None = None,
        port: int | None = None,
        id: str | None = None,
        tags: Iterable[str] = (),
        meta: Mapping[str, str] | None = None,
        weight: int = 1,
        zone: str = "",
        version: str = "",
        health: Health | str = Health.PASSING,
        handle_sigterm: bool | None = None,
    ) -> SyncRegistration:
        """Register an instance of ``service`` and keep it alive from the background thread
        until ``close()`` (or the end of a ``with`` block); see ``AsyncClient.register``::

            reg = client.register("api", port=8080)
            reg.set_health("draining")
            reg.close()

        It is also deregistered at interpreter exit and, with ``handle_sigterm``, on SIGTERM
        (then the process dies of SIGTERM, as it would have without the handler; a Python
        handler installed before is called instead of dying). ``handle_sigterm`` defaults
        to True when called from the main thread with no SIGTERM handler installed, so a
        plain script behind ``kill``/``docker stop``/systemd deregisters at once.
        """
        reg = self._async.register(
            service, ttl=ttl, address=address, port=port, id=id, tags=tags, meta=meta,
            weight=weight, zone=zone, version=version, health=health)
        in_main = threading.current_thread() is threading.main_thread()
        if handle_sigterm is None:
            handle_sigterm = in_main and _exit.sigterm_free()
        elif handle_sigterm and not in_main:
            raise ClientError("handle_sigterm=True needs the main thread (Python installs "
                              "signal handlers only there)")
        self._run(reg.start)
        sync = SyncRegistration(self, reg)
        _exit.registrations[sync] = None
        if handle_sigterm:
            _exit.install_sigterm()
        return sync

    def discover(
        self,
        service: str | None,
        *,
        tags: Iterable[str] = (),
        meta: Mapping[str, str] | None = None,
        health: Iterable[Health | str] | None = (Health.PASSING,),
        include_warning: bool = False,
    ) -> list[ServiceInstance]:
        """See ``AsyncClient.discover``."""
        result: list[ServiceInstance] = self._run(
            self._async.discover, service, tags=list(tags), meta=meta,
            health=None if health is None else list(health), include_warning=include_warning)
        return result

    def watch_services(
        self,
        service: str | None,
        *,
        tags: Iterable[str] = (),
        meta: Mapping[str, str] | None = None,
        health: Iterable[Health | str] | None = (Health.PASSING,),
        include_warning: bool = False,
    ) -> SyncWatch[ServiceSet]:
        """A blocking iterator of ``ServiceSet``s; see ``AsyncClient.watch_services``::

            with client.watch_services("api") as sets:
                for s in sets:
                    ...
        """
        return SyncWatch(self, self._async.watch_services(
            service, tags=tags, meta=meta, health=health, include_warning=include_warning))

    def picker(
        self,
        service: str,
        *,
        strategy: str = "random",
        zone: str | None = None,
        tags: Iterable[str] = (),
        meta: Mapping[str, str] | None = None,
        rng: random.Random | None = None,
    ) -> SyncPicker:
        """A picker kept current by the background thread; see ``AsyncClient.picker``::

            with client.picker("api") as picker:
                inst = picker.pick()
        """
        return SyncPicker(self, self._async.picker(
            service, strategy=strategy, zone=zone, tags=tags, meta=meta, rng=rng))

    def pick(
        self,
        service: str,
        *,
        strategy: str = "random",
        zone: str | None = None,
        tags: Iterable[str] = (),
        meta: Mapping[str, str] | None = None,
    ) -> ServiceInstance:
        """See ``AsyncClient.pick``."""
        result: ServiceInstance = self._run(self._async.pick, service, strategy=strategy,
                                            zone=zone, tags=list(tags), meta=meta)
        return result

    # ------------------------------------------------------------------ config

    def get_config(self, name: str, *, generation: int | None = None) -> ConfigDocument:
        """See ``AsyncClient.get_config``."""
        result: ConfigDocument = self._run(self._async.get_config, name,
                                           generation=generation)
        return result

    def put_config(
        self, name: str, document: Document, *, expect_generation: int | None = None
    ) -> ConfigDocument:
        """See ``AsyncClient.put_config``."""
        result: ConfigDocument = self._run(self._async.put_config, name, document,
                                           expect_generation=expect_generation)
        return result

    def put_schema(self, name: str, schema: Document) -> int:
        """See ``AsyncClient.put_schema``."""
        result: int = self._run(self._async.put_schema, name, schema)
        return result

    def get_schema(self, name: str) -> dict[str, Any] | None:
        """See ``AsyncClient.get_schema``."""
        result: dict[str, Any] | None = self._run(self._async.get_schema, name)
        return result

    def validate_config(self, name: str, document: Document) -> None:
        """See ``AsyncClient.validate_config``."""
        self._run(self._async.validate_config, name, document)

    def watch_config(self, name: str) -> SyncWatch[ConfigDocument]:
        """A blocking iterator of ``ConfigDocument``s; see ``AsyncClient.watch_config``."""
        return SyncWatch(self, self._async.watch_config(name))

    def config_history(self, name: str) -> list[HistoryEntry]:
        """See ``AsyncClient.config_history``."""
        result: list[HistoryEntry] = self._run(self._async.config_history, name)
        return result

    def rollback_config(
        self, name: str, generation: int, *, expect_generation: int | None = None
    ) -> ConfigDocument:
        """See ``AsyncClient.rollback_config``."""
        result: ConfigDocument = self._run(self._async.rollback_config, name, generation,
                                           expect_generation=expect_generation)
        return result

    def config_handle(
        self,
        name: str,
        *,
        on_change: Callable[[ConfigDocument], Any],
        instance: str | None = None,
        ttl: int = DEFAULT_STATUS_TTL,
    ) -> SyncConfigHandle:
        """See ``AsyncClient.config_handle``; ``on_change`` is a plain function, run in a
        worker thread (so it may call this client)::

            with client.config_handle("app", on_change=reconfigure) as handle:
                serve_forever()
        """

        async def in_thread(doc: ConfigDocument) -> None:
            await anyio.to_thread.run_sync(on_change, doc)

        return SyncConfigHandle(self, self._async.config_handle(
            name, on_change=in_thread, instance=instance, ttl=ttl))

    def config_status(self, name: str) -> dict[str, ConfigStatus]:
        """See ``AsyncClient.config_status``."""
        result: dict[str, ConfigStatus] = self._run(self._async.config_status, name)
        return result

def _in_thread(callback: Callable[[int], Any] | None) -> LeaseCallback | None:
    if callback is None:
        return None

    async def call(lease_id: int) -> None:
        await anyio.to_thread.run_sync(callback, lease_id)

    return call


class SyncLease:
    """The blocking face of a ``KeptAliveLease`` (``Client.lease``): ``id``, ``ttl``,
    ``lost`` and ``wait_lost`` as there; the keep-alives run on the client's thread."""

    def __init__(self, client: Client, lease: KeptAliveLease) -> None:
        self._client = client
        self._lease = lease
        self._cm: AbstractContextManager[Any] | None = None

    def __repr__(self) -> str:
        return repr(self._lease).replace("KeptAliveLease", "SyncLease", 1)

    def __enter__(self) -> SyncLease:
        if self._cm is not None:
            raise ClientError("a lease context can be entered only once")
        self._cm = self._client._enter(self._lease)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the keep-alives and revoke the lease (best effort). Idempotent."""
        cm, self._cm = self._cm, None
        if cm is not None and not self._client._closed:
            cm.__exit__(None, None, None)

    @property
    def id(self) -> int:
        return self._lease.id

    @property
    def ttl(self) -> int:
        return self._lease.ttl

    @property
    def lost(self) -> bool:
        return self._lease.lost

    def wait_lost(self, timeout: float | None = None) -> int:
        """Block until the lease is lost; return the lost id. ``TimeoutError`` after
        ``timeout`` seconds (None: no limit)."""

        async def wait() -> int:
            with anyio.fail_after(timeout):
                return await self._lease.wait_lost()

        result: int = self._client._run(wait)
        return result


class SyncWatch(Generic[T]):
    """A blocking iterator over a watch (``Client.watch``) or an informer
    (``Client.watch_prefix``). Use it in a ``with`` block; ``close()`` may be called from
    another thread to end an iteration blocked in ``next``."""

    def __init__(
        self, client: Client, source: Watch | Informer | ServiceWatch | ConfigWatch
    ) -> None:
        self._client = client
        self._source = source
        self._cm: AbstractContextManager[Any] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<SyncWatch {self._source!r}>"

    def __enter__(self) -> SyncWatch[T]:
        if self._cm is not None or self._closed:
            raise ClientError("a watch can be entered only once")
        self._cm = self._client._enter(self._source)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the watch; a ``next`` blocked in another thread returns (StopIteration).
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._client._closed:
            return
        self._client._run(self._source.aclose)
        cm, self._cm = self._cm, None
        if cm is not None:
            cm.__exit__(None, None, None)

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        return self.next()

    def next(self, timeout: float | None = None) -> T:
        """The next item; ``StopIteration`` once closed; ``TimeoutError`` if nothing came
        within ``timeout`` seconds (the watch stays usable: nothing is lost)."""
        if self._cm is None:
            if self._closed:
                raise StopIteration
            raise ClientError("enter the watch first: 'with client.watch(...) as watch:'")
        source = self._source

        async def step() -> tuple[bool, Any]:
            with anyio.fail_after(timeout):
                try:
                    return True, await source.__anext__()
                except StopAsyncIteration:
                    return False, None

        try:
            more, item = self._client._run(step)
        except ClientError:
            if self._client._closed:
                raise StopIteration from None
            raise
        if not more:
            raise StopIteration
        result: T = item
        return result


class SyncRegistration:
    """The blocking face of a ``Registration`` (``Client.register``): registered already;
    ``instance``, ``id``, ``lease_id`` as there; ``set_health``, ``update`` and ``close``
    block until done. The keep-alives run on the client's thread."""

    def __init__(self, client: Client, registration: Registration) -> None:
        self._client = client
        self._reg = registration

    def __repr__(self) -> str:
        return repr(self._reg).replace("Registration", "SyncRegistration", 1)

    def __enter__(self) -> SyncRegistration:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def registration(self) -> Registration:
        """The async ``Registration`` underneath (it lives on the client's loop)."""
        return self._reg

    @property
    def instance(self) -> ServiceInstance:
        return self._reg.instance

    @property
    def id(self) -> str:
        return self._reg.id

    @property
    def service(self) -> str:
        return self._reg.service

    @property
    def key(self) -> bytes:
        return self._reg.key

    @property
    def lease_id(self) -> int:
        return self._reg.lease_id

    @property
    def ttl(self) -> int:
        return self._reg.ttl

    @property
    def closed(self) -> bool:
        return self._reg.closed

    def set_health(self, health: Health | str) -> None:
        """See ``Registration.set_health``."""
        self._client._run(self._reg.set_health, health)

    def update(self, **fields: Any) -> None:
        """See ``Registration.update``."""
        self._client._run(self._reg.update, **fields)

    def close(self) -> None:
        """Deregister (see ``Registration.close``). Idempotent."""
        _exit.registrations.pop(self, None)
        if not self._client._closed:
            self._client._run(self._reg.close)


class _SyncFollower:
    """The blocking face of an async object that follows something in the client's loop
    (a ``Picker``, a ``ConfigHandle``): entering starts it there, ``close`` stops it."""

    def __init__(self, client: Client, inner: Picker | ConfigHandle) -> None:
        self._client = client
        self._inner = inner

    def __repr__(self) -> str:
        name = type(self._inner).__name__
        return repr(self._inner).replace(name, type(self).__name__, 1)

    def __enter__(self) -> Self:
        self._client._run(self._inner.__aenter__)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop following. Idempotent."""
        if not self._client._closed:
            self._client._run(self._inner.aclose)


class SyncPicker(_SyncFollower):
    """The blocking face of a ``Picker`` (``Client.picker``); ``pick()`` never blocks — it
    chooses from the set the background thread keeps current."""

    def __init__(self, client: Client, picker: Picker) -> None:
        super().__init__(client, picker)
        self._picker = picker

    def pick(self) -> ServiceInstance:
        """See ``Picker.pick``."""
        return self._picker.pick()

    @property
    def instances(self) -> tuple[ServiceInstance, ...]:
        return self._picker.instances

    @property
    def revision(self) -> int:
        return self._picker.revision


class SyncConfigHandle(_SyncFollower):
    """The blocking face of a ``ConfigHandle`` (``Client.config_handle``): entering returns
    once ``on_change`` ran for the current document; later changes are applied in a worker
    thread while the caller's thread does anything else. ``close`` also withdraws the
    status report."""

    def __init__(self, client: Client, handle: ConfigHandle) -> None:
        super().__init__(client, handle)
        self._handle = handle

    @property
    def name(self) -> str:
        return self._handle.name

    @property
    def instance(self) -> str:
        return self._handle.instance

    @property
    def document(self) -> ConfigDocument | None:
        return self._handle.document

    @property
    def status(self) -> ConfigStatus | None:
        return self._handle.status


class _ExitHooks:
    """Process-wide: which sync registrations and clients are live, and the atexit and
    SIGTERM hooks that close them.

    Registrations are held strongly: ``sdk.register("api")`` with the result thrown away is
    a registration that must live (and be withdrawn at exit). Clients are held weakly; one
    that is still referenced at exit is closed then.
    """

    def __init__(self) -> None:
        self.registrations: dict[SyncRegistration, None] = {}
        self.clients: weakref.WeakSet[Client] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._atexit = False
        self._sigterm = False
        self._previous: Any = signal.SIG_DFL

    def track_client(self, client: Client) -> None:
        with self._lock:
            self.clients.add(client)
            if not self._atexit:
                self._atexit = True
                atexit.register(self.at_exit)

    def sigterm_free(self) -> bool:
        """No SIGTERM handler but Python's default (or ours) is installed."""
        current = signal.getsignal(signal.SIGTERM)
        return current in (signal.SIG_DFL, None) or current == self.on_sigterm

    def install_sigterm(self) -> None:
        with self._lock:
            if self._sigterm:
                return
            self._previous = signal.getsignal(signal.SIGTERM)
            signal.signal(signal.SIGTERM, self.on_sigterm)
            self._sigterm = True

    def deregister_all(self) -> None:
        for reg in list(self.registrations):
            try:
                reg.close()
            except Exception as e:  # exiting: say why, and go on with the others
                _log.warning("discoverd.sdk: deregistering %r failed: %s", reg, e)

    def at_exit(self) -> None:
        self.deregister_all()
        for client in list(self.clients):
            with contextlib.suppress(Exception):
                client.close()

    def on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        """Deregister, then do what SIGTERM would have done without us."""
        self.deregister_all()
        previous = self._previous
        if callable(previous):
            previous(signum, frame)
            return
        if previous == signal.SIG_IGN:
            return
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        os._exit(128 + signal.SIGTERM)  # not reached: the default action ends the process


_exit = _ExitHooks()
