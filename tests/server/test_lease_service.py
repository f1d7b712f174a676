"""LeaseService on one in-memory member (virtual time): leader-only lease ops when
leadership is lost in the middle of one."""

from __future__ import annotations

import random

import pytest
import structlog
import trio
import trio.testing

from discoverd.consensus.raft import Config
from discoverd.consensus.storage import MemoryStorage
from discoverd.errors import NotLeader
from discoverd.machine.applier import KvMachine
from discoverd.member.core import MemberCore
from discoverd.server.api_server import Connection
from discoverd.server.lease_service import LeaseService
from discoverd.server.raft_loop import RaftLoop, run_inline


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def test_a_keepalive_whose_leader_stepped_down_while_it_waited_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The leader waits for its applied index to catch up before renewing; if it stops being
    the lease primary meanwhile, the keep-alive gets NotLeader (the client retries) rather
    than the lessor's assertion tearing down the client's whole connection."""
    machine = KvMachine()
    core = MemberCore(Config(id=1, voters=(1,), election_ticks=10), MemoryStorage(), machine,
                      random.Random(1))
    services: list[LeaseService] = []
    loop = RaftLoop(core, lambda msgs: None, tick_seconds=0.1, run_blocking=run_inline,
                    after_ready=lambda: services[0].after_apply())
    svc = LeaseService(core, machine, loop, member_id=1, send=lambda msgs: None,
                       header=lambda revision=None: {}, tick_seconds=0.1,
                       election_timeout=1.0, log=structlog.get_logger("test"))
    services.append(svc)
    conn = Connection(1)
    async with trio.open_nursery() as nursery:
        await nursery.start(loop.run)
        await nursery.start(svc.run)
        while not machine.lessor.primary:  # noqa: ASYNC110 - virtual time
            await trio.sleep(0.1)
        granted = await svc.op_grant({"ttl": 60}, conn)
        assert (await svc.op_keepalive({"lease": granted["id"]}, conn))["ttl"] == 60
        wait_applied = svc._await_applied

        async def stepping_down_meanwhile(index: int) -> None:
            machine.lessor.demote()  # what sync_role does when leadership is lost
            await wait_applied(index)

        svc._await_applied = stepping_down_meanwhile  # type: ignore[method-assign]
        with pytest.raises(NotLeader):
            await svc.op_keepalive({"lease": granted["id"]}, conn)
        nursery.cancel_scope.cancel()
