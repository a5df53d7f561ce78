"""Gradient compression: final test accuracy against bytes sent per step, for every dtrain compressor.

What is measured
    For each compressor spec (``--specs``), model (``--models``: the digits MLP and CNN of the zoo),
    world size (``--ranks``) and seed (``--seeds``), one data-parallel training run of the CLI, one
    after the other (never in parallel), each in a fresh ``mpiexec`` launch::

        mpiexec -n N dtrain train --model M --dataset digits --compression SPEC --seed S \\
                                  --no-progress --out DIR [--epochs E]

    with the CLI's defaults otherwise: 20 epochs, SGD lr 0.05 (mlp) / 0.02 (cnn), momentum 0.9, global
    batch 64 (split across the ranks), DDP with 25 MB buckets, ring all-reduce, overlap on. Every
    compressor of a (model, ranks, seed) cell sees the same initial weights, batches and schedule; only
    the gradient synchronisation differs. From the run's ``summary.json`` and ``metrics.jsonl`` (rank 0):

    * final test accuracy (digits test split, 360 samples: one sample is 0.28 points) and its delta
      against ``none`` with the same model, ranks and seeds (percentage points; means over seeds);
    * bytes per step: ``bytes_sent`` (rank 0, cumulative, the payload it handed to MPI for gradient
      synchronisation, sample counts included) / ``steps``, mean over the whole run;
    * compression ratio: ``bytes_uncompressed`` (what the plain ring would have sent) / ``bytes_sent``;
      and "fewer bytes than none": none's bytes per step / this compressor's (same model and ranks);
    * time per step: ``wall_s`` of the training call / ``steps`` (includes the per-epoch evaluation).

    Goals, reported and never asserted: at least one compressor sends >= 100x fewer bytes per step than
    ``none`` with <= 1 point accuracy loss, on each model (at every world size run); ``powersgd:2``
    within 1 point of ``none``.

    A failed or timed-out run is recorded (its last error line) in the tables instead of stopping the
    benchmark; the exit status is then 1. ``--budget-min`` stops launching new runs once the benchmark
    has run that long; runs are ordered seed-major, so a cut leaves whole seeds. On a machine with fewer
    cores than ranks, mpiexec oversubscribes the cores and the time per step measures that contention.

How to run
    /work/venv/bin/python benchmarks/compression.py                 # full grid, writes benchmarks/results/
    /work/venv/bin/python benchmarks/compression.py --quick --out /tmp/res       # smoke run, about a minute
    /work/venv/bin/python benchmarks/compression.py --models mlp --ranks 2 --specs none,topk:0.001 --seeds 0

Outputs ``compression.md`` (tables, goals, checks, machine, exact command), ``compression.csv`` (one row
per run) and ``compression.png`` (test accuracy against bytes per step, log x, one panel per model x
ranks) in ``--out``. Needs matplotlib for the PNG only.
"""

from __future__ import annotations

import os

_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                "NUMEXPR_NUM_THREADS", "BLIS_NUM_THREADS")
for _var in _THREAD_VARS:
    os.environ[_var] = "1"

import argparse  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import busy_cpu_s, command_section, cpu_model, find_mpiexec, fmt_load, own_cpu_s  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SPECS = ("none", "fp16", "bf16", "powersgd:1", "powersgd:2", "powersgd:4", "topk:0.01", "topk:0.003",
                 "topk:0.002", "topk:0.001", "randomk:0.1", "randomk:0.01", "randomk:0.001", "qsgd:16", "qsgd:4",
                 "signsgd")
QUICK_SPECS = ("none", "fp16", "powersgd:2", "topk:0.01", "qsgd:4", "signsgd")
QUICK_EPOCHS = 2
GOAL_FEWER = 100.0  # x fewer bytes per step than none
GOAL_LOSS_PP = 1.0  # at most this many points below none
TEST_SAMPLES = 360  # digits test split
CLI_DEFAULTS = "20 epochs, SGD lr 0.05 (mlp) / 0.02 (cnn), momentum 0.9, global batch 64"


# ---------------------------------------------------------------------------------------------
# Running one configuration
# ---------------------------------------------------------------------------------------------


def dtrain_command() -> list[str]:
    """The ``dtrain`` console script of this Python, or ``python -m dtrain`` (the same entry point)."""
    script = Path(sys.executable).parent / "dtrain"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "dtrain"]


def run_env() -> dict[str, str]:
    env = dict(os.environ)
    for var in _THREAD_VARS:
        env[var] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def train_args(model: str, spec: str, seed: int, epochs: int | None, out: str) -> list[str]:
    args = ["train", "--model", model, "--dataset", "digits", "--compression", spec, "--seed", str(seed),
            "--no-progress", "--out", out]
    return args + (["--epochs", str(epochs)] if epochs is not None else [])


def _last_error_line(text: str) -> str:
    # Several ranks' one-line errors can arrive glued together on one line (mpiexec forwards each rank's
    # stderr as it comes): split them apart, and prefer rank 0's.
    text = re.sub(r"(?<!^)(?<!\n)(dtrain \w+: error:)", r"\n\1", text)
    rank0 = [ln.strip() for ln in text.splitlines() if "error: [rank 0]" in ln]
    if rank0:
        return rank0[-1][:300]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # Prefer the CLI's one-line error, then a Python exception line, then whatever came last.
    for pick in (lambda ln: ln.startswith("dtrain ") and "error" in ln,
                 lambda ln: ln.split(":", 1)[0].endswith(("Error", "Exception"))):
        hits = [ln for ln in lines if pick(ln)]
        if hits:
            return hits[-1][:300]
    return lines[-1][:300] if lines else "(no output)"


def run_one(mpiexec: str, model: str, ranks: int, spec: str, seed: int, epochs: int | None, timeout: float,
            tmp: Path) -> dict:
    """One training run; a dict of the measured numbers, or with ``error`` set when it failed."""
    out = tmp / f"{model}_n{ranks}_{spec.replace(':', '-')}_s{seed}"
    out.mkdir(parents=True, exist_ok=True)
    cmd = [mpiexec, "-n", str(ranks), *dtrain_command(), *train_args(model, spec, seed, epochs, str(out))]
    row = {"model": model, "ranks": ranks, "spec": spec, "seed": seed, "error": None}
    t0, busy0, own0 = time.perf_counter(), busy_cpu_s(), own_cpu_s()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=run_env(),
                            cwd=str(tmp), start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # the session this benchmark started: mpiexec and its ranks
        try:
            stdout, stderr = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
        row["launch_s"] = time.perf_counter() - t0
        row["error"] = f"timed out after {timeout:g} s"
        return row
    row["launch_s"] = time.perf_counter() - t0
    busy1 = busy_cpu_s()
    # CPU time other processes took while this run went on: its timings are disturbed when this is large.
    row["other_cpu_s"] = (None if busy0 is None or busy1 is None
                          else max(0.0, (busy1 - busy0) - (own_cpu_s() - own0)))
    summary_path, metrics_path = out / "summary.json", out / "metrics.jsonl"
    if proc.returncode != 0 or not summary_path.is_file():
        row["error"] = f"exit status {proc.returncode}: {_last_error_line(stderr or stdout)}"
        return row
    try:
        summary = json.loads(summary_path.read_text())
        records = [json.loads(ln) for ln in metrics_path.read_text().splitlines() if ln.strip()]
        last = records[-1]
        steps = int(summary["steps"])
        sent, raw = float(last["bytes_sent"]), float(last["bytes_uncompressed"])
        row.update({
            "epochs": summary["epochs"], "steps": steps, "world_size": summary["world_size"],
            "test_accuracy": 100.0 * float(summary["test_accuracy"]), "test_loss": float(summary["test_loss"]),
            "train_loss": float(last["train_loss"]),
            "train_loss_min": min(float(r["train_loss"]) for r in records),
            "train_loss_max": max(float(r["train_loss"]) for r in records),
            "best_test_accuracy": 100.0 * max(float(r["test_accuracy"]) for r in records),
            "bytes_sent": sent, "bytes_uncompressed": raw,
            "bytes_per_step": sent / steps if steps else math.nan,
            "uncompressed_per_step": raw / steps if steps else math.nan,
            "compression_ratio": raw / sent if sent else math.nan,
            "summary_compression_ratio": summary.get("compression_ratio"),
            "epoch_bytes_per_step": [float(r["bytes_per_step"]) for r in records],
            "last_epoch_bytes_per_step": float(records[-1]["bytes_per_step"]),
            "wall_s": float(summary["wall_s"]), "ms_per_step": 1000.0 * float(summary["wall_s"]) / steps,
            "samples_per_s": summary.get("samples_per_s"), "compression": summary.get("compression"),
            "param_checksum": summary.get("param_checksum"),
            "accuracy_curve": [100.0 * float(r["test_accuracy"]) for r in records],
        })
        if not math.isfinite(row["test_loss"]):
            row["error"] = f"non-finite test loss {row['test_loss']}"
    except (OSError, ValueError, KeyError, IndexError, TypeError, ZeroDivisionError) as exc:
        row["error"] = f"unreadable results: {type(exc).__name__}: {exc}"
    return row


# ---------------------------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------------------------


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
    return (a["ok"] != [] and not a["errors"] and a["fewer"] >= GOAL_FEWER and a["delta"] >= -GOAL_LOSS_PP)


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def _f(v, spec: str) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _bytes(v: float) -> str:
    if v is None or math.isnan(v):
        return "—"
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if v >= scale:
            return f"{v / scale:,.2f} {unit}"
    return f"{v:,.0f} B"


def _ranks(n: int) -> str:
    return f"{n} rank{'s' if n > 1 else ''}"


def param_counts(models: list[str]) -> dict[str, int]:
    """Trainable parameters of each zoo model on digits (for the plain-ring byte check); {} if unavailable."""
    try:
        from dtrain.models import build_model

        shapes = {"mlp": (64,), "cnn": (1, 8, 8)}
        return {m: sum(int(p.data.size) for p in build_model(m, shapes[m], 10).parameters()) for m in models
                if m in shapes}
    except Exception:  # dtrain not importable here: skip the check
        return {}


def expected_plain_bytes(params: int, ranks: int) -> int | None:
    """What rank 0 sends per step in a plain ring all-reduce of one float32 bucket plus the sample count."""
    try:
        from dtrain.distributed.collectives import ring_allreduce_bytes
    except Exception:
        return None
    return ring_allreduce_bytes(params, 4, ranks, 0) + ring_allreduce_bytes(1, 8, ranks, 0)


def table_lines(agg: dict, model: str, ranks: int, specs: list[str]) -> list[str]:
    lines = ["| compressor | test accuracy % (per seed) | Δ vs none (pp) | bytes/step (rank 0, run mean) "
             "| bytes/step, last epoch | fewer bytes than none | compression ratio | ms/step "
             "| goal: ≥100x fewer, ≤1 pp loss |",
             "|---|---:|---:|---:|---:|---:|---:|---:|:---:|"]
    for spec in specs:
        a = agg.get((model, ranks, spec))
        if a is None:
            continue
        if not a["ok"]:
            err = a["errors"][0]["error"].replace("|", "\\|") if a["errors"] else "not run"
            lines.append(f"| `{spec}` | **failed**: {err} | — | — | — | — | — | — | — |")
            continue
        per_seed = ", ".join(f"{v:.2f}" for v in a["accs"])
        acc = f"{a['acc']:.2f} ({per_seed})" if len(a["accs"]) > 1 else f"{a['acc']:.2f}"
        if a["errors"]:
            acc += f"; seed {', '.join(str(r['seed']) for r in a['errors'])} failed: " + \
                   a["errors"][0]["error"].replace("|", "\\|")
        goal = "—" if spec == "none" else ("**yes**" if meets_goal(a) else "no")
        lines.append(f"| `{spec}` | {acc} | {_f(a['delta'], '+.2f')} | {_bytes(a['bytes_per_step'])} | "
                     f"{_bytes(a['last_bytes'])} | {_f(a['fewer'], ',.1f')}x | {_f(a['ratio'], ',.1f')} | "
                     f"{_f(a['ms_per_step'], '.2f')} | {goal} |")
    return lines


def goal_lines(agg: dict, models: list[str], ranks_list: list[int], specs: list[str]) -> list[str]:
    lines = ["## Goals (reported, not asserted)", ""]
    for model in models:
        winners = [s for s in specs if s != "none" and all(
            (model, n, s) in agg and meets_goal(agg[(model, n, s)]) for n in ranks_list)]
        detail = []
        for s in winners:
            parts = [f"{_ranks(n)} {agg[(model, n, s)]['fewer']:,.0f}x fewer bytes, "
                     f"{agg[(model, n, s)]['delta']:+.2f} pp" for n in ranks_list]
            detail.append(f"`{s}` ({'; '.join(parts)})")
        partial = [f"`{s}` at {_ranks(n)}" for s in specs if s != "none" and s not in winners
                   for n in ranks_list if (model, n, s) in agg and meets_goal(agg[(model, n, s)])]
        verdict = "**met**" if winners else "**missed**"
        lines.append(f"- {model}: a compressor with >= {GOAL_FEWER:.0f}x fewer bytes per step than `none` and <= "
                     f"{GOAL_LOSS_PP:g} point accuracy loss at {' and '.join(_ranks(n) for n in ranks_list)}: "
                     f"{verdict}" + (f": {', '.join(detail)}" if detail else "")
                     + (f". Met at one world size only: {', '.join(partial)}" if partial else "") + ".")
        for n in ranks_list:
            cands = [(s, agg[(model, n, s)]) for s in specs if s != "none" and (model, n, s) in agg
                     and agg[(model, n, s)]["ok"] and agg[(model, n, s)]["fewer"] >= GOAL_FEWER]
            if cands:
                lines.append(f"  - every compressor at >= {GOAL_FEWER:.0f}x fewer bytes, {_ranks(n)}: "
                             + ", ".join(f"`{s}` {a['fewer']:,.0f}x {a['delta']:+.2f} pp" for s, a in cands) + ".")
    if "powersgd:2" in specs:
        for model in models:
            parts = []
            for n in ranks_list:
                a = agg.get((model, n, "powersgd:2"))
                if a is None:
                    continue
                d = a["delta"]
                ok = not math.isnan(d) and d >= -GOAL_LOSS_PP
                parts.append(f"{_ranks(n)} {_f(d, '+.2f')} pp ({'met' if ok else 'missed'})")
            lines.append(f"- {model}: `powersgd:2` within {GOAL_LOSS_PP:g} point of `none`: {'; '.join(parts)}.")
    return [*lines, ""]


def noise_lines(agg: dict, models: list[str], ranks_list: list[int]) -> list[str]:
    """How big a 1-point difference is, next to the seed-to-seed spreads."""
    out = [f"- The digits test split has {TEST_SAMPLES} samples: one sample is {100 / TEST_SAMPLES:.2f} points, so "
           f"the 1-point threshold is {TEST_SAMPLES / 100:.1f} test samples."]
    spreads, widest = [], []
    for model in models:
        for n in ranks_list:
            a = agg.get((model, n, "none"))
            if a and len(a["accs"]) > 1:
                spreads.append(f"{model} at {_ranks(n)} {max(a['accs']) - min(a['accs']):.2f} pp")
            # the widest seed-to-seed spread among compressors that trained normally (within 5 points of none)
            cell = [(s, b) for (m, k, s), b in agg.items() if m == model and k == n and len(b["accs"]) > 1
                    and not math.isnan(b["delta"]) and b["delta"] > -5]
            if cell:
                s, b = max(cell, key=lambda sb: max(sb[1]["accs"]) - min(sb[1]["accs"]))
                widest.append(f"{model} at {_ranks(n)} {max(b['accs']) - min(b['accs']):.2f} pp (`{s}`)")
    if spreads:
        out.append("- Seed-to-seed spread (same schedule, different seed: initial weights, shuffling, dropout) of "
                   "`none`: " + "; ".join(spreads) + ". Widest spread of any compressor that trained normally: "
                   + "; ".join(widest) + ". So a delta within about a point of the threshold is not resolved by two "
                   "seeds; the deltas are paired (each seed against `none` with the same seed) and averaged.")
    else:
        out.append("- One seed per configuration: a delta of a point or less is within what the seed alone can move "
                   "(run `--seeds 0,1` or more to see the spread).")
    return out


def finding_lines(rows: list[dict], agg: dict, models: list[str], ranks_list: list[int],
                  specs: list[str]) -> list[str]:
    """What the numbers show beyond the table: which compressors broke training, and how."""
    out = []
    broken = []
    for spec in specs:
        cells = [(m, n, agg[(m, n, spec)]) for m in models for n in ranks_list if (m, n, spec) in agg]
        bad = [(m, n, a) for m, n, a in cells if a["errors"] or (not math.isnan(a["delta"]) and a["delta"] < -5)]
        if spec == "none" or not bad:
            continue
        parts = []
        for m, n, a in bad:
            runs = sorted(a["runs"], key=lambda r: r["seed"])
            desc = []
            for r in runs:
                if r.get("error"):
                    desc.append(f"seed {r['seed']} stopped: {r['error']}")
                else:
                    rose = r["train_loss"] > 2 * r["train_loss_min"]
                    desc.append(f"seed {r['seed']} {r['test_accuracy']:.1f}%, train loss min {r['train_loss_min']:.3f}"
                                f" -> final {r['train_loss']:.3f}" + (" (rose again)" if rose else ""))
            parts.append(f"{m} at {_ranks(n)}: " + "; ".join(desc))
        broken.append(f"- `{spec}`: " + " | ".join(parts))
    if broken:
        out += ["Compressors that broke training (more than 5 points below `none`, or a failed run), per seed the "
                "final accuracy and the training loss per epoch (lowest epoch, then last):", "", *broken, ""]
    notes = []
    if any(s.startswith("randomk") for s in specs):
        notes.append("`randomk` (error feedback on by default) sends the k chosen coordinates of gradient + memory "
                     "unscaled; every other coordinate waits in the memory for on average 1/ratio steps, so the "
                     "update is made of gradients up to hundreds of steps old, on top of momentum 0.9 (the likely "
                     "reason it trains badly here, not verified further). "
                     "`randomk:RATIO:ef=0` (scaled by d/k, unbiased) is the other variant; not run here.")
    if any(s.startswith("qsgd") for s in specs):
        notes.append("`qsgd` quantises every block of 512 coordinates against its own L2 norm (the paper's "
                     "bucketing; `bucket=N` to change), with no error feedback: the variance it adds is about "
                     "sqrt(N)/LEVELS times the squared norm (Alistarh et al.). With one norm for the whole bucket "
                     "(`bucket=0`, the behaviour before this run) `qsgd:4` left the CNN at chance (9-13 %).")
    if any(s.startswith("powersgd") for s in specs):
        notes.append("`powersgd` sends biases (and any matrix with (rows + cols) x RANK x 2 >= rows x cols) "
                     "uncompressed, next to the P factors, so on these small models its ratio is bounded well below "
                     "100x whatever the rank (see the last-epoch bytes of `powersgd:1`).")
    if notes:
        out += ["Notes on the methods (from `dtrain/distributed/compression.py`'s documented behaviour):", "",
                *[f"- {n}" for n in notes], ""]
    return out


def check_lines(rows: list[dict], agg: dict, models: list[str], ranks_list: list[int], pcount: dict) -> list[str]:
    lines = ["## Checks", ""]
    for model in models:
        for n in ranks_list:
            a = agg.get((model, n, "none"))
            exp = expected_plain_bytes(pcount[model], n) if model in pcount else None
            if a and a["ok"]:
                lines.append(f"- {model}, {_ranks(n)}: `none` compression ratio {a['ratio']:.4f} (expected 1), "
                             f"bytes/step {a['bytes_per_step']:,.0f}"
                             + (f"; plain ring of {pcount[model]:,} float32 + the 8-byte sample count at rank 0: "
                                f"{exp:,} bytes/step" if exp else "") + ".")
            f16 = agg.get((model, n, "fp16"))
            if f16 and f16["ok"]:
                lines.append(f"  `fp16` compression ratio {f16['ratio']:.3f} (expected about 2).")
            uncs = {r["spec"]: r["uncompressed_per_step"] for r in rows if r["model"] == model and r["ranks"] == n
                    and not r.get("error")}
            if uncs and exp:
                off = {s: u for s, u in uncs.items() if abs(u - exp) > 0.5}
                lines.append("  `bytes_uncompressed` / steps equals the plain-ring figure for every compressor"
                             if not off else "  `bytes_uncompressed` / steps differs from the plain-ring figure for: "
                             + ", ".join(f"`{s}` {u:,.1f}" for s, u in off.items()))
    mism = [r for r in rows if not r.get("error") and r.get("summary_compression_ratio") is not None
            and abs(r["summary_compression_ratio"] - r["compression_ratio"]) > 1e-6 * max(1.0, r["compression_ratio"])]
    lines.append("- `summary.json`'s compression_ratio equals bytes_uncompressed / bytes_sent of the last metrics "
                 "record in every run" if not mism else "- `summary.json`'s compression_ratio differs from the "
                 "metrics' bytes_uncompressed / bytes_sent in: " + ", ".join(
                     f"{r['model']} n{r['ranks']} `{r['spec']}` s{r['seed']} ({r['summary_compression_ratio']:.4g} vs "
                     f"{r['compression_ratio']:.4g})" for r in mism))
    uneven, warm = [], []
    for r in rows:
        per = r.get("epoch_bytes_per_step") or []
        if r["spec"].startswith("powersgd") and len(per) > 1:
            # its first start_iter (10) steps are plain all-reduces: only the first epoch is expected to differ
            warm.append(per[0] / per[1] if per[1] else math.nan)
            per = per[1:]
        if len(per) > 1 and max(per) > 0 and (max(per) - min(per)) / max(per) > 0.01:
            uneven.append(f"{r['model']} n{r['ranks']} `{r['spec']}` s{r['seed']} "
                          f"({min(per):,.0f}-{max(per):,.0f})")
    lines.append("- bytes per step is the same (within 1%) in every epoch of every run"
                 + (" (for `powersgd`, every epoch after the first; its first epoch, with the 10 uncompressed "
                    f"warm-up steps, sends {min(warm):.1f}-{max(warm):.1f}x the later epochs' bytes per step)"
                    if warm else "") if not uneven else
                 "- bytes per step varies between epochs (min-max over epochs) in: " + ", ".join(uneven))
    for model in models:
        if len(ranks_list) < 2:
            break
        for seed in sorted({r["seed"] for r in rows}):
            losses = {r["ranks"]: r["test_loss"] for r in rows if r["model"] == model and r["spec"] == "none"
                      and r["seed"] == seed and not r.get("error")}
            if len(losses) > 1:
                lo, hi = min(losses.values()), max(losses.values())
                lines.append(f"- {model}, seed {seed}, `none`: final test loss at "
                             + ", ".join(f"{_ranks(n)} {v:.7f}" for n, v in sorted(losses.items()))
                             + f" (relative spread {(hi - lo) / hi:.1e}; DDP's sample-weighted average makes the "
                               "world size invisible up to rounding"
                             + (", except that each rank draws its own dropout masks)" if model == "cnn" else ")"))
    wrong = [r for r in rows if not r.get("error") and r.get("world_size") != r["ranks"]]
    if wrong:
        lines.append("- world_size in summary.json differs from the launch in: "
                     + ", ".join(f"{r['model']} `{r['spec']}` n{r['ranks']}" for r in wrong))
    failed = [r for r in rows if r.get("error") and not r["error"].startswith("skipped")]
    lines.append(f"- failed runs: {len(failed)}" + (": " + "; ".join(
        f"{r['model']} n{r['ranks']} `{r['spec']}` seed {r['seed']}: {r['error']}" for r in failed) if failed else ""))
    return [*lines, ""]


def _styles(specs: list[str], plt) -> dict[str, tuple[str, object]]:
    """(marker, colour) per spec: one colour family per method (shades for its variants), distinct markers."""
    families = {"powersgd": "Reds", "topk": "Greens", "randomk": "Oranges", "qsgd": "Purples"}
    fixed = {"none": "black", "fp16": "tab:blue", "bf16": "tab:cyan", "signsgd": "tab:brown"}
    markers = "osD^vP*Xh<>pd"
    members: dict[str, list[str]] = {}
    for s in specs:
        members.setdefault(s.split(":")[0], []).append(s)
    style = {}
    for i, s in enumerate(specs):
        fam = s.split(":")[0]
        group = members[fam]
        j = group.index(s)
        if fam in families:
            shade = 0.9 - 0.45 * (j / max(1, len(group) - 1))
            colour = plt.get_cmap(families[fam])(shade)
        else:
            colour = fixed.get(fam, plt.get_cmap("tab10")(i % 10))
        style[s] = (markers[(j + (0 if fam in families else i)) % len(markers)], colour)
    return style


def plot(agg: dict, models: list[str], ranks_list: list[int], specs: list[str], path: Path) -> str | None:
    """Test accuracy against bytes per step, one panel per model x ranks; None or why there is no plot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as exc:
        return f"no plot: matplotlib unavailable ({type(exc).__name__}: {exc})"
    style = _styles(specs, plt)
    fig, axes = plt.subplots(len(models), len(ranks_list), figsize=(5.2 * len(ranks_list), 4.0 * len(models)),
                             squeeze=False)
    handles = {}
    for i, model in enumerate(models):
        for j, n in enumerate(ranks_list):
            ax = axes[i][j]
            base = agg.get((model, n, "none"))
            cell = [(spec, agg[(model, n, spec)]) for spec in specs
                    if (model, n, spec) in agg and agg[(model, n, spec)]["ok"]]
            if not cell:
                continue
            # A compressor that wrecks training would squash the others into a line: keep the axis within a
            # few points of none and mark what falls below at the bottom edge, with its value.
            floor = min(min(a["accs"]) for _, a in cell) - 0.3
            if base and base["ok"]:
                floor = max(floor, base["acc"] - 4.0)
            top = max(max(a["accs"]) for _, a in cell) + 0.3
            below = 0
            for spec, a in cell:
                marker, colour = style[spec]
                x = a["bytes_per_step"]
                if a["acc"] < floor:
                    h = ax.errorbar([x], [floor + 0.15], fmt=marker, color=colour, markersize=7, label=spec)
                    ax.annotate(f"{spec}: {a['acc']:.1f}%", (x, floor + 0.15), textcoords="offset points",
                                xytext=(-4, 9 + 10 * (below % 4)), ha="left", fontsize=7, color=colour)
                    below += 1
                else:
                    lo, hi = max(min(a["accs"]), floor), max(a["accs"])
                    h = ax.errorbar([x], [a["acc"]], yerr=[[a["acc"] - lo], [hi - a["acc"]]], fmt=marker,
                                    color=colour, markersize=7, capsize=3, label=spec)
                handles.setdefault(spec, h)
            ax.set_ylim(floor, top)
            if base and base["ok"]:
                ax.axhline(base["acc"] - GOAL_LOSS_PP, color="grey", lw=0.8, ls="--")
                ax.axvline(base["bytes_per_step"] / GOAL_FEWER, color="grey", lw=0.8, ls=":")
            ax.set_xscale("log")
            ax.set_title(f"{model}, {_ranks(n)}")
            ax.set_xlabel("bytes sent per step (rank 0, mean over the run)")
            ax.set_ylabel("final test accuracy (%)")
            ax.grid(True, which="both", alpha=0.3)
    fig.legend([handles[s] for s in specs if s in handles], [s for s in specs if s in handles],
               loc="lower center", ncol=min(7, max(1, len(handles))), fontsize=8, frameon=False)
    fig.suptitle("dtrain gradient compression on digits (mean over seeds, bars: min-max; dashed: none - 1 pp, "
                 "dotted: none's bytes / 100)", fontsize=9)
    fig.tight_layout(rect=(0, 0.08, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def _git_state() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "dtrain"], cwd=REPO, capture_output=True,
                               text=True, check=True).stdout.strip()
        return f"git HEAD {head}" + (" with uncommitted changes under dtrain/" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "git state unknown"


def _versions() -> dict[str, str]:
    probe = ("import json, numpy, mpi4py; from mpi4py import MPI; import dtrain; "
             "print(json.dumps({'numpy': numpy.__version__, 'mpi4py': mpi4py.__version__, "
             "'mpi': MPI.Get_library_version().splitlines()[0].strip(), 'dtrain': dtrain.__version__}))")
    try:
        res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=run_env(),
                             timeout=60, check=True)
        return json.loads(res.stdout.strip().splitlines()[-1])
    except Exception:
        return {}


CSV_FIELDS = ("model", "ranks", "spec", "seed", "epochs", "steps", "test_accuracy", "best_test_accuracy",
              "delta_vs_none_pp", "test_loss", "train_loss", "train_loss_min", "train_loss_max", "bytes_sent",
              "bytes_uncompressed", "bytes_per_step",
              "last_epoch_bytes_per_step", "fewer_bytes_than_none", "compression_ratio", "wall_s", "ms_per_step",
              "samples_per_s", "launch_s", "other_cpu_s",
              "param_checksum", "error")


def write_outputs(out: Path, rows: list[dict], args, command: str, meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    agg = aggregate(rows)
    pcount = param_counts(args.models)
    cores = os.cpu_count() or 0
    plot_error = plot(agg, args.models, args.ranks, args.specs, out / "compression.png")
    ok_rows = [r for r in rows if not r.get("error")]
    epochs = sorted({r["epochs"] for r in ok_rows})
    steps = sorted({(r["model"], r["ranks"], r["steps"]) for r in ok_rows})
    schedule = CLI_DEFAULTS if args.epochs is None else CLI_DEFAULTS.replace("20 epochs", f"{args.epochs} epochs")
    over = [n for n in args.ranks if n > cores]
    md = [
        "# Gradient compression: accuracy vs bytes sent (dtrain DDP, digits, CPU)", "",
        f"{'**Quick smoke run** (`--quick`): few compressors and epochs, not the benchmark. ' if args.quick else ''}"
        f"Data-parallel training of the zoo's digits models (mlp: 64-128-10, "
        f"{pcount.get('mlp', 0):,} parameters; cnn: 2 conv 3x3 + max-pool, Linear 128, dropout 0.25, "
        f"{pcount.get('cnn', 0):,} parameters) with `dtrain train` under `mpiexec`, one run per compressor x model x "
        f"ranks x seed, one after the other. Schedule: the CLI defaults, {schedule} (split across the ranks), "
        "DDP with 25 MB buckets (one bucket here), ring all-reduce, overlap on. Within a model, ranks and seed every "
        "compressor starts from the same weights and sees the same batches; only gradient synchronisation differs.",
        "",
        f"- runs: {len(rows)} ({len(ok_rows)} succeeded), seeds {', '.join(map(str, args.seeds))}; completed epochs "
        f"per run {', '.join(map(str, epochs)) or '—'}; steps per run "
        + ", ".join(f"{m} at {_ranks(n)} {s}" for m, n, s in steps) + ".",
        "- **test accuracy**: final epoch, digits test split (360 samples); with several seeds the mean and, in "
        "brackets, each seed. **Δ vs none**: percentage points against `none` with the same model, ranks and seed, "
        "averaged over seeds.",
        "- **bytes/step**: rank 0's `bytes_sent` (payload handed to MPI send calls for gradient synchronisation, "
        "compressed data and the 8-byte sample counts included) / steps, mean over the whole run. **fewer bytes "
        "than none**: none's bytes/step / this one's. **compression ratio**: `bytes_uncompressed` (what the plain "
        "ring would have sent for the same buckets) / `bytes_sent`, as dtrain reports it. **bytes/step, last "
        "epoch**: the last metrics record's `bytes_per_step` (the steady state; `powersgd` sends its first 10 "
        "steps uncompressed, its default `start=10`, which the run mean includes).",
        "- **ms/step**: `wall_s` of the training call (summary.json; per-epoch evaluation included, process start "
        "and MPI initialisation not) / steps, the fastest seed's (other processes only ever add time). Timings "
        "are noisy here: a run trains for 0.2-10 s, and "
        "other processes on the machine show up in them (the CSV's `other_cpu_s`: CPU time other processes used "
        "during each run).",
        "- How the payload travels decides how bytes scale with ranks: `none`, `fp16`, `bf16`, `randomk` and "
        "`powersgd` payloads are summable and ride the ring all-reduce (about 2(N-1)/N x payload per rank, like "
        "`none`, so their ratio stays put from 2 to 4 ranks); `topk`, `qsgd` and `signsgd` are all-gathered "
        "((N-1) x payload per rank), so their ratio against the ring shrinks as N grows.",
        "",
    ]
    if over:
        md += [f"**Oversubscribed:** this machine has {cores} logical cores, so the {', '.join(map(str, over))}-rank "
               f"runs put more than one rank on a core: ms/step at {', '.join(map(str, over))} ranks measures that "
               "contention (ranks waiting for a core inside every all-reduce), not the cost of the compressors. "
               "Accuracy and bytes are unaffected. Even at "
               f"{_ranks(min(n for n in args.ranks))} the ranks share the machine with the MPI progress of each "
               "other; these are small models (the step is Python and MPI latency, not bandwidth), so time per "
               "step here says little about what compression would save on a real network.", ""]
    md += goal_lines(agg, args.models, args.ranks, args.specs)
    md += ["Reading the numbers:", ""] + noise_lines(agg, args.models, args.ranks) + [""]
    md += finding_lines(rows, agg, args.models, args.ranks, args.specs)
    md += ["## Results", ""]
    for model in args.models:
        for n in args.ranks:
            md += [f"### {model}, {_ranks(n)}", "", *table_lines(agg, model, n, args.specs), ""]
    md += (["![accuracy vs bytes per step](compression.png)", ""] if plot_error is None else [plot_error, ""])
    md += check_lines(rows, agg, args.models, args.ranks, pcount)
    other = meta.get("other_s")
    md += [
        "## Machine", "",
        f"- CPU: {cpu_model()} ({cores} logical cores visible); one process per rank, one BLAS thread each "
        "(OMP/OPENBLAS/MKL_NUM_THREADS=1 in the ranks' environment)",
        f"- MPI: {meta['versions'].get('mpi', 'unknown')}; mpiexec `{meta['mpiexec']}`; mpi4py "
        f"{meta['versions'].get('mpi4py', '?')}; 1 node",
        f"- Python {platform.python_version()}, NumPy {meta['versions'].get('numpy', '?')}, dtrain "
        f"{meta['versions'].get('dtrain', '?')} ({meta['git']})",
        f"- load average (1/5/15 min) at start {fmt_load(meta['load_start'])}, at end {fmt_load(meta['load_end'])} "
        "(includes this benchmark itself)",
        "- CPU time used by OTHER processes while the runs went on (machine busy time from /proc/stat minus this "
        "benchmark's own): " + (f"{other:.0f} CPU-s in {meta['wall_s']:.0f} s "
                                f"({other / max(meta['wall_s'] * max(cores, 1), 1e-9) * 100:.0f}% of the machine)"
                                if other is not None else "unknown"),
        f"- wall time of the whole benchmark: {meta['wall_s']:.0f} s (sum over runs of launch-to-exit: "
        f"{sum(r.get('launch_s', 0.0) for r in rows):.0f} s)",
        "",
        *command_section(command),
        "Each run, in a fresh temporary folder (`DIR`), `N` ranks, model `M`, compressor `SPEC`, seed `S`:", "",
        "```",
        shlex.join([meta["mpiexec"] or "mpiexec", "-n", "N", *dtrain_command(),
                    *train_args("M", "SPEC", 0, args.epochs, "DIR")]).replace("--seed 0", "--seed S"),
        "```", "",
    ]
    (out / "compression.md").write_text("\n".join(md))
    with (out / "compression.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else ("" if v is None else v))
                        for k, v in r.items() if k in CSV_FIELDS})


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def _list(text: str, kind=str) -> list:
    return [kind(x.strip()) for x in text.split(",") if x.strip()]


def parse_args(argv):
    p = argparse.ArgumentParser(prog="compression", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: compressors {','.join(QUICK_SPECS)}, {QUICK_EPOCHS} epochs, 2 ranks, seed 0 "
                        "(explicit --specs/--epochs/--ranks/--seeds still win)")
    p.add_argument("--models", default="mlp,cnn", help="zoo models, comma-separated (default mlp,cnn)")
    p.add_argument("--ranks", default=None, help="world sizes, comma-separated (default 2,4)")
    p.add_argument("--specs", default=None, help="compression specs, comma-separated (default: "
                                                 + ",".join(DEFAULT_SPECS) + ")")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the CLI's, 20)")
    p.add_argument("--seeds", default=None, help="seeds, comma-separated (default 0,1)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds before a run is killed (default 300)")
    p.add_argument("--budget-min", type=float, default=0.0,
                   help="launch no new run after this many minutes (0: no limit; default 0)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results", help="output folder")
    args = p.parse_args(argv)
    args.models = _list(args.models)
    args.ranks = _list(args.ranks or ("2" if args.quick else "2,4"), int)
    specs = _list(args.specs) if args.specs else list(QUICK_SPECS if args.quick else DEFAULT_SPECS)
    args.specs = ["none", *[s for s in specs if s != "none"]]  # none is the reference of every delta
    args.seeds = _list(args.seeds or ("0" if args.quick else "0,1"), int)
    if args.epochs is None and args.quick:
        args.epochs = QUICK_EPOCHS
    if (not args.models or not args.ranks or min(args.ranks) < 1 or not args.seeds
            or (args.epochs is not None and args.epochs < 1) or args.timeout <= 0 or args.budget_min < 0):
        p.error("--models, --ranks and --seeds must be non-empty, ranks and --epochs >= 1, --timeout > 0, "
                "--budget-min >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join([Path(sys.executable).as_posix(), *sys.argv]) if argv is None else \
        shlex.join(["benchmarks/compression.py", *argv])
    mpiexec = find_mpiexec()
    if mpiexec is None:
        raise SystemExit("compression benchmark: no mpiexec next to the Python executable or on PATH")
    load_start, t0 = os.getloadavg(), time.perf_counter()
    busy0, own0 = busy_cpu_s(), own_cpu_s()
    plan = [(seed, model, n, spec) for seed in args.seeds for model in args.models for n in args.ranks
            for spec in args.specs]
    rows = []
    with tempfile.TemporaryDirectory(prefix="dtrain_compression_") as tmp:
        for i, (seed, model, n, spec) in enumerate(plan, 1):
            if args.budget_min and time.perf_counter() - t0 > 60 * args.budget_min:
                rows.append({"model": model, "ranks": n, "spec": spec, "seed": seed,
                             "error": f"skipped: the {args.budget_min:g}-minute budget was spent"})
                continue
            row = run_one(mpiexec, model, n, spec, seed, args.epochs, args.timeout, Path(tmp))
            rows.append(row)
            status = (f"acc {row['test_accuracy']:.2f}%  {row['bytes_per_step']:,.0f} B/step  "
                      f"ratio {row['compression_ratio']:,.1f}  {row['ms_per_step']:.1f} ms/step"
                      if not row.get("error") else f"FAILED: {row['error']}")
            print(f"[{i}/{len(plan)}] {model} n={n} {spec} seed={seed}: {status}  ({row['launch_s']:.1f} s)",
                  flush=True)
    busy1 = busy_cpu_s()
    wall = time.perf_counter() - t0
    meta = {"load_start": load_start, "load_end": os.getloadavg(), "wall_s": wall, "mpiexec": mpiexec,
            "versions": _versions(), "git": _git_state(),
            "other_s": None if busy0 is None or busy1 is None else max(0.0, (busy1 - busy0) - (own_cpu_s() - own0))}
    # rows of skipped runs have no numbers; keep them (the tables say why) but give them the numeric keys
    for r in rows:
        if r.get("error"):
            for k in ("test_accuracy", "bytes_per_step", "compression_ratio", "ms_per_step"):
                r.setdefault(k, math.nan)
    write_outputs(args.out, rows, args, command, meta)
    print(f"wrote {args.out / 'compression.md'}, {args.out / 'compression.csv'} and {args.out / 'compression.png'}")
    failed = [r for r in rows if r.get("error")]
    if failed:
        print(f"compression benchmark: {len(failed)} of {len(rows)} runs failed or were skipped (see the tables)",
              file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
