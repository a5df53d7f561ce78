"""dtrain.train.reporting: outputs that never clobber (--out reuse, metrics.jsonl after a resume) and when
the progress bar is drawn (rank 0, a terminal, under mpiexec too; --progress/--no-progress win)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dtrain.train.config import ConfigError, resolve_config
from dtrain.train.job import model_defaults, run
from dtrain.train.log import RankLogger
from dtrain.train.reporting import (
    Reporter,
    ReportOptions,
    check_out_dir,
    previous_results,
    progress_stream,
    show_progress,
)

REPO = Path(__file__).resolve().parents[2]
STEPS_PER_EPOCH = 23  # digits: 1437 training samples in global batches of 64


def config(**flags):
    flags.setdefault("progress", False)
    flags.setdefault("monitor", False)
    return resolve_config(flags, None, model_defaults)


def _records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


# -- a resume keeps one record per epoch ------------------------------------------------------------


def test_a_resume_from_an_earlier_checkpoint_keeps_one_record_per_epoch(tmp_path):
    """Run 4 epochs with a checkpoint after each, resume from epoch 2's into the same --out: metrics.jsonl
    holds epochs 1-4 once each (it held 1, 2, 3, 4, 3, 4), and the resumed epochs equal the first run's."""
    out, ck = tmp_path / "out", tmp_path / "ck"
    common = dict(epochs=4, hidden="16", dtype="float64", dropout=0.0, out=str(out))
    first = run(config(**common, checkpoint_dir=str(ck), checkpoint_every="1e", keep_checkpoints=5))
    before = _records(out)
    assert [r["epoch"] for r in before] == [1, 2, 3, 4]
    epoch_2 = ck / f"ckpt-{2 * STEPS_PER_EPOCH:08d}.npz"
    assert epoch_2.exists(), sorted(p.name for p in ck.iterdir())
    resumed = run(config(**common, resume=str(epoch_2)))
    after = _records(out)
    assert [r["epoch"] for r in after] == [1, 2, 3, 4]
    assert after[:2] == before[:2]  # the earlier run's records up to the resumed position are kept as they were
    for a, b in zip(after[2:], before[2:]):  # resume is exact: the replayed epochs report the same numbers
        assert (a["step"], a["train_loss"], a["test_loss"]) == (b["step"], b["train_loss"], b["test_loss"])
    assert resumed["param_checksum"] == first["param_checksum"]
    assert not [p for p in out.iterdir() if ".tmp" in p.name]


class _Log(RankLogger):
    def __init__(self):
        super().__init__(0, 1, stream=io.StringIO())
        self.lines = []

    def info(self, message: str) -> None:
        self.lines.append(message)


def _record(epoch: int, step: int) -> dict:
    return {"epoch": epoch, "step": step, "train_loss": 1.0 / epoch, "test_loss": None, "test_accuracy": None,
            "samples_per_s": None}


def test_resumed_metrics_are_cut_back_at_the_first_new_record(tmp_path):
    """Records of the resumed epoch and later go (a half-written last line too); the file is replaced
    whole (atomically), and the cut is said once."""
    path = tmp_path / "metrics.jsonl"
    old = [json.dumps(_record(e, 10 * e)) for e in (1, 2, 3)]
    path.write_text("\n".join(old) + '\n{"epoch": 4, "st')
    log = _Log()
    reporter = Reporter(ReportOptions(out_dir=str(tmp_path)), log)
    reporter.open(resumed=True)
    assert path.read_text().startswith(old[0])  # nothing is cut before the run knows where it resumed
    reporter.record(_record(3, 30))
    reporter.record(_record(4, 40))
    reporter.close()
    assert [json.loads(line)["epoch"] for line in path.read_text().splitlines()] == [1, 2, 3, 4]
    assert path.read_text().splitlines()[:2] == old[:2]
    assert "metrics.jsonl: dropped 2 record(s) of epoch 3 and later that the earlier run wrote past the resumed " \
           "position" in log.lines


def test_a_new_run_replaces_every_result_of_the_previous_one(tmp_path):
    """With --overwrite (or from Python) a new run owns the folder: a plot it does not draw (no monitor, so
    no grad_flow.png) must not stay behind from the previous run."""
    for name in ("metrics.jsonl", "summary.json", "config.json", "learning_curves.png", "grad_flow.png"):
        (tmp_path / name).write_text("previous run")
    (tmp_path / "notes.txt").write_text("the user's")
    reporter = Reporter(ReportOptions(out_dir=str(tmp_path)), _Log())
    reporter.open(resumed=False)
    reporter.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "notes.txt"]
    assert (tmp_path / "metrics.jsonl").read_text() == ""


# -- --out reuse ------------------------------------------------------------------------------------


def test_check_out_dir(tmp_path):
    check_out_dir(None, resume=False, overwrite=False)
    check_out_dir(str(tmp_path / "absent"), resume=False, overwrite=False)
    (tmp_path / "notes.txt").write_text("not a result")
    check_out_dir(str(tmp_path), resume=False, overwrite=False)
    (tmp_path / "summary.json").write_text("{}")
    (tmp_path / "metrics.jsonl").write_text("")
    assert previous_results(str(tmp_path)) == ["metrics.jsonl", "summary.json"]
    with pytest.raises(ConfigError) as info:
        check_out_dir(str(tmp_path), resume=False, overwrite=False)
    assert str(info.value) == (f"--out {tmp_path} already holds a previous run's results (metrics.jsonl, "
                               "summary.json): pass --overwrite to replace them, --resume to continue that run, "
                               "or choose another --out")
    check_out_dir(str(tmp_path), resume=True, overwrite=False)
    check_out_dir(str(tmp_path), resume=False, overwrite=True)
    with pytest.raises(ConfigError) as info:
        check_out_dir(str(tmp_path), resume=True, overwrite=True)
    assert str(info.value) == ("--overwrite replaces a previous run's results and --resume continues them: pass "
                               "one, not both")


# -- the progress bar -------------------------------------------------------------------------------


@pytest.mark.parametrize("flag, is_main, on_terminal, shown", [
    (None, True, True, True),     # default: rank 0 on a terminal (under mpiexec too)
    (None, True, False, False),   # output to a file or a pipe
    (None, False, True, False),   # never on the other ranks
    (True, True, False, True),    # --progress wins
    (True, False, True, False),   # ... on rank 0 only
    (False, True, True, False),   # --no-progress wins
])
def test_show_progress(flag, is_main, on_terminal, shown):
    assert show_progress(flag, is_main, on_terminal) is shown


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize("err_tty, out_tty, expected", [(True, False, "err"), (False, True, "out"),
                                                        (True, True, "err"), (False, False, None)])
def test_progress_stream_is_the_terminal_one(monkeypatch, err_tty, out_tty, expected):
    from dtrain import env

    for var in env.LAUNCHER_VARIABLES:  # no launcher: no launcher terminal to look for
        monkeypatch.delenv(var, raising=False)
    streams = {"err": _Stream(err_tty), "out": _Stream(out_tty)}
    monkeypatch.setattr(sys, "stderr", streams["err"])
    monkeypatch.setattr(sys, "stdout", streams["out"])
    assert progress_stream() is (streams[expected] if expected else None)


PROBE = ("import sys; from dtrain.train.reporting import progress_stream; s = progress_stream(); "
         "print('stderr' if s is sys.stderr else 'stdout' if s is sys.stdout else 'none')")


@pytest.mark.skipif(shutil.which("mpiexec") is None, reason="needs mpiexec")
@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="the launcher's terminal is read from /proc")
def test_under_mpiexec_the_bar_follows_the_launchers_terminal(tmp_path):
    """mpiexec on a terminal (a pseudo-terminal here) pipes the rank's output but forwards it to that
    terminal: rank 0 draws the bar on stderr. With mpiexec's stderr in a file, it draws none."""
    import pty

    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [shutil.which("mpiexec"), "-n", "1", sys.executable, "-c", PROBE]
    master, slave = pty.openpty()
    try:
        on_tty = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL, text=True,
                                env=env, timeout=120)
    finally:
        os.close(slave)
        os.close(master)
    with open(tmp_path / "err.txt", "w") as err:
        to_file = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, text=True,
                                 env=env, timeout=120)
    assert on_tty.returncode == 0 and to_file.returncode == 0, (tmp_path / "err.txt").read_text()
    assert on_tty.stdout.split() == ["stderr"]
    assert to_file.stdout.split() == ["none"]
