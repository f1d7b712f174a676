"""SDK watches and informers against real ``discoverd serve`` processes.

As in test_sdk_client.py, async bodies run under both anyio backends through ``anyio.run``
and are bounded by ``fail_after``; waits poll a condition under that bound. Members announce
a 300 ms progress interval, so a silent stream is given up on after 0.9 s.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from discoverd.sdk import (
    AsyncClient,
    Client,
    ClientError,
    Compacted,
    Compare,
    DiscoverdError,
    EventType,
    Op,
    Resync,
    Snapshot,
    Watch,
    WatchCompacted,
    WatchEvent,
    WatchNotFound,
    WatchResponse,
)
from discoverd.testing.cluster import MemberProcess, ProcessCluster

BACKENDS = ["trio", "asyncio"]
BOUND = 30.0
PROGRESS_MS = 300


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


def new_cluster(root: Path) -> ProcessCluster:
    return ProcessCluster(root, 3, extra_args=[
        "--experimental-watch-progress-notify-interval", str(PROGRESS_MS)])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessCluster]:
    c = new_cluster(tmp_path_factory.mktemp("sdk-watch"))
    try:
        with c.started():
            yield c
    finally:
        dump_logs(c)


@pytest.fixture
def fresh_cluster(tmp_path: Path) -> Iterator[ProcessCluster]:
    c = new_cluster(tmp_path)
    try:
        with c.started():
            yield c
    finally:
        dump_logs(c)


async def wait_until(what: str, probe: Callable[[], bool]) -> None:
    """Poll ``probe``; the caller's ``fail_after`` bounds the wait."""
    while not probe():  # noqa: ASYNC110 -- no event to wait on; bounded by fail_after
        await anyio.sleep(0.01)
    assert probe(), what


async def events(watch: Watch, n: int) -> list[WatchEvent]:
    """The next ``n`` events (progress responses skipped; a response never splits)."""
    out: list[WatchEvent] = []
    async for resp in watch:
        assert isinstance(resp, WatchResponse)
        out.extend(resp.events)
        if len(out) >= n:
            break
    assert len(out) == n, [(e.type, e.kv.key, e.kv.mod_revision) for e in out]
    return out


async def compacted_everywhere(cluster: ProcessCluster, old: int) -> None:
    """Wait until every member has applied a compaction past ``old``: a watch resuming on
    a member that has not yet would (rightly) replay the history instead of being canceled."""
    for ep in endpoints(cluster):
        async with AsyncClient(ep) as one:
            while True:
                try:
                    await one.get("any", revision=old, serializable=True)
                except Compacted:
                    break
                await anyio.sleep(0.01)


def shape(evs: list[WatchEvent]) -> list[tuple[str, bytes, bytes]]:
    return [(e.type.value, e.kv.key, e.kv.value) for e in evs]


# ----------------------------------------------------------------------------- basics


@pytest.mark.parametrize("backend", BACKENDS)
def test_watch_a_key(cluster: ProcessCluster, backend: str) -> None:
    k = f"w1/{backend}/k"

    async def body() -> None:
        async with AsyncClient(endpoints(cluster)) as c, c.watch(k) as w:
            assert w.watch_id is not None
            r1 = await c.put(k, "v1")
            await c.put(k + "x", "other key")
            r2 = await c.put(k, "v2")
            d = await c.delete(k)
            got = await events(w, 3)
            assert shape(got) == [("PUT", k.encode(), b"v1"), ("PUT", k.encode(), b"v2"),
                                  ("DELETE", k.encode(), b"")]
            assert [e.kv.mod_revision for e in got] == [
                r1.header.revision, r2.header.revision, d.header.revision]
            assert got[0].type is EventType.PUT
            assert got[0].type == "PUT"
            assert (got[1].kv.create_revision, got[1].kv.version) == (r1.header.revision, 2)
            assert all(e.prev_kv is None for e in got)
            assert w.next_revision == d.header.revision + 1

    run(backend, body)


@pytest.mark.parametrize("backend", BACKENDS)
def test_watch_prefix_from_key_and_range_share_one_connection(
    cluster: ProcessCluster, backend: str
) -> None:
    p = f"w2/{backend}/"

    async def body() -> None:
        async with AsyncClient(endpoints(cluster)) as c, \
                c.watch(p + "b", prefix=True) as by_prefix, \
                c.watch(p + "c", from_key=True) as onwards, \
                c.watch(p + "a", range_end=p + "c") as ranged:
            assert c._conn is not None
            assert c._conn.streams == 3
            for name in ("a", "b1", "b2", "c", "d"):
                await c.put(p + name, name)
            assert [e.kv.key for e in await events(by_prefix, 2)] == [
                (p + "b1").encode(), (p + "b2").encode()]
            assert [e.kv.key for e in await events(onwards, 2)] == [
                (p + "c").encode(), (p + "d").encode()]
            assert [e.kv.key for e in await events(ranged, 3)] == [
                (p + n).encode() for n in ("a", "b1", "b2")]

    run(backend, body)


@pytest.mark.parametrize("backend", BACKENDS)
def test_start_revision_in_the_past_replays_then_follows(
    cluster: ProcessCluster, backend: str
) -> None:
    p = f"w3/{backend}/"

    async def body() -> None:
        async with AsyncClient(endpoints(cluster)) as c:
            revs = [(await c.put(f"{p}{i}", str(i))).header.revision for i in range(3)]
            async with c.watch(p, prefix=True, start_revision=revs[1]) as w:
                r3 = await c.put(f"{p}3", "3")
                got = await events(w, 3)
                assert [e.kv.mod_revision for e in got] == [revs[1], revs[2], r3.header.revision]
                assert [e.kv.value for e in got] == [b"1", b"2", b"3"]

    run(backend, body)


@pytest.mark.parametrize("backend", BACKENDS)
def test_prev_kv_and_filters(cluster: ProcessCluster, backend: str) -> None:
    k = f"w4/{backend}/k"

    async def body() -> None:
        async with AsyncClient(endpoints(cluster)) as c, \
                c.watch(k, prev_kv=True) as with_prev, \
                c.watch(k, filters=["NOPUT"]) as deletes_only, \
                c.watch(k, filters="nodelete") as puts_only:
            await c.put(k, "v1")
            await c.put(k, "v2")
            await c.delete(k)
            got = await events(with_prev, 3)
            assert got[0].prev_kv is None  # created
            assert got[1].prev_kv is not None
            assert got[1].prev_kv.value == b"v1"
            assert got[2].prev_kv is not None
            assert got[2].prev_kv.value == b"v2"
            assert shape(await events(deletes_only, 1)) == [("DELETE", k.encode(), b"")]
            assert [e.kv.value for e in await events(puts_only, 2)] == [b"v1", b"v2"]
            with pytest.raises(ClientError):
                c.watch(k, filters=["NOPE"])

    run(backend, body)


def test_a_txn_arrives_as_one_response(cluster: ProcessCluster) -> None:
    p = "w5/"

    async def body() -> None:
        async with AsyncClient(endpoints(cluster)) as c, c.watch(p, prefix=True) as w:
            t = await c.txn([Compare.version(p + "a") == 0],
                            [Op.put(p + "a", "1"), Op.put(p + "b", "2"), Op.put(p + "c", "3")])
            async for resp in w:
                if resp.events:
                    assert [e.kv.key for e in resp.events] == [
                        (p + n).encode() for n in "abc"]
                    assert {e.kv.mod_revision for e in resp.events} == {t.header.revision}
                    assert resp.revision >= t.header.revision
                    break

    run("asyncio", body)


@pytest.mark.parametrize("backend", BACKENDS)
def test_progress_notifications(cluster: ProcessCluster, backend: str) -> None:
    """An idle watch hears the store's revision move (a write to another key) as a progress
    response; a watch without progress_notify hears nothing and is never declared dead."""
    k = f"w6/{backend}/idle"

    async def body() -> None:
        async with AsyncClient(endpoints(cluster)) as c, c.watch(k) as w, \
                c.watch(k, progress_notify=False) as quiet:
            assert w._dead_after == pytest.approx(3 * PROGRESS_MS / 1000)
            assert quiet._dead_after is None
            elsewhere = await c.put(f"w6/{backend}/other", "x")
            async for resp in w:
                assert resp.progress
                assert resp.events == []
                if resp.revision >= elsewhere.header.revision:
                    break
            assert w.next_revision > elsewhere.header.revision
            with anyio.move_on_after(4 * PROGRESS_MS / 1000):
                async for resp in quiet:
                    pytest.fail(f"a watch without progress_notify got {resp}")
            assert quiet.resumes == 0

    run(backend, body)


def test_an_idle_watch_keeps_its_stream(cluster: ProcessCluster) -> None:
    """On an idle store the member still sends a progress frame every interval, so the
    3-silent-intervals rule never gives up on a healthy stream."""

    async def body() -> None:
        async with AsyncClient(endpoints(cluster)) as c, c.watch("w7/idle") as w:
            with anyio.move_on_after(8 * PROGRESS_MS / 1000):
                async for resp in w:
                    assert resp.progress
            assert w.resumes == 0

    run("trio", body)


# ----------------------------------------------------------------------------- lifecycle


@pytest.mark.parametrize("backend", BACKENDS)
def test_leaving_the_context_cancels_the_watch(cluster: ProcessCluster, backend: str) -> None:
    k = f"w8/{backend}"

    async def body() -> None:
        async with AsyncClient(endpoints(cluster)) as c:
            async with c.watch(k) as w:
                wid = w.watch_id
                conn = c._conn
                assert conn is not None
                assert conn.streams == 1
            assert conn.streams == 0
            assert c._conn is conn
            with pytest.raises(WatchNotFound):  # the member has already forgotten it
                await c.call("watch_cancel", {"watch_id": wid})

            # Leaving by break, and aclose() from another task, end iteration too.
            async with c.watch(k) as w:
                await c.put(k, "1")
                async for _resp in w:
                    break
            assert conn.streams == 0
            async with c.watch(k) as w:
                ended = anyio.Event()

                async def iterate() -> None:
                    async for resp in w:
                        pytest.fail(f"unexpected {resp}")
                    ended.set()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(iterate)
                    await anyio.lowlevel.checkpoint()
                    await w.aclose()
                    await ended.wait()
            assert conn.streams == 0
            with pytest.raises(ClientError, match="enter"):
                async for _resp in c.watch(k):
                    pass

    run(backend, body)


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_after_the_connection_breaks(cluster: ProcessCluster, backend: str) -> None:
    """The client's connection is closed under a watch; the writes made before it resumes
    arrive once each, in order (replayed from history)."""
    p = f"w9/{backend}/"

    async def body() -> None:
        async with AsyncClient(endpoints(cluster)) as c, \
                AsyncClient(endpoints(cluster)) as writer, c.watch(p, prefix=True) as w:
            for i in range(5):
                await writer.put(f"{p}{i}", "before")
            assert len(await events(w, 5)) == 5
            assert c._conn is not None
            c._conn.close("closed by the test")
            for i in range(5):
                await writer.put(f"{p}{i}", "after")
            got = await events(w, 5)
            assert [(e.kv.key, e.kv.value) for e in got] == [
                (f"{p}{i}".encode(), b"after") for i in range(5)]
            assert w.resumes >= 1

    run(backend, body)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_consumer_that_falls_behind_resumes_from_history(
    cluster: ProcessCluster, backend: str
) -> None:
    """With a 4-frame buffer and 60 writes unread, the reader drops the watch's stream
    rather than wait (other requests on the connection go on); the watch then catches up
    from history: every event once, in order."""
    p = f"w10/{backend}/"

    async def body() -> None:
        async with AsyncClient(endpoints(cluster), watch_buffer=4) as c, \
                AsyncClient(endpoints(cluster)) as writer, c.watch(p, prefix=True) as w:
            conn = c._conn
            assert conn is not None
            revs = [(await writer.put(f"{p}{i:02}", str(i))).header.revision for i in range(60)]
            await wait_until("the stream overflowed", lambda: conn.streams == 0)
            assert (await c.get(f"{p}59")).kvs[0].value == b"59"  # the connection serves on
            got = await events(w, 60)
            assert [e.kv.mod_revision for e in got] == revs
            assert w.resumes >= 1

    run(backend, body)


# ----------------------------------------------------------------------------- failures


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_watch_resumes_exactly_across_kill_9_of_its_member(
    fresh_cluster: ProcessCluster, backend: str
) -> None:
    """A writer puts continuously; the member the watch is on (the leader) is killed -9
    mid-stream. The watch must deliver exactly the history: compared with a watch replaying
    the same revisions afterwards, same events, same order, none twice, none missing."""
    cluster = fresh_cluster
    leader = cluster.wait_for_leader()
    others = [m for m in cluster.members if m is not leader]
    p = f"w11/{backend}/"

    async def body() -> None:
        async with AsyncClient(endpoints(cluster, [leader, *others])) as c, \
                AsyncClient(endpoints(cluster, others)) as writer:
            written: list[int] = []
            stop = anyio.Event()

            async def write() -> None:
                i = 0
                while not stop.is_set():
                    # DiscoverdError: outcome unknown, or no leader yet; the history will tell.
                    with contextlib.suppress(DiscoverdError):
                        written.append((await writer.put(f"{p}{i % 7}", str(i))).header.revision)
                    i += 1

            seen: list[WatchEvent] = []
            async with c.watch(p, prefix=True) as w:
                first = w.next_revision
                async with anyio.create_task_group() as tg:
                    tg.start_soon(write)
                    async for resp in w:
                        seen.extend(resp.events)
                        if len(seen) >= 30:
                            break
                    assert w._conn is not None
                    assert w._conn.endpoint.port == leader.client_port
                    cluster.kill(leader)
                    await wait_until("writes go on after the kill",
                                     lambda: len(written) >= len(seen) + 60)
                    stop.set()
                last = written[-1]
                async for resp in w:
                    seen.extend(resp.events)
                    if w.next_revision > last:
                        break
                assert w.resumes >= 1
                assert w._conn is not None
                assert w._conn.endpoint.port != leader.client_port

            seen = [e for e in seen if e.kv.mod_revision <= last]
            async with c.watch(p, prefix=True, start_revision=first) as replay:
                history: list[WatchEvent] = []
                async for resp in replay:
                    history.extend(e for e in resp.events if e.kv.mod_revision <= last)
                    if replay.next_revision > last:
                        break
            assert [(e.kv.key, e.kv.mod_revision, e.kv.value) for e in seen] == [
                (e.kv.key, e.kv.mod_revision, e.kv.value) for e in history]
            revisions = [e.kv.mod_revision for e in seen]
            assert revisions == sorted(set(revisions))
            assert set(written) <= set(revisions)

    run(backend, body, bound=60)


def test_a_stopped_member_is_left_after_three_silent_intervals(
    fresh_cluster: ProcessCluster,
) -> None:
    """SIGSTOP: the connection stays open but nothing comes. The watch gives up on the
    stream after three announced progress intervals and resumes elsewhere, without a gap."""
    cluster = fresh_cluster
    leader = cluster.wait_for_leader()
    follower = next(m for m in cluster.members if m is not leader)
    others = [m for m in cluster.members if m is not follower]

    async def body() -> None:
        async with AsyncClient(endpoints(cluster, [follower, *others])) as c, \
                AsyncClient(endpoints(cluster, [leader])) as writer, \
                c.watch("w12/", prefix=True) as w:
            before = await writer.put("w12/a", "before")
            assert [e.kv.mod_revision for e in await events(w, 1)] == [before.header.revision]
            cluster.pause(follower)
            try:
                during = await writer.put("w12/b", "during")
                stopped = anyio.current_time()
                got = await events(w, 1)
                assert [e.kv.mod_revision for e in got] == [during.header.revision]
                assert anyio.current_time() - stopped < 3 * PROGRESS_MS / 1000 + 2.0
                assert w._conn is not None
                assert w._conn.endpoint.port != follower.client_port
            finally:
                cluster.resume(follower)

    run("trio", body)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_compacted_start_raises_compacted(cluster: ProcessCluster, backend: str) -> None:
    k = f"w13/{backend}"

    async def body() -> None:
        async with AsyncClient(endpoints(cluster)) as c:
            old = (await c.put(k, "1")).header.revision
            now = (await c.put(k, "2")).header.revision
            await c.compact(now)
            await compacted_everywhere(cluster, old)

            async def watch_from_old() -> None:
                async with c.watch(k, start_revision=old) as w:
                    async for resp in w:
                        pytest.fail(f"unexpected {resp}")

            with pytest.raises(WatchCompacted) as info:
                await watch_from_old()
            assert isinstance(info.value, Compacted)
            assert info.value.compact_revision >= now

            # A watch whose resume point is compacted while it is away raises the same.
            async with c.watch(k) as w:
                assert c._conn is not None
                c._conn.close("closed by the test")  # not resumed until the next pull
                gone = (await c.put(k, "3")).header.revision
                await c.compact((await c.put(k, "4")).header.revision)
                await compacted_everywhere(cluster, gone)
                with pytest.raises(WatchCompacted):
                    await w.__anext__()
                with pytest.raises(StopAsyncIteration):
                    await w.__anext__()

    run(backend, body)


# ----------------------------------------------------------------------------- informer


@pytest.mark.parametrize("backend", BACKENDS)
def test_informer_snapshot_then_events_then_resync_after_compaction(
    cluster: ProcessCluster, backend: str
) -> None:
    p = f"w14/{backend}/"

    async def body() -> None:
        async with AsyncClient(endpoints(cluster)) as c, \
                AsyncClient(endpoints(cluster)) as writer:
            await writer.put(p + "a", "1")
            listed = await writer.put(p + "b", "2")
            async with c.watch_prefix(p) as informer:
                snap = await informer.__anext__()
                assert isinstance(snap, Snapshot)
                assert [(kv.key, kv.value) for kv in snap.kvs] == [
                    ((p + "a").encode(), b"1"), ((p + "b").encode(), b"2")]
                assert snap.revision >= listed.header.revision
                c_rev = (await writer.put(p + "c", "3")).header.revision
                item = await informer.__anext__()
                while isinstance(item, WatchResponse) and not item.events:
                    item = await informer.__anext__()  # progress
                assert isinstance(item, WatchResponse)
                assert [(e.kv.key, e.kv.mod_revision) for e in item.events] == [
                    ((p + "c").encode(), c_rev)]

                # Away (connection lost, nobody pulling) while history moves on and is
                # compacted: the informer lists again instead of raising.
                assert c._conn is not None
                c._conn.close("closed by the test")
                await writer.put(p + "d", "4")
                await writer.delete(p + "a")
                compacted = (await writer.put(p + "e", "5")).header.revision
                await writer.compact(compacted)
                await compacted_everywhere(cluster, c_rev)
                item = await informer.__anext__()
                while isinstance(item, WatchResponse) and not item.events:
                    item = await informer.__anext__()
                assert isinstance(item, Resync)
                assert [kv.key for kv in item.kvs] == [(p + n).encode() for n in "bcde"]
                assert item.revision >= compacted
                f_rev = (await writer.put(p + "f", "6")).header.revision
                item = await informer.__anext__()
                while isinstance(item, WatchResponse) and not item.events:
                    item = await informer.__anext__()
                assert isinstance(item, WatchResponse)
                assert [(e.kv.key, e.kv.mod_revision) for e in item.events] == [
                    ((p + "f").encode(), f_rev)]

    run(backend, body)


# ----------------------------------------------------------------------------- sync facade


def test_sync_watch_and_informer(cluster: ProcessCluster) -> None:
    with Client(endpoints(cluster)) as c:
        with c.watch("sw/k") as w:
            r = c.put("sw/k", "v")
            resp = w.next(timeout=10)
            while not resp.events:
                resp = w.next(timeout=10)
            assert [(e.kv.key, e.kv.mod_revision) for e in resp.events] == [
                (b"sw/k", r.header.revision)]
            c.put("sw/k", "v2")
            for resp in w:  # a plain for loop works too
                if resp.events:
                    assert resp.events[0].kv.value == b"v2"
                    break

            # close() from another thread ends a next() blocked in this one.
            threading.Timer(0.3, w.close).start()
            start = time.monotonic()

            def drain() -> None:
                for _ in range(100):
                    w.next(timeout=10)

            with pytest.raises(StopIteration):
                drain()
            assert time.monotonic() - start < 5

        c.put("sw/p/a", "1")
        with c.watch_prefix("sw/p/") as informer:
            snap = informer.next(timeout=10)
            assert isinstance(snap, Snapshot)
            assert [kv.key for kv in snap.kvs] == [b"sw/p/a"]
            c.put("sw/p/b", "2")
            item = informer.next(timeout=10)
            while isinstance(item, WatchResponse) and not item.events:
                item = informer.next(timeout=10)
            assert isinstance(item, WatchResponse)
            assert item.events[0].kv.key == b"sw/p/b"

            def quiet() -> None:
                for _ in range(50):  # nothing more is coming: progress at most
                    item = informer.next(timeout=0.2)
                    assert isinstance(item, WatchResponse)
                    assert not item.events

            with pytest.raises(TimeoutError):
                quiet()  # ... and the informer stays usable after the timeout
            c.put("sw/p/c", "3")
            item = informer.next(timeout=10)
            while isinstance(item, WatchResponse) and not item.events:
                item = informer.next(timeout=10)
            assert isinstance(item, WatchResponse)
            assert item.events[0].kv.key == b"sw/p/c"
