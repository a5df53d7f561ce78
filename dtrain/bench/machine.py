"""What the machine is doing while a benchmark runs, and what a reader needs to judge the numbers.

CPU time (its own and everybody's, from Linux /proc/stat), the CPU, BLAS, MPI library and load;
``pin_blas_threads`` gives every benchmark one BLAS thread per process before NumPy loads its BLAS.
Cores and the CPU model come from :mod:`dtrain.env` (the one place that knows them).
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

from .. import env

__all__ = ["OtherLoad", "blas_info", "busy_cpu_s", "fmt_load", "load_avg", "machine_info", "mpi_library",
           "own_cpu_s", "pin_blas_threads"]


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


class OtherLoad:
    """CPU time other processes used while a block ran: the machine's busy time minus ours.

    ``with OtherLoad() as load: ...`` then ``load.wall`` (seconds), ``load.other_s`` (CPU seconds of
    others, None where /proc/stat is unreadable) and ``load.cores_busy`` (other_s / wall).
    """

    def __enter__(self):
        self.t0, self.busy0, self.own0 = time.perf_counter(), busy_cpu_s(), own_cpu_s()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.t0
        busy1 = busy_cpu_s()
        self.other_s = (None if busy1 is None or self.busy0 is None else
                        max(0.0, (busy1 - self.busy0) - (own_cpu_s() - self.own0)))
        self.cores_busy = None if self.other_s is None else self.other_s / max(self.wall, 1e-9)
        return False


def load_avg() -> tuple[float, float, float]:
    """The 1/5/15-minute load averages (zeros where the OS does not report them)."""
    try:
        return os.getloadavg()
    except OSError:
        return (0.0, 0.0, 0.0)


def fmt_load(load) -> str:
    """A load-average triple as '0.88/0.67/0.32'."""
    return "/".join(f"{x:.2f}" for x in load)


def blas_info() -> str:
    """NumPy's BLAS as 'name version'."""
    import numpy as np

    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # older NumPy: no mode="dicts"
        return "unknown"


def mpi_library() -> str:
    """The MPI library's version line (first line of MPI_Get_library_version), whitespace folded."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        return f"unavailable ({exc})"
    return " ".join(MPI.Get_library_version().splitlines()[0].split())


def machine_info() -> dict:
    """Cores, CPU model, load, versions: what a reader needs to judge the numbers."""
    import numpy as np

    return {"cores": env.usable_cores(), "cpu_count": os.cpu_count(), "cpu_model": env.cpu_model(),
            "load_avg_at_start": fmt_load(load_avg()), "python": platform.python_version(),
            "numpy": np.__version__, "platform": platform.platform(), "host": platform.node()}


def pin_blas_threads() -> None:
    """Make sure this process runs with one BLAS/OpenMP thread (``dtrain.env.THREAD_VARIABLES`` = 1).

    BLAS reads those variables once, when NumPy loads it, and every dtrain import loads NumPy: so when
    any of them is not 1 yet, this re-executes the same command line with them set (the process keeps
    its PID, its MPI launcher's file descriptors and its arguments). Benchmarks call it first thing.
    """
    if all(os.environ.get(v) == "1" for v in env.THREAD_VARIABLES):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env.thread_env(1))
