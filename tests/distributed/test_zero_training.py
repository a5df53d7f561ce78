"""``dtrain train --zero``: ZeRO-1 in the training command, under mpiexec, against DDP and across restarts.

Every multi-rank run is a real ``mpiexec -n N python -m dtrain train``; the final parameters and optimizer state
are read from the checkpoint each run writes when it ends.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dtrain.train import CheckpointManager, load_checkpoint
from dtrain.train.config import ConfigError, resolve_config
from dtrain.train.job import build_job, model_defaults

# digits, a 16-unit MLP, float64, Adam with warm-up + cosine: 23 steps per epoch; the last global batch is
# uneven, so the sample weighting of the average is exercised.
COMMON = ("train", "--epochs", "2", "--dtype", "float64", "--hidden", "16", "--dropout", "0", "--optimizer", "adam",
          "--lr", "3e-3", "--scheduler", "cosine", "--warmup-steps", "5", "--no-progress", "--no-monitor")
TOL = 1e-12
SCRIPT = Path(__file__).parent / "ranks" / "mpi_zero_train.py"


def _train(run_mpi, n: int, folder, *extra):
    res = run_mpi("-m", n, "dtrain", *COMMON, "--out", str(folder / "out"), "--checkpoint-dir", str(folder / "ck"),
                  *extra, timeout=120)
    summary = json.loads((folder / "out" / "summary.json").read_text())
    return summary, load_checkpoint(CheckpointManager(str(folder / "ck")).latest()), res


def _max_diff(a: dict, b: dict) -> float:
    """The largest difference between the models and the optimizers' state arrays of two checkpoints."""
    assert sorted(a["model"]) == sorted(b["model"])
    worst = max(float(np.max(np.abs(np.asarray(a["model"][k]) - np.asarray(b["model"][k])))) for k in a["model"])
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sorted(sa) == sorted(sb) and all(sorted(sa[i]) == sorted(sb[i]) for i in sa)
    for i in sa:
        for key in sa[i]:
            worst = max(worst, float(np.max(np.abs(np.asarray(sa[i][key], dtype=np.float64)
                                                   - np.asarray(sb[i][key], dtype=np.float64)))))
    return worst


def test_zero_over_shm_trains_bit_for_bit_as_ddp_over_shm(run_mpi, tmp_path):
    """Summed in the same order and updated elementwise: ZeRO's sharded step is DDP's step, to the bit."""
    ddp, ddp_ck, _ = _train(run_mpi, 2, tmp_path / "ddp", "--allreduce", "shm")
    zero, zero_ck, _ = _train(run_mpi, 2, tmp_path / "zero", "--allreduce", "shm", "--zero")
    assert zero["steps"] == ddp["steps"] == 46
    assert zero["param_checksum"] == ddp["param_checksum"]
    assert zero["test_loss"] == ddp["test_loss"] and zero["test_accuracy"] == ddp["test_accuracy"]
    assert _max_diff(zero_ck, ddp_ck) == 0.0
    assert zero_ck["optimizer"]["param_groups"] == ddp_ck["optimizer"]["param_groups"]


def test_zero_over_the_ring_matches_ddp_at_three_ranks(run_mpi, tmp_path):
    """Uneven shards of every global batch (64 = 22 + 21 + 21): each rank weighted by its samples, as DDP does; only
    the rounding of the gradient average differs (another summation order)."""
    ddp, ddp_ck, _ = _train(run_mpi, 3, tmp_path / "ddp")
    zero, zero_ck, _ = _train(run_mpi, 3, tmp_path / "zero", "--zero")
    assert zero["steps"] == ddp["steps"] == 46 and zero["world_size"] == 3
    assert _max_diff(zero_ck, ddp_ck) <= TOL
    assert abs(zero["test_loss"] - ddp["test_loss"]) <= 1e-9


@pytest.mark.parametrize("n, extra", [(2, ("--allreduce", "shm")), (3, ())])
def test_zero_clips_the_averaged_gradient_as_ddp_does(run_mpi, tmp_path, n, extra):
    """--clip-grad-norm under --zero clips inside the sharded step, by the norm of the whole averaged gradient
    (summed from the shards): DDP's clipped result to the norm's rounding; and the clipping did act."""
    clip = ("--clip-grad-norm", "0.05")
    _, ddp_ck, _ = _train(run_mpi, n, tmp_path / "ddp", *extra, *clip)
    _, zero_ck, _ = _train(run_mpi, n, tmp_path / "zero", *extra, "--zero", *clip)
    _, free_ck, _ = _train(run_mpi, n, tmp_path / "free", *extra, "--zero")
    assert _max_diff(zero_ck, ddp_ck) <= TOL
    assert _max_diff(zero_ck, free_ck) > 1e-3


def test_a_zero_checkpoint_resumes_at_any_world_size(run_mpi, tmp_path):
    """The sharded state is gathered into the unsharded optimizer's state_dict (every rank asks, rank 0 writes):
    resumed under 2 ranks with --zero it continues bit for bit; under 1 rank (plain Adam) or 3 ranks (--zero over
    the ring) it matches the uninterrupted run to the rounding of the gradient average."""
    _, full_ck, _ = _train(run_mpi, 2, tmp_path / "full", "--allreduce", "shm", "--zero")
    _, stop_ck, _ = _train(run_mpi, 2, tmp_path / "stopped", "--allreduce", "shm", "--zero", "--max-steps", "30")
    assert stop_ck["trainer"]["step"] == 30 and stop_ck["optimizer"]["state"]
    for n, extra in ((2, ("--allreduce", "shm", "--zero")), (1, ()), (3, ("--zero",))):
        folder = tmp_path / f"resumed-{n}"
        shutil.copytree(tmp_path / "stopped" / "ck", folder / "ck")
        summary, ck, _ = _train(run_mpi, n, folder, "--resume", *extra)
        assert summary["steps"] == 46 and ck["trainer"]["step"] == 46
        if n == 2:
            assert _max_diff(ck, full_ck) == 0.0
        else:
            assert _max_diff(ck, full_ck) <= TOL


def test_a_rank_with_an_empty_shard_still_takes_part(run_mpi, tmp_path):
    """Global batches of 2 over 1437 samples: the last one has a single sample, so rank 1's shard is empty (no
    forward, no gradients): it still votes and steps (zeros, weight 0), and the run keeps DDP's bits."""
    runs = []
    for name, extra in (("ddp", ()), ("zero", ("--zero",))):
        out = tmp_path / name
        run_mpi("-m", 2, "dtrain", "train", "--epochs", "1", "--batch-size", "2", "--hidden", "16", "--lr", "1e-3",
                "--allreduce", "shm", "--no-progress", "--no-monitor", "--out", str(out), *extra, timeout=120)
        runs.append(json.loads((out / "summary.json").read_text()))
    assert runs[0]["steps"] == runs[1]["steps"] == 719
    assert runs[0]["param_checksum"] == runs[1]["param_checksum"]


def test_zero_with_a_dynamic_loss_scale_unscales_before_the_step(run_mpi, tmp_path):
    """--precision fp16: the loss scale multiplies each rank's own gradients, which --zero unscales before its step
    averages them (a power of two: exact), so it trains to DDP's bits (both averaging in float32 here)."""
    runs = []
    for name, extra in (("ddp", ("--compression", "none")), ("zero", ("--zero",))):
        out = tmp_path / name
        run_mpi("-m", 2, "dtrain", "train", "--epochs", "1", "--max-steps", "15", "--precision", "fp16",
                "--allreduce", "shm", "--no-progress", "--no-monitor", "--out", str(out), *extra, timeout=120)
        runs.append(json.loads((out / "summary.json").read_text()))
    assert runs[0]["steps"] == runs[1]["steps"] == 15 and np.isfinite(runs[1]["test_loss"])
    assert runs[0]["param_checksum"] == runs[1]["param_checksum"]


@pytest.mark.parametrize("algorithm, policy", [("shm", "skip"), ("ring", "raise")])
def test_non_finite_gradients_on_one_rank_are_decided_alike_on_every_rank(run_mpi, algorithm, policy):
    """Rank 1's own gradients are infinite at step 3 (its loss is finite): every rank skips that step, or every rank
    raises, though rank 0's gradients were finite; no rank is left waiting."""
    res = run_mpi(SCRIPT, 2, algorithm, policy, 3, timeout=120)
    seen = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert sorted(r["rank"] for r in seen) == [0, 1] and {r["sync"] for r in seen} == {"ZeroGradientSync"}
    assert len({r["checksum"] for r in seen}) == 1
    if policy == "skip":
        assert all(r["steps"] == 12 and r["skipped"] == 1 and r["error"] is None for r in seen)
    else:
        assert all(r["steps"] == 2 and "non-finite gradients after the all-reduce at step 3 (epoch 1): the loss was "
                   "finite on every rank, the gradients were not" in r["error"] for r in seen)


@pytest.mark.parametrize("flags, message", [
    ({"compression": "fp16"}, "--zero does not compress gradients: drop --compression fp16"),
    ({"allreduce": "mpi"}, "--zero takes --allreduce ring or shm (the ZeRO optimizer's own collectives), got "
                           "--allreduce mpi"),
])
def test_what_zero_cannot_do_is_refused_in_every_world(flags, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_config({"zero": True, **flags}, None, model_defaults)


def test_zero_with_fp16_takes_no_compression_by_default():
    cfg = resolve_config({"zero": True, "precision": "fp16"}, None, model_defaults)
    assert cfg["compression"] == "none"


def test_zero_in_one_process_is_the_plain_optimizer():
    """A world of one has nothing to shard: --zero trains exactly as without it."""
    from dtrain.train import param_checksum

    runs = []
    for zero in (False, True):
        trainer = build_job(resolve_config({"zero": zero, "epochs": 1, "max_steps": 5, "hidden": "16",
                                            "progress": False, "monitor": False}, None, model_defaults))
        trainer.fit()
        runs.append((type(trainer.optimizer).__name__, param_checksum(trainer.model)))
    assert runs[0] == runs[1]
