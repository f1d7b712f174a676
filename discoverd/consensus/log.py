"""The Raft log as one member sees it: a durable prefix in ``LogStorage`` plus an unstable tail.

Entries appended by this member (as leader) or received from a leader first land in
``Unstable``; the runtime persists them while handling a ``Ready`` and then ``stable_to``
drops them from here. Reads (``term``, ``slice``) look at the unstable tail first and fall
back to storage, so Raft never has to wait for a disk.
"""

from __future__ import annotations

from discoverd.consensus.messages import Entry, Snapshot
from discoverd.consensus.storage import LogStorage, limit_size
from discoverd.errors import Compacted, LogUnavailable


class Unstable:
    """Entries (and possibly a snapshot) not yet handed to stable storage.

    ``offset`` is the index of ``entries[0]`` (or where it would be if ``entries`` is empty).
    """

    def __init__(self, offset: int) -> None:
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []
        self.offset = offset

    def maybe_first_index(self) -> int | None:
        return self.snapshot.meta.index + 1 if self.snapshot is not None else None

    def maybe_last_index(self) -> int | None:
        if self.entries:
            return self.offset + len(self.entries) - 1
        if self.snapshot is not None:
            return self.snapshot.meta.index
        return None

    def maybe_term(self, index: int) -> int | None:
        if index < self.offset:
            if self.snapshot is not None and self.snapshot.meta.index == index:
                return self.snapshot.meta.term
            return None
        last = self.maybe_last_index()
        if last is None or index > last:
            return None
        return self.entries[index - self.offset].term

    def stable_to(self, index: int, term: int) -> None:
        """Entries up to ``index`` (if still of ``term``) are now durable: forget them."""
        t = self.maybe_term(index)
        if t is None or t != term or index < self.offset:
            # Either already stable, or replaced by a newer append meanwhile: the newer
            # entries will be persisted by a later Ready.
            return
        del self.entries[: index + 1 - self.offset]
        self.offset = index + 1

    def stable_snap_to(self, index: int) -> None:
        if self.snapshot is not None and self.snapshot.meta.index == index:
            self.snapshot = None

    def restore(self, snap: Snapshot) -> None:
        self.offset = snap.meta.index + 1
        self.entries = []
        self.snapshot = snap

    def truncate_and_append(self, ents: list[Entry] | tuple[Entry, ...]) -> None:
        after = ents[0].index
        if after == self.offset + len(self.entries):
            self.entries.extend(ents)
        elif after <= self.offset:
            # Replaces everything unstable (and overwrites durable entries from ``after``).
            self.offset = after
            self.entries = list(ents)
        else:
            del self.entries[after - self.offset :]
            self.entries.extend(ents)

    def slice(self, lo: int, hi: int) -> list[Entry]:
        assert self.offset <= lo <= hi <= self.offset + len(self.entries), (
            f"unstable slice [{lo},{hi}) out of [{self.offset},"
            f"{self.offset + len(self.entries)})"
        )
        return self.entries[lo - self.offset : hi - self.offset]


class RaftLog:
    """``committed`` is known committed; ``applied`` was handed to the state machine."""

    def __init__(self, storage: LogStorage) -> None:
        self.storage = storage
        first = storage.first_index()
        last = storage.last_index()
        self.unstable = Unstable(last + 1)
        self.committed = first - 1
        self.applied = first - 1

    def __repr__(self) -> str:
        return (
            f"<RaftLog committed={self.committed} applied={self.applied} "
            f"unstable.offset={self.unstable.offset} unstable={len(self.unstable.entries)}>"
        )

    # -- bounds and terms

    def first_index(self) -> int:
        i = self.unstable.maybe_first_index()
        return i if i is not None else self.storage.first_index()

    def last_index(self) -> int:
        i = self.unstable.maybe_last_index()
        return i if i is not None else self.storage.last_index()

    def last_term(self) -> int:
        return self.term(self.last_index())

    def stable_index(self) -> int:
        """The last index whose entry (as this log now has it) is known durable."""
        if self.unstable.snapshot is not None:
            return 0  # our log is being replaced; nothing of it is known durable yet
        return self.unstable.offset - 1

    def term(self, index: int) -> int:
        """Raises ``Compacted`` below ``first_index() - 1`` and ``LogUnavailable`` past the end."""
        dummy = self.first_index() - 1
        if index < dummy:
            raise Compacted(f"index {index} is compacted")
        if index > self.last_index():
            raise LogUnavailable(f"index {index} is past the last index {self.last_index()}")
        t = self.unstable.maybe_term(index)
        if t is not None:
            return t
        return self.storage.term(index)

    def match_term(self, index: int, term: int) -> bool:
        try:
            return self.term(index) == term
        except (Compacted, LogUnavailable):
            return False

    def is_up_to_date(self, last_index: int, term: int) -> bool:
        """Raft §5.4.1: a candidate's log is at least as up to date as ours."""
        my_term = self.last_term()
        return term > my_term or (term == my_term and last_index >= self.last_index())

    # -- appending

    def find_conflict(self, ents: tuple[Entry, ...] | list[Entry]) -> int:
        """The first index of ``ents`` that we lack or hold with another term (0 if none)."""
        for e in ents:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest ``i <= index`` whose term is ``<= term``, with that term.

        Used for fast back-off: a rejected leader skips every entry of a term the follower
        does not share, instead of probing one index at a time.
        """
        while index > 0:
            try:
                t = self.term(index)
            except Compacted:
                return index, 0
            except LogUnavailable:
                index = self.last_index()
                continue
            if t <= term:
                return index, t
            index -= 1
        return 0, 0

    def maybe_append(
        self, prev_index: int, prev_term: int, committed: int, ents: tuple[Entry, ...]
    ) -> int | None:
        """Append a leader's entries after (``prev_index``, ``prev_term``) if they match.

        Returns the index of the last new entry, or None on a log-matching failure.
        """
        if not self.match_term(prev_index, prev_term):
            return None
        last_new = prev_index + len(ents)
        conflict = self.find_conflict(ents)
        if conflict:
            assert conflict > self.committed, (
                f"entry {conflict} conflicts with committed entry (committed={self.committed})"
            )
            self.append(list(ents[conflict - prev_index - 1 :]))
        self.commit_to(min(committed, last_new))
        return last_new

    def append(self, ents: list[Entry]) -> int:
        if not ents:
            return self.last_index()
        assert ents[0].index - 1 >= self.committed, (
            f"append at {ents[0].index} would overwrite committed {self.committed}"
        )
        self.unstable.truncate_and_append(ents)
        return self.last_index()

    # -- reading

    def slice(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries ``[lo, hi)``, limited to ``max_bytes`` (at least one entry)."""
        if lo >= hi:
            return []
        first = self.first_index()
        if lo < first:
            raise Compacted(f"index {lo} is compacted (first is {first})")
        if hi > self.last_index() + 1:
            raise LogUnavailable(f"slice [{lo},{hi}) past last index {self.last_index()}")
        ents: list[Entry] = []
        off = self.unstable.offset
        if lo < off:
            stored = self.storage.entries(lo, min(hi, off), max_bytes)
            if len(stored) < min(hi, off) - lo:
                return stored  # size limit hit inside storage
            ents = stored
        if hi > off:
            ents = ents + self.unstable.slice(max(lo, off), hi)
        return limit_size(ents, max_bytes)

    def entries_from(self, lo: int, max_bytes: int | None = None) -> list[Entry]:
        if lo > self.last_index():
            return []
        return self.slice(lo, self.last_index() + 1, max_bytes)

    def has_next_committed_entries(self) -> bool:
        return self.committed > max(self.applied, self.first_index() - 1)

    def next_committed_entries(self, max_bytes: int | None = None) -> list[Entry]:
        lo = max(self.applied + 1, self.first_index())
        if self.committed < lo:
            return []
        return self.slice(lo, self.committed + 1, max_bytes)

    # -- commit and apply

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            assert index <= self.last_index(), (
                f"commit {index} is past the last index {self.last_index()}"
            )
            self.committed = index

    def maybe_commit(self, index: int, term: int) -> bool:
        """Commit ``index`` only if it is of ``term`` (Raft §5.4.2: count only own-term entries)."""
        if index > self.committed and self.match_term(index, term):
            self.commit_to(index)
            return True
        return False

    def applied_to(self, index: int) -> None:
        if index == 0:
            return
        assert index <= self.committed, f"applied {index} is past committed {self.committed}"
        self.applied = max(self.applied, index)

    def stable_to(self, index: int, term: int) -> None:
        self.unstable.stable_to(index, term)

    def stable_snap_to(self, index: int) -> None:
        self.unstable.stable_snap_to(index)

    def restore(self, snap: Snapshot) -> None:
        """Throw our log away in favour of a leader's snapshot."""
        self.committed = snap.meta.index
        self.unstable.restore(snap)
