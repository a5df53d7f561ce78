"""Elastic runs under a real mpiexec: `dtrain launch -n 3 --max-restarts R -- ...` with a rank killed or hung
mid-training (the job restarts from the last good checkpoint and finishes), a bad option or a data error
(exit 2, no restart), failures beyond the limit (non-zero, one line per attempt), SIGTERM to the supervisor
(a checkpoint, no restart), and the restarted run bit-identical to an undisturbed one in float64."""

from __future__ import annotations

import random
import re
import signal
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from elastic_jobs import (
    Injector,
    assert_names_a_killed_rank,
    attempt_dir,
    events,
    finish,
    start,
    summary,
    wait_for_step,
)

from dtrain.elastic import ElasticError, parse_hosts, train_args_for
from dtrain.train.config import ConfigError, parse_checkpoint_every

EVERY = 40  # steps between checkpoints
# 15 epochs of 23 steps (batch 64 over 1437 samples) of a 1.1 M-parameter MLP: ~10 s on 3 ranks, 2 cores
TRAIN = ["--epochs", "15", "--hidden", "1024,1024", "--seed", "1", "--no-monitor", "--dtype", "float64"]


def _train(out: Path, *extra: str) -> list[str]:
    return [*TRAIN, "--out", str(out), "--checkpoint-dir", str(out / "ck"), *extra]


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory) -> dict:
    """The same job, supervised, with nothing going wrong: its summary."""
    out = tmp_path_factory.mktemp("undisturbed")
    status, _, err = finish(start(["launch", "-n", "3", "--max-restarts", "2", "--",
                                   *_train(out, "--checkpoint-every", str(EVERY))]))
    assert status == 0, err[-3000:]
    s = summary(out)
    assert s["restarts"] == 0 and s["steps_redone"] == 0
    return s


def test_a_killed_rank_restarts_from_the_last_checkpoint_and_ends_bit_identical(tmp_path, undisturbed):
    rank = random.Random(15).randrange(3)
    inject = Injector(tmp_path, [1], step=100, rank=rank, signum=signal.SIGKILL)
    job = start(["launch", "-n", "3", "--max-restarts", "2", "--", *_train(tmp_path, "--checkpoint-every", str(EVERY))])
    inject.start()
    status, _, err = finish(job)
    inject.join(5)
    assert inject.error is None and inject.hits, inject.error
    assert status == 0, err[-3000:]
    s = summary(tmp_path)
    assert s["restarts"] == 1
    assert 0 < s["steps_redone"] <= EVERY
    assert abs(s["test_accuracy"] - undisturbed["test_accuracy"]) <= 0.01
    # float64, the same world size, step-based checkpoints: the resume guarantee, through the supervisor
    assert s["param_checksum"] == undisturbed["param_checksum"]
    (event,) = events(tmp_path)
    assert event["event"] == "restart", event
    assert_names_a_killed_rank(event["cause"], event["ranks"], attempt_dir(tmp_path, 1))
    assert event["resumed_step"] % EVERY == 0 and event["world_size"] == 3
    assert "restarting (1 of 2)" in err and "finished after 1 restart(s)" in err


def test_a_hung_rank_is_found_by_the_deadline_and_the_job_restarts(tmp_path):
    rank = random.Random(16).randrange(3)
    inject = Injector(tmp_path, [1], step=60, rank=rank, signum=signal.SIGSTOP)
    t0 = time.monotonic()
    job = start(["launch", "-n", "3", "--max-restarts", "1", "--",
                 *_train(tmp_path, "--checkpoint-every", str(EVERY), "--timeout", "4")])
    inject.start()
    status, _, err = finish(job)
    assert inject.error is None, inject.error
    assert status == 0, err[-3000:]
    assert summary(tmp_path)["restarts"] == 1
    (event,) = events(tmp_path)
    assert event["cause"].startswith("collective deadline:") and event["ranks"] == [rank], event
    assert time.monotonic() - t0 < 120


def test_a_node_lost_for_good_relaunches_on_the_hosts_the_script_still_lists(tmp_path):
    """--hosts-cmd: the script lists 3 slots, then (after the failure) 2: the job finishes on 2 ranks with
    the same global batch."""
    import socket

    flag = tmp_path / "lost"
    script = tmp_path / "hosts.sh"
    host = socket.gethostname()
    script.write_text(f"#!/bin/sh\nif [ -e {flag} ]; then echo {host}:2; else echo '# all up'; echo {host}:3; fi\n")
    script.chmod(0o755)
    inject = Injector(tmp_path, [1], step=50, rank=2, signum=signal.SIGKILL)
    job = start(["launch", "-n", "3", "--max-restarts", "1", "--min-ranks", "2", "--hosts-cmd", str(script), "--",
                 *_train(tmp_path, "--checkpoint-every", str(EVERY))])
    wait_for_step(attempt_dir(tmp_path, 1), 40)
    flag.touch()
    inject.start()
    status, _, err = finish(job)
    assert status == 0, err[-3000:]
    s = summary(tmp_path)
    assert s["world_size"] == 2 and s["restarts"] == 1
    (event,) = events(tmp_path)
    assert event["previous_world_size"] == 3 and event["world_size"] == 2
    assert f"attempt 2: 2 rank(s) on {host}:2" in err


def test_failures_beyond_the_limit_exit_non_zero_with_one_line_per_attempt(tmp_path):
    inject = Injector(tmp_path, [1, 2], step=30, rank=1, signum=signal.SIGKILL)
    job = start(["launch", "-n", "3", "--max-restarts", "1", "--", *_train(tmp_path, "--checkpoint-every", "20")])
    inject.start()
    status, _, err = finish(job)
    assert status != 0
    assert "the job failed 2 time(s), more than --max-restarts 1 allows:" in err
    lines = [line for line in err.splitlines() if line.startswith("dtrain elastic:   attempt ")]
    assert len(lines) == 2, err[-3000:]
    assert lines[0].startswith("dtrain elastic:   attempt 1 (3 ranks, from the start): exit status ")
    assert lines[1].startswith("dtrain elastic:   attempt 2 (3 ranks, from the last good checkpoint): exit status ")
    for attempt, line in enumerate(lines, 1):
        fields = line.split("): ", 1)[1].split("; ")
        assert fields[0] == "exit status 9", line
        assert_names_a_killed_rank(fields[1], [int(fields[2].removeprefix("ranks "))], attempt_dir(tmp_path, attempt))
        # killed at step 30 with checkpoints every 20: attempt 1 from step 20, attempt 2 resumed at step 20
        lost = re.fullmatch(r"(\d+) steps lost \(step (\d+) reached, last checkpoint at step 20\)", fields[3])
        assert lost and int(lost.group(2)) >= 30 and int(lost.group(1)) == int(lost.group(2)) - 20, line


def test_a_bad_option_exits_2_at_once_without_starting_anything(tmp_path):
    t0 = time.monotonic()
    status, _, err = finish(start(["launch", "-n", "3", "--max-restarts", "2", "--", "--out", str(tmp_path),
                                   "--bogus"]))
    assert status == 2
    assert "unrecognized arguments: --bogus" in err.splitlines()[-1]
    assert not (tmp_path / "elastic").exists() and time.monotonic() - t0 < 30


def test_a_data_error_on_the_ranks_is_not_restarted(tmp_path):
    bad = tmp_path / "broken.npz"
    bad.write_bytes(b"not a zip file")
    status, _, err = finish(start(["launch", "-n", "2", "--max-restarts", "2", "--", "--out", str(tmp_path),
                                   "--dataset", f"npz:{bad}"]))
    assert status == 2, err[-2000:]
    assert "a configuration or data error, which a restart would repeat; no restart" in err
    assert attempt_dir(tmp_path, 1).is_dir() and not attempt_dir(tmp_path, 2).exists()


def test_sigterm_to_the_supervisor_stops_with_a_checkpoint_and_no_restart(tmp_path):
    job = start(["launch", "-n", "2", "--max-restarts", "2", "--", *_train(tmp_path, "--checkpoint-every", "1000")])
    wait_for_step(attempt_dir(tmp_path, 1), 30)
    job.send_signal(signal.SIGTERM)
    status, _, err = finish(job)
    assert status == 128 + signal.SIGTERM, err[-3000:]
    assert "stopped by SIGTERM" in err and "no restart" in err
    assert not attempt_dir(tmp_path, 2).exists()
    assert list((tmp_path / "ck").glob("ckpt-*.npz")), "the interrupted job wrote no checkpoint"


def test_time_based_checkpoints_one_process(tmp_path):
    """--checkpoint-every 1s writes checkpoints by rank 0's clock (one process: the vote is its own)."""
    from dtrain.cli import main

    # 12 epochs of 23 steps take >= 1 s even on a warm, idle machine: several 0.2 s intervals
    assert main(["train", "--epochs", "12", "--hidden", "1024,1024", "--no-monitor", "--out", str(tmp_path),
                 "--checkpoint-dir", str(tmp_path / "ck"), "--checkpoint-every", "0.2s",
                 "--keep-checkpoints", "1000"]) == 0
    steps = sorted(int(p.stem.split("-")[1]) for p in (tmp_path / "ck").glob("ckpt-*.npz"))
    wall = summary(tmp_path)["wall_s"]
    assert len(steps) >= 2 and len(steps) <= wall / 0.2 + 2, (steps, wall)
    assert len(steps) >= min(3, wall / 0.2 - 1), (steps, wall)  # periodic ones, not only the final


# -- units ---------------------------------------------------------------------------------------------------

def test_checkpoint_every_units():
    assert parse_checkpoint_every("500") == (500, 0, 0.0)
    assert parse_checkpoint_every("2e") == (0, 2, 0.0)
    assert parse_checkpoint_every("30s") == (0, 0, 30.0)
    assert parse_checkpoint_every("1.5m") == (0, 0, 90.0)
    for bad in ("0s", "1.5", "-3", "5h", "s"):
        with pytest.raises(ConfigError, match=rf"--checkpoint-every must be N \(steps\), Ne \(epochs\) or Ns / Nm "
                                               rf".*got '{bad}'"):
            parse_checkpoint_every(bad)


def test_parse_hosts():
    assert parse_hosts("a:2\n\n# comment\nb 3\nc\n") == [("a", 2), ("b", 3), ("c", 1)]
    with pytest.raises(ElasticError, match=r"line 1: 'a:0': expected HOST:SLOTS"):
        parse_hosts("a:0")
    with pytest.raises(ElasticError, match=r"line 2: 'b:x': expected HOST:SLOTS"):
        parse_hosts("a:1\nb:x")


def test_train_args_per_attempt():
    cfg = {"out": "o", "checkpoint_dir": None, "checkpoint_every": "0"}
    first = train_args_for(["--resume", "x.npz", "--lr", "0.1"], cfg, restart=False, have_checkpoint=False)
    assert first == ["--resume", "x.npz", "--lr", "0.1", "--checkpoint-dir", "o/checkpoints", "--checkpoint-every",
                     "60s"]
    again = train_args_for(["--resume", "x.npz", "--lr", "0.1"], cfg, restart=True, have_checkpoint=True)
    assert again == ["--lr", "0.1", "--checkpoint-dir", "o/checkpoints", "--checkpoint-every", "60s", "--resume",
                     "last-good"]
    fresh = train_args_for(["--lr", "0.1"], cfg, restart=True, have_checkpoint=False)
    assert fresh[-1] == "--overwrite" and "--resume" not in fresh
    with pytest.raises(ElasticError, match="--max-restarts needs checkpoints to restart from: give dtrain train "
                                           "--out DIR or --checkpoint-dir DIR"):
        train_args_for([], {"out": None, "checkpoint_dir": None}, restart=False, have_checkpoint=False)


def test_hosts_placement_in_both_mpi_flavours():
    """An attempt on the hosts a script listed: MPICH's -hosts, Open MPI's --host (what --hosts-cmd produces)."""
    from dtrain.launch import build_command

    hosts = [("n1", 2), ("n2", 1)]
    mpich = build_command(3, mpiexec="mpiexec", version_text="HYDRA build details", python="py", environ={},
                          hosts=hosts, train_args=["--out", "o"])
    assert mpich[:5] == ["mpiexec", "-n", "3", "-hosts", "n1:2,n2:1"] and mpich[-5:] == ["-m", "dtrain", "train",
                                                                                          "--out", "o"]
    ompi = build_command(3, mpiexec="mpiexec", version_text="mpiexec (Open MPI) 5.0.2", python="py",
                         environ={"DTRAIN_ELASTIC_DIR": "/x"}, hosts=hosts, is_root=False)
    at = ompi.index("--host")
    assert ompi[at + 1] == "n1:2,n2:1" and ["-x", "DTRAIN_ELASTIC_DIR"] == ompi[ompi.index("DTRAIN_ELASTIC_DIR") - 1:
                                                                                ompi.index("DTRAIN_ELASTIC_DIR") + 1]
