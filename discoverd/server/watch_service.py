"""The trio half of watches: one task per watch stream, draining ``kv.watch.WatchHub``.

The hub (pure, inside the machine) decides what each watcher should see and buffers it to a
bound; this module only moves batches to sockets. Each watch stream's task sleeps on its own
``trio.Event``, set when applying a write, a periodic progress round or a cancel gives that
watcher something to send. A slow client therefore blocks only its own task (its socket
writes), never the apply loop, which just sets events; the hub moves the slow watcher to
catch-up-from-history once its buffer is full.

A member without a leader cannot promise that its store is current: new watches are refused
at once and existing streams end with ``unavailable`` once the leader has been gone for two
election timeouts (etcd's ``require leader``), so clients resume on a member that has one.
"""

from __future__ import annotations

from typing import Any

import cbor2
import trio

from discoverd.errors import NoLeader, TooManyWatches, WatchNotFound
from discoverd.kv.limits import check_request_sizes
from discoverd.kv.store import MvccStore
from discoverd.kv.watch import BatchKind, WatchHub
from discoverd.machine.auth import AUTH_USER_FIELD, AuthStore
from discoverd.member.core import MemberCore
from discoverd.server.api_server import Connection, Emit, Handler, NativeEmit, StreamHandler
from discoverd.wire.lease_watch_codec import decode_watch, encode_event
from discoverd.wire.watch_frames import EventBytes, WatchFrameHeads


class WatchService:
    def __init__(
        self,
        core: MemberCore,
        hub: WatchHub,
        store: MvccStore,
        *,
        header: Any,
        progress_interval: float,
        election_timeout: float,
        tick_seconds: float,
        max_watches_per_connection: int,
        log: Any,
        max_key_bytes: int = 8 * 1024,
    ) -> None:
        self.core = core
        self.hub = hub
        self.store = store
        self._header = header
        self.progress_interval = progress_interval
        self.election_timeout = election_timeout
        self.tick_seconds = tick_seconds
        self.max_watches = max_watches_per_connection
        self.max_key_bytes = max_key_bytes
        self.log = log
        self._events: dict[int, trio.Event] = {}
        self._readers: dict[int, tuple[str | None, bytes, bytes]] = {}
        """Each watch's user (None: made while auth was off) and range, for ``rejudge``."""
        self._watching: set[Connection] = set()
        self._leaderless_since: float | None = None
        self.no_leader = False
        self.events_sent = 0
        self._event_bytes = EventBytes()
        """Each recent event encoded once for every native watch stream (issue 12)."""
        self._headers: dict[tuple[int, int], bytes] = {}

    def __repr__(self) -> str:
        return f"<WatchService streams={len(self._events)} hub={len(self.hub)}>"

    @property
    def connections_watching(self) -> int:
        """Connections carrying at least one watch: what etcd calls watch streams (one
        gRPC stream multiplexes many watchers, as one connection does here)."""
        return len(self._watching)

    def streams(self) -> dict[str, StreamHandler]:
        return {"watch": self.watch}

    def ops(self) -> dict[str, Handler]:
        return {"watch_cancel": self.op_cancel, "watch_progress": self.op_progress}

    def wake(self, watcher_ids: set[int]) -> None:
        for wid in watcher_ids:
            event = self._events.get(wid)
            if event is not None:
                event.set()

    # ------------------------------------------------------------------ the stream

    async def watch(self, req: dict[str, Any], conn: Connection, emit: Emit) -> None:
        if not self.core.leader or self.no_leader:
            raise NoLeader()
        wreq = decode_watch(req)
        check_request_sizes(wreq, self.max_key_bytes, 0)  # a watch carries no value
        mine: set[int] = conn.state.setdefault("watches", set())
        if len(mine) >= self.max_watches:
            raise TooManyWatches(
                f"this connection already has {len(mine)} watches (the most allowed)")
        # The created frame's revision promises nothing beyond the watch's start: were it
        # the store's revision when the frame is written, a write applied meanwhile would
        # look delivered to a client that resumes from the last revision it saw.
        start = wreq.start_revision or self.store.revision + 1
        wid = self.hub.add(wreq)
        mine.add(wid)
        self._watching.add(conn)
        self._events[wid] = trio.Event()
        user = req.get(AUTH_USER_FIELD)  # set by the auth gate when auth is on
        self._readers[wid] = (user if isinstance(user, str) else None, wreq.key,
                              wreq.range_end)
        try:
            await emit({"header": self._header(max(start - 1, 0)), "watch_id": wid,
                        "created": True,
                        "progress_interval_ms": int(self.progress_interval * 1000)})
            await self._pump(wid, emit)
        finally:
            self.hub.remove(wid)
            self._readers.pop(wid, None)
            mine.discard(wid)
            if not mine:
                self._watching.discard(conn)
            self._events.pop(wid, None)

    async def _pump(self, wid: int, emit: Emit) -> None:
        hub = self.hub
        encoded = emit.encoded if isinstance(emit, NativeEmit) else None
        heads = WatchFrameHeads(wid)
        while True:
            if self.no_leader:
                raise NoLeader("etcdserver: no leader (watch stream ended; resume elsewhere)")
            batches = hub.take(wid)
            if not batches:
                event = self._events[wid] = trio.Event()
                if not hub.has_pending(wid) and not self.no_leader:
                    await event.wait()
                continue
            for batch in batches:
                if batch.kind is BatchKind.CANCELED:
                    body: dict[str, Any] = {
                        "header": self._header(), "watch_id": wid, "canceled": True,
                        "cancel_reason": batch.reason,
                    }
                    if batch.compact_revision:
                        body["compact_revision"] = batch.compact_revision
                    await emit(body)
                    return
                self.events_sent += len(batch.events)
                progress = batch.kind is BatchKind.PROGRESS
                if encoded is not None:
                    await encoded(heads.body(self._header_bytes(batch.revision),
                                             self._event_bytes.array(batch.events),
                                             progress=progress))
                    continue
                frame: dict[str, Any] = {
                    "header": self._header(batch.revision), "watch_id": wid,
                    "events": [encode_event(e) for e in batch.events],
                }
                if progress:
                    frame["progress"] = True
                await emit(frame)

    def _header_bytes(self, revision: int) -> bytes:
        """The encoded header at ``revision``, shared by every frame at it in this term."""
        key = (revision, self.core.term)
        encoded = self._headers.get(key)
        if encoded is None:
            if len(self._headers) >= 256:
                self._headers.clear()
            encoded = self._headers[key] = cbor2.dumps(self._header(revision))
        return encoded

    def rejudge(self, auth: AuthStore) -> None:
        """After the auth state changed: end every watch whose user may no longer read its
        range (or that was made while auth was off and has no user), so a revoked reader
        gets no event applied after the revocation. Called after the Ready that applied the
        change, before any watch stream can take that Ready's events."""
        if not auth.enabled:
            return
        ended = set()
        for wid, (user, key, range_end) in self._readers.items():
            if user is None:
                reason = "authentication was enabled: watch again as a user"
            elif not auth.permitted(user, key, range_end, write=False):
                reason = "etcdserver: permission denied"
            else:
                continue
            self.hub.cancel(wid, reason)
            ended.add(wid)
        if ended:
            self.log.info("watches ended by an auth change", watches=len(ended),
                          auth_revision=auth.revision)
            self.wake(ended)

    # ------------------------------------------------------------------ unary ops

    async def op_cancel(self, req: dict[str, Any], conn: Connection) -> dict[str, Any]:
        wid = req.get("watch_id")
        mine: set[int] = conn.state.get("watches", set())
        if type(wid) is not int or wid not in mine:
            raise WatchNotFound()
        self.hub.cancel(wid)
        self.wake({wid})
        return {"header": self._header()}

    async def op_progress(self, req: dict[str, Any], conn: Connection) -> dict[str, Any]:
        mine: set[int] = conn.state.get("watches", set())
        self.wake({wid for wid in sorted(mine) if self.hub.request_progress(wid)})
        return {"header": self._header()}

    # ------------------------------------------------------------------ background

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Periodic progress notifications, and the leader-loss watchdog."""
        task_status.started()
        next_progress = trio.current_time() + self.progress_interval
        while True:
            await trio.sleep(self.tick_seconds)
            now = trio.current_time()
            self._check_leader(now)
            if now >= next_progress:
                next_progress = now + self.progress_interval
                self.wake(self.hub.periodic_progress(repeat_idle=True))

    def _check_leader(self, now: float) -> None:
        if self.core.leader:
            self._leaderless_since = None
            self.no_leader = False
            return
        if self._leaderless_since is None:
            self._leaderless_since = now
        elif not self.no_leader and now - self._leaderless_since > 2 * self.election_timeout:
            self.no_leader = True
            self.log.warning("no leader: ending watch streams", streams=len(self._events),
                             term=self.core.term)
            self.wake(set(self._events))
