"""The store's snapshot image: what the member writes and reads back through ``KvMachine``.

An image written before the dense store (``[[rev, ...]]`` of the revision-keyed backend)
still restores, to the same state, and is written back byte for byte; a restore that
streams the versions (``wire.lazy_array.load``) builds exactly the store a whole decode
builds, for random stores and any chunking; a broken image is refused and changes nothing.
"""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from discoverd.errors import CorruptData
from discoverd.kv import (
    CompactionRequest,
    DeleteRangeRequest,
    MvccStore,
    PutRequest,
    RangeRequest,
    RequestOp,
    TxnRequest,
)
from discoverd.kv.store import FrozenStore, load_versions
from discoverd.machine.applier import KvMachine
from discoverd.wire import lazy_array
from discoverd.wire.lazy_array import LazyArray

OLD_IMAGE = bytes.fromhex(
    "a766666f726d617404676170706c696564182a6573746f7265a466666f726d617401687265766973696f6e09"
    "70636f6d706163745f7265766973696f6e046876657273696f6e739f87020041614131020100870301416341"
    "3303010087040041624134030200870500416140000000870501416240000000870600416141350601008707"
    "004164413607010087080041644000000087090054656565656565656565656565656565656565656559012c"
    "3838383838383838383838383838383838383838383838383838383838383838383838383838383838383838"
    "3838383838383838383838383838383838383838383838383838383838383838383838383838383838383838"
    "3838383838383838383838383838383838383838383838383838383838383838383838383838383838383838"
    "3838383838383838383838383838383838383838383838383838383838383838383838383838383838383838"
    "3838383838383838383838383838383838383838383838383838383838383838383838383838383838383838"
    "3838383838383838383838383838383838383838383838383838383838383838383838383838383838383838"
    "383838383838383838383838383838383838383838383838383838383838383838383838090100ff666c6561"
    "736573a266666f726d617401666c65617365738066616c61726d7380676d656d62657273a266666f726d6174"
    "01676d656d62657273806461757468a567656e61626c6564f4687265766973696f6e01667365637265744065"
    "75736572738065726f6c657380"
)
"""``KvMachine.snapshot()`` at 2e67348, the last commit with the revision-keyed backend, of:
put a@2; txn put b, put c @3 (subs 0, 1); put b@4; delete [a, c) @5 (tombstones 5.0, 5.1);
put a@6; compact 4 (takes (3, 0) and keeps (3, 1)); put d@7; delete d@8; put e*20 = 8*300@9;
applied 42."""


def everything(store: MvccStore, revision: int = 0) -> list[tuple[bytes, bytes, int, int]]:
    kvs = store.range(RangeRequest(b"\0", b"\0", revision=revision)).kvs
    return [(kv.key, kv.value, kv.create_revision, kv.version) for kv in kvs]


def test_an_image_from_before_the_dense_store_restores_and_is_written_back_the_same() -> None:
    m = KvMachine()
    m.restore(OLD_IMAGE)
    store = m.store
    assert (store.revision, store.compact_revision, store.key_count) == (9, 4, 3)
    assert everything(store, 4) == [(b"a", b"1", 2, 1), (b"b", b"4", 3, 2), (b"c", b"3", 3, 1)]
    assert everything(store, 5) == [(b"c", b"3", 3, 1)]
    assert everything(store) == [(b"a", b"5", 6, 1), (b"c", b"3", 3, 1),
                                 (b"e" * 20, b"8" * 300, 9, 1)]
    events = [(e.type.name, e.kv.key, e.kv.mod_revision, e.prev_kv and e.prev_kv.value)
              for e in store.history(5)]
    assert events == [("DELETE", b"a", 5, b"1"), ("DELETE", b"b", 5, b"4"),
                      ("PUT", b"a", 6, None), ("PUT", b"d", 7, None),
                      ("DELETE", b"d", 8, b"6"), ("PUT", b"e" * 20, 9, None)]
    assert m.applied == 42
    assert m.snapshot() == OLD_IMAGE


OPS = st.lists(st.one_of(
    st.tuples(st.just("put"), st.sampled_from([b"a", b"b", b"c", b"d"]), st.binary(max_size=3)),
    st.tuples(st.just("delete"), st.sampled_from([b"a", b"b", b"c"]),
              st.sampled_from([b"", b"c", b"\0"])),
    st.tuples(st.just("txn"), st.sampled_from([b"a", b"b"]), st.sampled_from([b"c", b"d"])),
    st.tuples(st.just("compact"), st.integers(1, 40), st.just(b"")),
), max_size=40)


def build(ops: list[tuple[str, object, object]]) -> MvccStore:
    store = MvccStore()
    for op, a, b in ops:
        if op == "put":
            store.put(PutRequest(a, b))  # type: ignore[arg-type]
        elif op == "delete":
            store.delete_range(DeleteRangeRequest(a, b))  # type: ignore[arg-type]
        elif op == "txn":  # several changes in one revision: sub revisions 0, 1, 2
            store.txn(TxnRequest(success=[
                RequestOp.of(PutRequest(a, b"t")),  # type: ignore[arg-type]
                RequestOp.of(DeleteRangeRequest(b)),  # type: ignore[arg-type]
                RequestOp.of(PutRequest(b"z" + a, b"u")),  # type: ignore[operator]
            ]))
        elif a < store.revision and a > store.compact_revision:  # type: ignore[operator]
            store.compact(CompactionRequest(a))  # type: ignore[arg-type]
    return store


def same_store(a: MvccStore, b: MvccStore) -> None:
    assert a.to_obj() == b.to_obj()
    assert repr(a) == repr(b)
    assert (a.size_bytes, a.key_count) == (b.size_bytes, b.key_count)
    for rev in range(max(a.compact_revision, 1), a.revision + 1):
        assert everything(a, rev) == everything(b, rev)
    start = a.compact_revision + 1
    assert a.history(start) == b.history(start)
    for key in (b"a", b"b", b"za"):
        assert a.history(start, key=key) == b.history(start, key=key)


@settings(max_examples=60, deadline=None)
@given(OPS, st.integers(1, 5))
def test_a_streamed_restore_builds_the_store_a_whole_one_builds(
        ops: list[tuple[str, object, object]], chunk: int) -> None:
    store = build(ops)
    frozen = store.freeze()
    frozen.CHUNK = chunk
    data = lazy_array.dumps(frozen.to_obj(LazyArray(frozen.version_chunks())))
    whole = MvccStore.from_obj(cbor2.loads(data))
    streamed = MvccStore.from_obj(lazy_array.load(data, ("versions",), load_versions))
    same_store(store, whole)
    same_store(store, streamed)
    # and both keep working identically
    for s in (store, whole, streamed):
        s.put(PutRequest(b"a", b"after"))
        s.delete_range(DeleteRangeRequest(b"b"))
    same_store(store, streamed)
    assert isinstance(frozen, FrozenStore)


def _rows(image: dict[str, object]) -> list[list[object]]:
    return image["store"]["versions"]  # type: ignore[index,return-value]


@pytest.mark.parametrize("mutate", [
    lambda i: _rows(i).reverse(),  # out of order
    lambda i: _rows(i).append([99, 0, b"x", b"v", 99, 1, 0]),  # past the revision
    lambda i: _rows(i).insert(0, [1, 0, b"x", b"", 0, 0, 0]),  # tombstone of a missing key
    lambda i: _rows(i).append([10, 0, b"q", b"v", 10]),  # short record
    lambda i: _rows(i).append([10, -1, b"q", b"v", 10, 1, 0]),  # negative sub
    lambda i: _rows(i).append([10, 2**32, b"q", b"v", 10, 1, 0]),  # sub past 32 bits
    lambda i: _rows(i).append([10, 0, b"", b"v", 10, 1, 0]),  # empty key
    lambda i: _rows(i).append([10, 0, "q", b"v", 10, 1, 0]),  # a str key
    lambda i: _rows(i).__setitem__(1, [3, 1, b"c", b"3", 3, "1", 0]),  # a str version
    lambda i: i["store"].update(format=2),  # type: ignore[attr-defined]
    lambda i: i["store"].update(versions=7),  # type: ignore[attr-defined]
    lambda i: i.update(store=[1, 2]),
])
def test_a_broken_image_is_refused_and_changes_nothing(mutate: object) -> None:
    image = cbor2.loads(OLD_IMAGE)
    image["store"]["revision"] = 10
    mutate(image)  # type: ignore[operator]
    encodings = [cbor2.dumps(image)]
    if isinstance(image["store"], dict) and isinstance(_rows(image), list):  # as written
        store = {**image["store"], "versions": LazyArray([_rows(image)])}
        encodings.append(lazy_array.dumps({**image, "store": store}))
    m = KvMachine()
    m.store.put(PutRequest(b"keep", b"me"))
    for data in encodings:
        with pytest.raises(CorruptData):
            m.restore(data)
        assert everything(m.store) == [(b"keep", b"me", 2, 1)]


def test_a_truncated_image_is_refused() -> None:
    m = KvMachine()
    for cut in range(1, len(OLD_IMAGE) - 1, 7):
        with pytest.raises(CorruptData):
            m.restore(OLD_IMAGE[:cut])
    assert m.store.revision == 1
