"""Write hooks: a hook sees the write in progress, may add derived changes to its revision,
and may refuse it — after which the store is exactly as before, down to the index.

The property test builds random stores (puts, deletes, txns, compactions, leases), then
runs a random write whose hook makes random derived changes and refuses it, and demands
that the image (``to_obj``), the index, the size, the key count and the revision are
unchanged and that random later writes behave exactly as on a copy taken before the refused
write.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from discoverd.errors import DiscoverdError, DuplicateKey, TooManyOps, ValidationError
from discoverd.kv import (
    CompactionRequest,
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    Event,
    EventType,
    KeyValue,
    MvccStore,
    PutRequest,
    RangeRequest,
    RequestOp,
    TxnRequest,
    WriteView,
)
from discoverd.kv.index import KeyIndex, TreeIndex
from discoverd.kv.revision import tombstone

# -- helpers ------------------------------------------------------------------------------


def index_dump(store: MvccStore) -> dict[bytes, list[list[KeyValue]]]:
    index: TreeIndex = store._index
    return {ki.key: ki.generations for ki in index.scan(b"", None)}


def R(main: int, sub: int = 0, key: bytes = b"k") -> KeyValue:
    """The put of ``key`` at revision ``(main, sub)`` (its value tells it from the others)."""
    return KeyValue(key, b"%d.%d" % (main, sub), 1, main, 1)


def state(store: MvccStore) -> tuple[Any, ...]:
    """Everything a refused write must leave as it was (the image byte for byte)."""
    return (cbor2.dumps(store.to_obj()), index_dump(store), store.size_bytes, store.revision,
            store.key_count)


class Refuse(DiscoverdError):
    code = "refused"


def everything(store: MvccStore) -> list[tuple[bytes, bytes]]:
    kvs = store.range(RangeRequest(key=b"\0", range_end=b"\0")).kvs
    return [(kv.key, kv.value) for kv in kvs]


# -- the index takes back a key's last change ---------------------------------------------------


def test_revert_takes_back_puts_and_tombstones_newest_first() -> None:
    put2, del3, put4, del4 = R(2), tombstone(b"k", 3), R(4, 0), tombstone(b"k", 4)
    ki = KeyIndex()
    ki.put(put2)
    ki.tombstone(del3)
    ki.put(put4)
    ki.tombstone(del4)
    assert ki.generations == [[put2, del3], [put4, del4], []]
    ki.revert(del4)
    assert ki.generations == [[put2, del3], [put4]]
    ki.revert(put4)
    assert ki.generations == [[put2, del3], []]
    ki.revert(del3)
    assert ki.generations == [[put2]]
    with pytest.raises(AssertionError):
        ki.revert(R(2))  # equal to the last change, but not it: a change is taken back by identity
    with pytest.raises(AssertionError):
        ki.revert(R(9))


def test_a_key_reverted_to_nothing_leaves_the_tree() -> None:
    tree = TreeIndex()
    tree.put(R(2, key=b"a"))
    b3 = R(3, key=b"b")
    tree.put(b3)
    tree.revert(b3)
    assert [ki.key for ki in tree.scan(b"", None)] == [b"a"]
    assert tree.key_index(b"b") is None


# -- what a hook sees and does ------------------------------------------------------------------


def test_the_hook_sees_the_requests_events_and_the_state_they_leave() -> None:
    store = MvccStore()
    store.put(PutRequest(b"a", b"1"))
    seen: list[Any] = []

    def hook(view: WriteView, events: Sequence[Event]) -> None:
        seen.append((view.revision, [(e.type, e.kv.key) for e in events],
                     view.get(b"a"), [kv.key for kv in view.range(b"a", b"\0")],
                     [kv.key for kv in view.range(b"\0", b"\0", reverse=True, limit=2)]))

    store.put(PutRequest(b"c", b"3"))
    store.txn(TxnRequest(success=[RequestOp.of(PutRequest(b"b", b"2")),
                                  RequestOp.of(DeleteRangeRequest(b"a"))]), hook=hook)
    assert seen == [(4, [(EventType.PUT, b"b"), (EventType.DELETE, b"a")], None,
                     [b"b", b"c"], [b"c", b"b"])]


def test_derived_changes_are_later_events_of_the_same_revision() -> None:
    store = MvccStore()
    store.put(PutRequest(b"old", b"x"))

    def hook(view: WriteView, events: Sequence[Event]) -> None:
        view.put(b"derived", events[0].kv.value + b"!")
        assert view.delete(b"old")
        assert not view.delete(b"never")

    _, events = store.put(PutRequest(b"k", b"v"), hook=hook)
    assert [(e.type, e.kv.key, e.kv.mod_revision) for e in events] == [
        (EventType.PUT, b"k", 3), (EventType.PUT, b"derived", 3), (EventType.DELETE, b"old", 3)
    ]
    assert store.revision == 3
    assert everything(store) == [(b"derived", b"v!"), (b"k", b"v")]
    assert [(e.kv.key, e.kv.mod_revision) for e in store.history(3)] == [
        (b"k", 3), (b"derived", 3), (b"old", 3)
    ]


def test_no_change_no_hook() -> None:
    store = MvccStore()
    called: list[int] = []
    response, events = store.delete_range(DeleteRangeRequest(b"nothing"),
                                          hook=lambda v, e: called.append(1))
    assert (response.deleted, events, called) == (0, [], [])
    store.txn(TxnRequest(success=[RequestOp.of(RangeRequest(b"a"))]),
              hook=lambda v, e: called.append(1))
    assert called == []


@pytest.mark.parametrize("raised", [Refuse("no"), ValidationError(violations=[]),
                                    RuntimeError("a bug in the hook")])
def test_a_refused_write_changes_nothing_at_all(raised: Exception) -> None:
    store = MvccStore()
    store.put(PutRequest(b"a", b"1"))
    store.put(PutRequest(b"b", b"1"))
    store.delete_range(DeleteRangeRequest(b"b"))
    before = state(store)

    def hook(view: WriteView, events: Sequence[Event]) -> None:
        view.put(b"a", b"derived over the request's own put")
        view.delete(b"c")
        view.put(b"fresh", b"x")
        raise raised

    requests = [
        lambda: store.put(PutRequest(b"a", b"2"), hook=hook),
        lambda: store.put(PutRequest(b"b", b"again"), hook=hook),
        lambda: store.delete_range(DeleteRangeRequest(b"a"), hook=hook),
        lambda: store.txn(TxnRequest(success=[RequestOp.of(PutRequest(b"c", b"1")),
                                              RequestOp.of(DeleteRangeRequest(b"a")),
                                              RequestOp.of(PutRequest(b"d", b"1"))]),
                          hook=hook),
    ]
    for request in requests:
        with pytest.raises(type(raised)):
            request()
        assert state(store) == before
    # and the store goes on as if nothing had been tried
    response, events = store.put(PutRequest(b"a", b"3"))
    assert response.header_revision == before[3] + 1
    assert events[0].prev_kv is not None
    assert events[0].prev_kv.value == b"1"


def test_a_refused_write_after_compaction_restores_the_compacted_index() -> None:
    store = MvccStore()
    for value in (b"1", b"2", b"3"):
        store.put(PutRequest(b"k", value))
    store.delete_range(DeleteRangeRequest(b"k"))
    store.put(PutRequest(b"k", b"4"))
    store.compact(CompactionRequest(store.revision))
    before = state(store)

    def refuse(view: WriteView, events: Sequence[Event]) -> None:
        raise Refuse("no")

    with pytest.raises(Refuse):
        store.delete_range(DeleteRangeRequest(b"k"), hook=refuse)
    assert state(store) == before


# -- the property -------------------------------------------------------------------------------

KEYS = st.sampled_from([b"a", b"ab", b"b", b"c", b"\x00", b"\xff"])
ENDS = st.sampled_from([b"", b"", b"\x00", b"b", b"c"])
VALUES = st.sampled_from([b"", b"x", b"yy"])
PUTS = st.builds(PutRequest, key=KEYS, value=VALUES, lease=st.sampled_from([0, 0, 7]))
DELETES = st.builds(DeleteRangeRequest, key=KEYS, range_end=ENDS)
COMPARES = st.builds(Compare, key=KEYS, target=st.just(CompareTarget.VERSION),
                     result=st.sampled_from(CompareResult), version=st.integers(0, 2))
OPS = st.one_of(PUTS, DELETES, st.builds(RangeRequest, key=KEYS, range_end=ENDS)).map(
    RequestOp.of)
TXNS = st.builds(TxnRequest, compare=st.lists(COMPARES, max_size=2),
                 success=st.lists(OPS, max_size=4), failure=st.lists(OPS, max_size=3))
WRITES = st.one_of(PUTS, DELETES, TXNS)
DERIVED = st.lists(st.tuples(st.booleans(), KEYS, VALUES), max_size=5)


def run(store: MvccStore, request: Any, hook: Any = None) -> Any:
    """A write's outcome as comparable data: its response and events, or its error."""
    try:
        if isinstance(request, PutRequest):
            return store.put(request, hook=hook)
        if isinstance(request, DeleteRangeRequest):
            return store.delete_range(request, hook=hook)
        if isinstance(request, CompactionRequest):
            return store.compact(request)
        return store.txn(request, hook=hook)
    except DiscoverdError as e:
        return type(e), str(e)


_STORE_ERRORS = (DuplicateKey, TooManyOps)


def derive_then_refuse(derived: list[tuple[bool, bytes, bytes]]) -> Any:
    def hook(view: WriteView, events: Sequence[Event]) -> None:
        for is_put, key, value in derived:
            if is_put:
                view.put(key, value)
            else:
                view.delete(key)
        raise Refuse("refused")
    return hook


@settings(max_examples=400, deadline=None)
@given(
    history=st.lists(st.one_of(WRITES, st.integers(0, 30).map(CompactionRequest)), max_size=25),
    refused=WRITES,
    derived=DERIVED,
    later=st.lists(WRITES, max_size=6),
)
def test_a_refused_write_is_as_if_it_never_happened(
    history: list[Any], refused: Any, derived: list[tuple[bool, bytes, bytes]], later: list[Any]
) -> None:
    store = MvccStore(max_txn_ops=8)
    for request in history:
        run(store, request)
    twin = copy.deepcopy(store)
    before = state(store)
    outcome = run(store, refused, derive_then_refuse(derived))
    # Refused by the hook, or before it by the store's own checks (e.g. duplicate keys), or
    # not refused at all because the write changed nothing and the hook never ran.
    assert outcome[0] in (Refuse, *_STORE_ERRORS) or outcome[1] == []
    assert state(store) == before
    for request in later:
        assert run(store, request) == run(twin, request)
    assert state(store) == state(twin)
    start = store.compact_revision + 1
    assert store.history(start) == twin.history(start)


@settings(max_examples=200, deadline=None)
@given(history=st.lists(WRITES, max_size=15), write=WRITES, derived=DERIVED)
def test_derived_changes_that_are_kept_read_back_like_any_write(
    history: list[Any], write: Any, derived: list[tuple[bool, bytes, bytes]]
) -> None:
    store = MvccStore(max_txn_ops=8)
    for request in history:
        run(store, request)

    def hook(view: WriteView, events: Sequence[Event]) -> None:
        for is_put, key, value in derived:
            if is_put:
                view.put(key, value)
            else:
                view.delete(key)

    outcome = run(store, write, hook)
    if not isinstance(outcome[1], list) or not outcome[1]:
        return
    events: list[Event] = outcome[1]
    assert {e.kv.mod_revision for e in events} == {store.revision}
    assert store.history(store.revision) == events
    image = MvccStore.from_obj(store.to_obj(), max_txn_ops=8)
    assert everything(image) == everything(store)
    assert index_dump(image) == index_dump(store)


def test_events_of_a_derived_put_carry_prev_kv() -> None:
    store = MvccStore()
    store.put(PutRequest(b"d", b"old"))

    def hook(view: WriteView, events: Sequence[Event]) -> None:
        view.put(b"d", b"new")

    _, events = store.put(PutRequest(b"k", b"v"), hook=hook)
    assert events[1].prev_kv == KeyValue(b"d", b"old", 2, 2, 1, 0)
