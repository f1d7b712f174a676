"""Swarm options: every seed draws its own fault rates and Raft knobs (TigerBeetle's VOPR idea).

Running many seeds with *different* mixes of faults explores far more than running them all
with one average mix: some seeds have no loss but many crashes, others a flaky network and
tiny messages. Each subsystem gets its own sub-seed, so adding a knob does not reshuffle the
others' random streams more than necessary.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

MS = 1000  # the simulator's clock counts microseconds


@dataclass(slots=True)
class SimOptions:
    seed: int
    n_voters: int = 3
    n_spares: int = 0
    tick_us: int = 10 * MS
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    max_inflight: int = 256
    max_msg_bytes: int = 1 << 20
    snapshot_every: int = 50
    keep_after_snapshot: int = 5
    clock_rates: dict[int, float] = field(default_factory=dict)
    loss: float = 0.0
    duplicate: float = 0.0
    delay_min_us: int = 200
    delay_mean_us: int = 1 * MS
    disk_mean_us: int = 500
    partition_rate_per_s: float = 0.0
    partition_mean_us: int = 500 * MS
    crash_rate_per_s: float = 0.0
    restart_mean_us: int = 300 * MS
    torn_restart: bool = True
    wal_segment_bytes: int = 64 * 1024 * 1024
    membership_changes: bool = False
    clients: int = 2
    op_interval_us: int = 20 * MS
    read_fraction: float = 0.3
    readers: int = 0  # extra clients that only read, sticking to the member that serves them
    client_timeout_us: int = 2000 * MS
    safety_us: int = 10_000 * MS
    liveness_us: int = 60_000 * MS

    @property
    def election_timeout_us(self) -> int:
        return self.tick_us * self.election_ticks

    @classmethod
    def swarm(cls, seed: int) -> SimOptions:
        """Draw this seed's fault mix and knobs."""
        r = random.Random(seed)
        n_voters = r.choice([1, 3, 3, 3, 5, 5])
        o = cls(seed=seed, n_voters=n_voters)
        o.n_spares = r.choice([0, 0, 1, 2])
        o.membership_changes = o.n_spares > 0 or (n_voters > 1 and r.random() < 0.3)
        o.election_ticks = r.randint(5, 15)
        o.heartbeat_ticks = r.choice([1, 1, 2])
        o.pre_vote = r.random() < 0.8
        o.check_quorum = r.random() < 0.8
        o.max_inflight = r.choice([1, 2, 8, 256])
        o.max_msg_bytes = r.choice([64, 512, 1 << 20])
        o.snapshot_every = r.choice([5, 20, 100, 100_000])
        o.keep_after_snapshot = r.choice([0, 1, 5])
        o.wal_segment_bytes = r.choice([2048, 64 * 1024, 64 * 1024 * 1024])
        n_ids = n_voters + o.n_spares
        o.clock_rates = {i: r.uniform(0.9, 1.1) for i in range(1, n_ids + 1)}
        o.loss = r.choice([0.0, r.uniform(0, 0.1), r.uniform(0, 0.3)])
        o.duplicate = r.choice([0.0, r.uniform(0, 0.2)])
        o.delay_min_us = r.randint(50, 1 * MS)
        o.delay_mean_us = r.choice([1 * MS, 5 * MS, 20 * MS])
        o.disk_mean_us = r.choice([0, 300, 2 * MS, 10 * MS])
        o.partition_rate_per_s = r.choice([0.0, 0.2, 1.0])
        o.partition_mean_us = r.choice([100 * MS, 1000 * MS])
        o.crash_rate_per_s = r.choice([0.0, 0.1, 0.5])
        o.restart_mean_us = r.choice([50 * MS, 500 * MS, 2000 * MS])
        o.clients = r.randint(1, 4)
        o.op_interval_us = r.choice([2 * MS, 10 * MS, 50 * MS])
        o.read_fraction = r.choice([0.0, 0.3, 0.6])
        o.readers = r.choice([0, 0, 1, 2])
        o.safety_us = r.choice([5_000, 10_000, 20_000]) * MS
        return o

    def describe(self) -> str:
        return (
            f"seed={self.seed} voters={self.n_voters} spares={self.n_spares} "
            f"election={self.election_ticks} heartbeat={self.heartbeat_ticks} "
            f"pre_vote={self.pre_vote} check_quorum={self.check_quorum} "
            f"inflight={self.max_inflight} msg_bytes={self.max_msg_bytes} "
            f"snap_every={self.snapshot_every} loss={self.loss:.2f} dup={self.duplicate:.2f} "
            f"delay={self.delay_min_us}+{self.delay_mean_us}us disk={self.disk_mean_us}us "
            f"partitions/s={self.partition_rate_per_s} crashes/s={self.crash_rate_per_s} "
            f"membership={self.membership_changes} clients={self.clients}+{self.readers}r "
            f"safety={self.safety_us // MS}ms"
        )
