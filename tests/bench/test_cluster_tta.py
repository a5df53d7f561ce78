"""``dtrain bench cluster_tta``: a tiny run on a 2-node virtual cluster writes every report file with a time to
target for every compression and bytes on the links (root only); bad arguments are refused with the bad
value named, before any cluster is built."""

from __future__ import annotations

import csv
import json

import pytest
from cluster_bench_run import assert_cluster_gone, parse_error, run_benchmark, run_error

from dtrain.bench import cluster_tta
from dtrain.cluster import support_problem

CLUSTER = "tbtta"  # this test's own cluster name, so it never touches a benchmark or another test's cluster


def test_tiny_run_writes_every_report_file(tmp_path):
    problem = support_problem()
    if problem:
        pytest.skip(problem)
    out = tmp_path / "res"
    argv = ["--cluster", "2x1", "--link", "10gbit", "--compressions", "none,topk:0.1", "--hidden", "64",
            "--batch-size", "64", "--epochs", "1", "--target", "0.3", "--out", str(out)]
    run_benchmark("cluster_tta", argv, CLUSTER)
    for name in ("cluster_tta.csv", "cluster_tta.json", "cluster_tta.md", "tta.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    with open(out / "cluster_tta.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["compression"] for r in rows] == ["none", "topk:0.1"]
    for r in rows:  # one epoch of a 64-wide MLP on digits is far above 30 %: every run reaches the target
        assert r["epochs_to_target"] == "1" and float(r["train_s_to_target"]) > 0 and not r["failure"]
        assert int(r["link_bytes"]) > 0
    runs = json.loads((out / "cluster_tta.json").read_text())["rows"]
    assert runs[1]["bytes_per_step"] < runs[0]["bytes_per_step"]  # topk sends fewer gradient bytes than none
    assert all(len(r["node_bytes"]) == 2 and min(r["node_bytes"]) > 0 for r in runs)  # both links carried bytes
    md = (out / "cluster_tta.md").read_text()
    assert "## Goal" in md and "## Command" in md and "--compressions none,topk:0.1" in md
    assert_cluster_gone(CLUSTER)


@pytest.mark.parametrize("argv, expected", [
    (["--cluster", "4y1"], "expected KxM"),
    (["--link", "1zbit"], "1zbit"),
    (["--compressions", ","], "expected comma-separated compression specs"),
    (["--compressions", "none,fp16,fp16"], "repeated"),
])
def test_bad_arguments_are_refused_by_the_parser(argv, expected):
    assert expected in parse_error(cluster_tta, argv)


@pytest.mark.parametrize("argv, expected", [
    (["--target", "1.5"], "--target must be a test accuracy in (0, 1], got 1.5"),
    (["--epochs", "0"], "--epochs must be >= 1, got 0"),
    (["--batch-size", "-4"], "--batch-size must be >= 1, got -4"),
    (["--compressions", "fp16,none"], "must start with 'none' (the reference), got fp16,none"),
    (["--cluster", "1x2"], "--cluster 1x2 has one node"),
])
def test_bad_values_are_refused_before_any_cluster(argv, expected):
    assert expected in run_error(cluster_tta, argv)


def test_time_to_target_is_the_first_epoch_at_the_target():
    records = [{"epoch": 1, "test_accuracy": 0.90, "samples_per_s": 100.0},
               {"epoch": 2, "test_accuracy": 0.96, "samples_per_s": 200.0},
               {"epoch": 3, "test_accuracy": 0.97, "samples_per_s": 300.0}]
    hit = cluster_tta.time_to_target(records, [1.5, 2.5, 3.5], n_train=1000, target=0.95)
    # epoch 2: 2000 samples at 200 samples/s of training, the record seen 2.5 s after launch
    assert hit == {"epochs_to_target": 2, "train_s_to_target": 10.0, "seen_s_to_target": 2.5}
    miss = cluster_tta.time_to_target(records, [1.5, 2.5, 3.5], n_train=1000, target=0.99)
    assert miss == {"epochs_to_target": None, "train_s_to_target": None, "seen_s_to_target": None}
