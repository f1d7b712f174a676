"""MvccStore: revisions, range, put, delete_range, compaction, history, snapshots, size.

Each test names the etcd v3.4 behaviour it pins down.
"""

from __future__ import annotations

import pytest
from kv_helpers import delete, get, one, prefix_end, put

from discoverd.errors import (
    ClientError,
    Compacted,
    CorruptData,
    EmptyKey,
    FutureRevision,
    KeyNotFound,
    LeaseNotFound,
    LeaseProvided,
    ValueProvided,
)
from discoverd.kv import (
    CompactionRequest,
    DeleteRangeRequest,
    EventType,
    KeyValue,
    MvccStore,
    PutRequest,
    RangeRequest,
    SortOrder,
    SortTarget,
)

COMPACTED = "mvcc: required revision has been compacted"
FUTURE = "mvcc: required revision is a future revision"


@pytest.fixture
def foos() -> MvccStore:
    """etcd's "Read keys" walkthrough: foo=bar foo1=bar1 foo2=bar2 foo3=bar3 (revs 2..5)."""
    store = MvccStore()
    for key, value in [
        (b"foo", b"bar"),
        (b"foo1", b"bar1"),
        (b"foo2", b"bar2"),
        (b"foo3", b"bar3"),
    ]:
        put(store, key, value)
    return store


# -- revisions --------------------------------------------------------------------------------


def test_an_empty_store_is_at_revision_1_and_the_first_write_makes_2() -> None:
    store = MvccStore()
    assert store.revision == 1
    assert store.range(RangeRequest(b"foo")).header_revision == 1
    assert put(store, b"foo", b"bar") == 2
    assert store.revision == 2


def test_every_put_bumps_the_revision_even_with_the_same_value() -> None:
    store = MvccStore()
    assert [put(store, b"k", b"v") for _ in range(3)] == [2, 3, 4]
    kv = one(store, b"k")
    assert kv == KeyValue(b"k", b"v", create_revision=2, mod_revision=4, version=3)


def test_a_delete_that_deletes_nothing_keeps_the_revision() -> None:
    store = MvccStore()
    put(store, b"a", b"1")
    response, events = store.delete_range(DeleteRangeRequest(b"missing"))
    assert (response.header_revision, response.deleted, events) == (2, 0, [])
    assert store.revision == 2


def test_a_delete_range_is_one_revision_with_increasing_sub_revisions(foos: MvccStore) -> None:
    response, events = foos.delete_range(DeleteRangeRequest(b"foo", prefix_end(b"foo")))
    assert response.deleted == 4
    assert response.header_revision == 6 == foos.revision
    assert [(e.type, e.kv.key, e.kv.mod_revision) for e in events] == [
        (EventType.DELETE, b"foo", 6),
        (EventType.DELETE, b"foo1", 6),
        (EventType.DELETE, b"foo2", 6),
        (EventType.DELETE, b"foo3", 6),
    ]
    assert [e.prev_kv.value for e in events if e.prev_kv] == [b"bar", b"bar1", b"bar2", b"bar3"]
    assert all(e.kv.create_revision == 0 and e.kv.version == 0 for e in events)


# -- range: keys and ranges (etcdctl get) -----------------------------------------------------


def test_get_a_single_key(foos: MvccStore) -> None:
    assert get(foos, b"foo") == [(b"foo", b"bar")]
    assert get(foos, b"nope") == []


def test_get_a_range_is_half_open(foos: MvccStore) -> None:
    """etcdctl get foo foo3 → foo, foo1, foo2."""
    assert [k for k, _ in get(foos, b"foo", range_end=b"foo3")] == [b"foo", b"foo1", b"foo2"]


def test_get_prefix(foos: MvccStore) -> None:
    put(foos, b"fop", b"not-a-foo")
    assert [k for k, _ in get(foos, b"foo", range_end=prefix_end(b"foo"))] == [
        b"foo",
        b"foo1",
        b"foo2",
        b"foo3",
    ]


def test_get_prefix_with_limit_reports_more_and_the_full_count(foos: MvccStore) -> None:
    """etcdctl get --prefix --limit=2 foo → foo, foo1."""
    response = foos.range(RangeRequest(b"foo", prefix_end(b"foo"), limit=2))
    assert [kv.key for kv in response.kvs] == [b"foo", b"foo1"]
    assert response.more is True
    assert response.count == 4
    exact = foos.range(RangeRequest(b"foo", prefix_end(b"foo"), limit=4))
    assert (len(exact.kvs), exact.more, exact.count) == (4, False, 4)


def test_get_from_key(foos: MvccStore) -> None:
    """etcdctl get --from-key foo1 → range_end "\\0": every key >= foo1."""
    put(foos, b"zzz", b"last")
    keys = [k for k, _ in get(foos, b"foo1", range_end=b"\x00")]
    assert keys == [b"foo1", b"foo2", b"foo3", b"zzz"]


def test_key_zero_with_range_end_zero_is_every_key(foos: MvccStore) -> None:
    put(foos, b"\x01", b"low")
    assert len(get(foos, b"\x00", range_end=b"\x00")) == 5


def test_a_range_end_not_after_the_key_is_empty(foos: MvccStore) -> None:
    assert get(foos, b"foo2", range_end=b"foo1") == []
    assert get(foos, b"foo2", range_end=b"foo2") == []


def test_get_past_revisions() -> None:
    """etcd's "Read past version of keys" walkthrough."""
    store = MvccStore()
    put(store, b"foo", b"bar")  # 2
    put(store, b"foo1", b"bar1")  # 3
    put(store, b"foo", b"bar_new")  # 4
    put(store, b"foo1", b"bar1_new")  # 5
    prefix = prefix_end(b"foo")
    assert get(store, b"foo", range_end=prefix) == [(b"foo", b"bar_new"), (b"foo1", b"bar1_new")]
    assert get(store, b"foo", range_end=prefix, revision=4) == [
        (b"foo", b"bar_new"),
        (b"foo1", b"bar1"),
    ]
    assert get(store, b"foo", range_end=prefix, revision=3) == [
        (b"foo", b"bar"),
        (b"foo1", b"bar1"),
    ]
    assert get(store, b"foo", range_end=prefix, revision=2) == [(b"foo", b"bar")]
    assert get(store, b"foo", range_end=prefix, revision=1) == []
    # the header is the store's revision, whatever revision was read
    assert store.range(RangeRequest(b"foo", revision=2)).header_revision == 5


def test_a_negative_revision_reads_the_current_one(foos: MvccStore) -> None:
    assert get(foos, b"foo", revision=-3) == [(b"foo", b"bar")]


def test_a_future_revision_is_an_error(foos: MvccStore) -> None:
    with pytest.raises(FutureRevision, match=FUTURE):
        foos.range(RangeRequest(b"foo", revision=6))
    assert isinstance(FutureRevision(), ClientError)


def test_the_empty_key_is_refused() -> None:
    store = MvccStore()
    with pytest.raises(EmptyKey, match="etcdserver: key is not provided"):
        store.range(RangeRequest(b""))
    with pytest.raises(EmptyKey):
        store.put(PutRequest(b"", b"v"))
    with pytest.raises(EmptyKey):
        store.delete_range(DeleteRangeRequest(b""))
    assert store.revision == 1


def test_an_unknown_sort_option_is_refused(foos: MvccStore) -> None:
    with pytest.raises(ClientError, match="etcdserver: invalid sort option"):
        foos.range(RangeRequest(b"foo", sort_order=7))  # type: ignore[arg-type]
    with pytest.raises(ClientError, match="etcdserver: invalid sort option"):
        foos.range(RangeRequest(b"foo", sort_target=9))  # type: ignore[arg-type]


# -- range: sorting, keys_only, count_only, filters -------------------------------------------


@pytest.fixture
def sortable() -> MvccStore:
    """c (created 2, version 3), a (created 3, version 1), b (created 4, version 2)."""
    store = MvccStore()
    put(store, b"c", b"1")  # 2
    put(store, b"a", b"3")  # 3
    put(store, b"b", b"2")  # 4
    put(store, b"c", b"1")  # 5
    put(store, b"b", b"2")  # 6
    put(store, b"c", b"0")  # 7
    return store


def _keys(store: MvccStore, **options: object) -> list[bytes]:
    return [k for k, _ in get(store, b"a", range_end=b"\x00", **options)]


def test_sort_none_is_key_order(sortable: MvccStore) -> None:
    assert _keys(sortable) == [b"a", b"b", b"c"]


@pytest.mark.parametrize(
    ("target", "ascending"),
    [
        (SortTarget.KEY, [b"a", b"b", b"c"]),
        (SortTarget.VERSION, [b"a", b"b", b"c"]),
        (SortTarget.CREATE, [b"c", b"a", b"b"]),
        (SortTarget.MOD, [b"a", b"b", b"c"]),
        (SortTarget.VALUE, [b"c", b"b", b"a"]),
    ],
)
def test_sort_by_every_target_both_ways(
    sortable: MvccStore, target: SortTarget, ascending: list[bytes]
) -> None:
    assert _keys(sortable, sort_target=target, sort_order=SortOrder.ASCEND) == ascending
    assert _keys(sortable, sort_target=target, sort_order=SortOrder.DESCEND) == ascending[::-1]


def test_a_sort_target_without_an_order_sorts_ascending(sortable: MvccStore) -> None:
    """etcd: SortOrder NONE with a target other than KEY means ASCEND."""
    assert _keys(sortable, sort_target=SortTarget.CREATE) == [b"c", b"a", b"b"]


def test_sort_ties_stay_in_key_order() -> None:
    store = MvccStore()
    for key in (b"b", b"a", b"c"):
        put(store, key, b"same")
    assert _keys(store, sort_target=SortTarget.VALUE, sort_order=SortOrder.ASCEND) == [
        b"a",
        b"b",
        b"c",
    ]
    assert _keys(store, sort_target=SortTarget.VALUE, sort_order=SortOrder.DESCEND) == [
        b"a",
        b"b",
        b"c",
    ]


def test_sort_then_limit_takes_the_first_after_sorting(sortable: MvccStore) -> None:
    """etcdctl get --prefix --sort-by=MODIFY --order=DESCEND --limit=1: the newest key."""
    response = sortable.range(
        RangeRequest(
            b"a", b"\x00", limit=1, sort_target=SortTarget.MOD, sort_order=SortOrder.DESCEND
        )
    )
    assert [kv.key for kv in response.kvs] == [b"c"]
    assert (response.more, response.count) == (True, 3)


def test_keys_only_blanks_values(foos: MvccStore) -> None:
    response = foos.range(RangeRequest(b"foo", prefix_end(b"foo"), keys_only=True))
    assert [kv.value for kv in response.kvs] == [b""] * 4
    assert response.kvs[0].mod_revision == 2
    assert get(foos, b"foo") == [(b"foo", b"bar")]  # stored values untouched


def test_count_only_returns_no_kvs(foos: MvccStore) -> None:
    response = foos.range(RangeRequest(b"foo", prefix_end(b"foo"), count_only=True, limit=1))
    assert (response.kvs, response.count, response.more) == ((), 4, False)


def test_revision_filters_apply_after_counting(foos: MvccStore) -> None:
    """etcd 3.4 prunes min/max mod/create revision after fetching: count is unfiltered."""
    put(foos, b"foo", b"again")  # foo: create 2, mod 6
    prefix = prefix_end(b"foo")
    response = foos.range(RangeRequest(b"foo", prefix, min_mod_revision=4))
    assert [kv.key for kv in response.kvs] == [b"foo", b"foo2", b"foo3"]
    assert response.count == 4
    assert _filtered(foos, max_mod_revision=3) == [b"foo1"]
    assert _filtered(foos, min_create_revision=3) == [b"foo1", b"foo2", b"foo3"]
    assert _filtered(foos, max_create_revision=3) == [b"foo", b"foo1"]
    assert _filtered(foos, min_create_revision=3, max_create_revision=4) == [b"foo1", b"foo2"]


def _filtered(store: MvccStore, **filters: int) -> list[bytes]:
    response = store.range(RangeRequest(b"foo", prefix_end(b"foo"), **filters))  # type: ignore[arg-type]
    return [kv.key for kv in response.kvs]


def test_limit_counts_after_the_filters(foos: MvccStore) -> None:
    response = foos.range(RangeRequest(b"foo", prefix_end(b"foo"), min_mod_revision=3, limit=2))
    assert [kv.key for kv in response.kvs] == [b"foo1", b"foo2"]
    assert (response.more, response.count) == (True, 4)
    last = foos.range(RangeRequest(b"foo", prefix_end(b"foo"), min_mod_revision=4, limit=2))
    assert (len(last.kvs), last.more) == (2, False)


# -- put ----------------------------------------------------------------------------------------


def test_put_versions_and_create_revision_restart_after_delete() -> None:
    store = MvccStore()
    put(store, b"k", b"1")  # 2
    put(store, b"k", b"2")  # 3
    delete(store, b"k")  # 4
    put(store, b"k", b"3")  # 5
    assert one(store, b"k") == KeyValue(b"k", b"3", create_revision=5, mod_revision=5, version=1)
    assert one(store, b"k", revision=3) == KeyValue(b"k", b"2", 2, 3, 2)
    assert one(store, b"k", revision=4) is None


def test_put_prev_kv_and_events() -> None:
    store = MvccStore()
    first, events = store.put(PutRequest(b"k", b"1", prev_kv=True))
    assert first.prev_kv is None
    assert events[0].type == EventType.PUT
    assert events[0].prev_kv is None
    second, events = store.put(PutRequest(b"k", b"2", prev_kv=True))
    assert second.prev_kv == KeyValue(b"k", b"1", 2, 2, 1)
    assert events[0].kv == KeyValue(b"k", b"2", 2, 3, 2)
    assert events[0].prev_kv == second.prev_kv
    third, _ = store.put(PutRequest(b"k", b"3"))
    assert third.prev_kv is None  # only when asked


def test_put_records_the_lease() -> None:
    store = MvccStore()
    put(store, b"k", b"v", lease=7)
    kv = one(store, b"k")
    assert kv is not None
    assert kv.lease == 7
    put(store, b"k", b"w")
    kv = one(store, b"k")
    assert kv is not None
    assert kv.lease == 0


def test_ignore_value_keeps_the_value_and_ignore_lease_the_lease() -> None:
    store = MvccStore()
    put(store, b"k", b"v", lease=7)
    store.put(PutRequest(b"k", ignore_value=True, lease=9))
    assert one(store, b"k") == KeyValue(b"k", b"v", 2, 3, 2, lease=9)
    store.put(PutRequest(b"k", b"w", ignore_lease=True))
    assert one(store, b"k") == KeyValue(b"k", b"w", 2, 4, 3, lease=9)


def test_ignore_flags_on_a_missing_key_are_key_not_found() -> None:
    store = MvccStore()
    with pytest.raises(KeyNotFound, match="etcdserver: key not found"):
        store.put(PutRequest(b"k", ignore_value=True))
    with pytest.raises(KeyNotFound):
        store.put(PutRequest(b"k", b"v", ignore_lease=True))
    put(store, b"k", b"v")
    delete(store, b"k")
    with pytest.raises(KeyNotFound):
        store.put(PutRequest(b"k", ignore_value=True))
    assert store.revision == 3


def test_ignore_flags_with_a_value_or_lease_are_refused() -> None:
    store = MvccStore()
    put(store, b"k", b"v")
    with pytest.raises(ValueProvided, match="etcdserver: value is provided"):
        store.put(PutRequest(b"k", b"x", ignore_value=True))
    with pytest.raises(LeaseProvided, match="etcdserver: lease is provided"):
        store.put(PutRequest(b"k", b"x", lease=5, ignore_lease=True))
    assert store.revision == 2


def test_lease_exists_hook_refuses_unknown_leases() -> None:
    store = MvccStore()
    with pytest.raises(LeaseNotFound, match="etcdserver: requested lease not found"):
        store.put(PutRequest(b"k", b"v", lease=5), lease_exists=lambda lease: lease == 6)
    response, _ = store.put(PutRequest(b"k", b"v", lease=6), lease_exists=lambda lease: lease == 6)
    assert response.header_revision == 2


# -- delete_range -------------------------------------------------------------------------------


def test_delete_range_prev_kvs_only_when_asked(foos: MvccStore) -> None:
    plain, _ = foos.delete_range(DeleteRangeRequest(b"foo1"))
    assert (plain.deleted, plain.prev_kvs, plain.header_revision) == (1, (), 6)
    asked, _ = foos.delete_range(DeleteRangeRequest(b"foo2", b"\x00", prev_kv=True))
    assert asked.deleted == 2
    assert [kv.key for kv in asked.prev_kvs] == [b"foo2", b"foo3"]
    assert get(foos, b"\x00", range_end=b"\x00") == [(b"foo", b"bar")]


def test_delete_keys_is_one_revision_for_any_number_of_keys() -> None:
    store = MvccStore(max_txn_ops=2)
    for i in range(10):
        put(store, b"k%d" % i, b"v")
    revision, events = store.delete_keys([b"k%d" % i for i in range(10)] + [b"missing"])
    assert revision == 12 == store.revision
    assert len(events) == 10
    assert [e.kv.mod_revision for e in events] == [12] * 10
    assert store.delete_keys([b"missing"]) == (12, [])


# -- compaction ---------------------------------------------------------------------------------


def test_compaction_walkthrough() -> None:
    """etcdctl compact 5; etcdctl get --rev=4 foo → compacted."""
    store = MvccStore()
    for i in range(2, 8):
        put(store, b"foo", b"v%d" % i)
    response = store.compact(CompactionRequest(5))
    assert response.header_revision == 7
    assert store.compact_revision == 5
    with pytest.raises(Compacted, match=COMPACTED):
        store.range(RangeRequest(b"foo", revision=4))
    assert get(store, b"foo", revision=5) == [(b"foo", b"v5")]  # the compaction point reads
    assert get(store, b"foo", revision=6) == [(b"foo", b"v6")]
    assert get(store, b"foo") == [(b"foo", b"v7")]


def test_compaction_keeps_live_keys_and_drops_deleted_ones() -> None:
    store = MvccStore()
    put(store, b"live", b"old")  # 2
    put(store, b"dead", b"x")  # 3
    put(store, b"live", b"new")  # 4
    delete(store, b"dead")  # 5
    put(store, b"late", b"y")  # 6
    before = {rev: get(store, b"\x00", range_end=b"\x00", revision=rev) for rev in (5, 6)}
    store.compact(CompactionRequest(5))
    for rev, expected in before.items():
        assert get(store, b"\x00", range_end=b"\x00", revision=rev) == expected
    assert [v[2] for v in store.to_obj()["versions"]] == [b"live", b"late"]


def test_compacting_the_same_or_an_older_revision_is_an_error() -> None:
    store = MvccStore()
    for _ in range(5):
        put(store, b"k", b"v")
    store.compact(CompactionRequest(4))
    with pytest.raises(Compacted, match=COMPACTED):
        store.compact(CompactionRequest(4))
    with pytest.raises(Compacted):
        store.compact(CompactionRequest(3))
    with pytest.raises(FutureRevision, match=FUTURE):
        store.compact(CompactionRequest(7))
    store.compact(CompactionRequest(6))
    assert store.compact_revision == 6


def test_a_fresh_store_reports_compact_revision_0() -> None:
    store = MvccStore()
    assert store.compact_revision == 0
    store.compact(CompactionRequest(1))
    assert store.compact_revision == 1
    assert store.range(RangeRequest(b"k", revision=1)).kvs == ()


# -- history (for watches) --------------------------------------------------------------------


def test_history_replays_every_change_with_prev_kv() -> None:
    store = MvccStore()
    put(store, b"a", b"1")  # 2
    put(store, b"a", b"2")  # 3
    delete(store, b"a")  # 4
    put(store, b"a", b"3")  # 5
    events = store.history(3)
    assert [(e.type, e.kv.mod_revision, e.kv.value) for e in events] == [
        (EventType.PUT, 3, b"2"),
        (EventType.DELETE, 4, b""),
        (EventType.PUT, 5, b"3"),
    ]
    assert [e.prev_kv.value if e.prev_kv else None for e in events] == [b"1", b"2", None]
    assert [e.kv.mod_revision for e in store.history(3, 4)] == [3, 4]


def test_history_of_an_empty_window_is_empty() -> None:
    store = MvccStore()
    put(store, b"a", b"1")
    assert store.history(3) == []
    assert store.history(2, 1) == []


def test_history_matches_the_events_the_writes_returned() -> None:
    store = MvccStore()
    live = []
    live += store.put(PutRequest(b"a", b"1"))[1]
    live += store.put(PutRequest(b"b", b"1"))[1]
    live += store.delete_range(DeleteRangeRequest(b"a", b"\x00"))[1]
    live += store.put(PutRequest(b"a", b"2"))[1]
    assert store.history(1) == live


def test_history_from_the_compaction_revision_is_refused() -> None:
    store = MvccStore()
    put(store, b"a", b"1")
    delete(store, b"a")  # 3: this tombstone is gone after compact(3)
    store.compact(CompactionRequest(3))
    with pytest.raises(Compacted):
        store.history(3)
    assert store.history(4) == []


# -- size ---------------------------------------------------------------------------------------


def test_size_counts_every_kept_version_and_compaction_lowers_it() -> None:
    store = MvccStore()
    assert store.size_bytes == 0
    put(store, b"key", b"12345")  # 8
    put(store, b"key", b"1234567")  # 10
    delete(store, b"key")  # tombstone: 3
    assert store.size_bytes == 21
    store.compact(CompactionRequest(store.revision))
    assert store.size_bytes == 0


# -- snapshots ----------------------------------------------------------------------------------


def _populated() -> MvccStore:
    store = MvccStore()
    put(store, b"a", b"1", lease=3)
    put(store, b"b", b"2")
    put(store, b"a", b"3")
    delete(store, b"b")
    put(store, b"b", b"4")
    store.compact(CompactionRequest(3))
    put(store, b"c", b"5")
    return store


def test_snapshot_round_trip_keeps_everything() -> None:
    store = _populated()
    copy = MvccStore.from_obj(store.to_obj())
    assert copy.to_obj() == store.to_obj()
    assert repr(copy) == repr(store)
    for rev in range(3, store.revision + 1):
        assert get(copy, b"\x00", range_end=b"\x00", revision=rev) == get(
            store, b"\x00", range_end=b"\x00", revision=rev
        )
    with pytest.raises(Compacted):
        copy.range(RangeRequest(b"a", revision=2))
    assert copy.history(4) == store.history(4)
    # and it keeps working identically
    assert put(copy, b"a", b"x") == put(store, b"a", b"x")
    assert copy.to_obj() == store.to_obj()


def test_snapshot_is_plain_data() -> None:
    def plain(value: object) -> bool:
        if isinstance(value, dict):
            return all(isinstance(k, str) and plain(v) for k, v in value.items())
        if isinstance(value, list):
            return all(plain(v) for v in value)
        return type(value) in (int, bytes)

    assert plain(_populated().to_obj())


def test_restore_replaces_the_state_in_place() -> None:
    store = _populated()
    other = MvccStore()
    put(other, b"zzz", b"gone")
    other.restore(store.to_obj())
    assert other.to_obj() == store.to_obj()
    assert get(other, b"zzz") == []


@pytest.mark.parametrize(
    "mutate",
    [
        lambda o: o.update(format=99),
        lambda o: o.pop("versions"),
        lambda o: o.update(revision="7"),
        lambda o: o.update(revision=2),  # versions beyond the revision
        lambda o: o["versions"].reverse(),  # out of order
        lambda o: o["versions"].append([99, 0, b"b", b"", 0, 0, 0]),  # past the revision
        lambda o: o["versions"].insert(0, [1, 0, b"x", b"", 0, 0, 0]),  # tombstone, no key
        lambda o: o["versions"].append([8, 0, b"q", b"v", 8]),  # short record
        lambda o: o["versions"].append([8, 0, b"", b"v", 8, 1, 0]),  # empty key
    ],
)
def test_restore_refuses_a_malformed_image_and_changes_nothing(mutate: object) -> None:
    image = _populated().to_obj()
    image["versions"] = [list(v) for v in image["versions"]]
    image["revision"] = 8
    mutate(image)  # type: ignore[operator]
    store = MvccStore()
    put(store, b"keep", b"me")
    with pytest.raises(CorruptData):
        store.restore(image)
    assert get(store, b"keep") == [(b"keep", b"me")]
    assert store.revision == 2
