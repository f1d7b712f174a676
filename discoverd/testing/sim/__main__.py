"""``python -m discoverd.testing.sim``: run or replay simulator seeds.

    python -m discoverd.testing.sim --seed 42 --trace     # replay one seed, every event
    python -m discoverd.testing.sim --seeds 0:1000 -j 2   # a range, in parallel
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor

from discoverd.testing.sim.checkers import SimFailure
from discoverd.testing.sim.cluster import SimResult, run_seed
from discoverd.testing.sim.options import SimOptions


def _run_quiet(seed: int) -> tuple[int, str | None, dict[str, int]]:
    try:
        res: SimResult = run_seed(seed)
    except SimFailure as e:
        return seed, str(e), {}
    except Exception:  # a crash of the code under test is a failure of that seed too
        replay = f"replay: python -m discoverd.testing.sim --seed {seed} --trace"
        return seed, traceback.format_exc() + replay, {}
    s = res.stats
    return seed, None, {
        "events": s.events, "crashes": s.crashes, "elections": s.leader_elections,
        "partitions": res.net["partitions"], "lost": res.net["lost"],
        "duplicated": res.net["duplicated"], "writes": s.writes_acked, "reads": s.reads_ok,
        "conf_changes": s.conf_changes, "snapshots": s.snapshots_sent,
        "torn_tails": s.torn_tails_repaired,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m discoverd.testing.sim", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, help="run one seed")
    p.add_argument("--seeds", help="run a range START:END of seeds")
    p.add_argument("--trace", action="store_true", help="print every event (with --seed)")
    p.add_argument("-j", "--jobs", type=int, default=1, help="processes for --seeds")
    args = p.parse_args(argv)
    # Torn-tail repairs are expected here (the simulator tears writes on purpose); the trace
    # reports them, so keep the storage layer's warnings off the console.
    logging.getLogger("discoverd.storage").setLevel(logging.ERROR)
    if args.seed is not None:
        print(SimOptions.swarm(args.seed).describe())
        try:
            res = run_seed(args.seed, trace=print if args.trace else None)
        except SimFailure as e:
            print(f"FAILED: {e}", file=sys.stderr)
            return 1
        print(res.summary())
        return 0
    if not args.seeds:
        p.error("give --seed N or --seeds START:END")
    start, _, end = args.seeds.partition(":")
    seeds = range(int(start), int(end))
    t0 = time.monotonic()
    totals: dict[str, int] = {}
    failures = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for n, (seed, err, counts) in enumerate(pool.map(_run_quiet, seeds, chunksize=8), 1):
            if err:
                failures.append(seed)
                print(f"seed {seed} FAILED: {err}", file=sys.stderr)
            for k, v in counts.items():
                totals[k] = totals.get(k, 0) + v
            if n % 500 == 0:
                print(f"  {n}/{len(seeds)} seeds, {time.monotonic() - t0:.0f}s", flush=True)
    took = time.monotonic() - t0
    print(f"{len(seeds)} seeds, {len(failures)} failed, {took:.1f}s; totals: "
          + ", ".join(f"{k}={v}" for k, v in totals.items()))
    if failures:
        print("failing seeds: " + " ".join(map(str, failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
