"""``discoverd.sdk`` against real ``discoverd serve`` processes (ProcessCluster).

Every test that speaks to a cluster runs under both anyio backends: the async ones are sync
test functions calling ``anyio.run(body, backend=...)`` (pytest-trio's trio_mode claims
``async def`` tests, so this is how asyncio gets its turn too). Every body is bounded by
``anyio.fail_after``; waits for a condition poll it under that bound, never a bare sleep.

Clusters: one module-scoped 3-member cluster for tests that leave it healthy, and a fresh
cluster for each test that kills or stops members.
"""

from __future__ import annotations

import ast
import contextlib
import random
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import pytest

from discoverd.sdk import (
    AsyncClient,
    Client,
    ClientError,
    Compacted,
    Compare,
    ConnectionLost,
    DeleteResponse,
    DiscoverdError,
    FutureRevision,
    KeyValue,
    Op,
    PutResponse,
    RangeResponse,
    RequestTimeout,
    TxnResponse,
    Unavailable,
)
from discoverd.testing.cluster import MemberProcess, ProcessCluster, free_port

BACKENDS = ["trio", "asyncio"]
BOUND = 30.0  # seconds; every test body must finish within this


def run(backend: str, body: Callable[[], Awaitable[None]], bound: float = BOUND) -> None:
    async def bounded() -> None:
        with anyio.fail_after(bound):
            await body()

    anyio.run(bounded, backend=backend)


def endpoints(cluster: ProcessCluster, members: list[MemberProcess] | None = None) -> list[str]:
    return [f"127.0.0.1:{m.client_port}" for m in (members or cluster.members)]


def dump_logs(cluster: ProcessCluster) -> None:
    for m in cluster.members:
        tail = m.log_text().splitlines()[-30:]
        print(f"----- {m.name} (last {len(tail)} lines)")
        print("\n".join(tail))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessCluster]:
    """A started 3-member cluster shared by the tests that leave it healthy."""
    c = ProcessCluster(tmp_path_factory.mktemp("sdk3"), 3)
    try:
        with c.started():
            yield c
    finally:
        dump_logs(c)


@pytest.fixture
def fresh_cluster(tmp_path: Path) -> Iterator[ProcessCluster]:
    """A started 3-member cluster of its own, for tests that kill or pause members."""
    c = ProcessCluster(tmp_path, 3)
    try:
        with c.started():
            yield c
    finally:
        dump_logs(c)


async def wait_until(what: str, probe: Callable[[], bool]) -> None:
    """Poll ``probe`` at short intervals; the caller's ``fail_after`` bounds the wait."""
    while not probe():  # noqa: ASYNC110 -- a counter with no event to wait on; bounded
        await anyio.sleep(0.01)
    assert probe(), what


# ----------------------------------------------------------------------------- basics


@pytest.mark.parametrize("backend", BACKENDS)
def test_status_of_current_and_of_a_given_endpoint(cluster: ProcessCluster, backend: str) -> None:
    eps = endpoints(cluster)

    async def body() -> None:
        async with AsyncClient(["http://" + eps[0], *eps[1:]]) as c:
            st = await c.status()
            assert st.endpoint == eps[0]
            assert st.name == "m1"
            assert len(st.voters) == 3
            assert st.header.member_id == st.member_id != 0
            assert st.leader in st.voters
            seen = {(await c.status(ep)).name for ep in eps}
            assert seen == {"m1", "m2", "m3"}
            leaders = [s for s in [await c.status(ep) for ep in eps] if s.is_leader]
            assert len(leaders) == 1
            assert leaders[0].role == "leader"

    run(backend, body)


@pytest.mark.parametrize("backend", BACKENDS)
def test_kv_roundtrip(cluster: ProcessCluster, backend: str) -> None:
    p = f"rt/{backend}/"

    async def body() -> None:
        async with AsyncClient(endpoints(cluster)) as c:
            r1 = await c.put(p + "a", b"1")
            assert isinstance(r1, PutResponse)
            assert r1.prev_kv is None
            r2 = await c.put(p + "a", "2", prev_kv=True)  # str values are utf-8 encoded
            assert r2.header.revision > r1.header.revision
            assert r2.prev_kv is not None
            assert r2.prev_kv.value == b"1"
            await c.put((p + "b").encode(), b"3")
            await c.put(p + "c\xff", b"4")

            got = await c.get(p + "a")
            assert isinstance(got, RangeResponse)
            assert got.count == 1
            assert not got.more
            kv = got.kvs[0]
            assert isinstance(kv, KeyValue)
            assert (kv.key, kv.value, kv.version) == ((p + "a").encode(), b"2", 2)
            assert kv.create_revision == r1.header.revision
            assert kv.mod_revision == r2.header.revision
            assert kv.lease == 0
            assert (await c.get(p + "missing")).kvs == ()

            everything = await c.get(p, prefix=True)
            assert [k.key for k in everything.kvs] == [
                (p + s).encode() for s in ("a", "b", "c\xff")]
            ranged = await c.get(p + "a", range_end=p + "c")
            assert [k.key for k in ranged.kvs] == [(p + s).encode() for s in ("a", "b")]
            onwards = await c.get(p + "b", from_key=True)
            assert [k.key for k in onwards.kvs][:2] == [(p + s).encode() for s in ("b", "c\xff")]

            d = await c.delete(p + "a", prev_kv=True)
            assert d.deleted == 1
            assert [k.value for k in d.prev_kvs] == [b"2"]
            d = await c.delete(p, prefix=True)
            assert d.deleted == 2
            assert d.prev_kvs == ()
            assert (await c.get(p, prefix=True)).count == 0

    run(backend, body)


@pytest.mark.parametrize("backend", BACKENDS)
def test_get_options(cluster: ProcessCluster, backend: str) -> None:
    p = f"opts/{backend}/"

    async def body() -> None:
        async with AsyncClient(endpoints(cluster)) as c:
            revs = [(await c.put(f"{p}{i}", f"v{9 - i}")).header.revision for i in range(5)]
            await c.put(f"{p}0", "again")

            limited = await c.get(p, prefix=True, limit=2)
            assert len(limited.kvs) == 2
            assert limited.more
            assert limited.count == 5
            desc = await c.get(p, prefix=True, sort_order="DESCEND", sort_target="KEY")
            assert [k.key for k in desc.kvs] == [f"{p}{i}".encode() for i in range(4, -1, -1)]
            by_value = await c.get(p, prefix=True, sort_order="ascend", sort_target="value")
            assert [k.value for k in by_value.kvs] == sorted(k.value for k in by_value.kvs)
            keys = await c.get(p, prefix=True, keys_only=True)
            assert all(k.value == b"" for k in keys.kvs)
            assert len(keys.kvs) == 5
            counted = await c.get(p, prefix=True, count_only=True)
            assert counted.count == 5
            assert counted.kvs == ()
            old = await c.get(f"{p}0", revision=revs[0])
            assert old.kvs[0].value == b"v9"
            modded = await c.get(p, prefix=True, min_mod_revision=revs[-1] + 1)
            assert [k.key for k in modded.kvs] == [f"{p}0".encode()]
            created = await c.get(p, prefix=True, max_create_revision=revs[1])
            assert len(created.kvs) == 2
            stale_ok = await c.get(f"{p}1", serializable=True)
            assert stale_ok.kvs == () or stale_ok.kvs[0].value == b"v8"
            with pytest.raises(FutureRevision):
                await c.get(f"{p}0", revision=revs[-1] + 10_000)
            with pytest.raises(ClientError):
                await c.get(p, sort_order="SIDEWAYS")

    run(backend, body)


@pytest.mark.parametrize("backend", BACKENDS)
def test_txn(cluster: ProcessCluster, backend: str) -> None:
    p = f"txn/{backend}/"

    async def body() -> None:
        async with AsyncClient(endpoints(cluster)) as c:
            created = await c.txn(
                [Compare.version(p + "lock") == 0],
                [Op.put(p + "lock", "me"), Op.get(p + "lock")],
                [Op.get(p + "lock")],
            )
            assert created.succeeded
            put_r, get_r = created.responses
            assert isinstance(put_r, PutResponse)
            assert isinstance(get_r, RangeResponse)
            assert get_r.kvs[0].value == b"me"

            again = await c.txn(
                [Compare.version(p + "lock") == 0],
                [Op.put(p + "lock", "you")],
                [Op.get(p + "lock")],
            )
            assert not again.succeeded
            (got,) = again.responses
            assert isinstance(got, RangeResponse)
            assert got.kvs[0].value == b"me"

            kv = (await c.get(p + "lock")).kvs[0]
            nested = await c.txn(
                [Compare.value(p + "lock") == "me", Compare.mod(p + "lock") == kv.mod_revision,
                 Compare.version(p + "lock") > 0, Compare.create(p + "lock") < 1 << 40,
                 Compare.lease(p + "lock") != 1],
                [Op.txn([Compare.value(p + "lock") != b"me"], [], [Op.delete(p + "lock",
                                                                            prev_kv=True)])],
            )
            assert nested.succeeded
            (inner,) = nested.responses
            assert isinstance(inner, TxnResponse)
            assert not inner.succeeded
            (deleted,) = inner.responses
            assert isinstance(deleted, DeleteResponse)
            assert deleted.deleted == 1
            assert deleted.prev_kvs[0].value == b"me"
            assert (await c.get(p + "lock")).kvs == ()

    run(backend, body)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compact_then_old_revisions_are_compacted(cluster: ProcessCluster, backend: str) -> None:
    key = f"compact/{backend}"

    async def body() -> None:
        async with AsyncClient(endpoints(cluster)) as c:
            first = (await c.put(key, "1")).header.revision
            last = (await c.put(key, "2")).header.revision
            assert (await c.get(key, revision=first)).kvs[0].value == b"1"
            header = await c.compact(last)
            assert header.revision >= last
            with pytest.raises(Compacted):
                await c.get(key, revision=first)
            assert (await c.get(key, revision=last)).kvs[0].value == b"2"

    run(backend, body)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unknown_op_is_a_client_error(cluster: ProcessCluster, backend: str) -> None:
    async def body() -> None:
        async with AsyncClient(endpoints(cluster)) as c:
            with pytest.raises(ClientError, match="unknown op"):
                await c.call("no_such_op", {"x": 1})
            # ... and the connection is still good.
            assert "raft_term" in await c.call("status", retry_safe=True)
            with pytest.raises(ClientError):
                await c.put("", "empty keys are refused")

    run(backend, body)


# ----------------------------------------------------------------------------- connection


@pytest.mark.parametrize("backend", BACKENDS)
def test_pipelining_200_concurrent_gets_on_one_connection(
    cluster: ProcessCluster, backend: str
) -> None:
    p = f"pipe/{backend}/"

    async def body() -> None:
        async with AsyncClient(endpoints(cluster)) as c:
            for i in range(20):
                await c.put(f"{p}{i}", f"value-{i}")
            conn = c._conn
            results: dict[int, bytes] = {}

            async def one(i: int) -> None:
                r = await c.get(f"{p}{i % 20}")
                results[i] = r.kvs[0].value

            async with anyio.create_task_group() as tg:
                for i in range(200):
                    tg.start_soon(one, i)
            assert results == {i: f"value-{i % 20}".encode() for i in range(200)}
            assert c._conn is conn

    run(backend, body)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pipelined_writes_on_one_connection(cluster: ProcessCluster, backend: str) -> None:
    """100 concurrent puts: each gets its own answer (distinct revisions), one connection."""
    p = f"pipew/{backend}/"

    async def body() -> None:
        async with AsyncClient(endpoints(cluster)) as c:
            await c.status()
            conn = c._conn
            revisions: dict[int, int] = {}

            async def one(i: int) -> None:
                revisions[i] = (await c.put(f"{p}{i}", b"x")).header.revision

            async with anyio.create_task_group() as tg:
                for i in range(100):
                    tg.start_soon(one, i)
            assert len(set(revisions.values())) == 100
            assert c._conn is conn
            assert conn is not None
            assert conn.pending == 0

    run(backend, body)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_cancelled_request_does_not_break_the_connection(
    cluster: ProcessCluster, backend: str
) -> None:
    """A request cancelled after it was sent: its late answer is dropped and the connection
    keeps serving. The member is SIGSTOPped so the answer surely comes after the cancel."""
    leader = cluster.wait_for_leader()
    follower = next(m for m in cluster.members if m is not leader)

    async def body() -> None:
        async with AsyncClient(endpoints(cluster, [follower])) as c:
            await c.status()
            conn = c._conn
            assert conn is not None
            cluster.pause(follower)
            try:
                with anyio.move_on_after(0.3) as scope:
                    await c.call("status", retry_safe=True)
                assert scope.cancelled_caught
                assert conn.pending == 0
            finally:
                cluster.resume(follower)
            # The late status answer arrives now and must not be taken for this put's.
            ok = await c.call("put", {"key": f"cancel/{backend}".encode(), "value": b"v"})
            assert "name" not in ok
            assert ok["header"]["revision"] > 0
            assert (await c.status()).name == follower.name
            assert c._conn is conn
            assert conn.usable

    run(backend, body)


@pytest.mark.parametrize("backend", BACKENDS)
def test_many_randomly_cancelled_requests(cluster: ProcessCluster, backend: str) -> None:
    rng = random.Random(4)
    delays = [rng.choice([0, 0.0005, 0.002, 0.01, 1]) for _ in range(150)]

    async def body() -> None:
        async with AsyncClient(endpoints(cluster)) as c:
            await c.status()
            conn = c._conn

            async def one(i: int, delay: float) -> None:
                with anyio.move_on_after(delay):
                    if i % 2:
                        await c.status()
                    else:
                        await c.put(f"rand/{backend}/{i}", b"v")

            async with anyio.create_task_group() as tg:
                for i, d in enumerate(delays):
                    tg.start_soon(one, i, d)
            for i in range(20):
                r = await c.put(f"rand/{backend}/after", str(i))
                assert r.header.revision > 0
                assert (await c.status()).name == "m1"
            assert c._conn is conn
            assert conn is not None
            assert conn.usable

    run(backend, body)


# ----------------------------------------------------------------------------- failover


@pytest.mark.parametrize("backend", BACKENDS)
def test_failover_after_the_connected_member_is_killed(
    fresh_cluster: ProcessCluster, backend: str
) -> None:
    cluster = fresh_cluster

    async def body() -> None:
        async with AsyncClient(endpoints(cluster), command_timeout=10.0) as c:
            await c.put("fo/k", "before")
            connected = cluster.member((await c.status()).name)
            cluster.kill(connected)
            got = await c.get("fo/k")  # a read: retried elsewhere whatever happens
            assert got.kvs[0].value == b"before"
            assert c.endpoint != f"127.0.0.1:{connected.client_port}"
            await c.put("fo/k", "after")
            assert (await c.get("fo/k")).kvs[0].value == b"after"
            assert (await c.status()).name != connected.name

    run(backend, body)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_dead_endpoint_first_in_the_list(cluster: ProcessCluster, backend: str) -> None:
    dead = f"127.0.0.1:{free_port()}"

    async def body() -> None:
        async with AsyncClient([dead, *endpoints(cluster)]) as c:
            assert (await c.put(f"dead/{backend}", "v")).header.revision > 0
            assert c.endpoint != dead
            assert (await c.status()).endpoint != dead

    run(backend, body)


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_endpoints_down_is_unavailable_quickly(backend: str) -> None:
    dead = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]

    async def body() -> None:
        async with AsyncClient(dead, dial_timeout=0.5, command_timeout=30) as c:
            start = time.monotonic()
            with pytest.raises(Unavailable) as info:
                await c.get("k")
            assert time.monotonic() - start < 2 * 0.5 + 0.5
            for ep in dead:
                assert ep in str(info.value)
            with pytest.raises(Unavailable):
                await c.put("k", "v")  # nothing was sent, so writes fail the same way

    run(backend, body, bound=10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dial_timeout_bounds_an_unanswered_connect(backend: str) -> None:
    """A listener whose backlog is full never completes the handshake; the dial gives up
    after ``dial_timeout`` (or at once if the kernel refuses) with ``Unavailable``."""

    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(0)
    port = blocker.getsockname()[1]
    fillers = []
    for _ in range(8):  # fill the accept queue so further handshakes stall
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
        fillers.append(s)

    async def body() -> None:
        async with AsyncClient(f"127.0.0.1:{port}", dial_timeout=0.3) as c:
            start = time.monotonic()
            with pytest.raises(Unavailable):
                await c.status()
            assert time.monotonic() - start < 0.3 + 0.7

    try:
        run(backend, body, bound=10)
    finally:
        for s in [*fillers, blocker]:
            s.close()


def test_a_write_whose_connection_dies_after_sending_is_not_retried(
    fresh_cluster: ProcessCluster,
) -> None:
    """With both followers stopped the leader cannot commit, so a put waits; killing the
    leader then loses the connection after the frame was sent: outcome unknown, raised."""
    cluster = fresh_cluster
    leader = cluster.wait_for_leader()
    followers = [m for m in cluster.members if m is not leader]

    async def body() -> None:
        async with AsyncClient(endpoints(cluster, [leader, *followers])) as c:
            await c.status()
            conn = c._conn
            assert conn is not None
            for f in followers:
                cluster.pause(f)
            try:
                outcome: list[BaseException] = []

                async def put() -> None:
                    try:
                        await c.put("unknown/k", "v")
                    except DiscoverdError as e:
                        outcome.append(e)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(put)
                    await wait_until("the put is in flight", lambda: conn.pending == 1)
                    cluster.kill(leader)
                (err,) = outcome
                assert isinstance(err, ConnectionLost)
                assert err.request_sent
                assert "may or may not have been applied" in str(err)
            finally:
                for f in followers:
                    cluster.resume(f)

    run("trio", body)


def test_a_write_without_an_answer_times_out_as_outcome_unknown(
    fresh_cluster: ProcessCluster,
) -> None:
    cluster = fresh_cluster
    leader = cluster.wait_for_leader()
    followers = [m for m in cluster.members if m is not leader]

    async def body() -> None:
        async with AsyncClient(endpoints(cluster, [leader]), command_timeout=1.0) as c:
            await c.status()
            for f in followers:
                cluster.pause(f)
            try:
                start = time.monotonic()
                with pytest.raises(RequestTimeout, match="may or may not have been applied"):
                    await c.put("timeout/k", "v")
                assert time.monotonic() - start < 1.0 + 0.5
            finally:
                for f in followers:
                    cluster.resume(f)

    run("asyncio", body)


# ----------------------------------------------------------------------------- sync client


def test_sync_client(cluster: ProcessCluster) -> None:
    eps = endpoints(cluster)
    with Client(",".join(eps)) as c:
        assert c.endpoints == tuple(eps)
        assert c.status().name == "m1"
        assert c.status(eps[2]).name == "m3"
        first = c.put("sync/a", "1")
        assert c.put("sync/a", b"2", prev_kv=True).prev_kv is not None
        assert c.get("sync/a").kvs[0].value == b"2"
        assert c.get("sync/", prefix=True).count == 1
        t = c.txn([Compare.value("sync/a") == "2"], [Op.put("sync/b", "x")], [])
        assert t.succeeded
        assert c.delete("sync/", prefix=True).deleted == 2
        assert c.compact(first.header.revision).revision >= first.header.revision
        with pytest.raises(ClientError):
            c.call("no_such_op")

        def worker(i: int) -> int:
            return c.put(f"sync/t{i}", "v").header.revision

        with ThreadPoolExecutor(8) as pool:
            revisions = list(pool.map(worker, range(64)))
        assert len(set(revisions)) == 64
    with pytest.raises(ClientError, match="closed"):
        c.status()
    c.close()  # idempotent


def test_sync_client_all_endpoints_down() -> None:
    with Client(f"127.0.0.1:{free_port()}", dial_timeout=0.5) as c, \
            pytest.raises(Unavailable):
        c.put("k", "v")


# ----------------------------------------------------------------------------- misuse


@pytest.mark.parametrize("backend", BACKENDS)
def test_misuse_is_a_client_error(backend: str) -> None:
    async def body() -> None:
        c = AsyncClient("127.0.0.1:1")
        with pytest.raises(ClientError, match="async with"):
            await c.status()
        async with c:
            pass
        with pytest.raises(ClientError, match="closed"):
            await c.status()
        with pytest.raises(ClientError):
            AsyncClient([])
        with pytest.raises(ClientError):
            AsyncClient("ftp://127.0.0.1:2379")  # https:// is TLS (tests/server/test_tls.py)

    run(backend, body, bound=10)


def test_endpoints_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCOVERD_ENDPOINTS", "http://10.0.0.1:2379, 10.0.0.2:32379,h3")
    assert AsyncClient().endpoints == ("10.0.0.1:2379", "10.0.0.2:32379", "h3:2379")
    monkeypatch.delenv("DISCOVERD_ENDPOINTS")
    assert AsyncClient().endpoints == ("127.0.0.1:2379",)
    assert AsyncClient(["[::1]:4000", "[::1]:4000"]).endpoints == ("[::1]:4000",)


# ----------------------------------------------------------------------------- layering


def test_sdk_imports_no_server_side_package() -> None:
    """Applications import the SDK; it must not drag in the member's code (or its trio-only
    runtime): only discoverd.wire, discoverd.errors and itself."""
    root = Path(__file__).resolve().parents[2] / "discoverd"
    forbidden = {"server", "member", "consensus", "storage", "machine", "kv", "testing", "cli"}
    bad: list[str] = []
    files = sorted((root / "sdk").rglob("*.py"))
    assert files
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = ([f"discoverd.{a.name}" for a in node.names]
                         if node.module == "discoverd" else [node.module])
            for name in names:
                parts = name.split(".")
                if parts[0] == "discoverd" and (
                        len(parts) == 1 or parts[1] in forbidden
                        or parts[1] not in {"errors", "wire", "sdk"}):
                    bad.append(f"{f.name} imports {name}")
                if parts[0] == "trio":
                    bad.append(f"{f.name} imports {name} (use anyio)")
    assert not bad, "\n".join(bad)

