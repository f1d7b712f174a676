"""A lease kept alive in the background, re-granted when it is lost.

Timing is the client's conservative view of the lease. A renewal *sent* at time t that the
member confirms with TTL T means the lease lives until at least t + T: the leader renewed it
no earlier than t. So the keeper renews every T/3 and, when a renewal fails, retries quickly
(on other members: each attempt is bounded by T/3, after which the client moves off the
silent member) until t + T. When t + T passes without a confirmed renewal, the lease may have
expired — the owner's keys may be gone — and that is reported as a loss, exactly like an
answer of TTL 0 (expired or revoked). The old lease is then left to expire rather than
revoked: revoking would delete the keys attached to it, possibly after the owner has already
moved them to the new lease.

Callbacks run in a task of their own, in order, so a slow ``on_regrant`` (re-putting many
keys) never delays the keep-alives of the lease it was given.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from discoverd.errors import ClientError, DiscoverdError, LeaseExists, LeaseNotFound, Unavailable

if TYPE_CHECKING:
    from discoverd.sdk._client import AsyncClient

LeaseCallback = Callable[[int], Awaitable[Any] | Any]
"""Called with a lease id; a plain function or a coroutine function."""

_log = logging.getLogger("discoverd.sdk")

_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 1.0
_MIN_ATTEMPT = 0.5
"""Seconds: the shortest bound on one keep-alive attempt, however short the TTL."""


class KeptAliveLease:
    """A lease renewed in the background for as long as the ``async with`` block runs;
    made by ``AsyncClient.lease``::

        async with client.lease(10, on_regrant=reattach) as lease:
            await client.put("services/api/1", addr, lease=lease.id)
            ...

    Entering grants the lease (raising what ``lease_grant`` raises); leaving stops renewing
    and revokes it, best effort, deleting its keys.

    When the lease is lost — a keep-alive answers that it is gone, or its TTL ran out with no
    renewal confirmed — ``lost`` becomes true, ``on_lost(old_id)`` is called and
    ``wait_lost()`` returns. With ``regrant`` (the default) a new lease with the same TTL
    (and the same id, if one was asked for) is then granted, retrying until the cluster
    answers; ``id`` becomes the new id, ``lost`` false again, and ``on_regrant(new_id)`` is
    called so the owner can put its keys again. Callback exceptions are logged (logger
    ``discoverd.sdk``) and otherwise ignored.
    """

    def __init__(
        self,
        client: AsyncClient,
        ttl: int,
        *,
        id: int = 0,
        regrant: bool = True,
        on_lost: LeaseCallback | None = None,
        on_regrant: LeaseCallback | None = None,
    ) -> None:
        if type(ttl) is not int or type(id) is not int:
            raise ClientError("a lease's ttl and id must be ints")
        self._client = client
        self._ask_ttl = ttl
        self._ask_id = id
        self._regrant = regrant
        self._on_lost = on_lost
        self._on_regrant = on_regrant
        self.id = 0
        """The current lease's id (the new one after a re-grant)."""
        self.ttl = 0
        """The TTL the member granted (it may raise the TTL asked for to its minimum)."""
        self._lost = False
        self._lost_id = 0
        self._lost_event: anyio.Event | None = None
        self._renewed_at = 0.0
        self._deadline = 0.0
        self._state = "new"
        self._scope: anyio.CancelScope | None = None
        self._finished: anyio.Event | None = None
        self._notify: MemoryObjectSendStream[tuple[LeaseCallback, int]] | None = None

    def __repr__(self) -> str:
        state = "lost" if self._lost else self._state
        return f"<KeptAliveLease id={self.id} ttl={self.ttl} {state}>"

    @property
    def lost(self) -> bool:
        """True from the moment a loss is detected until a new lease is granted (for good,
        without ``regrant``)."""
        return self._lost

    async def wait_lost(self) -> int:
        """Wait until the lease is lost (at once if it is lost now); return the lost id."""
        if self._lost_event is None:
            raise ClientError("enter the lease first: 'async with client.lease(ttl) as lease'")
        if self._lost:
            return self._lost_id
        await self._lost_event.wait()
        return self._lost_id

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> KeptAliveLease:
        if self._state != "new":
            raise ClientError("a lease context can be entered only once")
        tg = self._client._task_group()
        self._state = "open"
        self._lost_event = anyio.Event()
        try:
            sent = anyio.current_time()
            grant = await self._client.lease_grant(self._ask_ttl, id=self._ask_id)
            self._adopt(grant.id, grant.ttl, sent)
            await tg.start(self._run)
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
        """Stop renewing and revoke the lease (best effort, bounded by the client's
        ``command_timeout``, even when the caller is being cancelled). Idempotent."""
        if self._state != "open":
            self._state = "closed"
            return
        self._state = "closed"
        with anyio.CancelScope(shield=True):
            if self._scope is not None:
                self._scope.cancel()
            if self._finished is not None:
                await self._finished.wait()
            if self.id and not self._lost:
                with anyio.move_on_after(self._client.command_timeout) as scope:
                    try:
                        await self._client.lease_revoke(self.id)
                    except DiscoverdError as e:
                        _log.debug("discoverd.sdk: revoking lease %d on close failed: %s",
                                   self.id, e)
                if scope.cancelled_caught:
                    _log.debug("discoverd.sdk: revoking lease %d on close timed out", self.id)

    # ------------------------------------------------------------------ the keeper

    def _adopt(self, lease_id: int, ttl: int, sent: float) -> None:
        self.id = lease_id
        self.ttl = max(ttl, 1)
        self._renewed_at = sent
        self._deadline = sent + self.ttl

    async def _run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                   ) -> None:
        self._finished = anyio.Event()
        send, receive = anyio.create_memory_object_stream[tuple[LeaseCallback, int]](math.inf)
        self._notify = send
        try:
            with anyio.CancelScope() as scope:
                self._scope = scope
                task_status.started()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._run_callbacks, receive)
                    try:
                        await self._keep()
                    finally:
                        send.close()  # the callbacks already queued still run
        except Exception:
            # Never into the client's task group: that would tear down the application.
            _log.exception("discoverd.sdk: the keeper of lease %d failed", self.id)
            self._mark_lost()
        finally:
            self._finished.set()

    async def _run_callbacks(
        self, receive: MemoryObjectReceiveStream[tuple[LeaseCallback, int]]
    ) -> None:
        async with receive:
            async for callback, lease_id in receive:
                try:
                    result = callback(lease_id)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    _log.exception("discoverd.sdk: lease callback %r(%d) failed",
                                   callback, lease_id)

    def _call_back(self, callback: LeaseCallback | None, lease_id: int) -> None:
        if callback is not None and self._notify is not None:
            # Closed: the keeper is ending (the lease is being closed, or the keeper failed
            # and reports the loss on its way out); no task is left to run callbacks.
            with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                self._notify.send_nowait((callback, lease_id))

    def _mark_lost(self) -> None:
        if self._lost:
            return
        self._lost = True
        self._lost_id = self.id
        if self._lost_event is not None:
            self._lost_event.set()
        self._call_back(self._on_lost, self.id)

    async def _keep(self) -> None:
        while True:
            while await self._renew():
                pass
            self._mark_lost()
            if not self._regrant or not await self._grant_again():
                return
            self._lost = False
            self._lost_event = anyio.Event()
            self._call_back(self._on_regrant, self.id)

    async def _renew(self) -> bool:
        """Wait for the next renewal time and renew; False once the lease may be gone."""
        await anyio.sleep_until(self._renewed_at + self.ttl / 3)
        backoff = _BACKOFF_FIRST
        while True:
            sent = anyio.current_time()
            left = self._deadline - sent
            if left <= 0:
                return False
            limit = min(self._client.command_timeout, max(self.ttl / 3, _MIN_ATTEMPT), left)
            try:
                answer = await self._client._lease_keepalive(self.id, limit=limit)
            except LeaseNotFound:
                return False
            except DiscoverdError as e:
                # Unavailable, RequestTimeout (the client moved off that member already), or
                # something unexpected: retry until the deadline says the lease may be gone.
                _log.debug("discoverd.sdk: keep-alive of lease %d failed: %s", self.id, e)
                await anyio.sleep(min(backoff, max(self._deadline - anyio.current_time(), 0)))
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            if answer.ttl <= 0:
                return False
            self._renewed_at = sent
            self._deadline = sent + answer.ttl
            return True

    async def _grant_again(self) -> bool:
        """Grant a replacement, retrying until it is granted; False if the cluster refuses
        it for good (which, since the same grant succeeded once, should not happen)."""
        backoff = _BACKOFF_FIRST
        while True:
            sent = anyio.current_time()
            try:
                grant = await self._client.lease_grant(self._ask_ttl, id=self._ask_id)
            except LeaseExists:
                # Only with a chosen id: the old lease outlived our deadline (we could not
                # reach the cluster), or an earlier attempt's grant landed unseen. Either
                # way that lease is ours: keep it if it is alive.
                try:
                    answer = await self._client.lease_keepalive_once(self._ask_id)
                except DiscoverdError:
                    answer = None
                if answer is not None and answer.ttl > 0:
                    self._adopt(answer.id, answer.ttl, sent)
                    return True
            except Unavailable:
                pass  # incl. an unknown outcome: a lease granted unseen expires on its own
            except DiscoverdError as e:
                _log.error("discoverd.sdk: cannot grant a replacement for lease %d: %s",
                           self.id, e)
                return False
            else:
                self._adopt(grant.id, grant.ttl, sent)
                return True
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)

