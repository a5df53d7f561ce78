"""Plain ``mpiexec -n 4 dtrain train`` with no thread variables sizes each rank's BLAS pool itself and trains
exactly what ``dtrain launch -n 4`` trains (issue 14: it used to start machine-wide BLAS on every rank).

The thread variables are REMOVED from the environment the ranks get: CI sets OMP_NUM_THREADS=1 and its
siblings globally, which would hide the behaviour under test. Timings are never asserted here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dtrain.env import LAUNCHER_VARIABLES, THREAD_VARIABLES, usable_cores
from dtrain.launch import local_launch_flags, local_mpiexec

REPO = Path(__file__).resolve().parents[2]
RANKS = 4
TRAIN = ["--model", "cnn", "--epochs", "1", "--no-progress", "--no-monitor"]


def _bare_env() -> dict[str, str]:
    """This environment without any thread variable (nor a launcher's: we are not a rank), dtrain importable."""
    environ = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES + LAUNCHER_VARIABLES}
    environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), environ.get("PYTHONPATH", "")) if p)
    environ.pop("PYTHONUNBUFFERED", None)  # ranks print whole lines with flush=True; unbuffered would split them
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    return environ


def _run(cmd: list[str], timeout: float = 180) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_bare_env(),
                            cwd=str(REPO), start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"timed out after {timeout} s: {' '.join(cmd)}\n{out}\n{err}", pytrace=False)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n--- stdout ---\n{out}\n--- stderr ---\n{err}"
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_plain_mpiexec_sizes_threads_and_matches_dtrain_launch(tmp_path):
    mpiexec = local_mpiexec()
    if mpiexec is None:
        pytest.skip("no mpiexec found (pip install mpich, or put an MPI launcher on PATH)")
    per_rank = max(1, usable_cores() // RANKS)
    plain = _run([mpiexec, *local_launch_flags(mpiexec), "-n", str(RANKS), sys.executable, "-m", "dtrain", "train",
                  *TRAIN, "--out", str(tmp_path / "mpiexec")])
    assert plain.stdout.splitlines()[0] == (
        f"BLAS threads: {per_rank} per rank ({usable_cores()} usable core{'s' if usable_cores() > 1 else ''} / "
        f"{RANKS} ranks on this node; set by dtrain; OMP_NUM_THREADS or --threads to override)"), plain.stdout
    # dtrain launch sets the thread variables itself (--threads, default 1: the count plain mpiexec chose on a
    # machine of up to 7 cores); the same count on both sides, so the same sums in the same order.
    launched = _run([sys.executable, "-m", "dtrain", "launch", "-n", str(RANKS), "--threads", str(per_rank),
                     "--mpiexec", mpiexec, "--", *TRAIN, "--out", str(tmp_path / "launch")])
    assert launched.stdout.splitlines()[0] == (
        f"BLAS threads: {per_rank} per rank (OMP_NUM_THREADS={per_rank} and {len(THREAD_VARIABLES) - 1} more thread "
        "variables set by the launcher or the user; --threads to override)"), launched.stdout
    sums = [json.loads((tmp_path / run / "summary.json").read_text())["param_checksum"]
            for run in ("mpiexec", "launch")]
    assert sums[0] == sums[1] and len(sums[0]) == 64
