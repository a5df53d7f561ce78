"""The compression benchmark's goals and aggregation: means over seeds per (model, ranks, compressor), deltas
and byte ratios against ``none``."""

from __future__ import annotations

import math
import statistics

GOAL_FEWER = 100.0  # x fewer bytes per step than none
GOAL_LOSS_PP = 1.0  # at most this many points below none
TEST_SAMPLES = 360  # digits test split
CLI_DEFAULTS = "20 epochs, SGD lr 0.05 (mlp) / 0.02 (cnn), momentum 0.9, global batch 64"


def _mean(values: list[float]) -> float:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.fmean(vals) if vals else math.nan


def aggregate(rows: list[dict]) -> dict:
    """Per (model, ranks, spec): means over the successful seeds, deltas and byte ratios against none."""
    cells: dict = {}
    for r in rows:
        cells.setdefault((r["model"], r["ranks"], r["spec"]), []).append(r)
    out = {}
    for key, runs in cells.items():
        ok = [r for r in runs if not r.get("error")]
        out[key] = {
            "runs": runs, "ok": ok, "errors": [r for r in runs if r.get("error")],
            "seeds": [r["seed"] for r in ok],
            "acc": _mean([r["test_accuracy"] for r in ok]),
            "accs": [r["test_accuracy"] for r in ok],
            "bytes_per_step": _mean([r["bytes_per_step"] for r in ok]),
            "last_bytes": _mean([r["last_epoch_bytes_per_step"] for r in ok]),
            "other_cpu_s": _mean([r.get("other_cpu_s") for r in ok]),
            "ratio": _mean([r["compression_ratio"] for r in ok]),
            # the least disturbed run: other processes on the machine only ever add time
            "ms_per_step": min((r["ms_per_step"] for r in ok), default=math.nan),
        }
    for (model, ranks, _spec), a in out.items():
        base = out.get((model, ranks, "none"))
        a["delta"] = a["fewer"] = math.nan
        if base and base["ok"] and a["ok"]:
            # Compare on the seeds both have, so a failed seed does not bias the delta.
            common = sorted(set(a["seeds"]) & set(base["seeds"]))
            if common:
                mine = {r["seed"]: r["test_accuracy"] for r in a["ok"]}
                theirs = {r["seed"]: r["test_accuracy"] for r in base["ok"]}
                a["delta"] = _mean([mine[s] - theirs[s] for s in common])
            if a["bytes_per_step"] > 0:
                a["fewer"] = base["bytes_per_step"] / a["bytes_per_step"]
    for r in rows:
        base = next((b for b in rows if b["model"] == r["model"] and b["ranks"] == r["ranks"]
                     and b["spec"] == "none" and b["seed"] == r["seed"] and not b.get("error")), None)
        ok = base is not None and not r.get("error")
        r["delta_vs_none_pp"] = r["test_accuracy"] - base["test_accuracy"] if ok else math.nan
        r["fewer_bytes_than_none"] = (base["bytes_per_step"] / r["bytes_per_step"]
                                      if ok and r["bytes_per_step"] > 0 else math.nan)
    return out


def meets_goal(a: dict) -> bool:
    """Whether a compressor's cell meets both goals (bytes and accuracy) with no failed seed."""
    return (a["ok"] != [] and not a["errors"] and a["fewer"] >= GOAL_FEWER and a["delta"] >= -GOAL_LOSS_PP)
