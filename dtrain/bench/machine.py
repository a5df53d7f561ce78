"""What the machine is doing while a benchmark runs: CPU time, its own and everybody's (Linux /proc/stat)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["busy_cpu_s", "own_cpu_s"]


def busy_cpu_s() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (/proc/stat; steal counts as busy)."""
    try:
        v = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    except (OSError, ValueError, IndexError):
        return None
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """CPU seconds of this process and its waited-for descendants (mpiexec and the ranks)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system
