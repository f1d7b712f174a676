"""SDK services (DESIGN §7, issue 6) against real ``discoverd serve`` processes: registering,
discovering, following and picking instances.

As in the other SDK tests, async bodies run under both anyio backends through ``anyio.run``
and are bounded by ``fail_after``; waits poll a condition under that bound. The cluster uses
heartbeat 100 ms / election 1 s, so the members' minimum lease TTL is 2 s (as in
production), which the tests use to keep lease expiry quick.

The issue's "done when" is ``test_a_real_service_process_*``: a subprocess
(``registry_service.py``) registers with the module-level ``sdk.register`` and nothing else
configured, and the test watches it appear, then disappear on SIGKILL (within TTL + one
election timeout, not before its lease runs out), on SIGTERM (at once) and on a normal exit
(at once, by atexit).
"""

from __future__ import annotations

import json
import logging
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import anyio
import pytest

from discoverd.sdk import (
    AsyncClient,
    Client,
    ClientError,
    Health,
    KeyValue,
    NoInstances,
    ServiceInstance,
    ServiceSet,
    Unavailable,
    ValidationError,
    primary_address,
)
from discoverd.sdk._services import ServiceWatch, choose, decode_instance
from discoverd.sdk._types import Resync, Snapshot
from discoverd.testing.cluster import ProcessCluster, wait_for

BACKENDS = ["trio", "asyncio"]
BOUND = 30.0
TTL = 2  # the members' minimum: ceil(1.5 x 1 s election timeout)
ELECTION_S = 1.0
SERVICE_SCRIPT = Path(__file__).with_name("registry_service.py")


def run(backend: str, body: Callable[[], Awaitable[None]], bound: float = BOUND) -> None:
    async def bounded() -> None:
        with anyio.fail_after(bound):
            await body()

    anyio.run(bounded, backend=backend)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessCluster]:
    c = ProcessCluster(tmp_path_factory.mktemp("sdk-services"), 3, heartbeat_ms=100,
                       election_ms=int(ELECTION_S * 1000))
    try:
        c.start_all()
        c.wait_for_leader()
        yield c
    finally:
        c.close()
        for m in c.members:
            tail = m.log_text().splitlines()[-30:]
            print(f"----- {m.name} (last {len(tail)} lines)")
            print("\n".join(tail))


def endpoints(cluster: ProcessCluster) -> str:
    return ",".join(f"127.0.0.1:{m.client_port}" for m in cluster.members)


_names = iter(range(10**6))


def unique(base: str) -> str:
    """A service name no other test (or backend run) uses: the cluster is shared."""
    return f"{base}{next(_names)}-{os.getpid()}"


def ids(instances: list[ServiceInstance]) -> list[str]:
    return [i.id for i in instances]


async def until(probe: Callable[[], Awaitable[bool]]) -> None:
    """Poll ``probe``; the caller's ``fail_after`` bounds the wait."""
    while not await probe():  # noqa: ASYNC110 -- no event to wait on; bounded by fail_after
        await anyio.sleep(0.02)


# ------------------------------------------------------------------------------ done when


def start_service(cluster: ProcessCluster, ttl: int) -> subprocess.Popen[str]:
    """``registry_service.py`` with only ``$DISCOVERD_ENDPOINTS`` set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISCOVERD_")}
    env["DISCOVERD_ENDPOINTS"] = endpoints(cluster)
    return subprocess.Popen([sys.executable, str(SERVICE_SCRIPT), str(ttl)], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def ready(proc: subprocess.Popen[str]) -> dict[str, object]:
    """The registration line the service prints once registered."""
    assert proc.stdout is not None
    readable, _, _ = select.select([proc.stdout], [], [], 20.0)
    assert readable, "the service did not register within 20 s"
    line = proc.stdout.readline()
    assert line, f"the service exited with {proc.wait(10)} before registering"
    info: dict[str, object] = json.loads(line)
    return info


def cli_get_services(cluster: ProcessCluster) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-m", "discoverd.cli", "--endpoints", endpoints(cluster), "get",
         "--prefix", "/services"], capture_output=True, text=True, timeout=30, check=True)
    return out.stdout.splitlines()


def test_a_real_service_process_registers_and_is_removed_by_kill_term_and_exit(
    cluster: ProcessCluster,
) -> None:
    # Three services at once (process start-up overlaps): one to SIGKILL with the minimum TTL,
    # and two with a long TTL, so that "gone at once" cannot be lease expiry.
    killed = start_service(cluster, TTL)
    termed = start_service(cluster, 30)
    exiting = start_service(cluster, 30)
    procs = [killed, termed, exiting]
    try:
        infos = [ready(p) for p in procs]
        ids = [str(i["id"]) for i in infos]
        with Client(endpoints(cluster)) as client:
            found = {inst.id: inst for inst in client.discover("api")}
            assert set(ids) <= set(found)
            inst = found[ids[0]]
            assert inst.port == 8080
            assert inst.meta == {"role": "test"}
            assert inst.address == primary_address() == infos[0]["address"]
            assert inst.health is Health.PASSING
            assert inst.registered_at > 0

            # The raw CLI shows the record as JSON (DESIGN §7: readable by any etcd tool).
            lines = cli_get_services(cluster)
            key = f"/services/api/{ids[0]}"
            assert key in lines
            value = json.loads(lines[lines.index(key) + 1])
            assert value["id"] == ids[0]
            assert value["port"] == 8080
            assert value["service"] == "api"

            def present(instance_id: str) -> bool:
                return any(i.id == instance_id for i in client.discover("api"))

            # SIGKILL: nobody deregisters; the lease expires. The keeper renews every TTL/3,
            # so at the kill at least 2/3 of the TTL is left: the record must outlive that,
            # and be gone within the TTL plus one election timeout.
            t0 = time.monotonic()
            killed.kill()
            killed.wait(10)
            left = client.lease_time_to_live(int(str(infos[0]["lease"]))).ttl
            assert left > 0, "the lease outlives its owner until it runs out"
            wait_for("the SIGKILLed service's record to expire", lambda: not present(ids[0]),
                     timeout=TTL + ELECTION_S + 1, interval=0.02)
            gone_after = time.monotonic() - t0
            print(f"SIGKILLed service gone after {gone_after:.2f}s")
            # ``left`` is rounded up: more than left - 1 seconds were left when it was asked.
            assert gone_after > left - 1
            assert 2 * TTL / 3 - 0.1 <= gone_after <= TTL + ELECTION_S, gone_after

            # SIGTERM: deregistered by the SDK's handler, then the process dies of SIGTERM.
            t0 = time.monotonic()
            termed.send_signal(signal.SIGTERM)
            assert termed.wait(10) == -signal.SIGTERM
            assert not present(ids[1]), "deregistered before the process died"
            assert time.monotonic() - t0 < 3.0  # its TTL is 30 s

            # Normal exit: atexit deregisters.
            assert exiting.stdin is not None
            t0 = time.monotonic()
            exiting.stdin.write("exit\n")
            exiting.stdin.flush()
            assert exiting.wait(10) == 0
            assert not present(ids[2]), "deregistered before the process ended"
            assert time.monotonic() - t0 < 3.0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)


def test_a_paused_service_registers_again_when_it_resumes(cluster: ProcessCluster) -> None:
    """SIGSTOP past the TTL (a long GC pause, a stopped VM): the record expires; on SIGCONT
    the SDK finds its lease gone, takes a new one and writes the same record again."""
    proc = start_service(cluster, TTL)
    try:
        info = ready(proc)
        with Client(endpoints(cluster)) as client:

            def lease_of_record() -> int:
                # One read: a discover then a get could see the record expire in between.
                kvs = client.get(f"/services/api/{info['id']}").kvs
                return kvs[0].lease if kvs else 0

            assert lease_of_record() == info["lease"]
            proc.send_signal(signal.SIGSTOP)
            wait_for("the paused service's record to expire", lambda: not lease_of_record(),
                     timeout=TTL + ELECTION_S + 1, interval=0.02)
            proc.send_signal(signal.SIGCONT)
            new_lease = wait_for("the record to be back", lease_of_record, timeout=10)
            assert new_lease != info["lease"]
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait(10)


# ------------------------------------------------------------------------------ register


@pytest.mark.parametrize("backend", BACKENDS)
def test_register_and_discover_with_filters(cluster: ProcessCluster, backend: str) -> None:
    svc = unique("filters")

    async def body() -> None:
        async with AsyncClient(endpoints(cluster)) as c:
            a = await c.register(svc, id="a", address="10.0.0.1", port=1, tags=["x", "y"],
                                 meta={"dc": "1"}, zone="z1", version="1.0", ttl=TTL)
            b = await c.register(svc, id="b", address="10.0.0.2", tags=["x"],
                                 meta={"dc": "2"}, health="warning", ttl=TTL)
            async with c.register(svc, id="c", address="10.0.0.3", ttl=TTL) as reg_c:
                assert reg_c.lease_id
                assert reg_c.ttl == TTL
                assert ids(await c.discover(svc)) == ["a", "c"]  # passing only, by id
                assert ids(await c.discover(svc, include_warning=True)) == ["a", "b", "c"]
                assert ids(await c.discover(svc, health=None)) == ["a", "b", "c"]
                assert ids(await c.discover(svc, health=["warning"])) == ["b"]
                assert ids(await c.discover(svc, tags=["x"], include_warning=True)) == ["a", "b"]
                assert ids(await c.discover(svc, tags=["x", "y"])) == ["a"]
                assert ids(await c.discover(svc, meta={"dc": "2"}, health=None)) == ["b"]
                assert ids(await c.discover(svc, meta={"dc": "3"})) == []
                (inst,) = await c.discover(svc, tags=["y"])
                assert inst == a.instance
                assert (inst.address, inst.port, inst.zone, inst.version) == (
                    "10.0.0.1", 1, "z1", "1.0")
                assert svc in {i.service for i in await c.discover(None)}

                # draining hides it from default discovery; the record keeps its lease.
                lease = a.lease_id
                await a.set_health("draining")
                assert ids(await c.discover(svc)) == ["c"]
                assert a.lease_id == lease
                assert a.instance.health is Health.DRAINING
                await a.update(health="passing", weight=5, tags=["z"])
                (inst,) = await c.discover(svc, tags=["z"])
                assert inst.weight == 5
                assert inst.id == "a"
            assert ids(await c.discover(svc, health=None)) == ["a", "b"]  # c deregistered
            await b.close()
            await b.close()  # idempotent
        # Closing the client deregisters what it registered.
        async with AsyncClient(endpoints(cluster)) as c:
            assert await c.discover(svc, health=None) == []

    run(backend, body)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_registrations_are_refused_before_anything_is_sent(
    cluster: ProcessCluster, backend: str
) -> None:
    async def body() -> None:
        async with AsyncClient(endpoints(cluster)) as c:
            with pytest.raises(ValidationError) as e:
                c.register("svc", port=70000)
            assert [v["path"] for v in e.value.violations] == ["/port"]
            with pytest.raises(ValidationError):
                c.register("svc", weight=-1)
            with pytest.raises(ClientError):
                c.register("a/b")
            with pytest.raises(ClientError):
                c.register("svc", health="sick")
            with pytest.raises(ClientError):
                c.register("svc", ttl=0)
            async with c.register(unique("bad"), ttl=TTL) as reg:
                with pytest.raises(ClientError):
                    await reg.update(id="other")
                with pytest.raises(ValidationError):
                    await reg.update(port=-1)
                assert reg.instance.port is None  # unchanged by the refused update
            assert reg.lease_id not in await c.leases()

    run(backend, body)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_registration_whose_lease_is_revoked_registers_again(
    cluster: ProcessCluster, backend: str
) -> None:
    svc = unique("regrant")

    async def body() -> None:
        async with AsyncClient(endpoints(cluster)) as c, c.register(svc, ttl=TTL) as reg:
            old = reg.lease_id
            await reg.set_health("warning")
            await c.lease_revoke(old)  # behind its back: the record goes with the lease

            async def back() -> bool:
                return reg.lease_id != old and bool(await c.discover(svc, health=None))

            await until(back)
            resp = await c.get(reg.key)
            assert resp.kvs[0].lease == reg.lease_id != old
            (inst,) = await c.discover(svc, health=None)
            assert inst.id == reg.id
            assert inst.health is Health.WARNING

    run(backend, body)


# ------------------------------------------------------------------------------ watch


@pytest.mark.parametrize("backend", BACKENDS)
def test_watch_services_sees_add_update_remove_with_revisions(
    cluster: ProcessCluster, backend: str
) -> None:
    svc = unique("watch")

    async def body() -> None:
        async with AsyncClient(endpoints(cluster)) as c:
            first = await c.register(svc, id="1", address="10.0.0.1", ttl=TTL)
            async with c.watch_services(svc) as sets:
                it = sets.__aiter__()
                s = await it.__anext__()
                assert s.ids == ("1",)
                assert s.added == s.instances
                assert s.removed == ()
                assert s.updated == ()
                last = s.revision

                second = await c.register(svc, id="0", address="10.0.0.2", ttl=TTL)
                s = await it.__anext__()
                assert s.ids == ("0", "1")
                assert [i.id for i in s.added] == ["0"]
                assert s.revision > last
                assert s.revision == (await c.get(second.key)).kvs[0].mod_revision
                last = s.revision

                await first.update(port=81)
                s = await it.__anext__()
                assert [i.port for i in s.updated] == [81]
                assert s.added == s.removed == ()
                assert s.revision > last
                last = s.revision

                # A change that leaves the filter is a removal from the set.
                await second.set_health("draining")
                s = await it.__anext__()
                assert s.ids == ("1",)
                assert [i.id for i in s.removed] == ["0"]
                assert s.removed[0].health is Health.PASSING  # the last value seen
                assert s.revision > last

                await first.close()
                s = await it.__anext__()
                assert s.ids == ()
                assert [i.id for i in s.removed] == ["1"]
            await second.close()

    run(backend, body)


def test_a_resync_yields_the_difference_and_malformed_records_are_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The set arithmetic on the informer's items, without a cluster (members refuse
    malformed records, so one can only be fed in)."""

    def kv(key: str, value: bytes, rev: int) -> KeyValue:
        return KeyValue(key.encode(), value, rev, rev, 1, 0)

    def rec(inst_id: str, **fields: object) -> bytes:
        return ServiceInstance("s", inst_id, **fields).to_json()  # type: ignore[arg-type]

    watch = ServiceWatch(None, "s", tags=(), meta=None,  # type: ignore[arg-type]
                         health={Health.PASSING})
    with caplog.at_level(logging.WARNING, logger="discoverd.sdk"):
        watch._absorb(Snapshot((kv("/services/s/a", rec("a"), 5),
                                kv("/services/s/b", b"{not json", 6)), 6))
    assert "malformed service record /services/s/b" in caplog.text
    assert decode_instance(kv("/services/s/b", b"[]", 1)) is None
    (s,) = watch._pending
    assert s.ids == ("a",)
    assert s.revision == 6
    watch._pending.clear()

    watch._absorb(Resync((kv("/services/s/a", rec("a", port=1), 9),
                          kv("/services/s/c", rec("c"), 8)), 10))
    (s,) = watch._pending
    assert s == ServiceSet(
        instances=(ServiceInstance("s", "a", port=1), ServiceInstance("s", "c")),
        added=(ServiceInstance("s", "c"),), removed=(),
        updated=(ServiceInstance("s", "a", port=1),), revision=10)
    watch._pending.clear()
    watch._absorb(Resync((kv("/services/s/a", rec("a", port=1), 9),
                          kv("/services/s/c", rec("c"), 8)), 11))
    assert not watch._pending  # nothing changed: nothing to say


# ------------------------------------------------------------------------------ picking


def _instances(*specs: tuple[str, int, str, str]) -> list[ServiceInstance]:
    return [ServiceInstance("s", i, weight=w, zone=z, health=Health(h)) for i, w, z, h in specs]


def test_choose_prefers_the_zone_and_draws_by_weight() -> None:
    insts = _instances(("a", 1, "z1", "passing"), ("b", 3, "z2", "passing"),
                       ("c", 0, "z2", "passing"), ("d", 5, "z1", "draining"))
    rng = random.Random(7)
    draws = Counter(choose(insts, strategy="random", zone=None, rng=rng, turn=0, what="s").id
                    for _ in range(4000))
    assert set(draws) == {"a", "b"}  # weight 0 and draining are never picked
    assert 0.70 < draws["b"] / 4000 < 0.80  # 3 : 1
    assert {choose(insts, strategy="random", zone="z1", rng=rng, turn=0, what="s").id
            for _ in range(50)} == {"a"}
    # No passing instance in the zone: any zone.
    assert {choose(insts, strategy="round_robin", zone="z9", rng=rng, turn=t, what="s").id
            for t in range(4)} == {"a", "b"}
    with pytest.raises(NoInstances):
        choose(_instances(("a", 0, "", "passing")), strategy="random", zone=None, rng=rng,
               turn=0, what="s")
    with pytest.raises(NoInstances):
        choose([], strategy="random", zone=None, rng=rng, turn=0, what="s")
    assert issubclass(NoInstances, Unavailable)


@pytest.mark.parametrize("backend", BACKENDS)
def test_picker_follows_the_live_set(cluster: ProcessCluster, backend: str) -> None:
    svc = unique("pick")

    async def body() -> None:
        async with AsyncClient(endpoints(cluster)) as c:
            with pytest.raises(NoInstances):
                await c.pick(svc)
            regs = [await c.register(svc, id=i, zone=z, weight=w, ttl=TTL)
                    for i, z, w in (("a", "z1", 1), ("b", "z2", 1), ("c", "z2", 3))]
            async with c.picker(svc, strategy="round_robin") as rr:
                assert [rr.pick().id for _ in range(6)] == ["a", "b", "c"] * 2
            async with c.picker(svc, rng=random.Random(1)) as rnd:
                counts = Counter(rnd.pick().id for _ in range(5000))
                assert 0.52 < counts["c"] / 5000 < 0.68  # 3 of 5
                assert 0.14 < counts["a"] / 5000 < 0.26
            async with c.picker(svc, zone="z1") as local:
                assert {local.pick().id for _ in range(20)} == {"a"}
                await regs[0].set_health("draining")  # the zone has nobody: go elsewhere

                async def moved() -> bool:
                    return "a" not in {i.id for i in local.instances}

                await until(moved)
                assert {local.pick().id for _ in range(40)} == {"b", "c"}
                await regs[0].set_health("passing")

                async def back() -> bool:
                    return "a" in {i.id for i in local.instances}

                await until(back)
                assert local.pick().id == "a"
                for reg in regs:
                    await reg.close()

                async def empty() -> bool:
                    return not local.instances

                await until(empty)
                with pytest.raises(NoInstances):
                    local.pick()
            with pytest.raises(ClientError):
                c.picker(svc, strategy="fastest")

    run(backend, body)


def test_the_sync_facade(cluster: ProcessCluster) -> None:
    svc = unique("sync")
    with Client(endpoints(cluster)) as c:
        reg = c.register(svc, id="a", port=1, ttl=TTL, handle_sigterm=False)
        with c.watch_services(svc) as sets, c.picker(svc, strategy="round_robin") as picker:
            assert sets.next(timeout=10).ids == ("a",)
            with c.register(svc, id="b", ttl=TTL, handle_sigterm=False) as b:
                assert sets.next(timeout=10).ids == ("a", "b")
                wait_for("the picker to see b", lambda: len(picker.instances) == 2)
                assert {picker.pick().id for _ in range(2)} == {"a", "b"}
                assert c.pick(svc, tags=()).id in {"a", "b"}
                b.set_health("critical")
                assert sets.next(timeout=10).ids == ("a",)
            assert b.closed
            reg.update(port=2)
            assert sets.next(timeout=10).updated[0].port == 2
            reg.close()
            assert sets.next(timeout=10).ids == ()
        assert c.discover(svc, health=None) == []
