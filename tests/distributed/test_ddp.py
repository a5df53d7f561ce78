"""DistributedDataParallel and `dtrain train` under real mpiexec (see mpi_ddp.py for the rank-side checks)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
SCRIPT = str(HERE / "ranks" / "mpi_ddp.py")


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_ddp_equals_one_process(run_mpi, n):
    """MLP and CNN, float64, an uneven split of a batch of 10: one SGD step, 20 momentum-SGD and Adam steps,
    and no_sync accumulation all give the single-process parameters (max abs diff <= 1e-12)."""
    res = run_mpi(SCRIPT, n, "equivalence", timeout=300)
    assert f"equivalence OK on {n} ranks" in res.stdout


@pytest.mark.parametrize("n", [2, 3])
def test_ddp_over_a_shared_bucket_window_equals_one_process(run_mpi, n):
    """algorithm="shm": the buckets live in a shared-memory window and are summed where they are (each rank
    sums its chunk, the write-back reads every chunk from its owner). The same checks as the ring's: several
    buckets, uneven shards, no_sync, SGD and Adam to 1e-12; captured steps; a rank with an empty shard."""
    res = run_mpi(SCRIPT, n, "equivalence", "shm", timeout=300)
    assert f"equivalence OK on {n} ranks" in res.stdout
    res = run_mpi(SCRIPT, n, "captured", "shm", timeout=120)
    assert f"captured OK on {n} ranks" in res.stdout
    if n > 2:
        res = run_mpi(SCRIPT, n, "empty-shard", "shm")
        assert f"empty-shard OK on {n} ranks" in res.stdout


@pytest.mark.parametrize("n", [2, 3])
def test_a_captured_step_through_ddp_equals_one_process(run_mpi, n):
    """dt.autograd.capture around ddp(x): six momentum-SGD steps on uneven shards, traced once, equal the
    single-process parameters to 1e-12 (DDP counts samples and arms its reducer on every replay)."""
    res = run_mpi(SCRIPT, n, "captured", timeout=120)
    assert f"captured OK on {n} ranks" in res.stdout


@pytest.mark.parametrize("n", [3, 4])
def test_ranks_with_an_empty_shard_still_take_part(run_mpi, n):
    res = run_mpi(SCRIPT, n, "empty-shard")
    assert f"empty-shard OK on {n} ranks" in res.stdout


@pytest.mark.parametrize("n", [1, 3])
def test_sync_batchnorm_equals_batchnorm_on_the_whole_batch(run_mpi, n):
    res = run_mpi(SCRIPT, n, "syncbn")
    assert f"syncbn OK on {n} ranks" in res.stdout


@pytest.mark.parametrize("n", [2, 4])
def test_every_compressor_keeps_ranks_identical_and_counts_bytes(run_mpi, n):
    """50 compressed DDP steps per compressor (MLP and CNN): parameters bit-identical on all ranks, the
    loss falls, and DDP's byte count equals the bytes handed to MPI send calls."""
    res = run_mpi(SCRIPT, n, "compression", timeout=300)
    assert f"compression OK on {n} ranks" in res.stdout


@pytest.mark.parametrize("n", [2, 3])
def test_model_mismatch_raises_on_every_rank(run_mpi, n):
    res = run_mpi(SCRIPT, n, "mismatch", timeout=60)
    lines = [line for line in res.stdout.splitlines() if line.startswith("rank ")]
    assert sorted(int(line.split()[1]) for line in lines) == list(range(n))
    for line in lines:
        assert "parameter '0.weight' is (16, 6) float64 on rank 0 but (8, 6) float64 on rank 1" in line
        assert float(re.search(r"raised in ([0-9.]+) s", line).group(1)) < 5


def test_dtrain_train_under_mpiexec_matches_one_process(run_mpi, tmp_path):
    """`mpiexec -n 3 dtrain train`: the global batch is split across ranks; the run equals one process
    (float64, up to rounding), rank 0 alone writes the outputs, and every rank ends bit-identical."""
    args = ["train", "--epochs", "2", "--dtype", "float64", "--no-progress", "--hidden", "32"]
    one = subprocess.run([sys.executable, "-m", "dtrain", *args, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, timeout=120)
    assert one.returncode == 0, one.stderr
    res = run_mpi("-m", 3, "dtrain", *args, "--out", str(tmp_path / "three"), timeout=300)
    single = json.loads((tmp_path / "one" / "summary.json").read_text())
    multi = json.loads((tmp_path / "three" / "summary.json").read_text())
    assert multi["world_size"] == 3 and multi["steps"] == single["steps"] == 46
    assert abs(multi["test_loss"] - single["test_loss"]) < 1e-9
    assert multi["test_accuracy"] == single["test_accuracy"]
    records = (tmp_path / "three" / "metrics.jsonl").read_text().splitlines()
    assert len(records) == 2 and json.loads(records[-1])["bytes_sent"] > 0
    assert res.stdout.count("epoch   2") == 1  # only rank 0 prints


def test_dtrain_train_capture_under_mpiexec_equals_eager(run_mpi, tmp_path):
    """`mpiexec -n 2 dtrain train --capture` (a CNN with dropout; DDP counts samples on every replay, the
    votes travel with each replayed backward) ends with the same parameters as the eager run."""
    args = ["train", "--model", "cnn", "--max-steps", "15", "--no-progress"]
    run_mpi("-m", 2, "dtrain", *args, "--out", str(tmp_path / "eager"), timeout=180)
    run_mpi("-m", 2, "dtrain", *args, "--capture", "--out", str(tmp_path / "captured"), timeout=180)
    eager, captured = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("eager", "captured"))
    assert captured["world_size"] == 2 and captured["steps"] == eager["steps"] == 15
    assert captured["param_checksum"] == eager["param_checksum"]
    assert captured["test_loss"] == eager["test_loss"]


def test_bad_input_under_mpiexec_fails_on_every_rank_without_hanging(run_mpi):
    res = run_mpi("-m", 2, "dtrain", "train", "--dataset", "npz:/nonexistent.npz", check=False, timeout=60)
    assert res.returncode != 0
    assert "nonexistent.npz" in res.stderr


def test_bench_allreduce_cli(run_mpi):
    res = run_mpi("-m", 2, "dtrain", "bench", "allreduce", "--max-bytes", "64K", "--repeats", "2", timeout=120)
    rows = [line.split() for line in res.stdout.splitlines() if line.strip() and line.split()[0].isdigit()]
    assert [(int(r[0]), r[1]) for r in rows] == [(s, a) for s in (4096, 16384, 65536) for a in ("ring", "mpi")]
    assert all(float(r[3]) > 0 and float(r[4]) == pytest.approx(float(r[3])) for r in rows)  # n=2: busbw == algbw


def _stop_resume_and_compare(run_mpi, tmp_path, args: list, stop: int = 30) -> tuple[dict, dict]:
    """Run `args` on 2 ranks uninterrupted; run again stopping at step `stop` (checkpoint at the end) and
    resume; return both summaries."""
    ck = str(tmp_path / "ck")
    run_mpi("-m", 2, *args, "--out", str(tmp_path / "full"), timeout=120)
    run_mpi("-m", 2, *args, "--max-steps", str(stop), "--checkpoint-dir", ck, timeout=120)
    run_mpi("-m", 2, *args, "--checkpoint-dir", ck, "--resume", "--out", str(tmp_path / "resumed"), timeout=120)
    return (json.loads((tmp_path / "full" / "summary.json").read_text()),
            json.loads((tmp_path / "resumed" / "summary.json").read_text()))


def test_resume_under_mpiexec_is_bitwise_exact(run_mpi, tmp_path):
    """2 ranks with dropout (a random stream per rank), Adam and warm-up + cosine: stop mid-epoch at step 30,
    resume, and end with the bits of the uninterrupted 2-rank run. (Resuming on another number of ranks:
    test_resume_world_size.py.)"""
    args = ["dtrain", "train", "--epochs", "3", "--dtype", "float64", "--optimizer", "adam", "--lr", "3e-3",
            "--scheduler", "cosine", "--warmup-steps", "10", "--dropout", "0.2", "--hidden", "32", "--no-progress"]
    full, resumed = _stop_resume_and_compare(run_mpi, tmp_path, args)
    assert resumed["param_checksum"] == full["param_checksum"] and resumed["steps"] == 69


@pytest.mark.parametrize("spec", ["topk:0.05", "powersgd:2"])
def test_resume_with_compression_restores_error_feedback(run_mpi, tmp_path, spec):
    """Error-feedback memories and PowerSGD's Q are per rank; the checkpoint gathers them, so a resumed
    compressed run ends with the bits of the uninterrupted one."""
    args = ["dtrain", "train", "--epochs", "2", "--dtype", "float64", "--compression", spec, "--hidden", "32",
            "--no-progress"]
    full, resumed = _stop_resume_and_compare(run_mpi, tmp_path, args)
    assert resumed["param_checksum"] == full["param_checksum"]
    assert full["compression"] == spec and full["compression_ratio"] > 1.5
