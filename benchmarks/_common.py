"""Helpers shared by the benchmark scripts (run them as ``python benchmarks/NAME.py``)."""

from __future__ import annotations

import os
import platform
import shutil
import sys
from pathlib import Path

LAUNCHER_VARS = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where available)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def fmt_load(load) -> str:
    """A load-average triple as '0.88/0.67/0.32'."""
    return "/".join(f"{x:.2f}" for x in load)


def command_section(command: str) -> list[str]:
    """Markdown lines recording the exact command that produced a result file."""
    return ["## Command", "", "```", command, "```", ""]


def find_mpiexec() -> str | None:
    """mpiexec next to the running Python (the venv's MPI), else the first on PATH."""
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.is_file() else shutil.which("mpiexec")


def under_mpiexec() -> bool:
    """Whether this process was started by an MPI launcher."""
    return any(v in os.environ for v in LAUNCHER_VARS)


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


def blas_info() -> str:
    """NumPy's BLAS as 'name version'."""
    import numpy as np

    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # older NumPy: no mode="dicts"
        return "unknown"
