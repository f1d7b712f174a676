"""The HTTP core (``server/http/server.py``, ``router.py``) on real loopback sockets, in
process: a ``ClientApi`` with a few toy ops and routes, short timeouts so the slow-client
cases take well under a second, raw bytes on the wire so framing is checked exactly."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import cbor2
import pytest
import trio

from discoverd.errors import LeaseNotFound
from discoverd.server.api_server import ClientApi, Connection
from discoverd.server.http import (
    GatewayContext,
    HttpRequest,
    HttpResponse,
    HttpServer,
    Router,
    StreamingResponse,
)
from discoverd.server.http.server import body_limit
from discoverd.wire.framing import encode_frame

MAX_REQUEST = 1024
TIMEOUT = 0.3
BOUND = 5.0  # every wait for the server is bounded by this (seconds)


class World:
    """What the toy handlers observed."""

    def __init__(self) -> None:
        self.stream_closed = trio.Event()
        self.calls: list[dict[str, Any]] = []


async def op_echo(req: dict[str, Any], conn: Connection) -> dict[str, Any]:
    return {"echo": req, "conn": conn.number}


def make_router(world: World) -> Router:
    router = Router()

    async def hello(req: HttpRequest, ctx: GatewayContext) -> HttpResponse:
        return HttpResponse(200, b"hello " + req.body, [("content-type", "text/plain")])

    async def echo(req: HttpRequest, ctx: GatewayContext) -> HttpResponse:
        answer = await ctx.call("echo", {"value": req.body})
        world.calls.append(answer)
        return HttpResponse(200, json.dumps({"conn": answer["conn"],
                                             "query": req.query}).encode())

    async def chunks(req: HttpRequest, ctx: GatewayContext) -> StreamingResponse:
        async def gen() -> AsyncIterator[bytes]:
            for part in (b"one\n", b"two two\n", b"three three three\n"):
                yield part
        return StreamingResponse(200, [("content-type", "text/plain")], gen)

    async def forever(req: HttpRequest, ctx: GatewayContext) -> StreamingResponse:
        async def gen() -> AsyncIterator[bytes]:
            try:
                yield b"started\n"
                await trio.sleep_forever()
            finally:
                world.stream_closed.set()
        return StreamingResponse(200, [], gen)

    async def crash(req: HttpRequest, ctx: GatewayContext) -> HttpResponse:
        raise RuntimeError("a bug")

    async def not_found(req: HttpRequest, ctx: GatewayContext) -> HttpResponse:
        raise LeaseNotFound()

    async def prefixed(req: HttpRequest, ctx: GatewayContext) -> HttpResponse:
        return HttpResponse(200, req.path.encode())

    router.add("GET", "/hello", hello)
    router.add("POST", "/hello", hello)
    router.add("POST", "/echo", echo)
    router.add("GET", "/chunks", chunks)
    router.add("GET", "/forever", forever)
    router.add("GET", "/crash", crash)
    router.add("GET", "/lease", not_found)
    router.add_prefix("GET", "/items/", prefixed)
    router.add_prefix("GET", "/items/special/", hello)
    return router


@pytest.fixture
async def server(nursery: trio.Nursery) -> tuple[int, World]:
    world = World()
    http = HttpServer(make_router(world), header_timeout=TIMEOUT, body_timeout=TIMEOUT,
                      idle_timeout=2 * TIMEOUT)
    api = ClientApi({"echo": op_echo}, max_request_bytes=MAX_REQUEST, http=http)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(api.serve, listeners)
    port = listeners[0].socket.getsockname()[1]
    return port, world


async def connect(port: int) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", port)


async def read_until_closed(stream: trio.SocketStream) -> bytes:
    out = bytearray()
    with trio.fail_after(BOUND):
        while data := await stream.receive_some(65536):
            out += data
    return bytes(out)


class Reader:
    """Parses HTTP/1.1 responses off a stream, keeping leftovers for the next one."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def _fill(self) -> None:
        with trio.fail_after(BOUND):
            data = await self.stream.receive_some(65536)
        if not data:
            raise EOFError("connection closed")
        self.buf += data

    async def _until(self, marker: bytes) -> bytes:
        while (i := self.buf.find(marker)) < 0:
            await self._fill()
        out = bytes(self.buf[:i])
        del self.buf[:i + len(marker)]
        return out

    async def _exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            await self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def response(self) -> tuple[int, dict[str, str], list[bytes]]:
        """(status, headers, body parts): one part for a Content-Length body, one per
        HTTP chunk for a chunked one."""
        head = (await self._until(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(head[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
        if "content-length" in headers:
            return status, headers, [await self._exactly(int(headers["content-length"]))]
        parts = []
        while True:
            size = int(await self._until(b"\r\n"), 16)
            if size == 0:
                await self._until(b"\r\n")
                return status, headers, parts
            parts.append(await self._exactly(size))
            await self._exactly(2)


def get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode()


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
            .encode() + body)


async def test_native_clients_are_still_served_natively(server: tuple[int, World]) -> None:
    port, _ = server
    stream = await connect(port)
    await stream.send_all(b"DSC1" + encode_frame(cbor2.dumps({"id": 7, "op": "echo", "x": 1})))
    with trio.fail_after(BOUND):
        data = await stream.receive_some(65536)
    answer = cbor2.loads(data[4:])
    assert answer["id"] == 7
    assert answer["ok"]["echo"]["x"] == 1


async def test_keep_alive_and_pipelined_requests_in_order(server: tuple[int, World]) -> None:
    port, world = server
    stream = await connect(port)
    reader = Reader(stream)
    # Three requests in one write: answered one at a time, in order, on one connection.
    await stream.send_all(post("/hello", b"a") + post("/echo", b"b") + get("/hello?x=1"))
    assert (await reader.response())[2] == [b"hello a"]
    status, _, (body,) = await reader.response()
    assert status == 200
    assert json.loads(body)["conn"] == world.calls[0]["conn"]
    assert (await reader.response())[2] == [b"hello "]
    await stream.send_all(post("/echo", b"c") + post("/echo?a=1&a=2&b=", b"d"))
    await reader.response()
    _, _, (body,) = await reader.response()
    assert json.loads(body)["query"] == {"a": ["1", "2"], "b": [""]}
    assert len({c["conn"] for c in world.calls}) == 1, "one connection, one Connection"


async def test_routing_errors_are_json(server: tuple[int, World]) -> None:
    port, _ = server
    stream = await connect(port)
    reader = Reader(stream)
    await stream.send_all(get("/nope") + post("/chunks", b"x") + get("/items/a/b")
                          + get("/items/special/x") + get("/lease"))
    status, headers, (body,) = await reader.response()
    assert status == 404
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"error": "no such path: /nope",
                                "message": "no such path: /nope", "code": 5}
    status, headers, (body,) = await reader.response()
    assert status == 405
    assert headers["allow"] == "GET"
    assert json.loads(body)["code"] == 12
    assert (await reader.response())[2] == [b"/items/a/b"]
    assert (await reader.response())[2] == [b"hello "], "the longest prefix wins"
    status, _, (body,) = await reader.response()
    assert status == 404  # a DiscoverdError escaping a handler: etcd's mapping
    assert json.loads(body)["message"] == "etcdserver: requested lease not found"


async def test_head_is_answered_by_the_get_handler_without_a_body(
    server: tuple[int, World],
) -> None:
    port, _ = server
    stream = await connect(port)
    await stream.send_all(b"HEAD /hello HTTP/1.1\r\nHost: t\r\n\r\n" + get("/hello"))
    reader = Reader(stream)
    head = await reader._until(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"content-length: 6" in head
    assert (await reader.response())[2] == [b"hello "], "no body bytes were sent for HEAD"


async def test_streaming_sends_one_http_chunk_per_item(server: tuple[int, World]) -> None:
    port, _ = server
    stream = await connect(port)
    reader = Reader(stream)
    await stream.send_all(get("/chunks") + get("/hello"))
    status, headers, parts = await reader.response()
    assert status == 200
    assert headers["transfer-encoding"] == "chunked"
    assert parts == [b"one\n", b"two two\n", b"three three three\n"]
    assert (await reader.response())[2] == [b"hello "], "the connection is reusable"


async def test_a_stream_ends_when_the_client_goes_away(server: tuple[int, World]) -> None:
    port, world = server
    stream = await connect(port)
    await stream.send_all(get("/forever"))
    reader = Reader(stream)
    head = await reader._until(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert not world.stream_closed.is_set()
    await stream.aclose()
    with trio.fail_after(BOUND):
        await world.stream_closed.wait()


async def test_a_handler_bug_costs_one_request(server: tuple[int, World]) -> None:
    port, _ = server
    stream = await connect(port)
    reader = Reader(stream)
    await stream.send_all(get("/crash") + get("/hello"))
    status, _, (body,) = await reader.response()
    assert status == 500
    assert json.loads(body)["code"] == 13
    assert (await reader.response())[0] == 200


@pytest.mark.parametrize("garbage", [
    b"BLAH\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",  # no Host header
    b"GET\x00 / HTTP/1.1\r\nHost: t\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: x\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET / HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n",
    b"GET //[oops/ HTTP/1.1\r\nHost: t\r\n\r\n",
])
async def test_malformed_requests_get_400_and_the_connection_closes(
    server: tuple[int, World], garbage: bytes,
) -> None:
    port, _ = server
    stream = await connect(port)
    await stream.send_all(garbage)
    response = await read_until_closed(stream)
    assert response.startswith(b"HTTP/1.1 400 "), response
    assert b'"code":3' in response


async def test_headers_over_16k_get_431(server: tuple[int, World]) -> None:
    port, _ = server
    stream = await connect(port)
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 20000)
    response = await read_until_closed(stream)
    assert response.startswith(b"HTTP/1.1 431 "), response[:80]


async def test_oversized_body_is_refused_before_it_is_read(server: tuple[int, World]) -> None:
    port, world = server
    limit = body_limit(MAX_REQUEST)
    stream = await connect(port)
    # Only the headers are sent: the 413 must not wait for the announced body.
    await stream.send_all(f"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {limit + 1}"
                          "\r\n\r\n".encode())
    response = await read_until_closed(stream)
    assert response.startswith(b"HTTP/1.1 413 "), response
    assert world.calls == []


async def test_chunked_body_over_the_limit_is_refused(server: tuple[int, World]) -> None:
    port, world = server
    limit = body_limit(MAX_REQUEST)
    stream = await connect(port)
    chunk = b"x" * 4096
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(limit // 4096 + 2))
    await stream.send_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked"
                          b"\r\n\r\n" + body + b"0\r\n\r\n")
    response = await read_until_closed(stream)
    assert response.startswith(b"HTTP/1.1 413 "), response[:80]
    assert world.calls == []


async def test_a_request_too_large_for_the_native_limit_is_refused(
    server: tuple[int, World],
) -> None:
    port, world = server
    stream = await connect(port)
    reader = Reader(stream)
    # Fits the HTTP body limit, but as a native frame it is over --max-request-bytes.
    await stream.send_all(post("/echo", b"x" * (MAX_REQUEST + 1)) + post("/echo", b"ok"))
    status, _, (body,) = await reader.response()
    assert status == 400
    assert json.loads(body)["message"] == "etcdserver: request is too large"
    assert (await reader.response())[0] == 200
    assert len(world.calls) == 1


async def test_a_client_stalling_in_its_headers_times_out(server: tuple[int, World]) -> None:
    port, _ = server
    stream = await connect(port)
    await stream.send_all(b"GET /hello HTTP/1.1\r\nHo")
    response = await read_until_closed(stream)  # bounded: fails if no answer comes
    assert response.startswith(b"HTTP/1.1 408 "), response
    assert b"headers" in response


async def test_a_client_stalling_in_its_body_times_out(server: tuple[int, World]) -> None:
    port, world = server
    stream = await connect(port)
    await stream.send_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
    response = await read_until_closed(stream)
    assert response.startswith(b"HTTP/1.1 408 "), response
    assert world.calls == []


async def test_an_idle_keep_alive_connection_is_closed_quietly(
    server: tuple[int, World],
) -> None:
    port, _ = server
    stream = await connect(port)
    await stream.send_all(get("/hello"))
    response = await read_until_closed(stream)
    assert response.count(b"HTTP/1.1") == 1, "closed after the idle timeout, no 408"


async def test_expect_100_continue(server: tuple[int, World]) -> None:
    port, _ = server
    stream = await connect(port)
    await stream.send_all(b"POST /hello HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n"
                          b"Expect: 100-continue\r\n\r\n")
    reader = Reader(stream)
    assert (await reader._until(b"\r\n\r\n")).startswith(b"HTTP/1.1 100 ")
    await stream.send_all(b"hi")
    assert (await reader.response())[2] == [b"hello hi"]


async def test_http_1_0_gets_an_answer_and_a_close(server: tuple[int, World]) -> None:
    port, _ = server
    stream = await connect(port)
    await stream.send_all(b"GET /chunks HTTP/1.0\r\n\r\n")
    response = await read_until_closed(stream)
    assert response.startswith(b"HTTP/1.1 200 ")
    assert response.endswith(b"one\ntwo two\nthree three three\n")


async def test_expect_100_continue_on_a_wrong_route_gets_the_final_answer(
    server: tuple[int, World],
) -> None:
    port, _ = server
    stream = await connect(port)
    await stream.send_all(b"POST /nope HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n"
                          b"Expect: 100-continue\r\n\r\n")
    response = await read_until_closed(stream)
    assert response.startswith(b"HTTP/1.1 404 "), response
