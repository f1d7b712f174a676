"""A linearizability checker for histories of register operations recorded against a live cluster.

Fault-injection tests run many clients against discoverd while members crash, pause and are
cut off from each other; afterwards the question is whether every answer the clients got is
explained by *some* single-copy execution. That is linearizability (Herlihy & Wing 1990): there
must be a total order of the operations, consistent with real time (an operation that returned
before another was called comes first) and with the sequential specification of the object,
here one register per key: a read returns the current value (``None`` when the key is absent),
a write sets it, a compare-and-swap sets ``new`` and answers ``True`` exactly when the current
value equals ``expected``.

Keys never interact, so the history is split per key and each sub-history is checked on its own:
linearizability is *local* (Herlihy & Wing), which Porcupine calls P-compositionality. This
turns one search over thousands of operations into several small ones, and it pins a violation
to the key it happened on.

Clients do not always learn what happened. An operation that failed for sure (the request was
refused before anything was proposed) is simply left out. One whose outcome is unknown (a
timeout, a dropped connection) may or may not have taken effect, at any instant after it was
called: it is recorded with ``ret = inf`` and ``out = None``. Such a write or compare-and-swap
can therefore be linearized anywhere after its call, and putting it after everything else is
the same as it never having happened; an unknown compare-and-swap then swaps or not depending
on the value at the point chosen, which covers both outcomes. An unknown read says nothing and
is dropped.

Deciding linearizability is NP-complete (Gibbons & Korach 1997), so the checker is a search:
Wing & Gong's (1993) backtracking over a time-ordered, doubly-linked list of call and return
entries, where "linearize an operation" lifts its two entries out of the list and backtracking
puts them back, with Lowe's (2017) memoisation: a configuration (the set of operations
linearized so far, as a bitset in a Python ``int``, plus the register value) that has already
been explored is never explored again, which is what makes histories of thousands of
operations tractable. This is the algorithm of Porcupine (Athalye, github.com/anishathalye/
porcupine), which showed it is practical for testing real key-value stores; the code here is
written from the papers. The search is iterative (an explicit stack, no recursion limit) and
can be bounded by a time limit, since a pathological history (many concurrent operations of
unknown outcome) can take exponential time: a key whose search runs out of time is reported as
a timeout, never as a violation.

Plain Wing & Gong with memoisation is too slow in Python for a key with thousands of
operations from 16 clients, so four sound refinements, specific to a register, cut the search
(each is argued where it is made, and a brute-force checker in the tests holds them to it):

* Before searching, an op that needs a value no linearization can offer it (every write of the
  value read was certainly overwritten before the read was called) is a violation on its own.
  That is the usual shape of a consistency bug, and it is answered at once, with a plain
  reason, instead of by exhausting every ordering of the history up to it.
* An op that leaves the register as it is (a read, a cas that did not swap) and fits the
  current value is linearized without opening a choice point: moving it earlier never hurts.
* A configuration in which a pending read needs a value that is not in the register and that
  nothing still pending can write is abandoned at once.
* An op of unknown outcome is only tried just before an op that would notice it (one reading
  the value it writes, say); otherwise it is left for the end, where it changes nothing.

Proving a history *not* linearizable is still exhaustive: when no single op is impossible on
its own, every ordering of the history up to the violation is ruled out, which for a late
violation on one hot key with many operations of unknown outcome can take longer than a time
limit allows (the verdict is then "unknown", never wrong).

Among real choices, the op whose interval's midpoint is earliest is tried first: it changes how
fast a linearization is found, never whether one is.

At equal timestamps calls are ordered before returns, so operations that merely touch count as
concurrent: that can only hide a violation, never invent one.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["read", "write", "cas"]

_KINDS: tuple[Kind, ...] = ("read", "write", "cas")
_READ, _WRITE, _CAS = 0, 1, 2
_KIND_CODE = {"read": _READ, "write": _WRITE, "cas": _CAS}

# How many search steps between two looks at the clock: often enough to honour a time limit of
# a few milliseconds, rarely enough that the clock costs nothing.
_CLOCK_EVERY = 512
# How many operations of the longest prefix an explanation shows (the rest are in KeyResult).
_PREFIX_SHOWN = 20
_DUMP_FORMAT = 1
# How many of a value's writers to look at when asking whether it can still show up; past that
# the answer is assumed to be yes, which only costs pruning, never correctness.
_SOURCES_LOOKED_AT = 8
_ANY = object()  # "needs no particular value"


@dataclass(frozen=True, slots=True)
class Op:
    """One completed (or possibly completed) operation on one key, as a client saw it."""

    id: int
    client: int
    key: str
    kind: Kind
    arg: Any
    out: Any
    call: float
    ret: float


class History:
    """Thread-safe recorder used by many client threads at once.

    The call time is taken before the request goes out and the return time after the answer
    arrived, so the recorded interval always contains the real one: widening an interval can
    only make the checker more lenient, never report a violation that did not happen.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next_id = 0
        self._open: dict[int, tuple[int, Kind, str, Any, float]] = {}
        self._done: dict[int, Op] = {}

    def invoke(self, client: int, kind: Kind, key: str, arg: Any = None) -> int:
        if kind not in _KINDS:
            raise ValueError(f"unknown operation kind {kind!r}")
        if kind == "cas" and not (isinstance(arg, tuple | list) and len(arg) == 2):
            raise ValueError(f"cas needs an (expected, new) pair, got {arg!r}")
        if kind == "cas":
            arg = (arg[0], arg[1])
        with self._lock:
            op_id = self._next_id
            self._next_id += 1
            self._open[op_id] = (client, kind, key, arg, time.monotonic())
        return op_id

    def ok(self, op_id: int, out: Any = None) -> None:
        ret = time.monotonic()
        with self._lock:
            client, kind, key, arg, call = self._take(op_id)
            if kind == "write":
                out = None
            elif kind == "cas" and not isinstance(out, bool):
                self._open[op_id] = (client, kind, key, arg, call)
                raise TypeError(f"a cas answers True or False, got {out!r}")
            self._done[op_id] = Op(op_id, client, key, kind, arg, out, call, ret)

    def fail(self, op_id: int) -> None:
        with self._lock:
            self._take(op_id)

    def unknown(self, op_id: int) -> None:
        with self._lock:
            client, kind, key, arg, call = self._take(op_id)
            if kind != "read":
                self._done[op_id] = Op(op_id, client, key, kind, arg, None, call, math.inf)

    def operations(self) -> list[Op]:
        with self._lock:
            ops = list(self._done.values())
            ops.extend(
                Op(op_id, client, key, kind, arg, None, call, math.inf)
                for op_id, (client, kind, key, arg, call) in self._open.items()
                if kind != "read"
            )
        ops.sort(key=lambda op: op.id)
        return ops

    def dump(self, path: str | os.PathLike[str]) -> None:
        ops = self.operations()
        doc = {"format": _DUMP_FORMAT, "ops": [_op_to_json(op) for op in ops]}
        with open(path, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=None, separators=(",", ":"))
            f.write("\n")

    @staticmethod
    def load(path: str | os.PathLike[str]) -> list[Op]:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        if doc.get("format") != _DUMP_FORMAT:
            raise ValueError(f"{os.fspath(path)}: unsupported history format {doc.get('format')!r}")
        return [_op_from_json(item) for item in doc["ops"]]

    def __len__(self) -> int:
        with self._lock:
            return len(self._done) + sum(1 for o in self._open.values() if o[1] != "read")

    def _take(self, op_id: int) -> tuple[int, Kind, str, Any, float]:
        try:
            return self._open.pop(op_id)
        except KeyError:
            raise ValueError(f"op {op_id} is not open (never invoked, or resolved)") from None


def _op_to_json(op: Op) -> dict[str, Any]:
    # JSON has no infinity: an unknown return time is written as null.
    arg = list(op.arg) if op.kind == "cas" else op.arg
    ret = None if math.isinf(op.ret) else op.ret
    return {"id": op.id, "client": op.client, "key": op.key, "kind": op.kind, "arg": arg,
            "out": op.out, "call": op.call, "ret": ret}


def _op_from_json(item: dict[str, Any]) -> Op:
    kind = item["kind"]
    if kind not in _KINDS:
        raise ValueError(f"unknown operation kind {kind!r}")
    arg = tuple(item["arg"]) if kind == "cas" else item["arg"]
    ret = math.inf if item["ret"] is None else float(item["ret"])
    return Op(int(item["id"]), int(item["client"]), str(item["key"]), kind, arg, item["out"],
              float(item["call"]), ret)


@dataclass
class KeyResult:
    """The verdict on one key's sub-history.

    ``prefix`` (the longest linearizable prefix found, in linearization order) and ``pending``
    (the operations none of which could be placed after it) are the raw material of
    ``explanation``, kept for programs that want more than text.
    """

    key: str
    verdict: Literal["ok", "violation", "timeout"]
    ops: int
    explanation: str
    prefix: list[Op] = field(default_factory=list)
    pending: list[Op] = field(default_factory=list)


@dataclass
class CheckResult:
    verdict: Literal["linearizable", "not linearizable", "unknown"]
    keys: dict[str, KeyResult]
    ops: int
    seconds: float

    def explain(self) -> str:
        bad = [r for r in self.keys.values() if r.verdict == "violation"]
        slow = [r for r in self.keys.values() if r.verdict == "timeout"]
        keys = f"{len(self.keys)} key" + ("" if len(self.keys) == 1 else "s")
        head = (f"{self.verdict}: {self.ops} ops over {keys}, "
                f"checked in {self.seconds:.3f}s")
        if bad:
            head += f"; violations on {', '.join(repr(r.key) for r in bad)}"
        if slow:
            head += f"; timed out on {', '.join(repr(r.key) for r in slow)}"
        return "\n\n".join([head, *(r.explanation for r in bad + slow)])

    def __bool__(self) -> bool:
        return self.verdict == "linearizable"


def check(ops: Iterable[Op], *, initial: str | None = None,
          time_limit: float | None = None) -> CheckResult:
    """Decide whether ``ops`` is linearizable with respect to one register per key.

    ``initial`` is every key's value before the history (``None``: absent). ``time_limit``
    bounds the whole check in seconds; keys are checked smallest first so that one hard key
    cannot starve the easy ones of their verdicts.
    """
    start = time.monotonic()
    deadline = math.inf if time_limit is None else start + time_limit
    by_key: dict[str, list[Op]] = {}
    for op in ops:
        _validate(op)
        if op.kind == "read" and math.isinf(op.ret):
            continue  # a read whose answer never arrived constrains nothing
        by_key.setdefault(op.key, []).append(op)
    base = min((op.call for key_ops in by_key.values() for op in key_ops), default=0.0)

    results: dict[str, KeyResult] = {}
    for key in sorted(by_key, key=lambda k: (len(by_key[k]), k)):
        results[key] = _check_key(key, by_key[key], initial, deadline, base)
    keys = {k: results[k] for k in sorted(results)}
    verdicts = {r.verdict for r in keys.values()}
    verdict: Literal["linearizable", "not linearizable", "unknown"]
    if "violation" in verdicts:
        verdict = "not linearizable"
    elif "timeout" in verdicts:
        verdict = "unknown"
    else:
        verdict = "linearizable"
    return CheckResult(verdict, keys, sum(r.ops for r in keys.values()),
                       time.monotonic() - start)


def _validate(op: Op) -> None:
    if op.kind not in _KINDS:
        raise ValueError(f"op {op.id}: unknown kind {op.kind!r}")
    if not math.isfinite(op.call) or op.ret < op.call:
        raise ValueError(f"op {op.id}: bad interval [{op.call}, {op.ret}]")
    if op.kind == "cas" and not (isinstance(op.arg, tuple | list) and len(op.arg) == 2):
        raise ValueError(f"op {op.id}: cas needs an (expected, new) pair, got {op.arg!r}")


def _check_key(key: str, ops: list[Op], initial: str | None, deadline: float,
               base: float) -> KeyResult:
    ops = sorted(ops, key=lambda op: (op.call, op.id))
    n = len(ops)
    kinds = [_KIND_CODE[op.kind] for op in ops]
    # For a cas, arg is (expected, new); for a write, expected is unused and new the value.
    expected: list[str | None] = [op.arg[0] if op.kind == "cas" else None for op in ops]
    written: list[str | None] = [
        op.arg[1] if op.kind == "cas" else op.arg if op.kind == "write" else None for op in ops
    ]
    outs: list[Any] = [None if math.isinf(op.ret) else op.out for op in ops]

    impossible = _stale(ops, initial, base)
    if impossible:
        return _stale_violation(key, ops, impossible, base)

    # Entry 2*i is op i's call, 2*i+1 its return; HEAD is the list's sentinel, -1 its end.
    # At equal times calls sort first, so touching operations are concurrent.
    entries = sorted(range(2 * n), key=lambda e: (ops[e >> 1].ret if e & 1 else ops[e >> 1].call,
                                                  e & 1, e >> 1))
    head = 2 * n
    nxt = [-1] * (2 * n + 1)
    prv = [-1] * (2 * n + 1)
    last = head
    for e in entries:
        nxt[last] = e
        prv[e] = last
        last = e

    # An op that never changes the register (a read, a cas known not to have swapped, a cas
    # of a value for itself) and that fits the current value, among those that may come next,
    # can be put next without opening a choice: any linearization placing it later stays valid
    # with it moved to the front, since nothing else sees a difference and nothing pending had
    # to precede it. So it is taken as forced, and when the search backs out of it, the
    # configuration it was taken in has failed as well.
    keeps = [k == _READ or (k == _CAS and (o is False or expected[i] == written[i]))
             for i, (k, o) in enumerate(zip(kinds, outs, strict=True))]
    # The other ops that may come next are real choices. The one whose interval's midpoint
    # is earliest is tried first, as the likeliest to have taken effect first; an op of
    # unknown outcome comes last, so it is first assumed not to have happened yet. The order
    # changes how soon a linearization is found, never whether one is.
    by_midpoint = sorted(range(n), key=lambda i: ((ops[i].call + ops[i].ret) / 2, ops[i].call,
                                                  i))
    rank = [0] * n
    for position, i in enumerate(by_midpoint):
        rank[i] = -position  # candidates are popped from the end of a list sorted by rank

    # A read of v, or a cas that swapped from v, can only be linearized while the register
    # holds v. When it does not, and none of the ops that may write v and may precede it
    # (called before it returned) is still to be linearized, the configuration is dead,
    # whatever is tried next. Noticing that at once spares trying every order of the other
    # pending ops first: a wrong choice that overwrote a value still needed is undone early.
    needs: list[Any] = [
        op.out if op.kind == "read" else op.arg[0] if outs[i] is True else _ANY
        for i, op in enumerate(ops)
    ]
    sources: dict[str | None, tuple[list[float], list[int]]] = {}
    for i, op in enumerate(ops):  # ops are sorted by call, so each list is too
        if kinds[i] == _WRITE or (kinds[i] == _CAS and outs[i] is not False):
            calls, ids = sources.setdefault(written[i], ([], []))
            calls.append(op.call)
            ids.append(i)
    # For each op that needs a value, its possible sources (None: too many to be worth it).
    feeds: list[tuple[int, ...] | None] = [None] * n
    for i, need in enumerate(needs):
        if need is _ANY:
            continue
        calls, ids = sources.get(need, ([], []))
        mine = [j for j in ids[:bisect.bisect_right(calls, ops[i].ret)] if j != i]
        if len(mine) <= _SOURCES_LOOKED_AT:
            feeds[i] = tuple(reversed(mine))  # latest first: the likeliest still pending
    done = bytearray(n)
    # An op of unknown outcome never has to be linearized: putting it last is the same as it
    # never having happened. And where it is linearized, it can be moved later, past every op
    # that does not see the value it wrote (past a write, it vanishes): so it is only worth
    # placing just before an op that reads that value, swaps from it, or fails a swap because
    # of the value it replaces. Such an op must then be among those that may come next. Other
    # unknown ops are not tried, which spares branching on them at every step of the rest of
    # the history (they can always come next, since they never return).
    vague = [math.isinf(op.ret) and not keeps[i] for i, op in enumerate(ops)]

    state = initial
    linearized = 0
    path: list[int] = []  # the ops linearized so far, in order
    before: list[str | None] = []  # the register value before each of them
    choices: list[list[int] | None] = []  # the candidates each one left untried (None: forced)
    seen: set[tuple[int, str | None]] = set()
    best: list[int] = []
    best_state = initial
    steps = 0
    pending: list[int] | None = None  # candidates left to try here; None: not looked yet
    while nxt[head] != -1:
        steps += 1
        if steps % _CLOCK_EVERY == 0 and time.monotonic() > deadline:
            text = (f"key {key!r}: gave up after the time limit ({steps} search steps, "
                    f"{len(seen)} configurations); the longest linearizable prefix found has "
                    f"{len(best)} of {n} ops.")
            return KeyResult(key, "timeout", n, text, [ops[i] for i in best])
        if pending is None:
            # A new configuration: the ops that may come next are the calls ahead of the
            # first return entry (that op must be linearized before anything called later).
            pending = []
            forced = -1
            e = nxt[head]
            dead = False
            scanned = e
            while not e & 1:
                i = e >> 1
                need = needs[i]
                if need is not _ANY and need != state:
                    feed = feeds[i]
                    if feed is not None:
                        for j in feed:
                            if not done[j]:
                                break
                        else:
                            dead = True
                            break
                if not keeps[i]:
                    pending.append(i)
                elif kinds[i] == _READ:
                    if outs[i] == state:
                        forced = i
                        break
                elif (outs[i] is not False) if state == expected[i] else (outs[i] is not True):
                    forced = i
                    break
                e = nxt[e]
            if not dead and forced < 0 and math.isinf(ops[e >> 1].ret):
                break  # only ops of unknown outcome are left: they can all go last
            if dead:
                pending = []
            elif forced >= 0:
                pending = []
                config = (linearized | (1 << forced), state)
                if config not in seen:
                    seen.add(config)
                    path.append(forced)
                    before.append(state)
                    choices.append(None)
                    linearized = config[0]
                    done[forced] = 1
                    _lift(nxt, prv, forced)
                    if len(path) > len(best):
                        best = path[:]
                        best_state = state
                    pending = None
                    continue
            else:
                if any(vague[i] for i in pending):
                    pending = _worth_trying(pending, scanned, state, nxt, vague, kinds,
                                            expected, written, outs)
                pending.sort(key=rank.__getitem__)
        while pending:
            i = pending.pop()
            if kinds[i] == _WRITE:
                after = written[i]
            elif state == expected[i]:
                if outs[i] is False:
                    continue
                after = written[i]
            elif outs[i] is True:
                continue
            else:
                after = state
            config = (linearized | (1 << i), after)
            if config in seen:
                continue
            seen.add(config)
            path.append(i)
            before.append(state)
            choices.append(pending)
            linearized = config[0]
            state = after
            done[i] = 1
            _lift(nxt, prv, i)
            if len(path) > len(best):
                best = path[:]
                best_state = state
            pending = None
            break
        if pending is None:
            continue
        # Nothing fits here: back out of the latest choice, and of every forced step taken
        # after it, then try that choice's next candidate.
        while not pending:
            if not path:
                return _violation(key, ops, best, best_state, base)
            i = path.pop()
            state = before.pop()
            pending = choices.pop()
            linearized ^= 1 << i
            done[i] = 0
            _unlift(nxt, prv, i)
    return KeyResult(key, "ok", n, f"key {key!r}: linearizable ({n} ops)")


def _stale(ops: list[Op], initial: str | None, base: float) -> list[tuple[int, str]]:
    """Ops that need a value no linearization can offer them, found without search.

    A read of v (or a cas that swapped from v) needs v in the register at its linearization
    point. Each op that may have written v (and the initial value, if it is v) is ruled out if
    an op that certainly set another value ran entirely after it and returned before the
    reader was called. If every source of v is ruled out, no linearization exists. This is
    the usual shape of a consistency bug (a stale read, a lost write), and catching it here
    answers at once, with a plain reason, what the search would need to exhaust every
    ordering of the history up to that read to conclude.

    ``ops`` are sorted by call; returns (index, reason) pairs.
    """
    # Ops that certainly changed the register, by call time, with suffix minima of return
    # time: the earliest-returning one overall and the earliest with a value other than it.
    setters = [i for i, op in enumerate(ops) if not math.isinf(op.ret)
               and (op.kind == "write" or (op.kind == "cas" and op.out is True))]
    set_calls = [ops[i].call for i in setters]
    first: list[int] = [-1] * (len(setters) + 1)
    second: list[int] = [-1] * (len(setters) + 1)  # earliest with a value other than first's
    for k in range(len(setters) - 1, -1, -1):
        i, a, b = setters[k], first[k + 1], second[k + 1]
        value = _written(ops[i])
        if a == -1 or ops[i].ret < ops[a].ret:
            first[k], second[k] = i, (a if a != -1 and _written(ops[a]) != value else b)
        else:
            first[k] = a
            if _written(ops[a]) != value and (b == -1 or ops[i].ret < ops[b].ret):
                second[k] = i
            else:
                second[k] = b

    def overwriter(after: float, value: str | None) -> int:
        """The op that certainly set a value other than ``value``, called after ``after``,
        that returned first (-1 if none)."""
        k = bisect.bisect_right(set_calls, after)
        a = first[k]
        return a if a == -1 or _written(ops[a]) != value else second[k]

    sources: dict[str | None, list[int]] = {}
    for i, op in enumerate(ops):
        if op.kind == "write" or (op.kind == "cas" and op.out is not False):
            sources.setdefault(_written(op), []).append(i)

    found: list[tuple[int, str]] = []
    for x, op in enumerate(ops):
        if math.isinf(op.ret):
            continue
        if op.kind == "read":
            value, what = op.out, f"read returned {op.out!r}"
        elif op.kind == "cas" and op.out is True:
            value, what = op.arg[0], f"cas swapped, expecting {op.arg[0]!r}"
        else:
            continue
        candidates = [w for w in sources.get(value, []) if w != x and ops[w].call <= op.ret]
        if len(candidates) > _SOURCES_LOOKED_AT:
            continue
        reasons = []
        for w in candidates:
            o = overwriter(ops[w].ret, value)
            if o == -1 or ops[o].ret >= op.call:
                break
            reasons.append(f"#{ops[w].id} wrote it (returned at {ops[w].ret - base:.6f}s), "
                           f"then #{ops[o].id} wrote {_written(ops[o])!r} (called at "
                           f"{ops[o].call - base:.6f}s, returned at {ops[o].ret - base:.6f}s)")
        else:
            if value == initial:
                o = overwriter(-math.inf, value)
                if o == -1 or ops[o].ret >= op.call:
                    continue
                reasons.insert(0, f"it was the initial value, then #{ops[o].id} wrote "
                               f"{_written(ops[o])!r} (returned at {ops[o].ret - base:.6f}s)")
            if not reasons:
                found.append((x, f"{what}, which nothing wrote before it returned"))
            else:
                found.append((x, f"{what}, a value certainly overwritten before it was called: "
                              + "; ".join(reasons)))
    return found


def _written(op: Op) -> str | None:
    return op.arg[1] if op.kind == "cas" else op.arg  # type: ignore[no-any-return]


def _stale_violation(key: str, ops: list[Op], impossible: list[tuple[int, str]],
                     base: float) -> KeyResult:
    lines = [f"key {key!r}: not linearizable ({len(ops)} ops; times relative to the start of "
             "the history). No linearization can place these operations, whatever the order "
             "of the others:"]
    for i, why in impossible[:_PREFIX_SHOWN]:
        lines.append(f"  {_describe(ops[i], base)}: {why}")
    if len(impossible) > _PREFIX_SHOWN:
        lines.append(f"  ... and {len(impossible) - _PREFIX_SHOWN} more")
    return KeyResult(key, "violation", len(ops), "\n".join(lines), [],
                     [ops[i] for i, _ in impossible])


def _worth_trying(pending: list[int], first: int, state: str | None, nxt: list[int],
                  vague: list[bool], kinds: list[int], expected: list[str | None],
                  written: list[str | None], outs: list[Any]) -> list[int]:
    """Drop the ops of unknown outcome that no op that may come next would notice (see the
    reasoning in ``_check_key``). ``first`` is the first call entry of the candidates."""
    seen_values: set[str | None] = set()
    unblocks = False  # a failed cas waits for the register to stop holding what it expected
    e = first
    while not e & 1:
        i = e >> 1
        if kinds[i] == _READ:
            seen_values.add(outs[i])
        elif kinds[i] == _CAS:
            if outs[i] is not False:
                seen_values.add(expected[i])
            elif expected[i] == state:
                unblocks = True
        e = nxt[e]
    kept = []
    for i in pending:
        if vague[i]:
            value = written[i]
            if kinds[i] == _CAS and state != expected[i]:
                continue  # would leave the register as it is: same as never happening
            if value == state or not (unblocks or value in seen_values):
                continue
        kept.append(i)
    return kept


def _lift(nxt: list[int], prv: list[int], i: int) -> None:
    """Take op i's call and return entries out of the list; they keep their own links, which
    is what lets ``_unlift`` put them back in place when the search backs out."""
    c, r = 2 * i, 2 * i + 1
    nxt[prv[c]] = nxt[c]
    prv[nxt[c]] = prv[c]
    nxt[prv[r]] = nxt[r]
    if nxt[r] != -1:
        prv[nxt[r]] = prv[r]


def _unlift(nxt: list[int], prv: list[int], i: int) -> None:
    c, r = 2 * i, 2 * i + 1
    nxt[prv[r]] = r
    if nxt[r] != -1:
        prv[nxt[r]] = r
    nxt[prv[c]] = c
    prv[nxt[c]] = c


def _violation(key: str, ops: list[Op], best: list[int], state: str | None,
               base: float) -> KeyResult:
    """Explain a violation from the deepest point the search reached.

    After the longest prefix, the operation with the earliest return must come next, or one
    called no later than that return; each of those candidates is shown with why it does not
    fit (or, if it fits the register, that every way on from it failed).
    """
    placed = set(best)
    remaining = [i for i in range(len(ops)) if i not in placed]
    first = min(remaining, key=lambda i: (ops[i].ret, ops[i].call))
    deadline = ops[first].ret
    candidates = [i for i in remaining if ops[i].call <= deadline]
    prefix = [ops[i] for i in best]
    # Ops of unknown outcome could always come next or later; listing them would bury the
    # ones that matter.
    pending = [ops[i] for i in candidates if not math.isinf(ops[i].ret)]
    vague = len(candidates) - len(pending)

    lines = [f"key {key!r}: not linearizable ({len(ops)} ops; times relative to the start of "
             "the history)."]
    if prefix:
        lines.append(f"Longest linearizable prefix found: {len(prefix)} ops, after which the "
                     f"register held {state!r}:")
        if len(prefix) > _PREFIX_SHOWN:
            lines.append(f"  ... {len(prefix) - _PREFIX_SHOWN} earlier ops")
        lines.extend(f"  {_describe(op, base)}" for op in prefix[-_PREFIX_SHOWN:])
    else:
        lines.append(f"Not even the first operation can be linearized; the register starts "
                     f"as {state!r}.")
    # (The search succeeds once only ops of unknown outcome are left, so ``first`` returned.)
    lines.append(f"Nothing can be placed next. {_describe(ops[first], base)} must take "
                 f"effect before it returned, and these operations, called no later than "
                 f"that, were the candidates:")
    for op in pending:
        lines.append(f"  {_describe(op, base)}: {_why(op, state, [ops[i] for i in remaining])}")
    if vague:
        lines.append(f"  (and {vague} ops of unknown outcome, none of which helps)")
    return KeyResult(key, "violation", len(ops), "\n".join(lines), prefix, pending)


def _why(op: Op, state: str | None, remaining: list[Op]) -> str:
    unknown = math.isinf(op.ret)
    if op.kind == "read":
        if op.out != state:
            return (f"read returned {op.out!r} but the register held {state!r}"
                    + _sources_left(op, op.out, remaining))
    elif op.kind == "cas" and not unknown:
        exp = op.arg[0]
        if op.out is True and state != exp:
            return (f"cas swapped, expecting {exp!r}, but the register held {state!r}"
                    + _sources_left(op, exp, remaining))
        if op.out is False and state == exp:
            return f"cas did not swap, yet the register held the expected {exp!r}"
    return "fits the register here, but every way on from it failed"


def _sources_left(op: Op, value: str | None, remaining: list[Op]) -> str:
    """Which ops still to be linearized could bring the value ``op`` needs: none marks the
    likely culprit among several candidates."""
    left = [o for o in remaining if o is not op and o.call <= op.ret
            and (o.kind == "write" or (o.kind == "cas" and o.out is not False))
            and _written(o) == value]
    if not left:
        return f", and no op left that may precede it writes {value!r}"
    return f" ({', '.join(f'#{o.id}' for o in left[:5])} could still write {value!r})"


def _describe(op: Op, base: float) -> str:
    if op.kind == "read":
        what = f"read -> {op.out!r}"
    elif op.kind == "write":
        what = f"write({op.arg!r})"
    else:
        outcome = "?" if math.isinf(op.ret) else "swapped" if op.out else "not swapped"
        what = f"cas({op.arg[0]!r} -> {op.arg[1]!r}) -> {outcome}"
    end = "unknown outcome" if math.isinf(op.ret) else f"{op.ret - base:.6f}s"
    return f"#{op.id} client {op.client} {what} [{op.call - base:.6f}s, {end}]"
