"""A data-driven interaction runner for the Raft core (etcd's ``rafttest/interaction_env``).

A script is a text file of commands, each followed by a ``----`` line and the output the
command is expected to print; blocks are separated by blank lines and ``#`` lines are comments
(the etcd ``datadriven`` format)::

    # Node 1 campaigns: a pre-vote round first, then the real election.
    campaign 1
    ----
    ok

    stabilize
    ----
    > 1 handling Ready
    ...

``InteractionEnv`` owns a few ``RawNode``\\ s over ``MemoryStorage`` and a FIFO network between
them, and runs every ``Ready`` exactly as the ``rawnode`` contract says: send the early
messages, persist (snapshot, entries, hard state), send the remaining messages, apply the
committed entries (calling ``apply_conf_change`` for membership changes), ``advance``.
Nothing happens by itself: messages sit in the network until ``deliver-msgs`` or
``stabilize`` hands them over, and time moves only with ``tick*`` commands. Every node draws
its election jitter from ``random.Random(node_id)``, so a script replays exactly.

Commands (one ``handle_*`` method each)::

    add-nodes N [voters=(1,2,3)] [learners=(4)] [index=K] [pre-vote=false]
              [check-quorum=false] [election=10] [heartbeat=1] [max-inflight=256]
              [max-msg-bytes=1048576]
    campaign ID                        propose ID DATA
    propose-conf-change ID add|add-learner|remove NODE
    read-index ID CTX                  transfer-leader FROM TO
    tick ID N                          tick-heartbeat ID          tick-election ID
    process-ready ID...                deliver-msgs [drop=IDS] [ID...]
    stabilize [ID...]                  status ID                  raft-log ID
    compact ID INDEX                   crash ID                   restart ID
    isolate ID                         heal

``add-nodes`` with ``voters``/``learners`` founds a cluster: the core writes that membership
as the first log entries (committed at term 1), and ``add-nodes`` handles that first Ready
itself. Without ``voters``/``learners`` it adds empty members that learn the membership from
a leader (for membership changes). With ``index=K`` the new members instead start from a
snapshot at index K, term 1, holding the membership. Messages to or from an isolated member,
and messages to a crashed one, are dropped when they would be delivered (and printed as
``dropped``). A command that makes the core raise a ``DiscoverdError`` prints the error; a
malformed command raises ``ScriptError``.

The same environment serves as a Python API for tests (``tests/consensus/test_paper.py``):
every command is a typed method (``campaign``, ``stabilize``, …) whose printout collects in
``InteractionEnv.output`` until ``take_output`` is called.

Imports ``discoverd.consensus`` only; never imported by production code.
"""

from __future__ import annotations

import os
import random
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from discoverd.consensus.describe import (
    describe_entries,
    describe_entry,
    describe_hard_state,
    describe_message,
    describe_snapshot,
)
from discoverd.consensus.messages import (
    ConfChange,
    ConfChangeKind,
    ConfState,
    EntryKind,
    HardState,
    Message,
    ReadState,
    Snapshot,
    SnapshotMeta,
)
from discoverd.consensus.raft import Config, Role
from discoverd.consensus.rawnode import RawNode, Ready
from discoverd.consensus.storage import MemoryStorage
from discoverd.errors import DiscoverdError

__all__ = [
    "Block",
    "Command",
    "InteractionEnv",
    "Node",
    "ScriptError",
    "describe_conf_state",
    "describe_ready",
    "parse_command",
    "parse_script",
    "render_script",
    "run_script",
]

REWRITE_ENV_VAR = "DISCOVERD_REWRITE"
"""Set this environment variable to ``1`` to regenerate expectations instead of checking."""

_MAX_STABILIZE_ROUNDS = 10_000


class ScriptError(Exception):
    """The script itself is malformed (unknown command, missing argument, bad syntax)."""


# ----------------------------------------------------------------------------- descriptions


def describe_conf_state(cs: ConfState) -> str:
    learners = f" learners={list(cs.learners)}" if cs.learners else ""
    return f"voters={list(cs.voters)}{learners}"


def describe_ready(rd: Ready) -> list[str]:
    """One line per non-empty field of ``rd``, in the order the runtime handles them.

    Messages are listed in two groups: ``send now`` (``early_messages``, a leader's, which may
    leave before anything is persisted) and ``send after persisting`` (``messages``).
    """
    lines: list[str] = []
    if rd.soft_state is not None:
        lines.append(f"soft state: {rd.soft_state.role.value} leader={rd.soft_state.leader}")
    if rd.hard_state is not None:
        lines.append(f"hard state: {describe_hard_state(rd.hard_state)}")
    if rd.snapshot is not None:
        lines.append(f"snapshot: {describe_snapshot(rd.snapshot)}")
    if rd.entries:
        lines.append(f"entries: {describe_entries(rd.entries)}")
    if rd.committed_entries:
        lines.append(f"committed: {describe_entries(rd.committed_entries)}")
    if rd.early_messages:
        lines.append("send now:")
        lines.extend(f"  {describe_message(m)}" for m in rd.early_messages)
    if rd.messages:
        lines.append("send after persisting:")
        lines.extend(f"  {describe_message(m)}" for m in rd.messages)
    for rs in rd.read_states:
        lines.append(f"read state: index {rs.index} ctx {rs.context.decode('latin-1')}")
    if rd.dropped_reads:
        lines.append(f"dropped reads: {[c.decode('latin-1') for c in rd.dropped_reads]}")
    return lines


# ----------------------------------------------------------------------------- commands


@dataclass(slots=True)
class Command:
    """One parsed command line: ``name pos1 pos2 key=value``."""

    name: str
    args: list[str] = field(default_factory=list)
    kwargs: dict[str, str] = field(default_factory=dict)

    def int_arg(self, i: int) -> int:
        if i >= len(self.args):
            raise ScriptError(f"{self.name}: missing argument {i + 1}")
        return _parse_int(self.args[i], self.name)

    def int_args(self) -> list[int]:
        return [_parse_int(a, self.name) for a in self.args]

    def kw_ids(self, key: str) -> tuple[int, ...]:
        raw = self.kwargs.get(key)
        if raw is None:
            return ()
        inner = raw[1:-1] if raw.startswith("(") and raw.endswith(")") else raw
        return tuple(_parse_int(x, self.name) for x in inner.split(",") if x.strip())

    def kw_int(self, key: str, default: int) -> int:
        raw = self.kwargs.get(key)
        return default if raw is None else _parse_int(raw, self.name)

    def kw_bool(self, key: str, default: bool) -> bool:
        raw = self.kwargs.get(key)
        if raw is None:
            return default
        if raw not in ("true", "false"):
            raise ScriptError(f"{self.name}: {key} must be true or false, got {raw!r}")
        return raw == "true"

    def check_kwargs(self, *allowed: str) -> None:
        unknown = sorted(set(self.kwargs) - set(allowed))
        if unknown:
            raise ScriptError(f"{self.name}: unknown argument(s) {unknown}")


def _parse_int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ScriptError(f"{what}: expected an integer, got {text!r}") from None


def parse_command(line: str) -> Command:
    """Split ``line`` shell-style into a name, positional arguments and ``key=value`` pairs."""
    try:
        tokens = shlex.split(line)
    except ValueError as e:
        raise ScriptError(f"cannot parse {line!r}: {e}") from None
    if not tokens:
        raise ScriptError("empty command")
    cmd = Command(tokens[0])
    for tok in tokens[1:]:
        key, eq, value = tok.partition("=")
        if eq and key and not key[0].isdigit():
            cmd.kwargs[key] = value
        else:
            cmd.args.append(tok)
    return cmd


# ----------------------------------------------------------------------------- the environment


@dataclass(slots=True)
class Node:
    """One member: its durable storage survives ``crash``; ``raw`` is None while it is down."""

    id: int
    config: Config
    storage: MemoryStorage
    raw: RawNode | None
    applied_data: list[bytes] = field(default_factory=list)
    """Data of the normal entries applied since the last (re)start."""
    read_states: list[ReadState] = field(default_factory=list)
    """Every ReadState handed out so far."""
    dropped_reads: list[bytes] = field(default_factory=list)
    """Every read context handed back as dropped so far."""


class InteractionEnv:
    """Members, the network between them, and one method per script command."""

    def __init__(self) -> None:
        self.nodes: dict[int, Node] = {}
        self.network: list[Message] = []
        """Messages sent and not yet delivered, oldest first."""
        self.isolated: set[int] = set()
        self.output: list[str] = []

    @classmethod
    def cluster(cls, n: int, **options: Any) -> InteractionEnv:
        """A fresh environment with a founding cluster of voters ``1..n`` (see ``add_nodes``)."""
        env = cls()
        env.add_nodes(n, voters=tuple(range(1, n + 1)), **options)
        env.output = []
        return env

    def __repr__(self) -> str:
        return (
            f"<InteractionEnv nodes={sorted(self.nodes)} in_flight={len(self.network)} "
            f"isolated={sorted(self.isolated)}>"
        )

    # -- plumbing

    def _emit(self, line: str) -> None:
        self.output.append(line)

    def take_output(self) -> str:
        """The text printed since the last call (``ok`` when nothing was printed)."""
        text = "\n".join(self.output)
        self.output = []
        return text if text.strip() else "ok"

    def raw(self, node_id: int) -> RawNode:
        """The running ``RawNode`` of ``node_id``."""
        node = self.nodes.get(node_id)
        if node is None:
            raise ScriptError(f"no node {node_id}")
        if node.raw is None:
            raise ScriptError(f"node {node_id} is crashed")
        return node.raw

    def handle(self, line: str) -> str:
        """Run one command line; return what it printed."""
        cmd = parse_command(line)
        handler: Callable[[Command], None] | None = getattr(
            self, "handle_" + cmd.name.replace("-", "_"), None
        )
        if handler is None:
            raise ScriptError(f"unknown command {cmd.name!r}")
        try:
            handler(cmd)
        except DiscoverdError as e:
            self._emit(f"error: {type(e).__name__}: {e}")
        return self.take_output()

    # -- building the cluster

    def add_nodes(
        self,
        n: int,
        *,
        voters: tuple[int, ...] = (),
        learners: tuple[int, ...] = (),
        index: int = 0,
        pre_vote: bool = True,
        check_quorum: bool = True,
        election_ticks: int = 10,
        heartbeat_ticks: int = 1,
        max_inflight: int = 256,
        max_msg_bytes: int = 1 << 20,
    ) -> list[int]:
        """Add ``n`` members with the next free ids; returns their ids."""
        first = max(self.nodes, default=0) + 1
        ids = list(range(first, first + n))
        for nid in ids:
            storage = MemoryStorage()
            cfg = Config(
                id=nid, election_ticks=election_ticks, heartbeat_ticks=heartbeat_ticks,
                max_inflight=max_inflight, max_msg_bytes=max_msg_bytes, pre_vote=pre_vote,
                check_quorum=check_quorum, voters=voters, learners=learners,
            )
            if index:
                cs = ConfState(tuple(sorted(voters)), tuple(sorted(learners)))
                storage.apply_snapshot(Snapshot(SnapshotMeta(index, 1, cs)))
                storage.set_hard_state(HardState(term=1, commit=index))
            node = Node(nid, cfg, storage, None)
            self.nodes[nid] = node
            self._start(node)
            # A founding member's first Ready holds the bootstrap membership entries (term 1,
            # committed). Handle it here, quietly, so every script starts from a settled
            # cluster; the node line below shows the result.
            if not index and (voters or learners):
                mark = len(self.output)
                while self.process_ready(nid):  # several Readys if max_msg_bytes is tiny
                    pass
                del self.output[mark:]
            self._emit(self._describe_node(nid))
        return ids

    def _start(self, node: Node) -> None:
        node.raw = RawNode(node.config, node.storage, random.Random(node.id))
        node.applied_data = []

    def _describe_node(self, node_id: int) -> str:
        r = self.raw(node_id).raft
        return (
            f"{node_id}: {r.role.value} term={r.term} first={r.log.first_index()} "
            f"last={r.log.last_index()} commit={r.log.committed} applied={r.log.applied} "
            f"{describe_conf_state(r.conf_state)}"
        )

    def handle_add_nodes(self, cmd: Command) -> None:
        cmd.check_kwargs("voters", "learners", "index", "pre-vote", "check-quorum",
                         "election", "heartbeat", "max-inflight", "max-msg-bytes")
        self.add_nodes(
            cmd.int_arg(0), voters=cmd.kw_ids("voters"), learners=cmd.kw_ids("learners"),
            index=cmd.kw_int("index", 0), pre_vote=cmd.kw_bool("pre-vote", True),
            check_quorum=cmd.kw_bool("check-quorum", True),
            election_ticks=cmd.kw_int("election", 10),
            heartbeat_ticks=cmd.kw_int("heartbeat", 1),
            max_inflight=cmd.kw_int("max-inflight", 256),
            max_msg_bytes=cmd.kw_int("max-msg-bytes", 1 << 20),
        )

    # -- local requests

    def campaign(self, node_id: int) -> None:
        self.raw(node_id).campaign()

    def handle_campaign(self, cmd: Command) -> None:
        self.campaign(cmd.int_arg(0))

    def propose(self, node_id: int, data: bytes) -> int:
        return self.raw(node_id).propose(data)

    def handle_propose(self, cmd: Command) -> None:
        if len(cmd.args) < 2:
            raise ScriptError("propose: usage: propose ID DATA")
        self.propose(cmd.int_arg(0), cmd.args[1].encode())

    _CONF_KINDS = {
        "add": ConfChangeKind.ADD_VOTER,
        "add-learner": ConfChangeKind.ADD_LEARNER,
        "remove": ConfChangeKind.REMOVE_NODE,
    }

    def propose_conf_change(self, node_id: int, kind: ConfChangeKind, target: int) -> int:
        return self.raw(node_id).propose_conf_change(ConfChange(kind, target))

    def handle_propose_conf_change(self, cmd: Command) -> None:
        if len(cmd.args) != 3 or cmd.args[1] not in self._CONF_KINDS:
            raise ScriptError("propose-conf-change: usage: ID add|add-learner|remove NODE")
        self.propose_conf_change(cmd.int_arg(0), self._CONF_KINDS[cmd.args[1]], cmd.int_arg(2))

    def read_index(self, node_id: int, context: bytes) -> None:
        self.raw(node_id).read_index(context)

    def handle_read_index(self, cmd: Command) -> None:
        if len(cmd.args) != 2:
            raise ScriptError("read-index: usage: read-index ID CTX")
        self.read_index(cmd.int_arg(0), cmd.args[1].encode())

    def transfer_leader(self, src: int, dst: int) -> None:
        self.raw(src).transfer_leader(dst)

    def handle_transfer_leader(self, cmd: Command) -> None:
        self.transfer_leader(cmd.int_arg(0), cmd.int_arg(1))

    # -- time

    def tick(self, node_id: int, n: int) -> None:
        raw = self.raw(node_id)
        for _ in range(n):
            raw.tick()

    def handle_tick(self, cmd: Command) -> None:
        self.tick(cmd.int_arg(0), cmd.int_arg(1))

    def tick_heartbeat(self, node_id: int) -> None:
        """One heartbeat interval."""
        self.tick(node_id, self.raw(node_id).raft.cfg.heartbeat_ticks)

    def handle_tick_heartbeat(self, cmd: Command) -> None:
        self.tick_heartbeat(cmd.int_arg(0))

    def tick_election(self, node_id: int) -> int:
        """Tick until the election timer fires once; returns the number of ticks.

        A follower or candidate ticks up to its randomized timeout (it campaigns); a leader
        ticks one plain election timeout (its check-quorum round and transfer deadline).
        """
        r = self.raw(node_id).raft
        if r.role is Role.LEADER:
            n = r.cfg.election_ticks - r.election_elapsed
        else:
            n = r.randomized_election_timeout - r.election_elapsed
        n = max(n, 1)
        self.tick(node_id, n)
        return n

    def handle_tick_election(self, cmd: Command) -> None:
        n = self.tick_election(cmd.int_arg(0))
        self._emit(f"ticked {n}")

    # -- Ready handling and the network

    def process_ready(self, node_id: int) -> bool:
        """Handle one Ready of ``node_id`` per the contract; False if it had none."""
        node = self.nodes[node_id]
        raw = self.raw(node_id)
        if not raw.has_ready():
            return False
        rd = raw.ready()
        self._emit(f"> {node_id} handling Ready" + (" (must sync)" if rd.must_sync else ""))
        self.output.extend(f"  {line}" for line in describe_ready(rd))
        # 1. a leader's messages may leave at once
        self.network.extend(rd.early_messages)
        # 2. persist: snapshot, entries, hard state
        if rd.snapshot is not None:
            node.storage.apply_snapshot(rd.snapshot)
        node.storage.append(rd.entries)
        if rd.hard_state is not None:
            node.storage.set_hard_state(rd.hard_state)
        # 3. what depends on the persisted state
        self.network.extend(rd.messages)
        # 4. apply
        if rd.snapshot is not None:
            node.applied_data = [rd.snapshot.data] if rd.snapshot.data else []
        for e in rd.committed_entries:
            if e.kind is EntryKind.CONF_CHANGE:
                cc = ConfChange.decode(e.data)
                cs = raw.apply_conf_change(cc)
                self._emit(f"  applied {describe_entry(e)}: {describe_conf_state(cs)}")
            elif e.data:
                node.applied_data.append(e.data)
        node.read_states.extend(rd.read_states)
        node.dropped_reads.extend(rd.dropped_reads)
        # 5.
        raw.advance(rd)
        return True

    def handle_process_ready(self, cmd: Command) -> None:
        ids = cmd.int_args() or sorted(self._live())
        for nid in ids:
            if not self.process_ready(nid):
                self._emit(f"> {nid} has no Ready")

    def _live(self) -> list[int]:
        return [nid for nid, n in sorted(self.nodes.items()) if n.raw is not None]

    def _deliverable(self, m: Message) -> bool:
        node = self.nodes.get(m.dst)
        return (
            node is not None
            and node.raw is not None
            and m.src not in self.isolated
            and m.dst not in self.isolated
        )

    def deliver(self, node_id: int) -> int:
        """Step every in-flight message addressed to ``node_id``; returns how many."""
        mine = [m for m in self.network if m.dst == node_id]
        if not mine:
            return 0
        self.network = [m for m in self.network if m.dst != node_id]
        self._emit(f"> {node_id} receiving messages")
        for m in mine:
            if self._deliverable(m):
                self._emit(f"  {describe_message(m)}")
                self.raw(node_id).step(m)
            else:
                self._emit(f"  {describe_message(m)} (dropped)")
        return len(mine)

    def drop(self, node_ids: Iterable[int]) -> int:
        """Lose every in-flight message addressed to ``node_ids``; returns how many."""
        targets = set(node_ids)
        lost = [m for m in self.network if m.dst in targets]
        self.network = [m for m in self.network if m.dst not in targets]
        for m in lost:
            self._emit(f"dropped: {describe_message(m)}")
        return len(lost)

    def handle_deliver_msgs(self, cmd: Command) -> None:
        cmd.check_kwargs("drop")
        self.drop(cmd.kw_ids("drop"))
        for nid in cmd.int_args():
            self.deliver(nid)

    def stabilize(self, node_ids: Iterable[int] = ()) -> None:
        """Process Readys and deliver messages among ``node_ids`` (default all) until quiet."""
        only = set(node_ids)
        for _ in range(_MAX_STABILIZE_ROUNDS):
            busy = False
            for nid in self._live():
                if (not only or nid in only) and self.process_ready(nid):
                    busy = True
            for dst in sorted({m.dst for m in self.network}):
                if (not only or dst in only) and self.deliver(dst):
                    busy = True
            if not busy:
                return
        raise AssertionError(f"stabilize did not settle in {_MAX_STABILIZE_ROUNDS} rounds")

    def handle_stabilize(self, cmd: Command) -> None:
        self.stabilize(cmd.int_args())

    # -- conveniences for tests written in Python

    def elect(self, node_id: int) -> None:
        """Campaign on ``node_id`` and stabilize; raise AssertionError unless it wins."""
        self.campaign(node_id)
        self.stabilize()
        role = self.raw(node_id).raft.role
        if role is not Role.LEADER:
            raise AssertionError(f"node {node_id} did not win its election ({role.value})")

    def relay(self, *node_ids: int) -> None:
        """For each of ``node_ids`` in turn: deliver its messages, then handle its Ready."""
        for nid in node_ids:
            self.deliver(nid)
            self.process_ready(nid)

    def leaders(self) -> list[int]:
        """The running nodes that currently believe they are the leader."""
        return [nid for nid in self._live() if self.raw(nid).raft.role is Role.LEADER]

    def sent_by(self, node_id: int) -> list[Message]:
        """Take ``node_id``'s in-flight messages out of the network and return them."""
        mine = [m for m in self.network if m.src == node_id]
        self.network = [m for m in self.network if m.src != node_id]
        return mine

    # -- inspection

    def status(self, node_id: int) -> list[str]:
        raw = self.raw(node_id)
        st = raw.status()
        lines = [
            f"{node_id}: {st.role.value} term={st.term} vote={st.vote} leader={st.leader} "
            f"last={st.last_index} commit={st.commit} applied={st.applied}",
            f"  {describe_conf_state(st.conf_state)}",
        ]
        if st.lead_transferee:
            lines.append(f"  transferring leadership to {st.lead_transferee}")
        for pid, pr in sorted(raw.raft.prs.items()) if st.role is Role.LEADER else ():
            kind = "learner" if pr.is_learner else "voter"
            flags = (" paused" if pr.is_paused() and pid != node_id else "") + (
                f" pending-snapshot={pr.pending_snapshot}" if pr.pending_snapshot else ""
            )
            lines.append(
                f"  {pid}: {kind} {pr.state.value} match={pr.match} next={pr.next} "
                f"inflight={len(pr.inflights)}{flags}"
            )
        return lines

    def handle_status(self, cmd: Command) -> None:
        for nid in cmd.int_args():
            self.output.extend(self.status(nid))

    def raft_log(self, node_id: int) -> list[str]:
        """The log as the node sees it; entries not yet persisted are marked ``(unstable)``."""
        log = self.raw(node_id).raft.log
        first, last = log.first_index(), log.last_index()
        lines = []
        if first > 1:
            lines.append(f"compacted through {log.term(first - 1)}/{first - 1}")
        stable_to = log.stable_index()
        for e in log.slice(first, last + 1):
            mark = " (unstable)" if e.index > stable_to else ""
            lines.append(describe_entry(e) + mark)
        if first > last:
            lines.append("(no entries)")
        return lines

    def handle_raft_log(self, cmd: Command) -> None:
        self.output.extend(self.raft_log(cmd.int_arg(0)))

    # -- storage and faults

    def compact(self, node_id: int, index: int) -> None:
        """Snapshot the node's applied state at ``index`` and drop the log through it."""
        node = self.nodes[node_id]
        r = self.raw(node_id).raft
        if index > r.log.applied:
            raise ScriptError(f"compact: {index} is past node {node_id}'s applied index")
        node.storage.create_snapshot(index, r.conf_state, b"")
        node.storage.compact(index)
        self._emit(f"{node_id}: log now starts at {node.storage.first_index()}")

    def handle_compact(self, cmd: Command) -> None:
        self.compact(cmd.int_arg(0), cmd.int_arg(1))

    def crash(self, node_id: int) -> None:
        """Stop the node: its unpersisted state is lost, messages to it are dropped."""
        self.raw(node_id)
        self.nodes[node_id].raw = None

    def handle_crash(self, cmd: Command) -> None:
        self.crash(cmd.int_arg(0))

    def restart(self, node_id: int) -> None:
        """Start the node again from what its storage holds."""
        node = self.nodes.get(node_id)
        if node is None or node.raw is not None:
            raise ScriptError(f"restart: node {node_id} is not crashed")
        self._start(node)
        self._emit(self._describe_node(node_id))

    def handle_restart(self, cmd: Command) -> None:
        self.restart(cmd.int_arg(0))

    def isolate(self, node_id: int) -> None:
        self.isolated.add(node_id)

    def handle_isolate(self, cmd: Command) -> None:
        self.isolate(cmd.int_arg(0))

    def heal(self) -> None:
        self.isolated.clear()

    def handle_heal(self, cmd: Command) -> None:
        self.heal()


# ----------------------------------------------------------------------------- scripts


@dataclass(slots=True)
class Block:
    """A command with the comment/blank lines above it and its expected output."""

    preamble: list[str]
    command: str
    expected: list[str]
    line: int


def parse_script(text: str) -> tuple[list[Block], list[str]]:
    """Split a script into blocks plus any trailing comment lines."""
    lines = text.splitlines()
    blocks: list[Block] = []
    pre: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.startswith("#"):
            pre.append(line)
            i += 1
            continue
        lineno = i + 1
        i += 1
        if i >= len(lines) or lines[i] != "----":
            raise ScriptError(f"line {lineno}: expected '----' after {line!r}")
        i += 1
        expected: list[str] = []
        while i < len(lines) and lines[i] != "":
            expected.append(lines[i])
            i += 1
        blocks.append(Block(pre, line, expected, lineno))
        pre = []
    return blocks, pre


def render_script(blocks: list[Block], trailing: list[str], outputs: list[str]) -> str:
    out: list[str] = []
    for block, output in zip(blocks, outputs, strict=True):
        out.extend(block.preamble)
        out.append(block.command)
        out.append("----")
        out.extend(output.splitlines())
    out.extend(trailing)
    return "\n".join(out) + "\n"


def run_script(path: Path, *, rewrite: bool | None = None) -> tuple[str, str]:
    """Run the script at ``path`` in a fresh environment.

    Returns ``(expected, actual)``: the file as it is and as it would be with every output
    replaced by what the commands printed now. With ``rewrite`` (default: the environment
    variable ``DISCOVERD_REWRITE=1``) the file is overwritten with the actual text.
    """
    if rewrite is None:
        rewrite = os.environ.get(REWRITE_ENV_VAR) == "1"
    text = path.read_text()
    blocks, trailing = parse_script(text)
    env = InteractionEnv()
    outputs = []
    for block in blocks:
        try:
            outputs.append(env.handle(block.command))
        except ScriptError as e:
            raise ScriptError(f"{path.name}:{block.line}: {e}") from None
    actual = render_script(blocks, trailing, outputs)
    if rewrite and actual != text:
        path.write_text(actual)
    return text, actual
