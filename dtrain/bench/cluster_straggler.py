"""A straggler on a virtual cluster: one node's link at a quarter of the others' rate — what it does to the
DDP step, and what the collective watchdog's stall warning says about it.

The same ``dtrain train`` job (a wide MLP on digits, ``--max-steps`` steps, one rank per node) runs twice on
one cluster (``--cluster 4x1 --link 1gbit``): with every link at ``--link``, then with the ``--link-of``
node(s) slowed (default: the last node at a quarter of ``--link``, e.g. node 3 at 250mbit). Both runs use
``--stall-warning S``: a collective that waits longer than S seconds makes the waiting rank's watchdog print
a warning naming the late ranks; the benchmark captures every such line from the job's stderr and says
whether they name the rank(s) on the slow node. The step time is compared with the ring all-reduce's model:
a ring moves at its slowest link's pace, so the communication part of the step grows by the rate ratio (4x)
and the computation does not. Writes ``straggler.md``, ``.csv`` and ``.json``. Needs root.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import tempfile
from pathlib import Path

from . import report
from .cluster_straggler_report import TBF_EFFICIENCY, write_report
from .cluster_train import train_on_cluster
from .oncluster import add_cluster_arguments, cluster_label, cluster_session

__all__ = ["HELP", "TBF_EFFICIENCY", "add_arguments", "parse_warnings", "run", "slow_links", "step_model"]

HELP = "a straggler node (slow link) on a virtual cluster: the DDP step and the stall warning (root)"
WARNING_RE = re.compile(r"dtrain: warning: \[rank (\d+)\] (.*?) has waited ([\d.]+) s for its peers: (.*)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options (``dtrain bench cluster_straggler --help``)."""
    p.add_argument("--hidden", default="2048,2048", help="MLP hidden widths (default 2048,2048: 4.3 M parameters, "
                   "17 MB of gradients per step)")
    p.add_argument("--batch-size", type=int, default=64, help="GLOBAL batch size (default 64)")
    p.add_argument("--steps", type=int, default=30, help="training steps of each run (default 30)")
    p.add_argument("--stall-warning", type=float, default=0.5,
                   help="dtrain train --stall-warning: seconds a collective may wait before its rank warns "
                        "(default 0.5: above the 1gbit ring's ~0.2 s per step, below the straggler's ~0.8 s)")
    p.add_argument("--run-timeout", type=float, default=300.0,
                   help="seconds one training run may take before it is killed (default 300)")
    add_cluster_arguments(p, default_shape="4x1")
    p.add_argument("--out", type=Path, default=None, help=report.OUT_HELP)


def slow_links(args) -> dict[int, str]:
    """The straggler node(s) and their rates: ``--link-of``, else the last node at a quarter of ``--link``."""
    from ..cluster import format_rate, parse_rate

    if args.link_of:
        return dict(args.link_of)
    return {args.cluster.nodes - 1: format_rate(parse_rate(args.link) // 4)}


def _check(args) -> None:
    for name in ("batch_size", "steps"):
        if getattr(args, name) < 1:
            raise SystemExit(f"cluster_straggler: --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not args.stall_warning > 0:
        raise SystemExit(f"cluster_straggler: --stall-warning must be > 0 seconds, got {args.stall_warning}")
    if args.cluster.nodes < 2:
        raise SystemExit(f"cluster_straggler: --cluster {args.cluster} has one node: there is no link to slow")
    bad = [i for i, _ in args.link_of if i >= args.cluster.nodes]
    if bad:
        raise SystemExit(f"cluster_straggler: --link-of node {bad[0]} does not exist (nodes 0 to "
                         f"{args.cluster.nodes - 1})")


def train_flags(args) -> list[str]:
    """The ``dtrain train`` options of both runs (``--epochs`` as many as steps: ``--max-steps`` ends the run,
    whatever the size of an epoch)."""
    return ["--model", "mlp", "--dataset", "digits", "--hidden", args.hidden, "--epochs", str(args.steps),
            "--max-steps", str(args.steps), "--batch-size", str(args.batch_size), "--seed", "0",
            "--stall-warning", f"{args.stall_warning:g}", "--timeout", f"{max(60.0, 20 * args.stall_warning):g}",
            "--no-monitor", "--check-every", "0"]


def parse_warnings(stderr: str) -> list[dict]:
    """The watchdog's stall warnings in a job's stderr: rank, collective, seconds waited, what it says of its
    peers, the ranks it names (late or missing) and the exact line."""
    found = []
    for line in stderr.splitlines():
        m = WARNING_RE.search(line)
        if m is None:
            continue
        peers = m.group(4)
        found.append({"rank": int(m.group(1)), "collective": m.group(2), "waited_s": float(m.group(3)),
                      "peers": peers, "named_ranks": _named_ranks(peers), "line": line.strip()})
    return found


def _named_ranks(peers: str) -> list[int]:
    """The ranks a warning blames: those it reports late (``late: rank R ...; rank S ...``) or missing
    (``missing ranks R, S did not answer``); not those ``waiting in it too``."""
    named = set()
    for part in peers.split("; "):
        if part.endswith("waiting in it too"):
            continue
        if part.startswith("missing rank"):
            named.update(int(r) for r in re.findall(r"\d+", part.split(" did not answer")[0]))
            continue
        m = re.match(r"(?:late: )?rank (\d+) ", part)
        if m is not None:
            named.add(int(m.group(1)))
    return sorted(named)


def step_model(uniform_step_s: float, bytes_per_step: float, fast_bps: float, slow_bps: float) -> dict:
    """The ring model of the straggler's step: the link time of the slowest link replaces the fast one's,
    the rest of the step (computation, latency) stays."""
    fast = bytes_per_step * 8 / (fast_bps * TBF_EFFICIENCY)
    slow = bytes_per_step * 8 / (slow_bps * TBF_EFFICIENCY)
    return {"comm_fast_s": fast, "comm_slow_s": slow, "rest_s": uniform_step_s - fast,
            "predicted_step_s": uniform_step_s - fast + slow}


def _measure(cluster, args, label: str, tmp: Path) -> dict:
    n = args.cluster.nodes * args.cluster.ppn
    print(f"cluster_straggler: {label} run ...", flush=True)
    run_ = train_on_cluster(cluster, n, train_flags(args), tmp / label, ppn=args.cluster.ppn,
                            timeout=args.run_timeout)
    last = run_.records[-1] if run_.records else {}
    rate = last.get("samples_per_s")
    if run_.failure():
        print(f"cluster_straggler: the {label} run failed: {run_.failure()}\n{run_.stderr[-2000:]}", flush=True)
    return {"run": label, "rates": [n_.rate_bps for n_ in cluster.nodes], "steps": last.get("step"),
            "step_s": args.batch_size / rate if rate else None, "bytes_per_step": last.get("bytes_per_step"),
            "node_bytes": run_.node_bytes, "wall_s": run_.wall_s, "warnings": parse_warnings(run_.stderr),
            "failure": run_.failure(), "stderr": run_.stderr}


def run(args) -> int:
    """Measure the uniform and the straggler run, then write the report (exit status 0, or 1 if a run failed)."""
    _check(args)
    from ..cluster import parse_rate, support_problem

    problem = support_problem()
    if problem:
        raise SystemExit(f"cluster_straggler: {problem}")
    slow = slow_links(args)
    uniform_args = argparse.Namespace(**{**vars(args), "link_of": []})
    with tempfile.TemporaryDirectory(prefix="dtrain-straggler-") as tmp, cluster_session(uniform_args) as cluster:
        runs = [_measure(cluster, args, "uniform", Path(tmp))]
        for node, rate in slow.items():
            cluster.set_rate(node, rate)
        runs.append(_measure(cluster, args, "straggler", Path(tmp)))
    base, strag = runs
    model = None
    if base["step_s"] and base["bytes_per_step"]:
        model = step_model(base["step_s"], base["bytes_per_step"], parse_rate(args.link),
                           min(parse_rate(r) for r in slow.values()))
    out = args.out or report.default_out()
    command = shlex.join(["dtrain", "train", *train_flags(args)])
    write_report(out, args, runs, model, slow, command)
    dump = {"label": cluster_label(argparse.Namespace(**{**vars(args), "link_of": list(slow.items())})),
            "slow": slow, "model": model, "runs": runs, "train_command": command}
    (out / "straggler.json").write_text(json.dumps(dump, indent=1))
    return 1 if base["failure"] or strag["failure"] else 0


if __name__ == "__main__":  # python -m dtrain.bench.cluster_straggler
    import sys

    from .cli import main

    sys.exit(main("cluster_straggler"))
