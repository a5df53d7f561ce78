"""The straggler benchmark's report: ``straggler.md`` (step times against the ring model, the stall warnings
verbatim and whom they blame, the command) and ``straggler.csv``."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from . import report
from .cluster_train import oversubscription_note
from .machine import machine_info
from .oncluster import cluster_label

__all__ = ["CSV_FIELDS", "MAX_LINES", "TBF_EFFICIENCY", "write_report"]

TBF_EFFICIENCY = 0.95  # share of a tbf rate that TCP gets (issue 15: 1gbit measured ~950 Mbit/s)
CSV_FIELDS = ("run", "link_rates", "steps", "step_s", "slowdown", "predicted_step_s", "bytes_per_step",
              "node_bytes", "stall_warnings", "warning_ranks", "named_ranks", "failure")
MAX_LINES = 8  # warning lines quoted per run (all of them are in straggler.json)


def _rows(runs: list[dict], model: dict | None) -> list[dict]:
    from ..cluster import format_rate

    base = runs[0]["step_s"]
    rows = []
    for r in runs:
        named = sorted({x for w in r["warnings"] for x in w["named_ranks"]})
        rows.append({"run": r["run"], "link_rates": " ".join(format_rate(b) for b in r["rates"]),
                     "steps": r["steps"], "step_s": r["step_s"],
                     "slowdown": r["step_s"] / base if r["step_s"] and base else None,
                     "predicted_step_s": (base if r["run"] == "uniform" else model["predicted_step_s"])
                     if model else None,
                     "bytes_per_step": r["bytes_per_step"], "node_bytes": " ".join(map(str, r["node_bytes"])),
                     "stall_warnings": len(r["warnings"]),
                     "warning_ranks": " ".join(f"{k}:{v}" for k, v in sorted(Counter(w["rank"] for w in
                                                                                    r["warnings"]).items())),
                     "named_ranks": " ".join(map(str, named)), "failure": r["failure"]})
    return rows


def _table(rows: list[dict]) -> list[str]:
    lines = ["| run | link rates (node 0..K-1) | steps | step (ms) | slowdown | ring model (ms) | bytes/step "
             "(rank 0) | stall warnings (rank:count) | ranks the warnings blame |",
             "|---|---|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        step = None if r["step_s"] is None else r["step_s"] * 1e3
        pred = None if r["predicted_step_s"] is None else r["predicted_step_s"] * 1e3
        lines.append(f"| {r['run']} | {r['link_rates']} | {r['steps']} | {report.fmt(step, '.0f')} | "
                     f"{report.fmt(r['slowdown'], '.2f')}x | {report.fmt(pred, '.0f')} | "
                     f"{report.fmt(r['bytes_per_step'], ',.0f')} | {r['stall_warnings']} "
                     f"({r['warning_ranks'] or '—'}) | {r['named_ranks'] or 'none'} |")
    return lines


def _model_lines(model: dict | None, runs: list[dict], args, slow: dict) -> list[str]:
    if model is None:
        return ["- ring model: not computed (the uniform run gave no step time)."]
    measured = runs[1]["step_s"]
    err = (measured / model["predicted_step_s"] - 1) * 100 if measured else None
    ratio = model["comm_slow_s"] / model["comm_fast_s"]
    return [f"- ring model: rank 0 sends B = {runs[0]['bytes_per_step']:,.0f} bytes per step; a ring moves at "
            f"its slowest link's pace, so the link time is B x 8 / (rate x {TBF_EFFICIENCY:g}) (tbf gives TCP "
            f"~95 % of its rate): {model['comm_fast_s'] * 1e3:.0f} ms at {args.link}, "
            f"{model['comm_slow_s'] * 1e3:.0f} ms at {min(slow.values(), key=_bps)} ({ratio:.1f}x). The rest of "
            f"the uniform step (computation, latency): {model['rest_s'] * 1e3:.0f} ms, unchanged by the straggler. "
            f"Predicted straggler step {model['predicted_step_s'] * 1e3:.0f} ms; measured "
            f"{report.fmt(None if measured is None else measured * 1e3, '.0f')} ms "
            f"({report.fmt(err, '+.0f')} % against the model)."]


def _bps(rate: str) -> int:
    from ..cluster import parse_rate

    return parse_rate(rate)


def _warning_lines(runs: list[dict], slow_ranks: list[int]) -> list[str]:
    lines = []
    for r in runs:
        ws = r["warnings"]
        steps = [w for w in ws if "(step " in w["collective"]]  # training steps' collectives, not the set-up's
        lines += [f"### {r['run']} run: {len(ws)} stall warning line(s), {len(steps)} in training steps", ""]
        quoted = steps[:MAX_LINES] + [w for w in ws if w not in steps][:3]
        if quoted:
            lines += ["```", *[w["line"] for w in quoted], "```", ""]
            if len(ws) > len(quoted):
                lines += [f"({len(ws) - len(quoted)} more in straggler.json)", ""]
        if r["run"] == "straggler":
            lines += [_blame(steps, slow_ranks, len(ws) - len(steps)), ""]
    return lines


def _blame(ws: list[dict], slow_ranks: list[int], setup: int) -> str:
    """Whether the straggler run's warnings in training steps (``ws``) name the rank(s) on the slow node."""
    slow = set(slow_ranks)
    aside = f" ({setup} more in set-up collectives outside the training steps)" if setup else ""
    if not ws:
        return (f"No stall warning fired in a training step{aside}: no collective of a step waited past "
                f"--stall-warning, so the slow node's rank(s) {sorted(slow)} went unnamed.")
    named = {x for w in ws for x in w["named_ranks"]}
    forms = Counter("blames no rank: 'every rank is inside it'" if not w["named_ranks"] else
                    f"blames ranks {w['named_ranks']}" for w in ws)
    summary = "; ".join(f"{n} line(s) {f}" for f, n in forms.most_common()) + aside
    if named == slow:
        return f"The warnings name exactly the slow node's rank(s) {sorted(slow)} ({summary})."
    return (f"**Finding:** the warnings do not single out the slow node's rank(s) {sorted(slow)}: {summary}. A "
            "bandwidth straggler is inside the same collective as everyone else (the ring runs at its slowest "
            "link), so asking which ranks have not reached the collective cannot find it.")


def write_report(out: Path, args, runs: list[dict], model: dict | None, slow: dict, train_command: str) -> Path:
    """Write straggler.md and straggler.csv into ``out`` (``train_command``: the ``dtrain train`` command of
    both runs); return the Markdown's path."""
    rows = _rows(runs, model)
    out.mkdir(parents=True, exist_ok=True)
    report.write_csv(out / "straggler.csv", CSV_FIELDS, rows)
    ppn = args.cluster.ppn
    slow_ranks = [node * ppn + j for node in slow for j in range(ppn)]  # block placement: node i has ranks i*ppn..
    n = args.cluster.nodes * ppn
    label = cluster_label(argparse.Namespace(**{**vars(args), "link_of": list(slow.items())}))
    lines = ["# A straggler on a virtual cluster: one slow link, the DDP step and the stall warning", "",
             f"- cluster: {label}; {n} ranks, {ppn} per node; the slow node's ranks: {slow_ranks}.",
             f"- each run: `{train_command}` (same job twice on one cluster: every "
             "link at the base rate, then the slow node's link re-shaped).",
             "- step: global batch / the run's samples_per_s (the training loop's time over all its steps, "
             "the first included).", ""]
    note = oversubscription_note(n)
    lines += [note, ""] if note else []
    lines += ["## Step time", "", *_table(rows), "", *_model_lines(model, runs, args, slow), ""]
    lines += ["## Stall warnings", "", *_warning_lines(runs, slow_ranks)]
    lines += ["## Machine", "", *[f"- {k}: {v}" for k, v in machine_info().items()], ""]
    lines += report.command_section(report.command_line())
    return report.write_markdown(out, "straggler.md", lines)
