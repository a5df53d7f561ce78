"""The report of ``dtrain bench cluster_allreduce``: rows against the link bound, verdicts, link bytes, plot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .allreduce_report import fmt_size
from .machine import fmt_load
from .report import command_section, fmt, write_csv, write_markdown

GOODPUT = 1448 / 1514
"""TCP payload per byte tbf counts: a 1514-byte frame (1500 MTU + 14 Ethernet) carries 1448 bytes of payload
(20 IP + 32 TCP header with timestamps)."""
RING_GOAL, MPI_GOAL = 0.9, 1.0
FIELDS = ("link", "shape", "nodes", "ppn", "world_size", "size_bytes", "algorithm", "time_ms", "min_time_ms",
          "algbw_GBps", "busbw_GBps", "bound_GBps", "ratio_bound", "ratio_line", "ratio_mpi", "repeats",
          "oversubscribed", "reference")


def goodput_GBps(link_bps: int) -> float:
    """The TCP goodput of a link shaped to ``link_bps``, in GB/s (1e9 bytes)."""
    return link_bps / 8 * GOODPUT / 1e9


def bound_GBps(link_bps: int, algorithm: str, n: int, nodes: int) -> float:
    """The busbw the links allow: the goodput for a flat ring (and MPI_Allreduce, held to it); for the
    hierarchical all-reduce, whose links carry 2(K-1)/K instead of 2(N-1)/N of the size, that much more."""
    g = goodput_GBps(link_bps)
    if algorithm == "hierarchical" and nodes > 1:
        return g * ((n - 1) / n) / ((nodes - 1) / nodes)
    return g


def model_payload(algorithm: str, n: int, nodes: int, nbytes: int) -> float | None:
    """Payload bytes each node sends on its link per all-reduce (block placement); None for MPI (its own
    schedule)."""
    if algorithm == "hierarchical":
        return 2 * (nodes - 1) / nodes * nbytes
    if algorithm.startswith("ring"):
        return 2 * (n - 1) / n * nbytes
    return None


def report_rows(results: list[dict], cores: int) -> list[dict]:
    """One row per (link, shape, size, algorithm): times in ms, busbw against its bound, the line rate and MPI."""
    rows = []
    for res in results:
        n, k = res["world_size"], res["nodes"]
        mpi = {r["size_bytes"]: r["time_s"] for r in res["rows"] if r["algorithm"] == "mpi"}
        for r in res["rows"] + res.get("variants", []):
            bound = bound_GBps(res["link_bps"], r["algorithm"], n, k)
            rows.append({
                "link": res["link"], "shape": res["shape"], "nodes": k, "ppn": res["ppn"], "world_size": n,
                "size_bytes": r["size_bytes"], "algorithm": r["algorithm"], "time_ms": r["time_s"] * 1e3,
                "min_time_ms": r["min_time_s"] * 1e3, "algbw_GBps": r["algbw_GBps"], "busbw_GBps": r["busbw_GBps"],
                "bound_GBps": bound, "ratio_bound": r["busbw_GBps"] / bound,
                "ratio_line": r["busbw_GBps"] / (res["link_bps"] / 8 / 1e9),
                "ratio_mpi": mpi[r["size_bytes"]] / r["time_s"] if r["size_bytes"] in mpi else None,
                "repeats": r["repeats"], "oversubscribed": n > cores, "variant": r in res.get("variants", []),
                "reference": res.get("reference", False),
            })
    return rows


def _note(r: dict, cores: int) -> str:
    notes = ["reference: the host's ceiling"] if r["reference"] else []
    notes += [f"**oversubscribed** ({r['world_size']} ranks / {cores} cores)"] if r["oversubscribed"] else []
    return "; ".join(notes)


def ceiling(rows: list[dict], shape: str, nbytes: int) -> dict | None:
    """The ring's row at the reference (fast) link for ``shape`` and ``nbytes``: what the host's CPUs move
    when no link limits; None without ``--reference-link``."""
    found = [r for r in rows if r["reference"] and r["algorithm"] == "ring" and r["shape"] == shape
             and r["size_bytes"] == nbytes and not r["variant"]]
    return found[0] if found else None


def main_table(rows: list[dict], cores: int) -> list[str]:
    """Every measured row (the library-default algorithms)."""
    lines = ["| link | shape KxM | N | size | algorithm | time (ms) | busbw (GB/s) | link-bound busbw (GB/s) | "
             "busbw / bound | busbw / line rate | busbw / MPI_Allreduce | note |",
             "|:--|:--|--:|--:|:--|--:|--:|--:|--:|--:|--:|:--|"]
    for r in rows:
        if r["variant"]:
            continue
        lines.append(f"| {r['link']} | {r['shape']} | {r['world_size']} | {fmt_size(r['size_bytes'])} | "
                     f"{r['algorithm']} | {r['time_ms']:.1f} | {r['busbw_GBps']:.4f} | {r['bound_GBps']:.4f} | "
                     f"**{r['ratio_bound']:.2f}** | {r['ratio_line']:.2f} | {fmt(r['ratio_mpi'], '.2f')} | "
                     f"{_note(r, cores)} |")
    return lines + [""]


def verdicts(rows: list[dict], cores: int) -> list[str]:
    """The goal at the largest size, one line per (link, shape): ring >= 0.9x its link bound and >= MPI."""
    biggest = max(r["size_bytes"] for r in rows)
    ring = [r for r in rows if r["algorithm"] == "ring" and r["size_bytes"] == biggest and not r["variant"]
            and not r["reference"]]
    lines = [f"Goal: dtrain's ring busbw >= {RING_GOAL}x the link-bound busbw and >= MPI_Allreduce's, at "
             f"{fmt_size(biggest)}.", ""]
    passed = 0
    for r in ring:
        ok_bound, ok_mpi = r["ratio_bound"] >= RING_GOAL, (r["ratio_mpi"] or 0) >= MPI_GOAL
        passed += ok_bound and ok_mpi
        over = " (oversubscribed: ranks share the CPUs)" if r["oversubscribed"] else ""
        top = ceiling(rows, r["shape"], biggest)
        if top is not None:
            over += (f"; host ceiling (ring at {top['link']}) {top['busbw_GBps']:.3f} GB/s = "
                     f"{top['busbw_GBps'] / r['bound_GBps']:.2f}x this link bound")
        lines.append(f"- {r['link']} {r['shape']}: ring {r['ratio_bound']:.2f}x the link bound "
                     f"({'pass' if ok_bound else 'FAIL'}), {fmt(r['ratio_mpi'], '.2f')}x MPI_Allreduce "
                     f"({'pass' if ok_mpi else 'FAIL'}): **{'pass' if ok_bound and ok_mpi else 'FAIL'}**{over}")
    lines += ["", f"**{passed} of {len(ring)}** configurations meet the goal."]
    return lines + [""] + best_vs_mpi(rows, biggest)


def best_vs_mpi(rows: list[dict], biggest: int) -> list[str]:
    """Per (link, shape) at the largest size: dtrain's faster algorithm (ring or hierarchical) against
    MPI_Allreduce. With several ranks per node MPICH's MPI_Allreduce is node-aware (its bytes per link match
    the node ring's, see below), so the flat ring cannot match it there; the hierarchical all-reduce is
    dtrain's answer to that layout."""
    cells: dict[tuple[str, str], dict[str, dict]] = {}
    for r in rows:
        if r["size_bytes"] == biggest and not r["variant"] and not r["reference"]:
            cells.setdefault((r["link"], r["shape"]), {})[r["algorithm"]] = r
    lines = [f"dtrain's faster algorithm against MPI_Allreduce at {fmt_size(biggest)}:", ""]
    for (link, shape), algs in cells.items():
        if "mpi" not in algs:
            continue
        best = max((a for a in ("ring", "hierarchical") if a in algs), key=lambda a: algs[a]["busbw_GBps"])
        ratio = algs[best]["busbw_GBps"] / algs["mpi"]["busbw_GBps"]
        lines.append(f"- {link} {shape}: {best} {ratio:.2f}x MPI_Allreduce ({'>=' if ratio >= 1 else '<'} MPI)")
    return lines + [""]


def matching_model(measured: float, n: int, nodes: int, nbytes: int) -> str:
    """Which traffic model ``measured`` bytes on the wire per node match within 5 %: the flat ring's
    2(N-1)/N * S, the node leaders' ring's 2(K-1)/K * S (both when M = 1), or neither."""
    found = [label for label, alg in (("flat ring", "ring"), ("node ring", "hierarchical"))
             if abs(measured * GOODPUT / model_payload(alg, n, nodes, nbytes) - 1) <= 0.05]
    return " and ".join(found) or "neither"


def bytes_table(results: list[dict]) -> list[str]:
    """Bytes each node sent on its link per all-reduce of the largest size (tc counters) against the model."""
    lines = ["| link | shape | size | algorithm | measured per node (bytes) | model payload | model on the wire "
             "(/ 0.956) | measured / wire model | matches |", "|:--|:--|--:|:--|--:|--:|--:|--:|:--|"]
    for res in results:
        nbytes = max(r["size_bytes"] for r in res["rows"])
        for alg, per_node in res["node_bytes"].items():
            mean = sum(per_node) / max(len(per_node), 1)
            spread = f"{mean:,.0f} ({min(per_node):,.0f} to {max(per_node):,.0f})" if per_node else "—"
            payload = model_payload(alg, res["world_size"], res["nodes"], nbytes)
            wire = None if payload is None else payload / GOODPUT
            lines.append(f"| {res['link']} | {res['shape']} | {fmt_size(nbytes)} | {alg} | {spread} | "
                         f"{fmt(payload, ',.0f')} | {fmt(wire, ',.0f')} | "
                         f"{fmt(None if wire is None else mean / wire, '.3f')} | "
                         f"{matching_model(mean, res['world_size'], res['nodes'], nbytes)} |")
    return lines + [""]


def variants_section(rows: list[dict]) -> list[str]:
    """The ring pipeline settings per (link, shape) at the largest size, each against the default (the first
    setting of each group), and a recommendation: the setting with the lowest geometric mean of time /
    default, when that is at least 5 % under the default's, else the default."""
    var = [r for r in rows if r["variant"]]
    if not var:
        return []
    lines = ["## Ring pipeline parameters (piece bytes : pieces in flight)", "",
             "| link | shape | size | setting | time (ms) | busbw (GB/s) | busbw / bound | time / default |",
             "|:--|:--|--:|:--|--:|--:|--:|--:|"]
    rel: dict[str, list[float]] = {}
    for key in dict.fromkeys((r["link"], r["shape"]) for r in var):
        group = [r for r in var if (r["link"], r["shape"]) == key]
        for r in group:
            rel.setdefault(r["algorithm"], []).append(r["time_ms"] / group[0]["time_ms"])
            lines.append(f"| {r['link']} | {r['shape']} | {fmt_size(r['size_bytes'])} | {r['algorithm']} | "
                         f"{r['time_ms']:.1f} | {r['busbw_GBps']:.4f} | {r['ratio_bound']:.2f} | "
                         f"{rel[r['algorithm']][-1]:.3f} |")
    gmean = {k: float(np.exp(np.mean(np.log(v)))) for k, v in rel.items()}
    default = var[0]["algorithm"]
    best = min((k for k in gmean if k != default), key=gmean.get, default=default)
    if gmean[best] <= 0.95:
        advice = f"**{best}** ({gmean[best]:.3f}x the default's time on average)"
    else:
        why = ("the default is the fastest on average" if gmean[best] >= 1 else
               "under 5 % apart is within the noise of these runs")
        advice = (f"keep the default **{default}** (the best other setting, {best}, takes {gmean[best]:.3f}x its "
                  f"time on average: {why})")
    lines += ["", "Geometric mean of time / default per setting: "
              + ", ".join(f"{k} {v:.3f}" for k, v in gmean.items()) + f". Recommendation: {advice}. The library "
              "defaults are unchanged by this benchmark.", ""]
    return lines


def launches_table(results: list[dict]) -> list[str]:
    """Per launch: the bytes all nodes sent on their links (host's tc counters) and its wall time."""
    lines = ["| link | shape | ranks | link bytes, whole launch | launch (s) |", "|:--|:--|--:|--:|--:|"]
    lines += [f"| {r['link']} | {r['shape']} | {r['world_size']} | {r['launch_link_bytes']:,} | {r['launch_s']:.1f} |"
              for r in results]
    return lines + [""]


def markdown(results: list[dict], rows: list[dict], command: str, meta: dict) -> list[str]:
    """The whole Markdown report."""
    m, cores = meta["machine"], meta["machine"]["cores"]
    first = results[0]
    lines = ["# All-reduce bus bandwidth on shaped links (virtual cluster)", "",
             "Float32 sum all-reduce; time = slowest rank, median of the repeats after warm-up; busbw = size / time "
             "* 2(N-1)/N (nccl-tests); GB/s = 1e9 bytes/s; sizes in binary units (1 MB = 2^20 bytes). Ranks "
             "placed in blocks of M per node; MPICH over TCP "
             "(ofi/tcp on eth0), so the bytes between nodes cross the tc-shaped links.", "",
             f"Link bound: the goodput of TCP on the link, rate / 8 * 1448/1514 = rate * {GOODPUT:.4f} (a "
             "1514-byte frame carries 1448 payload bytes), for the flat ring (one ring edge leaves each node, "
             "carrying 2(N-1)/N of the size) and for MPI_Allreduce; for the hierarchical all-reduce the links "
             "carry 2(K-1)/K of the size, so its bound is that * ((N-1)/N) / ((K-1)/K). 'busbw / line rate' is "
             "the busbw over the raw link rate.", ""]
    refs = sorted({r["link"] for r in rows if r["reference"]})
    if refs:
        lines += [f"Reference rows at {', '.join(refs)}: the same shapes with links far faster than the others, "
                  "so the host's CPUs (all nodes share them), not the links, set the pace: the ceiling a shaped run "
                  "can reach. Where that ceiling is under the link bound, the link bound is out of reach on this "
                  "machine.", ""]
    lines += ["## Goal", ""] + verdicts(rows, cores)
    lines += ["## All rows", ""] + main_table(rows, cores)
    lines += ["![busbw](busbw.png)", ""] if (meta.get("plot")) else [f"No plot: {meta.get('plot_error')}", ""]
    lines += variants_section(rows)
    lines += ["## Bytes on the links (tc counters)", "",
              f"Each node's tc counter of the bytes it sent, read around {first['byte_rounds']} all-reduces of the "
              "largest size per algorithm (frames as tc counts them: payload + headers). MPI has no model of its "
              "own (its schedule is the library's): 'matches' says which model its bytes fit (flat ring: "
              "2(N-1)/N * S per node; node ring: 2(K-1)/K * S, what a node-aware all-reduce sends). MPI_Allreduce "
              "is held to the flat ring's bound in the tables; where its bytes match the node ring, its bound "
              "in bus terms is the hierarchical one.", ""] + bytes_table(results)
    lines += ["Per launch (all algorithms, warm-up and repeats):", ""] + launches_table(results)
    lines += command_section(command)
    lines += ["## Machine", "",
              f"{m['cores']} usable cores ({m['cpu_model']}), Python {m['python']}, NumPy {m['numpy']}, "
              f"{first['mpi_library']}, MPI thread level {first['thread_level']}; ring defaults "
              f"{first['pipeline_bytes']} bytes x {first['pipeline_depth']} pieces in flight; cluster "
              f"{meta['cluster_name']!r}; load {fmt_load(meta['load_start'])} at start, "
              f"{fmt_load(meta['load_end'])} at end; whole run {meta['wall_s']:.0f} s.", ""]
    return lines


def plot(out: Path, rows: list[dict]) -> str | None:
    """busbw.png: busbw vs size per (link, shape), one line per algorithm, the link bounds dashed. Returns
    None, or why there is no plot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f"matplotlib unavailable ({exc})"
    refs = [r for r in rows if r["reference"]]
    rows = [r for r in rows if not r["variant"] and not r["reference"]]
    links, shapes = list(dict.fromkeys(r["link"] for r in rows)), list(dict.fromkeys(r["shape"] for r in rows))
    fig, axes = plt.subplots(len(links), len(shapes), figsize=(3.2 * len(shapes), 2.8 * len(links)), squeeze=False)
    for i, link in enumerate(links):
        for j, shape in enumerate(shapes):
            ax = axes[i][j]
            _plot_cell(ax, [r for r in rows if r["link"] == link and r["shape"] == shape], f"{link}, {shape}",
                       [r for r in refs if r["shape"] == shape and r["algorithm"] == "ring" and not r["variant"]])
            if i == len(links) - 1:
                ax.set_xlabel("size (MiB)", fontsize=8)
            if j == 0:
                ax.set_ylabel("busbw (GB/s)", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "busbw.png", dpi=110)
    plt.close(fig)
    return None


def _plot_cell(ax, cell: list[dict], title: str, ref: list[dict]) -> None:
    """One (link, shape): busbw vs size per algorithm, each distinct link bound once (dashed), and the host's
    ceiling (the ring at the reference link, ``ref``) in the corner."""
    bounds: dict[float, list[str]] = {}
    for k, alg in enumerate(dict.fromkeys(r["algorithm"] for r in cell)):
        rs = [r for r in cell if r["algorithm"] == alg]
        ax.plot([r["size_bytes"] / 2**20 for r in rs], [r["busbw_GBps"] for r in rs], marker="o", color=f"C{k}",
                label=alg)
        bounds.setdefault(round(rs[0]["bound_GBps"], 9), []).append(alg)
    for k, (bound, algs) in enumerate(bounds.items()):
        ax.axhline(bound, color="black" if k == 0 else "grey", linestyle="--" if k == 0 else ":", lw=0.9,
                   label=f"link bound: {', '.join(algs)}")
    sizes = sorted({r["size_bytes"] / 2**20 for r in cell})
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [f"{s:g}" for s in sizes])
    ax.set_ylim(0, 1.1 * max([*bounds, *(r["busbw_GBps"] for r in cell)]))
    over = " (oversubscribed)" if cell and cell[0]["oversubscribed"] else ""
    if ref:
        over += (f"\nhost ceiling (ring at {ref[-1]['link']}, {fmt_size(ref[-1]['size_bytes'])}): "
                 f"{ref[-1]['busbw_GBps']:.3f} GB/s")
    ax.set_title(title + over, fontsize=7)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=5.5, loc="lower right")


def write_outputs(out: Path, results: list[dict], command: str, meta: dict) -> None:
    """cluster_allreduce.csv, .json, busbw.png and .md in ``out`` (created)."""
    out.mkdir(parents=True, exist_ok=True)
    rows = report_rows(results, meta["machine"]["cores"])
    write_csv(out / "cluster_allreduce.csv", FIELDS, rows)
    problem = plot(out, rows)
    meta = {**meta, "plot": problem is None, "plot_error": problem}
    (out / "cluster_allreduce.json").write_text(json.dumps(
        {"command": command, "meta": meta, "goodput_factor": GOODPUT, "rows": rows, "launches": results}, indent=1))
    write_markdown(out, "cluster_allreduce.md", markdown(results, rows, command, meta))
