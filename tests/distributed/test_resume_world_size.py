"""Resuming a checkpoint under a different number of ranks (`mpiexec -n K dtrain train --resume`).

One uninterrupted 2-rank run is the reference. A 2-rank run stopped mid-epoch is resumed with 1, 2
and 3 ranks, each from its own copy of the checkpoint folder. The final parameters are read from the
checkpoint every run writes when it ends.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dtrain.train import CheckpointManager, load_checkpoint


def _run_mpi_script():
    # The module-scoped fixture below cannot use the function-scoped run_mpi fixture; load the helper
    # from tests/distributed/conftest.py by path (`import conftest` could find tests/conftest.py instead).
    spec = importlib.util.spec_from_file_location("_dtrain_dist_conftest", Path(__file__).with_name("conftest.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.run_mpi_script

# Tiny and fast: digits, a 16-unit MLP, float64, Adam with warm-up + cosine; 23 steps per epoch.
COMMON = ("train", "--epochs", "2", "--dtype", "float64", "--hidden", "16", "--dropout", "0", "--optimizer", "adam",
          "--lr", "3e-3", "--scheduler", "cosine", "--warmup-steps", "5", "--no-progress", "--no-monitor")
STOP = 30  # mid-way through epoch 2


def _train(run_mpi, n: int, folder, *extra):
    run_mpi("-m", n, "dtrain", *COMMON, "--out", str(folder / "out"), "--checkpoint-dir", str(folder / "ck"),
            *extra, timeout=120)
    summary = json.loads((folder / "out" / "summary.json").read_text())
    summary["last_record"] = json.loads((folder / "out" / "metrics.jsonl").read_text().splitlines()[-1])
    final = load_checkpoint(CheckpointManager(str(folder / "ck")).latest())
    return summary, final


def _same_train_loss(a: dict, b: dict) -> bool:
    """The interrupted epoch's train loss: its partial sums were saved summed over all ranks and restored
    on rank 0, so the epoch's loss is the same whatever world size finished it."""
    x, y = a["last_record"]["train_loss"], b["last_record"]["train_loss"]
    return a["last_record"]["epoch"] == b["last_record"]["epoch"] == 2 and abs(x - y) <= 1e-9 * abs(y)


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """The uninterrupted 2-rank run and a 2-rank run stopped (checkpointed) at step STOP."""
    run_mpi_script = _run_mpi_script()
    root = tmp_path_factory.mktemp("resume-world-size")
    full = _train(run_mpi_script, 2, root / "full")
    _train(run_mpi_script, 2, root / "stopped", "--max-steps", str(STOP))
    stop_ck = load_checkpoint(CheckpointManager(str(root / "stopped" / "ck")).latest())
    assert stop_ck["world_size"] == 2 and stop_ck["trainer"]["step"] == STOP and stop_ck["trainer"]["batch"] > 0
    return root, full


def _resume(run_mpi, root, n: int, source: str = "stopped", *extra):
    folder = root / f"{source}-resumed-{n}"
    shutil.copytree(root / source / "ck", folder / "ck")
    return _train(run_mpi, n, folder, "--resume", *extra)


def test_resume_on_the_same_world_size_is_bitwise_exact(run_mpi, stopped):
    root, (full, _) = stopped
    summary, _ = _resume(run_mpi, root, 2)
    assert summary["world_size"] == 2 and summary["steps"] == full["steps"] == 46
    assert summary["param_checksum"] == full["param_checksum"]
    assert _same_train_loss(summary, full)


@pytest.mark.parametrize("n", [1, 3])
def test_resume_on_another_world_size_matches_the_uninterrupted_run(run_mpi, stopped, n):
    """Model, optimizer, schedule and loop position restore exactly and the global batches are the same
    at any world size, so only rounding differs: each global batch's gradient average is summed over a
    different split (and in a different order) across ranks. Hence close (rtol 1e-9), not bitwise."""
    root, (full, full_ck) = stopped
    summary, final = _resume(run_mpi, root, n)
    assert summary["world_size"] == n and summary["steps"] == full["steps"] == 46
    assert final["trainer"]["step"] == full_ck["trainer"]["step"] == 46
    assert set(final["model"]) == set(full_ck["model"])
    for name, expected in full_ck["model"].items():
        np.testing.assert_allclose(final["model"][name], expected, rtol=1e-9, atol=1e-12, err_msg=name)
    assert abs(summary["test_loss"] - full["test_loss"]) <= 1e-9 * abs(full["test_loss"])
    assert _same_train_loss(summary, full)


def test_compressed_run_resumes_on_another_world_size_with_a_warning(run_mpi, stopped):
    """Error-feedback memories are per rank and cannot be split over 3 ranks: they are dropped, the run
    says so once and goes on (compressed, no longer exact)."""
    root, _ = stopped
    topk = ("--compression", "topk:0.05")
    _train(run_mpi, 2, root / "topk", "--max-steps", str(STOP), *topk)
    folder = root / "topk-resumed-3"
    shutil.copytree(root / "topk" / "ck", folder / "ck")
    res = run_mpi("-m", 3, "dtrain", *COMMON, *topk, "--checkpoint-dir", str(folder / "ck"), "--resume",
                  "--out", str(folder / "out"), timeout=120)
    warnings = [line for line in res.stderr.splitlines() if "compression restarts with empty memories" in line]
    assert len(warnings) == 1 and "saved by 2 rank(s) and this run has 3" in warnings[0], res.stderr
    summary = json.loads((folder / "out" / "summary.json").read_text())
    assert summary["world_size"] == 3 and summary["steps"] == 46 and summary["compression"] == "topk:0.05"
