"""The deterministic simulator: N Raft members, a faulty network, slow disks, crashes,
restarts, membership changes and clients, all in one thread on one seeded discrete clock.

One seed decides everything (swarm options, network fate, faults, client ops, election
jitter), so a failing seed replays exactly: ``python -m discoverd.testing.sim --seed N --trace``.

A run has two phases (TigerBeetle's VOPR): a *safety* phase with faults, checked after every
event by ``Checker``, then a *liveness* phase: the network heals, crashed members restart,
faults stop, and the cluster must elect a leader and commit a marker entry on every member
within a bound.

The runtime half of the Ready contract is modelled honestly: a Ready's durable part reaches
the member's storage only when its simulated fsync completes; a crash before that loses it.
A leader's ``early_messages`` leave at once (its disk write overlaps replication), everything
else only after the fsync.
"""

from __future__ import annotations

import contextlib
import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from discoverd.consensus.describe import describe_entry, describe_message
from discoverd.consensus.messages import (
    ConfChange,
    ConfChangeKind,
    ConfState,
    Entry,
    EntryKind,
    InstallSnapshot,
    Message,
)
from discoverd.consensus.raft import Config, Role
from discoverd.consensus.rawnode import RawNode, Ready
from discoverd.errors import ClientError, Unavailable
from discoverd.member.core import MemberCore, Reply
from discoverd.storage.disk_storage import DiskStorage
from discoverd.testing.sim.checkers import Checker, SimFailure
from discoverd.testing.sim.network import SimNetwork
from discoverd.testing.sim.options import MS, SimOptions
from discoverd.testing.sim.statemachine import ChainStateMachine
from discoverd.testing.simfs import SimFS

MARKER = b"liveness-marker"


class CheckedStateMachine(ChainStateMachine):
    """The simulator's state machine, reporting every apply and restore to the checker."""

    def __init__(self, sim: Simulator, node: SimNode) -> None:
        super().__init__()
        self.sim = sim
        self.node = node

    def apply(self, e: Entry) -> int:
        self.sim.checker.on_apply(self.node, e)
        result = super().apply(e)
        self.sim.checker.on_applied_digest(self.node)
        if e.kind is EntryKind.CONF_CHANGE:
            self.sim.log(f"n{self.node.id} applied {describe_entry(e)}")
        if e.data == MARKER and self.sim.liveness and not self.sim.marker_index:
            self.sim.marker_index = e.index
        return result

    def restore(self, data: bytes) -> None:
        super().restore(data)
        if self.node.core is not None:  # (a restore at start-up is not news)
            self.sim.checker.on_restore(self.node, self.applied)
            self.sim.log(f"n{self.node.id} restored snapshot at {self.applied}")


MEMBER_DIR = "/data/member"


@dataclass(slots=True)
class SimNode:
    """One simulated member: its disk (a ``SimFS`` that survives crashes) and, while it runs,
    its ``MemberCore`` over a ``DiskStorage`` recovered from that disk."""

    id: int
    fs: SimFS
    bootstrap_voters: tuple[int, ...]
    storage: DiskStorage | None = None
    sm: ChainStateMachine = field(default_factory=ChainStateMachine)
    core: MemberCore | None = None
    incarnation: int = 0
    busy: Ready | None = None
    removed: bool = False
    conf_state: ConfState = field(default_factory=ConfState)  # as of sm.applied; kept when down

    @property
    def alive(self) -> bool:
        return self.core is not None

    @property
    def raw(self) -> RawNode | None:
        return self.core.node if self.core is not None else None



@dataclass(slots=True)
class ClientOp:
    kind: str  # "write" | "read"
    client: int
    node: int
    incarnation: int
    deadline: int
    index: int = 0
    data: bytes = b""


@dataclass(slots=True)
class SimStats:
    events: int = 0
    ticks: int = 0
    crashes: int = 0
    restarts: int = 0
    writes_acked: int = 0
    writes_failed: int = 0
    writes_unknown: int = 0
    reads_ok: int = 0
    reads_failed: int = 0
    conf_changes: int = 0
    torn_tails_repaired: int = 0
    snapshots_sent: int = 0
    leader_elections: int = 0
    sim_time_us: int = 0


@dataclass(slots=True)
class SimResult:
    options: SimOptions
    stats: SimStats
    net: dict[str, int]
    liveness_us: int

    def summary(self) -> str:
        s = self.stats
        return (
            f"seed {self.options.seed}: ok; {s.events} events, "
            f"{s.sim_time_us / 1e6:.1f}s simulated, "
            f"{s.leader_elections} elections, {s.crashes} crashes, "
            f"{self.net['partitions']} partitions, {self.net['lost']} lost, "
            f"{self.net['duplicated']} duplicated, {s.writes_acked} writes acked, "
            f"{s.reads_ok} reads, {s.conf_changes} conf changes, "
            f"{s.snapshots_sent} snapshots sent, {s.torn_tails_repaired} torn WAL tails "
            f"repaired; recovered in {self.liveness_us / 1e3:.0f}ms"
        )


class Simulator:
    def __init__(
        self,
        options: SimOptions,
        *,
        trace: Callable[[str], None] | None = None,
    ) -> None:
        self.o = options
        root = random.Random(options.seed)
        self.net = SimNetwork(
            random.Random(root.getrandbits(64)),
            options.loss,
            options.duplicate,
            options.delay_min_us,
            options.delay_mean_us,
        )
        self.fault_rng = random.Random(root.getrandbits(64))
        self.client_rng = random.Random(root.getrandbits(64))
        self.disk_rng = random.Random(root.getrandbits(64))
        self.node_seed = root.getrandbits(32)
        self.trace = trace
        self.now = 0
        self._seq = 0
        self._events: list[tuple[int, int, str, tuple[Any, ...]]] = []
        self.stats = SimStats()
        self.checker = Checker(self)
        self.nodes: dict[int, SimNode] = {}
        self.ops: dict[int, ClientOp] = {}
        self.leader_guess: dict[int, int] = {}
        self.busy_clients: dict[int, int] = {}
        self.read_min_index: dict[int, int] = {}
        self.next_op = 0
        self.liveness = False
        self.liveness_start = 0
        self.marker_index = 0
        voters = tuple(range(1, options.n_voters + 1))
        self.spares = list(range(options.n_voters + 1, options.n_voters + options.n_spares + 1))
        self.ever_removed: set[int] = set()
        self.parked: set[int] = set()
        self._touched: set[int] = set()
        for i in voters:
            self.nodes[i] = SimNode(i, SimFS(), voters)
            self._start(self.nodes[i])
        for c in range(options.clients + options.readers):
            self._schedule(self.client_rng.randrange(options.op_interval_us), "client", (c,))
        self._schedule(100 * MS, "nemesis", ())
        self._schedule(options.safety_us, "liveness", ())

    # ------------------------------------------------------------------ plumbing

    def log(self, text: str) -> None:
        """Trace one line. Callers building costly text check ``self.trace`` first."""
        if self.trace is not None:
            self.trace(f"{self.now / 1000:10.3f}ms {text}")

    def _schedule(self, delay_us: int, kind: str, args: tuple[Any, ...]) -> None:
        self._seq += 1
        heapq.heappush(self._events, (self.now + max(0, delay_us), self._seq, kind, args))

    def fail(self, message: str) -> SimFailure:
        return SimFailure(
            f"{message}\n  at {self.now / 1000:.3f}ms, {self.o.describe()}\n"
            f"  replay: python -m discoverd.testing.sim --seed {self.o.seed} --trace"
        )

    # ------------------------------------------------------------------ lifecycle

    def _start(self, node: SimNode) -> None:
        node.incarnation += 1
        cfg = Config(
            id=node.id,
            election_ticks=self.o.election_ticks,
            heartbeat_ticks=self.o.heartbeat_ticks,
            max_msg_bytes=self.o.max_msg_bytes,
            max_inflight=self.o.max_inflight,
            pre_vote=self.o.pre_vote,
            check_quorum=self.o.check_quorum,
            voters=node.bootstrap_voters,
        )
        rng = random.Random(self.node_seed * 1_000_003 + node.id * 10_007 + node.incarnation)
        node.core = None
        node.storage = DiskStorage(node.fs, MEMBER_DIR, cluster_id=1, member_id=node.id,
                                   segment_bytes=self.o.wal_segment_bytes,
                                   keep_entries=self.o.keep_after_snapshot)
        if node.storage.torn_tail_bytes:
            self.stats.torn_tails_repaired += 1
            self.log(f"n{node.id} repaired a torn WAL tail ({node.storage.torn_tail_bytes} bytes)")
        node.sm = CheckedStateMachine(self, node)
        node.core = MemberCore(cfg, node.storage, node.sm, rng,
                               snapshot_count=self.o.snapshot_every,
                               snapshot_catchup_entries=self.o.keep_after_snapshot)
        node.busy = None
        self.checker.on_start(node)
        period = int(self.o.tick_us * self.o.clock_rates.get(node.id, 1.0))
        self._schedule(self.fault_rng.randrange(period), "tick", (node.id, node.incarnation))

    def _crash(self, node: SimNode, why: str) -> None:
        self.log(f"n{node.id} CRASH ({why}); unsynced state lost")
        if node.busy is not None and node.storage is not None and self.fault_rng.random() < 0.5:
            # Die in the middle of the Ready's write: its bytes reach the page cache but
            # not the disk, and the power cut may tear the record (recovery must cut it).
            rd = node.busy
            with contextlib.suppress(OSError):
                node.storage.persist(rd.hard_state, rd.entries, rd.snapshot, must_sync=False)
        node.fs.crash(self.fault_rng, tear=self.o.torn_restart)
        if node.storage is not None:
            node.storage.close()
        node.storage = None
        node.core = None
        node.busy = None
        for op_id, op in list(self.ops.items()):
            if op.node == node.id:
                self._finish_op(op_id, "unknown")

    # ------------------------------------------------------------------ main loop

    def run(self) -> SimResult:
        end = self.o.safety_us + self.o.liveness_us
        while self._events:
            t, _, kind, args = heapq.heappop(self._events)
            if t > end:
                break
            self.now = t
            self.stats.events += 1
            getattr(self, f"_on_{kind}")(*args)
            if kind in ("client", "marker", "liveness"):
                self._touched.update(self.nodes)  # these reach any member
            elif kind in ("tick", "persisted", "restart"):
                self._touched.add(args[0])
            elif kind in ("deliver", "snapshot_failed"):
                self._touched.update(args[:2])
            touched = sorted(self._touched)
            self._drain_readys()
            self.checker.after_event(touched)
            if self.liveness and self._liveness_reached():
                self.checker.final()
                self.stats.sim_time_us = self.now
                return SimResult(self.o, self.stats, self._net_stats(),
                                 self.now - self.liveness_start)
        raise self.fail(
            "liveness: the healed cluster did not commit the marker entry on every member "
            f"within {self.o.liveness_us // MS}ms\n  " + self._status_dump()
        )

    def _net_stats(self) -> dict[str, int]:
        s = self.net.stats
        return {"sent": s.sent, "delivered": s.delivered, "lost": s.lost,
                "duplicated": s.duplicated, "blocked": s.blocked, "partitions": s.partitions}

    def _status_dump(self) -> str:
        rows = []
        for nid, n in sorted(self.nodes.items()):
            if n.raw is None:
                rows.append(f"n{nid}: down removed={n.removed}")
            else:
                st = n.raw.status()
                rows.append(
                    f"n{nid}: {st.role.value} term={st.term} lead={st.leader} "
                    f"commit={st.commit} applied={st.applied} last={st.last_index} "
                    f"conf={st.conf_state} busy={n.busy is not None}"
                )
        return "\n  ".join(rows)

    # ------------------------------------------------------------------ events

    def _on_tick(self, nid: int, incarnation: int) -> None:
        node = self.nodes[nid]
        if node.core is None or node.incarnation != incarnation:
            return
        self.stats.ticks += 1
        node.core.tick()
        period = int(self.o.tick_us * self.o.clock_rates.get(nid, 1.0))
        self._schedule(period, "tick", (nid, incarnation))

    def _on_deliver(self, src: int, dst: int, data: bytes) -> None:
        node = self.nodes.get(dst)
        msg = self.net.receive(data)
        if node is None or node.core is None or not self.net.can_deliver(src, dst):
            if isinstance(msg, InstallSnapshot):
                self._report_snapshot_failure(src, dst)
            return
        self.net.stats.delivered += 1
        if self.trace is not None:
            self.log(f"n{dst} <- {describe_message(msg)}")
        node.core.step(msg)

    def _report_snapshot_failure(self, src: int, dst: int) -> None:
        sender = self.nodes.get(src)
        if sender is not None and sender.core is not None:
            sender.core.report_snapshot(dst, ok=False)

    def _on_persisted(self, nid: int, incarnation: int) -> None:
        node = self.nodes[nid]
        if node.core is None or node.incarnation != incarnation or node.busy is None:
            return
        rd, node.busy = node.busy, None
        self._finish_ready(node, rd)

    def _on_restart(self, nid: int) -> None:
        node = self.nodes[nid]
        if node.core is not None or node.removed:
            return
        self.stats.restarts += 1
        self.log(f"n{nid} RESTART")
        self._start(node)

    def _on_heal(self) -> None:
        if self.net.blocked:
            self.log("HEAL network")
        self.net.heal()

    def _on_nemesis(self) -> None:
        if self.liveness:
            return
        r = self.fault_rng
        alive = [n for n in sorted(self.nodes) if self.nodes[n].alive]
        if alive and r.random() < self.o.crash_rate_per_s * 0.1:
            victim = self.nodes[r.choice(alive)]
            self.stats.crashes += 1
            self._crash(victim, "nemesis")
            self._schedule(int(r.expovariate(1 / self.o.restart_mean_us)), "restart",
                           (victim.id,))
        if len(self.nodes) > 1 and r.random() < self.o.partition_rate_per_s * 0.1:
            self.log(self.net.partition(sorted(self.nodes)))
            self._schedule(int(r.expovariate(1 / self.o.partition_mean_us)), "heal", ())
        self._schedule(100 * MS, "nemesis", ())

    def _on_liveness(self) -> None:
        """End of the safety phase: heal everything and demand progress."""
        self.liveness = True
        self.liveness_start = self.now
        self.net.heal()
        self.net.enabled_faults = False
        members = self._current_members()
        self.log(f"LIVENESS phase: faults off, network healed, members {sorted(members)}")
        for nid, node in sorted(self.nodes.items()):
            if nid not in members:
                if node.core is not None:
                    self.log(f"n{nid} parked: not a member of the current configuration")
                    self._crash(node, "not a member")
                if nid not in self.ever_removed:
                    # (a member that was down already is parked too: a membership change
                    # still in flight may yet make it a member)
                    self.parked.add(nid)
                node.removed = True
            elif node.core is None:
                node.removed = False
                self._on_restart(nid)
        self._schedule(0, "marker", ())

    def _current_members(self) -> set[int]:
        """The configuration as of the most advanced applied state among live members."""
        best = max(self.nodes.values(), key=lambda n: (n.sm.applied, -n.id))
        return set(best.conf_state.voters) | set(best.conf_state.learners)

    def _on_marker(self) -> None:
        """Propose the liveness marker at the leader, retrying until it is committed."""
        if self.marker_index:
            return
        for nid, node in sorted(self.nodes.items()):
            if node.core is not None and node.core.is_leader:
                try:
                    node.core.propose(0, MARKER)
                except Unavailable:
                    continue
                self.log(f"n{nid} proposes the liveness marker")
                break
        self._schedule(self.o.election_timeout_us, "marker", ())

    def _liveness_reached(self) -> bool:
        members = self._current_members()
        for nid in sorted(members & self.parked):
            # A membership change still in flight at the start of the liveness phase made
            # it a member after all: it must run to catch up.
            self.parked.discard(nid)
            self.nodes[nid].removed = False
            self._on_restart(nid)
        if not self.marker_index:
            return False
        return all(
            self.nodes[m].sm.applied >= self.marker_index
            for m in members
            if m in self.nodes
        ) and not any(n.busy for n in self.nodes.values() if n.alive)

    # ------------------------------------------------------------------ clients

    def _on_client(self, c: int) -> None:
        r = self.client_rng
        self._schedule(self.o.op_interval_us, "client", (c,))
        op_id = self.busy_clients.get(c)
        if op_id is not None and op_id in self.ops:
            op = self.ops[op_id]
            if self.now < op.deadline:
                return
            self._finish_op(op_id, "unknown" if op.kind == "write" else "failed")
        alive = [n for n in sorted(self.nodes) if self.nodes[n].alive]
        if not alive:
            return
        guess = self.leader_guess.get(c, 0)
        nid = guess if guess in alive else r.choice(alive)
        node = self.nodes[nid]
        assert node.core is not None
        self.next_op += 1
        op_id = self.next_op
        deadline = self.now + self.o.client_timeout_us
        if c < self.o.clients and self.o.membership_changes and not self.liveness \
                and r.random() < 0.03:
            self._propose_conf_change(node, op_id)
            return
        try:
            if c >= self.o.clients or r.random() < self.o.read_fraction:
                self.read_min_index[op_id] = self.checker.max_commit
                node.core.read(op_id)
                self.ops[op_id] = ClientOp("read", c, nid, node.incarnation, deadline)
            else:
                data = f"w:k{r.randrange(5)}={c}.{op_id}".encode()
                node.core.propose(op_id, data)
                self.ops[op_id] = ClientOp("write", c, nid, node.incarnation, deadline, 0, data)
                self.log(f"client {c} proposes {data.decode()} at n{nid}")
            self.busy_clients[c] = op_id
        except Unavailable as e:
            leader = getattr(e, "leader", 0)
            self.leader_guess[c] = leader if leader else r.choice(alive)

    def _propose_conf_change(self, node: SimNode, op_id: int) -> None:
        assert node.core is not None
        if not node.core.is_leader:
            return
        r = self.client_rng
        cs = node.core.node.raft.conf_state
        choices: list[ConfChange] = []
        fresh = [s for s in self.spares if s not in self.nodes]
        if fresh:
            choices.append(ConfChange(ConfChangeKind.ADD_LEARNER, fresh[0]))
        for learner in cs.learners:
            choices.append(ConfChange(ConfChangeKind.ADD_VOTER, learner))
        if len(cs.voters) > 2:
            choices.extend(ConfChange(ConfChangeKind.REMOVE_NODE, v) for v in cs.voters)
        if not choices:
            return
        cc = r.choice(choices)
        try:
            idx = node.core.propose_conf_change(op_id, cc)
        except (Unavailable, ClientError):
            return
        self.stats.conf_changes += 1
        self.log(f"n{node.id} proposes {cc.kind.name} {cc.node_id} at {idx}")
        if cc.kind is ConfChangeKind.ADD_LEARNER and cc.node_id not in self.nodes:
            joiner = SimNode(cc.node_id, SimFS(), ())
            self.nodes[cc.node_id] = joiner
            self._start(joiner)

    def _finish_op(self, op_id: int, outcome: str) -> None:
        op = self.ops.pop(op_id)
        if op.kind == "write":
            if outcome == "ok":
                self.stats.writes_acked += 1
            elif outcome == "failed":
                self.stats.writes_failed += 1
            else:
                self.stats.writes_unknown += 1
        elif outcome == "ok":
            self.stats.reads_ok += 1
        else:
            self.stats.reads_failed += 1

    def _on_reply(self, node: SimNode, reply: Reply) -> None:
        op = self.ops.get(reply.request_id)
        if op is None or op.node != node.id or op.incarnation != node.incarnation:
            return
        if reply.error is not None:
            self._finish_op(reply.request_id, "failed" if op.kind == "read" else "unknown")
            return
        if op.kind == "read":
            self.checker.on_read(node, reply.request_id, int(reply.result))
        else:
            self.checker.on_write_acked(int(reply.result), op.data)
        self.leader_guess[op.client] = node.id
        self._finish_op(reply.request_id, "ok")

    # ------------------------------------------------------------------ Ready handling

    def _drain_readys(self) -> None:
        """Handle the Readys of the members the last event touched (only they can have one:
        a Ready's own effects reach other members as later events)."""
        while self._touched:
            nid = min(self._touched)
            self._touched.discard(nid)
            node = self.nodes[nid]
            while node.core is not None and node.busy is None and node.core.has_ready():
                self._take_ready(node)

    def _take_ready(self, node: SimNode) -> None:
        assert node.core is not None
        rd = node.core.begin()
        if rd.soft_state is not None:
            self.log(f"n{node.id} is now {rd.soft_state.role.value} "
                     f"(term {node.core.term}, leader {rd.soft_state.leader})")
            if rd.soft_state.role is Role.LEADER:
                self.stats.leader_elections += 1
        self.checker.on_early_messages(node, rd)
        for m in rd.early_messages:
            self._send(m)
        for reply in node.core.apply_durable(rd):
            self._on_reply(node, reply)
        durable = rd.entries or rd.hard_state is not None or rd.snapshot is not None
        if durable and self.o.disk_mean_us > 0:
            node.busy = rd
            delay = int(self.disk_rng.expovariate(1 / self.o.disk_mean_us))
            self._schedule(delay, "persisted", (node.id, node.incarnation))
        else:
            self._finish_ready(node, rd)

    def _finish_ready(self, node: SimNode, rd: Ready) -> None:
        core = node.core
        assert core is not None
        if rd.hard_state is not None:
            self.checker.on_persist_hard_state(node, rd.hard_state)
        core.persist(rd)
        done = core.complete(rd)
        node.conf_state = core.conf_state
        if rd.entries or rd.snapshot:
            self.log(f"n{node.id} persisted {len(rd.entries)} entries"
                     + (" + snapshot" if rd.snapshot else ""))
        for m in done.messages:
            self.checker.on_send_after_persist(node, m)
            self._send(m)
        for reply in done.replies:
            self._on_reply(node, reply)
        if done.snapshot is not None:
            assert node.storage is not None
            snap = done.snapshot.make()
            node.storage.write_snapshot(snap)
            core.snapshot_written(snap, done.compact_to)
            self.log(f"n{node.id} snapshot at {snap.meta.index}, "
                     f"log compacted to {done.compact_to}")
        if done.removed:
            node.removed = True
            self.ever_removed.add(node.id)
            self._crash(node, "removed from the cluster")

    def _send(self, m: Message) -> None:
        if isinstance(m, InstallSnapshot):
            self.stats.snapshots_sent += 1
        fates = self.net.route(m)
        if not fates:
            if self.trace is not None:
                self.log(f"   dropped {describe_message(m)}")
            if isinstance(m, InstallSnapshot):
                self._schedule(self.o.delay_mean_us, "snapshot_failed", (m.src, m.dst))
        for delay, data in fates:
            self._schedule(delay, "deliver", (m.src, m.dst, data))

    def _on_snapshot_failed(self, src: int, dst: int) -> None:
        self._report_snapshot_failure(src, dst)


def run_seed(seed: int, *, trace: Callable[[str], None] | None = None) -> SimResult:
    """Run one seed with its swarm options; raises ``SimFailure`` on any violation."""
    return Simulator(SimOptions.swarm(seed), trace=trace).run()
