"""The space quota and its NOSPACE alarm on a member (etcd's ``--quota-backend-bytes`` and
``alarm list|disarm``); the alarm itself is replicated state (``machine/alarms.py``).

* **Quota**: a write that would grow the store past ``--quota-backend-bytes`` is refused
  before it is proposed (``no_space``), and this member raises NOSPACE through Raft — from
  then on every member refuses every write that adds data, while deletes, compaction and
  reads go on.
* **Lifting it**: ``alarm_disarm`` (``discoverd alarm disarm``), or by itself: the leader
  checks every second and disarms NOSPACE once the store is back under the quota with room
  to spare — below ``LOW_WATER`` (90 %) of it, after deletes and a compaction. The margin
  matters: the write that raised the alarm was refused, so the store is still just under
  the quota at that moment, and lifting at once would only raise the alarm again.
* Ops: ``alarm_list`` → ``{header, alarms: [{member_id, alarm}]}``; ``alarm_disarm
  {member_id? (0: all), alarm? ("NOSPACE")}`` → ``{header, alarms: [the disarmed ones]}``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
import trio

from discoverd.consensus.raft import Role
from discoverd.errors import ClientError, DiscoverdError, NoSpace
from discoverd.kv.requests import PutRequest, TxnRequest
from discoverd.machine.alarms import NOSPACE
from discoverd.machine.applier import AlarmsChanged, KvMachine, encode_command
from discoverd.member.core import MemberCore
from discoverd.server.api_server import Connection, Handler, stamp
from discoverd.server.raft_loop import RaftLoop

CHECK_SECONDS = 1.0
LOW_WATER = 0.9


def put_bytes(req: Any) -> int:
    """Bytes a kv write request would add at most (keys and values of its puts)."""
    if isinstance(req, PutRequest):
        return len(req.key) + len(req.value)
    if isinstance(req, TxnRequest):
        total = 0
        for op in (*req.success, *req.failure):
            if op.request_put is not None:
                total += put_bytes(op.request_put)
            elif op.request_txn is not None:
                total += put_bytes(op.request_txn)
        return total
    return 0


def alarms_json(pairs: list[tuple[int, str]]) -> list[dict[str, Any]]:
    return [{"member_id": m, "alarm": k} for m, k in pairs]


class AlarmService:
    def __init__(self, core: MemberCore, machine: KvMachine, loop: RaftLoop, *,
                 member_id: int, quota_bytes: int, header: Callable[..., dict[str, int]],
                 log: Any = None) -> None:
        self.core = core
        self.machine = machine
        self.loop = loop
        self.member_id = member_id
        self.quota_bytes = quota_bytes
        self.header = header
        self.log = log if log is not None else structlog.get_logger("alarms")

    def ops(self) -> dict[str, Handler]:
        return {"alarm_list": self.op_list, "alarm_disarm": self.op_disarm}

    def errors(self) -> list[str]:
        """The active alarms as etcd's status lists them."""
        return [f"memberID:{m} alarm:{k}" for m, k in self.machine.alarms.active()]

    async def check_quota(self, req: Any) -> None:
        """Before proposing ``req``: refuse it, and raise NOSPACE, if it would pass the
        quota."""
        added = put_bytes(req)
        if not added or self.machine.store.size_bytes + added <= self.quota_bytes:
            return
        if NOSPACE not in self.machine.alarms:
            self.log.warning("space quota exceeded: raising NOSPACE",
                             size=self.machine.store.size_bytes, quota=self.quota_bytes,
                             term=self.core.term)
            await self._propose("activate", self.member_id)
        raise NoSpace()

    async def _propose(self, action: str, member_id: int,
                       judged: dict[str, Any] | None = None) -> AlarmsChanged:
        result = await self.loop.propose(encode_command(
            "alarm", {"action": action, "member_id": member_id, "alarm": NOSPACE,
                      **(judged or {})}))
        if isinstance(result, DiscoverdError):
            raise result
        assert isinstance(result, AlarmsChanged)
        return result

    async def op_list(self, req: dict[str, Any], conn: Connection) -> dict[str, Any]:
        await self.loop.read_barrier()
        return {"header": self.header(),
                "alarms": alarms_json(self.machine.alarms.active())}

    async def op_disarm(self, req: dict[str, Any], conn: Connection) -> dict[str, Any]:
        member_id = req.get("member_id", 0)
        alarm = req.get("alarm", NOSPACE)
        if type(member_id) is not int or member_id < 0 or alarm != NOSPACE:
            raise ClientError("alarm_disarm takes member_id (an int >= 0; 0: every member) "
                              f"and alarm {NOSPACE!r}")
        result = await self._propose("deactivate", member_id, stamp(req))
        if result.changed:
            self.log.info("alarm disarmed", alarms=alarms_json(result.changed),
                          term=self.core.term)
        return {"header": self.header(result.header_revision),
                "alarms": alarms_json(result.changed)}

    async def run(self) -> None:
        """On the leader: lift NOSPACE once the store is back under the quota."""
        while True:
            await trio.sleep(CHECK_SECONDS)  # the check's cadence
            if (NOSPACE in self.machine.alarms
                    and self.machine.store.size_bytes <= self.quota_bytes * LOW_WATER
                    and self.core.node.status().role is Role.LEADER):
                try:
                    result = await self._propose("deactivate", 0)
                except DiscoverdError as e:
                    self.log.info("NOSPACE not lifted yet", error=str(e))
                    continue
                self.log.info("NOSPACE lifted: the store is back under 90% of its quota",
                              size=self.machine.store.size_bytes, quota=self.quota_bytes,
                              alarms=alarms_json(result.changed), term=self.core.term)
