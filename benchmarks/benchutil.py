"""Small helpers shared by the benchmark scripts in this folder (not part of the product).

The scripts put this folder on ``sys.path`` simply by being run as ``python benchmarks/x.py``.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from typing import Any


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of an already sorted sequence; 0 if empty."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return float(sorted_values[rank - 1])


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p99/max/mean of a list of durations in seconds, reported in microseconds."""
    values = sorted(seconds)
    if not values:
        return {"p50_us": 0.0, "p99_us": 0.0, "max_us": 0.0, "mean_us": 0.0}
    return {
        "p50_us": percentile(values, 50) * 1e6,
        "p99_us": percentile(values, 99) * 1e6,
        "max_us": values[-1] * 1e6,
        "mean_us": statistics.fmean(values) * 1e6,
    }


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mem_total_gib() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / (1024 * 1024)
    except OSError:
        pass
    return 0.0


CLK_TCK = os.sysconf("SC_CLK_TCK")


def system_busy_seconds() -> float:
    """CPU seconds all CPUs spent not idle (user+nice+system+irq+softirq+steal), /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return 0.0
    v = [int(x) for x in fields[:8]] + [0] * 8
    user, nice, system, _idle, _iowait, irq, softirq, steal = v[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def machine_info() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "mem_gib": round(mem_total_gib(), 1),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "python_impl": platform.python_implementation(),
        "loadavg_at_start": loadavg(),
    }


def filesystem_of(path: str) -> dict[str, str]:
    """The mount (device, mount point, fs type from /proc/mounts) holding ``path``, plus what
    ``stat -f`` says (it names ext4 "ext2/ext3")."""
    real = os.path.realpath(path)
    best = ("?", "", "?")
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                device, mount_point, fstype = parts[0], parts[1], parts[2]
                inside = real == mount_point or real.startswith(mount_point.rstrip("/") + "/")
                if inside and len(mount_point) >= len(best[1]):  # the last, deepest mount wins
                    best = (device, mount_point, fstype)
    except OSError:
        pass
    try:
        stat_f = subprocess.run(
            ["stat", "-f", "-c", "%T", real], capture_output=True, text=True, timeout=5,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        stat_f = "?"
    return {"path": real, "device": best[0], "mount_point": best[1] or "?", "fstype": best[2],
            "stat_f_type": stat_f or "?"}


def print_machine(info: dict[str, Any], out: Any = sys.stdout) -> None:
    print(f"machine: {info['nproc']} CPUs ({info['cpu_model']}), {info['mem_gib']} GiB RAM, "
          f"Linux {info['kernel']}, {info['python_impl']} {info['python']}; "
          f"load average at start {info['loadavg_at_start']}", file=out)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], out: Any = sys.stdout,
                ) -> None:
    """A plain fixed-width table (first column left-aligned, the rest right-aligned)."""
    cells = [[str(h) for h in headers]] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        line = "  ".join(
            c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row)
        )
        print(line.rstrip(), file=out)
        if n == 0:
            print("  ".join("-" * w for w in widths), file=out)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v >= 100:
            return f"{v:.0f}"
        if v >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}"
    return str(v)
