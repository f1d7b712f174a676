"""``discoverd bench``: load generation and its report, in the manner of etcd's ``benchmark``.

Why a load generator in the CLI: an operator asks "what can this cluster take?" from the
machine that will use it, with the credentials and TLS files it will use — the same flags
as every other verb. The load goes through the SDK (``AsyncClient``), so what is measured is
what an application gets, client-side costs included.

The model is etcd's benchmark: ``--clients`` closed-loop clients (each sends a request,
waits for its answer, sends the next), spread round-robin over ``--conns`` SDK clients
(one multiplexed connection each), until ``--total`` requests are done or ``--duration``
has passed. Every answered request's latency is recorded; every failed one is counted by
its message. The report is etcd's: a summary, a latency histogram and the latency
distribution — latencies in milliseconds (etcd prints seconds; a local cluster answers in
well under one) — or one JSON object with the same figures.

The pure parts — ``percentile``, ``histogram``, ``Report`` and its renderings, ``Keys`` —
take plain numbers, so they are tested with known inputs; the runners need a cluster.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import random
import struct
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

from discoverd.errors import DiscoverdError

if TYPE_CHECKING:
    from discoverd.sdk import AsyncClient, Registration, Watch

PERCENTILES: tuple[float, ...] = (10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9)
HISTOGRAM_BUCKETS = 10
BAR = "∎"
BAR_WIDTH = 40
SCENARIOS = ("put", "range", "txn", "watch", "lease", "register")

# ----------------------------------------------------------------------------- statistics


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile of ``sorted_values`` by nearest rank: the smallest value with
    at least ``p`` % of the values at or below it (so every figure printed is a latency
    that some request really had). 0 for no values."""
    n = len(sorted_values)
    if n == 0:
        return 0.0
    # round(): 99.9 * 1000 / 100 is 999.0000000000001 in binary floating point.
    rank = math.ceil(round(p * n / 100.0, 9))
    return sorted_values[min(max(rank, 1), n) - 1]


def histogram(sorted_values: Sequence[float], buckets: int = HISTOGRAM_BUCKETS
              ) -> list[tuple[float, int]]:
    """``buckets`` equal-width buckets from the fastest to the slowest value, as
    ``(upper bound, count)``: a value is counted in the first bucket whose bound is at
    least the value (etcd's histogram). One bucket when every value is the same."""
    if not sorted_values:
        return []
    lo, hi = sorted_values[0], sorted_values[-1]
    if hi == lo:
        return [(hi, len(sorted_values))]
    width = (hi - lo) / buckets
    bounds = [lo + width * (i + 1) for i in range(buckets)]
    bounds[-1] = hi  # not lo + 10 * width: rounding must not leave the slowest outside
    counts = [0] * buckets
    for v in sorted_values:
        counts[min(bisect.bisect_left(bounds, v), buckets - 1)] += 1
    return list(zip(bounds, counts, strict=True))


def mean_stddev(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population standard deviation (etcd's ``Stddev``); zeros for no values."""
    if not values:
        return 0.0, 0.0
    mean = math.fsum(values) / len(values)
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))


def bar(count: int, largest: int, width: int = BAR_WIDTH) -> str:
    """``count`` as a bar of ``∎``, the largest bucket ``width`` long."""
    return BAR * (count * width // largest) if largest > 0 else ""


@dataclass
class Recorder:
    """What the clients saw: the latency (seconds) of every answered request and the
    message of every failed one."""

    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    def ok(self, seconds: float) -> None:
        self.latencies.append(seconds)

    def fail(self, message: str) -> None:
        self.errors[message] += 1

    @property
    def done(self) -> int:
        return len(self.latencies) + self.errors.total()


@dataclass(frozen=True)
class Extra:
    """A scenario's own figure: its JSON key, its label in the text report, its value."""

    key: str
    label: str
    value: int | float | str


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 4)


def _pct_key(p: float) -> str:
    return f"p{p:g}"


@dataclass(frozen=True)
class Report:
    """The result of one run: ``ops`` answered requests (events, for ``watch``) in
    ``seconds``, their latencies, the failures by message, and the scenario's own
    figures."""

    scenario: str
    seconds: float
    latencies: tuple[float, ...]
    """Sorted, in seconds."""
    errors: dict[str, int]
    extras: tuple[Extra, ...] = ()

    @classmethod
    def of(cls, scenario: str, seconds: float, recorder: Recorder,
           extras: Sequence[Extra] = ()) -> Report:
        return cls(scenario, seconds, tuple(sorted(recorder.latencies)),
                   dict(recorder.errors.most_common()), tuple(extras))

    @property
    def ops(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        """One object with every figure; latencies in ms, histogram as ``le_ms``/count."""
        mean, stddev = mean_stddev(self.latencies)
        lat = self.latencies
        latency: dict[str, float] = {
            "fastest": _ms(lat[0]) if lat else 0.0,
            "slowest": _ms(lat[-1]) if lat else 0.0,
            "average": _ms(mean), "stddev": _ms(stddev)}
        latency.update({_pct_key(p): _ms(percentile(lat, p)) for p in PERCENTILES})
        return {
            "scenario": self.scenario,
            "ops": self.ops,
            "errors": sum(self.errors.values()),
            "error_messages": dict(self.errors),
            "seconds": round(self.seconds, 6),
            "rate": round(self.rate, 4),
            "latency_ms": latency,
            "histogram": [{"le_ms": _ms(b), "count": c} for b, c in histogram(lat)],
            **{e.key: e.value for e in self.extras},
        }

    def text(self) -> str:
        """etcd benchmark's report (latencies in ms)."""
        lat = self.latencies
        mean, stddev = mean_stddev(lat)
        out = ["", "Summary:",
               f"  Total:\t{self.seconds:.4f} secs.",
               f"  Slowest:\t{_ms(lat[-1]) if lat else 0.0:.4f} ms.",
               f"  Fastest:\t{_ms(lat[0]) if lat else 0.0:.4f} ms.",
               f"  Average:\t{mean * 1000:.4f} ms.",
               f"  Stddev:\t{stddev * 1000:.4f} ms.",
               f"  Requests/sec:\t{self.rate:.4f}",
               ""]
        buckets = histogram(lat)
        if buckets:
            largest = max(c for _, c in buckets)
            out.append("Response time histogram (ms):")
            out += [f"  {b * 1000:.4f} [{c}]\t|{bar(c, largest)}" for b, c in buckets]
            out.append("")
            out.append("Latency distribution:")
            out += [f"  {p:g}% in {percentile(lat, p) * 1000:.4f} ms." for p in PERCENTILES]
            out.append("")
        if self.errors:
            out.append("Error distribution:")
            out += [f"  [{n}]\t{message}" for message, n in self.errors.items()]
            out.append("")
        if self.extras:
            out.append(f"{self.scenario.capitalize()}:")
            for e in self.extras:
                value = f"{e.value:.4f}" if isinstance(e.value, float) else str(e.value)
                out.append(f"  {e.label}:\t{value}")
            out.append("")
        return "\n".join(out)


# ----------------------------------------------------------------------------- load shape


@dataclass(frozen=True)
class LoadSpec:
    """The flags every scenario shares (checked by ``check``)."""

    clients: int = 16
    conns: int = 1
    total: int | None = 10000
    duration: float | None = None
    key_size: int = 8
    val_size: int = 256
    key_space: int = 10000
    sequential_keys: bool = False
    seed: int | None = None
    prefix: bytes = b""

    def check(self) -> None:
        """``ValueError`` naming the flag at fault."""
        if self.clients < 1:
            raise ValueError("--clients must be at least 1")
        if self.conns < 1:
            raise ValueError("--conns must be at least 1")
        if self.total is not None and self.total < 1:
            raise ValueError("--total must be at least 1")
        if self.duration is not None and self.duration <= 0:
            raise ValueError("--duration must be positive")
        if (self.total is None) == (self.duration is None):
            raise ValueError("give one of --total and --duration")
        if self.key_size < 1:
            raise ValueError("--key-size must be at least 1")
        if self.val_size < 0:
            raise ValueError("--val-size must not be negative")
        if self.key_space < 1:
            raise ValueError("--key-space must be at least 1")
        if self.key_space > 10 ** self.key_size:
            raise ValueError(f"--key-space {self.key_space} needs keys longer than "
                             f"--key-size {self.key_size}")


class Keys:
    """The key space: ``prefix`` + the key's number, zero-padded to ``key_size`` digits
    (fixed width, so every key costs the same and sorts by number). ``next()`` draws
    uniformly from a ``random.Random(seed)``, or counts round the space with
    ``sequential``. Draws come from one generator shared by every client, so a seeded run
    touches the same keys whatever the interleaving of its clients."""

    def __init__(self, spec: LoadSpec) -> None:
        self.prefix = spec.prefix
        self.width = spec.key_size
        self.space = spec.key_space
        self.sequential = spec.sequential_keys
        self.rng = random.Random(spec.seed)
        self._next = 0

    def key(self, n: int) -> bytes:
        return self.prefix + str(n).zfill(self.width).encode()

    def next(self) -> bytes:
        if self.sequential:
            n, self._next = self._next % self.space, self._next + 1
        else:
            n = self.rng.randrange(self.space)
        return self.key(n)


class Budget:
    """How many more requests to start: ``total`` of them, or as many as fit before the
    deadline. Clients share one budget; trio runs one task at a time, so ``take`` needs
    no lock (there is no ``await`` inside it)."""

    def __init__(self, total: int | None, duration: float | None) -> None:
        self.total = total
        self.duration = duration
        self.issued = 0
        self.deadline: float | None = None

    def start(self) -> None:
        if self.duration is not None:
            self.deadline = time.perf_counter() + self.duration

    def take(self) -> bool:
        if self.total is not None:
            if self.issued >= self.total:
                return False
        elif self.deadline is None or time.perf_counter() >= self.deadline:
            return False
        self.issued += 1
        return True


def error_message(exc: BaseException) -> str:
    """A failure as counted in the report: the message etcdctl would print."""
    from discoverd.cli.output import etcd_error_message

    return etcd_error_message(exc)


# ----------------------------------------------------------------------------- progress


class Progress:
    """A one-line progress bar redrawn on stderr (``\\r``), only when stderr is a terminal:
    a pipe or a file gets the report alone."""

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled

    @asynccontextmanager
    async def show(self, label: str, done: Callable[[], int], total: int | None = None,
                   duration: float | None = None) -> AsyncIterator[None]:
        if not self.enabled:
            yield
            return
        started = time.perf_counter()

        def draw() -> None:
            elapsed = time.perf_counter() - started
            if total:
                frac = min(done() / total, 1.0)
                tail = f"{done()}/{total}"
            elif duration:
                frac = min(elapsed / duration, 1.0)
                tail = f"{done()} in {elapsed:.1f}/{duration:g}s"
            else:
                frac, tail = 0.0, f"{done()} in {elapsed:.1f}s"
            filled = int(frac * 30)
            sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (30 - filled)}] "
                             f"{frac * 100:3.0f}% {tail}  ")
            sys.stderr.flush()

        async def ticker() -> None:
            while True:
                draw()
                await anyio.sleep(0.2)

        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()
        draw()
        sys.stderr.write("\n")
        sys.stderr.flush()


# ----------------------------------------------------------------------------- connections


@dataclass(frozen=True)
class Connect:
    """How to make an SDK client: the global flags' endpoints, timeouts, credentials, TLS."""

    endpoints: tuple[str, ...]
    dial_timeout: float = 2.0
    command_timeout: float = 5.0
    user: str | None = None
    password: str | None = None
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None

    def client(self) -> AsyncClient:
        from discoverd.sdk import AsyncClient

        return AsyncClient(list(self.endpoints), dial_timeout=self.dial_timeout,
                           command_timeout=self.command_timeout, user=self.user,
                           password=self.password, cacert=self.cacert, cert=self.cert,
                           key=self.key)


@asynccontextmanager
async def connections(connect: Connect, n: int) -> AsyncIterator[list[AsyncClient]]:
    """``n`` connected SDK clients (one connection each), closed on leaving. Each is asked
    for its member's status first, so dialing (and authenticating) is not measured and an
    unreachable cluster fails before the run."""
    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(connect.client()) for _ in range(n)]
        for c in clients:
            await c.status()
        yield clients


Operation = Callable[["AsyncClient"], Awaitable[None]]


async def closed_loop(clients: Sequence[AsyncClient], workers: int, budget: Budget,
                      op: Operation, recorder: Recorder) -> float:
    """Run ``workers`` closed-loop clients (worker i on ``clients[i % len]``) until the
    budget is spent; returns the seconds it took. An operation's ``DiscoverdError`` is
    counted, not raised: a benchmark reports failures rather than stopping at the first."""

    async def worker(i: int) -> None:
        client = clients[i % len(clients)]
        while budget.take():
            t0 = time.perf_counter()
            try:
                await op(client)
            except DiscoverdError as e:
                recorder.fail(error_message(e))
            else:
                recorder.ok(time.perf_counter() - t0)

    started = time.perf_counter()
    budget.start()
    async with anyio.create_task_group() as tg:
        for i in range(workers):
            tg.start_soon(worker, i)
    return time.perf_counter() - started


async def _measured(spec: LoadSpec, clients: Sequence[AsyncClient], op: Operation,
                    progress: Progress, label: str) -> tuple[float, Recorder]:
    recorder = Recorder()
    budget = Budget(spec.total, spec.duration)
    async with progress.show(label, lambda: recorder.done, spec.total, spec.duration):
        seconds = await closed_loop(clients, spec.clients, budget, op, recorder)
    return seconds, recorder


def _value(spec: LoadSpec) -> bytes:
    return random.Random(spec.seed).randbytes(spec.val_size)


# ----------------------------------------------------------------------------- scenarios


async def run_put(spec: LoadSpec, connect: Connect, progress: Progress) -> Report:
    """Puts of ``--val-size`` values to keys of the key space."""
    keys, value = Keys(spec), _value(spec)

    async def op(c: AsyncClient) -> None:
        await c.put(keys.next(), value)

    async with connections(connect, spec.conns) as clients:
        seconds, rec = await _measured(spec, clients, op, progress, "put")
    return Report.of("put", seconds, rec, [Extra("key_space", "Key space", spec.key_space)])


async def fill(spec: LoadSpec, clients: Sequence[AsyncClient], progress: Progress) -> int:
    """Put every key of the key space once (not measured): a range benchmark should read
    keys that exist. Raises the first failure's message as ``DiscoverdError``'s text."""
    keys, value = Keys(spec), _value(spec)
    counter = iter(range(spec.key_space))

    async def op(c: AsyncClient) -> None:
        await c.put(keys.key(next(counter)), value)

    recorder = Recorder()
    async with progress.show("fill", lambda: recorder.done, spec.key_space):
        await closed_loop(clients, spec.clients, Budget(spec.key_space, None), op, recorder)
    if recorder.errors:
        message, n = recorder.errors.most_common(1)[0]
        raise BenchFailed(f"filling the key space failed ({n} errors): {message}")
    return len(recorder.latencies)


class BenchFailed(Exception):
    """A run that could not produce a report (its set-up failed)."""


async def run_range(spec: LoadSpec, connect: Connect, progress: Progress, *,
                    consistency: str = "l", prefill: bool = True) -> Report:
    """Gets of random keys, linearizable (``l``) or serializable (``s``); the key space is
    filled first unless ``prefill`` is off."""
    keys = Keys(spec)
    serializable = consistency == "s"
    found = 0

    async def op(c: AsyncClient) -> None:
        nonlocal found
        r = await c.get(keys.next(), serializable=serializable)
        found += bool(r.kvs)

    async with connections(connect, spec.conns) as clients:
        filled = await fill(spec, clients, progress) if prefill else 0
        seconds, rec = await _measured(spec, clients, op, progress, "range")
    return Report.of("range", seconds, rec, [
        Extra("consistency", "Consistency", consistency),
        Extra("filled", "Keys filled first", filled),
        Extra("found", "Gets that found their key", found)])


async def run_txn(spec: LoadSpec, connect: Connect, progress: Progress) -> Report:
    """One txn per request, etcd's ``txn-put`` with a compare: if the key's version is 0
    (it does not exist) put it, else put it too — so each txn writes, and which branch ran
    says whether it created or updated the key (counted)."""
    from discoverd.sdk import Compare, Op

    keys, value = Keys(spec), _value(spec)
    created = 0

    async def op(c: AsyncClient) -> None:
        nonlocal created
        k = keys.next()
        r = await c.txn([Compare.version(k) == 0], [Op.put(k, value)], [Op.put(k, value)])
        created += r.succeeded

    async with connections(connect, spec.conns) as clients:
        seconds, rec = await _measured(spec, clients, op, progress, "txn")
    return Report.of("txn", seconds, rec, [
        Extra("created", "Txns that created their key", created),
        Extra("updated", "Txns that updated their key", len(rec.latencies) - created)])


_STAMP = struct.Struct("<d")


async def run_watch(spec: LoadSpec, connect: Connect, progress: Progress, *,
                    watchers: int = 100, writers: int = 1, grace: float = 5.0) -> Report:
    """``watchers`` watches of one prefix (spread over the connections) while ``writers``
    closed-loop clients put under it. Each value starts with its put's send time, so the
    watcher computes put→event latency from the event alone; the report's requests are
    the events delivered, and it compares them with the events expected (answered puts
    times watchers). After the last put, delivery gets ``grace`` seconds to catch up; what is
    still missing then is reported as an error."""
    if spec.val_size < _STAMP.size:
        raise ValueError(f"--val-size must be at least {_STAMP.size} for watch (the value "
                         "carries the put's send time)")
    if watchers < 1 or writers < 1:
        raise ValueError("--watchers and --puts must be at least 1")
    keys = Keys(spec)
    padding = _value(spec)[_STAMP.size:]
    events = Recorder()
    puts = Recorder()
    delivered = 0
    expected: int | None = None
    last_event = 0.0
    all_in = anyio.Event()

    async def consume(w: Watch) -> None:
        nonlocal delivered, last_event
        async for resp in w:
            now = time.perf_counter()
            for ev in resp.events:
                if len(ev.kv.value) >= _STAMP.size:
                    events.ok(now - _STAMP.unpack_from(ev.kv.value)[0])
                    delivered += 1
            last_event = now
            if expected is not None and delivered >= expected:
                all_in.set()

    async def op(c: AsyncClient) -> None:
        await c.put(keys.next(), _STAMP.pack(time.perf_counter()) + padding)

    async with connections(connect, spec.conns) as clients, AsyncExitStack() as stack:
        watches = [await stack.enter_async_context(
            clients[i % len(clients)].watch(spec.prefix, prefix=True))
            for i in range(watchers)]
        async with anyio.create_task_group() as tg:
            for w in watches:
                tg.start_soon(consume, w)
            started = time.perf_counter()
            budget = Budget(spec.total, spec.duration)
            async with progress.show("watch", lambda: puts.done, spec.total, spec.duration):
                put_seconds = await closed_loop(clients, writers, budget, op, puts)
            want = expected = len(puts.latencies) * watchers
            if delivered < want:
                with anyio.move_on_after(grace):
                    await all_in.wait()
            tg.cancel_scope.cancel()
    seconds = max(last_event, started + put_seconds) - started
    missing = max(want - delivered, 0)
    for message, n in puts.errors.items():
        events.errors[f"put: {message}"] += n
    if missing:
        events.errors[f"events not delivered within {grace:g}s of the last put"] += missing
    put_avg, _ = mean_stddev(puts.latencies)
    return Report.of("watch", seconds, events, [
        Extra("watchers", "Watchers", watchers),
        Extra("writers", "Writers", writers),
        Extra("puts", "Puts answered", len(puts.latencies)),
        Extra("put_rate", "Puts/sec", len(puts.latencies) / put_seconds if put_seconds else 0.0),
        Extra("put_average_ms", "Put average (ms)", round(put_avg * 1000, 4)),
        Extra("events_expected", "Events expected", want),
        Extra("events_delivered", "Events delivered", delivered),
        Extra("events_per_sec", "Events/sec", delivered / seconds if seconds > 0 else 0.0)])


async def run_lease(spec: LoadSpec, connect: Connect, progress: Progress, *,
                    leases: int = 100, ttl: int = 10) -> Report:
    """Grant ``leases`` leases (not measured), renew them round-robin as fast as the
    clients can (``lease keep-alive --once`` each), then revoke them. A renewal answered
    with TTL 0 (the lease is gone) is an error."""
    if leases < 1 or ttl < 1:
        raise ValueError("--leases and --ttl must be at least 1")
    ids: list[int] = []
    turn = 0

    async def grant(c: AsyncClient) -> None:
        ids.append((await c.lease_grant(ttl)).id)

    async def op(c: AsyncClient) -> None:
        nonlocal turn
        lease_id = ids[turn % len(ids)]
        turn += 1
        if (await c.lease_keepalive_once(lease_id)).ttl <= 0:
            raise _LeaseGone

    async with connections(connect, spec.conns) as clients:
        granting = Recorder()
        async with progress.show("grant", lambda: granting.done, leases):
            await closed_loop(clients, spec.clients, Budget(leases, None), grant, granting)
        if granting.errors:
            message, n = granting.errors.most_common(1)[0]
            raise BenchFailed(f"granting the leases failed ({n} errors): {message}")
        seconds, rec = await _measured(spec, clients, op, progress, "keep-alive")
        revoke_ids = iter(list(ids))
        revoking = Recorder()

        async def revoke(c: AsyncClient) -> None:
            await c.lease_revoke(next(revoke_ids))

        await closed_loop(clients, spec.clients, Budget(len(ids), None), revoke, revoking)
    return Report.of("lease", seconds, rec, [
        Extra("leases", "Leases", len(ids)),
        Extra("ttl", "TTL (s)", ttl),
        Extra("revoked", "Leases revoked after", len(revoking.latencies))])


class _LeaseGone(DiscoverdError):
    def __str__(self) -> str:
        return "lease expired or revoked"


class _KeepAliveTrouble(logging.Handler):
    """Counts the SDK's reports of keep-alive trouble. The SDK keeps registrations alive in
    the background and says so only in its log (a failed renewal at DEBUG, a lost lease at
    WARNING); counting those records measures the registrations' health without reaching
    into the SDK's internals."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.failed_renewals = 0
        self.lost = 0

    def emit(self, record: logging.LogRecord) -> None:
        text = str(record.msg)
        if text.startswith("discoverd.sdk: keep-alive of lease"):
            self.failed_renewals += 1
        elif "lost its lease" in text or "keeper of lease" in text:
            self.lost += 1


async def run_register(spec: LoadSpec, connect: Connect, progress: Progress, *,
                       services: int = 100, ttl: int = 10, service: str = "bench",
                       hold: float = 10.0) -> Report:
    """Register ``services`` instances of ``service`` (``AsyncClient.register``: a lease
    grant and a put each — the request measured), hold them for ``hold`` seconds while the
    SDK keeps them alive, count the instances still registered, then deregister them. The
    report's requests are the registrations; keep-alive failures and lost leases during the
    hold are counted, and an instance missing at the end is an error."""
    from discoverd.wire.registry_codec import service_prefix

    if services < 1 or ttl < 1:
        raise ValueError("--services and --ttl must be at least 1")
    regs: list[Registration] = []
    numbers = iter(range(services))
    trouble = _KeepAliveTrouble()
    sdk_log = logging.getLogger("discoverd.sdk")
    old_level = sdk_log.level
    sdk_log.addHandler(trouble)
    sdk_log.setLevel(logging.DEBUG)

    async def op(c: AsyncClient) -> None:
        n = next(numbers)
        reg = c.register(service, ttl=ttl, address="127.0.0.1", port=10000 + n % 50000,
                         id=f"bench-{n:06d}", meta={"bench": "1"})
        await reg.start()
        regs.append(reg)

    try:
        async with connections(connect, spec.conns) as clients:
            rec = Recorder()
            budget = Budget(services, None)
            async with progress.show("register", lambda: rec.done, services):
                seconds = await closed_loop(clients, spec.clients, budget, op, rec)
            async with progress.show("hold", lambda: len(regs), duration=hold):
                await anyio.sleep(hold)
            alive = (await clients[0].get(service_prefix(service), prefix=True,
                                          count_only=True)).count
            async with anyio.create_task_group() as tg:
                for reg in regs:
                    tg.start_soon(reg.close)
    finally:
        sdk_log.removeHandler(trouble)
        sdk_log.setLevel(old_level)
    if alive < len(regs):
        rec.errors[f"registrations gone after {hold:g}s"] += len(regs) - alive
    return Report.of("register", seconds, rec, [
        Extra("service", "Service", service),
        Extra("ttl", "TTL (s)", ttl),
        Extra("registered", "Registrations done", len(regs)),
        Extra("hold_seconds", "Held (s)", hold),
        Extra("alive_at_end", "Registered at the end of the hold", alive),
        Extra("keepalive_errors", "Keep-alive errors", trouble.failed_renewals),
        Extra("leases_lost", "Leases lost (re-registered)", trouble.lost)])


def render(report: Report, fmt: str) -> str:
    """The report as text (``simple``) or one line of JSON (``json``)."""
    if fmt == "json":
        return json.dumps(report.to_json(), ensure_ascii=False) + "\n"
    return report.text() + "\n"
