"""The deterministic simulator over many seeds (DESIGN §13).

``DISCOVERD_SIM_SEEDS`` sets how many fresh seeds run (default 100, in parallel on every
core); ``DISCOVERD_SIM_FIRST_SEED`` where they start. Every failure names its seed and the
command that replays it event by event.
"""

from __future__ import annotations

import os
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from discoverd.testing.sim import SimFailure, SimOptions, Simulator, run_seed

REGRESSIONS = [
    int(line.split("#")[0])
    for line in (Path(__file__).parent / "regressions.txt").read_text().splitlines()
    if line.split("#")[0].strip()
]


def _outcome(seed: int) -> tuple[int, str | None, int]:
    try:
        result = run_seed(seed)
    except SimFailure as e:
        return seed, str(e), 0
    except Exception:  # the code under test crashed: a failure of this seed as well
        replay = f"replay: python -m discoverd.testing.sim --seed {seed} --trace"
        return seed, f"{traceback.format_exc()}{replay}", 0
    return seed, None, result.stats.events


@pytest.mark.parametrize("seed", REGRESSIONS)
def test_regression_seed(seed: int) -> None:
    run_seed(seed)


def test_swarm_of_seeds() -> None:
    count = int(os.environ.get("DISCOVERD_SIM_SEEDS", "100"))
    first = int(os.environ.get("DISCOVERD_SIM_FIRST_SEED", "1000"))
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        outcomes = list(pool.map(_outcome, range(first, first + count), chunksize=4))
    failures = [f"seed {seed}: {err}" for seed, err, _ in outcomes if err]
    assert not failures, "\n\n".join(failures)
    assert sum(events for _, _, events in outcomes) > count * 1000  # the runs did real work


def test_same_seed_replays_the_same_run() -> None:
    traces: list[list[str]] = [[], []]
    for trace in traces:
        Simulator(SimOptions.swarm(7), trace=trace.append).run()
    assert len(traces[0]) > 1000
    assert traces[0] == traces[1]


def test_liveness_failure_is_reported_with_replay_command() -> None:
    """A liveness bound that no cluster can meet (1 ms to elect and commit) must fail the
    run with the seed and a replay command, not hang or pass."""
    opts = SimOptions.swarm(3)
    opts.liveness_us = 1000
    with pytest.raises(SimFailure, match=r"liveness.*\n(.*\n)*.*replay: python -m discoverd"):
        Simulator(opts).run()
