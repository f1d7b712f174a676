"""The key index (etcd's keyIndex/treeIndex): generations, reads at a revision, compaction.

The fixtures follow etcd's ``mvcc/key_index_test.go``.
"""

from __future__ import annotations

import pytest

from discoverd.kv.index import KeyIndex, TreeIndex
from discoverd.kv.revision import KeyValue, tombstone


def R(main: int, sub: int = 0, key: bytes = b"foo") -> KeyValue:
    """The put of ``key`` at revision ``(main, sub)``, told apart from every other by its
    value (equal ``KeyValue``s compare equal, so expectations can be written fresh)."""
    return KeyValue(key, b"%d.%d" % (main, sub), 1, main, 1)


def T(main: int, key: bytes = b"foo") -> KeyValue:
    """The tombstone of ``key`` at revision ``main``."""
    return tombstone(key, main)


def etcd_test_key_index() -> KeyIndex:
    """etcd's ``newTestKeyIndex``: three generations, the last one currently deleted.

    {{2}, {4}, {6}(t)} {{8}, {10}, {12}(t)} {{14,0}, {14,1}, {16}(t)} {}
    """
    ki = KeyIndex()
    ki.put(R(2))
    ki.put(R(4))
    ki.tombstone(T(6))
    ki.put(R(8))
    ki.put(R(10))
    ki.tombstone(T(12))
    ki.put(R(14, 0))
    ki.put(R(14, 1))
    ki.tombstone(T(16))
    return ki


def test_generations_are_split_by_tombstones() -> None:
    ki = etcd_test_key_index()
    assert ki.generations == [
        [R(2), R(4), T(6)],
        [R(8), R(10), T(12)],
        [R(14, 0), R(14, 1), T(16)],
        [],
    ]
    assert ki.latest() is None


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (17, None),
        (16, None),
        (15, R(14, 1)),
        (14, R(14, 1)),
        (13, None),
        (12, None),
        (11, R(10)),
        (10, R(10)),
        (9, R(8)),
        (8, R(8)),
        (7, None),
        (6, None),
        (5, R(4)),
        (4, R(4)),
        (3, None),  # compacted at 4 below: revision 2 is gone
        (2, None),
        (1, None),
        (0, None),
    ],
)
def test_get_after_compaction_matches_etcd(at: int, expected: R | None) -> None:
    """etcd TestKeyIndexGet: after compact(4), each revision reads what it did before."""
    ki = etcd_test_key_index()
    assert ki.compact(4) == [R(2)]
    assert ki.get(at) == expected


def test_get_before_any_compaction_sees_the_first_version() -> None:
    ki = etcd_test_key_index()
    assert ki.get(2) == R(2)
    assert ki.get(3) == R(2)


@pytest.mark.parametrize(
    ("at", "removed", "generations"),
    [
        (1, [], [[R(2), R(4), T(6)], [R(8), R(10), T(12)], [R(14, 0), R(14, 1), T(16)], []]),
        (2, [], [[R(2), R(4), T(6)], [R(8), R(10), T(12)], [R(14, 0), R(14, 1), T(16)], []]),
        (5, [R(2)], [[R(4), T(6)], [R(8), R(10), T(12)], [R(14, 0), R(14, 1), T(16)], []]),
        # a tombstone at or before the compaction revision takes its generation with it
        (6, [R(2), R(4), T(6)], [[R(8), R(10), T(12)], [R(14, 0), R(14, 1), T(16)], []]),
        (7, [R(2), R(4), T(6)], [[R(8), R(10), T(12)], [R(14, 0), R(14, 1), T(16)], []]),
        (11, [R(2), R(4), T(6), R(8)], [[R(10), T(12)], [R(14, 0), R(14, 1), T(16)], []]),
        (
            14,
            [R(2), R(4), T(6), R(8), R(10), T(12), R(14, 0)],
            [[R(14, 1), T(16)], []],
        ),
        (
            16,
            [R(2), R(4), T(6), R(8), R(10), T(12), R(14, 0), R(14, 1), T(16)],
            [[]],
        ),
    ],
)
def test_compact_keeps_the_version_visible_at_the_compaction_revision(
    at: int, removed: list[R], generations: list[list[R]]
) -> None:
    ki = etcd_test_key_index()
    assert ki.compact(at) == removed
    assert ki.generations == generations
    assert (not ki) == (generations == [[]])


def test_compact_of_a_live_key_keeps_its_latest_version() -> None:
    ki = KeyIndex()
    for main in (2, 3, 4):
        ki.put(R(main, key=b"k"))
    assert ki.compact(10) == [R(2, key=b"k"), R(3, key=b"k")]
    assert ki.generations == [[R(4, key=b"k")]]
    assert ki.get(10) == R(4, key=b"k")
    assert ki


def test_tombstone_of_a_deleted_key_is_a_bug() -> None:
    ki = KeyIndex()
    with pytest.raises(AssertionError):
        ki.tombstone(T(2, b"k"))


def test_tree_scan_is_key_ordered_and_half_open() -> None:
    tree = TreeIndex()
    for i, key in enumerate([b"b", b"a", b"c", b"ab", b"d"]):
        tree.put(R(i + 2, key=key))
    assert [ki.key for ki in tree.scan(b"a", b"c")] == [b"a", b"ab", b"b"]
    assert [ki.key for ki in tree.scan(b"b", None)] == [b"b", b"c", b"d"]
    assert list(tree.scan(b"c", b"a")) == []
    assert list(tree.scan(b"c", b"c")) == []


def test_tree_compact_drops_keys_without_history() -> None:
    tree = TreeIndex()
    tree.put(R(2, key=b"gone"))
    tree.tombstone(T(3, b"gone"))
    tree.put(R(4, key=b"kept"))
    assert tree.compact(4) == [R(2, key=b"gone"), T(3, b"gone")]
    assert tree.key_index(b"gone") is None
    assert tree.key_index(b"kept") is not None
    assert len(tree) == 1


def test_a_key_with_one_version_is_entered_bare_and_one_with_more_as_a_list() -> None:
    """The tree's entry for a key is the ``KeyValue`` itself while it has one version; a
    second change makes it a ``KeyIndex``; taking back or compacting away all but one
    version makes it bare again. Reads see no difference."""
    tree = TreeIndex()
    a2, a3, b4 = R(2, key=b"a"), R(3, key=b"a"), R(4, key=b"b")
    tree.put(a2)
    assert tree._keys[b"a"] is a2
    assert tree.key_index(b"a") == [a2]
    tree.put(a3)
    assert type(tree._keys[b"a"]) is KeyIndex
    assert tree._keys[b"a"] == [a2, a3]
    tree.revert(a3)
    assert tree._keys[b"a"] is a2
    tree.put(a3)
    tree.put(b4)
    gone = T(5, b"b")
    tree.tombstone(gone)
    assert tree._keys[b"b"] == [b4, gone]
    assert (tree.live, tree.get(b"b", 4), tree.get(b"b", 5)) == (1, b4, None)
    assert tree.compact(3) == [a2]
    assert tree._keys[b"a"] is a3
    assert tree.get(b"a", 3) is a3
    assert tree.latest(b"a") is a3
    assert tree.latest(b"b") is None
    assert list(tree.visible(4, b"a", None)) == [a3, b4]
    assert list(tree.visible(9, b"a", None, reverse=True)) == [a3]
    assert tree.compact(5) == [b4, gone]
    assert tree.key_index(b"b") is None
    assert (len(tree), tree.live) == (1, 1)
