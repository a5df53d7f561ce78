"""The launchers: launch/mpirun.sh, launch/slurm.sbatch, launch/local.sh and `dtrain launch`.

Each one's dry run prints the exact command it would run; these tests check it for MPICH and Open MPI
(fake mpiexec scripts that print the version text), srun with PMIx and PMI-2, the rank count of
`-n auto`, and the errors. One test really runs `dtrain launch -n 2` under the venv's mpiexec.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import dtrain.launch as dl
from dtrain import env
from dtrain.cli import main

LAUNCH = Path(__file__).resolve().parents[1] / "launch"
SCRIPT = str(LAUNCH / "mpirun.sh")
SBATCH = str(LAUNCH / "slurm.sbatch")
LOCAL = str(LAUNCH / "local.sh")
# Written out (not imported) so that a change to dtrain.env.THREAD_VARIABLES shows up here.
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
               "NUMEXPR_NUM_THREADS", "BLIS_NUM_THREADS")
THREADS_MPICH = [item for var in THREAD_VARS for item in ("-genv", var, "1")]
THREADS_OPENMPI = [item for var in THREAD_VARS for item in ("-x", f"{var}=1")]
THREADS_SRUN_1 = " ".join(f"{var}=1" for var in THREAD_VARS)
ROOT = ["--allow-run-as-root"] if os.geteuid() == 0 else []
# Variables the launchers read or forward: tests start without them so the expected commands are exact.
LAUNCH_VARIABLES = ("CUDA_VISIBLE_DEVICES", "SLURM_CPUS_PER_TASK", "DTRAIN_SRUN_MPI", "DTRAIN_DRY_RUN", "PYTHON",
                    *env.LAUNCHER_VARIABLES)


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES and not k.startswith("DTRAIN_")}
    return {**env, **extra}


def launch(*args, env=None):
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, timeout=30,
                          env={**os.environ, **(env or {})})


def sbatch(*args, **env):
    return subprocess.run(["bash", SBATCH, *args], capture_output=True, text=True, timeout=30, env=clean_env(**env))


def dtrain_launch(*args, timeout=60, **env):
    return subprocess.run([sys.executable, "-m", "dtrain", "launch", *args], capture_output=True, text=True,
                          timeout=timeout, env=clean_env(**env))


@pytest.fixture(autouse=True)
def _no_launch_variables(monkeypatch):
    for key in [*LAUNCH_VARIABLES, *(k for k in os.environ if k.startswith("DTRAIN_"))]:
        monkeypatch.delenv(key, raising=False)


@pytest.fixture
def fake_mpiexec(tmp_path):
    def make(version_text):
        path = tmp_path / "mpiexec"
        path.write_text(f"#!/bin/sh\necho '{version_text}'\n")
        path.chmod(0o755)
        return str(path)
    return make


MPICH = "HYDRA build details: Version: 4.2.0"
OPENMPI4 = "mpiexec (OpenRTE) 4.1.5"
OPENMPI5 = "mpiexec (Open MPI) 5.0.2"


def test_mpich_command(fake_mpiexec):
    exe = fake_mpiexec("HYDRA build details: Version: 4.2.0")
    res = launch("-n", "4", "--mpiexec", exe, "--python", "python3", "--dry-run", "--", "--model", "cnn",
                 env={"DTRAIN_TIMEOUT": "30"})
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [exe, "-n", "4", *THREADS_MPICH, "-genv", "DTRAIN_TIMEOUT", "30", "python3",
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


def test_option_without_value():
    res = launch("-n", "2", "--bind")
    assert res.returncode == 2 and "launch/mpirun.sh: --bind needs a value" in res.stderr


def test_help():
    res = launch("--help")
    assert res.returncode == 0 and "--dry-run" in res.stdout and "--hostfile" in res.stdout
    assert "dry run" in res.stdout and "--bind" in res.stdout and "CUDA_VISIBLE_DEVICES" in res.stdout


# -- launch/mpirun.sh: binding and GPU environment --------------------------------------------------


@pytest.mark.parametrize("version, bind, flags", [
    (MPICH, "core", ["-bind-to", "core"]),
    (MPICH, "socket", ["-bind-to", "socket"]),
    (MPICH, "numa", ["-bind-to", "numa"]),
    (MPICH, "none", ["-bind-to", "none"]),
    (OPENMPI4, "core", ["--bind-to", "core"]),
    (OPENMPI4, "socket", ["--bind-to", "socket"]),
    (OPENMPI5, "socket", ["--bind-to", "package"]),  # PRRTE's name for a socket
    (OPENMPI5, "numa", ["--bind-to", "numa"]),
])
def test_mpirun_binding(fake_mpiexec, version, bind, flags):
    exe = fake_mpiexec(version)
    res = launch("-n", "2", "--mpiexec", exe, "--python", "python3", "--bind", bind, "--dry-run")
    assert res.returncode == 0, res.stderr
    out = res.stdout.split()
    if version == MPICH:
        assert out == [exe, "-n", "2", *flags, *THREADS_MPICH, "python3", "-m", "dtrain", "train"]
    else:
        assert out == [exe, "-n", "2", "--oversubscribe", *ROOT, *flags, *THREADS_OPENMPI,
                       "python3", "-m", "dtrain", "train"]


def test_mpirun_without_bind_passes_no_binding_flag(fake_mpiexec):
    res = launch("-n", "2", "--mpiexec", fake_mpiexec(MPICH), "--python", "python3", "--dry-run")
    out = res.stdout.split()
    assert res.returncode == 0 and "-bind-to" not in out and "--bind-to" not in out


@pytest.mark.parametrize("args, message", [
    (["--bind", "board"], "--bind must be one of none, core, socket, numa; got 'board'"),
    (["--ppn", "x"], "--ppn must be a positive integer, got 'x'"),
])
def test_mpirun_bad_bind_and_ppn(args, message):
    res = launch("-n", "2", *args, "--dry-run")
    assert res.returncode == 2 and message in res.stderr


@pytest.mark.parametrize("version", [MPICH, OPENMPI5])
def test_mpirun_forwards_cuda_visible_devices_and_dtrain_variables(fake_mpiexec, version):
    exe = fake_mpiexec(version)
    res = launch("-n", "2", "--mpiexec", exe, "--python", "python3", "--dry-run", "--", "--device", "cuda",
                 env={"CUDA_VISIBLE_DEVICES": "0,1", "DTRAIN_TIMEOUT": "30", "DTRAIN_X": "a b"})
    assert res.returncode == 0, res.stderr
    out = shlex.split(res.stdout)
    if version == MPICH:
        assert out[len(THREADS_MPICH) + 3:] == ["-genv", "DTRAIN_TIMEOUT", "30", "-genv", "DTRAIN_X", "a b",
                                                "-genv", "CUDA_VISIBLE_DEVICES", "0,1", "python3", "-m", "dtrain",
                                                "train", "--device", "cuda"]
    else:
        tail = out[out.index("BLIS_NUM_THREADS=1") + 1:]
        assert tail == ["-x", "DTRAIN_TIMEOUT", "-x", "DTRAIN_X", "-x", "CUDA_VISIBLE_DEVICES",
                        "python3", "-m", "dtrain", "train", "--device", "cuda"]


# -- launch/slurm.sbatch ------------------------------------------------------------------------------


def test_slurm_dry_run_pmix_default():
    res = sbatch("--dry-run", "--", "--model", "cnn", "--out", "runs/a b")
    assert res.returncode == 0, res.stderr
    assert res.stdout == (f"{THREADS_SRUN_1} "
                          "srun --mpi=pmix python3 -m dtrain train --model cnn --out runs/a\\ b\n")


@pytest.mark.parametrize("select", [
    {"args": ("--mpi", "pmi2"), "env": {}},
    {"args": ("--mpi=pmi2",), "env": {}},
    {"args": (), "env": {"DTRAIN_SRUN_MPI": "pmi2"}},
])
def test_slurm_dry_run_pmi2_and_cpus_per_task(select):
    """DTRAIN_DRY_RUN=1 in the environment is the same as --dry-run (as `sbatch` would pass it on)."""
    res = sbatch(*select["args"], "--", "--model", "cnn",
                 DTRAIN_DRY_RUN="1", SLURM_CPUS_PER_TASK="4", PYTHON="/opt/venv/bin/python", **select["env"])
    assert res.returncode == 0, res.stderr
    assert res.stdout == (" ".join(f"{var}=4" for var in THREAD_VARS) + " srun --mpi=pmi2 "
                          "--cpus-per-task=4 /opt/venv/bin/python -m dtrain train --model cnn\n")


def test_slurm_arguments_without_separator_go_to_train():
    res = sbatch("--dry-run", "--epochs", "2")
    assert res.returncode == 0 and res.stdout.split()[-6:] == ["python3", "-m", "dtrain", "train", "--epochs", "2"]


@pytest.mark.parametrize("args, env, message", [
    (("--dry-run",), {"SLURM_CPUS_PER_TASK": "0"}, "SLURM_CPUS_PER_TASK must be a positive integer, got '0'"),
    (("--dry-run",), {"DTRAIN_SRUN_MPI": "pmi x"}, "must be a plugin name like pmix or pmi2, got 'pmi x'"),
    (("--dry-run", "--mpi"), {}, "--mpi needs a value"),
    ((), {"DTRAIN_DRY_RUN": "maybe"}, "DTRAIN_DRY_RUN must be 1 or 0, got 'maybe'"),
    (("--", "--model", "cnn"), {"PATH": "/nonexistent"}, "srun not found"),
])
def test_slurm_errors(args, env, message):
    res = subprocess.run(["/bin/bash", SBATCH, *args], capture_output=True, text=True, timeout=30,
                         env=clean_env(**env))
    assert res.returncode == 2 and message in res.stderr, res.stderr


def test_slurm_header_requests_the_allocation():
    lines = Path(SBATCH).read_text().splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    sbatch_lines = [line for line in lines if line.startswith("#SBATCH")]
    for key in ("--nodes=", "--ntasks-per-node=", "--cpus-per-task=", "--time=", "--output=%x-%j.out"):
        assert any(line.startswith(f"#SBATCH {key}") for line in sbatch_lines), key
    assert "##SBATCH --gpus-per-node=4" in lines  # optional: one '#' less to ask for GPUs
    assert os.access(SBATCH, os.X_OK)


def test_slurm_help():
    res = sbatch("--help")
    assert res.returncode == 0 and "dry run" in res.stdout and "pmi2" in res.stdout and "DTRAIN_SRUN_MPI" in res.stdout


# -- dtrain launch (dtrain/launch.py) -----------------------------------------------------------------


def test_dtrain_launch_dry_run_exact_command(fake_mpiexec):
    exe = fake_mpiexec(MPICH)
    res = dtrain_launch("--dry-run", "-n", "3", "--mpiexec", exe, "--python", "python3", "--", "--model", "cnn",
                        "--out", "runs/a b", DTRAIN_TIMEOUT="30")
    assert res.returncode == 0, res.stderr
    assert res.stdout == (f"{exe} -n 3 {' '.join(THREADS_MPICH)} "
                          "-genv DTRAIN_TIMEOUT 30 python3 -m dtrain train --model cnn --out 'runs/a b'\n")


@pytest.mark.parametrize("version, bind", [(OPENMPI4, "socket"), (OPENMPI5, "package")])
def test_dtrain_launch_open_mpi(fake_mpiexec, version, bind):
    exe = fake_mpiexec(version)
    res = dtrain_launch("--dry-run", "-n", "2", "--mpiexec", exe, "--python", "python3", "--bind", "socket",
                        "--threads", "2", DTRAIN_TIMEOUT="30")
    assert res.returncode == 0, res.stderr
    assert shlex.split(res.stdout) == [
        exe, "-n", "2", "--oversubscribe", *ROOT, "--bind-to", bind,
        *(item for var in THREAD_VARS for item in ("-x", f"{var}=2")), "-x", "DTRAIN_TIMEOUT",
        "python3", "-m", "dtrain", "train"]


def test_dtrain_launch_default_python_and_mpiexec():
    """Without --python/--mpiexec: this interpreter, and the mpiexec beside it (the venv's) or on PATH."""
    res = dtrain_launch("--dry-run", "-n", "2")
    assert res.returncode == 0, res.stderr
    out = shlex.split(res.stdout)
    assert os.path.basename(out[0]).startswith("mpiexec") and out[1:3] == ["-n", "2"]
    assert out[-4:] == [sys.executable, "-m", "dtrain", "train"]


@pytest.mark.parametrize("threads, ranks", [(1, 5), (2, 2), (8, 1)])
def test_dtrain_launch_auto_cpu(monkeypatch, capsys, fake_mpiexec, threads, ranks):
    monkeypatch.setattr(dl, "usable_cores", lambda: 5)
    exe = fake_mpiexec(MPICH)
    assert main(["launch", "-n", "auto", "--threads", str(threads), "--dry-run", "--mpiexec", exe,
                 "--python", "python3"]) == 0
    out = shlex.split(capsys.readouterr().out)
    assert out[:3] == [exe, "-n", str(ranks)] and ["-genv", "OMP_NUM_THREADS", str(threads)] == out[3:6]


def test_thread_variables_are_the_one_list():
    """dtrain launch, launch/mpirun.sh and launch/slurm.sbatch set the same variables: dtrain.env's list."""
    assert env.THREAD_VARIABLES == dl.THREAD_VARIABLES == THREAD_VARS
    for script in (SCRIPT, SBATCH):
        lines = [line for line in Path(script).read_text().splitlines() if line.startswith("thread_variables=(")]
        assert len(lines) == 1, script
        assert tuple(lines[0][len("thread_variables=("):-1].split()) == THREAD_VARS, script


def test_dtrain_launch_auto_counts_usable_cores():
    """-n auto counts dtrain.env.usable_cores(): the affinity mask (capped by a cgroup CPU quota)."""
    assert dl.usable_cores is env.usable_cores
    assert dl.resolve_ranks("auto", "cpu", threads=1) == env.usable_cores() >= 1


def test_dtrain_launch_auto_cuda_one_rank_per_visible_gpu(fake_mpiexec):
    exe = fake_mpiexec(MPICH)
    res = dtrain_launch("-n", "auto", "--device", "cuda", "--dry-run", "--mpiexec", exe, "--python", "python3",
                        "--", "--model", "cnn", CUDA_VISIBLE_DEVICES="0,1")
    assert res.returncode == 0, res.stderr
    assert shlex.split(res.stdout) == [exe, "-n", "2", *THREADS_MPICH, "-genv", "CUDA_VISIBLE_DEVICES", "0,1",
                                       "python3", "-m", "dtrain", "train", "--device", "cuda", "--model", "cnn"]


def test_dtrain_launch_cuda_without_gpu_is_a_clear_error(fake_mpiexec):
    res = dtrain_launch("-n", "auto", "--device", "cuda", "--dry-run", "--mpiexec", fake_mpiexec(MPICH),
                        CUDA_VISIBLE_DEVICES="")
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.strip() == ("dtrain launch: error: --device cuda: no GPU is visible (CUDA_VISIBLE_DEVICES=''); "
                                  "launch CPU ranks with --device cpu, or check the driver and CUDA_VISIBLE_DEVICES")


def test_dtrain_launch_cuda_without_cupy_or_nvidia_smi(monkeypatch, capsys, fake_mpiexec):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy raises ImportError
    monkeypatch.setattr(dl.shutil, "which", lambda name: None if name == "nvidia-smi" else name)
    assert main(["launch", "-n", "auto", "--device", "cuda", "--mpiexec", fake_mpiexec(MPICH)]) == 2
    assert "no GPU is visible (cupy is not installed; nvidia-smi is not on PATH)" in capsys.readouterr().err


def test_visible_gpus_from_nvidia_smi(monkeypatch, tmp_path):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 (UUID: GPU-1)'\necho '  MIG 1g.10gb Device 0: (UUID: MIG-1)'\n"
                   "echo 'GPU 1: NVIDIA H100 (UUID: GPU-2)'\n")
    smi.chmod(0o755)
    monkeypatch.setitem(sys.modules, "cupy", None)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert dl.visible_gpus({}) == (2, f"{smi} -L lists 2 GPU(s)")


@pytest.mark.parametrize("value, n", [("0,1", 2), ("3", 1), ("", 0), ("-1", 0), ("0,-1,1", 1),
                                      ("GPU-8f2a,GPU-9e1b", 2), ("NoDevFiles", 0), (" 0, 1 ", 2)])
def test_cuda_visible_devices_count(value, n):
    assert dl.visible_gpus({"CUDA_VISIBLE_DEVICES": value})[0] == n


def test_dtrain_launch_explicit_count_with_cuda_dry_run_needs_no_gpu(fake_mpiexec):
    """A dry run with an explicit -n may print the command for another machine; a real run checks."""
    exe = fake_mpiexec(MPICH)
    res = dtrain_launch("-n", "4", "--device", "cuda", "--dry-run", "--mpiexec", exe, CUDA_VISIBLE_DEVICES="")
    assert res.returncode == 0 and "--device cuda" in res.stdout and f"{exe} -n 4 " in res.stdout
    res = dtrain_launch("-n", "4", "--device", "cuda", "--mpiexec", exe, CUDA_VISIBLE_DEVICES="")
    assert res.returncode == 2 and "no GPU is visible" in res.stderr


@pytest.mark.parametrize("args, env, message", [
    (["-n", "0"], {}, "argument -n/--np: expected 'auto' or a positive integer, got '0'"),
    (["-n", "two"], {}, "expected 'auto' or a positive integer, got 'two'"),
    (["-n", "2", "--threads", "0"], {}, "argument --threads: expected a positive integer, got '0'"),
    (["-n", "2", "--device", "tpu"], {}, "argument --device: invalid choice: 'tpu'"),
    (["-n", "2", "--bind", "board"], {}, "argument --bind: invalid choice: 'board'"),
    (["-n", "2", "--epochs", "1"], {}, "unrecognized arguments: --epochs"),
    (["-n", "2", "--mpiexec", "/nonexistent/mpiexec"], {}, "--mpiexec '/nonexistent/mpiexec' is not an executable"),
    (["-n", "2", "--", "--device", "cpu"], {}, "give --device to dtrain launch itself"),
    (["-n", "2"], {"PMI_RANK": "0"}, "dtrain launch is itself running under an MPI launcher"),
])
def test_dtrain_launch_bad_input(args, env, message):
    res = dtrain_launch(*args, "--dry-run", **env)
    assert res.returncode == 2 and message in res.stderr, res.stderr


def _fake_hydra(tmp_path, body: str):
    """An executable 'mpiexec' that says it is MPICH's Hydra to --version and otherwise runs ``body``."""
    exe = tmp_path / "mpiexec"
    exe.write_text(f'#!/bin/sh\nif [ "$1" = --version ]; then echo HYDRA; exit 0; fi\n{body}')
    exe.chmod(0o755)
    return exe


def test_dtrain_launch_returns_the_exit_status_of_mpiexec(tmp_path):
    record = tmp_path / "argv"
    exe = _fake_hydra(tmp_path, f'printf "%s\\n" "$@" > {record}\nexit 3\n')
    res = dtrain_launch("-n", "2", "--mpiexec", str(exe), "--python", "python3", "--", "--epochs", "1")
    assert res.returncode == 3, res.stderr
    assert record.read_text().split() == ["-n", "2", *THREADS_MPICH, "python3", "-m", "dtrain", "train",
                                          "--epochs", "1"]


def test_dtrain_launch_passes_sigterm_on_to_mpiexec(tmp_path):
    started = tmp_path / "started"
    exe = _fake_hydra(tmp_path, f"trap 'exit 42' TERM\ntouch {started}\nwhile :; do sleep 0.05; done\n")
    proc = subprocess.Popen([sys.executable, "-m", "dtrain", "launch", "-n", "2", "--mpiexec", str(exe)],
                            env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started.exists(), proc.communicate(timeout=10)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 42
    finally:
        proc.kill()
        proc.communicate()


def test_dtrain_launch_help():
    res = dtrain_launch("--help")
    assert res.returncode == 0 and "dry run" in res.stdout and "-n auto|N" in res.stdout
    assert "--device {cpu,cuda}" in res.stdout and "--bind {none,core,socket,numa}" in res.stdout


def test_dtrain_launch_really_runs_two_ranks():
    """The one real launch: 2 ranks under the venv's mpiexec, 3 steps."""
    res = dtrain_launch("-n", "2", "--", "--epochs", "1", "--max-steps", "3", "--no-monitor", timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "world size 2" in res.stdout and "done: 3 steps" in res.stdout


# -- launch/local.sh ----------------------------------------------------------------------------------


def test_local_sh_is_dtrain_launch(fake_mpiexec):
    exe = fake_mpiexec(MPICH)
    res = subprocess.run(["bash", LOCAL, "-n", "2", "--dry-run", "--mpiexec", exe, "--", "--epochs", "1"],
                         capture_output=True, text=True, timeout=60, env=clean_env(PYTHON=sys.executable))
    assert res.returncode == 0, res.stderr
    assert shlex.split(res.stdout) == [exe, "-n", "2", *THREADS_MPICH, sys.executable, "-m", "dtrain", "train",
                                       "--epochs", "1"]


def test_local_sh_help():
    res = subprocess.run(["bash", LOCAL, "--help"], capture_output=True, text=True, timeout=60,
                         env=clean_env(PYTHON=sys.executable))
    assert res.returncode == 0 and "dry run" in res.stdout and "-n auto|N" in res.stdout
    assert "usage: dtrain launch" in res.stdout


def test_scripts_are_executable_and_strict():
    for script in (SCRIPT, SBATCH, LOCAL):
        text = Path(script).read_text()
        assert os.access(script, os.X_OK) and "set -euo pipefail" in text
        assert subprocess.run(["bash", "-n", script]).returncode == 0
