"""Linearizable reads without a log write (Raft dissertation §6.4, "ReadIndex").

The leader records its commit index, then proves it is still the leader with one round of
heartbeats acknowledged by a majority; any read at that index is then linearizable. Every read
that arrived before a round was started rides on that round: a *batch* costs one round trip.
A heartbeat acknowledged for round r also vouches for every earlier round, since it proves
leadership at a moment after all of them began.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from discoverd.consensus.quorum import has_quorum


@dataclass(slots=True)
class ReadRequest:
    context: bytes
    origin: int  # the member that asked (the leader itself, or a follower that forwarded it)


@dataclass(slots=True)
class ReadRound:
    index: int
    requests: list[ReadRequest]
    acks: set[int] = field(default_factory=set)


class ReadOnly:
    """Queued read requests and the heartbeat rounds confirming them, oldest first."""

    def __init__(self) -> None:
        self.queued: list[ReadRequest] = []
        self.rounds: dict[int, ReadRound] = {}
        self.last_round = 0

    def __repr__(self) -> str:
        return f"<ReadOnly queued={len(self.queued)} rounds={sorted(self.rounds)}>"

    def add(self, context: bytes, origin: int) -> None:
        self.queued.append(ReadRequest(context, origin))

    def start_round(self, index: int, leader: int) -> int:
        """Move every queued request into a new round at ``index``; returns its number."""
        self.last_round += 1
        self.rounds[self.last_round] = ReadRound(index, self.queued, {leader})
        self.queued = []
        return self.last_round

    def ack(self, round_no: int, member: int, voters: Collection[int]) -> list[ReadRound]:
        """Record ``member``'s acknowledgement of ``round_no``; return the rounds now confirmed."""
        confirmed_up_to = 0
        for r, rnd in self.rounds.items():
            if r > round_no:
                break
            rnd.acks.add(member)
            if has_quorum(voters, rnd.acks):
                confirmed_up_to = r
        released = [rnd for r, rnd in self.rounds.items() if r <= confirmed_up_to]
        for r in [r for r in self.rounds if r <= confirmed_up_to]:
            del self.rounds[r]
        return released

    def reset(self) -> list[ReadRequest]:
        """Forget everything (leadership lost); returns the requests that will not be answered."""
        dropped = list(self.queued)
        for rnd in self.rounds.values():
            dropped.extend(rnd.requests)
        self.queued = []
        self.rounds = {}
        return dropped
