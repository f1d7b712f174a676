"""Which revisions of which keys exist: etcd's ``treeIndex`` / ``keyIndex``.

The index maps each key to its *generations*. A generation is the life of one incarnation of
the key: the revisions of its puts, ending with the revision of the delete (the tombstone)
that ended it. The last generation is the current one; it is empty when the key is deleted
now. So the history of ``put@2, put@4, del@6, put@8`` is ``[[2, 4, 6], [8]]``, and after a
further ``del@9`` it is ``[[2, 4, 6], [8, 9], []]``.

Generations are what make "the key as of revision r" and compaction cheap and exact:

* ``get(r)`` finds the generation alive at ``r`` and the latest revision ``<= r`` in it; a
  generation whose tombstone is ``<= r`` means the key did not exist at ``r``.
* ``compact(r)`` drops every generation whose tombstone is ``<= r`` and, in the generation
  alive at ``r``, every revision before the latest one ``<= r``. A read at any revision
  ``>= r`` then still sees exactly what it saw before.

The index holds revisions only; the store keeps the values (its "backend") keyed by revision.
Keys are kept in a ``SortedDict`` so that ranges are ordered scans, as with etcd's btree.
"""

from __future__ import annotations

import sys
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator

from sortedcontainers import SortedDict

from discoverd.kv.revision import Revision

_MAX_SUB = sys.maxsize


def _latest_at_or_before(revs: list[Revision], at_main: int) -> int:
    """Index of the last revision in ``revs`` whose main is ``<= at_main`` (-1 if none)."""
    return bisect_right(revs, (at_main, _MAX_SUB)) - 1


class KeyIndex:
    """The generations of one key. Invariant: every generation but the last ends with a
    tombstone, and is non-empty; revisions increase across and within generations."""

    __slots__ = ("generations", "key")

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.generations: list[list[Revision]] = [[]]

    def __repr__(self) -> str:
        gens = " | ".join(",".join(f"{r.main}.{r.sub}" for r in g) for g in self.generations)
        return f"<KeyIndex {self.key!r} [{gens}]>"

    def put(self, rev: Revision) -> None:
        self.generations[-1].append(rev)

    def tombstone(self, rev: Revision) -> None:
        """End the current generation with ``rev``. The key must exist now."""
        assert self.generations[-1], f"tombstone on a deleted key {self.key!r}"
        self.generations[-1].append(rev)
        self.generations.append([])

    def revert(self, rev: Revision) -> None:
        """Take back the key's last change, ``rev`` (a put or a tombstone): the index is as
        it was before it. How a write refused after its changes were made (by a write hook)
        leaves no trace; only the newest change can be taken back, so a write reverts its
        changes newest first."""
        gens = self.generations
        if not gens[-1] and len(gens) > 1:
            gens.pop()  # the change was a tombstone: reopen the generation it ended
        last = gens[-1].pop() if gens[-1] else None
        assert last == rev, f"revert of {rev}, but {self!r}'s last change is {last}"

    def latest(self) -> Revision | None:
        """The revision of the key's current version, or ``None`` if it is deleted now."""
        current = self.generations[-1]
        return current[-1] if current else None

    def get(self, at_main: int) -> Revision | None:
        """The revision of the version visible at store revision ``at_main`` (None: absent)."""
        last = len(self.generations) - 1
        for gi in range(last, -1, -1):
            gen = self.generations[gi]
            if not gen or gen[0].main > at_main:
                continue
            if gi != last and gen[-1].main <= at_main:
                return None  # this incarnation was already deleted at at_main
            return gen[_latest_at_or_before(gen, at_main)]
        return None

    def previous(self, rev: Revision) -> Revision | None:
        """The revision of the version that change ``rev`` replaced (``None``: ``rev``
        created the key). Exact per change, where ``get(rev.main - 1)`` is per revision:
        a write hook's derived change may follow another change of the key in one revision.
        """
        for gen in reversed(self.generations):
            if gen and gen[0] <= rev:
                i = bisect_left(gen, rev)
                return gen[i - 1] if i > 0 else None
        return None

    def compact(self, at_main: int) -> list[Revision]:
        """Forget what no read at a revision ``>= at_main`` can see; return the forgotten.

        Keeps, per key, the latest revision ``<= at_main`` if it is a live version (a
        tombstone ``<= at_main`` goes, together with its whole generation).
        """
        removed: list[Revision] = []
        gi = 0
        last = len(self.generations) - 1
        while gi < last and self.generations[gi][-1].main <= at_main:
            removed.extend(self.generations[gi])
            gi += 1
        gen = self.generations[gi]
        keep_from = _latest_at_or_before(gen, at_main)
        if keep_from > 0:
            removed.extend(gen[:keep_from])
            del gen[:keep_from]
        del self.generations[:gi]
        return removed

    def is_empty(self) -> bool:
        return len(self.generations) == 1 and not self.generations[0]

    def revisions(self) -> Iterator[Revision]:
        for gen in self.generations:
            yield from gen


class TreeIndex:
    """All keys, ordered, each with its ``KeyIndex``.

    ``live`` counts the keys that exist now (their current generation is not empty); it is
    kept up to date by every change rather than counted on demand, because a metrics scrape
    asks for it and a scan of a large keyspace would stall the member's one thread.
    ``len()`` counts every key with history, deleted ones included, until compaction.
    """

    __slots__ = ("_keys", "live")

    def __init__(self) -> None:
        self._keys: SortedDict = SortedDict()
        self.live = 0

    def __repr__(self) -> str:
        return f"<TreeIndex keys={len(self._keys)} live={self.live}>"

    @classmethod
    def of(cls, key_indexes: dict[bytes, KeyIndex]) -> TreeIndex:
        """An index of ``key_indexes`` (key → its generations), sorted in one go."""
        index = cls()
        index._keys = SortedDict(key_indexes)
        index.live = sum(1 for ki in key_indexes.values() if ki.generations[-1])
        return index

    def __len__(self) -> int:
        return len(self._keys)

    def key_index(self, key: bytes) -> KeyIndex | None:
        found: KeyIndex | None = self._keys.get(key)
        return found

    def put(self, key: bytes, rev: Revision) -> None:
        ki: KeyIndex | None = self._keys.get(key)
        if ki is None:
            ki = self._keys[key] = KeyIndex(key)
        if not ki.generations[-1]:
            self.live += 1
        ki.put(rev)

    def tombstone(self, key: bytes, rev: Revision) -> None:
        ki: KeyIndex | None = self._keys.get(key)
        assert ki is not None, f"tombstone on an unknown key {key!r}"
        ki.tombstone(rev)
        self.live -= 1

    def revert(self, key: bytes, rev: Revision) -> None:
        """Take back ``key``'s last change ``rev`` (see ``KeyIndex.revert``); a key left with
        no revisions at all disappears, as if it had never been written."""
        ki: KeyIndex | None = self._keys.get(key)
        assert ki is not None, f"revert on an unknown key {key!r}"
        was_live = bool(ki.generations[-1])
        ki.revert(rev)
        self.live += bool(ki.generations[-1]) - was_live
        if ki.is_empty():
            del self._keys[key]

    def scan(
        self, key: bytes, range_end: bytes | None, *, reverse: bool = False
    ) -> Iterable[KeyIndex]:
        """The key indexes of keys in ``[key, range_end)`` in key order (descending if
        ``reverse``); ``None``: no end."""
        if range_end is None:
            keys = self._keys.irange(minimum=key, reverse=reverse)
        elif range_end <= key:
            return ()
        else:
            keys = self._keys.irange(
                minimum=key, maximum=range_end, inclusive=(True, False), reverse=reverse
            )
        return (self._keys[k] for k in keys)

    def compact(self, at_main: int) -> list[Revision]:
        """Compact every key (see ``KeyIndex.compact``); drop keys left with no history."""
        removed: list[Revision] = []
        empty: list[bytes] = []
        for key, ki in self._keys.items():
            removed.extend(ki.compact(at_main))
            if ki.is_empty():
                empty.append(key)
        for key in empty:
            del self._keys[key]
        return removed
