"""The deterministic simulator: many members, one thread, one seed (see ``cluster``).

Run ``python -m discoverd.testing.sim --seed N --trace`` to replay a seed event by event.
"""

from discoverd.testing.sim.checkers import SimFailure
from discoverd.testing.sim.cluster import SimResult, Simulator, run_seed
from discoverd.testing.sim.options import SimOptions

__all__ = ["SimFailure", "SimOptions", "SimResult", "Simulator", "run_seed"]
