"""--precision fp16/bf16 under a real mpiexec: gradients travel in the half type (compression auto), every
rank ends identical (the divergence guard runs at the end), and accuracy matches the float32 run."""

from __future__ import annotations

import json

import pytest

import dtrain as dt


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_under_mpiexec(run_mpi, tmp_path, precision):
    if precision == "bf16" and dt.bfloat16 is None:
        pytest.skip("bfloat16 needs ml_dtypes")
    summaries = {}
    for p in ("fp32", precision):
        out = tmp_path / p
        run_mpi("-m", 2, "dtrain", "train", "--precision", p, "--epochs", "8", "--no-monitor", "--check-every", "20",
                "--out", str(out), timeout=300)
        summaries[p] = json.loads((out / "summary.json").read_text())
    ref, got = summaries["fp32"], summaries[precision]
    assert got["compression"] == precision and ref["compression"] == "none"
    assert got["world_size"] == 2 and got["steps"] == ref["steps"]
    assert got["compression_ratio"] > 1.9  # half-size gradients on the wire
    assert abs(got["test_accuracy"] - ref["test_accuracy"]) <= 0.005 + 1e-12, (got, ref)
