"""Which versions of which keys exist: etcd's ``treeIndex`` / ``keyIndex``.

The index maps each key to its versions, oldest first: the ``KeyValue`` of every put and
every tombstone not yet compacted away. The versions fall into *generations*: the life of
one incarnation of the key, its puts ending with the tombstone of the delete that ended it.
So the history ``put@2, put@4, del@6, put@8`` has the generations ``[[2, 4, 6], [8]]``, and
after a further ``del@9`` ``[[2, 4, 6], [8, 9], []]`` (the last, current one is empty while
the key is deleted).

The generations are not kept as lists of lists: a tombstone (``create_revision == 0``) ends
its generation by what it is, so the flat list of versions says everything, and a key costs
one list at most (none while it has a single version, see ``TreeIndex``) — at a million
keys, almost all of them with one generation and one version, every further object per key
costs as much as the key's own 16 bytes. Nor does the index keep revisions beside the
versions: a version's ``mod_revision`` is its main revision, and the order of a key's
changes within one main revision is their order in the list (the store keeps the sub
revisions for its snapshot image, see ``store.MvccStore``).

Generations are what make "the key as of revision r" and compaction cheap and exact:

* ``get(r)`` is the latest version with ``mod_revision <= r``, unless that is a tombstone:
  then the key did not exist at ``r``.
* ``compact(r)`` drops every version before the latest one ``<= r``, and that one too if it
  is a tombstone (with it, its whole generation is gone). A read at any revision ``>= r``
  then still sees exactly what it saw before.

Keys are kept in a ``SortedDict`` so that ranges are ordered scans, as with etcd's btree.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from operator import attrgetter

from sortedcontainers import SortedDict

from discoverd.kv.revision import KeyValue

mod_revision = attrgetter("mod_revision")
"""The sort key of versions (a key's, or the store's revision-ordered log) for ``bisect``."""


class KeyIndex(list[KeyValue]):
    """The versions of one key, oldest first: the list itself, so that the index's entry for
    a key is one object. Invariant: ``mod_revision`` never decreases; a tombstone is never
    first and never follows a tombstone (in a ``TreeIndex``, also: two versions or more)."""

    __slots__ = ()

    @property
    def key(self) -> bytes:
        return self[0].key

    @property
    def generations(self) -> list[list[KeyValue]]:
        """The versions split into generations (each tombstone ends one); the last is the
        current one, empty while the key is deleted. For tests and ``repr``."""
        gens: list[list[KeyValue]] = [[]]
        for kv in self:
            gens[-1].append(kv)
            if kv.is_tombstone:
                gens.append([])
        return gens

    def __repr__(self) -> str:
        gens = " | ".join(
            ",".join(f"{kv.mod_revision}{'t' if kv.is_tombstone else ''}" for kv in g)
            for g in self.generations
        )
        return f"<KeyIndex {self.key if self else None!r} [{gens}]>"

    def put(self, kv: KeyValue) -> None:
        self.append(kv)

    def tombstone(self, kv: KeyValue) -> None:
        """End the current generation with the tombstone ``kv``. The key must exist now."""
        assert kv.is_tombstone, f"not a tombstone: {kv!r}"
        assert self.latest() is not None, f"tombstone on a deleted key {kv.key!r}"
        self.append(kv)

    def revert(self, kv: KeyValue) -> None:
        """Take back the key's last change, ``kv`` (a put or a tombstone): the index is as it
        was before it. How a write refused after its changes were made (by a write hook)
        leaves no trace; only the newest change can be taken back, so a write reverts its
        changes newest first."""
        last = self.pop() if self else None
        assert last is kv, f"revert of {kv!r}, but {self!r}'s last change was {last!r}"

    def latest(self) -> KeyValue | None:
        """The key's current version, or ``None`` if it is deleted now."""
        if not self or self[-1].is_tombstone:
            return None
        return self[-1]

    def get(self, at_main: int) -> KeyValue | None:
        """The version visible at store revision ``at_main`` (``None``: absent then)."""
        i = bisect_right(self, at_main, key=mod_revision) - 1
        if i < 0 or self[i].is_tombstone:
            return None  # not yet written, compacted away, or deleted at at_main
        return self[i]

    def previous(self, kv: KeyValue) -> KeyValue | None:
        """The version that change ``kv`` replaced (``None``: ``kv`` created the key). Exact
        per change, where ``get(kv.mod_revision - 1)`` is per revision: a write hook's
        derived change may follow another change of the key in one revision."""
        i = bisect_left(self, kv.mod_revision, key=mod_revision)
        while self[i] is not kv:  # the changes of the key in kv's revision, in order
            i += 1
        if i == 0 or self[i - 1].is_tombstone:
            return None
        return self[i - 1]

    def compact(self, at_main: int) -> list[KeyValue]:
        """Forget what no read at a revision ``>= at_main`` can see; return the forgotten.

        Keeps the latest version ``<= at_main`` if it is a live one (a tombstone ``<=
        at_main`` goes, together with its whole generation).
        """
        keep_from = bisect_right(self, at_main, key=mod_revision) - 1
        if keep_from >= 0 and self[keep_from].is_tombstone:
            keep_from += 1
        if keep_from <= 0:
            return []
        removed = self[:keep_from]
        del self[:keep_from]
        return removed


class TreeIndex:
    """All keys, ordered, each with its versions.

    A key with one version — most keys of a large store: written once, or compacted down to
    the version alive now — is entered as that ``KeyValue`` itself rather than as a
    one-item ``KeyIndex``: a list object and its item array, ~70 bytes a key, a tenth of
    the store at a million keys. Invariant: a key's entry is a bare ``KeyValue`` (then a
    put: a tombstone always follows a put of its generation) iff it has exactly one
    version; only the changes here (``put``, ``tombstone``, ``revert``, ``compact``) turn
    one form into the other.

    ``live`` counts the keys that exist now (their current generation is not empty); it is
    kept up to date by every change rather than counted on demand, because a metrics scrape
    asks for it and a scan of a large keyspace would stall the member's one thread.
    ``len()`` counts every key with history, deleted ones included, until compaction.
    """

    __slots__ = ("_keys", "live")

    def __init__(self) -> None:
        self._keys: SortedDict = SortedDict()  # key -> KeyValue | KeyIndex
        self.live = 0

    def __repr__(self) -> str:
        return f"<TreeIndex keys={len(self._keys)} live={self.live}>"

    @classmethod
    def bulk(cls) -> TreeIndex:
        """An empty index to fill by ``put``/``tombstone`` only and then ``sort()``: keys
        go into a plain dict, sorted once at the end instead of a sorted insert per key
        (a restore of a million keys)."""
        index = cls()
        index._keys = {}
        return index

    def sort(self) -> None:
        """End a ``bulk`` fill."""
        self._keys = SortedDict(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def key_index(self, key: bytes) -> KeyIndex | None:
        """The versions of ``key``; for a key with one version, a new ``KeyIndex`` of it: to
        read, never to change (changes go through the tree)."""
        entry = self._keys.get(key)
        return None if entry is None else _as_key_index(entry)

    def get(self, key: bytes, at_main: int) -> KeyValue | None:
        """The version of ``key`` visible at store revision ``at_main`` (``KeyIndex.get``)."""
        return _visible(self._keys.get(key), at_main)

    def latest(self, key: bytes) -> KeyValue | None:
        """The current version of ``key``, ``None`` if it does not exist now."""
        entry = self._keys.get(key)
        return entry.latest() if isinstance(entry, KeyIndex) else entry

    def put(self, kv: KeyValue) -> None:
        entry = self._keys.get(kv.key)
        if entry is None:
            self._keys[kv.key] = kv
            self.live += 1
            return
        ki = self._key_index_to_change(kv.key, entry)
        if ki.latest() is None:
            self.live += 1
        ki.put(kv)

    def tombstone(self, kv: KeyValue) -> None:
        entry = self._keys.get(kv.key)
        assert entry is not None, f"tombstone on an unknown key {kv.key!r}"
        self._key_index_to_change(kv.key, entry).tombstone(kv)
        self.live -= 1

    def revert(self, kv: KeyValue) -> None:
        """Take back the last change of ``kv.key``, ``kv`` (see ``KeyIndex.revert``); a key
        left with no versions at all disappears, as if it had never been written."""
        entry = self._keys.get(kv.key)
        assert entry is not None, f"revert on an unknown key {kv.key!r}"
        ki = self._key_index_to_change(kv.key, entry)
        was_live = ki.latest() is not None
        ki.revert(kv)
        self.live += (ki.latest() is not None) - was_live
        self._settle(kv.key, ki)

    def scan(
        self, key: bytes, range_end: bytes | None, *, reverse: bool = False
    ) -> Iterator[KeyIndex]:
        """The key indexes of keys in ``[key, range_end)`` in key order (descending if
        ``reverse``); ``None``: no end. To read (see ``key_index``)."""
        for entry in self._entries(key, range_end, reverse):
            yield _as_key_index(entry)

    def visible(
        self, at_main: int, key: bytes, range_end: bytes | None, *, reverse: bool = False
    ) -> Iterator[KeyValue]:
        """The versions visible at ``at_main`` of the keys in ``[key, range_end)`` that had
        one then, in key order (descending if ``reverse``); ``None``: no end."""
        for entry in self._entries(key, range_end, reverse):
            kv = _visible(entry, at_main)
            if kv is not None:
                yield kv

    def compact(self, at_main: int) -> list[KeyValue]:
        """Compact every key (see ``KeyIndex.compact``; a key with one version has nothing
        to lose); drop keys left with no history."""
        removed: list[KeyValue] = []
        changed: list[tuple[bytes, KeyIndex]] = []
        for key, entry in self._keys.items():
            if isinstance(entry, KeyIndex):
                gone = entry.compact(at_main)
                if gone:
                    removed.extend(gone)
                    changed.append((key, entry))
        for key, ki in changed:
            self._settle(key, ki)
        return removed

    def _entries(
        self, key: bytes, range_end: bytes | None, reverse: bool
    ) -> Iterator[KeyValue | KeyIndex]:
        if range_end is None:
            keys = self._keys.irange(minimum=key, reverse=reverse)
        elif range_end <= key:
            return
        else:
            keys = self._keys.irange(
                minimum=key, maximum=range_end, inclusive=(True, False), reverse=reverse
            )
        entries = self._keys
        for k in keys:
            yield entries[k]

    def _key_index_to_change(self, key: bytes, entry: KeyValue | KeyIndex) -> KeyIndex:
        """``key``'s entry as a ``KeyIndex`` in the tree, to change in place."""
        if isinstance(entry, KeyIndex):
            return entry
        ki = self._keys[key] = KeyIndex((entry,))
        return ki

    def _settle(self, key: bytes, ki: KeyIndex) -> None:
        """Restore the invariant after ``key``'s versions ``ki`` lost some."""
        if not ki:
            del self._keys[key]
        elif len(ki) == 1:
            assert not ki[0].is_tombstone, f"a lone tombstone: {ki!r}"
            self._keys[key] = ki[0]


def _as_key_index(entry: KeyValue | KeyIndex) -> KeyIndex:
    return entry if isinstance(entry, KeyIndex) else KeyIndex((entry,))


def _visible(entry: KeyValue | KeyIndex | None, at_main: int) -> KeyValue | None:
    """``KeyIndex.get`` of a tree entry (a bare entry is a put)."""
    if isinstance(entry, KeyIndex):
        return entry.get(at_main)
    if entry is None or entry.mod_revision > at_main:
        return None
    return entry
