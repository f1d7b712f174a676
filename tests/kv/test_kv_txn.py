"""Transactions: compares, branches, nesting, reads of own writes, and etcd's refusals."""

from __future__ import annotations

import pytest
from kv_helpers import delete, get, one, put

from discoverd.errors import (
    Compacted,
    DuplicateKey,
    EmptyKey,
    FutureRevision,
    KeyNotFound,
    LeaseNotFound,
    LeaseProvided,
    TooManyOps,
)
from discoverd.kv import (
    CompactionRequest,
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    EventType,
    KeyValue,
    MvccStore,
    PutRequest,
    RangeRequest,
    RequestOp,
    TxnRequest,
)
from discoverd.kv.txn import compare_holds, has_writes

EQ, NE, GT, LT = (
    CompareResult.EQUAL,
    CompareResult.NOT_EQUAL,
    CompareResult.GREATER,
    CompareResult.LESS,
)
V, C, M, VAL, L = (
    CompareTarget.VERSION,
    CompareTarget.CREATE,
    CompareTarget.MOD,
    CompareTarget.VALUE,
    CompareTarget.LEASE,
)


def op_put(key: bytes, value: bytes = b"v", **kw: object) -> RequestOp:
    return RequestOp.of(PutRequest(key, value, **kw))  # type: ignore[arg-type]


def op_get(key: bytes, range_end: bytes = b"", **kw: object) -> RequestOp:
    return RequestOp.of(RangeRequest(key, range_end, **kw))  # type: ignore[arg-type]


def op_del(key: bytes, range_end: bytes = b"", **kw: object) -> RequestOp:
    return RequestOp.of(DeleteRangeRequest(key, range_end, **kw))  # type: ignore[arg-type]


def op_txn(
    compare: list[Compare], success: list[RequestOp], failure: list[RequestOp] | None = None
) -> RequestOp:
    return RequestOp.of(TxnRequest(compare, success, failure or []))


@pytest.fixture
def store() -> MvccStore:
    """k: value "v2", created 2, mod 3, version 2, lease 7.  (revision 3)"""
    s = MvccStore()
    put(s, b"k", b"v1", lease=7)
    put(s, b"k", b"v2", lease=7)
    return s


# -- compares -----------------------------------------------------------------------------------

CASES = [
    # (target, result, field, operand, holds on k)
    (V, EQ, "version", 2, True),
    (V, GT, "version", 1, True),
    (V, LT, "version", 2, False),
    (V, NE, "version", 2, False),
    (C, EQ, "create_revision", 2, True),
    (C, LT, "create_revision", 3, True),
    (M, EQ, "mod_revision", 3, True),
    (M, GT, "mod_revision", 3, False),
    (M, NE, "mod_revision", 2, True),
    (VAL, EQ, "value", b"v2", True),
    (VAL, GT, "value", b"v1", True),
    (VAL, LT, "value", b"v3", True),
    (VAL, NE, "value", b"v2", False),
    (L, EQ, "lease", 7, True),
    (L, GT, "lease", 0, True),
    (L, NE, "lease", 7, False),
]


@pytest.mark.parametrize(("target", "result", "field", "operand", "holds"), CASES)
def test_compare_every_target_and_result(
    store: MvccStore,
    target: CompareTarget,
    result: CompareResult,
    field: str,
    operand: int | bytes,
    holds: bool,
) -> None:
    cmp = Compare(b"k", target, result, **{field: operand})  # type: ignore[arg-type]
    response, _ = store.txn(TxnRequest([cmp], [op_get(b"k")], [op_get(b"nope")]))
    assert response.succeeded is holds


@pytest.mark.parametrize(
    ("cmp", "holds"),
    [
        (Compare(b"missing", V, EQ, version=0), True),
        (Compare(b"missing", C, EQ, create_revision=0), True),
        (Compare(b"missing", M, EQ, mod_revision=0), True),
        (Compare(b"missing", L, EQ, lease=0), True),
        (Compare(b"missing", M, LT, mod_revision=5), True),
        (Compare(b"missing", V, GT, version=0), False),
        # a VALUE compare on a missing key is false, whatever the operator
        (Compare(b"missing", VAL, EQ, value=b""), False),
        (Compare(b"missing", VAL, NE, value=b"x"), False),
        (Compare(b"missing", VAL, LT, value=b"x"), False),
    ],
)
def test_compare_on_a_missing_key(store: MvccStore, cmp: Compare, holds: bool) -> None:
    response, _ = store.txn(TxnRequest([cmp]))
    assert response.succeeded is holds


def test_compare_over_a_range_needs_every_key(store: MvccStore) -> None:
    put(store, b"k2", b"v")  # version 1
    every = Compare(b"k", V, GT, range_end=b"l", version=0)
    some = Compare(b"k", V, GT, range_end=b"l", version=1)
    from_key = Compare(b"k", V, EQ, range_end=b"\x00", version=2)
    empty_range = Compare(b"x", V, EQ, range_end=b"y", version=0)
    empty_value = Compare(b"x", VAL, EQ, range_end=b"y", value=b"")
    assert store.txn(TxnRequest([every]))[0].succeeded
    assert not store.txn(TxnRequest([some]))[0].succeeded
    assert not store.txn(TxnRequest([from_key]))[0].succeeded
    assert store.txn(TxnRequest([empty_range]))[0].succeeded
    assert not store.txn(TxnRequest([empty_value]))[0].succeeded


def test_all_compares_must_hold(store: MvccStore) -> None:
    good, bad = Compare(b"k", V, EQ, version=2), Compare(b"k", V, EQ, version=3)
    assert store.txn(TxnRequest([good, good]))[0].succeeded
    assert not store.txn(TxnRequest([good, bad]))[0].succeeded
    assert store.txn(TxnRequest([]))[0].succeeded  # no compare: success


def test_compare_holds_is_pure() -> None:
    kv = KeyValue(b"a", b"x", 2, 3, 1, 0)
    assert compare_holds(Compare(b"a", VAL, EQ, value=b"x"), [kv])
    assert not compare_holds(Compare(b"a", VAL, EQ, value=b"x"), [])


# -- branches and revisions ---------------------------------------------------------------------


def test_a_txn_is_one_revision_with_sub_revisions(store: MvccStore) -> None:
    response, events = store.txn(
        TxnRequest(
            [Compare(b"k", VAL, EQ, value=b"v2")],
            [op_put(b"a", b"1"), op_put(b"b", b"2"), op_del(b"k")],
        )
    )
    assert response.succeeded
    assert response.header_revision == 4 == store.revision
    assert [(e.type, e.kv.key, e.kv.mod_revision) for e in events] == [
        (EventType.PUT, b"a", 4),
        (EventType.PUT, b"b", 4),
        (EventType.DELETE, b"k", 4),
    ]
    assert [r.main for r in _revisions(store) if r.main == 4] == [4, 4, 4]
    assert [r.sub for r in _revisions(store) if r.main == 4] == [0, 1, 2]
    puts = [r.response_put for r in response.responses]
    assert puts[0] is not None
    assert puts[0].header_revision == 4
    last = response.responses[2].response_delete_range
    assert last is not None
    assert (last.deleted, last.header_revision) == (1, 4)


def _revisions(store: MvccStore) -> list:  # type: ignore[type-arg]
    from discoverd.kv import Revision

    return [Revision(v[0], v[1]) for v in store.to_obj()["versions"]]


def test_the_failure_branch_runs_when_a_compare_fails(store: MvccStore) -> None:
    response, events = store.txn(
        TxnRequest([Compare(b"k", V, EQ, version=9)], [op_put(b"s")], [op_put(b"f")])
    )
    assert not response.succeeded
    assert [e.kv.key for e in events] == [b"f"]
    assert get(store, b"s") == []


def test_a_read_only_txn_does_not_bump_the_revision(store: MvccStore) -> None:
    response, events = store.txn(TxnRequest([], [op_get(b"k")], [op_put(b"x")]))
    assert (response.header_revision, events, store.revision) == (3, [], 3)
    rng = response.responses[0].response_range
    assert rng is not None
    assert rng.kvs[0].value == b"v2"
    assert rng.header_revision == 3


def test_has_writes_looks_into_both_branches_and_nested_txns() -> None:
    assert not has_writes(TxnRequest([], [op_get(b"a")], [op_get(b"b")]))
    assert has_writes(TxnRequest([], [op_get(b"a")], [op_del(b"b")]))
    assert has_writes(TxnRequest([], [op_txn([], [], [op_put(b"x")])]))
    assert not has_writes(TxnRequest([], [op_txn([], [op_get(b"x")])]))


def test_a_txn_whose_writes_change_nothing_does_not_bump_the_revision(store: MvccStore) -> None:
    response, events = store.txn(TxnRequest([], [op_del(b"missing")]))
    assert (response.header_revision, events, store.revision) == (3, [], 3)


def test_ranges_in_a_txn_see_its_own_earlier_writes(store: MvccStore) -> None:
    response, _ = store.txn(
        TxnRequest(
            [],
            [
                op_get(b"a"),
                op_put(b"a", b"1"),
                op_get(b"a"),
                op_del(b"k"),
                op_get(b"k"),
                op_get(b"a", revision=3),
            ],
        )
    )
    ranges = [r.response_range for r in response.responses if r.response_range is not None]
    assert [len(r.kvs) for r in ranges] == [0, 1, 0, 0]
    assert [r.header_revision for r in ranges] == [3, 4, 4, 4]
    assert ranges[1].kvs[0] == KeyValue(b"a", b"1", 4, 4, 1)


def test_put_prev_kv_in_a_txn(store: MvccStore) -> None:
    response, _ = store.txn(TxnRequest([], [op_put(b"k", b"v3", prev_kv=True)]))
    put_resp = response.responses[0].response_put
    assert put_resp is not None
    assert put_resp.prev_kv is not None
    assert put_resp.prev_kv.value == b"v2"


# -- nested txns --------------------------------------------------------------------------------


def test_nested_txns_run_on_the_chosen_path(store: MvccStore) -> None:
    inner_ok = op_txn([Compare(b"k", V, EQ, version=2)], [op_put(b"inner-s")], [op_put(b"inner-f")])
    inner_bad = op_txn([Compare(b"k", V, EQ, version=5)], [op_put(b"x-s")], [op_put(b"x-f")])
    response, events = store.txn(
        TxnRequest([], [op_put(b"outer"), inner_ok, inner_bad], [op_put(b"never")])
    )
    assert [e.kv.key for e in events] == [b"outer", b"inner-s", b"x-f"]
    assert {e.kv.mod_revision for e in events} == {4}
    nested = [r.response_txn for r in response.responses[1:]]
    assert [n.succeeded for n in nested if n is not None] == [True, False]
    assert [n.header_revision for n in nested if n is not None] == [4, 4]


def test_nested_compares_see_the_state_before_the_txn(store: MvccStore) -> None:
    """etcd evaluates every compare on the path before running any op."""
    response, events = store.txn(
        TxnRequest(
            [],
            [
                op_put(b"new", b"1"),
                op_txn([Compare(b"new", V, EQ, version=0)], [op_put(b"saw-nothing")]),
            ],
        )
    )
    assert response.responses[1].response_txn is not None
    assert response.responses[1].response_txn.succeeded
    assert [e.kv.key for e in events] == [b"new", b"saw-nothing"]


def test_a_failed_nested_txn_without_failure_ops_is_empty(store: MvccStore) -> None:
    response, events = store.txn(
        TxnRequest([], [op_txn([Compare(b"k", V, EQ, version=9)], [op_put(b"x")])])
    )
    nested = response.responses[0].response_txn
    assert nested is not None
    assert (nested.succeeded, nested.responses) == (False, ())
    assert events == []


# -- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ops",
    [
        [op_put(b"a"), op_put(b"a")],
        [op_put(b"a"), op_del(b"a")],
        [op_del(b"a"), op_put(b"a")],
        [op_del(b"a", b"c"), op_put(b"b")],
        [op_del(b"a", b"\x00"), op_put(b"zzz")],
        [op_put(b"a"), op_txn([], [op_put(b"a")])],
        [op_txn([], [op_put(b"a")]), op_txn([], [op_put(b"a")])],
        [op_del(b"a"), op_txn([], [op_put(b"a")])],
        [op_txn([], [op_del(b"a")]), op_txn([], [op_put(b"a")])],
        [op_txn([], [op_put(b"a")]), op_txn([], [], [op_put(b"a")])],
        [op_txn([], [op_txn([], [op_put(b"a"), op_put(b"a")])])],
    ],
)
def test_a_key_written_twice_in_one_branch_is_a_duplicate(
    store: MvccStore, ops: list[RequestOp]
) -> None:
    with pytest.raises(DuplicateKey, match="etcdserver: duplicate key given in txn request"):
        store.txn(TxnRequest([], ops))
    with pytest.raises(DuplicateKey):
        store.txn(TxnRequest([], [], ops))  # checked even on the branch that would not run
    assert store.revision == 3


@pytest.mark.parametrize(
    "ops",
    [
        [op_del(b"a"), op_del(b"a")],  # overlapping deletes are fine
        [op_del(b"a", b"c"), op_del(b"b", b"d")],
        [op_put(b"a"), op_get(b"a"), op_get(b"a")],
        [op_put(b"a"), op_del(b"b", b"c")],
        [op_del(b"a", b"c"), op_put(b"c")],  # range end is exclusive
        [op_txn([], [op_put(b"a")], [op_put(b"a")])],  # then/else of one txn: only one runs
    ],
)
def test_allowed_overlaps(store: MvccStore, ops: list[RequestOp]) -> None:
    store.txn(TxnRequest([], ops))


def test_overlapping_deletes_delete_each_key_once(store: MvccStore) -> None:
    put(store, b"k2", b"v")  # 4
    response, events = store.txn(
        TxnRequest([], [op_del(b"k", b"l"), op_del(b"k"), op_del(b"k2", b"\x00")])
    )
    deleted = [r.response_delete_range for r in response.responses]
    assert [d.deleted for d in deleted if d is not None] == [2, 0, 0]
    assert [d.header_revision for d in deleted if d is not None] == [5, 5, 5]
    assert [(e.kv.key, e.kv.mod_revision) for e in events] == [(b"k", 5), (b"k2", 5)]


def test_success_and_failure_may_write_the_same_key(store: MvccStore) -> None:
    response, _ = store.txn(TxnRequest([], [op_put(b"a", b"s")], [op_put(b"a", b"f")]))
    assert response.succeeded
    assert get(store, b"a") == [(b"a", b"s")]


def test_too_many_ops_is_per_list_and_configurable() -> None:
    store = MvccStore(max_txn_ops=3)
    three = [op_put(b"%d" % i) for i in range(3)]
    store.txn(TxnRequest([Compare(b"x")] * 3, three, three))
    for request in (
        TxnRequest([Compare(b"x")] * 4),
        TxnRequest([], [*three, op_get(b"a")]),
        TxnRequest([], [], [*three, op_get(b"a")]),
    ):
        with pytest.raises(TooManyOps, match="etcdserver: too many operations in txn request"):
            store.txn(request)


def test_nested_txns_get_what_their_parent_left() -> None:
    """etcd: a nested txn may hold max_ops minus the parent's longest list."""
    store = MvccStore(max_txn_ops=4)
    two = [op_get(b"%d" % i) for i in range(2)]
    store.txn(TxnRequest([], [op_txn([], two), op_get(b"x")]))
    with pytest.raises(TooManyOps):
        store.txn(TxnRequest([], [op_txn([], [*two, op_get(b"y")]), op_get(b"x")]))


def test_default_max_ops_is_128() -> None:
    store = MvccStore()
    store.txn(TxnRequest([], [op_get(b"%d" % i) for i in range(128)]))
    with pytest.raises(TooManyOps):
        store.txn(TxnRequest([], [op_get(b"%d" % i) for i in range(129)]))


def test_malformed_ops_are_refused(store: MvccStore) -> None:
    with pytest.raises(EmptyKey):
        store.txn(TxnRequest([Compare(b"")]))
    with pytest.raises(EmptyKey):
        store.txn(TxnRequest([], [], [op_get(b"")]))
    with pytest.raises(LeaseProvided):
        store.txn(TxnRequest([], [op_put(b"k", b"", lease=1, ignore_lease=True)]))
    with pytest.raises(KeyNotFound):
        store.txn(TxnRequest([], [RequestOp()]))  # etcd answers an empty op so
    with pytest.raises(EmptyKey):
        store.txn(TxnRequest([], [op_txn([], [op_del(b"")])]))


def test_request_op_sets_exactly_one_request() -> None:
    with pytest.raises(Exception, match="exactly one"):
        RequestOp(request_put=PutRequest(b"a"), request_range=RangeRequest(b"a"))


def test_errors_on_the_executed_path_change_nothing(store: MvccStore) -> None:
    with pytest.raises(KeyNotFound):
        store.txn(TxnRequest([], [op_put(b"a"), op_put(b"missing", b"", ignore_value=True)]))
    with pytest.raises(FutureRevision):
        store.txn(TxnRequest([], [op_put(b"a"), op_get(b"k", revision=4)]))
    with pytest.raises(LeaseNotFound):
        store.txn(
            TxnRequest([], [op_put(b"a"), op_put(b"b", lease=5)]),
            lease_exists=lambda lease: False,
        )
    assert store.revision == 3
    assert get(store, b"a") == []


def test_errors_off_the_executed_path_do_not_matter(store: MvccStore) -> None:
    response, _ = store.txn(
        TxnRequest(
            [],
            [op_put(b"a")],
            [op_put(b"missing", b"", ignore_value=True), op_get(b"k", revision=99)],
        ),
        lease_exists=lambda lease: False,
    )
    assert response.succeeded


def test_ranges_at_compacted_revisions_in_a_txn(store: MvccStore) -> None:
    store.compact(CompactionRequest(3))
    with pytest.raises(Compacted):
        store.txn(TxnRequest([], [op_get(b"k", revision=2)]))
    response, _ = store.txn(TxnRequest([], [op_get(b"k", revision=3)]))
    rng = response.responses[0].response_range
    assert rng is not None
    assert rng.kvs[0].value == b"v2"


def test_ignore_value_in_a_txn_uses_the_value_before_the_txn(store: MvccStore) -> None:
    store.txn(TxnRequest([], [op_put(b"k", b"", ignore_value=True, lease=0)]))
    assert one(store, b"k") == KeyValue(b"k", b"v2", 2, 4, 3, lease=0)


def test_delete_then_recreate_in_separate_txns(store: MvccStore) -> None:
    delete(store, b"k")
    store.txn(TxnRequest([Compare(b"k", C, EQ, create_revision=0)], [op_put(b"k", b"again")]))
    assert one(store, b"k") == KeyValue(b"k", b"again", 5, 5, 1)
