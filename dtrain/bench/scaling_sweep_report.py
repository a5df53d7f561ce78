"""The scaling sweep's combined report: one table over variants, where overlap hides the link and where it
can't (computed from the numbers), the cost model's check at 2 and 4 nodes, and its extrapolation."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import report
from .scaling_extrapolate import extrapolate, extrapolation_table, goodput, plot_extrapolation, wire_beta
from .scaling_model import calibration_lines, validate
from .scaling_report import host_cell, placement_lines, step_bars

__all__ = ["COST_GOAL", "overlap_analysis", "sweep_rows", "validation_rows", "write_sweep"]

COST_GOAL = 0.15  # the cost model's goal: predicted step within 15 % of the measured one
FIELDS = ("variant", "model", "overlap", "bucket_mb", "buckets", "mode", "world_size", "nodes", "ppn",
          "oversubscribed", "per_rank_batch", "step_s", "compute_s", "backward_s", "exposed_s", "overlapped_s",
          "comm_s", "optimizer_s", "other_s", "efficiency", "hidden_share", "hideable_share", "shared_1rank")


def sweep_rows(results: list[dict]) -> list[dict]:
    """Every variant's summary rows with the variant's name, the share of the communication hidden
    (overlapped / communication alone) and the share that *could* hide behind backward at best
    (min(1, backward / communication alone))."""
    rows = []
    for res in results:
        for r in res["rows"]:
            comm = r["comm_s"]
            rows.append({**r, "variant": res["label"], "nodes": r.get("nodes", 1), "ppn": r.get("ppn", r["world_size"]),
                         "hidden_share": r["overlapped_s"] / comm if comm > 0 else None,
                         "hideable_share": min(1.0, r["backward_s"] / comm) if comm > 0 else None,
                         "shared_1rank": r.get("shared_1rank", "")})
    return rows


def _table(rows: list[dict]) -> list[str]:
    out = ["| variant | buckets | mode | nodes x ranks | step ms | compute ms | backward ms | exposed comm ms "
           "| overlapped comm ms | comm alone ms | hidden | could hide | optimizer ms | efficiency vs 1 node | host |",
           "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        host = host_cell(r)
        if r["shared_1rank"]:
            host += f"; the 1-rank run of {r['shared_1rank']}"
        out.append(f"| {r['variant']} | {r['buckets']} | {r['mode']} | {r['nodes']}x{r['ppn']} | "
                   f"{r['step_s'] * 1e3:.1f} | "
                   f"{r['compute_s'] * 1e3:.1f} | {r['backward_s'] * 1e3:.1f} | {r['exposed_s'] * 1e3:.1f} | "
                   f"{r['overlapped_s'] * 1e3:.1f} | {r['comm_s'] * 1e3:.1f} | "
                   f"{report.fmt(r['hidden_share'], '.0%')} | "
                   f"{report.fmt(r['hideable_share'], '.0%')} | {r['optimizer_s'] * 1e3:.1f} | "
                   f"{r['efficiency']:.0%} | {host} |")
    return out


def _analysis_line(model: str, n: int, rs: list[dict]) -> str:
    on = [r for r in rs if r["overlap"]]
    off = {r["bucket_mb"]: r for r in rs if not r["overlap"]}
    comm, back = np.median([r["comm_s"] for r in rs]), np.median([r["backward_s"] for r in rs])
    line = (f"- **{model}, {n} nodes**: communication alone {comm * 1e3:.1f} ms (median over variants) vs backward "
            f"{back * 1e3:.1f} ms: at most {min(1.0, back / comm):.0%} of it can hide behind backward")
    line += "." if back >= comm else f"; at least {(comm - back) * 1e3:.1f} ms stays exposed whatever the buckets."
    if on:
        best = max(on, key=lambda r: r["hidden_share"] or 0.0)
        hid = ", ".join(f"{r['hidden_share']:.0%} at {r['bucket_mb']:g} MiB" for r in on)
        line += (f" Overlap on hid {hid} of it"
                 f" (best {best['bucket_mb']:g} MiB: exposed {best['exposed_s'] * 1e3:.1f} of "
                 f"{best['comm_s'] * 1e3:.1f} ms).")
        pairs = [(r, off[r["bucket_mb"]]) for r in on if r["bucket_mb"] in off]
        if pairs:
            line += " Step with overlap on vs off: " + ", ".join(
                f"{a['step_s'] * 1e3:.1f} vs {b['step_s'] * 1e3:.1f} ms ({a['step_s'] / b['step_s'] - 1:+.0%}) "
                f"at {a['bucket_mb']:g} MiB ({a['buckets']} bucket{'s' if a['buckets'] > 1 else ''})"
                for a, b in pairs) + "."
            # Overlap costs CPU where there is none to spare: the communication thread slows backward.
            grow = np.median([a["compute_s"] / b["compute_s"] for a, b in pairs])
            line += f" Compute in the step with overlap on / off: {grow:.2f}x (median over bucket sizes)."
        if 2 * rs[0]["world_size"] > rs[0]["cores"]:
            # DDP's communication thread needs a core while backward runs on the rank's own.
            line += (f" Here {rs[0]['world_size']} ranks share {rs[0]['cores']} cores: no core is left for the "
                     "communication threads, so overlap can hide less than that bound.")
    if rs[0]["oversubscribed"]:
        line += " (**Oversubscribed**: more ranks than cores.)"
    return line


def overlap_analysis(rows: list[dict]) -> list[str]:
    """Per model and node count (> 1): how much of the link could hide behind backward, how much did."""
    lines = []
    for model in dict.fromkeys(r["model"] for r in rows):
        for n in sorted({r["nodes"] for r in rows if r["model"] == model and r["comm_s"] > 0}):
            rs = [r for r in rows if r["model"] == model and r["nodes"] == n and r["comm_s"] > 0
                  and r["mode"] == "weak"]
            if rs:
                lines.append(_analysis_line(model, n, rs))
    return lines


def validation_rows(results: list[dict]) -> tuple[list[dict], dict | None]:
    """The cost model's predictions for every variant's worlds of >= 2 ranks (weak), and the first
    variant's calibration (None when the sweep measured no all-reduce probes)."""
    out, first = [], None
    for res in results:
        try:
            vrows, cal = validate(res)
        except ValueError:
            continue
        first = first or cal
        out += [{**v, "variant": res["label"]} for v in vrows if v["mode"] == "weak" and v["world_size"] > 1]
    return out, first


def _validation_table(vrows: list[dict]) -> list[str]:
    out = [f"| variant | ranks | measured step ms | predicted ms (1-node compute) | error | within "
           f"{COST_GOAL:.0%}? | predicted ms (compute alone at n) | error | raw-probe link ms | error |",
           "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for v in vrows:
        ok = "yes" if abs(v["error_1rank"]) <= COST_GOAL else "**no**"
        flags = [f for f, on in (("oversubscribed", v["oversubscribed"]), ("beta fitted here", v["in_calibration"]))
                 if on]
        out.append(f"| {v['variant']} | {v['world_size']} | {v['measured_s'] * 1e3:.1f} | "
                   f"{v['predicted_1rank_s'] * 1e3:.1f} | {v['error_1rank']:+.0%} | {ok}"
                   f"{' (' + ', '.join(flags) + ')' if flags else ''} | {v['predicted_s'] * 1e3:.1f} | "
                   f"{v['error']:+.0%} | {v['predicted_probe_s'] * 1e3:.1f} | {v['error_probe']:+.0%} |")
    return out


def _plot(out: Path, rows: list[dict], title: str) -> list[str]:
    """efficiency.png (weak-scaling efficiency vs nodes per variant) and breakdown.png (step split per
    variant and node count), one panel per model."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    weak = [r for r in rows if r["mode"] == "weak"]
    models = list(dict.fromkeys(r["model"] for r in weak))
    if not models:
        return []
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        for var in dict.fromkeys(r["variant"] for r in weak if r["model"] == model):
            rs = sorted((r for r in weak if r["variant"] == var), key=lambda r: r["nodes"])
            ax.plot([r["nodes"] for r in rs], [r["efficiency"] for r in rs], marker="o",
                    linestyle="-" if rs[0]["overlap"] else "--", label=var)
        over = sorted({r["nodes"] for r in weak if r["model"] == model and r["oversubscribed"]})
        if over:
            ax.axvspan(over[0] - 0.5, over[-1] + 0.5, color="red", alpha=0.08, label="oversubscribed (ranks > cores)")
        ax.set_xscale("log", base=2)
        nodes = sorted({r["nodes"] for r in weak if r["model"] == model})
        ax.set_xticks(nodes, [str(n) for n in nodes])
        ax.set_ylim(0, 1.1)
        ax.set_xlabel("nodes")
        ax.set_ylabel("weak-scaling efficiency vs 1 node")
        ax.set_title(model, fontsize=9)
        ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "efficiency.png", dpi=120)
    plt.close(fig)
    _plot_breakdown(plt, out, weak, models, title)
    return ["efficiency.png", "breakdown.png"]


def _plot_breakdown(plt, out: Path, weak: list[dict], models: list[str], title: str) -> None:
    fig, axes = plt.subplots(len(models), 1, figsize=(11, 3.6 * len(models)), squeeze=False)
    for ax, model in zip(axes[:, 0], models):
        rs = [r for r in weak if r["model"] == model and r["nodes"] > 1]
        x = np.arange(len(rs))
        step_bars(ax, x - 0.2, 0.38, rs)
        ax.bar(x + 0.2, [r["comm_s"] * 1e3 for r in rs], 0.38, color="tab:orange", alpha=0.6,
               label="communication alone")
        ax.set_xticks(x, [f"{'on' if r['overlap'] else 'off'} {r['bucket_mb']:g} MiB\n{r['nodes']} nodes"
                          f"{' (over)' if r['oversubscribed'] else ''}" for r in rs], fontsize=7)
        ax.set_ylabel("ms per step")
        ax.set_title(f"{model}: left bar the step, right bar the same buckets' communication alone", fontsize=9)
        ax.legend(fontsize=7, ncol=5)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "breakdown.png", dpi=120)
    plt.close(fig)


def _verdict(vrows: list[dict]) -> list[str]:
    """How many predictions are within the goal, per world size, with either compute input."""
    parts = []
    for n in sorted({v["world_size"] for v in vrows}):
        vs = [v for v in vrows if v["world_size"] == n]
        one = sum(abs(v["error_1rank"]) <= COST_GOAL for v in vs)
        alone = sum(abs(v["error"]) <= COST_GOAL for v in vs)
        over = " (oversubscribed)" if vs[0]["oversubscribed"] else ""
        parts.append(f"{n} ranks{over}: {one} of {len(vs)} with the 1-node compute, {alone} of {len(vs)} with "
                     "the compute alone at that size")
    met = all(abs(v["error_1rank"]) <= COST_GOAL for v in vrows)
    return [f"**Verdict** (goal: within {COST_GOAL:.0%}): " + "; ".join(parts)
            + f". Goal {'met' if met else 'not met'} for every variant with the 1-node compute.", ""]


def _cost_section(out: Path, args, results: list[dict], extra: dict) -> tuple[list[str], list[str]]:
    """The cost model's check and extrapolation: Markdown lines and the plot's name."""
    vrows, cal = validation_rows(results)
    if cal is None:
        return ["## Cost model", "", "Not available: no all-reduce probes at >= 2 ranks (--probe-repeats 0?).", ""], []
    lines = ["## Cost model (dtrain.distributed.costmodel) calibrated on this sweep", "", *calibration_lines(cal),
             "- each variant's DDP-effective beta is fitted to its own communication alone at 2 ranks (the 2-rank "
             "rows are therefore partly in the calibration). The verdict's prediction takes compute and optimizer "
             "from the 1-node run; the next column from every rank training alone at the same node count (the "
             "contention of the shared cores is then in the input)", "",
             *_validation_table(vrows), "", *_verdict(vrows)]
    extra["validation"] = vrows
    if args.cluster is None:
        return [*lines, "No extrapolation: it needs the goodput of a shaped link (--cluster).", ""], []
    ext, pngs = _extrapolation_section(out, args, results, cal, extra)
    return [*lines, *ext], pngs


def _extrapolation_section(out: Path, args, results: list[dict], cal: dict, extra: dict) -> tuple[list[str], list]:
    from dtrain.cluster import parse_rate
    from dtrain.distributed.costmodel import Link

    k, probe = cal["calib_world"], cal["probe_link"]
    probes = next(w["probes"] for w in results[0]["worlds"] if w["world_size"] == k)
    shaped = parse_rate(args.link)
    link = Link(probe.alpha, wire_beta(probes, k), probe.gamma, f"wire: largest probes at {k} ranks")
    factor, ddp_factor = goodput({"link": link}, shaped), goodput(cal, shaped)
    erows = []
    for model in dict.fromkeys(r["args"]["model"] for r in results):
        # Overlap on with the largest buckets (DDP's default is 25 MiB) stands for the model.
        on = [r for r in results if r["args"]["model"] == model and r["args"]["overlap"]] or \
            [r for r in results if r["args"]["model"] == model]
        erows += extrapolate(max(on, key=lambda r: r["args"]["bucket_mb"]), {**cal, "link": link}, shaped)
    extra["extrapolation"] = erows
    title = f"cost model calibrated at {args.link} on the virtual cluster, ring, 1 rank per node, overlap efficiency 1"
    pngs = plot_extrapolation(out, erows, title)
    most = max(x["nodes"] for x in erows)
    lat = 2 * (most - 1) * link.alpha
    return ["## Extrapolation to 1024 nodes", "",
            "Weak scaling, one rank per node, ring all-reduce, the variant's measured buckets, overlap efficiency 1 "
            "(a real node has cores for its communication thread), compute from the 1-node run; the link from the "
            f"all-reduce probes at {k} nodes: alpha and gamma as fitted (raw-probe link above), beta = 8 / rate x the "
            f"goodput factor measured at {args.link}: the beta between the two largest probes / the line rate's = "
            f"{factor:.2f}x (the smaller probes fit within tc's burst; DDP's own communication of the first "
            f"variant moved at {ddp_factor:.2f}x). Keeping that factor at 10-100 Gbit/s assumes the per-byte "
            "software cost scales with the wire: optimistic for CPU-driven TCP. The calibrated alpha "
            f"({link.alpha * 1e6:.0f} us: MPICH over TCP between namespaces on a shared host) costs "
            f"{lat * 1e3:.0f} ms per bucket's ring all-reduce at {most} "
            "nodes, so the rows with the fabric's alpha (dtrain.distributed.costmodel.LINKS) show what the latency "
            "term does. Cells: predicted step, efficiency vs 1 node.", "", *extrapolation_table(erows), ""], pngs


def write_sweep(out: Path, args, results: list[dict], mach: dict, command: str, wall: float) -> list[str]:
    """sweep.md, sweep.csv and the plots in ``out``; the validation and extrapolation rows are added to
    ``results[0]["sweep"]`` for the JSON. Returns the names of the files written (with sweep.json)."""
    rows = sweep_rows(results)
    report.write_csv(out / "sweep.csv", FIELDS, rows)
    title = f"DDP scaling sweep, {results[0]['placement']}; {mach['cores']} cores shared by all nodes"
    pngs = _plot(out, rows, title)
    extra: dict = {}
    cost, epngs = _cost_section(out, args, results, extra)
    results[0]["sweep"] = extra
    variants = ", ".join(r["label"] for r in results)
    lines = ["# DDP scaling sweep: overlap and bucket sizes", "",
             f"Variants (model-overlap-bucket): {variants}. Weak: {args.batch} samples per rank; "
             f"{args.steps} timed steps after {args.warmup} warm-up steps per launch; all-reduce `{args.algorithm}`.",
             "", *placement_lines(results[-1], mach["cores"]),
             "World sizes with more ranks than cores are flagged **oversubscribed**: ranks (and their "
             "communication threads) time-share the cores, so there the numbers measure contention as much as "
             "the network. hidden = overlapped / communication alone; could hide = min(1, backward / "
             "communication alone), the most any overlap can hide behind backward.", "",
             *_table(rows), "", "Each variant's own report (its phases, its calibration and cost-model check): "
             + ", ".join(f"[{r['label']}]({r['label']}/scaling.md)" for r in results) + ".", "",
             "## Where overlap hides the link and where it can't (from the numbers above)", "",
             *overlap_analysis(rows), "", *cost, "## Plots", "", *[f"![{p}]({p})" for p in pngs + epngs], "",
             "## Machine", "", *[f"- {k}: {v}" for k, v in mach.items()], f"- wall time of the sweep: {wall:.1f} s",
             "", *report.command_section(command)]
    report.write_markdown(out, "sweep.md", lines)
    return ["sweep.md", "sweep.csv", "sweep.json", *pngs, *epngs]
