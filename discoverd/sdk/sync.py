"""``Client``: the blocking façade over ``AsyncClient``, for code without an event loop.

One ``AsyncClient`` runs on an event loop in a background thread (an anyio blocking portal);
each method hands its call to that loop and waits for the result. So the sync client gets the
async one's multiplexed connection, failover and retry rules for free, and it may be shared
by many threads: their calls are pipelined on the one connection.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from discoverd.errors import ClientError
from discoverd.sdk._client import AsyncClient
from discoverd.sdk._connection import DEFAULT_MAX_REQUEST_BYTES
from discoverd.sdk._types import (
    BytesLike,
    Compare,
    DeleteResponse,
    Op,
    PutResponse,
    RangeResponse,
    ResponseHeader,
    SortOrder,
    SortTarget,
    Status,
    TxnResponse,
)

T = TypeVar("T")


class Client:
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
    ) -> None:
        # Build (and validate) the async client first, so a bad argument raises before any
        # thread is started.
        self._async = AsyncClient(endpoints, dial_timeout=dial_timeout,
                                  command_timeout=command_timeout,
                                  max_request_bytes=max_request_bytes)
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
        """Close the connection and stop the background thread. Idempotent."""
        if not self._closed:
            self._closed = True
            self._stack.close()

    @property
    def endpoints(self) -> tuple[str, ...]:
        return self._async.endpoints

    @property
    def endpoint(self) -> str:
        return self._async.endpoint

    def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if self._closed:  # the portal is gone; say so in the library's terms
            raise ClientError("the client is closed")
        return self._portal.call(functools.partial(fn, *args, **kwargs))

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

    def status(self, endpoint: str | None = None) -> Status:
        """See ``AsyncClient.status``."""
        result: Status = self._run(self._async.status, endpoint)
        return result

    def call(
        self, op: str, fields: dict[str, Any] | None = None, *, retry_safe: bool = False
    ) -> dict[str, Any]:
        """See ``AsyncClient.call``."""
        result: dict[str, Any] = self._run(self._async.call, op, fields, retry_safe=retry_safe)
        return result
