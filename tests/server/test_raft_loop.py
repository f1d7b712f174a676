"""RaftLoop, the trio shell around MemberCore, on virtual time (trio's MockClock with autojump):
elections, proposals, reads and leader loss, with members wired by direct calls instead of
sockets so that only the loop's own scheduling is under test."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from discoverd.consensus.messages import Message, Snapshot
from discoverd.consensus.raft import Config
from discoverd.consensus.storage import MemoryStorage
from discoverd.member.core import MemberCore, MemberStorage
from discoverd.server.raft_loop import RaftLoop, run_inline
from discoverd.storage.disk_storage import DiskStorage
from discoverd.storage.fs import OsFS
from discoverd.storage.wal import SnapshotMarker
from discoverd.testing.register import RegisterMachine, encode_put

TICK = 0.1
ELECTION_TICKS = 10


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


class LoopCluster:
    def __init__(self, size: int, *,
                 storage: Callable[[int], MemberStorage] = lambda i: MemoryStorage(),
                 snapshot_count: int = 10_000, tick: float = TICK,
                 **loop_settings: Any) -> None:
        """``size`` members, in memory by default; ``loop_settings`` go to ``RaftLoop``
        (a member on a real disk wants ``run_blocking`` on a thread, and forks)."""
        ids = tuple(range(1, size + 1))
        self.down: set[int] = set()
        self.loops: dict[int, RaftLoop] = {}
        for i in ids:
            core = MemberCore(
                Config(id=i, voters=ids, election_ticks=ELECTION_TICKS), storage(i),
                RegisterMachine(), random.Random(i), snapshot_count=snapshot_count,
                snapshot_catchup_entries=2,
            )
            self.loops[i] = RaftLoop(core, self._sender(i), tick_seconds=tick,
                                     **{"run_blocking": run_inline, **loop_settings})

    def _sender(self, src: int):  # type: ignore[no-untyped-def]
        def send(messages: list[Message]) -> None:
            for m in messages:
                if src not in self.down and m.dst not in self.down:
                    self.loops[m.dst].on_message(m)
        return send

    async def start(self, nursery: trio.Nursery) -> None:
        for loop in self.loops.values():
            await nursery.start(loop.run)

    async def wait_leader(self) -> RaftLoop:
        while True:
            leaders = [lp for i, lp in self.loops.items()
                       if lp.core.is_leader and i not in self.down]
            if len(leaders) == 1:
                return leaders[0]
            await trio.sleep(TICK)


async def test_single_member_elects_itself_and_serves(
    autojump_clock: trio.testing.MockClock,
) -> None:
    c = LoopCluster(1)
    async with trio.open_nursery() as nursery:
        await c.start(nursery)
        with trio.fail_after(2 * ELECTION_TICKS * TICK + 1):
            loop = await c.wait_leader()
        index = await loop.propose(encode_put(b"k", b"v"))
        assert index == loop.core.applied
        assert await loop.read_barrier() >= index
        assert isinstance(loop.core.sm, RegisterMachine)
        assert loop.core.sm.get(b"k") == b"v"
        nursery.cancel_scope.cancel()


async def test_three_members_replicate_and_followers_forward(
    autojump_clock: trio.testing.MockClock,
) -> None:
    c = LoopCluster(3)
    async with trio.open_nursery() as nursery:
        await c.start(nursery)
        with trio.fail_after(10):
            leader = await c.wait_leader()
        follower = next(lp for lp in c.loops.values() if lp is not leader)
        with trio.fail_after(5):
            index = await follower.propose(encode_put(b"from-follower", b"1"))
            await follower.read_barrier()
        assert index > 0
        for lp in c.loops.values():
            with trio.fail_after(5):
                await lp.read_barrier()  # a read barrier on each member waits for its apply
            assert lp.core.applied >= index
            assert isinstance(lp.core.sm, RegisterMachine)
            assert lp.core.sm.get(b"from-follower") == b"1"
        nursery.cancel_scope.cancel()


async def test_losing_the_leader_elects_another_within_bounded_virtual_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    c = LoopCluster(3)
    async with trio.open_nursery() as nursery:
        await c.start(nursery)
        with trio.fail_after(10):
            old = await c.wait_leader()
        committed = await old.propose(encode_put(b"before", b"x"))
        old_id = old.core.id
        c.down.add(old_id)
        started = trio.current_time()
        with trio.fail_after(10 * ELECTION_TICKS * TICK):
            new = await c.wait_leader()
        assert new.core.id != old_id
        assert trio.current_time() - started <= 4 * ELECTION_TICKS * TICK
        assert await new.propose(encode_put(b"after", b"y")) > committed
        assert isinstance(new.core.sm, RegisterMachine)
        assert new.core.sm.get(b"before") == b"x"
        # Each survivor saw the first leader, then none (the election), then the new one:
        # two changes, as etcd counts them.
        assert [lp.leader_changes for i, lp in c.loops.items() if i != old_id] == [2, 2]
        nursery.cancel_scope.cancel()


async def test_a_cancelled_request_leaves_no_waiter(autojump_clock: trio.testing.MockClock) -> None:
    c = LoopCluster(3)
    async with trio.open_nursery() as nursery:
        await c.start(nursery)
        with trio.fail_after(10):
            leader = await c.wait_leader()
        c.down.update(i for i in c.loops if i != leader.core.id)  # no quorum: cannot commit
        with trio.move_on_after(1.0) as scope:
            await leader.propose(encode_put(b"k", b"v"))
        assert scope.cancelled_caught
        assert leader._waiters == {}
        assert (leader.proposals_failed, leader.proposals_pending) == (1, 0)
        nursery.cancel_scope.cancel()


class SlowSnapshotMachine(RegisterMachine):
    """Its snapshot builder blocks (on the worker thread) until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.builds = 0

    def snapshot_builder(self) -> Callable[[], bytes]:
        self.builds += 1
        frozen = super().snapshot_builder()

        def build() -> bytes:
            self.release.wait(timeout=30)
            return frozen()

        return build


async def test_writes_commit_while_a_snapshot_is_being_built_and_written() -> None:
    """The snapshot is built and written off the Ready loop: proposals keep committing while
    its builder is stuck, no second snapshot starts meanwhile, and it lands afterwards."""
    machine = SlowSnapshotMachine()
    core = MemberCore(Config(id=1, voters=(1,), election_ticks=ELECTION_TICKS),
                      MemoryStorage(), machine, random.Random(1), snapshot_count=3)
    loop = RaftLoop(core, lambda msgs: None, tick_seconds=TICK,
                    run_blocking=trio.to_thread.run_sync)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(loop.run)
            while not core.is_leader:  # noqa: ASYNC110 - a single voter elects itself soon
                await trio.sleep(TICK)
            for i in range(3):
                await loop.propose(encode_put(b"k%d" % i, b"v"))
            while machine.builds == 0:  # noqa: ASYNC110 - started by the Ready after apply
                await trio.sleep(0.01)
            for i in range(3, 30):  # would hang here if the loop waited for the snapshot
                await loop.propose(encode_put(b"k%d" % i, b"v"))
            assert machine.builds == 1
            assert loop.snapshots_saved == 0
            machine.release.set()
            while loop.snapshots_saved == 0:  # noqa: ASYNC110 - the worker thread finishes
                await trio.sleep(0.01)
            assert core.snapshot_index >= 3
            assert not core.snapshot_in_flight
            await loop.propose(encode_put(b"after", b"v"))  # due again: a second one goes
            while machine.builds < 2:  # noqa: ASYNC110
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    restored = RegisterMachine()
    restored.restore(core.storage.snapshot().data)
    assert restored.get(b"k0") == b"v"


# ------------------------------------------------------------ members on a real disk, forking

DISK_TICK = 0.02
"""Real time (the snapshot child is a real process): elections within a fraction of a
second."""


def _disk(root: Path, i: int) -> DiskStorage:
    return DiskStorage(OsFS(), str(root / f"m{i}" / "member"), cluster_id=1, member_id=i,
                       keep_entries=2)


async def _until(cond: Callable[[], object]) -> None:
    """Poll state the loops' own tasks change; the caller's ``fail_after`` bounds it."""
    while not cond():  # noqa: ASYNC110 - no event to wait on
        await trio.sleep(0.01)


async def test_a_lagging_follower_catches_up_from_the_file_a_snapshot_child_wrote(
    tmp_path: Path,
) -> None:
    """The leader holds no image in memory: the snapshot a forked child wrote is read from
    its file, on a worker thread, when a follower behind the compacted log needs it, and the
    follower catches up."""
    c = LoopCluster(3, storage=lambda i: _disk(tmp_path, i), snapshot_count=4,
                    tick=DISK_TICK, run_blocking=trio.to_thread.run_sync, fork_snapshots=True)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await c.start(nursery)
            leader = await c.wait_leader()
            late = next(lp for lp in c.loops.values() if lp is not leader)
            c.down.add(late.core.id)
            i = 0
            while leader.core.raft_log.first_index() <= late.core.applied + 1 or i < 12:
                await leader.propose(encode_put(b"k%d" % i, b"v"))
                i += 1
            await _until(lambda: not leader.core.snapshot_in_flight)
            storage = leader.core.storage
            assert isinstance(storage, DiskStorage)
            assert leader.snapshots_saved >= 1
            assert storage._mem.snapshot() == Snapshot(storage._mem.snapshot().meta), (
                "the leader keeps the meta only")
            c.down.clear()
            await _until(lambda: late.core.applied >= leader.core.applied)
            assert late.core.snapshot_index > 0, "it caught up through a snapshot"
            assert leader.snapshot_reads >= 1, "read from its file on a worker thread"
            assert isinstance(late.core.sm, RegisterMachine)
            assert late.core.sm.get(b"k%d" % (i - 1)) == b"v"
            nursery.cancel_scope.cancel()


class _Recorder:
    """A stand-in for the loop's structlog logger that keeps what was logged."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def __getattr__(self, level: str) -> Callable[..., None]:
        def record(event: str, *args: object, **fields: object) -> None:
            self.events.append((level, event))
        return record


class _CorruptingDisk(DiskStorage):
    """Its snapshot files come out damaged while ``flag`` exists (the write runs in the
    forked child, so a file is what tells it)."""

    flag: Path

    def write_snapshot_file(self, snap: Snapshot) -> bool:
        written = super().write_snapshot_file(snap)
        if written and self.flag.exists():
            path = self._snaps.path(SnapshotMarker(index=snap.meta.index, term=snap.meta.term))
            with open(path, "r+b") as f:
                f.seek(-1, 2)
                last = f.read(1)
                f.seek(-1, 2)
                f.write(bytes([last[0] ^ 0xFF]))
        return written


async def test_a_broken_file_from_the_snapshot_child_is_not_recorded(tmp_path: Path) -> None:
    member_dir = tmp_path / "member"
    storage = _CorruptingDisk(OsFS(), str(member_dir), cluster_id=1, member_id=1,
                              keep_entries=2)
    storage.flag = tmp_path / "corrupt"
    storage.flag.touch()
    log = _Recorder()
    core = MemberCore(Config(id=1, voters=(1,), election_ticks=ELECTION_TICKS), storage,
                      RegisterMachine(), random.Random(1), snapshot_count=4,
                      snapshot_catchup_entries=2)
    loop = RaftLoop(core, lambda msgs: None, tick_seconds=DISK_TICK, log=log,
                    run_blocking=trio.to_thread.run_sync, fork_snapshots=True)
    broken = ("error", "the snapshot file is broken; not recording it")
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(loop.run)
            await _until(lambda: core.is_leader)
            i = 0
            while broken not in log.events:
                await loop.propose(encode_put(b"k%d" % i, b"v"))
                i += 1
                await _until(lambda: not core.snapshot_in_flight)
            assert loop.snapshots_saved == 0
            assert core.snapshot_index == 0
            assert storage.snapshot() == Snapshot(), "nothing recorded"
            assert list((member_dir / "snap").iterdir()) == [], "and the file is gone"
            storage.flag.unlink()
            while loop.snapshots_saved == 0:  # the member goes on, and the next one counts
                await loop.propose(encode_put(b"k%d" % i, b"v"))
                i += 1
                await _until(lambda: not core.snapshot_in_flight)
            nursery.cancel_scope.cancel()
    storage.close()
    again = DiskStorage(OsFS(), str(member_dir), cluster_id=1, member_id=1, keep_entries=2)
    assert again.snapshot().meta.index == core.snapshot_index > 0
    restored = RegisterMachine()
    restored.restore(again.snapshot().data)
    assert restored.get(b"k0") == b"v"
