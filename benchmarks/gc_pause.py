"""What CPython's cyclic collector costs a member as its store grows (issue 12, fifth session).

    flock /tmp/bench.lock python benchmarks/gc_pause.py --keys 1000000

In this process (no cluster): ``--keys`` puts of 256-byte values into an ``MvccStore``, then

* ``full collection``: ``gc.collect()`` over everything (what CPython starts by itself each
  time the long-lived objects grew by a quarter) — the pause a member without
  ``server/gc_policy.py`` takes, on its one thread, at that size;
* ``after a freeze``: the same once ``gc.freeze()`` moved the store out of sight, as the
  serving member's rounds do;
* ``restore``: ``MvccStore.from_obj`` of the store's image (a restart's rebuild), with the
  collector on (CPython's thresholds as a serving member sets them) and inside
  ``gc_policy.loading_long_lived()``.

Each figure is the median of ``--reps`` runs, in seconds.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from collections.abc import Callable

from discoverd.kv.requests import PutRequest
from discoverd.kv.store import MvccStore
from discoverd.server.gc_policy import GC_THRESHOLDS, loading_long_lived


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    value = os.urandom(128).hex().encode()
    store = MvccStore()
    for i in range(a.keys):
        store.put(PutRequest(key=b"/bench/key/%09d" % i, value=value))
    gc.collect()
    print(f"{a.keys:,} keys: {len(gc.get_objects()):,} objects tracked by the collector")

    full = statistics.median(timed(gc.collect) for _ in range(a.reps))
    gc.freeze()
    frozen = statistics.median(timed(gc.collect) for _ in range(a.reps))
    gc.unfreeze()
    print(f"full collection: {full:.3f} s; after a freeze: {frozen:.4f} s")

    image = store.to_obj()
    del store
    gc.collect()
    gc.set_threshold(*GC_THRESHOLDS)

    def restore_collecting() -> None:
        MvccStore.from_obj(image)

    def restore_loading() -> None:
        with loading_long_lived():
            MvccStore.from_obj(image)
        gc.unfreeze()  # the next repetition starts from the same state

    on = statistics.median(timed(restore_collecting) for _ in range(a.reps))
    off = statistics.median(timed(restore_loading) for _ in range(a.reps))
    print(f"restore: {on:.2f} s with the collector on, {off:.2f} s in loading_long_lived()")


if __name__ == "__main__":
    main()
