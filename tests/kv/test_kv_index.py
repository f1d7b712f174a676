"""The key index (etcd's keyIndex/treeIndex): generations, reads at a revision, compaction.

The fixtures follow etcd's ``mvcc/key_index_test.go``.
"""

from __future__ import annotations

import pytest

from discoverd.kv.index import KeyIndex, TreeIndex
from discoverd.kv.revision import Revision as R


def etcd_test_key_index() -> KeyIndex:
    """etcd's ``newTestKeyIndex``: three generations, the last one currently deleted.

    {{2}, {4}, {6}(t)} {{8}, {10}, {12}(t)} {{14,0}, {14,1}, {16}(t)} {}
    """
    ki = KeyIndex(b"foo")
    ki.put(R(2))
    ki.put(R(4))
    ki.tombstone(R(6))
    ki.put(R(8))
    ki.put(R(10))
    ki.tombstone(R(12))
    ki.put(R(14, 0))
    ki.put(R(14, 1))
    ki.tombstone(R(16))
    return ki


def test_generations_are_split_by_tombstones() -> None:
    ki = etcd_test_key_index()
    assert ki.generations == [
        [R(2), R(4), R(6)],
        [R(8), R(10), R(12)],
        [R(14, 0), R(14, 1), R(16)],
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
        (1, [], [[R(2), R(4), R(6)], [R(8), R(10), R(12)], [R(14, 0), R(14, 1), R(16)], []]),
        (2, [], [[R(2), R(4), R(6)], [R(8), R(10), R(12)], [R(14, 0), R(14, 1), R(16)], []]),
        (5, [R(2)], [[R(4), R(6)], [R(8), R(10), R(12)], [R(14, 0), R(14, 1), R(16)], []]),
        # a tombstone at or before the compaction revision takes its generation with it
        (6, [R(2), R(4), R(6)], [[R(8), R(10), R(12)], [R(14, 0), R(14, 1), R(16)], []]),
        (7, [R(2), R(4), R(6)], [[R(8), R(10), R(12)], [R(14, 0), R(14, 1), R(16)], []]),
        (11, [R(2), R(4), R(6), R(8)], [[R(10), R(12)], [R(14, 0), R(14, 1), R(16)], []]),
        (
            14,
            [R(2), R(4), R(6), R(8), R(10), R(12), R(14, 0)],
            [[R(14, 1), R(16)], []],
        ),
        (
            16,
            [R(2), R(4), R(6), R(8), R(10), R(12), R(14, 0), R(14, 1), R(16)],
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
    assert ki.is_empty() == (generations == [[]])


def test_compact_of_a_live_key_keeps_its_latest_version() -> None:
    ki = KeyIndex(b"k")
    for main in (2, 3, 4):
        ki.put(R(main))
    assert ki.compact(10) == [R(2), R(3)]
    assert ki.generations == [[R(4)]]
    assert ki.get(10) == R(4)
    assert not ki.is_empty()


def test_tombstone_of_a_deleted_key_is_a_bug() -> None:
    ki = KeyIndex(b"k")
    with pytest.raises(AssertionError):
        ki.tombstone(R(2))


def test_tree_scan_is_key_ordered_and_half_open() -> None:
    tree = TreeIndex()
    for i, key in enumerate([b"b", b"a", b"c", b"ab", b"d"]):
        tree.put(key, R(i + 2))
    assert [ki.key for ki in tree.scan(b"a", b"c")] == [b"a", b"ab", b"b"]
    assert [ki.key for ki in tree.scan(b"b", None)] == [b"b", b"c", b"d"]
    assert list(tree.scan(b"c", b"a")) == []
    assert list(tree.scan(b"c", b"c")) == []


def test_tree_compact_drops_keys_without_history() -> None:
    tree = TreeIndex()
    tree.put(b"gone", R(2))
    tree.tombstone(b"gone", R(3))
    tree.put(b"kept", R(4))
    assert tree.compact(4) == [R(2), R(3)]
    assert tree.key_index(b"gone") is None
    assert tree.key_index(b"kept") is not None
    assert len(tree) == 1
