"""SDK config documents (DESIGN §7, issue 6) against real ``discoverd serve`` processes:
reads and writes with generations, schema validation errors with their violations, the dry
run, optimistic concurrency, history and rollback, watching, consumer handles and their
status reports, and the stale copy served from the local cache when no member answers.

As in the other SDK tests, async bodies run under both anyio backends through ``anyio.run``
and are bounded by ``fail_after``; waits poll a condition under that bound. Each test uses
config names of its own (the module's cluster is shared) and a cache directory under
``tmp_path``, never the user's.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from discoverd.sdk import (
    AsyncClient,
    Client,
    ClientError,
    ConfigConflict,
    ConfigDocument,
    ConfigNotFound,
    ConfigStatus,
    Unavailable,
    ValidationError,
)
from discoverd.testing.cluster import ProcessCluster, wait_for

BACKENDS = ["trio", "asyncio"]
BOUND = 30.0

PORT_SCHEMA = {
    "type": "object",
    "properties": {"port": {"type": "integer"}, "bad": {"type": "boolean"}},
    "required": ["port"],
}


def run(backend: str, body: Callable[[], Awaitable[None]], bound: float = BOUND) -> None:
    async def bounded() -> None:
        with anyio.fail_after(bound):
            await body()

    anyio.run(bounded, backend=backend)


def new_cluster(root: Path) -> ProcessCluster:
    return ProcessCluster(root, 3, heartbeat_ms=100, election_ms=1000)


def dump_logs(cluster: ProcessCluster) -> None:
    for m in cluster.members:
        tail = m.log_text().splitlines()[-30:]
        print(f"----- {m.name} (last {len(tail)} lines)")
        print("\n".join(tail))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessCluster]:
    c = new_cluster(tmp_path_factory.mktemp("sdk-config"))
    try:
        with c.started():
            yield c
    finally:
        dump_logs(c)


def endpoints(cluster: ProcessCluster) -> list[str]:
    return [f"127.0.0.1:{m.client_port}" for m in cluster.members]


_names = iter(range(10**6))


def unique(base: str) -> str:
    return f"{base}{next(_names)}-{os.getpid()}"


async def until(probe: Callable[[], Awaitable[bool]]) -> None:
    """Poll ``probe``; the caller's ``fail_after`` bounds the wait."""
    while not await probe():  # noqa: ASYNC110 -- no event to wait on; bounded by fail_after
        await anyio.sleep(0.02)


# ------------------------------------------------------------------------------ get / put


@pytest.mark.parametrize("backend", BACKENDS)
def test_put_and_get_with_generations(cluster: ProcessCluster, backend: str,
                                      tmp_path: Path) -> None:
    name = unique("app")

    async def body() -> None:
        async with AsyncClient(endpoints(cluster), cache_dir=tmp_path) as c:
            with pytest.raises(ConfigNotFound):
                await c.get_config(name)
            first = await c.put_config(name, {"port": 1})
            assert first == ConfigDocument(name, {"port": 1}, first.revision, 1)
            assert await c.get_config(name) == first
            # JSON text is stored verbatim (the history keeps the writer's formatting).
            second = await c.put_config(name, b'{ "port" : 2 }')
            assert (second.generation, second.document) == (2, {"port": 2})
            assert (await c.get(f"/config/{name}")).kvs[0].value == b'{ "port" : 2 }'

            # A raw delete is a generation too; the next put continues the count.
            await c.delete(f"/config/{name}")
            with pytest.raises(ConfigNotFound, match="generation 3 deleted it"):
                await c.get_config(name)
            fourth = await c.put_config(name, {"port": 4})
            assert fourth.generation == 4
            assert fourth.revision == (await c.get(f"/config/{name}")).kvs[0].mod_revision

            # History keys of a name below this one share the history range; they must not
            # be taken for this name's generations.
            for i in range(3):
                await c.put_config(f"{name}/1sub", {"i": i})
            got = await c.get_config(name)
            assert (got.generation, got.document) == (4, {"port": 4})
            assert [e.generation for e in await c.config_history(name)] == [4, 3, 2, 1]
            assert (await c.get_config(f"{name}/1sub")).generation == 3

            assert (await c.get_config(name, generation=1)).document == {"port": 1}
            with pytest.raises(ConfigNotFound, match="deletion"):
                await c.get_config(name, generation=3)
            with pytest.raises(ConfigNotFound, match=r"not kept \(history holds generations"):
                await c.get_config(name, generation=99)
            with pytest.raises(ClientError):
                await c.get_config("bad//name")
            with pytest.raises(ClientError):
                await c.put_config(name, {"x": float("nan")})

    run(backend, body)


@pytest.mark.parametrize("backend", BACKENDS)
def test_invalid_documents_are_refused_with_their_violations(
    cluster: ProcessCluster, backend: str, tmp_path: Path
) -> None:
    name = unique("valid")
    expected = [{"key": f"/config/{name}", "path": "/port",
                 "message": "'x' is not of type 'integer'",
                 "schema_path": "/properties/port/type"}]

    async def body() -> None:
        async with AsyncClient(endpoints(cluster), cache_dir=tmp_path) as c:
            assert await c.get_schema(name) is None
            await c.put_schema(name, PORT_SCHEMA)
            assert await c.get_schema(name) == PORT_SCHEMA
            good = await c.put_config(name, {"port": 1})

            with pytest.raises(ValidationError) as e:
                await c.put_config(name, {"port": "x"})
            assert e.value.violations == expected
            assert e.value.total == 1
            assert "'x' is not of type 'integer'" in str(e.value)
            assert await c.get_config(name) == good  # nothing committed

            # The dry run judges the same way and changes nothing.
            with pytest.raises(ValidationError) as dry:
                await c.validate_config(name, {"port": "x"})
            assert dry.value.violations == expected
            await c.validate_config(name, {"port": 2})
            assert await c.get_config(name) == good

            # Not JSON at all, and a schema that is not one.
            with pytest.raises(ValidationError) as e:
                await c.put_config(name, b"{nope")
            assert e.value.violations[0]["path"] == ""
            with pytest.raises(ValidationError):
                await c.put_schema(name, {"type": 12})
            # A schema the current document would not satisfy.
            with pytest.raises(ValidationError):
                await c.put_schema(name, {"type": "object", "required": ["host"]})

            # More violations than the member lists: the total still says how many.
            many = unique("many")
            await c.put_schema(many, {"additionalProperties": {"type": "integer"}})
            with pytest.raises(ValidationError) as e:
                await c.put_config(many, {f"k{i:03}": "s" for i in range(150)})
            assert len(e.value.violations) == 100
            assert e.value.total == 150

    run(backend, body)


@pytest.mark.parametrize("backend", BACKENDS)
def test_expect_generation_is_optimistic_concurrency(
    cluster: ProcessCluster, backend: str, tmp_path: Path
) -> None:
    name = unique("cas")

    async def body() -> None:
        async with AsyncClient(endpoints(cluster), cache_dir=tmp_path) as c:
            created = await c.put_config(name, {"v": 1}, expect_generation=0)
            assert created.generation == 1
            with pytest.raises(ConfigConflict) as e:
                await c.put_config(name, {"v": 0}, expect_generation=0)
            assert (e.value.expected, e.value.actual) == (0, 1)
            assert (await c.put_config(name, {"v": 2}, expect_generation=1)).generation == 2
            with pytest.raises(ConfigConflict) as e:
                await c.put_config(name, {"v": 3}, expect_generation=1)
            assert e.value.actual == 2
            await c.delete(f"/config/{name}")
            # After a delete (generation 3) the document is written on top of the deletion.
            assert (await c.put_config(name, {"v": 4}, expect_generation=3)).generation == 4
            assert (await c.get_config(name)).document == {"v": 4}

    run(backend, body)


def test_history_and_rollback(cluster: ProcessCluster, tmp_path: Path) -> None:
    name = unique("hist")
    with Client(endpoints(cluster), cache_dir=tmp_path) as c:
        for v in (1, 2, 3):
            c.put_config(name, {"v": v})
        c.delete(f"/config/{name}")
        c.put_config(name, {"v": 5})
        history = c.config_history(name)
        assert [e.generation for e in history] == [5, 4, 3, 2, 1]
        assert history[1].deleted
        assert history[1].document is None
        assert history[3].document == {"v": 2}
        assert history[0].revision == c.get_config(name).revision

        rolled = c.rollback_config(name, 2)
        assert (rolled.generation, rolled.document) == (6, {"v": 2})
        assert c.get_config(name).document == {"v": 2}
        with pytest.raises(ConfigNotFound, match="deletion"):
            c.rollback_config(name, 4)
        with pytest.raises(ConfigNotFound, match="not kept"):
            c.rollback_config(name, 40)
        with pytest.raises(ConfigConflict):
            c.rollback_config(name, 1, expect_generation=5)
        assert c.get_config(name).generation == 6


# ------------------------------------------------------------------------------ watch


@pytest.mark.parametrize("backend", BACKENDS)
def test_watch_config_yields_the_current_document_then_each_generation(
    cluster: ProcessCluster, backend: str, tmp_path: Path
) -> None:
    name = unique("watched")

    async def body() -> None:
        async with AsyncClient(endpoints(cluster), cache_dir=tmp_path) as c:
            async with c.watch_config(name) as docs:
                it = docs.__aiter__()
                first = await it.__anext__()
                assert first == ConfigDocument(name, {}, 0, 0, deleted=True)  # never written
                one = await c.put_config(name, {"v": 1})
                assert await it.__anext__() == one
                await c.put_config(f"{name}/2x", {"other": True})  # below it: not this one
                await c.delete(f"/config/{name}")
                gone = await it.__anext__()
                assert (gone.generation, gone.deleted, gone.document) == (2, True, {})
                three = await c.put_config(name, {"v": 3})
                assert await it.__anext__() == three
            # Entering later starts with the current document.
            async with c.watch_config(name) as docs:
                assert await docs.__aiter__().__anext__() == three

    run(backend, body)


# ------------------------------------------------------------------------------ handles


@pytest.mark.parametrize("backend", BACKENDS)
def test_config_handle_applies_and_reports_status(
    cluster: ProcessCluster, backend: str, tmp_path: Path
) -> None:
    name = unique("handled")

    async def body() -> None:
        applied: list[dict[str, Any]] = []

        async def on_change(doc: ConfigDocument) -> None:
            if doc.document.get("bad"):
                raise RuntimeError("cannot bind port")
            applied.append(doc.document)

        async with AsyncClient(endpoints(cluster), cache_dir=tmp_path) as c:
            await c.put_schema(name, PORT_SCHEMA)
            await c.put_config(name, {"port": 1})
            async with c.config_handle(name, instance="web-1", on_change=on_change) as h:
                # Entering applied the current document and reported it.
                assert applied == [{"port": 1}]
                assert h.status == ConfigStatus(1, True)
                assert await c.config_status(name) == {"web-1": ConfigStatus(1, True)}

                await c.put_config(name, {"port": 2, "bad": True})

                async def reported(generation: int) -> bool:
                    status = (await c.config_status(name)).get("web-1")
                    return status is not None and status.generation == generation

                await until(lambda: reported(2))
                assert await c.config_status(name) == {
                    "web-1": ConfigStatus(2, False, "RuntimeError: cannot bind port")}

                async with c.config_handle(name, on_change=on_change) as other:
                    assert other.instance != "web-1"  # a generated id
                    await c.put_config(name, {"port": 3})
                    await until(lambda: reported(3))

                    async def both() -> bool:
                        return {s.generation for s in (await c.config_status(name)).values()
                                } == {3}

                    await until(both)
                    assert set(await c.config_status(name)) == {"web-1", other.instance}
                    assert applied[-2:] == [{"port": 3}, {"port": 3}]
                # Closing a handle withdraws its report (it is on the handle's lease).
                assert set(await c.config_status(name)) == {"web-1"}
            assert await c.config_status(name) == {}

    run(backend, body)


def test_sync_config_handle_runs_on_change_in_a_worker_thread(
    cluster: ProcessCluster, tmp_path: Path
) -> None:
    name = unique("synchandle")
    seen: list[tuple[int, bool]] = []
    main = threading.get_ident()
    with Client(endpoints(cluster), cache_dir=tmp_path) as c:
        c.put_config(name, {"v": 1})

        def on_change(doc: ConfigDocument) -> None:
            # In a worker thread, where the client may be used.
            seen.append((doc.generation, threading.get_ident() == main))
            assert c.get_config(name).generation >= doc.generation

        with c.config_handle(name, instance="w", on_change=on_change) as h:
            assert seen == [(1, False)]
            c.put_config(name, {"v": 2})
            wait_for("generation 2 applied", lambda: c.config_status(name)["w"].generation == 2)
            assert h.document is not None
            assert h.document.generation == 2
        with c.watch_config(name) as docs:
            assert docs.next(timeout=10).document == {"v": 2}


# ------------------------------------------------------------------------------ offline


def test_get_config_serves_the_cached_copy_when_no_member_answers(tmp_path: Path) -> None:
    c = new_cluster(tmp_path)
    cache = tmp_path / "cache"
    try:
        c.start_all()
        c.wait_for_leader()
        eps = endpoints(c)
        with Client(eps, cache_dir=cache, command_timeout=2.0) as client:
            client.put_config("app", {"port": 80})
            doc = client.get_config("app")
            client.put_config("unread", {"x": 1})
            client.delete("/config/unread")  # read as "not found": must not be served later
            with pytest.raises(ConfigNotFound):
                client.get_config("unread")
            for m in c.members:
                c.stop(m)

            stale = client.get_config("app")
            assert stale.stale
            assert (stale.document, stale.revision, stale.generation) == (
                doc.document, doc.revision, doc.generation)
            with pytest.raises(Unavailable):
                client.get_config("unread")
            with pytest.raises(Unavailable):
                client.get_config("never")
        # The copy is on disk: another client (a restarted process) gets it as well.
        with Client(list(reversed(eps)), cache_dir=cache, command_timeout=2.0) as client:
            assert client.get_config("app").stale
    finally:
        c.close()
