"""A nemesis: one fault at a time, drawn from a seed, against a ``ProcessCluster``.

The loop is apply → hold → heal → quiet → next. Holding a single fault and then healing it
completely keeps every failure a test sees explainable ("m2 was isolated while it led") and
leaves the cluster a chance to recover between faults, which is when the bugs that matter —
a stale leader serving, a lost acknowledged write, a member that never catches up — show.

Fault kinds (the strings in ``faults``):

* ``"kill"``: SIGKILL a member — the current leader with probability 1/2, else a random
  one — and start it again (``cluster.start``) at the end of the hold: a crash and a restart
  from whatever reached its disk.
* ``"pause"``: SIGSTOP a member (the leader with probability 1/2), SIGCONT at the end: a
  process that stops answering without closing a socket — a GC pause, a frozen VM. The
  others see silence, not a closed connection.
* ``"partition"``: a random minority against the majority, both ways.
* ``"isolate_leader"``: the current leader against everyone else, both ways.
* ``"one_way"``: one or two distinct random directed links blocked (``a → b`` cut, ``b → a`` kept):
  the asymmetric failures that stress pre-vote and check-quorum.
* ``"delay"``: every link 10 to 80 ms slower, with up to half that as jitter.
* ``"drop"``: every link loses 5 to 30 % of its frames (whole Raft message batches).

The network kinds need ``ProcessCluster(peer_proxies=True)``; see ``netfaults``.

Replaying a schedule. Every choice the nemesis makes — the kind, how long to hold and to
stay quiet, which member *by index*, whether to pick the leader, the split, the links, the
delay and loss — comes from ``random.Random(seed)`` in a fixed order, and nothing else
draws from that generator, so ``plan_faults(seed, ...)`` (no processes needed) is exactly
the sequence a run with that seed works through. What cannot be replayed is what the
cluster was doing: *who* led when "kill the leader" came up. That is resolved at apply time
and recorded in ``steps`` (``targets``), next to the planned fault, so a failing run says
both what was drawn and what it hit. Drops draw from ``PeerFaults``' own generator, reseeded
from the same seed at the start of a run.

Healing is idempotent and total (``heal``): every member that was started is resumed,
restarted if down, every link healed, and each member must answer ``status`` within a
deadline; a run always ends with it, also when stopped early or when a step failed.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from discoverd.testing.cluster import ClientFailure, MemberProcess, ProcessCluster, wait_for
from discoverd.testing.netfaults import PeerFaults

PROCESS_FAULTS = ("kill", "pause")
NETWORK_FAULTS = ("partition", "isolate_leader", "one_way", "delay", "drop")
DEFAULT_FAULTS: tuple[str, ...] = (*PROCESS_FAULTS, *NETWORK_FAULTS)

FAULT_SECONDS_ENV = "DISCOVERD_FAULT_SECONDS"

READY_TIMEOUT = 30.0
"""Seconds a healed member gets to answer ``status`` again."""


def fault_seconds(default: float) -> float:
    """How long a long fault run lasts: ``$DISCOVERD_FAULT_SECONDS``, else ``default``."""
    raw = os.environ.get(FAULT_SECONDS_ENV, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{FAULT_SECONDS_ENV}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise ValueError(f"{FAULT_SECONDS_ENV} must be positive, not {raw!r}")
    return value


@dataclass(frozen=True, slots=True)
class PlannedFault:
    """One fault as drawn from the seed, before it meets the cluster. Only the fields of
    its kind mean anything; the rest keep their defaults."""

    kind: str
    hold: float
    quiet: float
    index: int = 0
    """The member (index into ``cluster.members``): the target of kill/pause when not the
    leader, and the stand-in for the leader when there is none."""
    leader: bool = False
    """kill/pause: aim at the leader."""
    minority: tuple[int, ...] = ()
    """partition: the indices cut off from the rest."""
    links: tuple[tuple[int, int], ...] = ()
    """one_way: (src index, dst index) links blocked."""
    seconds: float = 0.0
    jitter: float = 0.0
    probability: float = 0.0


@dataclass(slots=True)
class Step:
    """What was done: the planned fault, the members it resolved to, and when (seconds
    since the run started; ``healed`` None while the fault holds)."""

    number: int
    fault: PlannedFault
    targets: tuple[str, ...]
    detail: str
    applied: float
    healed: float | None = None

    @property
    def kind(self) -> str:
        return self.fault.kind

    def __str__(self) -> str:
        end = "…" if self.healed is None else f"{self.healed:.2f}s"
        return f"#{self.number} {self.applied:.2f}s..{end} {self.kind}: {self.detail}"


def _draw(rng: random.Random, kinds: Sequence[str], size: int, hold: tuple[float, float],
          quiet: tuple[float, float]) -> PlannedFault:
    """One fault. The order of draws is the replay contract: change it and every recorded
    seed means another schedule."""
    kind = rng.choice(kinds)
    h = rng.uniform(*hold)
    q = rng.uniform(*quiet)
    index = rng.randrange(size)
    if kind in PROCESS_FAULTS:
        return PlannedFault(kind, h, q, index=index, leader=rng.random() < 0.5)
    if kind == "partition":
        k = rng.randint(1, max(1, (size - 1) // 2))
        return PlannedFault(kind, h, q, index=index,
                            minority=tuple(sorted(rng.sample(range(size), k))))
    if kind == "one_way":
        pairs = [(s, d) for s in range(size) for d in range(size) if s != d]
        links = rng.sample(pairs, rng.randint(1, 2))
        return PlannedFault(kind, h, q, index=index, links=tuple(links))
    if kind == "delay":
        seconds = rng.uniform(0.010, 0.080)
        return PlannedFault(kind, h, q, index=index, seconds=seconds,
                            jitter=rng.uniform(0.0, seconds / 2))
    if kind == "drop":
        return PlannedFault(kind, h, q, index=index, probability=rng.uniform(0.05, 0.30))
    return PlannedFault(kind, h, q, index=index)  # isolate_leader


def _check_kinds(faults: Sequence[str]) -> None:
    if not faults:
        raise ValueError("a nemesis needs at least one fault kind")
    unknown = sorted(set(faults) - set(DEFAULT_FAULTS))
    if unknown:
        raise ValueError(f"unknown fault kinds {unknown}; known: {list(DEFAULT_FAULTS)}")


def iter_faults(seed: int, *, size: int, faults: Sequence[str] = DEFAULT_FAULTS,
                hold: tuple[float, float] = (0.5, 2.0),
                quiet: tuple[float, float] = (0.3, 1.0)) -> Iterator[PlannedFault]:
    """The endless schedule of ``seed`` for a cluster of ``size`` members."""
    _check_kinds(faults)
    if size < 2:
        raise ValueError("a nemesis needs a cluster of at least two members")
    kinds = tuple(faults)
    rng = random.Random(seed)
    while True:
        yield _draw(rng, kinds, size, hold, quiet)


def plan_faults(seed: int, count: int, *, size: int, faults: Sequence[str] = DEFAULT_FAULTS,
                hold: tuple[float, float] = (0.5, 2.0),
                quiet: tuple[float, float] = (0.3, 1.0)) -> list[PlannedFault]:
    """The first ``count`` faults a nemesis with this seed would apply (no processes)."""
    it = iter_faults(seed, size=size, faults=faults, hold=hold, quiet=quiet)
    return [next(it) for _ in range(count)]


class NemesisStopped(Exception):
    """Raised inside a run when ``stop()`` interrupts it (never escapes ``run``)."""


class Nemesis:
    """Faults against ``cluster``, one at a time, from ``seed``. See the module docstring."""

    def __init__(
        self,
        cluster: ProcessCluster,
        *,
        seed: int,
        faults: Sequence[str] = DEFAULT_FAULTS,
        hold: tuple[float, float] = (0.5, 2.0),
        quiet: tuple[float, float] = (0.3, 1.0),
        log: Callable[[str], None] | None = None,
    ) -> None:
        _check_kinds(faults)
        network = sorted(set(faults) & set(NETWORK_FAULTS))
        if network and cluster.faults is None:
            raise ValueError(f"fault kinds {network} need ProcessCluster(peer_proxies=True)")
        if not (0 <= hold[0] <= hold[1] and 0 <= quiet[0] <= quiet[1]):
            raise ValueError("hold and quiet are (low, high) ranges of non-negative seconds")
        self.cluster = cluster
        self.seed = seed
        self.faults = tuple(faults)
        self.hold = hold
        self.quiet = quiet
        self._log = log
        self._schedule = iter_faults(seed, size=len(cluster.members), faults=self.faults,
                                     hold=hold, quiet=quiet)
        self.steps: list[Step] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._t0 = time.monotonic()
        self._paused: set[str] = set()
        self._killed: set[str] = set()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ control

    def planned(self, count: int) -> list[PlannedFault]:
        """The first ``count`` faults of this nemesis' schedule (whatever has been run)."""
        return plan_faults(self.seed, count, size=len(self.cluster.members),
                           faults=self.faults, hold=self.hold, quiet=self.quiet)

    def run(self, seconds: float) -> None:
        """Apply faults for about ``seconds`` (a hold is cut short at the end), then heal
        everything. Blocks; ``stop()`` from another thread ends it early."""
        self._t0 = time.monotonic()
        deadline = self._t0 + seconds
        if self.cluster.faults is not None:
            self.cluster.faults.seed(self.seed)
            for m in self.cluster.members:  # ids now, while every member answers
                if m.running:
                    self.cluster.member_id(m)
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                fault = next(self._schedule)
                step = self._apply(fault)
                try:
                    self._sleep(min(fault.hold, deadline - time.monotonic()))
                finally:
                    self._heal_step(step)
                self._sleep(min(fault.quiet, deadline - time.monotonic()))
        except NemesisStopped:
            pass
        finally:
            self.heal()
            self._say(f"nemesis done: {self.summary()}")

    def start(self, seconds: float) -> None:
        """``run(seconds)`` in a background thread; ``stop()`` joins it."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("this nemesis is already running")
        self._stop.clear()
        self._error = None

        def main() -> None:
            try:
                self.run(seconds)
            except BaseException as e:
                self._error = e

        self._thread = threading.Thread(target=main, name=f"nemesis-{self.seed}",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 120.0) -> None:
        """Interrupt the run now, wait for it to heal and end, and re-raise what failed in
        it. Also a plain ``heal()`` when nothing was started."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                raise AssertionError(f"nemesis did not stop within {timeout}s")
            self._thread = None
        else:
            self.heal()
        error, self._error = self._error, None
        if error is not None:
            raise error

    def wait(self, timeout: float = 600.0) -> None:
        """Wait for a ``start``ed run to end on its own; re-raise what failed in it."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                raise AssertionError(f"nemesis still running after {timeout}s")
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def heal(self) -> None:
        """Every started member running and resumed (restarted if down), every link healed,
        and each member answering ``status`` (bounded wait). Safe to call at any time, any
        number of times."""
        with self._lock:
            started = [m for m in self.cluster.members if m.proc is not None]
            for m in started:
                if m.running:
                    assert m.proc is not None
                    with contextlib.suppress(ProcessLookupError):
                        m.proc.send_signal(signal.SIGCONT)
            self._paused.clear()
            if self.cluster.faults is not None:
                self.cluster.faults.heal_all()
            for m in started:
                if not m.running:
                    self._say(f"heal: starting {m.name}")
                    self.cluster.start(m)
            self._killed.clear()
        for m in started:
            wait_for(f"{m.name} to answer after healing", m.status, timeout=READY_TIMEOUT)

    # ------------------------------------------------------------------ observation

    def summary(self) -> dict[str, int]:
        """How many faults of each kind were applied."""
        return dict(Counter(s.kind for s in self.steps))

    def describe(self) -> str:
        return "\n".join(str(s) for s in self.steps)

    # ------------------------------------------------------------------ internals

    def _now(self) -> float:
        return time.monotonic() - self._t0

    def _say(self, line: str) -> None:
        if self._log is not None:
            self._log(line)

    def _sleep(self, seconds: float) -> None:
        if seconds > 0 and self._stop.wait(seconds):
            raise NemesisStopped

    def _leader(self) -> MemberProcess | None:
        with contextlib.suppress(OSError, ClientFailure):
            return self.cluster.leader()
        return None

    def _network(self) -> PeerFaults:
        assert self.cluster.faults is not None  # checked in __init__
        return self.cluster.faults

    def _apply(self, f: PlannedFault) -> Step:
        members = self.cluster.members
        step = Step(len(self.steps) + 1, f, (), "", self._now())
        if f.kind in PROCESS_FAULTS or f.kind == "isolate_leader":
            lead = self._leader() if (f.leader or f.kind == "isolate_leader") else None
            target = lead if lead is not None else members[f.index]
            why = "leader" if lead is not None else (
                "no agreed leader, by index" if f.leader or f.kind == "isolate_leader"
                else "by index")
            step.targets = (target.name,)
            with self._lock:
                if f.kind == "kill":
                    if target.running:
                        self.cluster.kill(target)
                    self._killed.add(target.name)
                    step.detail = f"SIGKILL {target.name} ({why}), hold {f.hold:.2f}s"
                elif f.kind == "pause":
                    if target.running:
                        self.cluster.pause(target)
                        self._paused.add(target.name)
                    step.detail = f"SIGSTOP {target.name} ({why}), hold {f.hold:.2f}s"
                else:
                    self._network().isolate(target, [m for m in members if m is not target])
                    step.detail = f"isolate {target.name} ({why}), hold {f.hold:.2f}s"
        elif f.kind == "partition":
            minority = [members[i] for i in f.minority]
            majority = [m for m in members if m not in minority]
            self._network().partition(minority, majority)
            step.targets = tuple(m.name for m in minority)
            step.detail = (f"partition {[m.name for m in minority]} | "
                           f"{[m.name for m in majority]}, hold {f.hold:.2f}s")
        elif f.kind == "one_way":
            for src, dst in f.links:
                self._network().partition_one_way(members[src], members[dst])
            step.targets = tuple(f"{members[s].name}->{members[d].name}" for s, d in f.links)
            step.detail = f"block {', '.join(step.targets)}, hold {f.hold:.2f}s"
        elif f.kind == "delay":
            self._network().delay_all(f.seconds, f.jitter)
            step.detail = (f"delay all links {f.seconds * 1000:.0f}±{f.jitter * 1000:.0f}ms, "
                           f"hold {f.hold:.2f}s")
        elif f.kind == "drop":
            self._network().drop_all(f.probability)
            step.detail = f"drop {f.probability:.0%} of frames on all links, hold {f.hold:.2f}s"
        else:  # pragma: no cover - _check_kinds refuses unknown kinds
            raise ValueError(f"unknown fault kind {f.kind!r}")
        self.steps.append(step)
        self._say(f"nemesis: {step}")
        return step

    def _heal_step(self, step: Step) -> None:
        """Undo one fault: resume, restart (and wait for the restarted member), heal links."""
        with self._lock:
            for name in sorted(self._paused):
                m = self.cluster.member(name)
                if m.running:
                    self.cluster.resume(m)
            self._paused.clear()
            restarted = []
            for name in sorted(self._killed):
                m = self.cluster.member(name)
                if not m.running:
                    self.cluster.start(m)
                    restarted.append(m)
            self._killed.clear()
            if self.cluster.faults is not None:
                self.cluster.faults.heal_all()
        for m in restarted:
            wait_for(f"{m.name} to answer after its restart", m.status, timeout=READY_TIMEOUT)
        step.healed = self._now()
        self._say(f"nemesis: healed #{step.number} at {step.healed:.2f}s")
