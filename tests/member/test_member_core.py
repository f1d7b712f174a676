"""MemberCore: request bookkeeping over a real RawNode, driven by hand (no trio, no sim)."""

from __future__ import annotations

import itertools
import posixpath
import random
from collections.abc import Callable

import pytest

from discoverd.consensus.messages import (
    ConfChange,
    ConfChangeKind,
    Entry,
    InstallSnapshot,
    Message,
)
from discoverd.consensus.raft import Config
from discoverd.consensus.storage import MemoryStorage, catch_up_start
from discoverd.errors import NotLeader
from discoverd.member.core import (
    Completion,
    MemberCore,
    MemberStorage,
    Reply,
    snapshot_window_crossed,
)
from discoverd.storage.disk_storage import DiskStorage
from discoverd.testing.register import RegisterMachine, encode_put
from discoverd.testing.simfs import SimFS


class Trio:
    """Three MemberCores on a synchronous in-memory network (``down`` members neither send
    nor receive)."""

    def __init__(self, *, snapshot_count: int = 10_000,
                 storage: Callable[[int], MemberStorage] = lambda i: MemoryStorage(),
                 snapshot_bytes: int | None = None, catchup_entries: int = 2,
                 catchup_bytes: int | None = None) -> None:
        self.cores = {
            i: MemberCore(Config(id=i, voters=(1, 2, 3)), storage(i), RegisterMachine(),
                          random.Random(i), snapshot_count=snapshot_count,
                          snapshot_catchup_entries=catchup_entries,
                          snapshot_bytes=snapshot_bytes, snapshot_catchup_bytes=catchup_bytes)
            for i in (1, 2, 3)
        }
        self.replies: dict[int, list[Reply]] = {i: [] for i in self.cores}
        self.completions: dict[int, list[Completion]] = {i: [] for i in self.cores}
        self.down: set[int] = set()
        self.sent: list[Message] = []

    def pump(self, rounds: int = 50) -> None:
        for _ in range(rounds):
            inflight: list[Message] = []
            for i, core in self.cores.items():
                while core.has_ready():
                    rd = core.begin()
                    inflight.extend(rd.early_messages)
                    core.persist(rd)
                    done = core.complete(rd)
                    self.completions[i].append(done)
                    inflight.extend(done.messages)
                    self.replies[i].extend(done.replies)
                    if done.snapshot is not None:
                        snap = done.snapshot.make()
                        core.storage.write_snapshot(snap)
                        core.snapshot_written(snap, done.compact_to)
            inflight = [m for m in inflight if not self.down & {m.src, m.dst}]
            if not inflight:
                return
            self.sent.extend(inflight)
            for m in inflight:
                self.cores[m.dst].step(m)

    def tick(self, ticks: int) -> None:
        for _ in range(ticks):
            for i, core in self.cores.items():
                if i not in self.down:
                    core.tick()
            self.pump()

    def elect(self, leader: int) -> None:
        self.pump()
        self.cores[leader].node.campaign()
        self.pump()
        assert self.cores[leader].is_leader


def test_leader_proposal_is_answered_with_the_machine_result() -> None:
    t = Trio()
    t.elect(1)
    t.cores[1].propose(7, encode_put(b"k", b"v"))
    t.pump()
    [reply] = t.replies[1]
    assert reply.request_id == 7
    assert reply.error is None
    assert reply.result == t.cores[1].applied  # the register machine answers with the index
    for core in t.cores.values():
        assert isinstance(core.sm, RegisterMachine)
        assert core.sm.get(b"k") == b"v"


def test_follower_proposal_is_forwarded_and_answered_by_the_follower_only() -> None:
    t = Trio()
    t.elect(1)
    t.cores[2].propose(9, encode_put(b"f", b"1"))
    t.pump()
    assert [r.request_id for r in t.replies[2]] == [9]
    assert t.replies[1] == []
    assert t.replies[3] == []


def test_same_request_id_on_two_members_answers_each_its_own() -> None:
    t = Trio()
    t.elect(1)
    t.cores[1].propose(5, encode_put(b"a", b"1"))
    t.cores[3].propose(5, encode_put(b"b", b"2"))
    t.pump()
    assert [r.request_id for r in t.replies[1]] == [5]
    assert [r.request_id for r in t.replies[3]] == [5]


def test_proposal_without_known_leader_raises_not_leader() -> None:
    t = Trio()
    t.pump()
    with pytest.raises(NotLeader):
        t.cores[2].propose(1, b"x")


def test_read_barrier_answers_with_a_read_index_covering_earlier_writes() -> None:
    t = Trio()
    t.elect(1)
    t.cores[1].propose(1, encode_put(b"k", b"v"))
    t.pump()
    written_at = t.replies[1][0].result
    t.cores[3].read(2)
    t.pump()
    [reply] = t.replies[3]
    assert reply.request_id == 2
    assert reply.result >= written_at
    assert t.cores[3].applied >= reply.result


def test_cancelled_request_gets_no_late_reply() -> None:
    t = Trio()
    t.elect(1)
    t.cores[1].propose(3, encode_put(b"k", b"v"))
    t.cores[1].cancel(3)
    t.pump()
    assert t.replies[1] == []


def test_snapshot_is_taken_every_snapshot_count_entries_and_log_compacted() -> None:
    t = Trio(snapshot_count=5)
    t.elect(1)
    for i in range(12):
        t.cores[1].propose(100 + i, encode_put(b"k%d" % i, b"v"))
        t.pump()
    snaps = [c.snapshot for c in t.completions[1] if c.snapshot is not None]
    assert len(snaps) >= 2
    core = t.cores[1]
    assert core.snapshot_index == snaps[-1].meta.index
    assert core.storage.first_index() == snaps[-1].meta.index - 2 + 1
    restored = RegisterMachine()
    restored.restore(core.storage.snapshot().data)  # the one written when it was due
    assert restored.get(b"k0") == b"v"


def test_big_entries_trigger_a_snapshot_by_bytes_and_keep_few_behind_it() -> None:
    """Entries of ~10 KB: by count (1,000) no snapshot would come; by bytes (50 KB since
    the last one) it does, and at most ~25 KB of entries stay behind it (not 100)."""
    t = Trio(snapshot_count=1_000, snapshot_bytes=50_000, catchup_entries=100,
             catchup_bytes=25_000)
    t.elect(1)
    for i in range(30):
        t.cores[1].propose(100 + i, encode_put(b"k%d" % i, b"v" * 10_000))
        t.pump()
    for i, core in t.cores.items():
        snaps = [c for c in t.completions[i] if c.snapshot is not None]
        assert len(snaps) >= 3, i  # 300 KB applied: a snapshot per ~50 KB (first staggered)
        kept = core.storage.entries(core.storage.first_index(), core.snapshot_index + 1)
        assert sum(len(e.data) for e in kept) <= 25_000
        assert len(kept) == 2  # two 10 KB entries fit, a third would not
    restored = RegisterMachine()
    restored.restore(t.cores[2].storage.snapshot().data)
    assert restored.get(b"k0") == b"v" * 10_000


def test_small_entries_are_bounded_by_the_count_as_before() -> None:
    t = Trio(snapshot_count=5, snapshot_bytes=1 << 30, catchup_entries=2,
             catchup_bytes=1 << 30)
    t.elect(1)
    for i in range(12):
        t.cores[1].propose(100 + i, encode_put(b"k%d" % i, b"v"))
        t.pump()
    core = t.cores[1]
    assert core.snapshot_index >= 10
    assert core.storage.first_index() == core.snapshot_index - 2 + 1


def test_catch_up_start_binds_by_count_or_by_bytes_whichever_keeps_less() -> None:
    entries = [Entry(1, i, data=b"x" * 10) for i in range(1, 21)]  # 10 bytes each
    assert catch_up_start(entries, 20, 5, None) == 15
    assert catch_up_start(entries, 20, 5, 1_000) == 15  # the count binds
    assert catch_up_start(entries, 20, 5, 25) == 18  # bytes bind: 19 and 20 stay
    assert catch_up_start(entries, 20, 5, 9) == 20  # not even one fits: keep none
    assert catch_up_start(entries, 15, 100, 30) == 12  # entries past ``index`` don't count
    assert catch_up_start(entries[10:], 20, 100, 1_000) == 0  # older ones already gone


def test_removed_member_is_told_to_stop() -> None:
    t = Trio()
    t.elect(1)
    t.cores[1].propose_conf_change(11, ConfChange(ConfChangeKind.REMOVE_NODE, 3))
    t.pump()
    assert any(c.removed for c in t.completions[3])
    assert not any(c.removed for c in t.completions[2])
    assert [r.request_id for r in t.replies[1]] == [11]


def test_every_entry_reaches_the_state_machine_in_order() -> None:
    seen: list[int] = []

    class Recorder(RegisterMachine):
        def apply(self, entry: Entry) -> int:
            seen.append(entry.index)
            return int(super().apply(entry))

    core = MemberCore(Config(id=1, voters=(1,)), MemoryStorage(), Recorder(), random.Random(1))
    t = Trio()
    t.cores = {1: core}
    t.replies = {1: []}
    t.completions = {1: []}
    t.pump()
    core.node.campaign()
    t.pump()
    core.propose(1, encode_put(b"a", b"b"))
    t.pump()
    assert seen == list(range(1, core.applied + 1))


def _cycle(core: MemberCore) -> list[Message]:
    """One whole Ready cycle of ``core``; returns what it sends."""
    rd = core.begin()
    core.persist(rd)
    done = core.complete(rd)
    return [*rd.early_messages, *done.messages]


def test_apply_durable_answers_committed_entries_before_the_new_ones_are_persisted() -> None:
    """A leader's committed entries are on its disk: their answers need not wait for the
    fsync of the entries proposed since (the Ready carries both)."""
    t = Trio()
    t.elect(1)
    leader = t.cores[1]
    leader.propose(1, encode_put(b"a", b"1"))
    appends = _cycle(leader)
    acks = [m for a in appends for m in (t.cores[a.dst].step(a), _cycle(t.cores[a.dst]))[1]]
    for ack in acks:
        leader.step(ack)  # "a" is committed now
    leader.propose(2, encode_put(b"b", b"2"))
    rd = leader.begin()
    assert [e.index for e in rd.committed_entries] == [leader.applied + 1]
    assert rd.entries
    assert rd.must_sync
    early = leader.apply_durable(rd)
    assert [(r.request_id, r.error) for r in early] == [(1, None)]
    assert isinstance(leader.sm, RegisterMachine)
    assert leader.sm.get(b"a") == b"1"
    leader.persist(rd)
    done = leader.complete(rd)
    assert done.replies == []  # answered once, early


def test_a_follower_keeps_entries_it_does_not_hold_durably_for_complete() -> None:
    """Entries that arrive already committed in the Ready that brings them are applied only
    after that Ready is persisted."""
    t = Trio()
    t.elect(1)
    leader, follower, late = t.cores[1], t.cores[2], t.cores[3]
    leader.propose(1, encode_put(b"a", b"1"))
    sent = _cycle(leader)
    for m in sent:
        if m.dst == 2:
            follower.step(m)
    for ack in _cycle(follower):
        leader.step(ack)  # "a" committed by 1 and 2; 3 has not even seen it yet
    leader.propose(2, encode_put(b"b", b"2"))
    for m in [*sent, *_cycle(leader)]:  # now 3 gets "a", "b" and a commit covering "a"
        if m.dst == 3:
            late.step(m)
    rd = late.begin()
    assert rd.committed_entries
    assert rd.entries
    assert late.apply_durable(rd) == []
    assert late.applied < rd.committed_entries[-1].index
    late.persist(rd)
    late.complete(rd)
    assert late.applied == rd.committed_entries[-1].index


def test_one_snapshot_at_a_time_until_written_or_abandoned() -> None:
    t = Trio(snapshot_count=2)
    t.elect(1)
    leader = t.cores[1]
    jobs = []
    for i in range(6):
        leader.propose(10 + i, encode_put(b"k%d" % i, b"v"))
        for _ in range(10):
            for core in t.cores.values():
                while core.has_ready():
                    rd = core.begin()
                    core.persist(rd)
                    done = core.complete(rd)
                    if core is leader and done.snapshot is not None:
                        # Taken at once, as a runtime must (see SnapshotJob).
                        jobs.append((done.snapshot.make(), done.compact_to))
                    elif done.snapshot is not None:
                        core.snapshot_abandoned()
                    for m in [*rd.early_messages, *done.messages]:
                        t.cores[m.dst].step(m)
    assert len(jobs) == 1  # due again and again, but one is in flight
    snap, compact_to = jobs[0]
    leader.snapshot_abandoned()
    leader.propose(99, encode_put(b"z", b"v"))
    t.pump()
    later = [c.snapshot for c in t.completions[1] if c.snapshot is not None]
    assert later  # a new one once the first was given up
    assert leader.snapshot_index == later[-1].meta.index > snap.meta.index
    # the abandoned one, written late anyway: changes nothing
    leader.storage.write_snapshot(snap)
    leader.snapshot_written(snap, compact_to)
    assert leader.snapshot_index == later[-1].meta.index


def test_members_snapshot_in_windows_shifted_by_their_rank() -> None:
    """Same entries, same --snapshot-count: without a shift all members would encode at
    once. Each member snapshots once per window of `count` entries, its windows shifted by
    its rank among the members (a third of the count apart for three): no two members ever
    snapshot at the same index."""
    t = Trio(snapshot_count=9)
    t.elect(1)
    for i in range(40):
        t.cores[1].propose(100 + i, encode_put(b"k%d" % i, b"v"))
        t.pump()
    taken = {}
    for i in t.cores:
        indexes = [c.snapshot.meta.index for c in t.completions[i] if c.snapshot is not None]
        offset = (i - 1) * 9 // 3  # ranks 0, 1, 2: ids 1, 2, 3
        windows = [(index - offset) // 9 for index in indexes]
        assert windows == sorted(set(windows)), (i, indexes)  # one per window
        assert len(indexes) >= 3, (i, indexes)
        assert all(b - a >= 9 // 2 for a, b in itertools.pairwise(indexes)), indexes
        taken[i] = set(indexes)
    for a, b in itertools.combinations(taken, 2):
        assert not taken[a] & taken[b], (a, b, taken)


@pytest.mark.parametrize(("last", "expect_first_due"), [
    (0, 10),     # rank 0 of 3, period 10: boundaries 0, 10, 20, ...; at least 5 past last
    (7, 12),     # boundary 10 is not 5 past 7 yet: due at 12, still in that window
    (10, 20),
    (19, 24),    # a snapshot installed just before a boundary: not another one at once
])
def test_snapshot_windows_depend_only_on_the_last_snapshot_and_the_rank(
        last: int, expect_first_due: int) -> None:
    """What makes the phase survive a restart: when the next snapshot is due is a function
    of the last snapshot's index and the member's rank, nothing the process remembers."""
    due = [p for p in range(last, last + 40) if snapshot_window_crossed(p, last, 10, 0, 3)]
    assert due[0] == expect_first_due


def test_a_members_snapshot_windows_are_shifted_by_its_rank() -> None:
    firsts = [next(p for p in range(1, 100) if snapshot_window_crossed(p, 0, 30, rank, 3))
              for rank in range(3)]
    assert firsts == [30, 15, 20]  # boundaries 0/30, 10/40, 20/50, and half a period apart
    assert [next(p for p in range(31, 200) if snapshot_window_crossed(p, 30, 30, rank, 3))
            for rank in range(3)] == [60, 45, 50]


def test_a_snapshot_file_that_cannot_be_read_is_sent_once_it_can() -> None:
    """Disk members keep no image in memory: while the leader cannot read its snapshot file,
    Raft does not send the lagging follower anything (and nothing crashes); once the file is
    readable again, the follower catches up through it."""
    disks = {i: SimFS() for i in (1, 2, 3)}
    t = Trio(snapshot_count=4, storage=lambda i: DiskStorage(
        disks[i], "/m", cluster_id=1, member_id=i, keep_entries=2))
    t.elect(1)
    leader, late = t.cores[1], t.cores[3]
    t.down.add(3)
    for i in range(12):
        leader.propose(100 + i, encode_put(b"k%d" % i, b"v"))
        t.pump()
    assert leader.snapshot_index > late.applied + 2, "the follower is behind the compacted log"
    meta = leader.storage.snapshot().meta
    path = posixpath.join("/m/snap", f"{meta.term:016x}-{meta.index:016x}.snap")
    disks[1].rename(path, path + ".away")
    t.down.clear()
    t.sent.clear()
    t.tick(30)
    assert not any(isinstance(m, InstallSnapshot) for m in t.sent)
    assert late.applied < meta.index
    disks[1].rename(path + ".away", path)
    t.tick(30)
    assert any(isinstance(m, InstallSnapshot) and m.dst == 3 for m in t.sent)
    assert isinstance(late.sm, RegisterMachine)
    assert late.sm.get(b"k11") == b"v"
    assert late.applied == leader.applied
