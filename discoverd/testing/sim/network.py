"""The simulated network: per-message random delay (so reordering), loss, duplication and
partitions, symmetric or one-way. Every message is encoded and decoded with the real peer codec
on its way, so no two members ever share a Python object (hashicorp/raft's fuzzy trick)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from discoverd.consensus.messages import Message
from discoverd.wire.peer_codec import decode_message, encode_message


@dataclass(slots=True)
class NetworkStats:
    sent: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    blocked: int = 0
    partitions: int = 0


@dataclass(slots=True)
class SimNetwork:
    rng: random.Random
    loss: float
    duplicate: float
    delay_min_us: int
    delay_mean_us: int
    blocked: set[tuple[int, int]] = field(default_factory=set)
    stats: NetworkStats = field(default_factory=NetworkStats)
    enabled_faults: bool = True

    def route(self, m: Message) -> list[tuple[int, bytes]]:
        """Decide the fate of ``m``: a list of (delay_us, encoded bytes), empty if dropped."""
        self.stats.sent += 1
        data = encode_message(m)
        if (m.src, m.dst) in self.blocked:
            self.stats.blocked += 1
            return []
        if self.enabled_faults and self.rng.random() < self.loss:
            self.stats.lost += 1
            return []
        copies = 1
        if self.enabled_faults and self.rng.random() < self.duplicate:
            copies = 2
            self.stats.duplicated += 1
        return [(self._delay(), data) for _ in range(copies)]

    def _delay(self) -> int:
        return self.delay_min_us + int(self.rng.expovariate(1.0 / max(1, self.delay_mean_us)))

    @staticmethod
    def receive(data: bytes) -> Message:
        return decode_message(data)

    def can_deliver(self, src: int, dst: int) -> bool:
        """A partition that starts while a message is in flight also stops that message."""
        return (src, dst) not in self.blocked

    def partition(self, members: list[int]) -> str:
        """Cut the network in a random shape; returns a description for the trace."""
        self.stats.partitions += 1
        ids = sorted(members)
        mode = self.rng.choice(["isolate", "split", "one-way"])
        if mode == "isolate" or len(ids) < 3:
            lone = self.rng.choice(ids)
            side_a, side_b = [lone], [i for i in ids if i != lone]
        else:
            shuffled = ids[:]
            self.rng.shuffle(shuffled)
            k = self.rng.randint(1, len(ids) - 1)
            side_a, side_b = sorted(shuffled[:k]), sorted(shuffled[k:])
        self.blocked = set()
        for a in side_a:
            for b in side_b:
                self.blocked.add((a, b))
                if mode != "one-way":
                    self.blocked.add((b, a))
        arrow = "-/->" if mode == "one-way" else "<-/->"
        return f"partition {mode} {side_a} {arrow} {side_b}"

    def heal(self) -> None:
        self.blocked = set()
