"""The scaling sweep's report: summary rows, CSV, Markdown table, plots and scaling.md."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import report
from .scaling_model import calibration_lines, validate, validation_table

MODES = ("weak", "strong")


def summarize(worlds: list[dict], cores: int) -> list[dict]:
    """One row per (mode, world size) with speedup, efficiency, compute slowdown and the oversubscription flag."""
    rows = []
    for mode in MODES:
        recs = sorted((r for w in worlds for r in w["records"] if r["mode"] == mode), key=lambda r: r["world_size"])
        if not recs:
            continue
        base = recs[0]
        k0, t0 = base["world_size"], base["step_s"]
        c0 = base["compute_alone_s"] / base["per_rank_batch"]
        for r in recs:
            n, t = r["world_size"], r["step_s"]
            if mode == "weak":
                speedup = (n * t0 / t) / k0
                eff = speedup * k0 / n
            else:
                speedup = t0 / t
                eff = speedup * k0 / n
            rows.append({**{k: v for k, v in r.items() if k != "buckets_bytes"},
                         "buckets": len(r["buckets_bytes"]), "samples_per_s": r["global_batch"] / t,
                         "other_s": max(0.0, t - r["compute_s"] - r["exposed_s"] - r["optimizer_s"]),
                         "speedup": speedup, "efficiency": eff,
                         "compute_slowdown": (r["compute_alone_s"] / r["per_rank_batch"]) / c0,
                         "baseline_ranks": k0, "cores": cores, "oversubscribed": n > cores})
    return rows


CSV_FIELDS = ("mode", "world_size", "oversubscribed", "cores", "per_rank_batch", "global_batch", "model", "params",
              "algorithm", "compression", "wire_ratio", "bucket_mb", "buckets", "step_s", "compute_s", "forward_s",
              "backward_s", "exposed_s", "overlapped_s", "comm_s", "optimizer_s", "other_s", "samples_per_s",
              "speedup", "efficiency", "compute_slowdown", "baseline_ranks")



def write_csv(path: Path, rows: list[dict]) -> None:
    """scaling.csv: one line per (mode, world size)."""
    report.write_csv(path, CSV_FIELDS, rows)


def host_cell(r: dict) -> str:
    """The table cell saying how many ranks shared how many cores, in bold when oversubscribed."""
    if r["oversubscribed"]:
        return f"**oversubscribed** ({r['world_size']} ranks / {r['cores']} cores)"
    return f"{r['world_size']} ranks / {r['cores']} cores"


def markdown_table(rows: list[dict]) -> list[str]:
    """The scaling table: one line per (mode, world size), times in ms."""
    out = ["| mode | ranks | batch/rank | global batch | step ms | compute ms | exposed comm ms | overlapped comm ms "
           "| optimizer ms | other ms | samples/s | speedup | efficiency | compute slowdown | host |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        host = host_cell(r)
        out.append(f"| {r['mode']} | {r['world_size']} | {r['per_rank_batch']} | {r['global_batch']} | "
                   f"{r['step_s'] * 1e3:.1f} | {r['compute_s'] * 1e3:.1f} | {r['exposed_s'] * 1e3:.1f} | "
                   f"{r['overlapped_s'] * 1e3:.1f} | {r['optimizer_s'] * 1e3:.1f} | {r['other_s'] * 1e3:.1f} | "
                   f"{r['samples_per_s']:.0f} | {r['speedup']:.2f} | {r['efficiency']:.0%} | "
                   f"{r['compute_slowdown']:.2f}x | {host} |")
    return out



def plot(out: Path, rows: list[dict], title: str) -> list[str]:
    """efficiency.png (efficiency vs ranks) and breakdown.png (stacked step-time bars). Returns file names."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    _plot_efficiency(plt, out, rows, title)
    _plot_breakdown(plt, out, rows, title)
    return ["efficiency.png", "breakdown.png"]


def _plot_efficiency(plt, out: Path, rows: list[dict], title: str) -> None:
    cores = rows[0]["cores"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ranks = sorted({r["world_size"] for r in rows})
    for mode, marker in (("weak", "o"), ("strong", "s")):
        rs = [r for r in rows if r["mode"] == mode]
        if rs:
            ax.plot([r["world_size"] for r in rs], [r["efficiency"] for r in rs], marker=marker,
                    label=f"{mode} scaling")
            ax.plot([r["world_size"] for r in rs], [1 / r["compute_slowdown"] for r in rs], marker=marker,
                    linestyle=":", alpha=0.6, label=f"{mode}: compute alone (1 / slowdown)")
    ax.axhline(1.0, color="grey", lw=0.8)
    if max(ranks) > cores:
        ax.axvspan(cores + 0.5, max(ranks) + 0.5, color="red", alpha=0.08)
        ax.text(cores + 0.6, 0.05, f"oversubscribed\n(> {cores} cores)", color="darkred", fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ranks, [str(k) for k in ranks])
    ax.set_ylim(0, 1.15)
    ax.set_xlabel("ranks (processes)")
    ax.set_ylabel("efficiency")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "efficiency.png", dpi=120)
    plt.close(fig)


def step_bars(ax, x, width: float, rows: list[dict]):
    """Stacked bars of each row's step (ms): compute, exposed communication, optimizer, other; their tops."""
    bottom = np.zeros(len(rows))
    for key, label, color in (("compute_s", "compute", "tab:blue"), ("exposed_s", "exposed comm", "tab:red"),
                              ("optimizer_s", "optimizer", "tab:green"), ("other_s", "other", "tab:gray")):
        v = np.array([r[key] * 1e3 for r in rows])
        ax.bar(x, v, width, bottom=bottom, label=label, color=color)
        bottom += v
    return bottom


def _plot_breakdown(plt, out: Path, rows: list[dict], title: str) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(9, 4), sharey=False)
    for ax, mode in zip(axes, MODES):
        rs = [r for r in rows if r["mode"] == mode]
        if not rs:
            ax.set_visible(False)
            continue
        x = np.arange(len(rs))
        bottom = step_bars(ax, x - 0.18, 0.34, rs)
        ov = np.array([r["overlapped_s"] * 1e3 for r in rs])
        ex = np.array([min(r["exposed_s"], r["comm_s"]) * 1e3 for r in rs])
        ax.bar(x + 0.18, ex, 0.34, color="tab:red", alpha=0.45, label="comm alone: part exposed in the step")
        ax.bar(x + 0.18, ov, 0.34, bottom=ex, color="tab:orange", hatch="//", label="overlapped comm (hidden)")
        ax.set_xticks(x, [f"{r['world_size']}{' (over)' if r['oversubscribed'] else ''}" for r in rs])
        ax.set_xlabel("ranks (left bar: step; right bar: communication alone)")
        ax.set_ylabel("ms per step")
        ax.set_title(f"{mode} scaling, batch/rank " + ("fixed" if mode == "weak" else "= global / ranks"),
                     fontsize=9)
        ax.set_ylim(0, bottom.max() * 1.6)  # head room for the legend
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "breakdown.png", dpi=120)
    plt.close(fig)



def placement_lines(result: dict, cores: int) -> list[str]:
    """Where the ranks ran: one host's shared memory, or the virtual cluster (whose nodes share the cores)."""
    placement = result.get("placement", "shared memory (one host)")
    lines = [f"Ranks ran on: {placement}."]
    if result["args"].get("cluster"):
        nodes = ", ".join(f"{w['world_size']} rank(s) on {w['nodes']} node(s)" for w in result["worlds"]
                          if "nodes" in w)
        lines[0] += (f" {nodes}. Bytes between nodes cross tc-shaped TCP links (no latency emulation); the nodes "
                     f"are namespaces that **share this host's {cores} cores**, so compute does not scale with "
                     "nodes the way it would on real machines.")
    return [*lines, ""]


def write_report(out: Path, result: dict, rows: list[dict], command: str, plots: bool = True) -> list[str]:
    """Write scaling.md (and, unless ``plots`` is False, the plots) to ``out``; return the names of the files
    written (with the CSV and JSON the caller writes)."""
    args, mach = result["args"], result["machine"]
    title = (f"{args['model']} ({rows[0]['params']:,} params), {args['algorithm']}, compression "
             f"{rows[0]['compression']}, {args['bucket_mb']:g} MiB buckets; {mach['cores']} cores")
    pngs = plot(out, rows, title) if plots else []
    over = sorted({r["world_size"] for r in rows if r["oversubscribed"]})
    lines = ["# Strong and weak scaling of DDP training", "",
             f"Model `{args['model']}` ({rows[0]['params']:,} parameters, {rows[0]['grad_bytes'] / 2**20:.1f} MiB "
             f"of gradients in {rows[0]['buckets']} bucket(s) of <= {args['bucket_mb']:g} MiB), all-reduce "
             f"`{args['algorithm']}`, compression `{rows[0]['compression']}`; weak: {args['batch']} samples per "
             f"rank; strong: global batch {args['global_batch']}. {args['steps']} timed steps after "
             f"{args['warmup']} warm-up steps per world size and mode; DDP overlap "
             f"{'on' if args.get('overlap', True) else 'off'}. Times are ms per step.", "",
             *placement_lines(result, mach["cores"])]
    if over:
        lines += [f"**This host has {mach['cores']} usable cores.** World size(s) {', '.join(map(str, over))}: "
                  "oversubscribed. Ranks time-share cores, so their numbers measure contention, not the "
                  "scalability of the algorithm; they are flagged below and shaded in the plots.", ""]
    loads = [(w["world_size"], w.get("other_load")) for w in result["worlds"] if w.get("other_load") is not None]
    busy = [k for k, ld in loads if ld > 0.2]
    if loads:
        lines += ["Cores kept busy by other processes during each launch (machine CPU time minus this sweep's): "
                  + "; ".join(f"{k} rank(s): {ld:.2f}" for k, ld in loads) + "."
                  + (" **Other processes were using the CPUs** during the launches of "
                     f"{', '.join(map(str, busy))} rank(s): those timings include their interference (steps are "
                     "medians, probes the best repeats, to limit it)." if busy else ""), ""]
    lines += [f"Even at {mach['cores']} ranks each rank also has a communication thread that busy-polls inside "
              "MPI while backward runs, and the ranks share one memory system: the *compute slowdown* column "
              "(compute time per sample with every rank training alone at once, no communication, relative to "
              "the baseline run) shows what sharing the machine costs before any communication; the dotted "
              "lines in efficiency.png are 1 / that slowdown, the ceiling for any data-parallel scheme here.", "",
              *markdown_table(rows), "",
              "- compute = forward + backward - exposed communication; exposed = time in `ddp.finish` "
              "(waiting for buckets after backward); overlapped = communication of the same buckets alone "
              "minus exposed; other = step - compute - exposed - optimizer (rank imbalance, loop overhead).",
              f"- speedup and efficiency are against {rows[0]['baseline_ranks']} rank(s) of the same mode.", ""]
    try:
        vrows, cal = validate(result)
        lines += ["## Cost model check (dtrain.distributed.costmodel)", "", *calibration_lines(cal), "",
                  *validation_table(vrows), "",
                  "The last column feeds the model the 1-rank compute time instead (pure extrapolation, "
                  "blind to contention). `python benchmarks/simulate.py` extrapolates the calibrated model to "
                  "1..4096 workers.", ""]
        result["validation"] = vrows
    except ValueError as exc:
        lines += ["## Cost model check", "", f"Not available: {exc}", ""]
    if pngs:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in pngs] + [""]
    lines += ["## Machine", "", *[f"- {k}: {v}" for k, v in mach.items()],
              f"- MPI: {result['worlds'][0].get('mpi', '?')}; thread level {result['worlds'][0].get('thread_level')}",
              f"- wall time of the sweep: {result['wall_s']:.1f} s", "",
              *report.command_section(command)]
    (out / "scaling.md").write_text("\n".join(lines))
    return ["scaling.md", "scaling.csv", "scaling.json", *pngs]

