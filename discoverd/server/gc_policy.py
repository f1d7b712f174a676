"""How a serving member's process uses CPython's cyclic garbage collector.

Reference counting frees almost everything a member lets go of; the cyclic collector is
there for cycles only. But a *full* collection walks every container object the process
holds, and a member's store is millions of them (about five per key: at a million keys a
full collection takes 0.5 to 0.6 s on an idle core of the 2-core test machine, longer on busy
shared cores). CPython starts one whenever the objects that survived into the oldest
generation grew by a quarter, so as the store grows the pauses grow with it — at ~800k keys,
past the election timeout: a leader change in the middle of a bulk load (issue 12, twice in
two runs, both at 785k and 796k keys, where that growth rule puts a full collection).

So a serving member moves what has lived a while out of the collector's sight
(``gc.freeze``) every ``FREEZE_INTERVAL_SECONDS``, right after a full collection of what is
not frozen yet — only what was made since the previous round, so the pause is short. No
collection walks the store again.

The price: an object frozen while alive that later becomes part of an unreachable *cycle*
is not reclaimed by the rounds. The store's objects form no cycles (reference counting
frees them when compaction or a delete lets go); what does form cycles mostly dies young,
before a round freezes it. Not all: a client connection frozen while open that ends by
cancellation leaves its tasks, frames and tracebacks (~100 objects) in a cycle — measured
in ``tests/server/test_gc_policy.py``: 96 objects in about one run in three of 80
connections against a member freezing every 10 ms. So every ``SWEEP_INTERVAL_SECONDS`` a
member whose frozen objects are few enough for the pause to stay short
(``SWEEP_MAX_FROZEN``: ~0.1 s) unfreezes everything for one full collection; a larger store
keeps that small leak rather than stall for it.

Only ``discoverd serve`` does this (it owns its process); members built inside another
program (tests, embedding) leave that program's collector alone.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Iterator
from typing import Any

import structlog
import trio

GC_THRESHOLDS = (20_000, 10, 10)
"""The cyclic collector's thresholds for a serving member (CPython's default is 700, 10, 10).
Requests allocate many short-lived containers, so at 700 the young generation is collected
every few requests and objects are promoted early, which makes full collections more
frequent. Measured (issue 12, 64 writers): the put p99 fell from ~70 ms to ~45 ms with no
change in throughput."""

FREEZE_INTERVAL_SECONDS = 2.0
"""How often survivors are frozen. Shorter: shorter pauses (each round collects what was
made since the last one: ~20 ms after 2 s of a 16k-keys/s bulk load), more of them."""


SWEEP_INTERVAL_SECONDS = 600.0
SWEEP_MAX_FROZEN = 1_000_000
"""A full sweep (everything unfrozen, collected, frozen again) every 10 minutes while at
most this many objects are frozen: ~0.1 s here (0.5 s at 5M, a million keys)."""


def configure_for_serving() -> None:
    """At a serving process's start: what exists now (modules, classes, functions) lives as
    long as the process — out of every collection; then the thresholds above."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


@contextlib.contextmanager
def loading_long_lived() -> Iterator[None]:
    """Around building what will live as long as the process (a restart's store: millions
    of objects, none of them garbage): no collections meanwhile — each would walk all that
    was built so far, and CPython starts one at every quarter's growth, several seconds in
    all at a million keys — and all of it frozen at the end."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.freeze()


class SurvivorFreezer:
    """Every ``interval``: a full collection of what is not frozen yet, then ``gc.freeze()``
    (the module docstring says why). Its figures are the member's ``discoverd_gc_*``
    metrics."""

    def __init__(self, interval: float = FREEZE_INTERVAL_SECONDS, log: Any = None, *,
                 sweep_interval: float = SWEEP_INTERVAL_SECONDS,
                 sweep_max_frozen: int = SWEEP_MAX_FROZEN) -> None:
        self.interval = interval
        self.sweep_interval = sweep_interval
        self.sweep_max_frozen = sweep_max_frozen
        self.sweeps = 0
        self.log = log if log is not None else structlog.get_logger("gc")
        self.rounds = 0
        self.pause_seconds_total = 0.0
        self.longest_pause_seconds = 0.0
        self.collected = 0
        """Unreachable objects the rounds' collections found (cycles that died young)."""

    @property
    def frozen(self) -> int:
        """Objects in the permanent generation now."""
        return gc.get_freeze_count()

    def round(self, *, sweep: bool = False) -> float:
        """One round; returns its pause in seconds. ``sweep``: unfreeze everything first,
        so the collection walks it all and reclaims cycles that formed among frozen
        objects."""
        started = time.perf_counter()
        if sweep:
            gc.unfreeze()
            self.sweeps += 1
        self.collected += gc.collect()
        gc.freeze()
        pause = time.perf_counter() - started
        self.rounds += 1
        self.pause_seconds_total += pause
        if pause > self.longest_pause_seconds:
            self.longest_pause_seconds = pause
            self.log.debug("gc freeze round", pause_ms=round(pause * 1000, 1),
                           frozen=gc.get_freeze_count())
        return pause

    async def run(self) -> None:
        next_sweep = trio.current_time() + self.sweep_interval
        while True:
            await trio.sleep(self.interval)
            due = trio.current_time() >= next_sweep
            if due:
                next_sweep += self.sweep_interval
            self.round(sweep=due and gc.get_freeze_count() <= self.sweep_max_frozen)
