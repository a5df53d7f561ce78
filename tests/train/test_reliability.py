"""Non-finite gradients (raise / skip / dynamic loss scaling), the loss scaler, and SIGINT/SIGTERM ending a run
with a final checkpoint, in one process. (Multi-rank versions: tests/distributed/test_faults.py, test_watchdog.py.)"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dtrain.train.config import ConfigError, resolve_config
from dtrain.train.job import build_job, model_defaults, run
from dtrain.train.loss_scale import LossScaler, make_loss_scaler

REPO = Path(__file__).resolve().parents[2]


def config(**flags):
    flags.setdefault("progress", False)
    flags.setdefault("monitor", False)
    return resolve_config(flags, None, model_defaults)


def _poison(trainer, at_steps):
    """Make the loss NaN on the given (1-based) steps."""
    inner = trainer.loss_fn

    def loss_fn(out, y):
        loss = inner(out, y)
        return loss * float("nan") if trainer.state.step + 1 in at_steps else loss
    trainer.loss_fn = loss_fn


def _params(trainer):
    return [p.data.copy() for p in trainer.model.parameters()]


def test_nonfinite_skip_skips_the_step_and_leaves_the_parameters(capsys):
    trainer = build_job(config(epochs=1, max_steps=8, nonfinite="skip", dtype="float64"))
    _poison(trainer, {3, 6})
    seen = {}
    step = trainer._train_step

    def spy(x, y, record):
        before = _params(trainer)
        result = step(x, y, record)
        params = trainer.model.parameters()
        seen[trainer.state.step + 1] = all(np.array_equal(a, p.data) for a, p in zip(before, params))
        return result
    trainer._train_step = spy
    trainer.fit()
    assert trainer.state.skipped_steps == 2 and trainer.state.step == 8
    assert seen[3] and seen[6] and not seen[2] and not seen[4]  # skipped steps change nothing
    err = capsys.readouterr().err
    assert "step 3 (epoch 1): non-finite gradients after the all-reduce; the step is skipped on every rank " \
           "(--nonfinite skip; 1 skipped so far)" in err
    assert "(--nonfinite skip; 2 skipped so far)" in err


def test_nonfinite_raise_names_the_step_and_the_rank():
    trainer = build_job(config(epochs=1, max_steps=8))
    _poison(trainer, {4})
    with pytest.raises(FloatingPointError, match=r"non-finite gradients after the all-reduce at step 4 \(epoch 1\): "
                                                 r"the loss was nan on rank 0; .* --nonfinite skip"):
        trainer.fit()


class _Param:
    def __init__(self, grad):
        self.grad = grad


@pytest.mark.parametrize("grad, finite", [
    (np.ones((3, 4), np.float32), True),
    (np.array([1e30, -1e30, 3.0], np.float32), True),  # finite, but its sum of squares overflows: checked per element
    (np.array([1e38, 1e38], np.float32), True),  # its sum overflows too
    (np.array([1.0, np.inf], np.float32), False),
    (np.array([np.nan, 1.0]), False),
    (np.full((2, 3), 300, np.float16), True),  # summed in its own dtype, not squared
    (np.array([np.inf], np.float16), False),
    (np.ones((4, 6), np.float32)[:, ::2].T, True),  # not contiguous
    (np.array([[1.0, 2.0], [np.nan, 0.0]]).T, False),
    (None, True),
])
def test_all_finite_judges_every_gradient_exactly(grad, finite):
    from dtrain.train.nonfinite import all_finite

    with np.errstate(over="ignore", invalid="ignore"):  # as inside the Trainer's step
        assert all_finite([_Param(np.ones(2, np.float32)), _Param(grad)]) is finite


def test_power_of_two_loss_scale_changes_no_bits():
    common = dict(epochs=2, dtype="float64", hidden="32", dropout=0.1)
    plain = run(config(**common))
    scaled = run(config(**common, loss_scale="1024"))
    dynamic = run(config(**common, loss_scale="dynamic"))
    assert plain["param_checksum"] == scaled["param_checksum"] == dynamic["param_checksum"]


def test_dynamic_loss_scale_backs_off_on_overflow_and_skips():
    """float32 with a scale of 2**140: the scaled gradients overflow to inf; the scale halves each time (the
    step skipped) until they fit, then training goes on and learns."""
    trainer = build_job(config(epochs=2, loss_scale="dynamic"))
    trainer.nonfinite.scaler = scaler = LossScaler(init_scale=2.0 ** 140)
    summary = trainer.fit()
    assert trainer.state.skipped_steps > 0
    assert scaler.scale < 2.0 ** 140 and scaler.backoffs == trainer.state.skipped_steps
    assert summary["test_accuracy"] > 0.9


def test_loss_scaler_rules():
    s = LossScaler(init_scale=8.0, growth_interval=3)
    s.update(False)
    assert s.scale == 4.0 and s.backoffs == 1
    for _ in range(3):
        s.update(True)
    assert s.scale == 8.0 and s.good_steps == 0
    fixed = make_loss_scaler("16")
    fixed.update(False)
    assert fixed.scale == 16.0 and not fixed.dynamic
    assert make_loss_scaler("none") is None
    tiny = LossScaler(init_scale=1.0, min_scale=1.0)
    with pytest.raises(FloatingPointError, match="non-finite even with the loss scale at 1"):
        tiny.update(False)
    state = s.state_dict()
    t = LossScaler()
    t.load_state_dict(state)
    assert t.state_dict() == state
    with pytest.raises(ValueError, match="backoff_factor"):
        LossScaler(backoff_factor=1.5)


@pytest.mark.parametrize("value, message", [("-1", "--loss-scale must be none, dynamic or a positive number"),
                                            ("inf", "--loss-scale must be"), ("big", "--loss-scale must be")])
def test_bad_loss_scale(value, message):
    with pytest.raises(ConfigError, match=message):
        config(loss_scale=value)


def test_sigint_writes_a_final_checkpoint_and_the_resumed_run_is_bitwise_identical(tmp_path):
    ck = tmp_path / "ck"
    args = ["--dtype", "float64", "--epochs", "300", "--hidden", "32", "--dropout", "0.1", "--no-monitor",
            "--no-progress", "--checkpoint-dir", str(ck), "--checkpoint-every", "50"]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "dtrain", "train", *args]
    full = subprocess.run([*cmd[:-4], "--out", str(tmp_path / "full")], capture_output=True, text=True, env=env,
                          timeout=300)
    assert full.returncode == 0, full.stderr
    proc = subprocess.Popen([*cmd, "--out", str(tmp_path / "out")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    deadline = time.monotonic() + 120
    while not (ck / "latest.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # training is under way once the first checkpoint exists
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the run finished before SIGINT arrived")
    assert proc.returncode == 130, err
    assert "received SIGINT: stopping after the current step" in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("dtrain train: interrupted by SIGINT after step ") and "--resume" in last, err
    ckpt = last.split("--resume ")[1]
    assert Path(ckpt).exists()
    resumed = subprocess.run([*cmd, "--out", str(tmp_path / "out"), "--resume", ckpt], capture_output=True,
                             text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((tmp_path / "full" / "summary.json").read_text())
    b = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert a["param_checksum"] == b["param_checksum"] and a["steps"] == b["steps"]
    assert math.isclose(a["test_loss"], b["test_loss"], rel_tol=0, abs_tol=0)


# -- the budget of skipped steps (a run that skips most of its steps is an error, never a success) -----------------

def test_skipping_too_many_steps_in_a_row_ends_the_run():
    trainer = build_job(config(epochs=3, nonfinite="skip", max_skipped_in_a_row=5))
    _poison(trainer, set(range(10, 100)))
    with pytest.raises(FloatingPointError, match=r"training stopped at step 14 \(epoch 1\): non-finite gradients "
                                                 r"made it skip 5 steps in a row \(--max-skipped-in-a-row 5\)"):
        trainer.fit()


def test_skipping_too_large_a_fraction_ends_the_run():
    trainer = build_job(config(epochs=3, nonfinite="skip", max_skipped_fraction=0.1))
    _poison(trainer, {s for s in range(1, 100) if s % 4 == 0})  # a quarter of the steps, never 2 in a row
    with pytest.raises(FloatingPointError, match=r"training stopped at step 50 \(epoch 3\): non-finite gradients "
                                                 r"made it skip 12 of 50 steps \(24 %, more than "
                                                 r"--max-skipped-fraction 0.1\)"):
        trainer.fit()


def test_a_run_that_skipped_every_step_is_an_error():
    trainer = build_job(config(epochs=1, max_steps=6, nonfinite="skip"))
    _poison(trainer, set(range(1, 7)))
    with pytest.raises(FloatingPointError, match="every one of the 6 steps was skipped for non-finite gradients"):
        trainer.fit()


def test_the_cli_example_of_the_issue_exits_2_not_0(tmp_path):
    """`--lr 1e6 --nonfinite skip` used to skip 65 of 69 steps and exit 0 with test_loss null."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "dtrain", "train", "--epochs", "3", "--hidden", "16", "--lr", "1e6",
                          "--nonfinite", "skip", "--out", str(tmp_path), "--no-monitor"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.splitlines()[-1].startswith("dtrain train: error: training stopped at step ")
    assert not (tmp_path / "summary.json").exists()


def test_stale_temporaries_of_an_interrupted_write_are_removed_at_start(tmp_path, capsys):
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / ".tmp-abc123").write_bytes(b"\0" * 530_000)  # what a kill during a save leaves
    (ck / "keep.txt").write_text("not ours")
    run(config(epochs=1, max_steps=2, checkpoint_dir=str(ck)))
    assert not (ck / ".tmp-abc123").exists() and (ck / "keep.txt").exists()
    assert "removed 1 partial file(s) an interrupted write left (.tmp-abc123)" in capsys.readouterr().out


def test_a_second_sigterm_stops_at_once_and_the_exit_status_says_sigterm(monkeypatch, capsys):
    # The graceful stop a first SIGTERM starts can be cut short by a second one: the shell's convention
    # for a process a signal ended is 128 + its number, 143 for SIGTERM (it used to be 130, SIGINT's).
    from dtrain import cli
    from dtrain.train.log import RankLogger
    from dtrain.train.signals import SecondSignal, SignalStop

    stop = SignalStop(True, RankLogger())
    with stop.installed():
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.received == signal.SIGTERM
        with pytest.raises(SecondSignal) as info:
            os.kill(os.getpid(), signal.SIGTERM)
    assert info.value.signum == signal.SIGTERM

    def second_sigterm(args):
        raise SecondSignal(signal.SIGTERM)

    monkeypatch.setattr(cli, "_train", second_sigterm)
    assert cli.main(["train", "--out", "unused"]) == 143
    assert capsys.readouterr().err.strip().splitlines()[-1] == "dtrain train: interrupted"


def test_a_static_loss_scale_beyond_float16_is_refused_at_start():
    with pytest.raises(ConfigError, match=r"^--loss-scale 1e\+300 is larger than float16 can hold \(65504\): every "
                                          r"scaled gradient would overflow; use --loss-scale dynamic, or a power of "
                                          r"two up to 32768$"):
        config(precision="fp16", loss_scale="1e300")
    with pytest.raises(ConfigError, match=r"larger than float32 can hold"):
        config(loss_scale="1e300")
    assert config(precision="fp16", loss_scale="1024")["loss_scale"] == "1024.0"


def test_a_loss_scale_exhausted_on_every_rank_is_a_collective_error_naming_the_step():
    # Every rank holds the same scale and sees the same all-reduced gradients, so every rank raises at the
    # same step: the error is the job's (exit 2, no MPI_Abort), not "not agreed with the other ranks".
    from types import SimpleNamespace

    from dtrain.train.log import RankLogger
    from dtrain.train.loss_scale import LossScaler
    from dtrain.train.nonfinite import NonFiniteGuard
    from dtrain.train.sync import LocalCollectives

    guard = NonFiniteGuard("raise", LossScaler(init_scale=1.0, min_scale=0.75), LocalCollectives(), RankLogger())
    param = SimpleNamespace(grad=np.array([np.inf]))
    with pytest.raises(FloatingPointError, match=r"^step 7 \(epoch 2\): the gradients are non-finite even with "
                                                 r"the loss scale at 1") as info:
        guard.check([param], 0.0, SimpleNamespace(epoch=1, skipped_steps=0), 7, 1.0)
    assert getattr(info.value, "collective", False)


def test_a_stall_warning_too_short_to_mean_a_stall_is_refused():
    # --stall-warning 1e-9 printed a warning per collective, each saying the collective itself was stuck.
    with pytest.raises(ConfigError, match=r"^--stall-warning must be at least 0.1 s, got 1e-09: a shorter wait is an "
                                          r"ordinary collective, not a stall"):
        config(stall_warning=1e-9)
    assert config(stall_warning=0.5)["stall_warning"] == 0.5
