"""The serving process's garbage-collection policy (``server/gc_policy.py``).

Each test runs in a fresh interpreter: the policy changes process-wide collector state,
which must not leak into (or depend on) the test process's own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

ROUND = """
import gc, json
from discoverd.server.gc_policy import SurvivorFreezer, configure_for_serving

configure_for_serving()
freezer = SurvivorFreezer()
store = [[i] for i in range(200_000)]   # long-lived containers, like a store's
freezer.round()
after_round = {"frozen": freezer.frozen, "visible": len(gc.get_objects())}

a, b = [], []
a.append(b); b.append(a)                       # a cycle that dies young
del a, b
freezer.round()
print(json.dumps({**after_round, "collected": freezer.collected,
                  "frozen_after": freezer.frozen, "rounds": freezer.rounds,
                  "store_alive": len(store)}))
"""


def _run(code: str, *args: str) -> dict[str, int]:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args],
                          capture_output=True, text=True, timeout=120, check=True)
    result: dict[str, int] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_a_round_leaves_the_collector_only_what_was_made_since() -> None:
    """After a round the store-like objects are frozen (a full collection no longer walks
    them); a cycle made afterwards is still collected by the next round, not frozen."""
    r = _run(ROUND)
    assert r["frozen"] >= 200_000
    assert r["visible"] < 5_000, r  # what a full collection would walk now
    assert r["collected"] >= 2, "the young cycle was collected"
    assert r["frozen_after"] - r["frozen"] < 100, r
    assert r["rounds"] == 2


CHURN = """
import gc, json, socket, sys, tempfile
import structlog, trio
from discoverd.server.config import MemberConfig
from discoverd.server.gc_policy import SurvivorFreezer, configure_for_serving
from discoverd.server.member import Member

structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

CLIENT = '''
import sys, trio
from discoverd.sdk import AsyncClient, FutureRevision
async def main():
    for i in range(int(sys.argv[2])):
        async with AsyncClient([sys.argv[1]]) as c:
            await c.put(b"/churn/%d" % (i % 10), b"v")
            try:
                await c.get(b"/churn/0", revision=10**9)
            except FutureRevision:
                pass
            if i % 4 == 0:
                async with c.watch(b"/churn/", prefix=True) as w:
                    await c.put(b"/churn/w", b"x")
                    async for _ in w:
                        break
                    await trio.sleep(0.03)
trio.run(main)
'''

async def main(n):
    configure_for_serving()
    cp, pp = free_port(), free_port()
    client, peer = f"http://127.0.0.1:{cp}", f"http://127.0.0.1:{pp}"
    cfg = MemberConfig(name="m1", data_dir=tempfile.mkdtemp(), listen_client_urls=client,
                       advertise_client_urls=client, listen_peer_urls=peer,
                       initial_advertise_peer_urls=peer, initial_cluster=f"m1={peer}")
    freezer = SurvivorFreezer(interval=0.01)  # a round every 10 ms: connections span many
    async with trio.open_nursery() as nursery:
        await nursery.start(Member(cfg, structlog.get_logger(), freezer).run)
        await trio.run_process([sys.executable, "-c", CLIENT, f"127.0.0.1:{cp}", "10"])
        gc.unfreeze()  # start from nothing frozen but what is alive now
        gc.collect()
        gc.freeze()
        rounds = freezer.rounds
        await trio.run_process([sys.executable, "-c", CLIENT, f"127.0.0.1:{cp}", str(n)])
        rounds = freezer.rounds - rounds
        before = freezer.collected
        freezer.round(sweep=True)  # what the periodic sweep reclaims: cycles among frozen
        swept = freezer.collected - before
        gc.unfreeze()
        left = gc.collect()
        print(json.dumps({"rounds": rounds, "swept": swept, "left": left}))
        nursery.cancel_scope.cancel()

trio.run(main, int(sys.argv[1]))
"""


def test_connections_that_lived_through_rounds_leave_no_frozen_garbage() -> None:
    """The price of freezing, measured: client connections (puts, an error answer, a watch
    held across rounds) opened and closed against a real member freezing every 10 ms. What
    a sweep then reclaims are objects frozen while alive that became cyclic garbage (a
    connection ended by cancellation: ~100 objects, in about one run in three); after the
    sweep nothing is left."""
    connections = 80
    r = _run(CHURN, str(connections))
    assert r["rounds"] >= 20, r  # the connections did live through rounds
    assert r["swept"] < 5 * connections, r  # a few objects per connection at most
    assert r["left"] == 0, r


SCHEDULE = """
import gc, json, sys
import trio, trio.testing
from discoverd.server.gc_policy import SurvivorFreezer, configure_for_serving

async def main(max_frozen):
    configure_for_serving()
    freezer = SurvivorFreezer(interval=1.0, sweep_interval=10.0, sweep_max_frozen=max_frozen)
    with trio.move_on_after(25.5):
        await freezer.run()
    print(json.dumps({"rounds": freezer.rounds, "sweeps": freezer.sweeps,
                      "frozen": gc.get_freeze_count()}))

trio.run(main, int(sys.argv[1]), clock=trio.testing.MockClock(autojump_threshold=0))
"""


def test_rounds_every_interval_and_a_sweep_only_while_few_objects_are_frozen() -> None:
    small = _run(SCHEDULE, str(10**9))
    assert small["rounds"] == 25
    assert small["sweeps"] == 2  # at 10 s and 20 s
    big = _run(SCHEDULE, "0")  # more frozen than the limit: the pause would be too long
    assert big["rounds"] == 25
    assert big["sweeps"] == 0
    assert big["frozen"] > 0


LOAD = """
import gc, json
from discoverd.server.gc_policy import configure_for_serving, loading_long_lived

configure_for_serving()
before = gc.get_freeze_count()
collections = []
gc.callbacks.append(lambda phase, info: collections.append(phase))
with loading_long_lived():
    enabled_inside = gc.isenabled()
    store = [[i] for i in range(300_000)]  # far past the thresholds: would collect often
print(json.dumps({"enabled_inside": enabled_inside, "enabled_after": gc.isenabled(),
                  "collections": len(collections), "frozen": gc.get_freeze_count() - before}))
"""


def test_what_a_restart_loads_is_built_without_collections_and_frozen() -> None:
    r = _run(LOAD)
    assert not r["enabled_inside"]
    assert r["enabled_after"]
    assert r["collections"] == 0
    assert r["frozen"] >= 300_000
