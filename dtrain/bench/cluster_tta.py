"""Time to accuracy on a virtual cluster: how much sooner gradient compression reaches a test accuracy when
the gradients cross shaped links.

One ``dtrain train`` run per compression spec (default ``none,fp16,powersgd:2,powersgd:1:start=0,topk:0.01``)
on K nodes x 1 rank (``--cluster 4x1 --link 1gbit``), every run with the same model, data, seed and schedule; only the
gradient synchronisation differs. The model is a wide MLP on digits (``--hidden 2048,2048``: 4.3 M
parameters, 17 MB of float32 gradients per step, so the ring all-reduce's ~26 MB per rank per step takes
~0.2 s on a 1 Gbit/s link, while the rest of the step, forward and backward of 4 samples per rank and the
optimizer, takes tens of ms): the default MLP's 38 KB of gradients would cross the link in 0.3 ms and
compression could not matter. For each run: the training
time at which the test accuracy (evaluated after every epoch) first reaches ``--target``, the epochs that
took, the bytes on the links (tc counters) and the final accuracy; the speedup is none's time over each
compressor's. Writes ``cluster_tta.md``, ``.csv``, ``.json`` and ``tta.png`` (accuracy vs time). Needs root.
"""

from __future__ import annotations

import argparse
import json
import shlex
import tempfile
from pathlib import Path

from . import report
from .cluster_train import train_on_cluster, training_seconds
from .cluster_tta_report import GOAL_SPEEDUP, write_report
from .oncluster import add_cluster_arguments, cluster_label, cluster_session

__all__ = ["DEFAULT_COMPRESSIONS", "GOAL_SPEEDUP", "HELP", "add_arguments", "run", "time_to_target",
           "train_flags"]

HELP = "time to a test accuracy on a virtual cluster, per gradient compression (root)"
DEFAULT_COMPRESSIONS = ("none", "fp16", "powersgd:2", "powersgd:1:start=0", "topk:0.01")


def _compressions(text: str) -> list[str]:
    specs = [s.strip() for s in text.split(",") if s.strip()]
    if not specs:
        raise argparse.ArgumentTypeError(f"expected comma-separated compression specs, got {text!r}")
    if len(set(specs)) != len(specs):
        raise argparse.ArgumentTypeError(f"a compression spec is repeated in {text!r}")
    return specs


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options (``dtrain bench cluster_tta --help``)."""
    p.add_argument("--compressions", type=_compressions, default=list(DEFAULT_COMPRESSIONS), metavar="SPEC,...",
                   help="compression specs to compare, 'none' first as the reference (default: "
                        f"{','.join(DEFAULT_COMPRESSIONS)})")
    p.add_argument("--target", type=float, default=0.95,
                   help="test accuracy to reach, 0-1 (default 0.95)")
    p.add_argument("--epochs", type=int, default=3, help="epochs of every run: the same schedule (default 3)")
    p.add_argument("--hidden", default="2048,2048", help="MLP hidden widths (default 2048,2048: 4.3 M parameters)")
    p.add_argument("--batch-size", type=int, default=16, help="GLOBAL batch size (default 16: 4 per rank)")
    p.add_argument("--lr", type=float, default=0.01,
                   help="SGD learning rate, constant (default 0.01: 0.05 at batch 16 stalls near 0.91)")
    p.add_argument("--seed", type=int, default=0, help="seed of every run (default 0)")
    p.add_argument("--run-timeout", type=float, default=600.0,
                   help="seconds one training run may take before it is killed (default 600)")
    add_cluster_arguments(p, default_shape="4x1")
    p.add_argument("--out", type=Path, default=None, help=report.OUT_HELP)


def _check(args) -> None:
    if not 0.0 < args.target <= 1.0:
        raise SystemExit(f"cluster_tta: --target must be a test accuracy in (0, 1], got {args.target}")
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise SystemExit(f"cluster_tta: --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.compressions[0] != "none":
        raise SystemExit(f"cluster_tta: --compressions must start with 'none' (the reference), got "
                         f"{','.join(args.compressions)}")
    if args.cluster.nodes < 2:
        raise SystemExit(f"cluster_tta: --cluster {args.cluster} has one node: nothing crosses a link")


def train_flags(args, compression: str) -> list[str]:
    """The ``dtrain train`` options of one run: the shared schedule plus its compression."""
    return ["--model", "mlp", "--dataset", "digits", "--hidden", args.hidden, "--epochs", str(args.epochs),
            "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--scheduler", "none",
            "--seed", str(args.seed), "--compression", compression, "--no-monitor", "--check-every", "0"]


def time_to_target(records: list[dict], seen_s: list[float], n_train: int, target: float) -> dict:
    """The first record whose test accuracy reaches ``target``: its epoch, the training time until then
    (``train_s``) and the seconds from launch until the record appeared (``seen_s``); Nones if none did."""
    for i, rec in enumerate(records):
        acc = rec.get("test_accuracy")
        if acc is not None and acc >= target:
            return {"epochs_to_target": rec["epoch"],
                    "train_s_to_target": training_seconds(rec, rec["epoch"] * n_train),
                    "seen_s_to_target": seen_s[i] if i < len(seen_s) else None}
    return {"epochs_to_target": None, "train_s_to_target": None, "seen_s_to_target": None}


def _row(args, spec: str, run, n_train: int) -> dict:
    """One run's line of the report: time to target, bytes, final accuracy, the accuracy curve, the command."""
    curve = [{"epoch": r["epoch"], "test_accuracy": r.get("test_accuracy"),
              "train_s": training_seconds(r, r["epoch"] * n_train), "seen_s": s}
             for r, s in zip(run.records, run.seen_s + [None] * len(run.records))]
    last = run.records[-1] if run.records else {}
    return {"compression": spec, "target": args.target, **time_to_target(run.records, run.seen_s, n_train, args.target),
            "final_accuracy": last.get("test_accuracy"), "epochs": len(run.records),
            "train_s": curve[-1]["train_s"] if curve else None, "wall_s": run.wall_s,
            "link_bytes": run.link_bytes, "node_bytes": run.node_bytes,
            "bytes_per_step": last.get("bytes_per_step"), "failure": run.failure(), "curve": curve,
            "command": shlex.join(["dtrain", "train", *train_flags(args, spec)]) + " --out RUN_DIR"}


def run(args) -> int:
    """Train once per compression on the cluster, then write the report (exit status 0, or 1 if a run failed)."""
    _check(args)
    from ..cluster import support_problem
    from ..data import load_dataset

    problem = support_problem()
    if problem:
        raise SystemExit(f"cluster_tta: {problem}")
    n_train = len(load_dataset("digits").train)
    n = args.cluster.nodes * args.cluster.ppn
    out = args.out or report.default_out()
    rows = []
    with tempfile.TemporaryDirectory(prefix="dtrain-tta-") as tmp, cluster_session(args) as cluster:
        for spec in args.compressions:
            print(f"cluster_tta: {spec} on {cluster_label(args)} ...", flush=True)
            run_ = train_on_cluster(cluster, n, train_flags(args, spec), Path(tmp) / spec.replace(":", "_"),
                                    ppn=args.cluster.ppn, timeout=args.run_timeout)
            rows.append(_row(args, spec, run_, n_train))
            if run_.failure():
                print(f"cluster_tta: {spec} failed: {run_.failure()}\n{run_.stderr[-2000:]}", flush=True)
    write_report(out, args, rows, n, n_train)
    (out / "cluster_tta.json").write_text(json.dumps({"rows": rows, "label": cluster_label(args)}, indent=1))
    return 1 if any(r["failure"] for r in rows) else 0


if __name__ == "__main__":  # python -m dtrain.bench.cluster_tta
    import sys

    from .cli import main

    sys.exit(main("cluster_tta"))
