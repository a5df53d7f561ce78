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
    python benchmarks/compression.py                 # = dtrain bench compression: full grid (bench-results/DATE-TIME/)
    python benchmarks/compression.py --quick --out /tmp/res       # smoke run, about a minute
    python benchmarks/compression.py --models mlp --ranks 2 --specs none,topk:0.001 --seeds 0

Outputs ``compression.md`` (tables, goals, checks, machine, exact command), ``compression.csv`` (one row
per run) and ``compression.png`` (test accuracy against bytes per step, log x, one panel per model x
ranks) in ``--out``. Needs matplotlib for the PNG only. The report is written by
:mod:`dtrain.bench.compression_report`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .. import env
from ..launch import local_mpiexec
from .compression_report import write_outputs
from .machine import OtherLoad, load_avg
from .report import OUT_HELP, command_line, default_out

HELP = "gradient compression on digits: accuracy vs bytes sent per compressor, model, ranks, seed"
REPO = Path(__file__).resolve().parents[2]
DEFAULT_SPECS = ("none", "fp16", "bf16", "powersgd:1", "powersgd:2", "powersgd:4", "topk:0.01", "topk:0.003",
                 "topk:0.002", "topk:0.001", "randomk:0.1", "randomk:0.01", "randomk:0.001", "qsgd:16", "qsgd:4",
                 "signsgd")
QUICK_SPECS = ("none", "fp16", "powersgd:2", "topk:0.01", "qsgd:4", "signsgd")
QUICK_EPOCHS = 2


# ---------------------------------------------------------------------------------------------
# Running one configuration
# ---------------------------------------------------------------------------------------------


def dtrain_command() -> list[str]:
    """The ``dtrain`` console script of this Python, or ``python -m dtrain`` (the same entry point)."""
    script = Path(sys.executable).parent / "dtrain"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "dtrain"]


def run_env() -> dict[str, str]:
    """The ranks' environment: one BLAS thread each, this checkout's dtrain importable."""
    child = env.thread_env(1)
    child["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), child.get("PYTHONPATH", "")) if p)
    return child


def train_args(model: str, spec: str, seed: int, epochs: int | None, out: str) -> list[str]:
    """The ``dtrain train`` arguments of one run."""
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
    with OtherLoad() as load:
        status, output = _launch(cmd, tmp, timeout)
    # CPU time other processes took while this run went on: its timings are disturbed when this is large.
    row["launch_s"], row["other_cpu_s"] = load.wall, load.other_s
    if status is None:
        row["error"] = f"timed out after {timeout:g} s"
        return row
    if status != 0 or not (out / "summary.json").is_file():
        row["error"] = f"exit status {status}: {_last_error_line(output)}"
        return row
    return _read_results(row, out)


def _launch(cmd: list[str], cwd: Path, timeout: float) -> tuple[int | None, str]:
    """Run ``cmd`` in a session of its own; (exit status or None on timeout, stderr or else stdout)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=run_env(),
                            cwd=str(cwd), start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # the session this benchmark started: mpiexec and its ranks
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        return None, ""
    return proc.returncode, stderr or stdout


def _read_results(row: dict, out: Path) -> dict:
    """``row`` with the numbers of the run's summary.json and metrics.jsonl (or ``error`` when unreadable)."""
    summary_path, metrics_path = out / "summary.json", out / "metrics.jsonl"
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



# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def _list(text: str, kind=str) -> list:
    return [kind(x.strip()) for x in text.split(",") if x.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``dtrain bench compression``."""
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
    p.add_argument("--out", type=Path, default=None, help=OUT_HELP)


def _resolve(args) -> None:
    args.models = _list(args.models)
    args.ranks = _list(args.ranks or ("2" if args.quick else "2,4"), int)
    specs = _list(args.specs) if args.specs else list(QUICK_SPECS if args.quick else DEFAULT_SPECS)
    args.specs = ["none", *[s for s in specs if s != "none"]]  # none is the reference of every delta
    args.seeds = _list(args.seeds or ("0" if args.quick else "0,1"), int)
    if args.epochs is None and args.quick:
        args.epochs = QUICK_EPOCHS
    if (not args.models or not args.ranks or min(args.ranks) < 1 or not args.seeds
            or (args.epochs is not None and args.epochs < 1) or args.timeout <= 0 or args.budget_min < 0):
        raise SystemExit("compression benchmark: --models, --ranks and --seeds must be non-empty, ranks and --epochs "
                         f">= 1, --timeout > 0, --budget-min >= 0; got {vars(args)}")


def run_all(args, mpiexec: str, t0: float) -> list[dict]:
    """Every (seed, model, ranks, compressor) run, seed-major, until the budget is spent."""
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
    # rows of skipped runs have no numbers; keep them (the tables say why) but give them the numeric keys
    for r in rows:
        if r.get("error"):
            for k in ("test_accuracy", "bytes_per_step", "compression_ratio", "ms_per_step"):
                r.setdefault(k, math.nan)
    return rows


def run(args) -> int:
    """Run the grid and write compression.md, .csv and .png; exit status 1 when a run failed."""
    _resolve(args)
    mpiexec = local_mpiexec()
    if mpiexec is None:
        raise SystemExit("compression benchmark: no mpiexec next to the Python executable or on PATH")
    load_start, t0 = load_avg(), time.perf_counter()
    with OtherLoad() as load:
        rows = run_all(args, mpiexec, t0)
    # How each run was started, for the report (DIR, N, M, SPEC, S stand for the per-run values).
    run_command = shlex.join([mpiexec, "-n", "N", *dtrain_command(),
                              *train_args("M", "SPEC", 0, args.epochs, "DIR")]).replace("--seed 0", "--seed S")
    meta = {"load_start": load_start, "load_end": load_avg(), "wall_s": load.wall, "mpiexec": mpiexec,
            "versions": _versions(), "git": _git_state(), "other_s": load.other_s, "run_command": run_command}
    out = args.out or default_out()
    write_outputs(out, rows, args, command_line(), meta)
    print(f"wrote {out / 'compression.md'}, {out / 'compression.csv'} and {out / 'compression.png'}")
    failed = [r for r in rows if r.get("error")]
    if failed:
        print(f"compression benchmark: {len(failed)} of {len(rows)} runs failed or were skipped (see the tables)",
              file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":  # the rank side of a launch: python -m dtrain.bench.compression
    from .cli import main

    sys.exit(main("compression"))
