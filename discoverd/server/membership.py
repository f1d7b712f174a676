"""The trio half of membership: the ``member_*`` and ``move_leader`` client ops, the peer
links following the member table, and this member publishing its own name and client URLs.

* ``member_list`` answers from this member's applied table (like etcd 3.4: no quorum round,
  so it works on a cluster that has lost its quorum — which is when an operator needs it).
* ``member_add``/``member_remove``/``member_promote`` are judged by the leader
  (``member/membership.py``: one change at a time, the strict reconfiguration checks, a
  learner's catch-up — only the leader knows the replication progress) and proposed as Raft
  membership changes. A follower forwards the whole request to the leader over the peer
  link (an ``AppMessage`` tagged ``MEMBERSHIP_TAG``), relays its answer or error, and
  answers once it has itself applied the change, so a ``member_list`` that follows on the
  same member already shows it.
* ``member_update`` (new peer URLs) is an ordinary command any member proposes.
* ``move_leader`` is served by the leader only; a follower answers ``not_leader`` with the
  leader's id (etcd's ``MoveLeader``), and the transfer gives up after an election timeout.
* After every Ready the peer links are made to follow the table (``PeerTransport.set_peers``):
  a member added, moved or removed is dialled, redialled or dropped. A removed member's link
  lingers for ``REMOVED_PEER_LINGER`` seconds, so the messages already queued for it (the
  commit of its own removal among them) still reach it and it can stop itself.
* Once the table lists this member with another name or other client URLs than its flags
  say, the member proposes a ``member_attributes`` command (etcd's attribute publish, which
  is also how a member added at run time stops being "unstarted"), retrying until applied.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import cbor2
import trio

from discoverd.consensus.messages import AppMessage, ConfChange, ConfChangeKind, Message
from discoverd.errors import (
    ClientError,
    DiscoverdError,
    MemberNotFound,
    NotLeader,
    PeerURLExists,
    RequestTimeout,
)
from discoverd.machine.applier import KvMachine, encode_command
from discoverd.machine.members import MemberChange, MemberInfo
from discoverd.member.core import MemberCore
from discoverd.member.membership import (
    ClusterView,
    check_transferee,
    plan_add,
    plan_promote,
    plan_remove,
)
from discoverd.server.api_server import Connection, Handler, error_body
from discoverd.server.config import MemberConfig, member_id_for, parse_url, parse_urls
from discoverd.server.raft_loop import RaftLoop
from discoverd.server.transport import PeerTransport
from discoverd.storage.fs import OsFS
from discoverd.storage.meta import read_meta

MEMBERSHIP_TAG = b"\x02"
"""First byte of a forwarded membership request or its answer (then a cbor2 map). Other
app messages start with 0x01 (compactor) or a cbor map header (0xa0-0xbf: leases)."""

FORWARD_TIMEOUT = 4.0
"""How long a follower waits for the leader's answer: under the client port's 5 s request
timeout, so a slow leader yields a clear ``timeout`` rather than the generic one."""

REMOVED_PEER_LINGER = 2.0
"""Seconds a removed member's peer link is kept after its removal applied here."""

PUBLISH_RETRY = 0.2
"""Seconds between attempts to publish this member's attributes while they fail."""

_LEADER_OPS = ("member_add", "member_remove", "member_promote")


def member_identity(cfg: MemberConfig) -> int:
    """This member's id: the one its data directory was created with, if that directory
    belongs to a member of the same name and cluster (etcd reads its id from its data too);
    otherwise the id its flags derive. So a member whose peer URLs were changed with
    ``member update`` restarts with its new URLs as the same member, while a data directory
    of another member (another name) is still refused by the storage layer."""
    derived = cfg.member_id
    meta = read_meta(OsFS(), f"{cfg.member_dir}/meta")
    if meta is not None and meta.cluster_id == cfg.cluster_id and meta.name == cfg.name:
        return meta.member_id
    return derived


def _member_field(req: dict[str, Any], field: str = "member") -> int:
    value = req.get(field)
    if type(value) is not int or value <= 0:
        raise ClientError(f"field {field!r} must be a positive integer member id")
    return value


def _peer_urls_field(req: dict[str, Any]) -> list[str]:
    urls = req.get("peer_urls")
    if not isinstance(urls, list) or not urls:
        raise ClientError("member peer urls not provided")
    if not all(isinstance(u, str) for u in urls):
        raise ClientError("field 'peer_urls' must be a list of strings")
    try:
        return sorted(parse_urls(",".join(urls)))  # etcd keeps a member's URLs sorted
    except ClientError as e:
        raise ClientError(f"etcdserver: given member URLs are invalid ({e})") from None


def _relayed(err: dict[str, Any]) -> DiscoverdError:
    """The leader's error, as this member raises it: same code and message (and leader
    hint), so the client's retry rules see exactly what the leader said."""
    code = str(err.get("code", "unknown"))
    if code == "not_leader":
        return NotLeader(str(err.get("message", "not leader")),
                         leader=int(err.get("leader", 0) or 0))
    exc = DiscoverdError(str(err.get("message", code)))
    exc.code = code
    return exc


class MembershipService:
    def __init__(
        self,
        core: MemberCore,
        machine: KvMachine,
        loop: RaftLoop,
        transport: PeerTransport,
        *,
        cfg: MemberConfig,
        member_id: int,
        send: Callable[[list[Message]], None],
        header: Callable[..., dict[str, int]],
        log: Any,
    ) -> None:
        self.core = core
        self.machine = machine
        self.table = machine.members
        self.loop = loop
        self.transport = transport
        self.cfg = cfg
        self.member_id = member_id
        self._send = send
        self._header = header
        self.log = log
        self.election_timeout = cfg.election_timeout_ms / 1000
        self._attributes = (cfg.name, tuple(parse_urls(cfg.advertise_client_urls)))
        self._forwards: dict[int, _Forward] = {}
        self._leader_seen = 0
        self._forward_ids = itertools.count(1)
        self._nursery: trio.Nursery | None = None
        self._readied = trio.Event()
        self._table_changed = trio.Event()
        self._synced_version = -1
        self._peers: dict[int, tuple[str, int]] = {}
        self._lingering: dict[int, tuple[tuple[str, int], float]] = {}
        self._linger_changed = trio.Event()

    def __repr__(self) -> str:
        return (f"<MembershipService {self.member_id:x} {self.table!r} "
                f"forwards={len(self._forwards)} lingering={len(self._lingering)}>")

    def ops(self) -> dict[str, Handler]:
        return {
            "member_list": self.op_list,
            "member_add": self.op_add,
            "member_remove": self.op_remove,
            "member_promote": self.op_promote,
            "member_update": self.op_update,
            "move_leader": self.op_move_leader,
        }

    # ------------------------------------------------------------------ following the table

    def after_ready(self) -> None:
        """After each Ready: mend the table after a restore, log what changed, make the
        peer links follow it, and wake whoever waits for the apply to advance."""
        table = self.table
        if table.needs_reconcile and table.reconcile(self.core.conf_state):
            self.log.info("member table reconciled with the restored configuration",
                          members=len(table), index=self.core.applied, term=self.core.term)
        if table.changes:
            changes, table.changes = table.changes, []
            for change in changes:
                self._log_change(change)
        if self.core.leader != self._leader_seen:
            self._leader_seen = self.core.leader
            for waiting in self._forwards.values():
                waiting.wake.set()  # the leader it went to may never answer now
        if table.version != self._synced_version:
            self._synced_version = table.version
            self._sync_peers()
            self._table_changed.set()
            self._table_changed = trio.Event()
        self._readied.set()
        self._readied = trio.Event()

    def _log_change(self, change: MemberChange) -> None:
        m = change.member
        self.log.info(f"member {change.what}", member=f"{m.id:x}", name=m.name,
                      peer_urls=list(m.peer_urls), client_urls=list(m.client_urls),
                      is_learner=m.is_learner, term=change.term, index=change.index)

    def _sync_peers(self) -> None:
        """Peer links for every member of the table with a usable peer URL; removed peers
        linger (see the module docstring). An empty table — a brand-new or joining member
        that has applied nothing yet — leaves the links from ``--initial-cluster`` alone."""
        if not len(self.table):
            self._lingering.clear()
            return
        wanted: dict[int, tuple[str, int]] = {}
        for m in self.table.members():
            if m.id == self.member_id or not m.peer_urls:
                continue
            try:
                wanted[m.id] = parse_url(m.peer_urls[0])
            except ClientError:
                self.log.warning("member has no usable peer URL", member=f"{m.id:x}",
                                 peer_urls=list(m.peer_urls))
        now = trio.current_time()
        for pid, addr in self._peers.items():
            if pid not in wanted and pid not in self._lingering:
                self._lingering[pid] = (addr, now + REMOVED_PEER_LINGER)
        for pid in list(self._lingering):
            if pid in wanted or self._lingering[pid][1] <= now:
                del self._lingering[pid]
        self._peers = wanted
        self.transport.set_peers({**{pid: a for pid, (a, _) in self._lingering.items()},
                                  **wanted})
        self._linger_changed.set()

    async def _expire_lingering(self) -> None:
        while True:
            if not self._lingering:
                self._linger_changed = trio.Event()
                await self._linger_changed.wait()
                continue
            await trio.sleep_until(min(deadline for _, deadline in self._lingering.values()))
            self._sync_peers()

    async def _publish(self) -> None:
        """Propose ``member_attributes`` whenever the table shows this member with other
        attributes than its flags (first start, changed client URLs), until it shows them."""
        name, client_urls = self._attributes
        while True:
            me = self.table.get(self.member_id)
            if me is None or (me.name, me.client_urls) == self._attributes:
                await self._table_changed.wait()
                continue
            if not self.core.leader:  # nothing to propose to yet: no failed proposal either
                await self._readied.wait()
                continue
            try:
                with trio.move_on_after(2 * self.election_timeout):
                    await self.loop.propose(encode_command("member_attributes", {
                        "member": self.member_id, "name": name,
                        "client_urls": list(client_urls)}))
            except DiscoverdError as e:
                self.log.debug("publishing member attributes failed; retrying", error=str(e))
            me = self.table.get(self.member_id)
            if me is not None and (me.name, me.client_urls) != self._attributes:
                await trio.sleep(PUBLISH_RETRY)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.after_ready()  # a table restored from this member's own snapshot
            nursery.start_soon(self._expire_lingering)
            nursery.start_soon(self._publish)
            task_status.started()

    # ------------------------------------------------------------------ client ops

    async def op_list(self, req: dict[str, Any], conn: Connection) -> dict[str, Any]:
        return {"header": self._header(), "members": self._listing()}

    def _listing(self) -> list[dict[str, Any]]:
        return [m.to_wire() for m in self.table.members()]

    async def op_add(self, req: dict[str, Any], conn: Connection) -> dict[str, Any]:
        urls = _peer_urls_field(req)
        name = req.get("name", "default")
        if not isinstance(name, str) or not name:
            raise ClientError("field 'name' must be a non-empty string")
        learner = req.get("is_learner", False)
        if type(learner) is not bool:
            raise ClientError("field 'is_learner' must be a bool")
        result = await self._leader_op("member_add", {"name": name, "peer_urls": urls,
                                                      "is_learner": learner})
        mid = int(result["member"])
        info = self.table.get(mid) or MemberInfo(mid, "", tuple(urls), (), learner)
        return {"header": self._header(), "member": info.to_wire(),
                "members": self._listing()}

    async def op_remove(self, req: dict[str, Any], conn: Connection) -> dict[str, Any]:
        await self._leader_op("member_remove", {"member": _member_field(req)})
        return {"header": self._header(), "members": self._listing()}

    async def op_promote(self, req: dict[str, Any], conn: Connection) -> dict[str, Any]:
        await self._leader_op("member_promote", {"member": _member_field(req)})
        return {"header": self._header(), "members": self._listing()}

    async def op_update(self, req: dict[str, Any], conn: Connection) -> dict[str, Any]:
        mid = _member_field(req)
        urls = _peer_urls_field(req)
        if mid not in self.table:
            raise MemberNotFound()
        if self.table.owner_of(urls, besides=mid):
            raise PeerURLExists()
        result = await self.loop.propose(
            encode_command("member_update", {"member": mid, "peer_urls": urls}))
        if isinstance(result, DiscoverdError):
            raise result
        return {"header": self._header(), "members": self._listing()}

    async def op_move_leader(self, req: dict[str, Any], conn: Connection) -> dict[str, Any]:
        target = _member_field(req, "target")
        core = self.core
        if not core.is_leader:
            raise NotLeader("etcdserver: not leader", leader=core.leader)
        check_transferee(self._view(), target)
        if target != self.member_id:
            self.log.info("moving leadership", to=f"{target:x}", term=core.term,
                          index=core.applied)
            with trio.move_on_after(self.election_timeout) as scope:
                await self.loop.transfer_leadership(target)
                while core.leader != target:
                    await self._readied.wait()
            if scope.cancelled_caught:
                raise RequestTimeout(
                    "etcdserver: request timed out, leader transfer took too long")
            self.log.info("leadership moved", to=f"{target:x}", term=core.term)
        return {"header": self._header()}

    # ------------------------------------------------------------------ the leader's part

    def _view(self) -> ClusterView:
        raft = self.core.node.raft
        match = {pid: pr.match for pid, pr in raft.prs.items()}
        connected = frozenset(pid for pid in raft.prs if self.transport.is_connected(pid))
        return ClusterView(leader=self.member_id, conf_state=raft.conf_state, match=match,
                           connected=connected, pending_conf_index=raft.pending_conf_index,
                           applied=self.core.applied)

    async def _leader_op(self, op: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Run ``op`` on the leader — here, or forwarded — and return its result once this
        member has applied the change too (bounded: the answer comes anyway)."""
        if self.core.is_leader:
            return await self._execute(op, fields)
        result = await self._forward(op, fields)
        with trio.move_on_after(self.election_timeout):
            while self.core.applied < int(result.get("applied", 0)):
                await self._readied.wait()
        return result

    async def _execute(self, op: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Judge and propose a membership change; on the leader only.

        Raises:
            NotLeader: this member does not lead (any more).
            the errors of ``member/membership.py``, and those of a lost proposal.
        """
        core = self.core
        if not core.is_leader:
            raise NotLeader("etcdserver: not leader", leader=core.leader)
        view = self._view()
        cc: ConfChange
        if op == "member_add":
            urls = _peer_urls_field(fields)
            name = str(fields["name"])
            mid = member_id_for(name, urls, self.cfg.initial_cluster_token)
            cc = plan_add(view, self.table, mid, urls, is_learner=bool(fields["is_learner"]))
        elif op == "member_remove":
            cc = plan_remove(view, _member_field(fields))
        elif op == "member_promote":
            cc = plan_promote(view, _member_field(fields))
        else:
            raise ClientError(f"cannot run {op!r} as a membership change")
        self.log.info("membership change proposed", change=_describe(cc),
                      member=f"{cc.node_id:x}", term=core.term)
        await self.loop.propose_conf_change(cc)
        return {"member": cc.node_id, "applied": core.applied}

    async def _forward(self, op: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Send ``op`` to the leader and return its result. If the leader changes before
        answering (it died, say — the usual reason to remove a member), wait until this
        member has applied the new leader's first entry: whatever the old leader appended
        is then applied or gone for good, so the outcome is known — the change is there
        (success) or it is not (``NotLeader``: safe to send again, to the new leader)."""
        core = self.core
        leader = core.leader
        if not leader:
            raise NotLeader("etcdserver: no leader")
        before = self._change_state(op, fields)
        rid = next(self._forward_ids)
        waiting = self._forwards[rid] = _Forward(leader)
        try:
            self._send([AppMessage(0, self.member_id, leader, MEMBERSHIP_TAG + cbor2.dumps(
                {"rid": rid, "op": op, "fields": fields}))])
            with trio.move_on_after(FORWARD_TIMEOUT):
                while waiting.answer is None and core.leader in (0, leader):
                    waiting.wake = trio.Event()
                    await waiting.wake.wait()
        finally:
            self._forwards.pop(rid, None)
        answer = waiting.answer
        if answer is None:
            if core.leader in (0, leader):
                raise RequestTimeout(f"the leader {leader:x} did not answer the forwarded "
                                     f"{op} in time; the change may still be applied")
            return await self._settle(op, fields, before)
        if "err" in answer:
            raise _relayed(answer["err"])
        ok: dict[str, Any] = answer["ok"]
        return ok

    def _change_state(self, op: str, fields: dict[str, Any]) -> tuple[int, MemberInfo | None]:
        """The member a change is about, and what this member's table says of it now."""
        if op == "member_add":
            mid = member_id_for(str(fields["name"]), list(fields["peer_urls"]),
                                self.cfg.initial_cluster_token)
        else:
            mid = int(fields["member"])
        return mid, self.table.get(mid)

    async def _settle(self, op: str, fields: dict[str, Any],
                      before: tuple[int, MemberInfo | None]) -> dict[str, Any]:
        core, raft = self.core, self.core.node.raft
        with trio.move_on_after(self.election_timeout) as scope:
            while not (core.leader and raft.committed_in_current_term()
                       and core.applied >= raft.log.committed):
                await self._readied.wait()
        if scope.cancelled_caught:
            raise RequestTimeout(f"the leader changed before answering {op}; no new leader "
                                 "yet, so the change may or may not be applied")
        mid, was = before
        now = self.table.get(mid)
        applied = {
            "member_add": was is None and now is not None,
            "member_remove": was is not None and now is None,
            "member_promote": was is not None and was.is_learner and now is not None
            and not now.is_learner,
        }.get(op, False)
        if applied:
            return {"member": mid, "applied": core.applied}
        if core.is_leader:
            return await self._execute(op, fields)
        raise NotLeader(f"etcdserver: the leader changed to {core.leader:x} before {op} was "
                        "applied; it was not, retry", leader=core.leader)

    def on_app_message(self, msg: AppMessage) -> bool:
        """A forwarded request (we lead, or did) or the answer to one we forwarded; False if
        ``msg`` is not a membership message."""
        if msg.payload[:1] != MEMBERSHIP_TAG:
            return False
        try:
            body = cbor2.loads(msg.payload[1:])
            rid = body["rid"]
        except (ValueError, TypeError, KeyError, EOFError, cbor2.CBORDecodeError):
            self.log.warning("malformed forwarded membership message", peer=f"{msg.src:x}")
            return True
        if "ok" in body or "err" in body:
            waiting = self._forwards.get(rid)
            if waiting is not None:
                waiting.answer = body
                waiting.wake.set()
        elif self._nursery is not None:
            self._nursery.start_soon(self._serve_forwarded, msg.src, body)
        return True

    async def _serve_forwarded(self, src: int, body: dict[str, Any]) -> None:
        answer: dict[str, Any] = {"rid": body["rid"]}
        try:
            op, fields = body.get("op"), body.get("fields")
            if op not in _LEADER_OPS or not isinstance(fields, dict):
                raise ClientError(f"cannot forward {op!r}")
            with trio.move_on_after(FORWARD_TIMEOUT) as scope:
                answer["ok"] = await self._execute(op, fields)
            if scope.cancelled_caught:
                raise RequestTimeout(f"{op} was not applied in time; it may still be")
        except DiscoverdError as e:
            answer["err"] = error_body(e)
        except (KeyError, TypeError, ValueError) as e:
            answer["err"] = {"code": "invalid_argument", "message": f"bad forwarded op: {e}"}
        self._send([AppMessage(0, self.member_id, src, MEMBERSHIP_TAG + cbor2.dumps(answer))])


class _Forward:
    """A request forwarded to ``leader``, until its answer comes (or the leader changes)."""

    __slots__ = ("answer", "leader", "wake")

    def __init__(self, leader: int) -> None:
        self.leader = leader
        self.answer: dict[str, Any] | None = None
        self.wake = trio.Event()


def _describe(cc: ConfChange) -> str:
    return {ConfChangeKind.ADD_VOTER: "add voter", ConfChangeKind.ADD_LEARNER: "add learner",
            ConfChangeKind.REMOVE_NODE: "remove"}[cc.kind]
