"""The compression benchmark's plot: test accuracy against bytes per step, one panel per model x ranks."""

from __future__ import annotations

from pathlib import Path

from .compression_stats import GOAL_FEWER, GOAL_LOSS_PP
from .report import ranks_label


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
            ax.set_title(f"{model}, {ranks_label(n)}")
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
