"""Deliberately broken members, to show that the fault tests catch what they claim to.

A checker that has never failed proves nothing: a linearizability test that passes against a
correct cluster might pass against any cluster. So the fault suite also runs its workloads
against a *mutant* — a member with one safety rule removed — and requires the checker to
report the violation. The mutation is applied in the member's own process by patching one
method before the ordinary CLI starts; nothing in the product knows mutants exist.

Run as ``python -m discoverd.testing.mutants MUTANT serve …`` (``MemberProcess.launcher``):

* ``stale-reads`` — linearizable reads skip the ReadIndex round and are served from the
  member's local store, i.e. "reads served from a follower's local store with the
  linearizable flag set". A follower cut off from the leader keeps answering from its old
  state, which a reader then sees after a newer write has completed elsewhere.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from discoverd.server.raft_loop import RaftLoop


def _stale_reads() -> None:
    async def read_barrier_without_quorum(self: RaftLoop) -> int:
        return self.core.applied  # the bug: no ReadIndex, no leader, no quorum

    RaftLoop.read_barrier = read_barrier_without_quorum  # type: ignore[method-assign]


MUTANTS: dict[str, Callable[[], None]] = {"stale-reads": _stale_reads}


def launcher(mutant: str) -> list[str]:
    """The ``MemberProcess.launcher`` that runs ``serve`` with ``mutant`` applied."""
    if mutant not in MUTANTS:
        raise ValueError(f"unknown mutant {mutant!r}; known: {', '.join(MUTANTS)}")
    return ["-m", "discoverd.testing.mutants", mutant]


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in MUTANTS:
        sys.exit(f"usage: python -m discoverd.testing.mutants {{{','.join(MUTANTS)}}} "
                 "serve [flags]")
    MUTANTS[argv[0]]()
    from discoverd.cli.__main__ import main as cli_main

    cli_main(argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
