"""``dtrain bench scaling`` on the virtual cluster and over variants (overlap on/off x bucket sizes x models):
the options, the overlap analysis and the extrapolation on known numbers, and a root-only smoke run."""

from __future__ import annotations

import itertools
import json

import pytest
from cluster_bench_run import assert_cluster_gone, run_benchmark

from dtrain.bench.scaling_extrapolate import FABRIC_ALPHA, extrapolate, goodput, wire_beta
from dtrain.bench.scaling_sweep import label, variants
from dtrain.bench.scaling_sweep_report import overlap_analysis
from dtrain.cli import build_parser
from dtrain.cluster import support_problem
from dtrain.distributed.costmodel import Link

PROBLEM = support_problem()
NAME = "sct"  # this test's benchmark cluster (DTRAIN_BENCH_CLUSTER), no other test uses it


def _parse(*argv):
    return build_parser().parse_args(["bench", "scaling", *argv])


def test_lists_make_one_variant_per_combination_and_single_values_stay_plain():
    args = _parse("--model", "mlp,cnn", "--overlap", "on,off", "--bucket-mb", "1,4,25", "--cluster", "4x1")
    vs = variants(args)
    assert len(vs) == 12 and len({label(v) for v in vs}) == 12
    assert {(v.model, v.overlap, v.bucket_mb) for v in vs} == {
        (m, o, b) for m in ("mlp", "cnn") for o in (True, False) for b in (1.0, 4.0, 25.0)}
    single = _parse("--model", "cnn", "--bucket-mb", "4", "--overlap", "off")
    assert (single.model, single.bucket_mb, single.overlap) == ("cnn", 4.0, False)
    assert [label(v) for v in variants(single)] == ["cnn-overlap-off-4mib"]


@pytest.mark.parametrize("argv", [("--overlap", "maybe"), ("--bucket-mb", "0"), ("--model", "mlp,rnn"),
                                  ("--cluster", "4"), ("--probe-repeats", "-1")])
def test_bad_sweep_options_are_refused(argv):
    with pytest.raises(SystemExit):
        _parse(*argv)


def test_ranks_that_do_not_fit_the_cluster_are_refused_before_anything_starts():
    from dtrain.bench.scaling import _validate_before_launch

    with pytest.raises(ValueError, match=r"--ranks 4 does not fit on --cluster 2x1"):
        _validate_before_launch(_parse("--cluster", "2x1", "--ranks", "1,2,4", "--hidden", "8"))


def _row(model, n, overlap, bucket, comm, backward, exposed, step, compute=0.1):
    return {"model": model, "nodes": n, "world_size": n, "cores": 2, "mode": "weak", "overlap": overlap,
            "bucket_mb": bucket, "buckets": 3, "comm_s": comm, "backward_s": backward, "exposed_s": exposed,
            "compute_s": compute,
            "hidden_share": max(0.0, comm - exposed) / comm, "step_s": step, "oversubscribed": n > 2}


def test_overlap_analysis_says_what_cannot_hide_from_the_numbers():
    rows = [_row("mlp", 2, True, 4, 0.100, 0.040, 0.070, 0.20, compute=0.12),
            _row("mlp", 2, False, 4, 0.100, 0.040, 0.100, 0.25),
            _row("cnn", 2, True, 4, 0.020, 0.200, 0.005, 0.50), _row("cnn", 2, False, 4, 0.020, 0.200, 0.020, 0.52)]
    mlp, cnn = overlap_analysis(rows)
    # mlp: 100 ms of communication behind 40 ms of backward: 60 ms must stay exposed; 30 % was hidden.
    assert "at most 40% of it can hide" in mlp and "at least 60.0 ms stays exposed" in mlp
    assert "hid 30% at 4 MiB" in mlp and "200.0 vs 250.0 ms (-20%)" in mlp
    assert "Compute in the step with overlap on / off: 1.20x" in mlp
    assert "2 ranks share 2 cores" in mlp  # no spare core for the communication threads
    assert "at most 100% of it can hide" in cnn and "stays exposed" not in cnn


def _weak_result(overlap=True):
    rec = {"mode": "weak", "model": "mlp", "per_rank_batch": 64, "params": 2_000_000, "step_s": 0.050,
           "compute_s": 0.045, "backward_s": 0.030, "optimizer_s": 0.003, "exposed_s": 0.0,
           "compute_alone_s": 0.045, "optimizer_alone_s": 0.003, "buckets_bytes": [4 << 20, 4 << 20],
           "overlap": overlap}
    return {"label": "mlp-overlap-on-4mib", "worlds": [{"records": [{**rec, "world_size": 1}]},
                                                       {"records": [{**rec, "world_size": 2}]}]}


def test_extrapolation_uses_the_measured_goodput_and_degrades_with_nodes():
    shaped = 1e9
    cal = {"link": Link(alpha=500e-6, beta=2 * 8 / shaped, gamma=1e-11), "copy_s_per_byte": 0.0}
    assert goodput(cal, shaped) == pytest.approx(2.0)
    rows = extrapolate(_weak_result(), cal, shaped, max_nodes=64)
    assert [r["goodput_factor"] for r in rows] == pytest.approx([2.0] * len(rows))
    for rate in (10.0, 25.0, 100.0):
        for source in ("calibrated", "fabric"):
            curve = [r for r in rows if r["rate_gbit"] == rate and r["alpha_source"] == source]
            assert [r["nodes"] for r in curve] == [1, 2, 4, 8, 16, 32, 64]
            assert curve[0]["efficiency"] == 1.0
            effs = [r["efficiency"] for r in curve]
            assert all(a >= b for a, b in itertools.pairwise(effs))
        fabric = [r for r in rows if r["rate_gbit"] == rate and r["alpha_source"] == "fabric"]
        assert fabric[0]["alpha_s"] == FABRIC_ALPHA[round(rate)] < 500e-6
    at64 = {(r["rate_gbit"], r["alpha_source"]): r["efficiency"] for r in rows if r["nodes"] == 64}
    assert at64[(10.0, "fabric")] <= at64[(25.0, "fabric")] <= at64[(100.0, "fabric")]
    assert at64[(100.0, "calibrated")] < at64[(100.0, "fabric")]  # a smaller alpha only helps


def test_wire_beta_is_the_slope_of_the_largest_probes():
    n, alpha, beta = 4, 80e-6, 8.8e-9
    # tc's burst makes the small sizes faster than the link: only the two largest may set beta.
    rows = [{"algorithm": "ring", "world_size": n, "size_bytes": m,
             "min_time_s": 2 * (n - 1) * alpha + 2 * (n - 1) / n * m * beta * (0.2 if m < 4 << 20 else 1.0),
             "time_s": 1.0} for m in (4 << 10, 256 << 10, 4 << 20, 16 << 20)]
    assert wire_beta({"allreduce_worker": rows}, n) == pytest.approx(beta)
    with pytest.raises(ValueError, match="2 sizes"):
        wire_beta({"allreduce_worker": rows[:1]}, n)


def _bench(*argv):
    run_benchmark("scaling", ["--cluster", "2x1", "--link", "10gbit", "--modes", "weak", "--model", "mlp",
                              "--hidden", "32", "--batch", "8", "--steps", "2", "--warmup", "1", "--comm-repeats", "1",
                              "--probe-repeats", "1", "--timeout", "120", *argv], NAME, timeout=400)
    assert_cluster_gone(NAME)


@pytest.mark.skipif(PROBLEM is not None, reason=PROBLEM or "")
def test_sweep_on_a_two_node_cluster_writes_the_combined_report(tmp_path):
    out = tmp_path / "sweep"
    _bench("--ranks", "1,2", "--overlap", "on,off", "--bucket-mb", "0.05,1", "--out", str(out))
    result = json.loads((out / "sweep.json").read_text())
    labels = ["mlp-overlap-on-0.05mib", "mlp-overlap-on-1mib", "mlp-overlap-off-0.05mib", "mlp-overlap-off-1mib"]
    assert [v["label"] for v in result["variants"]] == labels
    for v in result["variants"]:
        assert [(w["world_size"], w["nodes"], w["ppn"]) for w in v["worlds"]] == [(1, 1, 1), (2, 2, 1)]
        one, two = (w["records"][0] for w in v["worlds"])
        assert two["overlap"] is v["args"]["overlap"] and two["comm_s"] > 0
        assert two["exposed_s"] >= 0 and two["compute_s"] > 0
        # The 1-rank world ran once (first variant) and carries each variant's own bucket layout.
        assert one.get("shared_1rank", labels[0]) == labels[0] and one["buckets_bytes"] == two["buckets_bytes"]
    small, large = (len(v["worlds"][1]["records"][0]["buckets_bytes"]) for v in result["variants"][:2])
    assert small > large == 1  # 100 KiB of MLP gradients: several 0.05 MiB buckets, one 1 MiB bucket
    extra = result["variants"][0]["sweep"]
    assert {(v["variant"], v["world_size"]) for v in extra["validation"]} == {(x, 2) for x in labels}
    assert {(r["rate_gbit"], r["nodes"]) for r in extra["extrapolation"]} >= {(g, 1024) for g in (10.0, 25.0, 100.0)}
    md = (out / "sweep.md").read_text()
    for needle in ("## Where overlap hides the link and where it can't", "share this host's", "**Verdict**",
                   "## Extrapolation to 1024 nodes", "## Command", "--overlap on,off"):
        assert needle in md
    assert (out / "sweep.csv").read_text().count("\n") == 1 + 8  # header, 4 variants x 2 world sizes


@pytest.mark.skipif(PROBLEM is not None, reason=PROBLEM or "")
def test_one_variant_on_the_cluster_keeps_the_single_report(tmp_path):
    out = tmp_path / "single"
    _bench("--ranks", "2", "--overlap", "off", "--out", str(out))
    result = json.loads((out / "scaling.json").read_text())
    assert [(w["world_size"], w["nodes"]) for w in result["worlds"]] == [(2, 2)]
    assert result["worlds"][0]["records"][0]["overlap"] is False
    assert "virtual cluster 2x1" in (out / "scaling.md").read_text()
