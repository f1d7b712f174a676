"""When to compact, automatically (etcd's ``--auto-compaction-mode/-retention``) — pure:
time and revisions are passed in; ``server/compactor.py`` runs it on the leader.

* ``periodic``: keep ``retention`` seconds of history. The policy samples the store's
  revision every ``retention / 10`` (at most every hour / 10, as etcd does) and compacts to
  the newest sample at least ``retention`` old.
* ``revision``: keep ``retention`` revisions. Every check interval (etcd: 5 minutes) it
  compacts to ``current - retention``.

Either way the target is held back so that no live watcher loses history it still needs —
the oldest revision any watcher still has to deliver (on the leader or reported by a
follower) caps the target — but only *within a bound*: a watcher more than ``watch_bound``
revisions behind the current revision is not allowed to pin history forever (a stuck client
would make the store grow without limit); it is compacted past, and canceled with the
compaction revision so its client re-lists. ``retention`` 0 turns compaction off.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from discoverd.errors import ClientError

ETCD_REVISION_CHECK_SECONDS = 300.0
_MAX_PERIODIC_CHECK_SECONDS = 3600.0 / 10


@dataclass(frozen=True, slots=True)
class CompactionPlan:
    revision: int
    held_by_watcher: bool = False
    """The target was lowered to keep a watcher's history."""
    watcher_dropped: bool = False
    """A watcher further behind than the bound did not hold it back."""


def parse_retention(mode: str, text: str) -> float:
    """etcd's ``--auto-compaction-retention``: periodic takes a duration (``30m``, ``1h``,
    ``90s``) or a bare number of hours; revision takes a count. Returns seconds or a count."""
    s = text.strip()
    if mode == "revision":
        if not s.isdigit():
            raise ClientError(f"--auto-compaction-retention {text!r}: revision mode takes a "
                              "whole number of revisions")
        return float(int(s))
    if mode != "periodic":
        raise ClientError(f"--auto-compaction-mode must be 'periodic' or 'revision', not "
                          f"{mode!r}")
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for unit in ("ms", "s", "m", "h"):
        if s.endswith(unit) and s[: -len(unit)].replace(".", "", 1).isdigit():
            return float(s[: -len(unit)]) * units[unit]
    if s.replace(".", "", 1).isdigit():
        return float(s) * 3600.0
    raise ClientError(f"--auto-compaction-retention {text!r}: expected a duration such as "
                      "'1h' or '30m', or a number of hours")


class AutoCompaction:
    def __init__(self, mode: str, retention: float, *, watch_bound: int,
                 check_interval: float = 0.0) -> None:
        if mode not in ("periodic", "revision"):
            raise ClientError(f"unknown auto-compaction mode {mode!r}")
        if retention < 0 or watch_bound < 0 or check_interval < 0:
            raise ClientError("auto-compaction retention, bound and interval must be >= 0")
        self.mode = mode
        self.retention = retention
        self.watch_bound = watch_bound
        if check_interval:
            self.interval = check_interval
        elif mode == "periodic":
            self.interval = min(retention / 10, _MAX_PERIODIC_CHECK_SECONDS)
        else:
            self.interval = ETCD_REVISION_CHECK_SECONDS
        self._samples: deque[tuple[float, int]] = deque()

    @property
    def enabled(self) -> bool:
        return self.retention > 0

    def reset(self) -> None:
        """Forget the samples (leadership moved: a new leader starts its own window)."""
        self._samples.clear()

    def plan(self, now: float, revision: int, compacted: int,
             oldest_watch: int | None) -> CompactionPlan | None:
        """What to compact to now, if anything. ``compacted``: the store's compact revision;
        ``oldest_watch``: the lowest revision a live watcher still has to deliver."""
        if not self.enabled:
            return None
        if self.mode == "revision":
            target = revision - int(self.retention)
        else:
            # Keep the newest sample that is old enough at the front: it is the target.
            self._samples.append((now, revision))
            horizon = now - self.retention
            while len(self._samples) >= 2 and self._samples[1][0] <= horizon:
                self._samples.popleft()
            first_time, first_revision = self._samples[0]
            target = first_revision if first_time <= horizon else 0
        held = dropped = False
        if oldest_watch is not None and oldest_watch - 1 < target:
            if revision - oldest_watch <= self.watch_bound:
                target = oldest_watch - 1
                held = True
            else:
                dropped = True
        if target <= compacted or target < 1:
            return None
        return CompactionPlan(target, held, dropped)
