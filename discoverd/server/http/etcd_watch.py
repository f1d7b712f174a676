"""``POST /v3/watch``: etcd's watch stream over plain HTTP.

As in etcd's gateway, the request body is a sequence of ``WatchRequest`` objects
(``{"create_request": …}``, ``{"cancel_request": …}``, ``{"progress_request": {}}``) and the
response a chunked stream of ``{"result": WatchResponse}`` objects, one per HTTP chunk with
its newline. Each ``create_request`` runs the member's native ``watch`` stream; watch ids are
numbered per HTTP stream (0, 1, …, or the id the client asked for), as etcd numbers them per
gRPC stream.

The response starts only once the first request has taken effect (its watch is created), so
a client that sees the response headers knows its watch is registered — etcd3gw writes right
after ``watch()`` returns. If that first request fails, the answer is an ordinary error
response (HTTP status from its gRPC code); a later failure is written into the stream as
etcd's ``{"error": {...}}`` object and ends it. The stream also ends when every watch in it
has been canceled — etcd keeps such a response open forever — and when the client closes
the connection (how etcd3gw cancels), which frees the watches.

Backpressure: the stream's chunks pass through a small channel; a client that reads slowly
blocks its watches' native streams, whose hub then buffers and falls back to history (the
same path a slow native client takes), so a slow reader never slows the member.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import trio

from discoverd.errors import ClientError, DiscoverdError
from discoverd.server.http.etcd_responses import JSON_HEADERS, etcd_error, stream_error_chunk
from discoverd.server.http.router import (
    GatewayContext,
    HttpRequest,
    HttpResponse,
    StreamingResponse,
)
from discoverd.wire import etcd_json as ej

CHANNEL_CHUNKS = 16


async def watch(req: HttpRequest, ctx: GatewayContext) -> HttpResponse | StreamingResponse:
    try:
        requests = [ej.decode_watch_request(v) for v in ej.parse_json_stream(req.body)]
    except DiscoverdError as e:
        return etcd_error(e)
    stream = _WatchStream(ctx)
    if requests:
        try:
            await stream.apply(requests[0])
        except DiscoverdError as e:
            stream.stop_all()
            return etcd_error(e)
    ctx.start_soon(stream.apply_rest, requests[1:])
    return StreamingResponse(200, list(JSON_HEADERS), stream.chunks)


class _WatchStream:
    """The watches of one HTTP watch stream, feeding one channel of chunks."""

    def __init__(self, ctx: GatewayContext) -> None:
        self.ctx = ctx
        self.send, self.recv = trio.open_memory_channel[bytes](CHANNEL_CHUNKS)
        self.native_ids: dict[int, int] = {}
        """local watch id → the native watch id (known once the watch is created)."""
        self.used: set[int] = set()
        self._auto = itertools.count()
        self._scopes: list[trio.CancelScope] = []

    async def chunks(self) -> AsyncIterator[bytes]:
        async with self.recv:
            async for chunk in self.recv:
                yield chunk

    def stop_all(self) -> None:
        for scope in self._scopes:
            scope.cancel()

    async def apply_rest(self, requests: list[ej.WatchRequest]) -> None:
        """The requests after the first, in order; runs while the response streams, so a
        create waiting for channel space never waits on itself."""
        async with self.send:
            for request in requests:
                try:
                    await self.apply(request)
                except DiscoverdError as e:
                    await self.send.send(stream_error_chunk(e))
                    self.stop_all()
                    return

    async def apply(self, request: ej.WatchRequest) -> None:
        if isinstance(request, ej.WatchCreate):
            await self._create(request)
        elif isinstance(request, ej.WatchCancel):
            native = self.native_ids.get(request.watch_id)
            if native is not None:  # an unknown id is ignored, as etcd does
                await self.ctx.call("watch_cancel", {"watch_id": native})
        else:
            await self.ctx.call("watch_progress", {})

    def _local_id(self, asked: int) -> int:
        if asked:
            if asked in self.used:
                raise ClientError(f"watch id {asked} is already in use on this stream")
            return asked
        return next(i for i in self._auto if i not in self.used)

    async def _create(self, request: ej.WatchCreate) -> None:
        """Start the watch and wait until it is created (or has failed to be)."""
        local = self._local_id(request.watch_id)
        self.used.add(local)
        ready = trio.Event()
        failure: list[DiscoverdError] = []
        scope = trio.CancelScope()
        self._scopes.append(scope)
        self.ctx.start_soon(self._run, request.native, local, ready, failure, scope,
                            self.send.clone())
        await ready.wait()
        if failure:
            raise failure[0]

    async def _run(
        self,
        native: dict[str, Any],
        local: int,
        ready: trio.Event,
        failure: list[DiscoverdError],
        scope: trio.CancelScope,
        send: trio.MemorySendChannel[bytes],
    ) -> None:
        async def emit(frame: dict[str, Any]) -> None:
            if frame.get("created"):
                self.native_ids[local] = frame["watch_id"]
            await send.send(ej.dumps(ej.encode_watch_response(frame, local)) + b"\n")
            ready.set()

        async with send:
            with scope:
                try:
                    await self.ctx.stream("watch", native, emit)
                except DiscoverdError as e:
                    if not ready.is_set():
                        failure.append(e)
                        return
                    await send.send(stream_error_chunk(e))
                    self.stop_all()  # etcd's stream ends on any error
                finally:
                    ready.set()
                    self.native_ids.pop(local, None)
