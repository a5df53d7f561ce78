"""The dtrain command line, run as a user would: the README job, flags, TOML, bad input, exit codes."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dtrain.cli import main
from dtrain.train import SUMMARY_KEYS
from dtrain.train.config import OPTIONS

METRIC_KEYS = {"epoch", "step", "train_loss", "test_loss", "test_accuracy", "samples_per_s", "bytes_sent",
               "bytes_uncompressed"}


def run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "dtrain", *args], capture_output=True, text=True, timeout=timeout)


def test_readme_job_defaults_reach_97_percent(tmp_path):
    """README's second command, `dtrain train` with no flags (here plus --out to read the results)."""
    res = run("train", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert tuple(summary) == SUMMARY_KEYS
    assert summary["test_accuracy"] >= 0.97 and summary["epochs"] == 20 and summary["world_size"] == 1
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, 21))
    assert all(METRIC_KEYS <= set(r) for r in records)
    assert records[-1]["test_accuracy"] == summary["test_accuracy"]
    for png in ("learning_curves.png", "grad_flow.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "test_accuracy" in res.stdout.splitlines()[-1]


def test_cnn_reaches_98_percent(tmp_path):
    assert main(["train", "--model", "cnn", "--out", str(tmp_path), "--no-progress"]) == 0
    assert json.loads((tmp_path / "summary.json").read_text())["test_accuracy"] >= 0.98


def test_help_documents_every_flag():
    res = run("train", "--help")
    assert res.returncode == 0
    text = " ".join(res.stdout.split())
    for opt in OPTIONS:
        assert opt.flag in text
    assert "--config" in text


def test_info():
    res = run("info")
    assert res.returncode == 0 and "dtrain 0.1.0" in res.stdout and "numpy" in res.stdout


@pytest.fixture
def bad_npz(tmp_path):
    def make(x, y):
        path = tmp_path / "data.npz"
        np.savez(path, x=x, y=y)
        return f"npz:{path}"
    return make


@pytest.mark.parametrize("args, message", [
    (["--model", "vgg"], "unknown model 'vgg'; expected one of: mlp, cnn, resnet, lstm, transformer"),
    (["--dataset", "cifar"], "unknown data set 'cifar'"),
    (["--optimizer", "lbfgs"], "unknown optimizer 'lbfgs'; expected one of: sgd, adam"),
    (["--lr", "0"], "--lr must be > 0, got 0.0"),
    (["--lr", "-0.1"], "--lr must be > 0, got -0.1"),
    (["--batch-size", "0"], "--batch-size must be > 0, got 0"),
    (["--batch-size", "-4"], "--batch-size must be > 0, got -4"),
    (["--epochs", "0"], "--epochs must be > 0, got 0"),
    (["--batch-size", "5000"], "batch_size 5000 is larger than the data set (1437 samples)"),
    (["--dropout", "1.5"], "--dropout must be in [0, 1), got 1.5"),
    (["--checkpoint-every", "often"],
     "--checkpoint-every must be N (steps), Ne (epochs) or Ns / Nm (seconds / minutes of wall-clock time)"),
    (["--compression", "zip"], "unknown compression 'zip': expected one of none, fp16, bf16, powersgd:RANK"),
    (["--compression", "topk:0"], "topk RATIO must be a number in (0, 1], got 0"),
    (["--compression", "randomk:1.5"], "randomk RATIO must be a number in (0, 1], got 1.5"),
    (["--compression", "powersgd:0"], "powersgd RANK must be an integer >= 1, got 0"),
    (["--compression", "qsgd:1"], "qsgd LEVELS must be an integer in [2, 127], got 1"),
    (["--checkpoint-every", "5"], "needs --checkpoint-dir"),
    (["--model", "cnn", "--dataset", "synthetic:features=10"], "model 'cnn' needs image input (C, H, W)"),
    (["--model", "lstm", "--dataset", "digits"], "model 'lstm' handles lm data, but the data set is a classification"),
])
def test_bad_input_is_one_clear_error(args, message, capsys):
    assert main(["train", "--no-progress", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("dtrain train: error:") and "Traceback" not in err


def test_bad_data_files_are_clear_errors(tmp_path, bad_npz, capsys):
    x = np.random.default_rng(0).normal(size=(50, 4))
    x[7, 2] = np.nan
    assert main(["train", "--dataset", bad_npz(x, np.arange(50) % 3)]) == 2
    err = capsys.readouterr().err
    assert "NaN" in err and "data.npz" in err
    assert main(["train", "--dataset", bad_npz(np.ones((50, 4)), np.arange(50) % 3 - 1)]) == 2
    err = capsys.readouterr().err
    assert "data.npz" in err and "-1" in err
    assert main(["train", "--dataset", f"npz:{tmp_path / 'missing.npz'}"]) == 2
    assert "missing.npz" in capsys.readouterr().err


def test_labels_out_of_range(tmp_path, capsys):
    """An npz that declares n_classes = 3 but holds label 7 is rejected at load, naming the range."""
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, x=rng.normal(size=(40, 3)), y=np.arange(40) % 3, x_test=rng.normal(size=(10, 3)),
             y_test=np.full(10, 7), n_classes=np.int64(3))
    assert main(["train", "--dataset", f"npz:{path}"]) == 2
    err = capsys.readouterr().err
    assert "labels must lie in [0, 3)" in err and "from 7 to 7" in err


def test_toml_config_and_flag_precedence(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text('epochs = 2\nbatch-size = 128\nhidden = [32, 16]\nlr = 0.1\n')
    out = tmp_path / "out"
    assert main(["train", "--config", str(cfg), "--epochs", "3", "--out", str(out), "--no-progress"]) == 0
    used = json.loads((out / "config.json").read_text())
    assert used["epochs"] == 3 and used["batch_size"] == 128 and used["hidden"] == "32,16" and used["lr"] == 0.1
    assert json.loads((out / "summary.json").read_text())["steps"] == 3 * (1437 // 128 + 1)


@pytest.mark.parametrize("text, message", [
    ("epochs = \n", "is not valid TOML"),
    ("epochs = 'ten'\n", "'epochs' in config file"),
    ("colour = 'red'\n", "unknown key 'colour'"),
    ("[model]\nname = 'mlp'\n", "tables are not supported"),
])
def test_bad_toml_is_a_clear_error(tmp_path, text, message, capsys):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    assert main(["train", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(cfg) in err


def test_missing_config_file(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml does not exist" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# Issue 14: errors a new user meets (no CuPy, unknown flags, a missing `--`, the wrong kind of file,
# options the optimizer ignores, options changed on resume, one error line under mpiexec).
# ------------------------------------------------------------------------------------------------

NO_CUPY = importlib.util.find_spec("cupy") is None


@pytest.mark.skipif(not NO_CUPY, reason="CuPy is installed: --device cuda does not fail for want of it")
def test_device_cuda_without_cupy_is_one_clear_error(capsys):
    """Was: "internal error", a traceback, exit 1 and `pip install dtrain[cuda12]` (not on PyPI)."""
    assert main(["train", "--device", "cuda", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "dtrain[cuda" not in err
    assert [line for line in err.splitlines() if "error" in line] == [
        "dtrain train: error: device 'cuda' was requested but CUDA is not usable here: CuPy is not installed "
        "(ModuleNotFoundError: No module named 'cupy'): install the CuPy build for this machine's CUDA, "
        "`pip install cupy-cuda12x` (CUDA 12) or `pip install cupy-cuda13x` (CUDA 13), or from a dtrain checkout "
        "`pip install -e \".[cuda12]\"`; or use device 'cpu'"]


@pytest.mark.skipif(not NO_CUPY, reason="CuPy is installed")
def test_info_names_the_cupy_package_to_install():
    res = run("info")
    assert res.returncode == 0 and "dtrain[cuda" not in res.stdout
    line = next(line for line in res.stdout.splitlines() if line.startswith("cupy/CUDA"))
    assert line == ("cupy/CUDA: unavailable: CuPy is not installed (ModuleNotFoundError: No module named 'cupy'): "
                    "install the CuPy build for this machine's CUDA, `pip install cupy-cuda12x` (CUDA 12) or "
                    "`pip install cupy-cuda13x` (CUDA 13), or from a dtrain checkout `pip install -e \".[cuda12]\"`")


def test_no_file_suggests_an_unpublished_dtrain_extra():
    """`pip install dtrain[cuda12]` fails: dtrain is not on PyPI. Extras are installed from a checkout."""
    root = Path(__file__).resolve().parents[1]
    files = [*root.glob("dtrain/**/*.py"), *root.glob("docs/**/*.md"), root / "README.md"]
    offenders = [str(f.relative_to(root)) for f in files if f.is_file() and "dtrain[cuda" in f.read_text()]
    assert not offenders, offenders


def test_unknown_flag_shows_the_subcommand_usage(capsys):
    """Was: the top-level usage (`usage: dtrain [-h] {info,train,bench,launch} ...`, `dtrain: error:`)."""
    assert main(["train", "--foo"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("usage: dtrain train [-h] [--config FILE.toml]")
    assert err[-1] == "dtrain train: error: unrecognized arguments: --foo"


def test_launch_without_separator_says_where_train_options_go(capsys):
    assert main(["launch", "-n", "2", "--model", "cnn"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("usage: dtrain launch [-h] -n auto|N")
    assert err[-1] == ("dtrain launch: error: unrecognized arguments: --model; options for dtrain train go after "
                       "`--`: dtrain launch -n 2 -- --model cnn")
    assert main(["launch", "-n", "2", "--dry-run", "--lr=0.1", "--", "--epochs", "1"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "dtrain launch: error: unrecognized arguments: --lr=0.1; options for dtrain train go after `--`: "
        "dtrain launch -n 2 --dry-run -- --lr=0.1 --epochs 1")


@pytest.fixture
def text_files(tmp_path):
    (tmp_path / "run.toml").write_text("# my run\nlr = 0.1\n[extra]\nepochs = 3\n")
    (tmp_path / "run.json").write_text('{"lr": 0.1, "epochs": 3}\n')
    return tmp_path


@pytest.mark.parametrize("name, kind", [("run.toml", "a TOML text file"), ("run.json", "a JSON text file")])
def test_text_file_as_npz_data_says_what_it_looks_like(text_files, name, kind, capsys):
    """Was: "cannot read it as an .npz archive: ValueError: This file contains pickled (object) data"."""
    path = text_files / name
    assert main(["train", "--dataset", f"npz:{path}", "--no-progress"]) == 2
    assert capsys.readouterr().err == (f"dtrain train: error: {path}: cannot read it as an .npz archive: it looks "
                                       f"like {kind}; npz:FILE reads arrays saved with np.savez(FILE, x=..., y=...)\n")


@pytest.mark.parametrize("name, kind", [("run.toml", "a TOML text file"), ("run.json", "a JSON text file")])
def test_text_file_as_checkpoint_says_what_it_looks_like(text_files, name, kind, capsys):
    """Was: "... refuses to load pickled data (This file contains pickled (object) data ...)"."""
    path = text_files / name
    assert main(["train", "--resume", str(path), "--no-progress", "--no-monitor"]) == 2
    assert capsys.readouterr().err == (f"dtrain train: error: checkpoint {path} is not a dtrain checkpoint: it looks "
                                       f"like {kind}, not an .npz archive (checkpoints are the ckpt-*.npz files "
                                       "dtrain writes)\n")


@pytest.mark.parametrize("args, message", [
    (["--optimizer", "adam", "--momentum", "0.5"],
     "--momentum 0.5 has no effect with --optimizer adam: only sgd and rmsprop use momentum; drop it or choose one "
     "of those"),
    (["--optimizer", "adagrad", "--momentum", "0.9"],
     "--momentum 0.9 has no effect with --optimizer adagrad: only sgd and rmsprop use momentum; drop it or choose "
     "one of those"),
    (["--model", "transformer", "--momentum", "0.5"],
     "--momentum 0.5 has no effect with --optimizer adam (the transformer model's default): only sgd and rmsprop "
     "use momentum; drop it or choose one of those"),
])
def test_momentum_the_optimizer_ignores_is_an_error(args, message, capsys):
    """Was: silently ignored."""
    assert main(["train", "--no-progress", *args]) == 2
    assert capsys.readouterr().err == f"dtrain train: error: {message}\n"


def test_momentum_in_toml_with_adam_is_an_error(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text("optimizer = 'adam'\nmomentum = 0.3\n")
    assert main(["train", "--config", str(cfg)]) == 2
    assert capsys.readouterr().err == (f"dtrain train: error: 'momentum = 0.3' in config file {cfg} has no effect "
                                       "with --optimizer adam: only sgd and rmsprop use momentum; drop it or choose "
                                       "one of those\n")


def test_momentum_default_is_not_an_error_for_adam():
    # The default momentum (0.9) is in every config; only an explicitly set one is checked.
    from dtrain.train.config import resolve_config

    assert resolve_config({"optimizer": "adam"})["optimizer"] == "adam"
    assert resolve_config({"optimizer": "rmsprop", "momentum": 0.5})["momentum"] == 0.5


def test_resume_with_changed_options_warns_once_per_option(tmp_path, capsys):
    """Was: no word. Run control (--max-steps, --out, ...) may change silently; what defines training may not."""
    ck = tmp_path / "ck"
    common = ["train", "--checkpoint-dir", str(ck), "--no-progress", "--no-monitor", "--hidden", "8"]
    assert main([*common, "--epochs", "1", "--max-steps", "2"]) == 0
    capsys.readouterr()
    assert main([*common, "--resume", "--epochs", "2", "--lr", "0.1", "--max-steps", "4", "--no-overlap"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("dtrain: warning:")]
    assert warnings == ["dtrain: warning: resuming with --epochs 2 (the checkpoint was trained with 1)",
                        "dtrain: warning: resuming with --lr 0.1 (the checkpoint was trained with 0.05)",
                        "dtrain: warning: resuming with --no-overlap (the checkpoint was trained with --overlap)"]


class _FakeWorld:
    """current_world() of a 2-rank job, recording MPI_Abort."""

    def __init__(self, rank):
        self.rank, self.size, self.aborted = rank, 2, None

    def abort(self, status):
        self.aborted = status


@pytest.mark.parametrize("rank", [0, 1])
def test_collective_error_is_reported_by_rank_0_only(rank, monkeypatch, capsys):
    from dtrain import cli
    from dtrain.distributed import comm
    from dtrain.train.sync import mark_collective

    world = _FakeWorld(rank)
    monkeypatch.setattr(comm, "current_world", lambda: world)
    monkeypatch.setenv("PMI_RANK", str(rank))
    assert cli._report("train", mark_collective(ValueError("--lr must be > 0, got -1.0")), 2) == 2
    err = capsys.readouterr().err
    assert err == ("dtrain train: error: --lr must be > 0, got -1.0\n" if rank == 0 else "")
    assert world.aborted is None


def test_error_on_one_rank_alone_is_reported_by_that_rank(monkeypatch, capsys):
    from dtrain import cli
    from dtrain.distributed import comm

    world = _FakeWorld(1)
    monkeypatch.setattr(comm, "current_world", lambda: world)
    monkeypatch.setenv("PMI_RANK", "1")
    assert cli._report("train", OSError("cannot write runs/metrics.jsonl"), 2) == 2
    assert capsys.readouterr().err.splitlines() == [
        "dtrain train: error: [rank 1] cannot write runs/metrics.jsonl",
        "dtrain: error: [rank 1] the error above was not agreed with the other ranks: aborting the job (MPI_Abort) "
        "so that none of them waits for this rank"]
    assert world.aborted == 2


def test_reusing_out_for_a_new_run_is_an_error_unless_overwrite(tmp_path, capsys):
    """A new run (no --resume) into an --out that holds a previous run's results refuses, naming the folder,
    the files and the ways out; --overwrite (flag or TOML) replaces them."""
    out = tmp_path / "out"
    quick = ["train", "--epochs", "1", "--hidden", "16", "--no-progress", "--out", str(out)]
    assert main(quick) == 0
    first = (out / "summary.json").read_text()
    capsys.readouterr()
    assert main(quick) == 2
    err = capsys.readouterr().err
    assert err == (f"dtrain train: error: --out {out} already holds a previous run's results (metrics.jsonl, "
                   "summary.json, config.json, learning_curves.png, grad_flow.png): pass --overwrite to replace "
                   "them, --resume to continue that run, or choose another --out\n")
    assert (out / "summary.json").read_text() == first  # refused before anything was touched
    assert main([*quick, "--overwrite", "--no-monitor"]) == 0
    assert not (out / "grad_flow.png").exists()  # the previous run's plot went with its other results
    toml = tmp_path / "run.toml"
    toml.write_text("overwrite = true\n")
    assert main([*quick, "--config", str(toml)]) == 0
    capsys.readouterr()
    assert main([*quick, "--overwrite", "--resume", str(tmp_path / "ck.npz")]) == 2
    assert capsys.readouterr().err == ("dtrain train: error: --overwrite replaces a previous run's results and "
                                       "--resume continues them: pass one, not both\n")


def test_resume_changes_names_each_option_as_a_flag():
    from dtrain.train.config import resume_changes

    saved = {"lr": 0.05, "overlap": True, "clip_grad_norm": 1.0, "hidden": None, "out": "a", "max_steps": 10,
             "seed": 0, "old_option": 1}
    current = {"lr": 0.05, "overlap": False, "clip_grad_norm": None, "hidden": "8", "out": "b", "max_steps": 20,
               "seed": 0, "new_option": 2}
    assert resume_changes(saved, current) == [
        "resuming with --no-overlap (the checkpoint was trained with --overlap)",
        "resuming without --clip-grad-norm (the checkpoint was trained with 1.0)",
        "resuming with --hidden 8 (the checkpoint was trained without --hidden)"]  # run control (--out, ...) is free


# A bare `pip install -e .` (no extras): `dtrain train` says what is missing in one line, exit 2.
_LAUNCHER_VARS = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "SLURM_PROCID",
                  "SLURM_STEP_NUM_TASKS", "HYDRA_CONTROL_FD", "PMI_FD", "MPI_LOCALRANKID")


def _train_without(module: str, *flags: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """``dtrain train FLAGS`` in a fresh interpreter where ``module`` cannot be imported (as if not installed)."""
    code = (f"import sys; sys.modules[{module!r}] = None\n"
            "from dtrain.cli import main\n"
            f"sys.exit(main(['train', '--epochs', '1', *{list(flags)!r}]))")
    import os

    env = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARS}
    env.update({"PYTHONPATH": str(Path(__file__).resolve().parents[1]), **(env_extra or {})})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_digits_without_scikit_learn_names_the_package_and_the_extra():
    res = _train_without("sklearn")
    assert res.returncode == 2, res.stderr
    assert res.stderr.splitlines()[-1] == (
        'dtrain train: error: the digits data set needs scikit-learn: pip install scikit-learn (from a dtrain '
        'checkout: pip install -e ".[train]", with tqdm and matplotlib)')
    assert "Traceback" not in res.stderr


def test_a_launched_rank_without_mpi_says_which_mpi_to_install():
    """mpi4py finding no MPI library (here: mpi4py hidden) under a launcher is one line, not an internal error."""
    res = _train_without("mpi4py", "--dataset", "synthetic:n=64", env_extra={"PMI_RANK": "0", "PMI_SIZE": "2"})
    assert res.returncode == 2, res.stderr
    last = res.stderr.splitlines()[-1]
    assert last.startswith("dtrain train: error: [rank 0] dtrain.distributed needs mpi4py and an MPI library: "
                           "`pip install mpi4py mpich`"), res.stderr
    assert 'from a dtrain checkout `pip install -e ".[mpich]"`' in last
    assert "Traceback" not in res.stderr and "internal error" not in res.stderr
