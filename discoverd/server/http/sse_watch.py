"""``GET /v1/watch``: a watch as Server-Sent Events (docs/http.md "Server-Sent Events").

One native ``watch`` stream per request. The response starts only once the watch is created
(a client that sees the headers knows every later write reaches it; a refused watch — bad
query, no leader — is an ordinary error answer instead). Frames then pass through a small
channel to the response: a slow reader blocks its own native stream, whose hub buffers and
falls back to history as for any slow client, never slowing the member. When nothing has
been sent for ``keepalive`` seconds a ``: ping`` comment goes out, so proxies do not close
an idle stream; the server stops the watch when the client goes away.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import trio

from discoverd.errors import DiscoverdError, Unavailable
from discoverd.server.api_server import error_body
from discoverd.server.http.rest_responses import rest_error
from discoverd.server.http.router import (
    GatewayContext,
    HttpRequest,
    HttpResponse,
    StreamingResponse,
)
from discoverd.wire import sse_json

CHANNEL_FRAMES = 16

Item = tuple[str, Any]
"""("frame", a native watch frame) or ("error", a ``DiscoverdError`` that ended it)."""


async def watch(req: HttpRequest, ctx: GatewayContext, params: Mapping[str, str]
                ) -> HttpResponse | StreamingResponse:
    try:
        query = sse_json.parse_watch_query(req.query, req.headers.get("last-event-id"))
    except DiscoverdError as e:
        return rest_error(e)
    send, recv = trio.open_memory_channel[Item](CHANNEL_FRAMES)
    created: list[bytes] = []
    failure: list[DiscoverdError] = []
    ready = trio.Event()
    ctx.start_soon(_run, ctx, query.native, send, created, failure, ready)
    await ready.wait()
    if failure or not created:
        recv.close()
        return rest_error(failure[0] if failure else
                          Unavailable("the watch ended before it was created; retry"))

    async def chunks() -> AsyncIterator[bytes]:
        yield created[0]
        async with recv:
            while True:
                with trio.move_on_after(query.keepalive) as idle:
                    try:
                        kind, item = await recv.receive()
                    except trio.EndOfChannel:
                        return
                if idle.cancelled_caught:
                    yield sse_json.PING
                    continue
                if kind == "error":
                    err = error_body(item)
                    yield sse_json.canceled_event(err["code"], err["message"])
                    return
                text, ended = sse_json.encode_frame(item)
                if text:
                    yield text
                if ended:
                    return

    return StreamingResponse(200, list(sse_json.HEADERS), chunks)


async def _run(
    ctx: GatewayContext,
    native: dict[str, Any],
    send: trio.MemorySendChannel[Item],
    created: list[bytes],
    failure: list[DiscoverdError],
    ready: trio.Event,
) -> None:
    """The native stream, feeding ``send``; ``ready`` once it is created or has failed."""
    async def emit(frame: dict[str, Any]) -> None:
        if frame.get("created"):
            created.append(sse_json.created_event(frame))
            ready.set()
            return
        await send.send(("frame", frame))

    async with send:
        try:
            await ctx.stream("watch", native, emit)
        except DiscoverdError as e:
            if not ready.is_set():
                failure.append(e)
            else:
                await send.send(("error", e))
        except trio.BrokenResourceError:
            pass  # the response ended (client gone) while a frame was on its way
        finally:
            ready.set()
