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


def launch_worker(module: str, n: int, worker_file: Path, flags: list[str], timeout: float | None = None,
                  cluster=None, ppn: int | None = None) -> None:
    """Run ``mpiexec -n n python -m module --worker worker_file *flags`` and wait for it; on ``cluster`` (a
    :class:`dtrain.cluster.VirtualCluster`) with ``ppn`` ranks per node, through the cluster's launcher.

    Raises SystemExit naming the benchmark when no mpiexec exists or the launch fails (its ranks'
    output has gone to this terminal already).
    """
    name = module.rsplit(".", 1)[-1]
    if cluster is not None:
        return _launch_on_cluster(cluster, name, module, n, ppn, [str(worker_file), *flags], timeout)
    mpiexec = local_mpiexec()
    if mpiexec is None:
        raise SystemExit(f"{name} benchmark: no mpiexec found next to the interpreter or on PATH (pip install mpich)")
    child_env = env.thread_env(1)
    child_env.update(_checkout_path())
    cmd = [mpiexec, *local_launch_flags(mpiexec), "-n", str(n), sys.executable, "-m", module,
           "--worker", str(worker_file), *flags]
    try:
        subprocess.run(cmd, env=child_env, check=True, timeout=timeout)
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"{name} benchmark: the {n}-rank launch failed (exit status {exc.returncode}); "
                         "see its output above") from None
    except subprocess.TimeoutExpired:
        raise SystemExit(f"{name} benchmark: the {n}-rank launch ran past {timeout} s") from None


def _checkout_path() -> dict[str, str]:
    repo = str(Path(__file__).resolve().parents[2])  # the dtrain being run, even when it is not installed
    return {"PYTHONPATH": os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH", "")) if p)}


def _launch_on_cluster(cluster, name: str, module: str, n: int, ppn: int | None, rest: list[str],
                       timeout: float | None) -> None:
    from ..cluster import ClusterError

    argv = [sys.executable, "-m", module, "--worker", *rest]
    try:
        done = cluster.run(n, argv, ppn=ppn, env=_checkout_path(), timeout=timeout)
    except (ClusterError, ValueError) as exc:
        raise SystemExit(f"{name} benchmark: {exc}") from None
    if done.returncode == 124:
        raise SystemExit(f"{name} benchmark: the {n}-rank launch on the virtual cluster ran past {timeout} s")
    if done.returncode != 0:
        raise SystemExit(f"{name} benchmark: the {n}-rank launch on the virtual cluster failed (exit status "
                         f"{done.returncode}); see its output above")
