"""MvccStore against a naive model: the whole keyspace copied at every revision.

The model is deliberately dumb — ``states[r]`` is a dict ``key → (value, create, mod,
version, lease)`` for every revision ``r`` — so that what it says about history, versions,
compaction and txns is obviously right. Hypothesis drives both with random puts, deletes,
txns (compares, both branches, reads of own writes, duplicate keys, pre-check failures),
compactions, reads at random revisions with every range option, and snapshot round trips
through cbor2 (whole, and streamed as a member restores), and demands identical answers,
errors and events, and a store whose log and index hold the same versions.
"""

from __future__ import annotations

from typing import Any

import cbor2
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from discoverd.errors import (
    Compacted,
    DiscoverdError,
    DuplicateKey,
    FutureRevision,
    KeyNotFound,
)
from discoverd.kv import (
    CompactionRequest,
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    DeleteRangeResponse,
    EventType,
    KeyValue,
    MvccStore,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeResponse,
    RequestOp,
    ResponseOp,
    SortOrder,
    SortTarget,
    TxnRequest,
    TxnResponse,
)
from discoverd.kv.index import KeyIndex
from discoverd.kv.store import load_versions
from discoverd.wire import lazy_array
from discoverd.wire.lazy_array import LazyArray

Row = tuple[bytes, int, int, int, int]  # value, create, mod, version, lease
State = dict[bytes, Row]

KEYS = st.sampled_from([b"a", b"ab", b"b", b"ba", b"c", b"\x00", b"\xff"])
ENDS = st.sampled_from([b"", b"", b"\x00", b"b", b"bb", b"c", b"d", b"a"])
VALUES = st.sampled_from([b"", b"x", b"y", b"zz"])
LEASES = st.sampled_from([0, 0, 1, 2])
REVS = st.integers(-1, 60)

PUTS = st.builds(
    PutRequest,
    key=KEYS,
    value=VALUES,
    lease=LEASES,
    prev_kv=st.booleans(),
)
IGNORING_PUTS = st.builds(
    lambda key, iv, il, lease: PutRequest(
        key, b"", lease=0 if il else lease, ignore_value=iv, ignore_lease=il
    ),
    KEYS,
    st.booleans(),
    st.booleans(),
    LEASES,
)
DELETES = st.builds(DeleteRangeRequest, key=KEYS, range_end=ENDS, prev_kv=st.booleans())
RANGES = st.builds(
    RangeRequest,
    key=KEYS,
    range_end=ENDS,
    limit=st.sampled_from([0, 0, 1, 2, 3]),
    revision=REVS,
    sort_order=st.sampled_from(SortOrder),
    sort_target=st.sampled_from(SortTarget),
    keys_only=st.booleans(),
    count_only=st.booleans(),
    min_mod_revision=st.sampled_from([0, 0, 3, 6]),
    max_mod_revision=st.sampled_from([0, 0, 4, 9]),
    min_create_revision=st.sampled_from([0, 0, 3]),
    max_create_revision=st.sampled_from([0, 0, 5]),
)
TXN_RANGES = st.builds(
    RangeRequest, key=KEYS, range_end=ENDS, revision=st.sampled_from([0, 0, 0, 1, 3, 30])
)
COMPARES = st.builds(
    Compare,
    key=KEYS,
    target=st.sampled_from(CompareTarget),
    result=st.sampled_from(CompareResult),
    range_end=st.sampled_from([b"", b"", b"\x00", b"c"]),
    version=st.integers(0, 3),
    create_revision=st.integers(0, 8),
    mod_revision=st.integers(0, 8),
    value=VALUES,
    lease=LEASES,
)
OPS = st.one_of(PUTS, IGNORING_PUTS, DELETES, DELETES, TXN_RANGES).map(RequestOp.of)
TXNS = st.builds(
    TxnRequest,
    compare=st.lists(COMPARES, max_size=2),
    success=st.lists(OPS, max_size=4),
    failure=st.lists(OPS, max_size=3),
)


# -- the naive model ----------------------------------------------------------------------------


def in_range(key: bytes, start: bytes, end: bytes) -> bool:
    if not end:
        return key == start
    if end == b"\x00":
        return key >= start
    return start <= key < end


def kvs_of(state: State, start: bytes, end: bytes) -> list[KeyValue]:
    return [KeyValue(k, *state[k]) for k in sorted(state) if in_range(k, start, end)]


def field_of(kv: KeyValue, target: CompareTarget) -> int | bytes:
    fields: dict[CompareTarget, int | bytes] = {
        CompareTarget.VERSION: kv.version,
        CompareTarget.CREATE: kv.create_revision,
        CompareTarget.MOD: kv.mod_revision,
        CompareTarget.VALUE: kv.value,
        CompareTarget.LEASE: kv.lease,
    }
    return fields[target]


def operand_of(cmp: Compare) -> int | bytes:
    fields: dict[CompareTarget, int | bytes] = {
        CompareTarget.VERSION: cmp.version,
        CompareTarget.CREATE: cmp.create_revision,
        CompareTarget.MOD: cmp.mod_revision,
        CompareTarget.VALUE: cmp.value,
        CompareTarget.LEASE: cmp.lease,
    }
    return fields[cmp.target]


def compare(cmp: Compare, state: State) -> bool:
    kvs = kvs_of(state, cmp.key, cmp.range_end)
    if not kvs:
        if cmp.target == CompareTarget.VALUE:
            return False
        kvs = [KeyValue(b"", b"", 0, 0, 0, 0)]
    for kv in kvs:
        a, b = field_of(kv, cmp.target), operand_of(cmp)
        ok = {
            CompareResult.EQUAL: a == b,
            CompareResult.NOT_EQUAL: a != b,
            CompareResult.GREATER: a > b,  # type: ignore[operator]
            CompareResult.LESS: a < b,  # type: ignore[operator]
        }[cmp.result]
        if not ok:
            return False
    return True


def has_duplicates(ops: list[RequestOp]) -> bool:
    puts = [op.request_put.key for op in ops if op.request_put is not None]
    dels = [op.request_delete_range for op in ops if op.request_delete_range is not None]
    if len(puts) != len(set(puts)):
        return True
    return any(in_range(k, d.key, d.range_end) for k in puts for d in dels)


class Model:
    def __init__(self) -> None:
        self.states: list[State] = [{}, {}]  # revisions 0 and 1: empty
        self.compacted = -1

    @property
    def revision(self) -> int:
        return len(self.states) - 1

    def read_at(self, revision: int, current: int) -> State:
        if revision > current:
            raise FutureRevision()
        if revision <= 0:
            revision = current
        if revision < self.compacted:
            raise Compacted()
        return self.states[revision]

    def range(self, req: RangeRequest, state: State, current: int) -> RangeResponse:
        if req.revision > 0:
            state = self.read_at(req.revision, current)
        kvs = kvs_of(state, req.key, req.range_end)
        count = len(kvs)
        if req.count_only:
            return RangeResponse(current, (), False, count)
        kvs = [
            kv
            for kv in kvs
            if (not req.min_mod_revision or kv.mod_revision >= req.min_mod_revision)
            and (not req.max_mod_revision or kv.mod_revision <= req.max_mod_revision)
            and (not req.min_create_revision or kv.create_revision >= req.min_create_revision)
            and (not req.max_create_revision or kv.create_revision <= req.max_create_revision)
        ]
        order = req.sort_order
        if order == SortOrder.NONE and req.sort_target != SortTarget.KEY:
            order = SortOrder.ASCEND
        if order != SortOrder.NONE:
            attr = {
                SortTarget.KEY: "key",
                SortTarget.VERSION: "version",
                SortTarget.CREATE: "create_revision",
                SortTarget.MOD: "mod_revision",
                SortTarget.VALUE: "value",
            }[req.sort_target]
            kvs = sorted(kvs, key=lambda kv: getattr(kv, attr), reverse=order == SortOrder.DESCEND)
        more = False
        if req.limit and len(kvs) > req.limit:
            kvs, more = kvs[: req.limit], True
        if req.keys_only:
            kvs = [KeyValue(kv.key, b"", *[getattr(kv, f) for f in _REST]) for kv in kvs]
        return RangeResponse(current, tuple(kvs), more, count)

    def run_ops(
        self, ops: list[RequestOp], state: State, new_rev: int, changed: list[bool]
    ) -> list[ResponseOp]:
        out: list[ResponseOp] = []
        for op in ops:
            current = new_rev if changed[0] else new_rev - 1
            if op.request_range is not None:
                out.append(ResponseOp.of(self.range(op.request_range, state, current)))
            elif op.request_put is not None:
                req = op.request_put
                prev = state.get(req.key)
                value, lease = req.value, req.lease
                if prev is not None:
                    value = prev[0] if req.ignore_value else value
                    lease = prev[4] if req.ignore_lease else lease
                    state[req.key] = (value, prev[1], new_rev, prev[3] + 1, lease)
                else:
                    state[req.key] = (value, new_rev, new_rev, 1, lease)
                changed[0] = True
                prev_kv = KeyValue(req.key, *prev) if prev is not None and req.prev_kv else None
                out.append(ResponseOp.of(PutResponse(new_rev, prev_kv)))
            else:
                req_d = op.request_delete_range
                assert req_d is not None
                doomed = kvs_of(state, req_d.key, req_d.range_end)
                for kv in doomed:
                    del state[kv.key]
                changed[0] = changed[0] or bool(doomed)
                current = new_rev if changed[0] else new_rev - 1
                prevs = tuple(doomed) if req_d.prev_kv else ()
                out.append(ResponseOp.of(DeleteRangeResponse(current, len(doomed), prevs)))
        return out

    def txn(self, req: TxnRequest) -> TxnResponse:
        if has_duplicates(list(req.success)) or has_duplicates(list(req.failure)):
            raise DuplicateKey()
        now = self.states[-1]
        succeeded = all(compare(c, now) for c in req.compare)
        ops = list(req.success if succeeded else req.failure)
        for op in ops:
            put = op.request_put
            if put is not None and (put.ignore_value or put.ignore_lease) and put.key not in now:
                raise KeyNotFound()
        for op in ops:
            rng = op.request_range
            if rng is not None and rng.revision != 0:
                self.read_at(rng.revision, self.revision)
        state = dict(now)
        changed = [False]
        responses = self.run_ops(ops, state, self.revision + 1, changed)
        if changed[0]:
            self.states.append(state)
        return TxnResponse(self.revision, succeeded, tuple(responses))

    def compact(self, revision: int) -> None:
        if revision <= self.compacted:
            raise Compacted()
        if revision > self.revision:
            raise FutureRevision()
        self.compacted = revision


_REST = ("create_revision", "mod_revision", "version", "lease")


def outcome(call: Any) -> tuple[str, Any]:
    """The result, or the kind of error, of ``call()`` — errors are compared by class."""
    try:
        return "ok", call()
    except DiscoverdError as exc:
        return type(exc).__name__, None


# -- the state machine --------------------------------------------------------------------------


class StoreVersusModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.store = MvccStore()
        self.model = Model()

    @rule(req=st.one_of(PUTS, IGNORING_PUTS))
    def put(self, req: PutRequest) -> None:
        got = outcome(lambda: self.store.put(req)[0])
        want = outcome(lambda: self.model.txn(TxnRequest([], [RequestOp.of(req)])))
        if want[0] == "ok":
            want = ("ok", want[1].responses[0].response_put)
        assert got == want

    @rule(req=DELETES)
    def delete_range(self, req: DeleteRangeRequest) -> None:
        got = self.store.delete_range(req)[0]
        want = self.model.txn(TxnRequest([], [RequestOp.of(req)])).responses[0]
        assert got == want.response_delete_range

    @rule(req=TXNS)
    def txn(self, req: TxnRequest) -> None:
        assert outcome(lambda: self.store.txn(req)[0]) == outcome(lambda: self.model.txn(req))

    @rule(req=RANGES)
    def range(self, req: RangeRequest) -> None:
        model = self.model
        want = outcome(lambda: model.range(req, model.states[-1], model.revision))
        assert outcome(lambda: self.store.range(req)) == want

    @rule(revision=REVS)
    def compact(self, revision: int) -> None:
        got = outcome(lambda: self.store.compact(CompactionRequest(revision)))
        want = outcome(lambda: self.model.compact(revision))
        assert got[0] == want[0]

    @rule()
    def snapshot_round_trip(self) -> None:
        wire = cbor2.dumps(self.store.to_obj())
        self.store = MvccStore.from_obj(cbor2.loads(wire))

    @rule(chunk=st.integers(1, 4))
    def streamed_snapshot_round_trip(self, chunk: int) -> None:
        """Written chunk by chunk and read back row by row, as a member does."""
        frozen = self.store.freeze()
        frozen.CHUNK = chunk
        wire = lazy_array.dumps(frozen.to_obj(LazyArray(frozen.version_chunks())))
        restored = MvccStore.from_obj(lazy_array.load(wire, ("versions",), load_versions))
        assert restored.to_obj() == self.store.to_obj()
        self.store = restored

    @invariant()
    def same_revision(self) -> None:
        assert self.store.revision == self.model.revision

    @invariant()
    def every_readable_revision_reads_the_same(self) -> None:
        first = max(self.model.compacted, 1)
        for rev in range(first, self.model.revision + 1):
            got = self.store.range(RangeRequest(b"\x00", b"\x00", revision=rev)).kvs
            assert list(got) == kvs_of(self.model.states[rev], b"\x00", b"\x00"), rev

    @invariant()
    def history_is_the_difference_between_revisions(self) -> None:
        start = max(self.model.compacted + 1, 2)
        by_rev: dict[int, set[tuple[EventType, KeyValue, KeyValue | None]]] = {}
        for e in self.store.history(start):
            by_rev.setdefault(e.kv.mod_revision, set()).add((e.type, e.kv, e.prev_kv))
        for rev in range(start, self.model.revision + 1):
            before, after = self.model.states[rev - 1], self.model.states[rev]
            want = set()
            for key in set(before) | set(after):
                old = KeyValue(key, *before[key]) if key in before else None
                if key in after and after[key][2] == rev:
                    want.add((EventType.PUT, KeyValue(key, *after[key]), old))
                elif key not in after and old is not None:
                    want.add((EventType.DELETE, KeyValue(key, b"", 0, rev, 0, 0), old))
            assert by_rev.get(rev, set()) == want, rev

    @invariant()
    def compaction_keeps_exactly_what_later_reads_need(self) -> None:
        """Kept: every change after the compaction revision, and each key's version visible
        at it (if the key was alive then). Nothing else."""
        compacted = self.model.compacted
        want: set[tuple[bytes, int, bool]] = set()
        if compacted >= 1:
            want |= {(k, row[2], False) for k, row in self.model.states[compacted].items()}
        for rev in range(max(compacted + 1, 2), self.model.revision + 1):
            before, after = self.model.states[rev - 1], self.model.states[rev]
            want |= {(k, rev, False) for k, row in after.items() if row[2] == rev}
            want |= {(k, rev, True) for k in before if k not in after}
        got = {(v[2], v[0], v[4] == 0) for v in self.store.to_obj()["versions"]}
        assert got == want

    @invariant()
    def the_log_and_the_index_hold_the_same_versions(self) -> None:
        """Each kept version once in the log, in (main, sub) order, and once in its key's
        index entry, in the same order; every entry non-empty, no generation but the
        last one open, no tombstone without a put before it in its generation; a key with
        one version entered bare."""
        store = self.store
        log, subs = store._log, store._subs
        assert len(log) == len(subs)
        revs = [(kv.mod_revision, sub) for kv, sub in zip(log, subs, strict=True)]
        assert revs == sorted(set(revs))
        by_key: dict[bytes, list[int]] = {}
        for kv in log:
            by_key.setdefault(kv.key, []).append(id(kv))
        entries = list(store._index.scan(b"", None))
        assert {ki.key: [id(kv) for kv in ki] for ki in entries} == by_key
        for ki in entries:
            assert ki
            assert all(g and g[-1].is_tombstone for g in ki.generations[:-1])
            assert not any(g[0].is_tombstone for g in ki.generations if g)
        # a key with one version is entered as that version itself, one with more as a list
        for entry, ki in zip(store._index._keys.values(), entries, strict=True):
            assert (entry is ki[0]) if len(ki) == 1 else (entry == ki and type(entry) is KeyIndex)

    @invariant()
    def key_count_is_the_keys_alive_now(self) -> None:
        assert self.store.key_count == len(self.model.states[-1])

    @invariant()
    def size_is_the_bytes_of_kept_versions(self) -> None:
        versions = self.store.to_obj()["versions"]
        assert self.store.size_bytes == sum(len(v[2]) + len(v[3]) for v in versions)


StoreVersusModel.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
test_store_matches_the_model = StoreVersusModel.TestCase
