"""Watches that survive the member they are on, and the informer (list, then watch) on top.

A ``Watch`` remembers ``next_revision``: the first revision it has not yet delivered. It
moves past every event it hands to the application and past the ``header.revision`` of every
events or progress frame (the member's promise that everything up to that revision has been
sent, docs/protocol.md "Watches"). When its stream ends for a reason that is not the
application's — the connection broke, the member said ``unavailable``, the stream fell silent
for three announced progress intervals, the application fell behind the reader's buffer — it
re-creates the watch with ``start_revision = next_revision``, on the client's next member when
this one is suspect. The member replays history from there, so nothing is missed; any event
below ``next_revision`` that arrives anyway is dropped, so nothing is delivered twice.

Resuming happens inside ``__anext__``, i.e. only while the application asks for more. It is
retried with backoff for as long as that takes: a watch is a long-lived subscription and the
cluster may be down for a while. Only the first creation (entering the ``async with``) is
bounded by ``command_timeout``, so that a wrong endpoint list fails fast.

The context manager is the only way in. An ``async for`` over an un-entered watch would leave
nobody to cancel the member's side when the loop is left early (``break``, an exception):
async generator finalisation is not reliable under trio, and cancelling needs an await.
"""

from __future__ import annotations

import contextlib
import dataclasses
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio

from discoverd.errors import (
    ClientError,
    DiscoverdError,
    FutureRevision,
    InvalidAuthToken,
    NotLeader,
    Unauthenticated,
    Unavailable,
)
from discoverd.sdk._connection import Connection, DialError, Stream
from discoverd.sdk._errors import ConnectionLost, StreamOverflow, WatchCompacted, error_from_wire
from discoverd.sdk._types import (
    KeyValue,
    ResponseHeader,
    Resync,
    Snapshot,
    WatchResponse,
    watch_response_from_wire,
)

if TYPE_CHECKING:
    from discoverd.sdk._client import AsyncClient

_BACKOFF_FIRST = 0.025
_BACKOFF_MAX = 1.0
_SILENT_INTERVALS = 3
"""A stream that has heard nothing for this many announced progress intervals is dead."""


class _Silent(Exception):
    """Internal: no frame within ``_SILENT_INTERVALS`` progress intervals."""


def _int(d: dict[str, Any], name: str) -> int:
    value = d.get(name, 0)
    return value if type(value) is int else 0


class Watch:
    """Changes to a key or range, in revision order, each exactly once — across member
    failures. Made by ``AsyncClient.watch``; use it as::

        async with client.watch("config/", prefix=True) as watch:
            async for resp in watch:
                for event in resp.events:
                    ...

    Entering creates the watch on a member (so a change made after ``async with`` returns
    is surely seen); leaving cancels it. Iteration yields ``WatchResponse``s: batches of
    events, and progress notifications (``resp.progress``, no events) when the range is
    idle. It raises ``WatchCompacted`` if the history the watch needs has been compacted,
    and the error for a request the member refuses (``ClientError``); unavailability is
    never raised after creation — the watch resumes on its own.
    """

    def __init__(
        self,
        client: AsyncClient,
        request: dict[str, Any],
        *,
        start_revision: int,
        buffer: int,
    ) -> None:
        if type(start_revision) is not int or start_revision < 0:
            raise ClientError(f"start_revision must be a non-negative int, not {start_revision!r}")
        self._client = client
        self._request = request
        self._buffer = buffer
        self._next_rev = start_revision
        self._progress_notify = bool(request.get("progress_notify"))
        self._stream: Stream | None = None
        self._conn: Connection | None = None
        self._watch_id: int | None = None
        self._dead_after: float | None = None
        self._delay = 0.0
        self._state = "new"
        self._next_scope: anyio.CancelScope | None = None
        self.resumes = 0
        """How many times the watch was re-created after its stream ended."""

    def __repr__(self) -> str:
        where = self._conn.endpoint if self._conn is not None else None
        return (f"<Watch {self._request.get('key')!r} {self._state} next_revision="
                f"{self._next_rev} on {where} resumes={self.resumes}>")

    @property
    def next_revision(self) -> int:
        """The first revision not yet delivered (0 before creation of a watch "from now"):
        a later watch with this ``start_revision`` would continue exactly here."""
        return self._next_rev

    @property
    def watch_id(self) -> int | None:
        """The member's id for the current stream (it changes when the watch resumes)."""
        return self._watch_id

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Watch:
        if self._state != "new":
            raise ClientError("a watch can be entered only once")
        self._client._task_group()  # a closed or un-entered client says so here
        self._state = "open"
        try:
            await self._establish(deadline=anyio.current_time() + self._client.command_timeout)
        except BaseException:
            self._state = "closed"
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the watch: an iteration in progress (in another task) ends, and the member
        is told to cancel it. Idempotent."""
        if self._state == "closed":
            return
        self._state = "closed"
        if self._next_scope is not None:
            self._next_scope.cancel()
        stream, conn, watch_id = self._stream, self._conn, self._watch_id
        self._stream = None
        if stream is None or conn is None:
            return
        stream.close()
        if watch_id is not None and not conn.closed:
            # Awaited (briefly, and even when the caller is being cancelled) rather than left
            # to a background task, so that once the ``async with`` is left the member has
            # stopped sending.
            with anyio.CancelScope(shield=True), anyio.move_on_after(
                    min(self._client.command_timeout, 2.0)):
                await _cancel_remote(conn, watch_id)

    # ------------------------------------------------------------------ iteration

    def __aiter__(self) -> Watch:
        if self._state == "new":
            raise ClientError(
                "enter the watch first: 'async with client.watch(...) as watch: "
                "async for resp in watch: ...'")
        return self

    async def __anext__(self) -> WatchResponse:
        if self._state != "open":
            if self._state == "new":
                raise ClientError("enter the watch first ('async with client.watch(...)')")
            raise StopAsyncIteration
        try:
            resp = await self._next()
        except Exception:
            # The watch is over (compacted, refused): release it before saying so.
            with anyio.CancelScope(shield=True):
                await self.aclose()
            raise
        if resp is None:
            raise StopAsyncIteration  # aclose() from another task
        return resp

    async def _next(self) -> WatchResponse | None:
        """The next response to deliver, or None once ``aclose`` (from another task) ended
        the watch. ``aclose`` ends a wait on the stream by closing the stream, so only a
        (re)creation needs a cancel scope: a frame costs no scope of its own, which matters
        when a connection carries hundreds of busy watches."""
        while True:
            stream = self._stream
            if stream is None:
                with anyio.CancelScope() as scope:
                    self._next_scope = scope
                    try:
                        await self._establish(deadline=None)
                    finally:
                        self._next_scope = None
                if self._state != "open":
                    return None
                continue
            try:
                answer = stream.receive_nowait()
                if answer is None:
                    answer = await self._receive(stream)
            except StreamOverflow:
                if self._state != "open":
                    return None
                self._drop(move_on=False, ended=False)  # this member is fine; we were slow
                continue
            except _Silent:
                self._drop(move_on=True, ended=False)
                continue
            except (ConnectionLost, anyio.EndOfStream):
                if self._state != "open":
                    return None
                self._drop(move_on=True, ended=True)
                continue
            if self._state != "open":
                return None
            resp = self._handle(answer)
            if resp is not None:
                self._delay = 0.0
                return resp

    async def _receive(self, stream: Stream) -> dict[str, Any]:
        """The next frame when none is buffered; ``_Silent`` if a progress-notified stream
        has been quiet too long (measured from the last frame's arrival, so a slow
        application is not mistaken for a dead member, and buffered frames are always taken
        first)."""
        if self._dead_after is None:
            return await stream.receive()
        while True:
            left = stream.last_arrival + self._dead_after - anyio.current_time()
            with anyio.move_on_after(max(left, 0.0)):
                return await stream.receive()
            frame = stream.receive_nowait()
            if frame is not None:
                return frame
            if anyio.current_time() >= stream.last_arrival + self._dead_after:
                raise _Silent

    def _handle(self, answer: dict[str, Any]) -> WatchResponse | None:
        """One frame of the open stream → the response to deliver, if any."""
        err = answer.get("err")
        if err is not None and isinstance(err, dict):
            exc = error_from_wire(err)
            if isinstance(exc, Unavailable):
                leader = exc.leader if isinstance(exc, NotLeader) else 0
                self._drop(move_on=True, ended=True, leader=leader)
                return None
            self._drop(move_on=False, ended=True)
            raise exc
        ok = answer.get("ok")
        assert isinstance(ok, dict)  # the reader passes only ok or err frames
        if ok.get("canceled"):
            compact = _int(ok, "compact_revision")
            self._drop(move_on=compact == 0, ended=True)
            if compact > 0:
                raise self._compacted(compact, ok)
            # Canceled by the member for a reason of its own (it is shutting down, say):
            # the application did not ask for this, so resume, elsewhere.
            return None
        if ok.get("created"):
            return None
        resp = watch_response_from_wire(ok)
        next_rev = self._next_rev
        seen = resp.header.revision
        all_new = True
        for event in resp.events:
            rev = event.kv.mod_revision
            if rev < next_rev:
                all_new = False
            elif rev > seen:
                seen = rev
        stale = seen < next_rev - 1
        if seen >= next_rev:
            self._next_rev = seen + 1
        if all_new:
            if resp.events:
                return resp
        else:
            events = [e for e in resp.events if e.kv.mod_revision >= next_rev]
            if events:
                return dataclasses.replace(resp, events=events)
        if resp.progress and not stale:
            return resp
        # Only duplicates from a replay, or a bookmark from a member behind the revision
        # already delivered (after resuming there): nothing the application needs.
        return None

    def _compacted(self, compact_revision: int, ok: dict[str, Any]) -> WatchCompacted:
        return WatchCompacted(
            f"the watch needs history from revision {self._next_rev}, but revisions before "
            f"{compact_revision} have been compacted; re-list and watch from the listing's "
            "revision + 1", compact_revision=compact_revision,
            header=ResponseHeader.from_wire(ok.get("header")))

    # ------------------------------------------------------------------ (re)creation

    def _drop(self, *, move_on: bool, ended: bool, leader: int = 0) -> None:
        """Forget the current stream: stop receiving; unless the member ``ended`` it
        already, ask the member to cancel its side (in the background); with ``move_on``,
        point the client at another member."""
        stream, conn, watch_id = self._stream, self._conn, self._watch_id
        self._stream = None
        self._watch_id = None
        if stream is None or conn is None:
            return
        stream.close()
        if move_on:
            self._client._move_on(conn, leader=leader)
        if not ended and watch_id is not None and not conn.closed:
            self._background(_cancel_remote, conn, watch_id)

    def _background(self, fn: Any, *args: Any) -> None:
        try:
            tg = self._client._task_group()
        except ClientError:
            return  # the client is closing: its connections go, and the watches with them
        tg.start_soon(_bounded, self._client.command_timeout, fn, *args)

    async def _establish(self, *, deadline: float | None) -> None:
        """Create the watch from ``next_revision`` on the client's current member, moving
        on and backing off until it is created; until ``deadline`` if one is given."""
        client = self._client
        resuming = deadline is None
        tried: list[str] = []
        reauthenticated = False
        while True:
            if self._delay:
                await anyio.sleep(self._delay)
            self._delay = min(max(self._delay * 2, _BACKOFF_FIRST), _BACKOFF_MAX)
            now = anyio.current_time()
            if deadline is not None and now >= deadline:
                raise Unavailable(
                    f"could not create the watch within {client.command_timeout:g}s (tried: "
                    f"{'; '.join(tried[-2 * len(client.endpoints):]) or 'nothing'})")
            limit = client.command_timeout if deadline is None else deadline - now
            conn: Connection | None = None
            with anyio.move_on_after(limit) as scope:
                try:
                    conn = await client._connect_current()
                except DialError as e:
                    tried.append(str(e))
                    continue
                await client._auth.ensure(client._authenticate_token)
                sent_token = client._auth.token
                try:
                    created = await self._create(conn, tried, resuming=resuming)
                except (InvalidAuthToken, Unauthenticated):
                    # A watch resuming after its token expired (etcd-io/etcd#8287): log in
                    # again once and re-create it from where it was.
                    if reauthenticated or not client._auth.has_credentials:
                        raise
                    reauthenticated = True
                    self._delay = 0.0
                    await client._auth.refresh(client._authenticate_token, sent_token)
                    continue
                if created:
                    if resuming:
                        self.resumes += 1
                    return
            if scope.cancelled_caught:
                tried.append(f"{conn.endpoint if conn else client.endpoint}: no answer within "
                             f"{limit:g}s")
                if conn is not None:
                    client._move_on(conn)

    async def _create(self, conn: Connection, tried: list[str], *, resuming: bool) -> bool:
        """One attempt on ``conn``: True once the member confirmed the watch."""
        client = self._client
        fields = dict(self._request)
        if self._next_rev:
            fields["start_revision"] = self._next_rev
        try:
            stream = await conn.open_stream("watch", fields, buffer=self._buffer)
        except ConnectionLost as e:
            client._move_on(conn)
            tried.append(str(e))
            return False
        try:
            first = await stream.receive()
        except (Unavailable, anyio.EndOfStream) as e:  # ConnectionLost, StreamOverflow
            stream.close()
            client._move_on(conn)
            tried.append(f"{conn.endpoint}: {e or type(e).__name__}")
            return False
        except BaseException:
            # Cancelled before the member confirmed: it may still create the watch, so a
            # background task waits for its id and cancels it.
            if conn.closed:
                stream.close()
            else:
                self._background(_reap, stream)
            raise
        err = first.get("err")
        if isinstance(err, dict):
            stream.close()
            exc = error_from_wire(err)
            if isinstance(exc, Unavailable) or (resuming and isinstance(exc, FutureRevision)):
                # FutureRevision on a resume: this member is behind the revision delivered
                # already (the history exists, elsewhere); try the next one.
                client._move_on(conn, leader=exc.leader if isinstance(exc, NotLeader) else 0)
                tried.append(f"{conn.endpoint}: {exc.code}: {exc}")
                return False
            raise exc
        ok = first["ok"]
        client._learn(conn.endpoint, ok)
        if ok.get("canceled"):
            stream.close()
            compact = _int(ok, "compact_revision")
            if compact > 0:
                raise self._compacted(compact, ok)
            client._move_on(conn)
            tried.append(f"{conn.endpoint}: canceled: {ok.get('cancel_reason', '')}")
            return False
        if not ok.get("created"):
            stream.close()
            client._move_on(conn)
            tried.append(f"{conn.endpoint}: the first frame of a watch was not 'created'")
            return False
        self._stream, self._conn = stream, conn
        watch_id = ok.get("watch_id")
        self._watch_id = watch_id if type(watch_id) is int else None
        interval = _int(ok, "progress_interval_ms")
        self._dead_after = (_SILENT_INTERVALS * interval / 1000
                            if self._progress_notify and interval > 0 else None)
        if self._next_rev == 0:
            # "From now": the created frame's header is the revision the watch starts after.
            header = ok.get("header")
            rev = _int(header, "revision") if isinstance(header, dict) else 0
            self._next_rev = rev + 1
        return True


async def _bounded(limit: float, fn: Any, *args: Any) -> None:
    with anyio.move_on_after(limit):
        await fn(*args)


async def _cancel_remote(conn: Connection, watch_id: int) -> None:
    """Best effort: ask the member to stop a watch whose stream we no longer read."""
    # DiscoverdError: the watch or the connection is gone already; either way it stops.
    with contextlib.suppress(DiscoverdError):
        await conn.request("watch_cancel", {"watch_id": watch_id}, even_if_retired=True)


async def _reap(stream: Stream) -> None:
    """Wait for an abandoned stream's first frame and cancel the watch it names."""
    try:
        frame = await stream.receive()
    except (DiscoverdError, anyio.EndOfStream):
        return
    finally:
        stream.close()
    ok = frame.get("ok")
    if isinstance(ok, dict) and not ok.get("canceled") and type(ok.get("watch_id")) is int:
        await _cancel_remote(stream.conn, ok["watch_id"])


class Informer:
    """A prefix's keys, then every change to them, with re-listing instead of errors.
    Made by ``AsyncClient.watch_prefix``::

        async with client.watch_prefix("services/") as informer:
            async for item in informer:
                if isinstance(item, (Snapshot, Resync)):
                    view = {kv.key: kv for kv in item.kvs}
                else:
                    for event in item.events:
                        ...

    Entering reads the prefix linearizably (at revision R) and creates a watch from R + 1,
    so the first item, a ``Snapshot``, and the ``WatchResponse``s after it have no gap and
    no overlap. When the watch cannot resume because its history was compacted (it was
    disconnected for long), the informer lists again and yields a ``Resync`` — the complete
    state, to replace the local view with — and continues after it.
    """

    def __init__(self, client: AsyncClient, prefix: bytes, request: dict[str, Any],
                 *, buffer: int) -> None:
        self._client = client
        self._prefix = prefix
        self._request = request
        self._buffer = buffer
        self._watch: Watch | None = None
        self._ready: Snapshot | Resync | None = None
        self._state = "new"
        self._next_scope: anyio.CancelScope | None = None

    def __repr__(self) -> str:
        return f"<Informer {self._prefix!r} {self._state} watch={self._watch!r}>"

    @property
    def watch(self) -> Watch | None:
        """The watch now running (a new one after each ``Resync``)."""
        return self._watch

    async def __aenter__(self) -> Informer:
        if self._state != "new":
            raise ClientError("an informer can be entered only once")
        self._state = "open"
        try:
            self._ready = await self._list(Snapshot, retry=False)
        except BaseException:
            self._state = "closed"
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop: an iteration in progress ends and the watch is cancelled. Idempotent."""
        if self._state == "closed":
            return
        self._state = "closed"
        if self._next_scope is not None:
            self._next_scope.cancel()
        watch, self._watch = self._watch, None
        if watch is not None:
            await watch.aclose()

    def __aiter__(self) -> Informer:
        if self._state == "new":
            raise ClientError("enter the informer first: 'async with client.watch_prefix(...) "
                              "as informer: async for item in informer: ...'")
        return self

    async def __anext__(self) -> Snapshot | Resync | WatchResponse:
        if self._state == "new":
            raise ClientError("enter the informer first ('async with client.watch_prefix()')")
        if self._state != "open":
            raise StopAsyncIteration
        if self._ready is not None:
            ready, self._ready = self._ready, None
            return ready
        with anyio.CancelScope() as scope:
            self._next_scope = scope
            try:
                while True:
                    watch = self._watch
                    if watch is None:
                        return await self._list(Resync, retry=True)
                    try:
                        return await watch.__anext__()
                    except WatchCompacted:
                        self._watch = None
            except Exception:
                with anyio.CancelScope(shield=True):
                    await self.aclose()
                raise
            finally:
                self._next_scope = None
        raise StopAsyncIteration  # aclose() from another task

    async def _list(self, kind: type[Snapshot] | type[Resync], *,
                    retry: bool) -> Snapshot | Resync:
        """Read the prefix and start watching after it. Entering gives up (raises) when the
        client does; a re-list after compaction keeps trying, like a watch's resume."""
        delay = 0.0
        while True:
            if delay:
                await anyio.sleep(delay)
            delay = min(max(delay * 2, _BACKOFF_FIRST), _BACKOFF_MAX)
            try:
                listing = await self._client.get(self._prefix, prefix=True)
                revision = listing.header.revision
                watch = Watch(self._client, self._request, start_revision=revision + 1,
                              buffer=self._buffer)
                await watch.__aenter__()
            except WatchCompacted:
                continue  # compacted past the listing between the two requests: list again
            except Unavailable:
                if not retry:
                    raise
                continue
            self._watch = watch
            kvs: tuple[KeyValue, ...] = listing.kvs
            return kind(kvs, revision)
