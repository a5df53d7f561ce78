"""Collectives and DDP on CuPy arrays under a real mpiexec, one GPU per rank (cuda:{local_rank % GPUs}).
Skipped where CuPy or a GPU is missing (CI); run on a GPU machine for real."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dtrain.distributed.gpu import gpu_count

pytestmark = pytest.mark.skipif(gpu_count() == 0, reason="needs CuPy and a CUDA GPU")
SCRIPT = str(Path(__file__).parent / "ranks" / "mpi_gpu.py")


@pytest.mark.parametrize("n", [1, 2])
def test_collectives_and_ddp_on_gpu_match_cpu(run_mpi, n):
    res = run_mpi(SCRIPT, n, timeout=300)
    for r in range(n):
        assert f"gpu OK rank {r}" in res.stdout


def test_dtrain_train_on_gpu_matches_cpu(run_mpi, tmp_path):
    summaries = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        run_mpi("-m", 2, "dtrain", "train", "--device", device, "--epochs", "2", "--no-monitor", "--out", str(out),
                timeout=300)
        summaries[device] = json.loads((out / "summary.json").read_text())
    cpu, gpu = summaries["cpu"], summaries["cuda"]
    assert gpu["steps"] == cpu["steps"]
    assert abs(gpu["test_loss"] - cpu["test_loss"]) <= 1e-4 * abs(cpu["test_loss"]) + 1e-5
