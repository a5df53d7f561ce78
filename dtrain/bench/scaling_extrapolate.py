"""The scaling sweep's cost model taken beyond the virtual cluster: weak scaling to 1024 nodes on faster links.

Inputs, all from the sweep's own measurements (:func:`dtrain.bench.scaling_model.calibration`):

* compute, its backward share, the optimizer and the per-step overhead: the 1-node run of the model;
* the link: alpha and gamma as calibrated, beta = (8 / rate) x the *goodput factor* measured on the
  shaped link, i.e. the measured beta / (8 / the shaped link's nominal rate): how many times slower
  than the line rate the bytes really moved there (TCP, MPICH). The measured beta is the slope between
  the two largest all-reduce probes (:func:`wire_beta`): tc's token bucket lets a burst of >= 128 KiB
  through at memory speed, so the small and middle sizes would make the link look faster than its rate.
  Keeping that factor at 10-100 Gbit/s assumes the software costs per byte scale with the wire, which
  is optimistic for a CPU-driven TCP stack (on this host above ~3 Gbit/s the CPUs, not the link, are
  the limit);
* a second set of curves keeps everything but alpha, taken instead from the fabric of that rate in
  :data:`dtrain.distributed.costmodel.LINKS` (5-30 us): the calibrated alpha is MPICH over TCP between
  namespaces on a shared 2-core host, and at hundreds of nodes the ring's 2(n-1) alpha per bucket
  dominates, so the two sets bracket what the latency term does;
* one rank per node, ring all-reduce, the model's measured buckets, overlap efficiency 1 (a real node
  has cores of its own for the communication thread, unlike the namespaces sharing this host's cores).
"""

from __future__ import annotations

from pathlib import Path

from dtrain.distributed.costmodel import LINKS, Compression, Link, StepModel, step_time

__all__ = ["RATES_GBIT", "extrapolate", "extrapolation_table", "goodput", "plot_extrapolation", "wire_beta"]

RATES_GBIT = (10.0, 25.0, 100.0)
TABLE_NODES = (1, 2, 4, 16, 64, 256, 1024)
# The latency of the fabric of each rate in the cost model's table of links (Gbit/s -> alpha).
FABRIC_ALPHA = {round(8 / link.beta / 1e9): link.alpha for link in LINKS.values()}


def wire_beta(probes: dict, n: int) -> float:
    """Seconds per byte on the link from a world of ``n`` ranks' ring all-reduce probes (through the worker
    thread when measured, best of the repeats): the slope between the two largest sizes, per byte each
    rank sends (2(n-1)/n of the message). Raises ValueError without two sizes or with a slope <= 0."""
    rows = [r for r in probes.get("allreduce_worker") or probes.get("allreduce", [])
            if r["algorithm"] == "ring" and r["world_size"] == n]
    rows.sort(key=lambda r: r["size_bytes"])
    if n < 2 or len(rows) < 2:
        raise ValueError(f"wire_beta needs ring all-reduce probes of >= 2 sizes at {n} >= 2 ranks, got {len(rows)}")
    (m1, t1), (m2, t2) = ((r["size_bytes"], r.get("min_time_s", r["time_s"])) for r in rows[-2:])
    beta = (t2 - t1) / ((m2 - m1) * 2 * (n - 1) / n)
    if not beta > 0:
        raise ValueError(f"wire_beta: the all-reduce of {m2} bytes ({t2:.4g} s) was not slower than of {m1} bytes "
                         f"({t1:.4g} s): expected a link-bound slope")
    return beta


def goodput(cal: dict, shaped_bps: float) -> float:
    """Measured beta / the line rate's beta (>= 1: how much slower than the wire bytes moved)."""
    return cal["link"].beta / (8.0 / shaped_bps)


def _step_model(r1: dict, cal: dict) -> StepModel:
    b = r1["per_rank_batch"]
    fixed = max(0.0, r1["step_s"] - r1["compute_s"] - r1["optimizer_s"] - r1["exposed_s"])
    return StepModel(params=r1["params"], compute_s_per_sample=r1["compute_alone_s"] / b,
                     backward_fraction=r1["backward_s"] / max(r1["compute_s"], 1e-12),
                     optimizer_s_per_param=r1["optimizer_alone_s"] / r1["params"], fixed_s=fixed,
                     copy_s_per_byte=cal["copy_s_per_byte"], name=r1["model"])


def extrapolate(result: dict, cal: dict, shaped_bps: float, max_nodes: int = 1024,
                rates_gbit=RATES_GBIT) -> list[dict]:
    """Predicted weak-scaling step and efficiency at 1, 2, 4 ... ``max_nodes`` nodes for each rate, for the
    variant ``result`` (its 1-node weak record gives compute; its largest world gives the buckets)."""
    weak = [r for w in result["worlds"] for r in w["records"] if r["mode"] == "weak"]
    if not weak:
        raise ValueError("the extrapolation needs weak-scaling records (--modes weak)")
    r1 = min(weak, key=lambda r: r["world_size"])
    rn = max(weak, key=lambda r: r["world_size"])
    model, factor = _step_model(r1, cal), goodput(cal, shaped_bps)
    buckets = [float(x) for x in rn["buckets_bytes"]]
    rows = []
    for gbit in rates_gbit:
        alphas = {"calibrated": cal["link"].alpha}
        if round(gbit) in FABRIC_ALPHA:
            alphas["fabric"] = FABRIC_ALPHA[round(gbit)]
        for source, alpha in alphas.items():
            link = Link(alpha, factor * 8.0 / (gbit * 1e9), cal["link"].gamma, f"{gbit:g} Gbit/s")
            n, t1 = 1, None
            while n <= max_nodes:
                br = step_time(model, r1["per_rank_batch"], n, link, "ring", buckets=buckets, ranks_per_node=1,
                               compression=Compression(), overlap=rn.get("overlap", True), overlap_efficiency=1.0,
                               control_message=True)
                t1 = br.total if t1 is None else t1
                rows.append({"model": r1["model"], "variant": result.get("label", ""), "rate_gbit": gbit,
                             "alpha_source": source, "alpha_s": alpha, "nodes": n, "step_s": br.total,
                             "comm_s": br.comm, "exposed_s": br.exposed, "efficiency": t1 / br.total,
                             "goodput_factor": factor})
                n *= 2
    return rows


def _key(r: dict) -> tuple:
    return r["variant"] or r["model"], r["rate_gbit"], r["alpha_source"]


def extrapolation_table(rows: list[dict]) -> list[str]:
    """Markdown: per model and rate, the predicted step (ms) and efficiency at a few node counts."""
    nodes = [n for n in TABLE_NODES if any(r["nodes"] == n for r in rows)]
    out = ["| model (variant) | link | alpha | " + " | ".join(f"{n} nodes" for n in nodes) + " |",
           "|---|---|---|" + "---:|" * len(nodes)]
    for key in dict.fromkeys(_key(r) for r in rows):
        by_n = {r["nodes"]: r for r in rows if _key(r) == key}
        cells = [f"{by_n[n]['step_s'] * 1e3:.1f} ms, {by_n[n]['efficiency']:.0%}" for n in nodes]
        alpha = by_n[nodes[0]]["alpha_s"]
        out.append(f"| {key[0]} | {key[1]:g} Gbit/s | {key[2]} ({alpha * 1e6:.0f} us) | " + " | ".join(cells) + " |")
    return out


def plot_extrapolation(out: Path, rows: list[dict], title: str) -> list[str]:
    """extrapolation.png: predicted step time and efficiency vs nodes, a row of panels per variant, one
    line per rate (colour) and alpha (solid: calibrated; dashed: the fabric's)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    variants = list(dict.fromkeys(r["variant"] or r["model"] for r in rows))
    fig, axes = plt.subplots(len(variants), 2, figsize=(10, 3.8 * len(variants)), squeeze=False)
    rates = list(dict.fromkeys(r["rate_gbit"] for r in rows))
    for (ax_t, ax_e), var in zip(axes, variants):
        for key in dict.fromkeys(_key(r) for r in rows if _key(r)[0] == var):
            rs = [r for r in rows if _key(r) == key]
            name = f"{key[1]:g} Gbit/s, {key[2]} alpha ({rs[0]['alpha_s'] * 1e6:.0f} us)"
            kw = {"color": f"C{rates.index(key[1])}", "linestyle": "-" if key[2] == "calibrated" else "--",
                  "marker": "o", "ms": 3, "label": name}
            ax_t.plot([r["nodes"] for r in rs], [r["step_s"] * 1e3 for r in rs], **kw)
            ax_e.plot([r["nodes"] for r in rs], [r["efficiency"] for r in rs], **kw)
        for ax in (ax_t, ax_e):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("nodes (1 rank each)")
            ax.grid(alpha=0.3)
        ax_t.set_yscale("log")
        ax_t.set_ylabel("predicted step, ms")
        ax_t.set_title(var, fontsize=9)
        ax_e.set_ylabel("predicted weak-scaling efficiency")
        ax_e.set_ylim(0, 1.05)
        ax_e.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "extrapolation.png", dpi=120)
    plt.close(fig)
    return ["extrapolation.png"]
