"""Measuring helpers shared by the benches (``bench/``), one copy of each.

- ``percentile``: the nearest-rank quantile of some samples.
- ``cpu_seconds``: a process's CPU time (its threads included) from Linux's /proc.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def percentile(values: Iterable[float], q: float) -> float:
    """The nearest-rank quantile ``q`` (0 to 1) of ``values``; ValueError when there are none."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no samples")
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (its threads included), from /proc/<pid>/stat.

    Raises OSError when the process is gone (or there is no /proc)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the name, in parentheses, may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLK_TCK
