"""Every per-client limit crossed by one (DESIGN §12: bad input gets a clear error and
changes nothing; a member never suffers for one client).

Three levels: the pure checks (key/value sizes, the token bucket); the client port
(``ClientApi``) over in-memory streams on trio's MockClock, where time is the subject
(idle, write and rate bounds); and real members started in this process, driven through
the SDK, raw native frames and HTTP, each limit set small by its ``MemberConfig`` field
(what its ``serve`` flag sets). Waits are conditions under ``trio.fail_after``; nothing
sleeps to synchronise. Real-process tests (slow readers, the SDK under the rate bound, the
CLI) are in ``tests/e2e/test_limits_process.py``.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
from collections.abc import AsyncIterator, Callable, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import cbor2
import pytest
import structlog
import trio
import trio.testing
from structlog.testing import LogCapture

from discoverd.errors import (
    KeyTooLarge,
    TooManyOps,
    TooManyRequests,
    TooManyStreams,
    TooManyWatches,
    ValueTooLarge,
)
from discoverd.kv.limits import check_request_sizes
from discoverd.kv.requests import Compare as KvCompare
from discoverd.kv.requests import (
    CompareTarget,
    DeleteRangeRequest,
    PutRequest,
    RangeRequest,
    RequestOp,
    TxnRequest,
)
from discoverd.kv.watch import WatchRequest
from discoverd.sdk import AsyncClient, Compare, Op
from discoverd.server.api_server import ClientApi, Connection, Emit
from discoverd.server.config import MemberConfig
from discoverd.server.limits import TokenBucket
from discoverd.server.member import Member
from discoverd.wire.framing import FrameDecoder, encode_frame

BOUND = 30.0


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


# ---------------------------------------------------------------------- pure checks


def test_every_key_and_value_of_a_request_is_held_to_its_limit() -> None:
    k, v = 8, 16
    key, big_key = b"k" * k, b"k" * (k + 1)
    value, big_value = b"v" * v, b"v" * (v + 1)
    # Exactly at the limits: accepted everywhere.
    at_limit: list[object] = [
        RangeRequest(key=key, range_end=key), PutRequest(key=key, value=value),
        DeleteRangeRequest(key=key, range_end=key),
        WatchRequest(key=key, range_end=key),
        TxnRequest(compare=[KvCompare(key=key, range_end=key, target=CompareTarget.VALUE,
                                    value=value)],
                   success=[RequestOp(request_put=PutRequest(key=key, value=value))],
                   failure=[RequestOp(request_txn=TxnRequest(
                       success=[RequestOp(request_range=RangeRequest(key=key))]))]),
    ]
    for request in at_limit:
        check_request_sizes(request, k, v)
    nested = TxnRequest(failure=[RequestOp(request_txn=TxnRequest(
        success=[RequestOp(request_delete_range=DeleteRangeRequest(key=big_key))]))])
    key_over: list[object] = [
        RangeRequest(key=big_key), RangeRequest(key=key, range_end=big_key),
        PutRequest(key=big_key), DeleteRangeRequest(key=big_key),
        DeleteRangeRequest(key=key, range_end=big_key), WatchRequest(key=big_key),
        WatchRequest(key=key, range_end=big_key),
        TxnRequest(compare=[KvCompare(key=big_key)]),
        TxnRequest(compare=[KvCompare(key=key, range_end=big_key)]),
        TxnRequest(success=[RequestOp(request_range=RangeRequest(key=big_key))]),
        nested,
    ]
    for request in key_over:
        with pytest.raises(KeyTooLarge, match=r"of 9 bytes exceeds --max-key-bytes 8"):
            check_request_sizes(request, k, v)
    value_over: list[object] = [
        PutRequest(key=key, value=big_value),
        TxnRequest(compare=[KvCompare(key=key, target=CompareTarget.VALUE, value=big_value)]),
        TxnRequest(failure=[RequestOp(request_put=PutRequest(key=key, value=big_value))]),
    ]
    for request in value_over:
        with pytest.raises(ValueTooLarge,
                           match=r"^value of 17 bytes exceeds --max-value-bytes 16$"):
            check_request_sizes(request, k, v)


def test_token_bucket_allows_bursts_of_twice_the_rate_then_says_when_to_retry() -> None:
    bucket = TokenBucket(10, now=100.0)
    for _ in range(20):
        bucket.take(100.0)
    with pytest.raises(TooManyRequests) as refused:
        bucket.take(100.0)
    assert refused.value.retry_after == pytest.approx(0.1)
    assert refused.value.details() == {"retry_after": refused.value.retry_after}
    bucket.take(100.0 + refused.value.retry_after)  # the promised token is there
    with pytest.raises(TooManyRequests):
        bucket.take(100.1)
    bucket.take(1000.0)  # refilled, never beyond the burst
    assert bucket.tokens == 19.0
    unbounded = TokenBucket(0, now=0.0)
    for _ in range(10_000):
        unbounded.take(0.0)


# ---------------------------------------------------------------------- the client port


class Raw:
    """The client side of one native connection, frames in and out."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder(1 << 30)
        self.next_id = 0

    async def start(self) -> None:
        await self.stream.send_all(b"DSC1")

    async def send(self, op: str, **fields: Any) -> int:
        self.next_id += 1
        await self.stream.send_all(
            encode_frame(cbor2.dumps({"id": self.next_id, "op": op, **fields})))
        return self.next_id

    async def frame(self) -> dict[str, Any] | None:
        """The next answer, or None once the member has closed the connection."""
        while True:
            payload = self.decoder.next_frame()
            if payload is not None:
                answer: dict[str, Any] = cbor2.loads(payload)
                return answer
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                return None
            if not data:
                return None
            self.decoder.feed(data)

    async def call(self, op: str, **fields: Any) -> dict[str, Any]:
        rid = await self.send(op, **fields)
        answer = await self.frame()
        assert answer is not None
        assert answer["id"] == rid, answer
        return answer


class Fake:
    """Ops for a bare ``ClientApi``: ``echo`` answers at once, ``slow`` after 10 s, and
    the stream ``hold`` sends one frame then stays open until its connection closes."""

    def __init__(self) -> None:
        self.calls = 0
        self.streams_open = 0

    async def echo(self, req: dict[str, Any], conn: Connection) -> dict[str, Any]:
        self.calls += 1
        return {"n": req.get("n")}

    async def slow(self, req: dict[str, Any], conn: Connection) -> dict[str, Any]:
        await trio.sleep(10)
        return {}

    async def hold(self, req: dict[str, Any], conn: Connection, emit: Emit) -> None:
        self.streams_open += 1
        try:
            await emit({"created": True})
            await trio.sleep_forever()
        finally:
            self.streams_open -= 1


def fake_api(fake: Fake, **limits: Any) -> tuple[ClientApi, LogCapture]:
    capture = LogCapture()
    log = structlog.wrap_logger(None, processors=[capture])
    api = ClientApi({"echo": fake.echo, "slow": fake.slow}, streams={"hold": fake.hold},
                    max_request_bytes=1 << 20, log=log, request_timeout=60, **limits)
    return api, capture


def closures(capture: LogCapture, limit: str) -> list[MutableMapping[str, Any]]:
    return [e for e in capture.entries
            if e["event"] == "client connection closed by a limit" and e["limit"] == limit]


async def test_streams_beyond_the_bound_are_refused_and_the_rest_keeps_working(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = Fake()
    api, _ = fake_api(fake, max_concurrent_streams=2)
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(api._handle, server)
        raw = Raw(client)
        await raw.start()
        for _ in range(2):
            await raw.send("hold")
            answer = await raw.frame()
            assert answer is not None
            assert answer["ok"] == {"created": True}
        await raw.send("hold")  # one over
        refused = await raw.frame()
        assert refused is not None
        assert refused["err"]["code"] == "too_many_streams"
        assert refused["err"]["message"] == (
            "this connection already has 2 streams open (--max-concurrent-streams 2)")
        assert fake.streams_open == 2  # the refused stream's handler never ran
        assert (await raw.call("echo", n=1))["ok"] == {"n": 1}
        # Another connection has its own bound.
        client2, server2 = trio.testing.memory_stream_pair()
        nursery.start_soon(api._handle, server2)
        other = Raw(client2)
        await other.start()
        await other.send("hold")
        assert (await other.frame()) is not None
        assert fake.streams_open == 3
        nursery.cancel_scope.cancel()


async def test_an_idle_connection_is_closed_but_not_one_with_work_in_flight(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = Fake()
    api, capture = fake_api(fake, idle_timeout=5.0)
    async with trio.open_nursery() as nursery:
        # Nothing at all: closed after the idle timeout, not before.
        client, server = trio.testing.memory_stream_pair()
        nursery.start_soon(api._handle, server)
        raw = Raw(client)
        await raw.start()
        t0 = trio.current_time()
        assert (await raw.call("echo", n=1))["ok"] == {"n": 1}
        assert await raw.frame() is None
        assert trio.current_time() - t0 == pytest.approx(5.0)
        assert len(closures(capture, "idle")) == 1
        assert api.limit_refusals["idle"] == 1

        # A request that takes 10 s: idleness counts from its answer.
        client, server = trio.testing.memory_stream_pair()
        nursery.start_soon(api._handle, server)
        raw = Raw(client)
        await raw.start()
        t0 = trio.current_time()
        answer = await raw.call("slow")
        assert "ok" in answer
        assert trio.current_time() - t0 == pytest.approx(10.0)
        assert await raw.frame() is None
        assert trio.current_time() - t0 == pytest.approx(15.0)

        # An open stream is not idleness, however long it is quiet.
        client, server = trio.testing.memory_stream_pair()
        nursery.start_soon(api._handle, server)
        raw = Raw(client)
        await raw.start()
        await raw.send("hold")
        assert await raw.frame() is not None
        with trio.move_on_after(3600) as waited:
            await raw.frame()
        assert waited.cancelled_caught, "a connection with an open stream was closed"
        assert api.limit_refusals["idle"] == 2
        nursery.cancel_scope.cancel()


async def test_never_idle_when_the_idle_timeout_is_off(
    autojump_clock: trio.testing.MockClock,
) -> None:
    api, capture = fake_api(Fake(), idle_timeout=None)
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(api._handle, server)
        raw = Raw(client)
        await raw.start()
        with trio.move_on_after(10 * 3600) as waited:
            await raw.frame()
        assert waited.cancelled_caught
        assert (await raw.call("echo", n=2))["ok"] == {"n": 2}
        nursery.cancel_scope.cancel()
    assert not closures(capture, "idle")


async def test_a_client_that_stops_reading_is_dropped_after_the_write_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = Fake()
    api, capture = fake_api(fake, write_timeout=2.0)
    # Lockstep: a send completes only as the other side receives, as a full TCP window.
    client, server = trio.testing.lockstep_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(api._handle, server)
        raw = Raw(client)
        await raw.start()
        assert (await raw.call("echo", n=0))["ok"] == {"n": 0}
        t0 = trio.current_time()
        await raw.send("echo", n=1)  # and never read its answer
        with trio.fail_after(60):
            while not closures(capture, "write_timeout"):  # noqa: ASYNC110 - a log entry
                await trio.sleep(0.5)
        assert trio.current_time() - t0 == pytest.approx(2.0, abs=0.5)
        assert closures(capture, "write_timeout")[0]["connection"] == 1
        assert api.limit_refusals["write_timeout"] == 1
        # Its side is closed: reading now finds (at most the answer cut short and) the end.
        late = 0
        while await raw.frame() is not None:
            late += 1
        assert late <= 1
        # Another connection is served meanwhile and afterwards.
        client2, server2 = trio.testing.lockstep_stream_pair()
        nursery.start_soon(api._handle, server2)
        other = Raw(client2)
        await other.start()
        assert (await other.call("echo", n=3))["ok"] == {"n": 3}
        nursery.cancel_scope.cancel()


async def test_requests_over_the_rate_are_refused_with_retry_after_and_not_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = Fake()
    api, _ = fake_api(fake, max_requests_per_second=10)
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(api._handle, server)
        raw = Raw(client)
        await raw.start()
        for n in range(21):  # the burst (twice the rate) plus one, all at one instant
            await raw.send("echo", n=n)
        answers = [await raw.frame() for _ in range(21)]
        ok = [a for a in answers if a is not None and "ok" in a]
        refused = [a for a in answers if a is not None and "err" in a]
        assert len(ok) == 20
        assert fake.calls == 20
        assert len(refused) == 1
        err = refused[0]["err"]
        assert err["code"] == "too_many_requests"
        assert err["message"] == "etcdserver: too many requests"
        assert err["retry_after"] == pytest.approx(0.1)
        # The connection stays open; after retry_after the request goes through.
        await trio.sleep(err["retry_after"])
        assert (await raw.call("echo", n=99))["ok"] == {"n": 99}
        assert fake.calls == 21
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------- real members


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@asynccontextmanager
async def member(tmp_path: Path, **settings: Any) -> AsyncIterator[Member]:
    """One member (its own cluster) started in this trio run, leading; stopped on exit."""
    client, peer = free_port(), free_port()
    cfg = MemberConfig(
        name="m1", data_dir=str(tmp_path / "m1"),
        listen_client_urls=f"http://127.0.0.1:{client}",
        advertise_client_urls=f"http://127.0.0.1:{client}",
        listen_peer_urls=f"http://127.0.0.1:{peer}",
        initial_advertise_peer_urls=f"http://127.0.0.1:{peer}",
        initial_cluster=f"m1=http://127.0.0.1:{peer}", heartbeat_interval_ms=50,
        election_timeout_ms=500, **settings,
    )
    async with trio.open_nursery() as nursery:
        m: Member = await nursery.start(Member(cfg, structlog.get_logger("test")).run)
        await until("a leader", lambda: m.core.is_leader)
        yield m
        nursery.cancel_scope.cancel()


def port_of(m: Member) -> int:
    port: int = m.api.listeners[0].socket.getsockname()[1]
    return port


async def until(what: str, cond: Callable[[], object]) -> None:
    """Poll ``cond`` (state changed by other tasks); the caller's ``fail_after`` bounds it."""
    while not cond():  # noqa: ASYNC110 - state of other tasks, no event to wait on
        await trio.sleep(0.005)
    assert cond(), what


async def native(m: Member) -> Raw:
    raw = Raw(await trio.open_tcp_stream("127.0.0.1", port_of(m)))
    await raw.start()
    return raw


def _http(port: int, method: str, path: str, body: bytes | None
          ) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body,
                     headers={"content-type": "application/json"} if body else {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


async def http_call(m: Member, method: str, path: str, body: Any = None
                    ) -> tuple[int, dict[str, str], Any]:
    data = json.dumps(body).encode() if body is not None else None
    status, headers, raw = await trio.to_thread.run_sync(_http, port_of(m), method, path, data)
    return status, headers, json.loads(raw) if raw else None


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def refusals(m: Member) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    body, _ = m.metrics.render()
    for family in text_string_to_metric_families(body.decode()):
        if family.name == "discoverd_client_limit_refusals":
            return {s.labels["limit"]: s.value for s in family.samples
                    if s.name.endswith("_total")}
    raise AssertionError("discoverd_client_limit_refusals_total is not exposed")


async def test_key_and_value_sizes_are_refused_everywhere_before_anything_changes(
    tmp_path: Path,
) -> None:
    with trio.fail_after(BOUND):
        async with member(tmp_path, max_key_bytes=64, max_value_bytes=256) as m:
            key, big_key = "k" * 64, "k" * 65
            value, big_value = b"v" * 256, b"v" * 257
            async with AsyncClient([f"127.0.0.1:{port_of(m)}"]) as c:
                before = (await c.put(key, value)).header.revision  # at the limits: fine
                refused: list[tuple[str, Any]] = [
                    ("put key", lambda: c.put(big_key, b"v")),
                    ("put value", lambda: c.put("small", big_value)),
                    ("get", lambda: c.get(big_key)),
                    ("get range end", lambda: c.get(key, range_end="z" * 65)),
                    ("delete", lambda: c.delete(big_key)),
                    ("txn compare key", lambda: c.txn([Compare.value(big_key) == "x"],
                                                      [Op.put("small", "v")])),
                    ("txn compare value", lambda: c.txn([Compare.value(key) == big_value],
                                                        [Op.put("small", "v")])),
                    ("txn op", lambda: c.txn([], [Op.put("small", "v"),
                                                  Op.put("small2", big_value)])),
                    ("nested txn op", lambda: c.txn([], [], [Op.txn([], [Op.delete(big_key)])])),
                ]
                for what, attempt in refused:
                    with pytest.raises((KeyTooLarge, ValueTooLarge)) as e:
                        await attempt()
                    assert "exceeds --max-" in str(e.value), what
                with pytest.raises(KeyTooLarge, match=r"^key of 65 bytes exceeds "
                                                      r"--max-key-bytes 64$"):
                    await c.put(big_key, b"v")
                with pytest.raises(ValueTooLarge, match=r"^value of 257 bytes exceeds "
                                                        r"--max-value-bytes 256$"):
                    await c.put("small", big_value)
                # Nothing changed: same revision, nothing written.
                after = await c.get(b"\0", from_key=True)
                assert after.header.revision == before
                assert [kv.key for kv in after.kvs] == [key.encode()]
            # A watch is held to the key limit too (raw: the SDK's watch resumes on errors).
            raw = await native(m)
            answer = await raw.call("watch", key=big_key.encode())
            assert answer["err"]["code"] == "key_too_large", answer
            answer = await raw.call("watch", key=b"a", range_end=big_key.encode())
            assert answer["err"]["code"] == "key_too_large", answer
            assert len(m.machine.hub) == 0
            # The etcd gateway: 400 with INVALID_ARGUMENT and the message.
            status, _, body = await http_call(m, "POST", "/v3/kv/put",
                                              {"key": b64(big_key.encode()), "value": b64(b"v")})
            assert status == 400
            assert body["code"] == 3
            assert body["message"] == "key of 65 bytes exceeds --max-key-bytes 64"
            status, _, body = await http_call(m, "POST", "/v3/kv/range",
                                              {"key": b64(big_key.encode())})
            assert (status, body["code"]) == (400, 3)
            # Registry REST: a config document over the value limit is 413.
            status, _, body = await http_call(m, "PUT", "/v1/config/app", {"pad": "x" * 300})
            assert status == 413, body
            assert body["error"] == "value_too_large"
            assert body["message"].startswith("value of ")
            assert m.machine.store.revision == before
            assert m.machine.store.key_count == 1
            counts = refusals(m)
            # keys: 6 of the SDK list + 1 explicit + 2 watches + 2 gateway;
            # values: 3 of the SDK list + 1 explicit + 1 registry REST.
            assert counts["key_size"] == 6 + 1 + 2 + 2
            assert counts["value_size"] == 3 + 1 + 1
            # The member still serves.
            async with AsyncClient([f"127.0.0.1:{port_of(m)}"]) as c:
                await c.put("after", b"1")
                assert (await c.get("after")).kvs[0].value == b"1"


async def test_txn_ops_and_watches_per_connection_crossed_by_one(tmp_path: Path) -> None:
    with trio.fail_after(BOUND):
        async with member(tmp_path, max_txn_ops=3, max_watches_per_connection=2) as m:
            async with AsyncClient([f"127.0.0.1:{port_of(m)}"]) as c:
                at_limit = await c.txn([], [Op.put(f"t{i}", "v") for i in range(3)])
                with pytest.raises(TooManyOps):
                    await c.txn([], [Op.put(f"u{i}", "v") for i in range(4)])
                after = await c.get("u", prefix=True)
                assert after.header.revision == at_limit.header.revision
                assert after.kvs == ()
            raw = await native(m)
            for _ in range(2):
                await raw.send("watch", key=b"w")
                created = await raw.frame()
                assert created is not None
                assert created["ok"]["created"], created
            answer = await raw.call("watch", key=b"w")
            assert answer["err"]["code"] == TooManyWatches.code, answer
            assert len(m.machine.hub) == 2
            assert "ok" in await raw.call("range", key=b"t0")


async def test_streams_per_connection_on_a_member(tmp_path: Path) -> None:
    with trio.fail_after(BOUND):
        async with member(tmp_path, max_concurrent_streams=2) as m:
            raw = await native(m)
            for _ in range(2):
                await raw.send("watch", key=b"w")
                created = await raw.frame()
                assert created is not None
                assert created["ok"]["created"], created
            answer = await raw.call("watch", key=b"w")
            assert answer["err"]["code"] == TooManyStreams.code, answer
            assert "--max-concurrent-streams 2" in answer["err"]["message"]
            assert len(m.machine.hub) == 2  # nothing was added for the refused one
            assert "ok" in await raw.call("range", key=b"w")
            other = await native(m)  # another connection has its own bound
            await other.send("watch", key=b"w")
            created = await other.frame()
            assert created is not None
            assert created["ok"]["created"]
            assert refusals(m)["streams"] == 1
            # Unary requests, HTTP ones included, are not streams: unaffected.
            status, _, body = await http_call(m, "POST", "/v3/kv/range", {"key": b64(b"w")})
            assert status == 200, body


async def test_rate_bound_refuses_native_and_http_requests_and_changes_nothing(
    tmp_path: Path,
) -> None:
    with trio.fail_after(BOUND):
        async with member(tmp_path, max_requests_per_second=5) as m:
            before = m.machine.store.revision
            raw = await native(m)
            for n in range(30):  # pipelined: far faster than 5/s, burst 10
                await raw.send("put", key=f"r/{n:02}".encode(), value=b"v")
            answers = [await raw.frame() for _ in range(30)]
            accepted = [a for a in answers if a is not None and "ok" in a]
            refused = [a for a in answers if a is not None and "err" in a]
            assert len(accepted) + len(refused) == 30
            assert 10 <= len(accepted) < 30
            for a in refused:
                assert a["err"]["code"] == "too_many_requests", a
                assert 0 < a["err"]["retry_after"] <= 0.2
            # Exactly the accepted puts applied, one revision each; refused keys absent.
            assert m.machine.store.revision == before + len(accepted)
            assert m.machine.store.key_count == len(accepted)
            # The connection stays open: waiting retry_after lets a request through.
            await trio.sleep(refused[-1]["err"]["retry_after"])
            assert "ok" in await raw.call("range", key=b"r/00")
            # HTTP, one keep-alive connection: requests until the first 429 (at most 40,
            # far beyond a burst of 10 at 5/s); it stays open for the next path.
            port = port_of(m)

            def until_429(conn: http.client.HTTPConnection, method: str, path: str,
                          body: bytes | None) -> list[tuple[int, dict[str, str], Any]]:
                seen: list[tuple[int, dict[str, str], Any]] = []
                while len(seen) < 40 and (not seen or seen[-1][0] != 429):
                    conn.request(method, path, body=body)
                    resp = conn.getresponse()
                    seen.append((resp.status, {k.lower(): v for k, v in resp.getheaders()},
                                 json.loads(resp.read())))
                return seen

            def bursts() -> tuple[list[Any], list[Any]]:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                try:
                    gateway = until_429(conn, "POST", "/v3/kv/range",
                                        json.dumps({"key": b64(b"r/00")}).encode())
                    rest = until_429(conn, "GET", "/v1/status", None)
                    return gateway, rest
                finally:
                    conn.close()

            gateway, rest = await trio.to_thread.run_sync(bursts)
            assert {s[0] for s in gateway[:-1]} == {200}
            assert len(gateway) >= 10
            status, headers, body = gateway[-1]
            assert status == 429
            assert headers["retry-after"] == "1"
            assert body == {"error": "etcdserver: too many requests",
                            "message": "etcdserver: too many requests", "code": 8}
            status, headers, body = rest[-1]
            assert status == 429
            assert headers["retry-after"] == "1"
            assert body["error"] == "too_many_requests"
            assert 0 < body["retry_after"] <= 0.2
            assert m.machine.store.revision == before + len(accepted)
            assert refusals(m)["rate"] == len(refused) + 2


async def test_idle_native_connection_is_closed_and_the_sdk_redials(tmp_path: Path) -> None:
    with trio.fail_after(BOUND):
        async with member(tmp_path, client_idle_timeout_ms=300) as m:
            async with AsyncClient([f"127.0.0.1:{port_of(m)}"]) as c:
                await c.put("a", b"1")
                assert m.api.connections == 1
                await until("the idle connection closed", lambda: m.api.connections == 0)
                conn = c._conn
                await until("the SDK saw it", lambda: conn is None or not conn.usable)
                assert (await c.get("a")).kvs[0].value == b"1"  # redialled
                assert m.api.connections == 1
            assert refusals(m)["idle"] >= 1


async def test_http_connections_have_the_idle_and_write_timeouts_too(tmp_path: Path) -> None:
    with trio.fail_after(BOUND):
        async with member(tmp_path, client_idle_timeout_ms=300,
                          client_write_timeout_ms=300) as m:
            async with AsyncClient([f"127.0.0.1:{port_of(m)}"]) as c:
                await c.put("big", b"x" * (1024 * 1024))
            await until("the SDK's connection closed", lambda: m.api.connections == 0)
            # A keep-alive HTTP connection that sends nothing more is closed.
            idled = m.api.limit_refusals["idle"]
            idle = await trio.open_tcp_stream("127.0.0.1", port_of(m))
            await idle.send_all(b"GET /version HTTP/1.1\r\nHost: t\r\n\r\n")
            received = b""
            while chunk := await idle.receive_some(65536):  # until the member closes it
                received += chunk
            assert received.startswith(b"HTTP/1.1 200 ")
            assert m.api.limit_refusals["idle"] == idled + 1
            # A client pipelining big answers and never reading is dropped.
            sock = trio.socket.socket()
            sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4096)
            await sock.connect(("127.0.0.1", port_of(m)))
            slow = trio.SocketStream(sock)
            body = json.dumps({"key": b64(b"big")}).encode()
            request = (b"POST /v3/kv/range HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s"
                       % (len(body), body))
            await slow.send_all(request * 16)
            before = m.api.limit_refusals["write_timeout"]
            await until("the slow HTTP reader dropped",
                        lambda: m.api.limit_refusals["write_timeout"] > before)
            await slow.aclose()
            counts = refusals(m)
            assert counts["idle"] >= 1
            assert counts["write_timeout"] >= 1
            status, _, answer = await http_call(m, "GET", "/version")
            assert status == 200, answer
