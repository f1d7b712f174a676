"""The trio half of a member: drives ``MemberCore`` with real time, a real disk and sockets.

Two tasks share the core (trio runs one at a time, so the core needs no lock):

* the *ticker* calls ``core.tick()`` every heartbeat interval;
* the *ready loop* takes a Ready, sends its early messages, applies and answers what is
  already durable here (``MemberCore.apply_durable``), persists it on a worker thread (the
  fsync; a write without one is done inline), completes it (apply the rest), sends the rest,
  answers waiting requests, writes a snapshot when one is due — then looks for the next Ready.

Everything else (peer messages from the transport, client proposals and reads) just steps the
core and wakes the ready loop. While one Ready is being fsynced, new proposals accumulate in
Raft's unstable log and go to disk together in the next one: batching falls out of the
structure rather than from a timer.

**A full disk** (ENOSPC, EDQUOT, EFBIG while *writing* a Ready) does not stop the member. The
storage raises ``WriteNotDone`` only after undoing the partial write, so nothing of that Ready
is on disk, and nothing that depends on it being durable has happened (its messages — votes,
acknowledgements — go out only after ``persist``; the early messages, a leader's appends,
never did depend on it): the loop logs it once, enters the *disk full* state and persists the
same Ready again with backoff until it succeeds. Stepping and ticking the core between
``begin`` and ``complete`` is what the loop does during every fsync anyway (``persist`` runs
on a worker thread), so the ticker keeps running. In that state new proposals and
linearizable reads are refused at once with ``DiskFull`` (they would only wait behind the
stuck Ready); serializable reads go on; requests already waiting stay pending — their outcome
is genuinely unknown. A snapshot file that cannot be written is logged and retried later. A
failed *fsync* still stops the member: after it the WAL cannot know what the page cache kept
(fsyncgate), only a restart that re-reads the disk can.
"""

from __future__ import annotations

import errno
import itertools
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

import structlog
import trio

from discoverd.consensus.messages import ConfChange, Message, Snapshot, SnapshotMeta
from discoverd.consensus.raft import Role
from discoverd.consensus.rawnode import Ready
from discoverd.errors import DiscoverdError, DiskFull, SnapshotTemporarilyUnavailable
from discoverd.member.core import MemberCore, Reply, SnapshotJob
from discoverd.server import snapshot_child
from discoverd.storage.disk_storage import DiskStorage
from discoverd.storage.fs import WriteNotDone
from discoverd.storage.snapshot import BrokenSnapshot

_T = TypeVar("_T")
Sender = Callable[[list[Message]], None]
BlockingRunner = Callable[..., Awaitable[Any]]
"""How the loop runs blocking disk work: ``trio.to_thread.run_sync`` for a real disk; an
inline runner for in-memory storage (tests on virtual time need every step on the clock)."""


async def run_inline(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
"""Write errors that mean "no room": retried until there is, instead of stopping."""

DISK_FULL_RETRY_FIRST = 0.1
DISK_FULL_RETRY_MAX = 2.0
"""Backoff (seconds) between attempts to persist a Ready while the disk is full."""


def _is_space_error(exc: OSError) -> bool:
    return isinstance(exc, WriteNotDone) and exc.errno in SPACE_ERRNOS


class LoopObserver(Protocol):
    """Durations only the loop sees, for histograms (``server/metrics.py``). Counts and
    current values stay plain attributes of ``RaftLoop``, read when metrics are scraped, so
    the loop pays nothing for them."""

    def wal_fsync(self, seconds: float) -> None: ...

    def snapshot_saved(self, seconds: float) -> None: ...

    def snapshot_marshalled(self, seconds: float) -> None: ...


def _read_or_none(read: Callable[[], Snapshot]) -> Snapshot | None:
    try:
        return read()
    except SnapshotTemporarilyUnavailable:
        return None  # the storage logged why; Raft asks again later


def _timed(fn: Callable[..., Any], *args: Any) -> float:
    """Run ``fn`` and return how long it took. Run on the worker thread itself, so that the
    figure is the disk's and not the thread hand-off's."""
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


class RaftLoop:
    def __init__(
        self,
        core: MemberCore,
        send: Sender,
        *,
        tick_seconds: float,
        log: Any = None,
        run_blocking: BlockingRunner = trio.to_thread.run_sync,
        after_ready: Callable[[], None] | None = None,
        observer: LoopObserver | None = None,
        fork_snapshots: bool = False,
        child_closes: Sequence[int] = (),
    ) -> None:
        self.core = core
        self.observer = observer
        self._fork_snapshots = fork_snapshots and snapshot_child.available()
        self._child_closes = tuple(child_closes)
        """Descriptors a snapshot child must close (the data dir's lock)."""
        """Build and write snapshot files in a forked child (``server/snapshot_child.py``):
        for members on a real disk; in-memory ones build on ``run_blocking``."""
        self._after_ready = after_ready
        self._send = send
        self._run_blocking = run_blocking
        self._nursery: trio.Nursery | None = None
        if isinstance(core.storage, DiskStorage):
            core.storage.read_in_background = self.read_in_background
        self.snapshot_reads = 0
        """Snapshot files read on a worker thread to be sent to a follower."""
        self.tick_seconds = tick_seconds
        self.log = log if log is not None else structlog.get_logger("raft")
        self._wakeup = trio.Event()
        self._waiters: dict[int, trio.Event] = {}
        self._replies: dict[int, Reply] = {}
        self._ids = itertools.count(1)
        self.removed = trio.Event()
        self.leader_changes = 0
        """Times a leader was seen that differs from the last one (none counts as one, so
        A, none, A is two): etcd's ``leader_changes_seen_total``."""
        self.proposals_committed = 0
        self.proposals_pending = 0
        """Proposals of this member waiting for their entry to be applied."""
        self.proposals_failed = 0
        """Proposals that were refused (no leader), lost (leader change, snapshot) or given
        up on (timeout, client gone) — never a write the state machine refused."""
        self.read_indexes_failed = 0
        self.fsyncs = 0
        self.fsync_seconds = 0.0
        self.readys = 0
        self.snapshots_saved = 0
        self.disk_full = False
        """True while a Ready cannot be written for lack of space (see the module docs)."""
        self.disk_full_retries = 0
        """Failed attempts to persist a Ready for lack of space, since start."""
        self._snapshot_retry_at = 0.0
        self._snapshot_backoff = DISK_FULL_RETRY_FIRST
        self._snapshot_to_record: tuple[Snapshot, int, int, float, float] | None = None
        """A snapshot whose file is written, waiting for the Ready loop to record it: the
        snapshot (for a forked child's file, its meta only), ``compact_to``, the file's
        size and two durations for the log."""
        self._last_leader = 0
        self._role_changed = trio.Event()

    def __repr__(self) -> str:
        return f"<RaftLoop {self.core!r} waiters={len(self._waiters)}>"

    # ------------------------------------------------------------------ inputs

    def kick(self) -> None:
        self._wakeup.set()

    def on_message(self, msg: Message) -> None:
        """Transport callback: step a peer's message."""
        self.core.step(msg)
        self.kick()

    def on_unreachable(self, peer: int) -> None:
        self.core.report_unreachable(peer)

    def on_snapshot_status(self, peer: int, ok: bool) -> None:
        self.core.report_snapshot(peer, ok)
        self.kick()

    async def propose(self, data: bytes) -> Any:
        """Replicate ``data`` and return the state machine's result for it. Bound the wait
        with a cancel scope; a cancelled write may still be applied later.

        Raises:
            NotLeader: no leader is known (nothing was proposed).
            ProposalDropped: the proposal was lost to a leader change or a snapshot.
            DiskFull: this member's disk is full (nothing was proposed).
        """
        rid = next(self._ids)
        try:
            self._refuse_if_disk_full()
            self.core.propose(rid, data)
        except DiscoverdError:
            self.proposals_failed += 1
            raise
        return await self._wait_proposal(rid)

    async def propose_conf_change(self, cc: ConfChange) -> Any:
        rid = next(self._ids)
        try:
            self._refuse_if_disk_full()
            self.core.propose_conf_change(rid, cc)
        except DiscoverdError:
            self.proposals_failed += 1
            raise
        return await self._wait_proposal(rid)

    async def read_barrier(self) -> int:
        """Wait until a linearizable read may be served locally; returns the read index.

        Raises:
            DiskFull: the Raft round it needs cannot happen until this member's disk has
                room (serializable reads still work).
        """
        rid = next(self._ids)
        try:
            self._refuse_if_disk_full()
            self.core.read(rid)
            return int(await self._wait(rid))
        except BaseException:
            self.read_indexes_failed += 1
            raise

    def _refuse_if_disk_full(self) -> None:
        """Refuse a new request at once while the disk is full: it would only wait behind
        the Ready that cannot be written, and then time out with an unknown outcome."""
        if self.disk_full:
            raise DiskFull()

    async def _wait_proposal(self, rid: int) -> Any:
        self.proposals_pending += 1
        try:
            return await self._wait(rid)
        except BaseException:  # lost, or given up on: a cancel is a failure too, as in etcd
            self.proposals_failed += 1
            raise
        finally:
            self.proposals_pending -= 1

    async def _wait(self, rid: int) -> Any:
        event = self._waiters[rid] = trio.Event()
        self.kick()
        try:
            await event.wait()
        finally:
            self._waiters.pop(rid, None)
            reply = self._replies.pop(rid, None)
            if reply is None:
                self.core.cancel(rid)
        assert reply is not None
        if reply.error is not None:
            raise reply.error
        return reply.result

    async def transfer_leadership(self, target: int) -> None:
        """Ask ``target`` to take over and wait until this member no longer leads (bound it
        with a cancel scope: a transfer gives up after an election timeout)."""
        self.core.transfer_leader(target)
        self.kick()
        while self.core.is_leader:
            await self._role_changed.wait()

    # ------------------------------------------------------------------ tasks

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._ticker)
            nursery.start_soon(self._ready_loop, nursery)
            task_status.started()

    def read_in_background(self, read: Callable[[], Snapshot],
                           done: Callable[[Snapshot | None], None]) -> None:
        """``DiskStorage.read_in_background``: a snapshot file's read (hundreds of MB for a
        large store) on a worker thread, so the loop keeps serving and heartbeating; ``done``
        gets the image here (None if it could not be read), and Raft is woken. Before the
        loop runs, the read happens in place."""
        if self._nursery is None:
            done(_read_or_none(read))
            return
        self._nursery.start_soon(self._read_snapshot, read, done)

    async def _read_snapshot(self, read: Callable[[], Snapshot],
                             done: Callable[[Snapshot | None], None]) -> None:
        started = trio.current_time()
        snap = await self._run_blocking(_read_or_none, read)
        done(snap)
        if snap is not None:
            self.snapshot_reads += 1
            self.log.info("snapshot read to send", index=snap.meta.index, term=self.core.term,
                          bytes=len(snap.data),
                          seconds=round(trio.current_time() - started, 3))
        self.kick()

    async def _ticker(self) -> None:
        next_tick = trio.current_time()
        while True:
            next_tick += self.tick_seconds
            await trio.sleep_until(next_tick)
            now = trio.current_time()
            if now - next_tick > 5 * self.tick_seconds:
                # We were paused (SIGSTOP, a long GC): do not fire a burst of ticks.
                next_tick = now
            self.core.tick()
            self.kick()

    async def _ready_loop(self, nursery: trio.Nursery) -> None:
        core = self.core
        while True:
            if self._snapshot_to_record is not None:
                await self._record_snapshot(*self._snapshot_to_record)
                self._snapshot_to_record = None
            if not core.has_ready():
                self._wakeup = trio.Event()
                if not core.has_ready() and self._snapshot_to_record is None:
                    await self._wakeup.wait()
                continue
            rd = core.begin()
            self.readys += 1
            if rd.early_messages:
                self._send(rd.early_messages)
            applied_before = core.applied
            early = self._applying(core.apply_durable, rd)
            if early:
                # Answers that need not wait for this Ready's fsync (see apply_durable); the
                # watch streams and the lessor hear of the applied entries before any task
                # runs again, as after ``complete``.
                for reply in early:
                    self._deliver(reply)
            if core.applied != applied_before and self._after_ready is not None:
                self._after_ready()
            if rd.entries or rd.hard_state is not None or rd.snapshot is not None:
                seconds = await self._persist(rd)
                if rd.must_sync:
                    self.fsyncs += 1
                    self.fsync_seconds += seconds
                    if self.observer is not None:
                        self.observer.wal_fsync(seconds)
            done = self._applying(core.complete, rd)
            if rd.snapshot is not None:
                self.log.info("snapshot installed from the leader",
                              index=rd.snapshot.meta.index, term=core.term)
            if done.messages:
                self._send(done.messages)
            if done.soft_state is not None:
                self._log_soft_state(done.soft_state.leader, done.soft_state.role)
            for reply in done.replies:
                self._deliver(reply)
            if self._after_ready is not None:
                self._after_ready()
            if done.snapshot is not None:
                self._start_snapshot(nursery, done.snapshot, done.compact_to)
            if done.removed:
                self.log.warning("this member was removed from the cluster; stopping",
                                 term=core.term, index=core.applied)
                self.removed.set()
                return

    def _applying(self, step: Callable[[Ready], _T], rd: Ready) -> _T:
        """Run a step that applies entries; a failure stops the member, saying where."""
        try:
            return step(rd)
        except Exception:
            # A bug, or a disk that lies: the member cannot go on. Say where it stopped.
            core = self.core
            self.log.exception("apply failed; stopping the member", term=core.term,
                               applied=core.applied, index=core.applied + 1)
            raise

    async def _persist(self, rd: Any) -> float:
        """Write ``rd`` (on a worker thread); returns the seconds it took. While the disk is
        full, retry the same Ready with backoff (see the module docstring)."""
        core = self.core
        backoff = DISK_FULL_RETRY_FIRST
        full_since = 0.0
        while True:
            # Without an fsync the write is a short buffered append: cheaper here than the
            # hand-off to a worker thread and back.
            run = self._run_blocking if rd.must_sync else run_inline
            try:
                seconds: float = await run(_timed, core.persist, rd)
            except OSError as exc:
                fields = {"member_id": f"{core.id:x}", "term": core.term,
                          "index": rd.entries[-1].index if rd.entries else core.applied,
                          "errno": errno.errorcode.get(exc.errno or 0, str(exc.errno)),
                          "error": str(exc)}
                if not _is_space_error(exc):
                    # A failed fsync (the WAL refuses writes after it: what the page cache
                    # kept is unknowable), or a write error that is not about space.
                    self.log.critical("writing the WAL failed; stopping the member (restart "
                                      "it to recover from what is on disk)", **fields)
                    raise
                self.disk_full_retries += 1
                if not full_since:
                    full_since = trio.current_time()
                if not self.disk_full:
                    self.disk_full = True
                    self.log.error("disk full: could not write the WAL (nothing was written);"
                                   " refusing new writes and retrying until there is room",
                                   **fields)
                await trio.sleep(backoff)
                backoff = min(2 * backoff, DISK_FULL_RETRY_MAX)
                continue
            if self.disk_full:
                self.disk_full = False
                self.log.warning("disk space is back: the WAL write succeeded; accepting "
                                 "writes again", member_id=f"{core.id:x}", term=core.term,
                                 full_seconds=round(trio.current_time() - full_since, 3))
            return seconds

    def _start_snapshot(self, nursery: trio.Nursery, job: SnapshotJob,
                        compact_to: int) -> None:
        """Take the snapshot ``complete`` found due — now, before anything more is applied:
        fork (the child's memory is the state at its index) or freeze a copy for a worker
        thread — and build and write it in a task of its own: a large image takes seconds,
        and the Ready loop goes on committing meanwhile (only the WAL marker at the end is
        the loop's; see ``_record_snapshot``). After a failure for lack of space, wait
        before the next."""
        if trio.current_time() < self._snapshot_retry_at:
            self.core.snapshot_abandoned()
            return
        storage = self.core.storage
        if self._fork_snapshots:
            try:
                child = snapshot_child.SnapshotChild.fork(
                    job.make, storage.write_snapshot_file, close_fds=self._child_closes)
            except OSError as exc:  # no memory for a fork: build on a thread this time
                self.log.warning("could not fork to write a snapshot; building it here",
                                 error=str(exc), index=job.meta.index)
            else:
                nursery.start_soon(self._write_snapshot, job.meta, child, None, compact_to)
                return
        nursery.start_soon(self._write_snapshot, job.meta, None, job.freeze(), compact_to)

    async def _write_snapshot(self, meta: SnapshotMeta,
                              child: snapshot_child.SnapshotChild | None,
                              build: Callable[[], Snapshot] | None, compact_to: int) -> None:
        core = self.core
        try:
            started = time.perf_counter()
            if child is not None:
                written, marshal_seconds = await child.wait()
                encoded = time.perf_counter()
                if self.observer is not None and marshal_seconds:
                    # Timed in the child (its own metrics die with it).
                    self.observer.snapshot_marshalled(marshal_seconds)
                # The parent never holds the image (the storage reads the file when a
                # follower needs it): check the file, streamed, before it may count.
                size = 0
                if written:
                    try:
                        size = await self._run_blocking(core.storage.verify_snapshot_file,
                                                        meta)
                    except BrokenSnapshot as exc:
                        core.snapshot_abandoned()
                        self.log.error("the snapshot file is broken; not recording it",
                                       index=meta.index, member_id=f"{core.id:x}",
                                       error=str(exc))
                        return
                snap = Snapshot(meta)
            else:
                assert build is not None
                snap = await self._run_blocking(build)
                encoded = time.perf_counter()
                written = await self._run_blocking(core.storage.write_snapshot_file, snap)
                size = len(snap.data)
        except OSError as exc:
            core.snapshot_abandoned()
            self._snapshot_failed(exc, meta.index)
            return
        except BaseException:
            core.snapshot_abandoned()
            raise
        if not written:  # a newer snapshot (the leader's) was installed meanwhile
            core.snapshot_abandoned()
            return
        self._snapshot_to_record = (snap, compact_to, size, encoded - started,
                                    time.perf_counter() - encoded)
        self.kick()

    async def _record_snapshot(self, snap: Snapshot, compact_to: int, size: int,
                               encode_seconds: float, file_seconds: float) -> None:
        """The WAL marker that makes the written file count, between two Readys (both
        append to the WAL); then the log behind the snapshot is compacted."""
        core = self.core
        try:
            seconds: float = await self._run_blocking(_timed, core.storage.record_snapshot,
                                                      snap)
        except OSError as exc:
            core.snapshot_abandoned()
            self._snapshot_failed(exc, snap.meta.index)
            return
        if self._snapshot_backoff != DISK_FULL_RETRY_FIRST:
            self._snapshot_backoff = DISK_FULL_RETRY_FIRST
            self.log.warning("disk space is back: snapshot written", index=snap.meta.index,
                             member_id=f"{core.id:x}")
        core.snapshot_written(snap, compact_to)
        self.snapshots_saved += 1
        if self.observer is not None:
            self.observer.snapshot_saved(file_seconds + seconds)
        self.log.info("snapshot saved", index=snap.meta.index,
                      compacted_to=compact_to, term=core.term, bytes=size,
                      encode_ms=round(encode_seconds * 1000, 3),
                      write_ms=round((file_seconds + seconds) * 1000, 3))

    def _snapshot_failed(self, exc: OSError, index: int) -> None:
        """Without room for a snapshot: log, and let a later Ready try again after a
        backoff. Any other failure stops the member."""
        core = self.core
        fields = {"member_id": f"{core.id:x}", "term": core.term, "index": index,
                  "errno": errno.errorcode.get(exc.errno or 0, str(exc.errno)),
                  "error": str(exc)}
        if not _is_space_error(exc):
            self.log.critical("writing a snapshot failed; stopping the member", **fields)
            raise exc
        if self._snapshot_backoff == DISK_FULL_RETRY_FIRST:
            self.log.error("disk full: could not write a snapshot (nothing was written);"
                           " retrying later", **fields)
        self._snapshot_retry_at = trio.current_time() + self._snapshot_backoff
        self._snapshot_backoff = min(2 * self._snapshot_backoff, DISK_FULL_RETRY_MAX)

    def _deliver(self, reply: Reply) -> None:
        event = self._waiters.get(reply.request_id)
        if event is None:
            return  # its requester gave up
        if reply.error is None:
            self.proposals_committed += 1
        self._replies[reply.request_id] = reply
        event.set()

    def _log_soft_state(self, leader: int, role: Role) -> None:
        previous = self._last_leader
        if leader and leader != previous:
            self.leader_changes += 1
        self._last_leader = leader
        self._role_changed.set()
        self._role_changed = trio.Event()
        self.log.info("raft state", role=role.value, leader=f"{leader:x}",
                      previous_leader=f"{previous:x}", term=self.core.term,
                      commit=self.core.raft_log.committed, applied=self.core.applied)

