"""Automatic compaction (``--auto-compaction-mode``/``--auto-compaction-retention``), on by
default: the leader runs the policy of ``kv/auto_compaction.py`` and proposes ``compact``
through Raft like any client compaction, so every member compacts at the same revision.

Watchers are held on: the leader caps the target at the oldest revision its own watchers
still need, and at what each follower last reported for its watchers (a follower sends its
"watch floor" to the leader every check interval on the peer link, as an ``AppMessage``
tagged ``WATCH_FLOOR_TAG`` — never seen by Raft). A report older than three intervals is
ignored (that follower is gone or partitioned, and cannot hold history for ever).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog
import trio

from discoverd.consensus.messages import AppMessage
from discoverd.consensus.raft import Role
from discoverd.errors import DiscoverdError
from discoverd.kv.auto_compaction import AutoCompaction
from discoverd.machine.applier import KvMachine, encode_command
from discoverd.member.core import MemberCore
from discoverd.server.raft_loop import RaftLoop

WATCH_FLOOR_TAG = b"\x01"
"""First byte of a watch-floor report (other app messages are cbor maps: 0xa0-0xbf)."""
_STALE_INTERVALS = 3


class Compactor:
    def __init__(self, policy: AutoCompaction, core: MemberCore, machine: KvMachine,
                 loop: RaftLoop, *, member_id: int, send: Callable[[list[Any]], None],
                 log: Any = None) -> None:
        self.policy = policy
        self.core = core
        self.machine = machine
        self.loop = loop
        self.member_id = member_id
        self._send = send
        self.log = log if log is not None else structlog.get_logger("compactor")
        self._floors: dict[int, tuple[int, float]] = {}
        self.compactions = 0

    async def run(self) -> None:
        if not self.policy.enabled:
            self.log.info("auto compaction off")
            return
        self.log.info("auto compaction on", mode=self.policy.mode,
                      retention=self.policy.retention, every=self.policy.interval)
        while True:
            await trio.sleep(self.policy.interval)  # the policy's own cadence
            status = self.core.node.status()
            if status.role is not Role.LEADER:
                self.policy.reset()
                if status.leader:
                    self._report_floor(status.leader)
                continue
            await self._compact_once()

    def _report_floor(self, leader: int) -> None:
        floor = self.machine.hub.oldest_needed() or 0
        self._send([AppMessage(0, self.member_id, leader,
                               WATCH_FLOOR_TAG + floor.to_bytes(8, "big"))])

    def on_app_message(self, msg: AppMessage) -> bool:
        """Take a follower's watch-floor report; False if ``msg`` is not one."""
        if msg.payload[:1] != WATCH_FLOOR_TAG or len(msg.payload) != 9:
            return False
        self._floors[msg.src] = (int.from_bytes(msg.payload[1:], "big"), time.monotonic())
        return True

    def _oldest_watch(self) -> int | None:
        fresh_after = time.monotonic() - _STALE_INTERVALS * self.policy.interval
        floors = [f for f, at in self._floors.values() if f and at >= fresh_after]
        own = self.machine.hub.oldest_needed()
        if own is not None:
            floors.append(own)
        return min(floors, default=None)

    async def _compact_once(self) -> None:
        store = self.machine.store
        plan = self.policy.plan(time.monotonic(), store.revision, store.compact_revision,
                                self._oldest_watch())
        if plan is None:
            return
        try:
            result = await self.loop.propose(encode_command("compact",
                                                            {"revision": plan.revision}))
        except DiscoverdError as e:  # lost leadership meanwhile: the next leader decides
            self.log.info("auto compaction not proposed", revision=plan.revision, error=str(e))
            return
        if isinstance(result, DiscoverdError):
            self.log.info("auto compaction refused", revision=plan.revision, error=str(result))
            return
        self.compactions += 1
        self.log.info("auto compaction", revision=plan.revision, mode=self.policy.mode,
                      term=self.core.term, held_by_watcher=plan.held_by_watcher,
                      slow_watcher_compacted=plan.watcher_dropped)
