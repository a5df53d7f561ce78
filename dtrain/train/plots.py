"""PNG plots of a training run: learning curves and gradient flow (what the Trainer writes to ``--out``).

Matplotlib is optional and imported only inside the plot functions. They draw on a
``matplotlib.figure.Figure`` with the Agg canvas directly, never through pyplot, so they neither need
a display nor touch the backend an interactive user has selected; without matplotlib they log one
warning and return None.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import numpy as np

__all__ = ["grad_flow_figure", "learning_curves_figure", "plot_grad_flow", "plot_learning_curves"]

logger = logging.getLogger("dtrain")


_warned_no_matplotlib = False


def _matplotlib():
    """(Figure, FigureCanvasAgg), or None (warning once per process) when matplotlib is missing."""
    global _warned_no_matplotlib
    try:
        import matplotlib  # noqa: F401  (imported first so a missing package fails here)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        if not _warned_no_matplotlib:
            _warned_no_matplotlib = True
            logger.warning("plots skipped: matplotlib is not importable (%s); pip install matplotlib", exc)
        return None
    return Figure, FigureCanvasAgg


def _plotting(caller: str, what: str, has_data: bool):
    """(Figure, FigureCanvasAgg) when there is data to plot and matplotlib is importable, else None."""
    if not has_data:
        logger.debug("%s: no %s to plot", caller, what)
        return None
    return _matplotlib()


def _save(fig: Any, path: str | os.PathLike) -> str:
    """Write the figure as PNG atomically (temp file + rename), so a reader never sees half a file."""
    path = os.fspath(path)
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _number(value: Any) -> float:
    """A metric value as float, NaN for absent/None/non-finite (NaN leaves a gap in the line)."""
    if value is None:
        return math.nan
    try:
        value = float(value)
    except (TypeError, ValueError):
        return math.nan
    return value if math.isfinite(value) else math.nan


def plot_learning_curves(records: list[dict], path: str | os.PathLike) -> str | None:
    """Plot loss (train and test) and accuracy against epoch from metrics.jsonl rows; save a PNG
    (:func:`learning_curves_figure` draws it).

    Returns:
        ``path`` as a string; None when there is nothing to plot or matplotlib is not installed.
    """
    fig = learning_curves_figure(records)
    return None if fig is None else _save(fig, path)


def learning_curves_figure(records: list[dict]) -> Any:
    """The learning-curves ``matplotlib.figure.Figure`` (Agg canvas), or None (nothing to plot, or no
    matplotlib): loss (train and test) and accuracy against epoch from metrics.jsonl rows, integer epoch ticks.

    Each record may carry ``epoch``, ``train_loss``, ``test_loss``, ``test_accuracy`` (and
    ``train_accuracy``); missing or None values are skipped, series with no values are not drawn,
    and the accuracy panel is drawn only when some accuracy exists (regression and LM runs get the
    loss panel alone). Records without ``epoch`` are placed by position (1, 2, ...).

    Args:
        records: the metrics rows, in order.
    """
    records = list(records)
    if not all(isinstance(r, dict) for r in records):
        raise TypeError("plot_learning_curves expects a list of dicts (metrics.jsonl rows)")
    xs = [_number(r.get("epoch", i + 1)) for i, r in enumerate(records)]
    xs = [i + 1 if math.isnan(x) else x for i, x in enumerate(xs)]

    def series(key: str) -> tuple[list[float], list[float]] | None:
        pts = [(x, _number(r.get(key))) for x, r in zip(xs, records)]
        pts = [(x, y) for x, y in pts if not math.isnan(y)]
        return ([x for x, _ in pts], [y for _, y in pts]) if pts else None

    losses = {label: series(key) for key, label in (("train_loss", "train"), ("test_loss", "test"))}
    accs = {label: series(key) for key, label in (("train_accuracy", "train"), ("test_accuracy", "test"))}
    losses = {k: v for k, v in losses.items() if v is not None}
    accs = {k: v for k, v in accs.items() if v is not None}
    mpl = _plotting("plot_learning_curves", "loss or accuracy values", bool(losses or accs))
    if mpl is None:
        return None
    Figure, FigureCanvasAgg = mpl
    from matplotlib.ticker import MaxNLocator

    panels = [(ylabel, curves) for ylabel, curves in (("loss", losses), ("accuracy", accs)) if curves]
    fig = Figure(figsize=(5.5 * len(panels), 4.0))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    colors = {"train": "tab:blue", "test": "tab:orange"}
    for ax, (ylabel, curves) in zip(axes, panels):
        for label, (x, y) in curves.items():
            ax.plot(x, y, marker="o" if len(x) < 30 else None, markersize=3, label=label, color=colors[label])
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers: no 1.5 tick
        ax.set_ylabel(ylabel)
        ax.set_title(f"{ylabel} vs epoch")
        ax.grid(True, alpha=0.3)
        ax.legend()
    return fig


def plot_grad_flow(history: list[dict[str, float]], path: str | os.PathLike,
                   epochs: list[int] | None = None) -> str | None:
    """Plot per-layer gradient norms and save a PNG (:func:`grad_flow_figure` draws it; same arguments).

    Returns:
        ``path`` as a string; None when ``history`` is empty or matplotlib is not installed.
    """
    fig = grad_flow_figure(history, epochs)
    return None if fig is None else _save(fig, path)


def grad_flow_figure(history: list[dict[str, float]], epochs: list[int] | None = None) -> Any:
    """The gradient-flow ``matplotlib.figure.Figure`` (Agg canvas), or None (no data, or no matplotlib):
    per-layer gradient norms (log scale) with layers in order along x, labelled with their keys, one
    line per epoch, coloured from early (dark) to late (light), integer epoch ticks on the colour bar.

    Args:
        history: one dict per epoch, layer label -> gradient norm (the Trainer's labels are the module
            names with their class, :func:`dtrain.train.monitor.layer_labels`). Layers are the union of
            all keys in first-seen order; a layer missing from an epoch (or with a zero norm, which a log
            axis cannot show) leaves a gap in that epoch's line.
        epochs: the epoch number of each history entry (default 1, 2, ...).
    """
    history = list(history)
    if not all(isinstance(h, dict) for h in history):
        raise TypeError("plot_grad_flow expects a list of {layer: gradient norm} dicts")
    if epochs is None:
        epochs = list(range(1, len(history) + 1))
    elif len(epochs) != len(history):
        raise ValueError(f"plot_grad_flow: epochs has {len(epochs)} entries but history has {len(history)}")
    layers = list(dict.fromkeys(name for h in history for name in h))
    mpl = _plotting("plot_grad_flow", "gradient norms", bool(layers))
    if mpl is None:
        return None
    Figure, FigureCanvasAgg = mpl
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    values = np.array([[_number(h.get(layer)) for layer in layers] for h in history])
    values[~(values > 0)] = np.nan  # log scale: zero/negative/missing become gaps
    fig = Figure(figsize=(max(6.0, 0.35 * len(layers) + 2.0), 4.5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    cmap = colormaps["viridis"]
    lo, hi = min(epochs), max(epochs)
    norm = Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1)
    x = np.arange(len(layers))
    for epoch, row in zip(epochs, values):
        ax.plot(x, row, marker="o", markersize=3, linewidth=1.2, color=cmap(norm(epoch)), label=f"epoch {epoch}")
    if np.any(np.isfinite(values)):  # a log axis with no positive data would warn
        ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels(layers, rotation=90 if len(layers) > 6 else 0, fontsize=8)
    ax.set_xlim(-0.5, len(layers) - 0.5)
    ax.set_xlabel("layer (registration order)")
    ax.set_ylabel("gradient L2 norm")
    ax.set_title("gradient flow")
    ax.grid(True, which="major", alpha=0.3)
    if len(history) <= 8:
        ax.legend(fontsize=8)
    else:
        from matplotlib.ticker import MaxNLocator

        fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="epoch", ticks=MaxNLocator(integer=True))
    return fig
