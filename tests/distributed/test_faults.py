"""Failing fast instead of hanging, under a real mpiexec: a rank is SIGKILLed at a random moment and the
job must end non-zero within --timeout + 10 s, with a report naming the missing rank and the collective;
a killed job resumes to the bit-identical result; SIGTERM stops every rank at the same step with a
final checkpoint. (tests/stress/kill_trials.py runs the kill trial 20 times.)"""

from __future__ import annotations

import os
import signal
import time

import pytest
from faults import TRIAL_TIMEOUT, kill_trial, launch, summary_of

pytestmark = pytest.mark.skipif(
    not __import__("faults").find_mpiexec(), reason="no mpiexec found (pip install mpich)")

SEED = int(os.environ.get("DTRAIN_FAULT_SEED", int.from_bytes(os.urandom(3), "little")))


@pytest.mark.parametrize("trial", range(5))
def test_killed_rank_ends_the_job_with_a_report(tmp_path, trial):
    result = kill_trial(tmp_path, SEED + trial, timeout=TRIAL_TIMEOUT)
    assert result.ok, (f"trial seed {result.seed} (rerun with DTRAIN_FAULT_SEED={SEED}): {result.nprocs} ranks, "
                       f"rank {result.victim} killed: {result.problem}")
    assert result.seconds <= TRIAL_TIMEOUT + 10


@pytest.mark.parametrize("trial", range(3))
def test_killed_rank_with_buckets_in_a_shared_window_ends_the_job_with_a_report(tmp_path, trial):
    """--allreduce shm: DDP's buckets live in a shared-memory window, summed between barriers of the node; a
    rank killed anywhere (the window's barriers, the sample counts, the release after the write-back) must
    still end the job with a report naming it."""
    result = kill_trial(tmp_path, SEED + 100 + trial, timeout=TRIAL_TIMEOUT, extra=("--allreduce", "shm"))
    assert result.ok, (f"trial seed {result.seed} (rerun with DTRAIN_FAULT_SEED={SEED}): {result.nprocs} ranks, "
                       f"rank {result.victim} killed: {result.problem}")
    assert result.seconds <= TRIAL_TIMEOUT + 10


def test_killed_rank_with_the_launchers_cleanup_ends_the_job_quickly(tmp_path):
    """With MPICH's default clean-up (or Open MPI's), the launcher ends the job itself as soon as it sees a
    rank die; dtrain must not stand in its way (e.g. with signal handlers that keep ranks alive)."""
    job = launch(tmp_path, 3, ["--epochs", "100000", "--hidden", "16", "--no-monitor", "--timeout", "30"],
                 split_output=True)
    try:
        job.wait_for(lambda: "epoch   1" in job.rank_text(0, "out") and all(job.pid(r) for r in range(3)), 60,
                     "the first epoch")
        os.kill(job.pid(1), signal.SIGKILL)
        status, waited = job.finish(30 + 10)
    finally:
        job.kill()
    assert status not in (None, 0), job.output()
    assert waited <= 40


def _train_args(folder, compression: str) -> list[str]:
    return ["--dtype", "float64", "--epochs", "3", "--hidden", "24", "--batch-size", "60", "--dropout", "0.1",
            "--no-monitor", "--compression", compression, "--checkpoint-dir", str(folder / "ckpt"),
            "--checkpoint-every", "5", "--keep-checkpoints", "2", "--out", str(folder / "out"), "--timeout", "30"]


@pytest.mark.parametrize("compression", ["none", "topk:0.05"])
def test_kill_then_resume_is_bitwise_identical(tmp_path, compression):
    """2 ranks, float64, dropout, error feedback: kill a rank at a random moment (whole job dies), resume
    from the latest checkpoint (mid-epoch: 24 batches per epoch, checkpoints every 5 steps), and the
    final parameters equal those of an uninterrupted run bit for bit."""
    ref = launch(tmp_path / "ref", 2, _train_args(tmp_path / "ref", compression))
    status, _ = ref.finish(120)
    assert status == 0, ref.output()
    expected = summary_of(tmp_path / "ref" / "out")

    victim = launch(tmp_path / "run", 2, _train_args(tmp_path / "run", compression))
    manifest = tmp_path / "run" / "ckpt" / "latest.json"
    try:
        victim.wait_for(manifest.exists, 60, "the first checkpoint")
        time.sleep(0.05 + (SEED % 7) * 0.03)
        os.kill(victim.pid(SEED % 2), signal.SIGKILL)
        status, _ = victim.finish(60)
    finally:
        victim.kill()
    assert status != 0, "the killed job reported success"

    resumed = launch(tmp_path / "resumed", 2, [*_train_args(tmp_path / "run", compression), "--resume"])
    status, _ = resumed.finish(120)
    assert status == 0, resumed.output()
    got = summary_of(tmp_path / "run" / "out")
    assert "resumed from" in resumed.rank_text(0, "out"), resumed.output()
    assert got["steps"] == expected["steps"]
    assert got["param_checksum"] == expected["param_checksum"], resumed.output()


def test_sigterm_to_one_rank_stops_every_rank_with_a_checkpoint(tmp_path):
    """SIGTERM to rank 1 only: both ranks agree (the vote travels with the gradient sync) and stop after the
    same step, rank 0 writes a checkpoint, every rank exits 143; resuming ends bitwise like a clean run."""
    ref = launch(tmp_path / "ref", 2, _train_args(tmp_path / "ref", "none"))
    assert ref.finish(120)[0] == 0, ref.output()
    expected = summary_of(tmp_path / "ref" / "out")

    job = launch(tmp_path / "run", 2, _train_args(tmp_path / "run", "none"))
    try:
        job.wait_for(lambda: "epoch   1" in job.rank_text(0, "out") and job.pid(1), 60, "the first epoch")
        os.kill(job.pid(1), signal.SIGTERM)
        status, _ = job.finish(60)
    finally:
        job.kill()
    text0, text1 = job.rank_text(0), job.rank_text(1)
    if "interrupted by" not in text0:  # training ended before the signal arrived: nothing to check
        pytest.skip("the run finished before SIGTERM arrived")
    assert status == 143, job.output()
    assert "received SIGTERM" in text1, job.output()
    assert "checkpoint" in text0 and "--resume" in text0, job.output()
    resumed = launch(tmp_path / "resumed", 2, [*_train_args(tmp_path / "run", "none"), "--resume"])
    assert resumed.finish(120)[0] == 0, resumed.output()
    got = summary_of(tmp_path / "run" / "out")
    assert got["param_checksum"] == expected["param_checksum"]
