"""The linearizability checker must be trusted before its verdicts on live clusters are: it is
exercised here on hand-made histories whose answer is obvious, on large histories that are
linearizable by construction (and the same with one stale read hidden in them), and against a
brute-force checker on many small random histories."""

from __future__ import annotations

import math
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from discoverd.testing.linearizability import CheckResult, History, Kind, Op, check

INF = math.inf
KINDS: list[Kind] = ["read", "write", "cas"]


class Builder:
    """Hand-made histories: ops get consecutive ids and, unless told, a client of their own."""

    def __init__(self) -> None:
        self.ops: list[Op] = []

    def add(self, kind: Kind, arg: Any, out: Any, call: float, ret: float, *, key: str = "k",
            client: int | None = None) -> Op:
        op_id = len(self.ops)
        op = Op(op_id, op_id if client is None else client, key, kind, arg, out, call, ret)
        self.ops.append(op)
        return op

    def w(self, value: str, call: float, ret: float, **kw: Any) -> Op:
        return self.add("write", value, None, call, ret, **kw)

    def r(self, out: str | None, call: float, ret: float, **kw: Any) -> Op:
        return self.add("read", None, out, call, ret, **kw)

    def cas(self, expected: str | None, new: str, out: bool | None, call: float, ret: float,
            **kw: Any) -> Op:
        return self.add("cas", (expected, new), out, call, ret, **kw)

    def check(self, **kw: Any) -> CheckResult:
        return check(self.ops, **kw)


# --- hand-made histories -----------------------------------------------------------------------


def test_empty_history_is_linearizable() -> None:
    result = check([])
    assert result.verdict == "linearizable"
    assert result
    assert result.keys == {}


def test_sequential_history() -> None:
    h = Builder()
    h.r(None, 0, 1)
    h.w("a", 2, 3)
    h.r("a", 4, 5)
    h.w("b", 6, 7)
    h.r("b", 8, 9)
    result = h.check()
    assert result.verdict == "linearizable", result.explain()
    assert result.ops == 5
    assert result.keys["k"].verdict == "ok"


@pytest.mark.parametrize("seen", [None, "a"])
def test_read_concurrent_with_write_may_see_either_value(seen: str | None) -> None:
    h = Builder()
    h.w("a", 0, 10)
    h.r(seen, 1, 2)
    assert h.check()


def test_stale_read_after_completed_write_is_a_violation() -> None:
    h = Builder()
    h.w("a", 0, 1)
    h.w("b", 2, 3)
    stale = h.r("a", 4, 5)
    result = h.check()
    assert result.verdict == "not linearizable"
    assert not result
    explanation = result.keys["k"].explanation
    assert (f"#{stale.id} client 2 read -> 'a' [4.000000s, 5.000000s]: read returned 'a', a value "
            "certainly overwritten before it was called: #0 wrote it (returned at 1.000000s), "
            "then #1 wrote 'b' (called at 2.000000s, returned at 3.000000s)") in explanation
    assert result.keys["k"].pending == [stale]
    assert explanation in result.explain()


def test_read_of_a_value_never_written_is_a_violation() -> None:
    h = Builder()
    h.w("a", 0, 1)
    h.r("ghost", 0.5, 3)
    result = h.check()
    assert result.verdict == "not linearizable"
    assert "returned 'ghost'" in result.keys["k"].explanation


def test_initial_value() -> None:
    h = Builder()
    h.r("x", 0, 1)
    assert not h.check()
    assert h.check(initial="x")


def test_touching_operations_count_as_concurrent() -> None:
    h = Builder()
    h.w("a", 0, 1)
    h.r(None, 1, 2)  # called at the very instant the write returned
    assert h.check()
    h = Builder()
    h.w("a", 0, 1)
    h.r(None, 1.5, 2)
    assert not h.check()


def test_cas_success_and_failure() -> None:
    h = Builder()
    h.w("a", 0, 1)
    h.cas("a", "b", True, 2, 3)
    h.r("b", 4, 5)
    h.cas("a", "c", False, 6, 7)
    h.r("b", 8, 9)
    h.cas("b", "c", True, 10, 11)
    h.r("c", 12, 13)
    assert h.check()


def test_cas_on_absent_key() -> None:
    h = Builder()
    h.cas(None, "a", True, 0, 1)
    h.cas(None, "b", False, 2, 3)
    h.r("a", 4, 5)
    assert h.check()


def test_cas_that_swapped_against_the_wrong_value_is_a_violation() -> None:
    h = Builder()
    h.w("x", 0, 1)
    bad = h.cas("a", "b", True, 2, 3)
    result = h.check()
    assert not result
    assert f"#{bad.id} " in result.keys["k"].explanation
    assert "cas swapped, expecting 'a', which nothing wrote" in result.keys["k"].explanation


def test_stale_read_of_a_value_written_twice() -> None:
    h = Builder()
    h.w("a", 0, 1)
    h.w("a", 1.5, 2)
    h.w("b", 2.5, 3)
    h.r("a", 4, 5)
    explanation = h.check().keys["k"].explanation
    assert "#0 wrote it (returned at 1.000000s), then #2 wrote 'b'" in explanation
    assert "#1 wrote it (returned at 2.000000s), then #2 wrote 'b'" in explanation
    h.w("a", 3.5, 10)  # may have written "a" again in time for the read
    assert h.check()


def test_stale_initial_value() -> None:
    h = Builder()
    h.w("b", 0, 1)
    h.r("a", 2, 3)
    result = h.check(initial="a")
    assert not result
    assert "it was the initial value, then #0 wrote 'b'" in result.keys["k"].explanation


def test_cas_that_failed_although_the_value_matched_is_a_violation() -> None:
    h = Builder()
    h.w("a", 0, 1)
    h.cas("a", "b", False, 2, 3)
    assert not h.check()


def test_failed_cas_is_fine_if_a_concurrent_write_explains_it() -> None:
    h = Builder()
    h.w("a", 0, 1)
    h.w("z", 1.5, 4)
    h.cas("a", "b", False, 2, 3)
    h.r("z", 5, 6)
    assert h.check()


def test_swapped_cas_needs_the_expected_value_at_some_instant() -> None:
    # both cas swapped "a" away: only one of them can have seen it
    h = Builder()
    h.w("a", 0, 1)
    h.cas("a", "b", True, 2, 5)
    h.cas("a", "c", True, 2, 5)
    assert not h.check()


@pytest.mark.parametrize("seen", ["a", "b"])
def test_unknown_write_may_or_may_not_have_taken_effect(seen: str) -> None:
    h = Builder()
    h.w("a", 0, 1)
    h.w("b", 2, INF)
    h.r(seen, 3, 4)
    h.r(seen, 5, 6)
    assert h.check()


def test_unknown_write_may_take_effect_long_after_it_was_called() -> None:
    h = Builder()
    h.w("a", 0, 1)
    h.w("b", 2, INF)
    h.r("a", 3, 4)
    h.r("a", 5, 6)
    h.r("b", 7, 8)
    assert h.check()


def test_unknown_write_cannot_be_undone() -> None:
    h = Builder()
    h.w("a", 0, 1)
    h.w("b", 2, INF)
    h.r("b", 3, 4)
    back = h.r("a", 5, 6)
    result = h.check()
    assert result.verdict == "not linearizable"
    # no single op is impossible on its own, so this takes the search
    key = result.keys["k"]
    assert [op.id for op in key.prefix] == [0, 1, 2]
    assert key.pending == [back]
    assert "Longest linearizable prefix found: 3 ops, after which the register held 'b'" in (
        key.explanation)
    assert (f"#{back.id} client 3 read -> 'a' [5.000000s, 6.000000s]: read returned 'a' but the "
            "register held 'b'") in key.explanation


def test_unknown_write_cannot_take_effect_before_its_call() -> None:
    h = Builder()
    h.r("b", 0, 1)
    h.w("b", 2, INF)
    assert not h.check()


@pytest.mark.parametrize("seen", ["a", "b"])
def test_unknown_cas_may_or_may_not_have_swapped(seen: str) -> None:
    h = Builder()
    h.w("a", 0, 1)
    h.cas("a", "b", None, 2, INF)
    h.r(seen, 3, 4)
    assert h.check()


def test_unknown_cas_swaps_only_from_the_expected_value() -> None:
    h = Builder()
    h.w("x", 0, 1)
    h.cas("a", "b", None, 2, INF)
    h.r("b", 3, 4)
    assert not h.check()
    # ... but it may wait for the expected value to show up
    h = Builder()
    h.w("x", 0, 1)
    h.cas("a", "b", None, 2, INF)
    h.w("a", 3, 4)
    h.r("b", 5, 6)
    assert h.check()


def test_unknown_cas_cannot_be_undone() -> None:
    h = Builder()
    h.w("a", 0, 1)
    h.cas("a", "b", None, 2, INF)
    h.r("b", 3, 4)
    h.r("a", 5, 6)
    assert not h.check()


def test_unknown_ops_can_build_on_each_other() -> None:
    h = Builder()
    h.w("a", 0, 1)
    h.w("b", 2, INF)
    h.cas("b", "c", None, 2, INF)
    h.r("c", 3, 4)
    assert h.check()
    h.r("b", 5, 6)
    assert not h.check()


def test_unknown_write_can_unblock_a_failed_cas() -> None:
    h = Builder()
    h.w("a", 0, 1)
    h.w("z", 2, INF)
    h.cas("a", "b", False, 3, 4)  # failed, so the register no longer held "a"
    h.r("z", 5, 6)
    assert h.check()


def test_unknown_reads_are_ignored() -> None:
    h = Builder()
    h.w("a", 0, 1)
    h.r("nonsense", 2, INF)
    assert h.check()


def test_bad_interval_is_rejected() -> None:
    with pytest.raises(ValueError, match="bad interval"):
        check([Op(0, 0, "k", "read", None, None, 2.0, 1.0)])


# --- per-key decomposition ----------------------------------------------------------------------


def test_keys_are_checked_independently() -> None:
    h = Builder()
    h.w("a", 0, 1, key="x")
    h.w("a", 0, 1, key="y")
    h.w("b", 2, 3, key="y")
    h.r("a", 4, 5, key="x")  # fine: y's write of "b" does not touch x
    h.r("b", 4, 5, key="y")
    h.r(None, 0, 10, key="z")
    assert h.check()

    h.r("a", 6, 7, key="y")  # stale on y only
    result = h.check()
    assert result.verdict == "not linearizable"
    assert {k: r.verdict for k, r in result.keys.items()} == {
        "x": "ok", "y": "violation", "z": "ok"}
    assert result.keys["y"].ops == 4
    assert "'y'" in result.explain()
    assert "key 'x'" not in result.explain()


# --- generated histories ------------------------------------------------------------------------


def simulate(rng: random.Random, *, clients: int = 8, per_client: int = 50,
             keys: tuple[str, ...] = ("k",), unknown_rate: float = 0.0,
             max_latency: float = 1.0, distinct: int = 0) -> list[Op]:
    """A history of a linearizable register by construction: each op takes effect at a random
    instant inside its interval, and outputs are computed by applying the effects in order.
    Every written value is unique (so a stale value can be picked with certainty), unless
    ``distinct`` asks for values drawn from that many."""
    plans: list[tuple[float, float, float, int, str, Kind, bool, bool]] = []
    for c in range(clients):
        t = rng.uniform(0, 0.3)
        for _ in range(per_client):
            call = t + rng.uniform(0, 0.1)
            ret = call + rng.uniform(0.001, max_latency)
            kind = rng.choices(KINDS, [4, 4, 2])[0]
            unknown = kind != "read" and rng.random() < unknown_rate
            applied = not unknown or rng.random() < 0.5
            plans.append((rng.uniform(call, ret), call, ret, c, rng.choice(keys), kind, unknown,
                          applied))
            t = ret
    state: dict[str, str | None] = dict.fromkeys(keys)
    history: dict[str, list[str]] = {k: [] for k in keys}
    done: list[tuple[float, float, int, str, Kind, Any, Any]] = []
    for n, (_, call, ret, c, key, kind, unknown, applied) in enumerate(sorted(plans)):
        value = f"v{rng.randrange(distinct)}" if distinct else f"c{c}-{n}"
        arg: Any = None
        out: Any = None
        if kind == "read":
            out = state[key]
        elif kind == "write":
            arg = value
            if applied:
                state[key] = value
        else:
            choices = [state[key], state[key], None, *history[key][-3:]]
            expected = rng.choice(choices)
            arg = (expected, value)
            out = state[key] == expected
            if applied and out:
                state[key] = value
        if arg is not None and kind != "read":
            history[key].append(value)
        if unknown:
            out, ret = None, INF
        done.append((call, ret, c, key, kind, arg, out))
    done.sort()
    return [Op(i, c, key, kind, arg, out, call, ret)
            for i, (call, ret, c, key, kind, arg, out) in enumerate(done)]


def writes_value(op: Op) -> str | None:
    """The value an op certainly wrote, if it certainly wrote one."""
    if math.isinf(op.ret):
        return None
    if op.kind == "write":
        return str(op.arg)
    if op.kind == "cas" and op.out is True:
        return str(op.arg[1])
    return None


def plant_stale_read(rng: random.Random, ops: list[Op]) -> tuple[list[Op], Op]:
    """Change one read in the middle of the history to return a value that was certainly
    overwritten before the read was called: written by w, then w2 wrote another value, w2 was
    called after w returned and returned before the read was called."""
    writers = [op for op in ops if writes_value(op) is not None]
    reads = [op for op in ops if op.kind == "read" and not math.isinf(op.ret)]
    rng.shuffle(reads)
    reads.sort(key=lambda op: abs(op.call - ops[len(ops) // 2].call))
    for read in reads:
        stale = {writes_value(w) for w in writers
                 for w2 in writers
                 if w.key == w2.key == read.key and w.ret < w2.call and w2.ret < read.call}
        stale.discard(None)
        stale.discard(read.out)
        if stale:
            value = rng.choice(sorted(v for v in stale if v is not None))
            bad = Op(read.id, read.client, read.key, "read", None, value, read.call, read.ret)
            return [bad if op.id == read.id else op for op in ops], bad
    raise AssertionError("no read to make stale")


def plant_inversion(ops: list[Op], near: float = 0.5) -> tuple[list[Op], Op]:
    """Make a read return the value from before a write that an earlier read already saw:
    w0 returned before w1 was called, r1 saw w1's value and returned before r2 was called,
    and r2 is changed to return w0's value. No single op is impossible on its own (w1 is
    still running when r2 is called, so nothing certainly overwrote w0's value by then): only
    the search can tell. The first one found ``near`` that fraction of the history is used."""
    writes = [op for op in ops if op.kind == "write" and not math.isinf(op.ret)]
    writes.sort(key=lambda op: abs(op.id - near * len(ops)))
    setters = [op for op in ops if writes_value(op) is not None]
    by_value = {op.arg: op for op in writes}
    reads = [op for op in ops if op.kind == "read" and not math.isinf(op.ret)]
    for w0 in writes:
        for w1 in writes:
            if not (w0.key == w1.key and w0.ret < w1.call):
                continue
            for r1 in reads:
                if r1.out != w1.arg:
                    continue
                for r2 in reads:
                    if (r2.key == w1.key and r1.ret < r2.call < w1.ret and r2.out != w0.arg
                            and by_value.get(r2.out) is not w0
                            and not any(o.key == w0.key and w0.ret < o.call and o.ret < r2.call
                                        for o in setters)):
                        bad = Op(r2.id, r2.client, r2.key, "read", None, w0.arg, r2.call,
                                 r2.ret)
                        return [bad if op.id == r2.id else op for op in ops], bad
    raise AssertionError("no read to invert")


SEEDS = [1, 2, 3, 4, 5]


@pytest.mark.parametrize("seed", SEEDS)
def test_generated_history_is_linearizable(seed: int) -> None:
    ops = simulate(random.Random(seed), unknown_rate=0.02)
    assert len(ops) >= 390
    assert sum(op.kind == "cas" for op in ops) > 30
    result = check(ops)
    assert result.verdict == "linearizable", result.explain()


@pytest.mark.parametrize("seed", SEEDS)
def test_one_stale_read_among_hundreds_is_found(seed: int) -> None:
    rng = random.Random(seed)
    ops, bad = plant_stale_read(rng, simulate(rng, unknown_rate=0.02))
    result = check(ops)
    assert result.verdict == "not linearizable"
    explanation = result.keys["k"].explanation
    assert f"#{bad.id} client {bad.client} read -> {bad.out!r}" in explanation, explanation
    assert f"read returned {bad.out!r}, a value certainly overwritten" in explanation
    assert result.keys["k"].pending == [bad]


@pytest.mark.parametrize("seed", SEEDS)
def test_inverted_read_among_hundreds_is_found_by_search(seed: int) -> None:
    rng = random.Random(seed)
    ops, bad = plant_inversion(simulate(rng, unknown_rate=0.02))
    result = check(ops)
    assert result.verdict == "not linearizable"
    key = result.keys["k"]
    assert "Longest linearizable prefix found" in key.explanation
    assert bad in key.pending
    assert (f"#{bad.id} client {bad.client} read -> {bad.out!r}" in key.explanation), (
        key.explanation)
    assert (f"read returned {bad.out!r} but the register held" in key.explanation)
    assert f"no op left that may precede it writes {bad.out!r}" in key.explanation
    # the prefix is itself a linearizable history
    assert check(key.prefix)


@pytest.mark.parametrize("seed", SEEDS)
def test_generated_history_with_repeated_values(seed: int) -> None:
    ops = simulate(random.Random(seed), distinct=3, unknown_rate=0.05)
    assert check(ops), check(ops).explain()


def test_many_concurrent_clients_on_one_key() -> None:
    ops = simulate(random.Random(16), clients=16, per_client=100)
    result = check(ops, time_limit=5)
    assert result.verdict == "linearizable", result.explain()


@pytest.mark.parametrize("seed", SEEDS[:2])
def test_generated_multi_key_history(seed: int) -> None:
    rng = random.Random(seed)
    ops = simulate(rng, clients=10, per_client=60, keys=("a", "b", "c"), unknown_rate=0.01)
    assert check(ops)
    ops, bad = plant_stale_read(rng, ops)
    result = check(ops)
    assert [k for k, r in result.keys.items() if r.verdict != "ok"] == [bad.key]


# --- cross-check against brute force ------------------------------------------------------------


def brute_force(ops: list[Op], initial: str | None = None) -> bool:
    """Try every order consistent with real time; unknown-outcome ops may also be left out."""
    ops = [op for op in ops if not (op.kind == "read" and math.isinf(op.ret))]

    def step(op: Op, state: str | None) -> tuple[bool, str | None]:
        if op.kind == "read":
            return op.out == state, state
        if op.kind == "write":
            return True, op.arg
        expected, new = op.arg
        if math.isinf(op.ret):
            return True, new if state == expected else state
        if op.out:
            return state == expected, new
        return state != expected, state

    def search(remaining: frozenset[int], state: str | None) -> bool:
        if all(math.isinf(ops[i].ret) for i in remaining):
            return True
        for i in remaining:
            if any(ops[j].ret < ops[i].call for j in remaining if j != i):
                continue  # some other op finished before this one started
            legal, after = step(ops[i], state)
            if legal and search(remaining - {i}, after):
                return True
        return False

    return search(frozenset(range(len(ops))), initial)


def random_small_history(rng: random.Random) -> list[Op]:
    values = ["a", "b", "c"]
    ops = []
    for i in range(rng.randint(1, 7)):
        call = float(rng.randint(0, 8))
        ret = call + rng.randint(0, 4)
        kind: Kind = rng.choice(["read", "write", "cas"])
        arg: Any = None
        out: Any = None
        if kind == "read":
            out = rng.choice([*values, None])
        elif kind == "write":
            arg = rng.choice(values)
        else:
            arg = (rng.choice([*values, None]), rng.choice(values))
            out = rng.random() < 0.5
        if kind != "read" and rng.random() < 0.3:
            ret, out = INF, None
        ops.append(Op(i, i, "k", kind, arg, out, call, ret))
    return ops


def test_agrees_with_brute_force_on_random_small_histories() -> None:
    rng = random.Random(20260126)
    verdicts = {True: 0, False: 0}
    for case in range(2000):
        ops = random_small_history(rng)
        initial = rng.choice([None, "a"])
        expected = brute_force(ops, initial)
        result = check(ops, initial=initial)
        assert bool(result) == expected, (case, initial, ops, result.explain())
        verdicts[expected] += 1
    # both answers must be well represented or the comparison proves little
    assert min(verdicts.values()) > 500, verdicts


# --- time limit ---------------------------------------------------------------------------------


def test_unknown_writes_nobody_reads_cost_nothing() -> None:
    # 40 writes of unknown outcome that may each have happened at any time; the reads see 20
    # of them in turn, then the first one again, which cannot be
    h = Builder()
    for i in range(40):
        h.w(f"v{i}", 0, INF)
    for i in range(20):
        h.r(f"v{i}", 1 + 2 * i, 2 + 2 * i)
    again = h.r("v0", 100, 101)
    result = h.check(time_limit=5)
    assert result.verdict == "not linearizable"
    assert result.keys["k"].pending == [again]


def test_time_limit_gives_unknown_instead_of_hanging() -> None:
    # 29 writes of unknown outcome, 15 of "a" and 14 of "b", and 30 reads alternating between
    # them: the 15th read of "b" cannot be, but showing it means trying every way of choosing
    # which writes served the reads before
    h = Builder()
    for value in "a" * 15 + "b" * 14:
        h.w(value, 0, INF)
    for j in range(30):
        h.r("ab"[j % 2], 1 + 2 * j, 2 + 2 * j)
    h.w("a", 0, 1, key="easy")
    started = time.monotonic()
    result = h.check(time_limit=0.01)
    elapsed = time.monotonic() - started
    assert result.verdict == "unknown", result.explain()
    assert not result
    assert result.keys["k"].verdict == "timeout"
    assert result.keys["easy"].verdict == "ok"  # small keys go first
    assert "time limit" in result.explain()
    assert elapsed < 1.0


# --- History ------------------------------------------------------------------------------------


def test_history_outcomes() -> None:
    h = History()
    w = h.invoke(1, "write", "k", "a")
    h.ok(w, "ignored")
    r = h.invoke(2, "read", "k")
    h.ok(r, "a")
    gone = h.invoke(3, "write", "k", "b")
    h.fail(gone)
    lost_read = h.invoke(4, "read", "k")
    h.unknown(lost_read)
    lost_cas = h.invoke(5, "cas", "k", ("a", "c"))
    h.unknown(lost_cas)
    swapped = h.invoke(6, "cas", "k", ["a", "d"])
    h.ok(swapped, False)
    open_write = h.invoke(7, "write", "k", "e")
    h.invoke(8, "read", "k")  # still open: dropped, like an unknown read

    ops = h.operations()
    assert len(h) == len(ops) == 5
    assert [op.id for op in ops] == [w, r, lost_cas, swapped, open_write]
    by_id = {op.id: op for op in ops}
    assert by_id[w].out is None
    assert by_id[r].out == "a"
    assert by_id[lost_cas].ret == INF
    assert by_id[lost_cas].out is None
    assert by_id[swapped].arg == ("a", "d")
    assert by_id[open_write].ret == INF
    assert all(op.call <= op.ret for op in ops)
    assert check(ops)

    with pytest.raises(ValueError, match="not open"):
        h.ok(w, None)
    with pytest.raises(ValueError, match="not open"):
        h.fail(12345)
    with pytest.raises(ValueError, match="unknown operation kind"):
        h.invoke(1, "delete", "k")  # type: ignore[arg-type]
    c = h.invoke(1, "cas", "k", ("a", "b"))
    with pytest.raises(TypeError):
        h.ok(c, "yes")
    h.ok(c, True)  # still open after the refused answer


def test_history_is_thread_safe() -> None:
    h = History()
    threads_n, per_thread = 16, 300
    barrier = threading.Barrier(threads_n)

    def client(c: int) -> None:
        barrier.wait()
        for n in range(per_thread):
            kind: Kind = ("read", "write", "cas")[n % 3]
            arg = None if kind == "read" else f"c{c}-{n}" if kind == "write" else (None, "x")
            op_id = h.invoke(c, kind, f"k{n % 4}", arg)
            outcome = n % 4  # 0, 1: ok, 2: fail, 3: unknown
            if outcome < 2:
                h.ok(op_id, False if kind == "cas" else None)
            elif outcome == 2:
                h.fail(op_id)
            else:
                h.unknown(op_id)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    ops = h.operations()
    expected = 0
    for n in range(per_thread):
        outcome, kind = n % 4, n % 3
        expected += outcome < 2 or (outcome == 3 and kind != 0)
    assert len(h) == len(ops) == expected * threads_n
    assert len({op.id for op in ops}) == len(ops)
    assert all(op.call <= op.ret for op in ops)
    for c in range(threads_n):
        mine = [op for op in ops if op.client == c]
        assert len(mine) == expected
        calls = [op.call for op in mine]
        assert calls == sorted(calls)


def test_dump_and_load_round_trip(tmp_path: Path) -> None:
    h = History()
    a = h.invoke(0, "write", "k", "a")
    h.ok(a)
    b = h.invoke(1, "cas", "k", ("a", "b"))
    h.unknown(b)
    c = h.invoke(2, "read", "k")
    h.ok(c, "b")
    d = h.invoke(3, "cas", "k", (None, "z"))
    h.ok(d, False)
    e = h.invoke(4, "read", "other")
    h.ok(e, None)
    path = tmp_path / "history.json"
    h.dump(path)
    loaded = History.load(path)
    assert loaded == h.operations()
    assert loaded[1].ret == INF
    assert loaded[1].arg == ("a", "b")
    assert check(loaded)

    stale = h.invoke(5, "read", "k")
    h.ok(stale, "a")  # after the read of "b" had returned
    h.dump(path)
    again = History.load(path)
    assert again == h.operations()
    result = check(again)
    assert not result
    assert f"#{stale} client 5 read -> 'a'" in result.keys["k"].explanation
