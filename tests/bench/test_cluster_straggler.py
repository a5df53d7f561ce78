"""``dtrain bench cluster_straggler``: a tiny run on a 2-node virtual cluster writes every report file with a
step time for both runs and the slow link's rate applied (root only); the stall-warning parser finds whom
each warning blames; bad arguments are refused with the bad value named, before any cluster is built."""

from __future__ import annotations

import csv
import json

import pytest
from cluster_bench_run import assert_cluster_gone, parse_error, run_benchmark, run_error

from dtrain.bench import cluster_straggler
from dtrain.cluster import support_problem

CLUSTER = "tbstr"  # this test's own cluster name, so it never touches a benchmark or another test's cluster


def test_tiny_run_writes_every_report_file(tmp_path):
    problem = support_problem()
    if problem:
        pytest.skip(problem)
    out = tmp_path / "res"
    argv = ["--cluster", "2x1", "--link", "4gbit", "--hidden", "64", "--steps", "3", "--stall-warning", "30",
            "--out", str(out)]
    run_benchmark("cluster_straggler", argv, CLUSTER)
    for name in ("straggler.csv", "straggler.json", "straggler.md"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    with open(out / "straggler.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["uniform", "straggler"]
    # the default straggler: the last node at a quarter of --link
    assert [r["link_rates"] for r in rows] == ["4gbit 4gbit", "4gbit 1gbit"]
    assert all(r["steps"] == "3" and float(r["step_s"]) > 0 and not r["failure"] for r in rows)
    dump = json.loads((out / "straggler.json").read_text())
    assert dump["slow"] == {"1": "1gbit"} and dump["model"]["comm_slow_s"] > dump["model"]["comm_fast_s"]
    assert all(min(r["node_bytes"]) > 0 for r in dump["runs"])  # the gradients crossed both links
    md = (out / "straggler.md").read_text()
    assert "## Stall warnings" in md and "## Command" in md and "--stall-warning 30" in md
    assert_cluster_gone(CLUSTER)


def test_warnings_are_parsed_with_the_ranks_they_blame():
    stderr = "\n".join([
        "some other line",
        "dtrain: warning: [rank 0] collective 'DDP gradient bucket 0 (none)' (step 4, bucket 0) (inside 'allreduce "
        "ring') has waited 0.5 s for its peers: every rank is inside it, so the collective itself is slow or stuck "
        "(a slow or failed link, or mismatched operations across ranks); the job is aborted at 60 s (--timeout)",
        "dtrain: warning: [rank 2] collective 'agree on setup' has waited 0.6 s for its peers: late: rank 3 (every "
        "rank on host x-node3) is not in a collective; it last finished 'x' 6.8 s ago; rank 1 is in 'y', step 2 "
        "for 0.1 s; ranks 0, 4 are waiting in it too",
        "dtrain: warning: [rank 1] collective 'allreduce ring' (step 5) has waited 1.5 s for its peers: missing ranks "
        "2, 3 did not answer within 0.5 s (dead, hung or unreachable); rank 0 is waiting in it too",
    ])
    found = cluster_straggler.parse_warnings(stderr)
    assert [(w["rank"], w["waited_s"], w["named_ranks"]) for w in found] == [(0, 0.5, []), (2, 0.6, [1, 3]),
                                                                              (1, 1.5, [2, 3])]
    assert found[0]["collective"].startswith("collective 'DDP gradient bucket 0 (none)' (step 4")


def test_the_ring_model_scales_only_the_link_time():
    m = cluster_straggler.step_model(0.4, 25e6, 1e9, 250e6)
    assert m["comm_slow_s"] == pytest.approx(4 * m["comm_fast_s"])
    assert m["predicted_step_s"] == pytest.approx(0.4 + 3 * m["comm_fast_s"])


@pytest.mark.parametrize("argv, expected", [
    (["--cluster", "4y1"], "expected KxM"),
    (["--link-of", "x=250mbit"], "expected NODE=RATE"),
    (["--steps", "many"], "invalid int value"),
])
def test_bad_arguments_are_refused_by_the_parser(argv, expected):
    assert expected in parse_error(cluster_straggler, argv)


@pytest.mark.parametrize("argv, expected", [
    (["--steps", "0"], "--steps must be >= 1, got 0"),
    (["--stall-warning", "0"], "--stall-warning must be > 0 seconds, got 0.0"),
    (["--cluster", "1x4"], "--cluster 1x4 has one node"),
    (["--link-of", "7=250mbit"], "--link-of node 7 does not exist (nodes 0 to 3)"),
])
def test_bad_values_are_refused_before_any_cluster(argv, expected):
    assert expected in run_error(cluster_straggler, argv)
