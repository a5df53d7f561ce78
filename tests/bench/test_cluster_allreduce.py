"""``dtrain bench cluster_allreduce``: a tiny run on a 2-node virtual cluster writes every report file with a
positive busbw for every algorithm (root only), and bad arguments are refused with the bad value named."""

from __future__ import annotations

import csv
import json

import pytest
from cluster_bench_run import assert_cluster_gone, parse_error, run_benchmark, run_error

from dtrain.bench import cluster_allreduce
from dtrain.bench import cluster_allreduce_report as report
from dtrain.cluster import support_problem

CLUSTER = "tbca"  # this test's own cluster name, so it never touches a benchmark or another test's cluster


def test_tiny_run_writes_every_report_file(tmp_path):
    problem = support_problem()
    if problem:
        pytest.skip(problem)
    out = tmp_path / "res"
    argv = ["--shapes", "2x1", "--links", "10gbit", "--sizes", "256K", "--repeats", "2", "--warmup", "0",
            "--byte-rounds", "1", "--timeout", "120", "--out", str(out)]
    run_benchmark("cluster_allreduce", argv, CLUSTER)
    for name in ("cluster_allreduce.csv", "cluster_allreduce.json", "cluster_allreduce.md", "busbw.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    with open(out / "cluster_allreduce.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["algorithm"] for r in rows) == sorted(cluster_allreduce.ALGORITHMS)
    assert all(float(r["busbw_GBps"]) > 0 and r["shape"] == "2x1" and r["link"] == "10gbit" for r in rows)
    launch = json.loads((out / "cluster_allreduce.json").read_text())["launches"][0]
    # the bytes crossed the links: each node sent at least the ring's payload (256 KiB for 2 ranks)
    assert all(b >= 256 * 1024 for b in launch["node_bytes"]["ring"]) and len(launch["node_bytes"]["ring"]) == 2
    md = (out / "cluster_allreduce.md").read_text()
    assert "## Goal" in md and "## Command" in md and "--shapes 2x1" in md
    assert_cluster_gone(CLUSTER)


@pytest.mark.parametrize("argv, expected", [
    (["--shapes", "2y1"], "expected KxM"),
    (["--links", "1zbit"], "1zbit"),
    (["--sizes", "4 parsecs"], "not a size"),
    (["--pipelines", "4M"], "expected PIECE:DEPTH"),
])
def test_bad_arguments_are_refused_by_the_parser(argv, expected):
    assert expected in parse_error(cluster_allreduce, argv)


@pytest.mark.parametrize("argv, expected", [
    (["--shapes", "1x2,2x1"], "shapes 1x2 have one node"),
    (["--byte-rounds", "0"], "--byte-rounds must be >= 1, got 0"),
    (["--repeats", "-1"], "--repeats must be >= 0, got -1"),
    (["--links", "1gbit,2gbit", "--reference-link", "2gbit"], "--reference-link 2gbit is one of --links"),
])
def test_bad_values_are_refused_before_any_cluster(argv, expected):
    assert expected in run_error(cluster_allreduce, argv)


def test_sizes_take_binary_suffixes():
    assert cluster_allreduce._bytes("4MiB") == 4 << 20 == cluster_allreduce._bytes("4M")
    assert cluster_allreduce._pipeline("256KiB:3") == (256 << 10, 3)


def test_link_bounds_follow_the_traffic_models():
    g = report.goodput_GBps(1_000_000_000)
    assert g == pytest.approx(0.125 * 1448 / 1514)
    assert report.bound_GBps(10**9, "ring", 4, 2) == report.bound_GBps(10**9, "mpi", 4, 2) == g
    assert report.bound_GBps(10**9, "hierarchical", 4, 2) == pytest.approx(1.5 * g)  # (3/4) / (1/2)
    assert report.bound_GBps(10**9, "hierarchical", 4, 4) == pytest.approx(g)  # one rank per node: the ring
    assert report.model_payload("ring", 8, 4, 1 << 20) == 1.75 * (1 << 20)
    assert report.model_payload("hierarchical", 8, 4, 1 << 20) == 1.5 * (1 << 20)
    assert report.matching_model(1.5 * (1 << 20) / report.GOODPUT, 8, 4, 1 << 20) == "node ring"
    assert report.matching_model((1 << 20) / report.GOODPUT, 2, 2, 1 << 20) == "flat ring and node ring"


def _launch(link_bps: int, ring_s: float, mpi_s: float, reference: bool = False) -> dict:
    nbytes = 1 << 20
    rows = [{"size_bytes": nbytes, "algorithm": alg, "time_s": t, "min_time_s": t, "algbw_GBps": nbytes / t / 1e9,
             "busbw_GBps": nbytes / t / 1e9, "repeats": 3} for alg, t in (("ring", ring_s), ("mpi", mpi_s))]
    return {"link": "x", "link_bps": link_bps, "shape": "2x1", "nodes": 2, "ppn": 1, "world_size": 2,
            "rows": rows, "variants": [], "node_bytes": {"ring": [nbytes / report.GOODPUT] * 2}, "byte_rounds": 1,
            "reference": reference}


def test_verdicts_compare_the_ring_with_its_bound_and_mpi():
    bound_s = (1 << 20) / (report.goodput_GBps(10**9) * 1e9)  # the time at exactly the link bound
    good = report.report_rows([_launch(10**9, bound_s / 0.95, bound_s / 0.9)], cores=2)
    slow = report.report_rows([_launch(10**9, bound_s / 0.85, bound_s / 0.8)], cores=2)
    assert good[0]["ratio_bound"] == pytest.approx(0.95) and good[0]["ratio_mpi"] == pytest.approx(0.95 / 0.9)
    assert "**pass**" in "\n".join(report.verdicts(good, 2)) and "1 of 1" in "\n".join(report.verdicts(good, 2))
    lines = "\n".join(report.verdicts(slow, 2))
    assert "0.85x the link bound (FAIL)" in lines and "0 of 1" in lines
    assert not any(r["oversubscribed"] for r in good)
    with_ref = report.report_rows([_launch(10**9, bound_s, bound_s), _launch(10**10, bound_s / 4, bound_s / 3,
                                                                               reference=True)], cores=2)
    lines = "\n".join(report.verdicts(with_ref, 2))
    assert "1 of 1" in lines and "host ceiling" in lines and "4.00x this link bound" in lines


def test_the_faster_dtrain_algorithm_is_compared_with_mpi():
    launch = _launch(10**9, 0.010, 0.008)  # the flat ring slower than a node-aware MPI_Allreduce ...
    nbytes = launch["rows"][0]["size_bytes"]
    launch["rows"].append({"size_bytes": nbytes, "algorithm": "hierarchical", "time_s": 0.006, "min_time_s": 0.006,
                           "algbw_GBps": nbytes / 0.006 / 1e9, "busbw_GBps": nbytes / 0.006 / 1e9, "repeats": 3})
    lines = report.best_vs_mpi(report.report_rows([launch], cores=2), nbytes)
    assert "- x 2x1: hierarchical 1.33x MPI_Allreduce (>= MPI)" in lines  # ... and hierarchical faster than both
    slow = report.best_vs_mpi(report.report_rows([_launch(10**9, 0.010, 0.008)], cores=2), nbytes)
    assert "- x 2x1: ring 0.80x MPI_Allreduce (< MPI)" in slow
