"""launch/mpirun.sh: the exact command it would run (dry run), for MPICH and Open MPI, and its errors."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = str(Path(__file__).resolve().parents[1] / "launch" / "mpirun.sh")


def launch(*args, env=None):
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, timeout=30,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def fake_mpiexec(tmp_path):
    def make(version_text):
        path = tmp_path / "mpiexec"
        path.write_text(f"#!/bin/sh\necho '{version_text}'\n")
        path.chmod(0o755)
        return str(path)
    return make


def test_mpich_command(fake_mpiexec):
    exe = fake_mpiexec("HYDRA build details: Version: 4.2.0")
    res = launch("-n", "4", "--mpiexec", exe, "--python", "python3", "--dry-run", "--", "--model", "cnn",
                 env={"DTRAIN_TIMEOUT": "30"})
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [exe, "-n", "4", "-genv", "OMP_NUM_THREADS", "1", "-genv", "OPENBLAS_NUM_THREADS",
                                  "1", "-genv", "MKL_NUM_THREADS", "1", "-genv", "DTRAIN_TIMEOUT", "30", "python3",
                                  "-m", "dtrain", "train", "--model", "cnn"]


def test_openmpi_command(fake_mpiexec, tmp_path):
    exe = fake_mpiexec("mpiexec (OpenRTE) 4.1.5")
    hosts = tmp_path / "hosts"
    hosts.write_text("node1 slots=2\n")
    res = launch("-n", "2", "--mpiexec", exe, "--python", "python3", "--hostfile", str(hosts), "--ppn", "1",
                 "--threads", "2", "--dry-run")
    assert res.returncode == 0, res.stderr
    out = res.stdout.split()
    assert out[:4] == [exe, "-n", "2", "--oversubscribe"]
    assert ["--hostfile", str(hosts)] == out[out.index("--hostfile"):out.index("--hostfile") + 2]
    assert "ppr:1:node" in out and "OMP_NUM_THREADS=2" in out
    assert out[-4:] == ["python3", "-m", "dtrain", "train"]


@pytest.mark.parametrize("args, message", [
    (["-n", "0"], "-n must be a positive integer, got '0'"),
    (["-n", "two"], "-n must be a positive integer, got 'two'"),
    (["-n", "2", "--hostfile", "/nonexistent/hosts"], "hostfile '/nonexistent/hosts' does not exist"),
    (["-n", "2", "--epochs", "3"], "unknown option '--epochs' (use -- before dtrain train's own flags)"),
    (["-n", "2", "--threads", "0"], "--threads must be a positive integer"),
])
def test_bad_arguments(args, message):
    res = launch(*args, "--dry-run")
    assert res.returncode == 2 and message in res.stderr


def test_help():
    res = launch("--help")
    assert res.returncode == 0 and "--dry-run" in res.stdout and "--hostfile" in res.stdout
