"""One key whose value lives on a kept-alive lease of its own, written again whenever the
lease has to be replaced.

Both things an SDK user leaves behind in the registry are like this: a service registration
(``/services/<service>/<id>``) and a config consumer's status report
(``/config-status/<name>/<instance>``). They must vanish when their owner dies — hence the
lease — and come back when the owner lives on but lost its lease (a long pause, a partition,
somebody revoking it): hence the re-put on every re-grant. Keeping that logic in one place
keeps the two from drifting apart.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio

from discoverd.errors import ClientError, DiscoverdError, LeaseNotFound, Unavailable
from discoverd.sdk._lease import KeptAliveLease
from discoverd.sdk._types import Compare, Op

if TYPE_CHECKING:
    from discoverd.sdk._client import AsyncClient

_log = logging.getLogger("discoverd.sdk")

_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 1.0


class LeasedKey:
    """``key`` = the latest value given, attached to a ``KeptAliveLease`` of ``ttl``.

    Writes are serialised (a lock), and each uses the lease id current at that moment, so a
    re-grant racing an update cannot leave the key on the old lease or with an old value:
    whichever write comes last writes the latest value on the current lease.
    """

    def __init__(self, client: AsyncClient, key: bytes, ttl: int, *, what: str) -> None:
        self._client = client
        self.key = key
        self._ttl = ttl
        self._what = what
        self._value: bytes | None = None
        self._lease: KeptAliveLease | None = None
        self._lock: anyio.Lock | None = None
        self._closed = False

    @property
    def lease_id(self) -> int:
        """The current lease's id (0 before ``open``); it changes after a re-grant."""
        return self._lease.id if self._lease is not None else 0

    @property
    def ttl(self) -> int:
        """The TTL the cluster granted (it may raise the one asked for to its minimum)."""
        return self._lease.ttl if self._lease is not None else 0

    async def open(self, value: bytes | None) -> None:
        """Grant the lease and, if ``value`` is given, write it. Raises what the grant or
        the put raises (e.g. ``ValidationError``), leaving nothing behind."""
        self._lock = anyio.Lock()
        self._value = value
        lease = self._client.lease(self._ttl, on_lost=self._lost, on_regrant=self._regranted)
        await lease.__aenter__()
        self._lease = lease
        if value is None:
            return
        try:
            async with self._lock:
                await self._client.put(self.key, value, lease=lease.id)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await lease.aclose()
            raise

    async def set(self, value: bytes) -> None:
        """Write ``value`` on the current lease. When the lease is lost right now the value
        is only remembered: the re-grant writes it (the old lease cannot take it)."""
        if self._lease is None or self._lock is None or self._closed:
            raise ClientError(f"the {self._what} is not open")
        self._value = value
        async with self._lock:
            lease = self._lease
            if lease.lost:
                return
            try:
                await self._client.put(self.key, value, lease=lease.id)
            except LeaseNotFound:
                # Lost between the check and the put; the keeper will notice and re-grant.
                _log.debug("discoverd.sdk: %s %r: lease %d gone during an update; it will be "
                           "written again on the new lease", self._what, self.key, lease.id)

    async def _lost(self, lease_id: int) -> None:
        if not self._closed:
            _log.warning("discoverd.sdk: %s %s lost its lease %d; re-registering",
                         self._what, self.key.decode(errors="replace"), lease_id)

    async def _regranted(self, lease_id: int) -> None:
        """Put the value again on the new lease, retrying while the cluster is unavailable.
        It runs in the lease's callback task, so closing the lease cancels it."""
        backoff = _BACKOFF_FIRST
        while not self._closed and self._value is not None and self._lock is not None:
            try:
                async with self._lock:
                    if self._lease is None or self._lease.id != lease_id:
                        return  # superseded by a newer grant, which has its own callback
                    await self._client.put(self.key, self._value, lease=lease_id)
            except LeaseNotFound:
                return  # lost again already: the next re-grant writes it
            except Unavailable as e:
                # Includes an unknown outcome (timeout): writing the same value twice is
                # harmless, so try again.
                _log.debug("discoverd.sdk: re-writing %s %r failed: %s", self._what, self.key, e)
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            except DiscoverdError as e:
                _log.error("discoverd.sdk: cannot write %s %r again: %s", self._what, self.key, e)
                return
            _log.info("discoverd.sdk: %s %s written again on lease %d", self._what,
                      self.key.decode(errors="replace"), lease_id)
            return

    async def close(self) -> None:
        """Stop the keep-alives, revoke the lease (deleting the key with it) and delete the
        key if it is still on our last lease (the revoke failed, or the lease was lost and
        the key is waiting for expiry). Best effort, bounded, done even when cancelled."""
        if self._closed:
            return
        self._closed = True
        lease = self._lease
        if lease is None:
            return
        with anyio.CancelScope(shield=True):
            last = lease.id
            await lease.aclose()
            with anyio.move_on_after(self._client.command_timeout):
                try:
                    # Guarded: the same key may belong to a newer owner by now (a restarted
                    # process registering the same id), whose record must stay.
                    await self._client.txn([Compare.lease(self.key) == last],
                                           [Op.delete(self.key)])
                except DiscoverdError as e:
                    _log.debug("discoverd.sdk: deleting %s %r on close failed: %s",
                               self._what, self.key, e)
