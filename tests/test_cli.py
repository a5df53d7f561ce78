"""The dtrain command line, run as a user would: the README job, flags, TOML, bad input, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

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
    (["--checkpoint-every", "often"], "--checkpoint-every must be N (steps) or Ne (epochs)"),
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
