"""The dtrain command line, run as a user would (a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys


def run(*args):
    return subprocess.run([sys.executable, "-m", "dtrain", *args], capture_output=True, text=True, timeout=300)


def test_train_digits_learns(tmp_path):
    res = run("train", "--epochs", "4", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["test_accuracy"] > 0.9 and summary["epochs"] == 4
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4]


def test_train_rejects_bad_values():
    res = run("train", "--epochs", "0")
    assert res.returncode != 0 and "--epochs (0)" in res.stderr


def test_info_and_help():
    res = run("info")
    assert res.returncode == 0 and "dtrain 0.1.0" in res.stdout and "numpy" in res.stdout
    res = run("train", "--help")
    assert res.returncode == 0 and "--batch-size" in res.stdout
