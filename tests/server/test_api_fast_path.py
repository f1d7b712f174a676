"""``ClientApi``'s fast path (``FastHandler``): a unary op answered in the connection's
reader, without a task, when its synchronous path has the answer — and the ordinary path
for everything else, with the same answers, errors and metrics."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing
from test_limits import Fake, Raw

from discoverd.errors import ClientError
from discoverd.server.api_server import ClientApi, Connection


def fast_echo(req: dict[str, Any], conn: Connection) -> dict[str, Any] | None:
    """Even ``n``: answered here; odd: not known without waiting (the slow path)."""
    n = req.get("n")
    if n == "boom":
        raise ClientError("fast path refused it")
    if isinstance(n, int) and n % 2 == 0:
        return {"fast": n}
    return None


class Gate:
    """An auth gate that lets everything through (auth on, nobody refused)."""

    store = type("Store", (), {"revision": 1})()

    def gate(self, op: str, req: dict[str, Any], token: Any, conn: Connection
             ) -> tuple[Any, str | None]:
        return None, None

    def recheck(self, what: Any, op: str, req: dict[str, Any], token: Any,
                conn: Connection, judged_at: int) -> None:
        return None


async def serve(api: ClientApi, body: Any) -> None:
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(api._handle, server)
        raw = Raw(client)
        await raw.start()
        await body(raw)
        nursery.cancel_scope.cancel()


async def test_fast_answers_skip_the_handler_and_the_rest_take_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = Fake()
    seen: list[tuple[str, str, float | None]] = []
    api = ClientApi({"echo": fake.echo}, fast={"echo": fast_echo}, max_request_bytes=1 << 20,
                    on_request=lambda *a: seen.append(a))

    async def body(raw: Raw) -> None:
        assert (await raw.call("echo", n=2))["ok"] == {"fast": 2}
        assert fake.calls == 0
        assert (await raw.call("echo", n=3))["ok"] == {"n": 3}
        assert fake.calls == 1
        refused = await raw.call("echo", n="boom")
        assert refused["err"]["code"] == ClientError.code
        assert "fast path refused it" in refused["err"]["message"]
        assert (await raw.call("echo", n=4))["ok"] == {"fast": 4}, "the connection goes on"

    with trio.fail_after(10):
        await serve(api, body)
    assert [(op, code) for op, code, _ in seen] == [
        ("echo", "ok"), ("echo", "ok"), ("echo", ClientError.code), ("echo", "ok")]
    assert all(seconds is not None and seconds >= 0 for _, _, seconds in seen)
    assert api.requests == 4
    assert api.errors == 1


async def test_malformed_requests_are_refused_before_any_path(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = Fake()
    api = ClientApi({"echo": fake.echo}, fast={"echo": fast_echo}, max_request_bytes=1 << 20)

    async def body(raw: Raw) -> None:
        answer = await raw.call("echo", n=2)
        await raw.stream.send_all(b"\x00\x00\x00\x01\xff")  # a frame that is not CBOR
        bad = await raw.frame()
        assert bad is not None
        assert bad["id"] == 0
        assert bad["err"]["code"] == "bad_request"
        assert answer["ok"] == {"fast": 2}
        assert (await raw.call("echo", n=6))["ok"] == {"fast": 6}

    with trio.fail_after(10):
        await serve(api, body)
    assert fake.calls == 0


async def test_with_auth_on_every_request_goes_through_the_gate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = Fake()
    api = ClientApi({"echo": fake.echo}, fast={"echo": fast_echo}, max_request_bytes=1 << 20,
                    auth=Gate())

    async def body(raw: Raw) -> None:
        assert (await raw.call("echo", n=2))["ok"] == {"n": 2}

    with trio.fail_after(10):
        await serve(api, body)
    assert fake.calls == 1
