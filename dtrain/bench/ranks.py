"""Running a benchmark's rank side: one ``mpiexec -n K`` per world size, results handed back in a file.

A benchmark that measures several world sizes is its own launcher: run without mpiexec, it starts
``mpiexec -n K python -m dtrain.bench.NAME --worker FILE ...`` for each K (one BLAS thread per rank, the
checkout importable), the ranks write their result to FILE, and the launcher writes one report.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .. import env
from ..launch import local_launch_flags, local_mpiexec

__all__ = ["launch_worker", "under_mpiexec"]


def under_mpiexec() -> bool:
    """Whether an MPI launcher started this process (then it measures the world it is in)."""
    return env.launched_by_mpi()


def launch_worker(module: str, n: int, worker_file: Path, flags: list[str], timeout: float | None = None) -> None:
    """Run ``mpiexec -n n python -m module --worker worker_file *flags`` and wait for it.

    Raises SystemExit naming the benchmark when no mpiexec exists or the launch fails (its ranks'
    output has gone to this terminal already).
    """
    name = module.rsplit(".", 1)[-1]
    mpiexec = local_mpiexec()
    if mpiexec is None:
        raise SystemExit(f"{name} benchmark: no mpiexec found next to the interpreter or on PATH (pip install mpich)")
    repo = str(Path(__file__).resolve().parents[2])  # the dtrain being run, even when it is not installed
    child_env = env.thread_env(1)
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, child_env.get("PYTHONPATH", "")) if p)
    cmd = [mpiexec, *local_launch_flags(mpiexec), "-n", str(n), sys.executable, "-m", module,
           "--worker", str(worker_file), *flags]
    try:
        subprocess.run(cmd, env=child_env, check=True, timeout=timeout)
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"{name} benchmark: the {n}-rank launch failed (exit status {exc.returncode}); "
                         "see its output above") from None
    except subprocess.TimeoutExpired:
        raise SystemExit(f"{name} benchmark: the {n}-rank launch ran past {timeout} s") from None
