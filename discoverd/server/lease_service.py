"""The trio half of leases: the client ops, the forwarding of leader-only ops, and the
leader's lease timer (expiry and checkpoints). The lease state itself is ``leases.Lessor``,
inside the replicated machine; this module only feeds it time and proposals.

* ``lease_grant``/``lease_revoke`` are proposals like any write (the member picks an id
  for a grant without one: its member id's low bits, then a per-process counter, so ids
  from different members do not collide).
* ``lease_keepalive``/``lease_timetolive`` need the leader's clock: served by the leader;
  a follower forwards them over the peer link (``AppMessage``) and relays the answer.
* The timer runs on every member and acts only on the *primary*: the leader once it has
  applied an entry of its own term (before that, its view of the leases may be stale). It
  proposes revokes of expired leases, many per entry, and checkpoints of remaining TTLs;
  it does neither while the leader cannot show a live quorum — a deposed leader that does
  not know it yet must not expire anything on its own clock.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import cbor2
import trio

from discoverd.consensus.messages import AppMessage
from discoverd.errors import (
    ClientError,
    DiscoverdError,
    LeaseExists,
    NotLeader,
    RequestTimeout,
    Unavailable,
)
from discoverd.machine.applier import KvMachine, LeaseGranted, encode_command
from discoverd.member.core import MemberCore
from discoverd.server.api_server import Connection, FastHandler, Handler, error_body, stamp
from discoverd.server.raft_loop import RaftLoop
from discoverd.wire.lease_watch_codec import decode_lease_grant, decode_lease_id

EXPIRE_BATCH = 1000
"""Leases revoked per ``lease_expire`` entry: big enough that 10,000 expiring at once take
ten entries, small enough that one entry's apply does not stall the loop."""

CHECKPOINT_EVERY = 1.0
FORWARD_TIMEOUT = 2.0


class LeaseService:
    def __init__(
        self,
        core: MemberCore,
        machine: KvMachine,
        loop: RaftLoop,
        *,
        member_id: int,
        send: Any,
        header: Any,
        tick_seconds: float,
        election_timeout: float,
        log: Any,
    ) -> None:
        self.core = core
        self.machine = machine
        self.lessor = machine.lessor
        self.loop = loop
        self.member_id = member_id
        self._send = send
        self._header = header
        self.tick_seconds = tick_seconds
        self.election_timeout = election_timeout
        self.log = log
        self._primary_term = 0
        self._primary_ready = trio.Event()
        self._applied_changed = trio.Event()
        self._forwards: dict[int, tuple[trio.Event, list[Any]]] = {}
        self._forward_ids = itertools.count(1)
        # Lease ids: 15 bits of the member id, then 48 bits of (start time ms << 8) + counter.
        self._id_prefix = (member_id & 0x7FFF) << 48
        self._id_counter = itertools.count((int(time.time() * 1000) << 8) & ((1 << 48) - 1))
        self._nursery: trio.Nursery | None = None
        self.expired_proposed = 0
        self.checkpoints_proposed = 0

    def ops(self) -> dict[str, Handler]:
        return {
            "lease_grant": self.op_grant,
            "lease_revoke": self.op_revoke,
            "lease_keepalive": self.op_keepalive,
            "lease_timetolive": self.op_timetolive,
            "lease_leases": self.op_leases,
        }

    # ------------------------------------------------------------------ primary tracking

    def after_apply(self) -> None:
        """After each Ready: wake forwarded reads waiting to be applied; follow leadership."""
        self._applied_changed.set()
        self._applied_changed = trio.Event()
        self.sync_role()

    def sync_role(self) -> None:
        """Promote the lessor once this member leads with a final log; demote it when it
        stops leading (or leads again in a later term: another leader may have run
        in between, so deadlines must be rebuilt from the replicated state)."""
        core = self.core
        raft = core.node.raft
        leading = core.is_leader
        if self.lessor.primary and (not leading or raft.term != self._primary_term):
            self.lessor.demote()
            self._primary_ready = trio.Event()
            self.log.info("lease primary stepped down", term=raft.term)
        if (leading and not self.lessor.primary and raft.committed_in_current_term()
                and core.applied >= raft.log.committed):
            self.lessor.promote(trio.current_time())
            self._primary_term = raft.term
            self._primary_ready.set()
            self.log.info("lease primary", term=raft.term, leases=len(self.lessor),
                          index=core.applied)

    async def _await_primary(self) -> None:
        """Wait (bounded) until this member may answer leader-only lease ops."""
        if self.lessor.primary:
            return
        if not self.core.is_leader:
            raise NotLeader(leader=self.core.leader)
        with trio.move_on_after(self.election_timeout):
            await self._primary_ready.wait()
        if not self.lessor.primary:
            raise Unavailable("the new leader is not ready to serve leases yet; retry")

    # ------------------------------------------------------------------ client ops

    async def op_grant(self, req: dict[str, Any], conn: Connection) -> dict[str, Any]:
        lease_id, ttl = decode_lease_grant(req)
        for _ in range(3):
            chosen = lease_id or self._next_id()
            result = await self.loop.propose(
                encode_command("lease_grant", {"lease": chosen, "ttl": ttl, **stamp(req)}))
            if isinstance(result, LeaseExists) and not lease_id:
                continue  # an id we picked was taken (explicitly, by someone): pick again
            if isinstance(result, DiscoverdError):
                raise result
            assert isinstance(result, LeaseGranted)
            return {"header": self._header(result.header_revision), "id": result.id,
                    "ttl": result.ttl}
        raise Unavailable("could not find a free lease id; retry")

    def _next_id(self) -> int:
        return self._id_prefix | (next(self._id_counter) & ((1 << 48) - 1)) or 1

    async def op_revoke(self, req: dict[str, Any], conn: Connection) -> dict[str, Any]:
        lease_id = decode_lease_id(req)
        result = await self.loop.propose(
            encode_command("lease_revoke", {"lease": lease_id, **stamp(req)}))
        if isinstance(result, DiscoverdError):
            raise result
        return {"header": self._header(result.header_revision)}

    async def op_leases(self, req: dict[str, Any], conn: Connection) -> dict[str, Any]:
        await self.loop.read_barrier()
        return {"header": self._header(), "leases": [{"id": i} for i in self.lessor.leases()]}

    def fast_ops(self) -> dict[str, FastHandler]:
        return {"lease_keepalive": self.fast_keepalive}

    def fast_keepalive(self, req: dict[str, Any], conn: Connection) -> dict[str, Any] | None:
        """A keep-alive on the primary that has applied all it committed: answered at once
        (``api_server.FastHandler``); anything else takes ``op_keepalive``'s path."""
        if not (self.lessor.primary and self.core.is_leader
                and self.core.applied >= self.core.node.raft.log.committed):
            return None
        return self._serve_locally({"op": "lease_keepalive", "lease": decode_lease_id(req)})

    async def op_keepalive(self, req: dict[str, Any], conn: Connection) -> dict[str, Any]:
        lease_id = decode_lease_id(req)
        return await self._leader_op({"op": "lease_keepalive", "lease": lease_id})

    async def op_timetolive(self, req: dict[str, Any], conn: Connection) -> dict[str, Any]:
        lease_id = decode_lease_id(req)
        keys = req.get("keys", False)
        if type(keys) is not bool:
            raise ClientError("field 'keys' must be bool")
        return await self._leader_op(
            {"op": "lease_timetolive", "lease": lease_id, "keys": keys})

    # ------------------------------------------------------------------ leader-only ops

    async def _leader_op(self, op: dict[str, Any]) -> dict[str, Any]:
        if self.core.is_leader:
            await self._await_primary()
            committed = self.core.node.raft.log.committed
            await self._await_applied(committed)
            if self.core.applied < committed:
                raise Unavailable("the leader is still applying committed entries; retry")
            if not self.lessor.primary:
                # Leadership was lost while we waited for the apply: answer as a follower
                # would (the client retries elsewhere), never renew as a non-primary.
                raise NotLeader(leader=self.core.leader)
            return self._serve_locally(op)
        leader = self.core.leader
        if not leader:
            raise NotLeader("etcdserver: no leader")
        rid = next(self._forward_ids)
        done = trio.Event()
        slot: list[Any] = []
        self._forwards[rid] = (done, slot)
        try:
            # "applied": the leader answers only once it has applied as much as we have,
            # so a client's own write (acknowledged here) is visible to its next read.
            self._send([AppMessage(0, self.member_id, leader, cbor2.dumps(
                {**op, "rid": rid, "applied": self.core.applied}))])
            with trio.move_on_after(FORWARD_TIMEOUT):
                await done.wait()
        finally:
            self._forwards.pop(rid, None)
        if not slot:
            raise RequestTimeout(f"the leader {leader:x} did not answer a forwarded {op['op']}")
        answer = slot[0]
        if "err" in answer:
            err = answer["err"]
            if err.get("code") == "not_leader":
                raise NotLeader(str(err.get("message", "not leader")),
                                leader=int(err.get("leader", 0) or 0))
            raise Unavailable(f"leader: {err.get('message', err.get('code'))}")
        body: dict[str, Any] = answer["ok"]
        body["header"] = self._header()
        return body

    def _serve_locally(self, op: dict[str, Any]) -> dict[str, Any]:
        """A leader-only op on the primary; synchronous, so a forwarded one is answered
        from the transport callback without a task."""
        now = trio.current_time()
        lease_id = op["lease"]
        if op["op"] == "lease_keepalive":
            ttl = self.lessor.renew(lease_id, now)
            return {"header": self._header(), "id": lease_id, "ttl": ttl}
        lease = self.lessor.get(lease_id)
        body: dict[str, Any] = {
            "header": self._header(), "id": lease_id,
            "ttl": self.lessor.remaining_seconds(lease_id, now),
            "granted_ttl": lease.ttl if lease is not None else 0,
            "keys": sorted(lease.keys) if lease is not None and op.get("keys") else [],
        }
        return body

    def on_app_message(self, msg: AppMessage) -> None:
        """A forwarded op (we are, or were, the leader) or its answer (we forwarded it)."""
        try:
            body = cbor2.loads(msg.payload)
            rid = body["rid"]
        except (ValueError, TypeError, KeyError, EOFError, cbor2.CBORDecodeError):
            self.log.warning("malformed forwarded lease op", peer=f"{msg.src:x}")
            return
        if "ok" in body or "err" in body:
            waiter = self._forwards.get(rid)
            if waiter is not None:
                waiter[1].append(body)
                waiter[0].set()
            return
        applied = body.get("applied", 0)
        # Everything committed when the op arrives must be applied before it is answered: a
        # lease granted through another member is committed (its client was answered) but
        # the leader may apply it after that member did — a keep-alive must not find "no
        # such lease" then. And as much as the forwarding member applied, so that a
        # client's own write acknowledged there is seen.
        target = max(applied if type(applied) is int else 0, self.core.node.raft.log.committed)
        body["applied"] = target
        if target > self.core.applied and self._nursery is not None:
            self._nursery.start_soon(self._answer_when_applied, msg.src, body, target)
            return
        self._answer_forwarded(msg.src, body)

    async def _await_applied(self, index: int) -> None:
        """Until this member has applied ``index`` (bounded by ``FORWARD_TIMEOUT``)."""
        with trio.move_on_after(FORWARD_TIMEOUT):
            while self.core.applied < index:
                await self._applied_changed.wait()

    async def _answer_when_applied(self, src: int, body: dict[str, Any], applied: int) -> None:
        await self._await_applied(applied)
        self._answer_forwarded(src, body)  # a late answer is fine: the follower drops it

    def _answer_forwarded(self, src: int, body: dict[str, Any]) -> None:
        rid = body["rid"]
        answer: dict[str, Any] = {"rid": rid}
        try:
            if self.core.applied < body.get("applied", 0):
                raise Unavailable("the leader is behind the forwarding member; retry")
            if body.get("op") not in ("lease_keepalive", "lease_timetolive"):
                raise ClientError(f"cannot forward {body.get('op')!r}")
            if not self.lessor.primary:
                raise NotLeader(leader=self.core.leader)
            ok = self._serve_locally(body)
            ok.pop("header", None)
            answer["ok"] = ok
        except DiscoverdError as e:
            answer["err"] = error_body(e)
        except (KeyError, TypeError) as e:
            answer["err"] = {"code": "invalid_argument", "message": f"bad forwarded op: {e}"}
        self._send([AppMessage(0, self.member_id, src, cbor2.dumps(answer))])

    # ------------------------------------------------------------------ the timer

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            next_checkpoint = trio.current_time() + CHECKPOINT_EVERY
            while True:
                await trio.sleep(self.tick_seconds)
                self.sync_role()
                if not self.lessor.primary or not self.core.node.raft.quorum_active():
                    continue
                now = trio.current_time()
                while ids := self.lessor.expired(now, EXPIRE_BATCH):
                    self.expired_proposed += len(ids)
                    self.log.info("leases expired", count=len(ids), term=self.core.term)
                    nursery.start_soon(self._propose_internal, "lease_expire", {"ids": ids})
                if now >= next_checkpoint:
                    next_checkpoint = now + CHECKPOINT_EVERY
                    due = self.lessor.checkpoints_due(now)
                    if due:
                        self.checkpoints_proposed += len(due)
                        nursery.start_soon(self._propose_internal, "lease_checkpoint",
                                           {"leases": [list(d) for d in due]})

    async def _propose_internal(self, op: str, fields: dict[str, Any]) -> None:
        """Fire-and-forget: a lost expiry is handed out again by the lessor later; a lost
        checkpoint is recomputed at the next round."""
        with trio.move_on_after(5 * self.election_timeout):
            try:
                await self.loop.propose(encode_command(op, fields))
            except DiscoverdError as e:
                self.log.debug("lease proposal not committed", op=op, error=str(e))
