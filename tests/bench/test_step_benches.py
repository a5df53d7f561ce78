"""Smoke runs of the single-process step benchmarks (autograd_overhead, train_throughput) with a few steps:
their correctness checks run (captured = eager bit for bit, dtrain = NumPy), and their tables name every
implementation. Timings are not asserted."""

from __future__ import annotations

import argparse
import re

import pytest

from dtrain.bench import autograd_overhead, train_throughput


def parse(module, argv: list[str]):
    p = argparse.ArgumentParser()
    module.add_arguments(p)
    return p.parse_args(argv)


def test_autograd_overhead_checks_and_reports_the_captured_step(tmp_path, capsys):
    args = parse(autograd_overhead, ["--iters", "2", "--rounds", "1", "--warmup", "1", "--tiny-iters", "5",
                                     "--sizes", "20", "16", "5", "--batch", "8", "--impls", "dtrain",
                                     "dtrain-captured", "numpy", "--out", str(tmp_path)])
    assert autograd_overhead.run(args) == 0
    out = capsys.readouterr().out
    assert "[tiny] check passed: loss and gradients agree across dtrain, dtrain-captured, numpy" in out
    md = (tmp_path / "autograd_overhead.md").read_text()
    assert "| dtrain-captured |" in md and "speed(dtrain-captured) / speed(numpy)" in md


def test_autograd_overhead_takes_the_dtrain_step_apart(tmp_path, capsys):
    """The op bodies called directly and the ops through Function.apply compute the same loss and gradients as
    the hand-written NumPy step (the check), on a three-layer MLP, and the report splits the overhead."""
    args = parse(autograd_overhead, ["--iters", "2", "--rounds", "1", "--warmup", "1", "--tiny-iters", "5",
                                     "--sizes", "20", "16", "12", "5", "--batch", "8", "--impls", "dtrain",
                                     "dtrain-apply", "dtrain-bodies", "numpy", "--out", str(tmp_path)])
    assert autograd_overhead.run(args) == 0
    out = capsys.readouterr().out
    for config in ("big", "tiny"):
        assert (f"[{config}] check passed: loss and gradients agree across dtrain, dtrain-apply, dtrain-bodies, "
                "numpy") in out
    md = (tmp_path / "autograd_overhead.md").read_text()
    assert "| dtrain-bodies |" in md and "| dtrain-apply |" in md
    assert md.count("- dtrain's step taken apart (µs/iter): the ops' array code") == 2


def test_train_throughput_checks_the_captured_step_bit_for_bit(tmp_path, capsys):
    args = parse(train_throughput, ["--steps", "2", "--repeats", "1", "--warmup", "1", "--profile-steps", "0",
                                    "--models", "cnn", "resnet", "--impls", "dtrain", "captured", "trainer",
                                    "trainer-captured", "--out", str(tmp_path)])
    assert train_throughput.run(args) == 0
    out = capsys.readouterr().out
    for model in ("cnn", "resnet"):
        assert f"[{model}] check passed: captured = raw bit for bit after 3 steps (parameters and buffers)" in out
    md = (tmp_path / "train_throughput.md").read_text()
    assert "dtrain captured samples/s" in md and "Trainer --capture / Trainer" in md


def test_train_throughput_reports_per_repeat_ratios_against_torch(tmp_path):
    pytest.importorskip("torch")
    args = parse(train_throughput, ["--steps", "2", "--repeats", "3", "--warmup", "1", "--profile-steps", "0",
                                    "--models", "mlp", "--impls", "dtrain", "captured", "torch", "--out",
                                    str(tmp_path)])
    assert train_throughput.run(args) == 0
    md = (tmp_path / "train_throughput.md").read_text()
    line = next(ln for ln in md.splitlines() if ln.startswith("Per-repeat ratios"))
    m = re.search(r"mlp raw (\d+\.\d\d) \((\d+\.\d\d) to (\d+\.\d\d)\), captured (\d+\.\d\d) \((\d+\.\d\d) to "
                  r"(\d+\.\d\d)\)\.$", line)
    assert m, line
    raw_med, raw_lo, raw_hi, cap_med, cap_lo, cap_hi = map(float, m.groups())
    assert raw_lo <= raw_med <= raw_hi and cap_lo <= cap_med <= cap_hi and raw_lo > 0
    header = (tmp_path / "train_throughput.csv").read_text().splitlines()[0].split(",")
    assert {"paired_dtrain_torch_median", "paired_captured_torch_min", "paired_captured_torch_max"} <= set(header)
