"""Client workloads for the fault tests, and the checks made on what they saw.

Three properties are checked against a real cluster while a nemesis breaks it
(``discoverd.testing.nemesis``):

* **Linearizability** of registers: K client threads read, write and compare-and-set a few
  keys, each operation recorded in a ``History`` with its invocation and answer time, then
  judged by ``discoverd.testing.linearizability.check``. Two front doors are driven: the SDK
  (``SdkRegisters``, the native protocol with the SDK's failover) and the etcd-compatible
  HTTP gateway (``HttpRegisters``, plain ``http.client``). The recording rule is what makes
  the check sound: a write or CAS whose answer did not arrive (timeout, lost connection,
  any error) is recorded as *unknown* — it may still take effect — never as failed; a read
  that fails is dropped, since it observed nothing.
* **Watch completeness**: a watcher that lives through the faults (``WatchRecorder``; the SDK
  resumes it on another member from the next revision it has not delivered) must see every
  committed revision of its prefix exactly once, in order, with the values the writers were
  told were committed (``watch_problems``).
* **Lease safety**: once the revoke (or expiry) of a lease is committed at revision R, no
  read answered at a revision ≥ R may show a key attached to that lease
  (``LeaseWorkload``/``lease_problems``) — linearizable and serializable reads alike, since a
  serializable read still names the revision of the state it read.

Threads, not an event loop: each client is a blocking client in its own thread, so one stuck
request never holds up another client and the nemesis can act on the processes meanwhile.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import itertools
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from discoverd.sdk import Client, Compare, Op
from discoverd.testing.linearizability import History

OP_TIMEOUT_SECONDS = 2.0
"""Per-request bound for workload clients: long enough for one election (the fault tests run
members with 500 ms election timeouts), short enough that a client stuck on a paused member
moves on quickly — its write is then recorded as unknown."""


class Registers(Protocol):
    """One client's view of the registers: what a workload thread calls."""

    def read(self, key: str) -> str | None: ...
    def write(self, key: str, value: str) -> int: ...  # the revision it committed at
    def cas(self, key: str, expected: str, new: str) -> tuple[bool, int]: ...
    def close(self) -> None: ...


def rotated(endpoints: Sequence[str], n: int) -> list[str]:
    """``endpoints`` starting at the n-th, so that clients spread over the members."""
    i = n % len(endpoints)
    return [*endpoints[i:], *endpoints[:i]]


class SdkRegisters:
    """Registers through the SDK's blocking client (native protocol, failover, retries of
    reads only). Linearizable reads unless ``serializable``."""

    def __init__(self, endpoints: Sequence[str], *, serializable: bool = False,
                 timeout: float = OP_TIMEOUT_SECONDS) -> None:
        self.client = Client(list(endpoints), dial_timeout=timeout, command_timeout=timeout)
        self.serializable = serializable

    def read(self, key: str) -> str | None:
        kvs = self.client.get(key, serializable=self.serializable).kvs
        return kvs[0].value.decode() if kvs else None

    def write(self, key: str, value: str) -> int:
        return self.client.put(key, value).header.revision

    def cas(self, key: str, expected: str, new: str) -> tuple[bool, int]:
        resp = self.client.txn([Compare.value(key) == expected], [Op.put(key, new)])
        return resp.succeeded, resp.header.revision

    def close(self) -> None:
        self.client.close()


class GatewayError(Exception):
    """The HTTP gateway answered with an error status."""


class HttpRegisters:
    """Registers through the etcd v3 JSON gateway (``/v3/kv/range|put|txn``), as etcd3gw or
    curl would use it: one keep-alive connection, moved to the next member when a request
    fails (the gateway does not fail over for its clients — the client must)."""

    def __init__(self, endpoints: Sequence[str], *, timeout: float = OP_TIMEOUT_SECONDS) -> None:
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self._index = 0
        self._conn: http.client.HTTPConnection | None = None

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if self._conn is None:
            host, _, port = self.endpoints[self._index].rpartition(":")
            self._conn = http.client.HTTPConnection(host, int(port), timeout=self.timeout)
        try:
            self._conn.request("POST", path, json.dumps(body),
                               {"Content-Type": "application/json"})
            resp = self._conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException):
            self._next_member()
            raise
        if resp.status != 200:
            self._next_member()
            raise GatewayError(f"{path}: HTTP {resp.status}: {data[:200]!r}")
        answer: dict[str, Any] = json.loads(data)
        return answer

    def _next_member(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None
        self._index = (self._index + 1) % len(self.endpoints)

    def read(self, key: str) -> str | None:
        kvs = self._post("/v3/kv/range", {"key": _b64(key)}).get("kvs") or []
        return base64.b64decode(kvs[0].get("value", "")).decode() if kvs else None

    def write(self, key: str, value: str) -> int:
        answer = self._post("/v3/kv/put", {"key": _b64(key), "value": _b64(value)})
        return int(answer["header"]["revision"])

    def cas(self, key: str, expected: str, new: str) -> tuple[bool, int]:
        answer = self._post("/v3/kv/txn", {
            "compare": [{"key": _b64(key), "target": "VALUE", "result": "EQUAL",
                         "value": _b64(expected)}],
            "success": [{"request_put": {"key": _b64(key), "value": _b64(new)}}],
        })
        return bool(answer.get("succeeded", False)), int(answer["header"]["revision"])

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@dataclass(frozen=True, slots=True)
class Ack:
    """A write the cluster acknowledged: ``key`` holds ``value`` as of ``revision``."""

    revision: int
    key: str
    value: str


@dataclass
class WorkloadStats:
    """What a register workload did: answered operations by kind and outcome, and the
    acknowledged writes (for the watch check)."""

    outcomes: Counter[str] = field(default_factory=Counter)
    acks: list[Ack] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    def count(self, outcome: str) -> int:
        return sum(n for k, n in self.outcomes.items() if k.endswith(":" + outcome))

    def summary(self) -> str:
        parts = ", ".join(f"{k} {n}" for k, n in sorted(self.outcomes.items()))
        errors = ", ".join(f"{k} {n}" for k, n in self.errors.most_common(5))
        return f"{parts}; errors: {errors or 'none'}"


def run_registers(
    make_client: Callable[[int], Registers],
    history: History,
    *,
    clients: int,
    keys: Sequence[str],
    seconds: float,
    seed: int,
    stop: threading.Event | None = None,
) -> WorkloadStats:
    """``clients`` threads doing random reads (50 %), writes (30 %) and CASes (20 %) on
    ``keys`` for ``seconds`` (or until ``stop``); every value written is unique
    (``c<client>-<n>``), so a read says which write it saw. Returns when every thread has
    finished its last operation."""
    stats = WorkloadStats()
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    stop = stop or threading.Event()

    recent: dict[str, str] = {}
    """The value last seen on each key by any client: what a CAS expects, so CASes succeed
    often enough to matter and fail sometimes too."""

    def worker(n: int) -> None:
        rng = random.Random(seed * 1000 + n)
        registers = make_client(n)
        written = 0
        try:
            while time.monotonic() < deadline and not stop.is_set():
                key = rng.choice(keys)
                roll = rng.random()
                written += 1
                value = f"c{n}-{written}"
                if roll < 0.5:
                    def read(k: str = key) -> tuple[str | None, Ack | None]:
                        return registers.read(k), None

                    _one(history, stats, lock, n, "read", key, None, read, recent)
                elif roll < 0.8 or key not in recent:
                    def write(k: str = key, v: str = value) -> tuple[None, Ack | None]:
                        return None, Ack(registers.write(k, v), k, v)

                    _one(history, stats, lock, n, "write", key, value, write, recent)
                else:
                    with lock:
                        expected = recent[key]

                    def cas(k: str = key, e: str = expected,
                            v: str = value) -> tuple[bool, Ack | None]:
                        swapped, revision = registers.cas(k, e, v)
                        return swapped, Ack(revision, k, v) if swapped else None

                    _one(history, stats, lock, n, "cas", key, (expected, value), cas, recent)
        finally:
            registers.close()

    threads = [threading.Thread(target=worker, args=(n,), name=f"workload-{n}", daemon=True)
               for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
        assert not t.is_alive(), f"{t.name} is stuck"
    return stats


def _one(
    history: History,
    stats: WorkloadStats,
    lock: threading.Lock,
    client: int,
    kind: str,
    key: str,
    arg: Any,
    run: Callable[[], tuple[Any, Ack | None]],
    recent: dict[str, str],
) -> None:
    op = history.invoke(client, kind, key, arg)  # type: ignore[arg-type]
    try:
        out, ack = run()
    except Exception as e:  # any failure: the outcome of a write is unknown
        history.unknown(op)
        with lock:
            stats.outcomes[f"{kind}:unknown" if kind != "read" else "read:failed"] += 1
            stats.errors[type(e).__name__] += 1
        return
    history.ok(op, out)
    with lock:
        stats.outcomes[f"{kind}:ok"] += 1
        if ack is not None:
            stats.acks.append(ack)
        if kind == "read" and out is not None:
            recent[key] = out
        elif ack is not None:
            recent[key] = ack.value


# ---------------------------------------------------------------------------- watches


@dataclass(frozen=True, slots=True)
class SeenEvent:
    revision: int
    type: str
    key: str
    value: str


class WatchRecorder:
    """A watcher on ``prefix`` from ``start_revision`` in a thread of its own, recording
    every event it is handed; it lives through member failures as an application's watch
    would (the SDK resumes it)."""

    def __init__(self, endpoints: Sequence[str], prefix: str, start_revision: int) -> None:
        self.events: list[SeenEvent] = []
        self.revision = start_revision - 1
        """Every event up to this revision has been delivered (events and progress)."""
        self._client = Client(list(endpoints), dial_timeout=OP_TIMEOUT_SECONDS,
                              command_timeout=OP_TIMEOUT_SECONDS)
        self._watch = self._client.watch(prefix, prefix=True, start_revision=start_revision)
        self._watch.__enter__()
        self._cond = threading.Condition()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="watch-recorder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for resp in self._watch:
                with self._cond:
                    for e in resp.events:
                        self.events.append(SeenEvent(e.kv.mod_revision, e.type.value,
                                                     e.kv.key.decode(), e.kv.value.decode()))
                    self.revision = max(self.revision, resp.revision)
                    self._cond.notify_all()
        except BaseException as e:  # reported by wait_for / close
            self.error = e
            with self._cond:
                self._cond.notify_all()

    def wait_for(self, revision: int, timeout: float) -> None:
        """Wait until everything up to ``revision`` has been delivered (bounded)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.revision < revision and self.error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"watcher reached revision {self.revision}, not "
                                         f"{revision}, within {timeout}s")
                self._cond.wait(left)
        if self.error is not None and self.revision < revision:
            raise AssertionError(f"the watch ended: {self.error!r}")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._watch.close()
        self._thread.join(10)
        self._client.close()


def read_events(endpoints: Sequence[str], prefix: str, first: int, last: int,
                timeout: float = 30.0) -> list[SeenEvent]:
    """Every event on ``prefix`` from revision ``first`` to ``last``, replayed by a fresh
    watch on a healthy cluster: the committed history to compare a survivor with."""
    recorder = WatchRecorder(endpoints, prefix, first)
    try:
        recorder.wait_for(last, timeout)
        return [e for e in recorder.events if e.revision <= last]
    finally:
        recorder.close()


def watch_problems(seen: Sequence[SeenEvent], committed: Sequence[SeenEvent],
                   acks: Sequence[Ack], first: int, last: int) -> list[str]:
    """Why ``seen`` (the surviving watcher's events up to ``last``) is not the committed
    history exactly once; ``[]`` when it is. ``committed`` is the replayed history, and
    ``acks`` what writers were told, which the history must agree with: every revision from
    ``first`` to ``last`` holds an event (every write in the test is under the prefix), and
    every acknowledged write is there at its revision with its value."""
    problems: list[str] = []
    seen = [e for e in seen if e.revision <= last]
    revisions = [e.revision for e in seen]
    for a, b in itertools.pairwise(revisions):
        if b < a:
            problems.append(f"revision {b} delivered after {a}")
    dupes = [e for e, n in Counter(seen).items() if n > 1]
    if dupes:
        problems.append(f"{len(dupes)} events delivered more than once, e.g. {dupes[0]}")
    missing = sorted(set(committed) - set(seen), key=lambda e: e.revision)
    if missing:
        problems.append(f"{len(missing)} committed events never delivered, first {missing[:3]}")
    extra = sorted(set(seen) - set(committed), key=lambda e: e.revision)
    if extra:
        problems.append(f"{len(extra)} delivered events not in the history, first {extra[:3]}")
    gaps = sorted(set(range(first, last + 1)) - {e.revision for e in committed})
    if gaps:
        problems.append(f"{len(gaps)} revisions with no event under the prefix, e.g. "
                        f"{gaps[:5]}")
    by_revision = {(e.revision, e.key): e for e in committed}
    for ack in acks:
        if first <= ack.revision <= last:
            e = by_revision.get((ack.revision, ack.key))
            if e is None or e.type != "PUT" or e.value != ack.value:
                problems.append(f"acknowledged write {ack} is not in the history (found {e})")
    return problems


# ---------------------------------------------------------------------------- leases


@dataclass(frozen=True, slots=True)
class LeaseRead:
    """A read of the lease prefix answered at ``revision``: key → lease id."""

    revision: int
    keys: dict[str, int]
    serializable: bool


@dataclass
class LeaseWorkload:
    """Writers that grant short leases, attach a key to each (``<prefix><lease id>``) and
    then revoke it or let it expire; readers that keep listing the prefix. ``revoked`` maps
    a lease to the revision its revoke was acknowledged at."""

    endpoints: Sequence[str]
    prefix: str = "/lease-safety/"
    writers: int = 3
    readers: int = 3
    ttl: int = 2
    seed: int = 0
    reads: list[LeaseRead] = field(default_factory=list)
    keys: dict[str, int] = field(default_factory=dict)
    revoked: dict[int, int] = field(default_factory=dict)
    outcomes: Counter[str] = field(default_factory=Counter)

    def run(self, seconds: float) -> None:
        lock = threading.Lock()
        deadline = time.monotonic() + seconds

        def writer(n: int) -> None:
            rng = random.Random(self.seed * 1000 + n)
            with Client(rotated(self.endpoints, n), dial_timeout=OP_TIMEOUT_SECONDS,
                        command_timeout=OP_TIMEOUT_SECONDS) as c:
                while time.monotonic() < deadline:
                    try:
                        lease = c.lease_grant(self.ttl).id
                        key = f"{self.prefix}{lease:x}"
                        c.put(key, f"w{n}", lease=lease)
                        with lock:
                            self.keys[key] = lease
                        if rng.random() < 0.7:
                            revision = c.lease_revoke(lease).revision
                            with lock:
                                self.revoked[lease] = revision
                                self.outcomes["revoked"] += 1
                        else:
                            with lock:
                                self.outcomes["left to expire"] += 1
                    except Exception as e:  # faults: the step's outcome may be unknown
                        with lock:
                            self.outcomes[f"error {type(e).__name__}"] += 1

        def reader(n: int) -> None:
            serializable = n % 2 == 1
            with Client(rotated(self.endpoints, n), dial_timeout=OP_TIMEOUT_SECONDS,
                        command_timeout=OP_TIMEOUT_SECONDS) as c:
                while time.monotonic() < deadline:
                    try:
                        resp = c.get(self.prefix, prefix=True, serializable=serializable)
                    except Exception as e:
                        with lock:
                            self.outcomes[f"read error {type(e).__name__}"] += 1
                        continue
                    read = LeaseRead(resp.header.revision,
                                     {kv.key.decode(): kv.lease for kv in resp.kvs},
                                     serializable)
                    with lock:
                        self.reads.append(read)
                        self.outcomes["reads"] += 1

        threads = [threading.Thread(target=writer, args=(n,), daemon=True)
                   for n in range(self.writers)]
        threads += [threading.Thread(target=reader, args=(n,), daemon=True)
                    for n in range(self.readers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(seconds + 60)
            assert not t.is_alive(), "a lease workload thread is stuck"


def lease_problems(workload: LeaseWorkload, deletions: dict[str, int]) -> list[str]:
    """Reads that showed a lease's key at or after the revision its removal was committed
    at. ``deletions`` maps each key to the revision of its DELETE event (from the committed
    history); a revoke acknowledged at revision R must be that deletion."""
    problems: list[str] = []
    for lease, revision in workload.revoked.items():
        key = f"{workload.prefix}{lease:x}"
        if key in workload.keys and deletions.get(key) != revision:
            problems.append(f"lease {lease:x} revoked at revision {revision} but its key was "
                            f"deleted at {deletions.get(key)}")
    for read in workload.reads:
        for key, lease in read.keys.items():
            gone = deletions.get(key)
            if gone is not None and read.revision >= gone:
                problems.append(
                    f"{'serializable' if read.serializable else 'linearizable'} read at "
                    f"revision {read.revision} saw {key} (lease {lease:x}) deleted at {gone}")
    return problems
