"""``AsyncClient``: the native-protocol client with failover, on anyio (trio or asyncio).

The client keeps one multiplexed connection, to the *current* endpoint. When that endpoint
cannot serve — the connection fails, or the member answers ``not_leader`` or
``unavailable`` — the client moves to the next endpoint (round-robin, or straight to the
leader when an error names one whose endpoint it has seen) and retries, with a short
exponential backoff, until ``command_timeout`` runs out.

What is retried is decided by whether a second attempt could apply a write twice:

* reads (``get``, ``status``, a txn made only of reads) are always retried;
* a write is retried only when the member surely never acted on it: the connection could not
  be made, the frame was never sent, or the member answered ``not_leader``/``unavailable``
  (it refuses before proposing);
* a write that got ``timeout`` or ``proposal_dropped``, or whose connection broke after the
  frame was sent, raises (``RequestTimeout``, ``ProposalDropped``, ``ConnectionLost``): its
  outcome is unknown — it may or may not have been applied — and only the caller knows
  whether repeating it is harmless (a txn guarded by a compare on ``mod_revision`` makes a
  write safe to repeat).
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import anyio.abc

from discoverd.errors import (
    ClientError,
    InvalidAuthToken,
    NotLeader,
    RequestTimeout,
    TooManyRequests,
    Unauthenticated,
    Unavailable,
)
from discoverd.sdk import _cluster, _config, _services
from discoverd.sdk._auth import AuthMixin, TokenKeeper
from discoverd.sdk._config import (
    DEFAULT_STATUS_TTL,
    ChangeCallback,
    ConfigCache,
    ConfigDocument,
    ConfigHandle,
    ConfigWatch,
    Document,
    default_cache_dir,
)
from discoverd.sdk._connection import (
    DEFAULT_MAX_REQUEST_BYTES,
    Connection,
    DialError,
    Endpoint,
    parse_endpoint,
)
from discoverd.sdk._errors import ConnectionLost, error_from_wire, is_retryable
from discoverd.sdk._lease import KeptAliveLease, LeaseCallback
from discoverd.sdk._maintenance import Progress, SavedSnapshot, save_snapshot
from discoverd.sdk._services import (
    DEFAULT_TTL,
    Picker,
    Registration,
    ServiceWatch,
    build_instance,
    generate_instance_id,
    health_set,
    pick_from,
)
from discoverd.sdk._tls import TlsFiles
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
    SortOrder,
    SortTarget,
    Status,
    TxnResponse,
    WatchFilter,
    delete_request,
    put_request,
    range_request,
    to_bytes,
    txn_request,
    watch_request,
)
from discoverd.sdk._watch import Informer, Watch
from discoverd.wire.registry_codec import ConfigStatus, Health, HistoryEntry, ServiceInstance

_log = logging.getLogger("discoverd.sdk")

ENV_ENDPOINTS = "DISCOVERD_ENDPOINTS"
DEFAULT_ENDPOINT = "127.0.0.1:2379"

_BACKOFF_FIRST = 0.025
_BACKOFF_MAX = 0.5

DEFAULT_WATCH_BUFFER = 1024
"""Frames a watch buffers ahead of its consumer before it is re-created from history (see
``Connection``: the reader never waits for a consumer)."""


def parse_endpoints(endpoints: Sequence[str] | str | None) -> tuple[Endpoint, ...]:
    """The endpoint list: given, else ``$DISCOVERD_ENDPOINTS``, else ``127.0.0.1:2379``.
    Strings may be comma-separated; duplicates are dropped (they would only skew the
    round-robin)."""
    if endpoints is None:
        endpoints = os.environ.get(ENV_ENDPOINTS) or DEFAULT_ENDPOINT
    items = [endpoints] if isinstance(endpoints, str) else list(endpoints)
    parsed: list[Endpoint] = []
    for item in items:
        if not isinstance(item, str):
            raise ClientError(f"endpoints must be strings, not {type(item).__name__}")
        for part in item.split(","):
            if part.strip():
                ep = parse_endpoint(part)
                if ep not in parsed:
                    parsed.append(ep)
    if not parsed:
        raise ClientError("no endpoints given")
    return tuple(parsed)


class AsyncClient(AuthMixin):
    """A client of a discoverd cluster; works under trio and asyncio (anyio).

    Use it as an async context manager — it owns a task group for its connection's reader,
    so it must be entered and closed by the same task::

        async with AsyncClient("10.0.0.1:2379,10.0.0.2:2379") as client:
            await client.put("config/app", b"{}")
            resp = await client.get("config/", prefix=True)

    Args:
        endpoints: members' client addresses (``host:port`` or ``http://host:port``), as a
            sequence or one comma-separated string. Default: ``$DISCOVERD_ENDPOINTS``, else
            ``127.0.0.1:2379``.
        dial_timeout: bound on connecting to one endpoint.
        command_timeout: bound on one call, all retries and failovers included.
        max_request_bytes: requests larger than this are refused locally (a member closes
            the connection on an over-size frame); match the members' ``--max-request-bytes``.
        watch_buffer: frames each watch holds for a consumer that is not reading; past it
            the watch drops its stream and resumes from history when the consumer catches
            up (bounded memory, no lost event).
        cache_dir: where ``get_config`` keeps the last copy of each document it read, for
            when no member answers. Default: ``$DISCOVERD_CACHE_DIR``, else
            ``~/.cache/discoverd``. Created on first use.

    Every error raised derives from ``discoverd.errors.DiscoverdError``. Writes that raise
    ``RequestTimeout``, ``ProposalDropped`` or ``ConnectionLost`` have an unknown outcome
    (see the module documentation); reads are retried until ``command_timeout``.
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
        if dial_timeout <= 0 or command_timeout <= 0:
            raise ClientError("dial_timeout and command_timeout must be positive")
        if type(watch_buffer) is not int or watch_buffer < 1:
            raise ClientError("watch_buffer must be a positive int")
        self.watch_buffer = watch_buffer
        self._endpoints = parse_endpoints(endpoints)
        self.dial_timeout = dial_timeout
        self.command_timeout = command_timeout
        self.max_request_bytes = max_request_bytes
        self._index = 0
        self._conn: Connection | None = None
        self._member_ids: dict[Endpoint, int] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._dial_lock: anyio.Lock | None = None
        self._closed = False
        self._cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._cache: ConfigCache | None = None
        self.user = user
        self._auth = TokenKeeper(user, password)
        """The password and the current token: kept to authenticate again when a token
        expires (see ``_auth``)."""
        self.tls = TlsFiles.of(cacert=cacert, cert=cert, key=key)
        self._closables: dict[Any, None] = {}
        """Registrations, pickers and config handles still open (an ordered set): closed by
        ``aclose`` before the connection goes, so that a closing client deregisters."""

    def __repr__(self) -> str:
        return f"<AsyncClient endpoints={','.join(self.endpoints)} current={self.endpoint}>"

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> AsyncClient:
        if self._tg is not None or self._closed:
            raise ClientError("an AsyncClient can be entered only once")
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        self._dial_lock = anyio.Lock()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection and stop the reader. Idempotent; call it from the task that
        entered the client (``async with`` does)."""
        if self._closed:
            return
        # Deregister and withdraw status reports while the connection still works.
        with anyio.CancelScope(shield=True):
            for obj in reversed(list(self._closables)):
                try:
                    await obj.aclose()
                except Exception as e:  # closing must go on: the connection is still open
                    _log.warning("discoverd.sdk: closing %r failed: %s", obj, e)
        self._closables.clear()
        self._closed = True
        if self._cache is not None:
            self._cache.close()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        tg, self._tg = self._tg, None
        if tg is not None:
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The configured endpoints, normalised to ``host:port``."""
        return tuple(str(e) for e in self._endpoints)

    @property
    def endpoint(self) -> str:
        """The endpoint the client talks to now (or will try first)."""
        return str(self._endpoints[self._index])

    # ------------------------------------------------------------------ KV API

    async def get(
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
        """Read ``key``, or the keys of ``[key, range_end)``.

        ``prefix=True`` reads every key starting with ``key`` (``range_end`` computed as
        etcd's ``GetPrefixRangeEnd`` does); ``from_key=True`` every key ``>= key``.
        ``revision`` reads the store as it was then (``Compacted`` if that is gone,
        ``FutureRevision`` if it has not happened). Linearizable unless ``serializable``
        (then the answering member's possibly stale copy is read, without a leader round
        trip). A read is always retried on another member on failure.
        """
        fields = range_request(
            key, range_end=range_end, prefix=prefix, from_key=from_key, limit=limit,
            revision=revision, sort_order=sort_order, sort_target=sort_target,
            serializable=serializable, keys_only=keys_only, count_only=count_only,
            min_mod_revision=min_mod_revision, max_mod_revision=max_mod_revision,
            min_create_revision=min_create_revision, max_create_revision=max_create_revision,
        )
        ok, _ = await self._call("range", fields, retry_safe=True)
        return RangeResponse.from_wire(ok)

    async def put(
        self,
        key: BytesLike,
        value: BytesLike,
        *,
        lease: int = 0,
        prev_kv: bool = False,
        ignore_value: bool = False,
        ignore_lease: bool = False,
    ) -> PutResponse:
        """Set ``key`` to ``value`` (attached to ``lease`` when non-zero).

        ``prev_kv`` returns the previous key; ``ignore_value``/``ignore_lease`` keep the
        current value/lease (``KeyNotFound`` if the key does not exist).
        Not retried once sent: ``RequestTimeout``, ``ProposalDropped`` or ``ConnectionLost``
        mean the put may or may not have been applied.
        """
        fields = put_request(key, value, lease=lease, prev_kv=prev_kv,
                             ignore_value=ignore_value, ignore_lease=ignore_lease)
        ok, _ = await self._call("put", fields, retry_safe=False)
        return PutResponse.from_wire(ok)

    async def delete(
        self,
        key: BytesLike,
        *,
        range_end: BytesLike | None = None,
        prefix: bool = False,
        from_key: bool = False,
        prev_kv: bool = False,
    ) -> DeleteResponse:
        """Delete ``key``, or the keys of a range (options as for ``get``).

        Not retried once sent: ``RequestTimeout``, ``ProposalDropped`` or ``ConnectionLost``
        mean the delete may or may not have been applied.
        """
        fields = delete_request(key, range_end=range_end, prefix=prefix, from_key=from_key,
                                prev_kv=prev_kv)
        ok, _ = await self._call("delete_range", fields, retry_safe=False)
        return DeleteResponse.from_wire(ok)

    async def txn(
        self,
        compare: Iterable[Compare],
        success: Iterable[Op] = (),
        failure: Iterable[Op] = (),
    ) -> TxnResponse:
        """Atomically: if every comparison holds run ``success``, else ``failure``::

            await client.txn(
                [Compare.value("lock") == b""],
                [Op.put("lock", b"me")],
                [Op.get("lock")],
            )

        A txn of reads only is retried like a read; one with any write is not retried once
        sent (``RequestTimeout``/``ProposalDropped``/``ConnectionLost``: outcome unknown).
        """
        fields, read_only = txn_request(compare, success, failure)
        ok, _ = await self._call("txn", fields, retry_safe=read_only)
        return TxnResponse.from_wire(ok)

    async def compact(self, revision: int, *, physical: bool = False) -> ResponseHeader:
        """Forget the history before ``revision`` (reads at older revisions then raise
        ``Compacted``). Treated as a write: not retried once sent."""
        fields: dict[str, Any] = {"revision": revision}
        if physical:
            fields["physical"] = True
        ok, _ = await self._call("compact", fields, retry_safe=False)
        return ResponseHeader.from_wire(ok.get("header"))

    async def alarm_list(self) -> list[tuple[int, str]]:
        """Active alarms as ``(member_id, alarm)`` pairs (etcd's ``alarm list``)."""
        ok, _ = await self._call("alarm_list", {}, retry_safe=True)
        return [(int(a["member_id"]), str(a["alarm"])) for a in ok.get("alarms") or ()]

    async def alarm_disarm(self, member_id: int = 0) -> list[tuple[int, str]]:
        """Lift NOSPACE (of ``member_id``; 0: every member); returns what was lifted."""
        ok, _ = await self._call("alarm_disarm", {"member_id": member_id}, retry_safe=True)
        return [(int(a["member_id"]), str(a["alarm"])) for a in ok.get("alarms") or ()]

    async def snapshot_save(self, path: str | os.PathLike[str], *,
                            progress: Progress | None = None) -> SavedSnapshot:
        """Save the current member's key-value store to ``path`` (``discoverd snapshot
        save``): streamed, checked against the member's SHA-256, written to a temp file,
        fsynced and renamed. ``progress(received, expected)`` is called after each chunk.
        See ``discoverd.wire.snapshot_file`` for the file format."""
        return await save_snapshot(self, path, progress=progress)

    async def status(self, endpoint: str | None = None) -> Status:
        """The status of one member: the current endpoint's (failing over like a read), or
        that of ``endpoint`` exactly (no failover: ``Unavailable`` if it cannot answer)."""
        if endpoint is None:
            ok, answered = await self._call("status", {}, retry_safe=True)
            return Status.from_wire(ok, str(answered))
        ep = parse_endpoint(endpoint)
        ok = await self._call_at(ep, "status", {})
        return Status.from_wire(ok, str(ep))

    # ------------------------------------------------------------------ membership

    async def member_list(self) -> _cluster.MemberList:
        """The members as the answering member knows them (no quorum needed, as etcd)."""
        return await _cluster.member_list(self)

    async def member_add(self, peer_urls: Sequence[str] | str, *, name: str = "default",
                         is_learner: bool = False) -> _cluster.MemberAdded:
        """Add a member (a voter, or a learner that is promoted once caught up); its id is
        the one ``discoverd serve --name NAME`` with these peer URLs will derive. Start it
        with ``--initial-cluster-state existing``. Not retried once sent (a write)."""
        return await _cluster.member_add(self, peer_urls, name=name, is_learner=is_learner)

    async def member_remove(self, member_id: int) -> _cluster.MemberList:
        return await _cluster.member_remove(self, member_id)

    async def member_promote(self, member_id: int) -> _cluster.MemberList:
        """Make a learner a voter; refused (``LearnerNotReady``) until it has caught up."""
        return await _cluster.member_promote(self, member_id)

    async def member_update(self, member_id: int,
                            peer_urls: Sequence[str] | str) -> _cluster.MemberList:
        return await _cluster.member_update(self, member_id, peer_urls)

    async def move_leader(self, target: int, *, endpoint: str | None = None
                          ) -> ResponseHeader:
        """Hand the leadership to voter ``target``; ``endpoint`` names the leader's."""
        return await _cluster.move_leader(self, target, endpoint=endpoint)

    # ------------------------------------------------------------------ leases

    async def lease_grant(self, ttl: int, *, id: int = 0) -> LeaseGrant:
        """Grant a lease of ``ttl`` seconds (``id`` 0: the member picks one). The answer's
        ``ttl`` may be higher: members raise a TTL below their minimum (1.5 election
        timeouts). ``LeaseExists`` if ``id`` is taken, ``LeaseTTLTooLarge`` above
        9,000,000,000 s. A write: not retried once sent (an unknown outcome leaves at most a
        lease that nobody renews, which expires).
        """
        # The lease id travels as "lease": a request's "id" is its frame id.
        fields: dict[str, Any] = {"ttl": ttl}
        if id:
            fields["lease"] = id
        ok, _ = await self._call("lease_grant", fields, retry_safe=False)
        return LeaseGrant.from_wire(ok)

    async def lease_revoke(self, id: int) -> ResponseHeader:
        """Revoke a lease, deleting every key attached to it in one revision.
        ``LeaseNotFound`` if it does not exist (or has expired). Not retried once sent."""
        ok, _ = await self._call("lease_revoke", {"lease": id}, retry_safe=False)
        return ResponseHeader.from_wire(ok.get("header"))

    async def lease_keepalive_once(self, id: int) -> LeaseKeepAlive:
        """Renew a lease to its full TTL once. An answer with ``ttl`` 0 means the lease is
        gone (expired or revoked); that is returned, not raised. Retried like a read
        (renewing twice is harmless). ``lease()`` renews in the background instead."""
        return await self._lease_keepalive(id)

    async def _lease_keepalive(self, id: int, *, limit: float | None = None) -> LeaseKeepAlive:
        ok, _ = await self._call("lease_keepalive", {"lease": id}, retry_safe=True,
                                limit=limit)
        return LeaseKeepAlive.from_wire(ok)

    async def lease_time_to_live(self, id: int, *, keys: bool = False) -> LeaseTimeToLive:
        """A lease's remaining TTL as the leader sees it (``ttl`` -1: no such lease), its
        granted TTL, and with ``keys`` the keys attached to it."""
        fields: dict[str, Any] = {"lease": id}
        if keys:
            fields["keys"] = True
        ok, _ = await self._call("lease_timetolive", fields, retry_safe=True)
        return LeaseTimeToLive.from_wire(ok)

    async def leases(self) -> list[int]:
        """The ids of every lease in the cluster (linearizable)."""
        ok, _ = await self._call("lease_leases", {}, retry_safe=True)
        return [int(item["id"]) for item in ok.get("leases") or ()
                if isinstance(item, Mapping) and type(item.get("id")) is int]

    def lease(
        self,
        ttl: int,
        *,
        id: int = 0,
        regrant: bool = True,
        on_lost: LeaseCallback | None = None,
        on_regrant: LeaseCallback | None = None,
    ) -> KeptAliveLease:
        """A lease granted on entering ``async with``, renewed every TTL/3 in the background
        and revoked on leaving; lost leases are reported (``on_lost``, ``lost``,
        ``wait_lost()``) and, with ``regrant``, replaced (``on_regrant(new_id)``). See
        ``KeptAliveLease``."""
        return KeptAliveLease(self, ttl, id=id, regrant=regrant, on_lost=on_lost,
                              on_regrant=on_regrant)

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
    ) -> Watch:
        """Watch ``key`` (or a range, chosen as for ``get``) for changes::

            async with client.watch("config/", prefix=True) as watch:
                async for resp in watch:
                    for event in resp.events:
                        print(event.type, event.kv.key, event.kv.value)

        ``start_revision`` 0 watches from now on (from the moment ``async with`` returns);
        an older revision replays history from there first. ``prev_kv`` adds each key's
        previous state to its events; ``filters`` ("NOPUT", "NODELETE") leave out event
        types. With ``progress_notify`` an idle watch gets progress responses (no events),
        and a watch that hears nothing for three of the member's progress intervals treats
        its member as dead. The watch survives failures by resuming from the last revision
        it delivered (on another member when needed); ``WatchCompacted`` (a ``Compacted``)
        is raised if the history it needs is gone. See ``Watch``.
        """
        request = watch_request(key, range_end=range_end, prefix=prefix, from_key=from_key,
                                prev_kv=prev_kv, filters=filters,
                                progress_notify=progress_notify)
        return Watch(self, request, start_revision=start_revision, buffer=self.watch_buffer)

    def watch_prefix(self, prefix: BytesLike, *, prev_kv: bool = False) -> Informer:
        """The keys under ``prefix`` and then their changes, for keeping a local copy
        current: yields a ``Snapshot`` first, then ``WatchResponse``s, and a ``Resync``
        (the whole prefix again) whenever the changes in between were compacted away. See
        ``Informer``."""
        key = to_bytes(prefix, "prefix")
        request = watch_request(key, prefix=True, prev_kv=prev_kv, progress_notify=True)
        return Informer(self, key, request, buffer=self.watch_buffer)

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
    ) -> Registration:
        """Register an instance of ``service`` (DESIGN §7), kept alive in the background::

            reg = await client.register("api", port=8080, tags=["v2"])
            async with client.register("api", port=8080) as reg: ...

        ``address`` defaults to the host's primary address (the source address of its
        default route), ``id`` to ``<hostname>-<pid>-<random>`` (stable for the
        registration, also across lease re-grants), ``registered_at`` to now. The record
        lives on a lease of ``ttl`` seconds renewed every ttl/3; a lost lease is replaced
        and the record written again. ``reg.set_health("draining")`` / ``reg.update(...)``
        rewrite it; ``reg.close()`` deregisters. Invalid fields raise ``ValidationError``
        before anything is sent. See ``Registration``.
        """
        if type(ttl) is not int or ttl < 1:
            raise ClientError(f"ttl must be an int >= 1, not {ttl!r}")
        instance = build_instance(service, address=address, port=port, id=id, tags=tags,
                                  meta=meta, weight=weight, zone=zone, version=version,
                                  health=health)
        return Registration(self, instance, ttl, resolve_address=address is None)

    async def discover(
        self,
        service: str | None,
        *,
        tags: Iterable[str] = (),
        meta: Mapping[str, str] | None = None,
        health: Iterable[Health | str] | None = (Health.PASSING,),
        include_warning: bool = False,
    ) -> list[ServiceInstance]:
        """The instances of ``service`` (``None``: of every service) that have every one of
        ``tags``, every ``meta`` pair, and a health in ``health`` (passing only by default;
        ``include_warning`` adds warning; ``None`` means any), sorted by id. A linearizable
        read; malformed records are skipped with a log line."""
        return await _services.discover(self, service, tags=tags, meta=meta, health=health,
                                        include_warning=include_warning)

    def watch_services(
        self,
        service: str | None,
        *,
        tags: Iterable[str] = (),
        meta: Mapping[str, str] | None = None,
        health: Iterable[Health | str] | None = (Health.PASSING,),
        include_warning: bool = False,
    ) -> ServiceWatch:
        """The matching instances of ``service`` as ``ServiceSet``s — the current set
        first, then one per change (filters as for ``discover``)::

            async with client.watch_services("api") as sets:
                async for s in sets:
                    print(s.revision, [i.address for i in s.instances], s.added, s.removed)

        Resumes across member failures; re-lists after compaction. See ``ServiceWatch``."""
        return ServiceWatch(self, service, tags=tags, meta=meta,
                            health=health_set(health, include_warning))

    def picker(
        self,
        service: str,
        *,
        strategy: str = "random",
        zone: str | None = None,
        tags: Iterable[str] = (),
        meta: Mapping[str, str] | None = None,
        rng: random.Random | None = None,
    ) -> Picker:
        """A ``Picker`` over the live passing instances of ``service``::

            async with client.picker("api", zone="eu-1") as picker:
                inst = picker.pick()

        ``strategy`` ``"random"`` (weight-proportional) or ``"round_robin"`` (id order);
        instances in ``zone`` are preferred while any is passing; ``NoInstances`` when none
        qualifies. ``rng`` makes random picks reproducible."""
        return Picker(self, service, strategy=strategy, zone=zone, tags=tags, meta=meta,
                      rng=rng)

    async def pick(
        self,
        service: str,
        *,
        strategy: str = "random",
        zone: str | None = None,
        tags: Iterable[str] = (),
        meta: Mapping[str, str] | None = None,
    ) -> ServiceInstance:
        """One instance of ``service`` from a fresh ``discover`` (as ``Picker.pick``);
        for many picks, a ``picker`` avoids the read per pick."""
        instances = await self.discover(service, tags=tags, meta=meta)
        return pick_from(instances, service=service, strategy=strategy, zone=zone)

    # ------------------------------------------------------------------ config

    @property
    def cache_dir(self) -> Path:
        """Where config documents are kept for offline reads (resolved when first needed:
        a process without a home directory that never reads config must not fail)."""
        if self._cache_dir is None:
            self._cache_dir = default_cache_dir()
        return self._cache_dir

    def _config_cache(self) -> ConfigCache:
        if self._cache is None:
            self._cache = ConfigCache(self.cache_dir, ",".join(sorted(self.endpoints)))
        return self._cache

    async def get_config(self, name: str, *, generation: int | None = None) -> ConfigDocument:
        """The config document ``name`` with its revision and generation (linearizable).

        When no member answers (``Unavailable`` after failover), the copy kept from the last
        successful read (in ``cache_dir``) is returned with ``stale=True`` and a warning is
        logged; without one the ``Unavailable`` is raised. ``ConfigNotFound`` if there is
        no document. ``generation`` reads that generation from the history instead (no
        cache fallback; ``ConfigNotFound`` if it is not kept or was a deletion)."""
        return await _config.get_config(self, name, generation)

    async def put_config(
        self, name: str, document: Document, *, expect_generation: int | None = None
    ) -> ConfigDocument:
        """Write the document ``name`` (a mapping, or JSON text sent verbatim); returns it
        with its new revision and generation.

        ``ValidationError`` (with ``.violations``) when it does not satisfy its schema —
        judged by the members when the write is applied; nothing changes then.
        ``expect_generation``: write only if the current generation is that one (0: the
        document was never written), else ``ConfigConflict`` — optimistic concurrency for
        read-modify-write. A write: an unknown outcome raises (see the class docs)."""
        return await _config.put_config(self, name, document,
                                        expect_generation=expect_generation)

    async def put_schema(self, name: str, schema: Document) -> int:
        """Set the JSON Schema of config ``name``; returns the revision. ``ValidationError``
        if it is not a valid schema, or the current document would not satisfy it."""
        return await _config.put_schema(self, name, schema)

    async def get_schema(self, name: str) -> dict[str, Any] | None:
        """The JSON Schema of config ``name``, or ``None`` if it has none."""
        return await _config.get_schema(self, name)

    async def validate_config(self, name: str, document: Document) -> None:
        """Dry run of ``put_config``: judged exactly as the write would be now, nothing
        changes. Returns if valid, raises ``ValidationError`` with the violations if not."""
        await _config.validate_config(self, name, document)

    def watch_config(self, name: str) -> ConfigWatch:
        """The document ``name`` and then each new generation of it, as
        ``ConfigDocument``s (a deletion has ``deleted=True``)::

            async with client.watch_config("app") as docs:
                async for doc in docs:
                    ...

        Resumes like every watch. See ``ConfigWatch``."""
        return ConfigWatch(self, name)

    async def config_history(self, name: str) -> list[HistoryEntry]:
        """The kept generations of ``name`` (the newest 50 by default), newest first."""
        return await _config.config_history(self, name)

    async def rollback_config(
        self, name: str, generation: int, *, expect_generation: int | None = None
    ) -> ConfigDocument:
        """Write the document of ``generation`` again, as a new generation.
        ``ConfigNotFound`` if that generation is no longer kept or was a deletion."""
        return await _config.rollback_config(self, name, generation,
                                             expect_generation=expect_generation)

    def config_handle(
        self,
        name: str,
        *,
        on_change: ChangeCallback,
        instance: str | None = None,
        ttl: int = DEFAULT_STATUS_TTL,
    ) -> ConfigHandle:
        """Follow config ``name``: ``on_change(doc)`` for the current document and every new
        one, each followed by a status report at ``/config-status/<name>/<instance>`` (on a
        lease of ``ttl``) saying which generation was applied and whether it failed.
        ``instance`` defaults to a generated ``<hostname>-<pid>-<random>``. See
        ``ConfigHandle``."""
        if type(ttl) is not int or ttl < 1:
            raise ClientError(f"ttl must be an int >= 1, not {ttl!r}")
        return ConfigHandle(self, name, instance=instance or generate_instance_id(),
                            on_change=on_change, ttl=ttl)

    async def config_status(self, name: str) -> dict[str, ConfigStatus]:
        """What each consumer of ``name`` reports it applied, by instance."""
        return await _config.config_status(self, name)

    # ------------------------------------------------------------------ raw calls

    async def call(
        self, op: str, fields: Mapping[str, Any] | None = None, *, retry_safe: bool = False
    ) -> dict[str, Any]:
        """Send a raw protocol request (docs/protocol.md) and return its ``ok`` map, with
        the same failover and error mapping as the typed methods. ``retry_safe`` says
        whether the request may be sent twice (a read); leave it False for writes."""
        ok, _ = await self._call(op, dict(fields or {}), retry_safe=retry_safe)
        return ok

    # ------------------------------------------------------------------ machinery

    def _task_group(self) -> anyio.abc.TaskGroup:
        if self._closed:
            raise ClientError("the client is closed")
        if self._tg is None:
            raise ClientError("use the client as 'async with AsyncClient(...) as client:'")
        return self._tg

    async def _connect_current(self) -> Connection:
        """The connection to the current endpoint, dialling it if needed. A failed dial
        moves the client to the next endpoint before raising ``DialError``."""
        conn = self._conn
        if conn is not None and conn.usable:
            return conn  # the common case, without the dial lock's checkpoints
        tg = self._task_group()
        assert self._dial_lock is not None
        async with self._dial_lock:
            conn = self._conn
            if conn is not None and conn.usable:
                return conn
            index = self._index
            try:
                conn = await Connection.open(
                    self._endpoints[index], tg, dial_timeout=self.dial_timeout,
                    send_timeout=self.command_timeout, max_request_bytes=self.max_request_bytes,
                    token=self._auth.current, tls=self.tls,
                )
            except DialError:
                self._index = (index + 1) % len(self._endpoints)
                raise
            if self._closed:  # closed while dialling: do not leak the connection
                conn.close()
                raise ClientError("the client is closed")
            self._conn = conn
            return conn

    def _move_on(self, conn: Connection, *, leader: int = 0) -> None:
        """Stop using ``conn`` for new requests and point the client at another endpoint:
        the one known to belong to ``leader`` if any, else the next one. Only the first of
        several concurrent failures on the same connection moves the client."""
        if self._conn is not conn:
            return
        conn.retire()
        self._conn = None
        for ep, member_id in self._member_ids.items():
            if leader and member_id == leader and ep != conn.endpoint:
                self._index = self._endpoints.index(ep)
                return
        self._index = (self._endpoints.index(conn.endpoint) + 1) % len(self._endpoints)

    def _learn(self, endpoint: Endpoint, ok: Mapping[str, Any]) -> None:
        header = ok.get("header")
        if isinstance(header, Mapping) and type(header.get("member_id")) is int:
            self._member_ids[endpoint] = header["member_id"]

    async def _call(
        self, op: str, fields: dict[str, Any], *, retry_safe: bool, limit: float | None = None
    ) -> tuple[dict[str, Any], Endpoint]:
        """Send ``op`` with failover; return its ``ok`` map and the endpoint that answered.

        ``retry_safe``: the request cannot change the store, so it may be sent again after
        any failure; otherwise only after failures that prove it was not acted on.
        ``limit`` (default ``command_timeout``) bounds the whole call; a lease keep-alive
        passes less, so that a member that stopped answering is left in time to renew the
        lease elsewhere before it expires (an outer ``fail_after`` could not: the call must
        itself see the time run out, to move the client off the silent member).
        """
        self._task_group()
        timeout = self.command_timeout if limit is None else limit
        n = len(self._endpoints)
        tried: list[str] = []
        dial_failures = 0
        retries = 0
        backoff = _BACKOFF_FIRST
        waiting_on: Connection | None = None
        reauthenticated = False
        with anyio.move_on_after(timeout):
            if op != "authenticate":
                await self._auth.ensure(self._authenticate_token)
            while True:
                try:
                    conn = await self._connect_current()
                except DialError as e:
                    tried.append(str(e))
                    dial_failures += 1
                    if dial_failures >= n:
                        raise Unavailable(
                            f"could not connect to any endpoint ({'; '.join(tried[-n:])})"
                        ) from None
                    continue
                dial_failures = 0
                waiting_on = conn
                sent_token = self._auth.token
                try:
                    answer = await conn.request(op, fields)
                except ConnectionLost as e:
                    waiting_on = None
                    self._move_on(conn)
                    if e.request_sent and not retry_safe:
                        raise ConnectionLost(
                            f"{e}; the {op} request had been sent, so it may or may not have "
                            "been applied", request_sent=True) from None
                    tried.append(str(e))
                else:
                    waiting_on = None
                    ok = answer.get("ok")
                    if isinstance(ok, dict):
                        self._learn(conn.endpoint, ok)
                        return ok, conn.endpoint
                    exc = error_from_wire(answer["err"])
                    if (isinstance(exc, InvalidAuthToken | Unauthenticated)
                            and self._auth.has_credentials and not reauthenticated
                            and op != "authenticate"):
                        # Refused before it was acted on: safe to send again, writes too.
                        reauthenticated = True
                        await self._auth.refresh(self._authenticate_token, sent_token)
                        continue
                    if isinstance(exc, TooManyRequests):
                        # Refused before it was acted on (writes too): wait as the member
                        # says, then ask it again; the command timeout bounds the waiting.
                        tried.append(f"{conn.endpoint}: {exc.code}: {exc}")
                        await anyio.sleep(exc.retry_after or _BACKOFF_FIRST)
                        continue
                    if not is_retryable(exc, retry_safe=retry_safe):
                        raise exc
                    self._move_on(conn, leader=exc.leader if isinstance(exc, NotLeader) else 0)
                    tried.append(f"{conn.endpoint}: {exc.code}: {exc}")
                if retries:
                    await anyio.sleep(backoff)
                    backoff = min(backoff * 2, _BACKOFF_MAX)
                retries += 1
        # command_timeout ran out.
        if waiting_on is not None:
            self._move_on(waiting_on)
            unknown = "" if retry_safe else "; the write may or may not have been applied"
            raise RequestTimeout(
                f"no answer to {op} from {waiting_on.endpoint} within "
                f"{timeout:g}s{unknown}")
        raise Unavailable(
            f"{op} did not succeed within {timeout:g}s "
            f"(tried: {'; '.join(tried[-2 * n:]) or 'nothing'})")

    async def _call_at(self, ep: Endpoint, op: str, fields: dict[str, Any]) -> dict[str, Any]:
        """One request to one given endpoint, no failover (reusing the current connection
        when it goes there)."""
        tg = self._task_group()
        current = self._conn
        own: Connection | None = None
        try:
            with anyio.fail_after(self.command_timeout):
                await self._auth.ensure(self._authenticate_token)
                if current is not None and current.usable and current.endpoint == ep:
                    conn = current
                else:
                    own = conn = await Connection.open(
                        ep, tg, dial_timeout=self.dial_timeout,
                        send_timeout=self.command_timeout,
                        max_request_bytes=self.max_request_bytes, token=self._auth.current,
                        tls=self.tls)
                sent_token = self._auth.token
                answer = await conn.request(op, fields)
                err = answer.get("err")
                if (isinstance(err, dict) and self._auth.has_credentials
                        and err.get("code") in ("invalid_auth_token", "unauthenticated")):
                    await self._auth.refresh(self._authenticate_token, sent_token)
                    answer = await conn.request(op, fields)
        except DialError as e:
            raise Unavailable(f"could not connect to {e}") from None
        except TimeoutError:
            raise RequestTimeout(
                f"no answer to {op} from {ep} within {self.command_timeout:g}s") from None
        finally:
            if own is not None:
                own.close()
        ok = answer.get("ok")
        if isinstance(ok, dict):
            self._learn(ep, ok)
            return ok
        raise error_from_wire(answer["err"])

