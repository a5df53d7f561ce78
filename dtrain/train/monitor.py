"""Training monitors: gradient norms (per parameter, per layer, total), weight statistics,
activation statistics with dead-ReLU detection, and the PNG plots the Trainer writes to ``--out``.

Everything here only reads the model. Numbers are computed on the parameters' own device (NumPy or
CuPy, via ``get_array_module``) in float64, and come back as Python floats with one device-to-host
copy per call, so calling a monitor once per epoch costs a few reductions and one synchronisation.

Matplotlib is optional and imported only inside the plot functions. They draw on a
``matplotlib.figure.Figure`` with the Agg canvas directly, never through pyplot, so they neither need
a display nor touch the backend an interactive user has selected; without matplotlib they log one
warning and return None.

>>> monitor = ActivationMonitor(model)
>>> with monitor.recording():
...     model(x)
>>> monitor.dead_relu_fraction()          # {"1": 0.25, ...}
>>> layer_grad_norms(model)               # after loss.backward(): {"0": 0.8, "2": 0.1}
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from ..autograd.tensor import Tensor
from ..backend import get_array_module
from ..nn.module import Module

__all__ = [
    "ActivationMonitor",
    "grad_norms",
    "layer_grad_norms",
    "plot_grad_flow",
    "plot_learning_curves",
    "summarize_layers",
    "total_grad_norm",
    "weight_stats",
]

logger = logging.getLogger("dtrain")

ROOT_NAME = "(root)"  # how the model itself (the empty dotted prefix) is named in every report
_RELU_CLASS_NAMES = frozenset({"ReLU"})


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def _check_module(model: Any, caller: str) -> None:
    if not isinstance(model, Module):
        raise TypeError(f"{caller} expects a dtrain.nn.Module, got {type(model).__name__}")


def _array(value: Any) -> Any:
    return value.data if isinstance(value, Tensor) else value


def _sum_squares(a: Any) -> Any:
    """Sum of squares as a 0-d float64 array on ``a``'s device (float64 so fp16/bf16 cannot overflow)."""
    xp = get_array_module(a)
    a64 = a.astype(np.float64, copy=False)
    return xp.sum(a64 * a64)


def _to_floats(scalars: Sequence[Any]) -> list[float]:
    """0-d device arrays -> Python floats, with one device-to-host copy instead of one per value."""
    if not scalars:
        return []
    xp = get_array_module(*scalars)
    if xp is not np:
        try:
            return [float(v) for v in xp.stack(list(scalars)).tolist()]
        except (TypeError, ValueError):  # a model spread over several devices: copy one by one
            pass
    return [float(v) for v in scalars]


def _display_name(name: str) -> str:
    return name if name else ROOT_NAME


def _layer_of(param_name: str) -> str:
    """Module prefix of a dotted parameter name: "layers.1.linear1.bias" -> "layers.1.linear1"."""
    return _display_name(param_name.rpartition(".")[0])


def _grads(model: Module) -> list[tuple[str, Any]]:
    return [(name, _array(p.grad)) for name, p in model.named_parameters() if p.grad is not None]


# ----------------------------------------------------------------------------------------------
# gradients and weights
# ----------------------------------------------------------------------------------------------


def grad_norms(model: Module) -> dict[str, float]:
    """L2 norm of each parameter's gradient, keyed by parameter name in registration order.

    Parameters whose ``.grad`` is None (frozen, or not used by the last forward) are left out.

    >>> loss.backward(); grad_norms(model)
    {'0.weight': 0.41, '0.bias': 0.12, '2.weight': 0.93, '2.bias': 0.30}
    """
    _check_module(model, "grad_norms")
    grads = _grads(model)
    squares = _to_floats([_sum_squares(g) for _, g in grads])
    return {name: math.sqrt(s) for (name, _), s in zip(grads, squares)}


def layer_grad_norms(model: Module) -> dict[str, float]:
    """Gradient flow: the L2 norm over each layer's parameter gradients, layers in registration order.

    A layer is the module prefix of the parameter names ("0" for "0.weight" and "0.bias"; parameters
    registered on the model itself are reported under ``"(root)"``). Layers none of whose parameters
    has a gradient are left out. Vanishing gradients show up as norms that fall by orders of magnitude
    from the last layer towards the first.

    >>> layer_grad_norms(model)
    {'0': 0.43, '2': 0.98}
    """
    _check_module(model, "layer_grad_norms")
    grads = _grads(model)
    squares = _to_floats([_sum_squares(g) for _, g in grads])
    per_layer: dict[str, float] = {}
    for (name, _), s in zip(grads, squares):
        layer = _layer_of(name)
        per_layer[layer] = per_layer.get(layer, 0.0) + s
    return {layer: math.sqrt(s) for layer, s in per_layer.items()}


def total_grad_norm(model: Module) -> float:
    """L2 norm of all gradients taken together (what ``clip_grad_norm_`` compares to max_norm);
    0.0 when no parameter has a gradient."""
    _check_module(model, "total_grad_norm")
    return math.sqrt(sum(_to_floats([_sum_squares(g) for _, g in _grads(model)])))


def weight_stats(model: Module) -> dict[str, dict[str, float]]:
    """Per parameter: ``{"mean", "std", "norm", "max_abs"}`` of its values (std is the population
    standard deviation, NumPy's default ddof=0), keyed by parameter name in registration order.

    >>> weight_stats(model)["0.weight"]
    {'mean': -0.003, 'std': 0.29, 'norm': 2.3, 'max_abs': 0.5}
    """
    _check_module(model, "weight_stats")
    names, scalars = [], []
    for name, p in model.named_parameters():
        data = _array(p.data)
        xp = get_array_module(data)
        a = data.astype(np.float64, copy=False)
        if a.size == 0:
            continue
        names.append(name)
        scalars += [xp.mean(a), xp.std(a), xp.sqrt(xp.sum(a * a)), xp.max(xp.abs(a))]
    values = _to_floats(scalars)
    keys = ("mean", "std", "norm", "max_abs")
    return {name: dict(zip(keys, values[4 * i:4 * i + 4])) for i, name in enumerate(names)}


def summarize_layers(model: Module) -> list[dict[str, Any]]:
    """One row per module that owns parameters or has no children: ``{"name", "type", "num_params"}``
    (num_params counts the module's own parameters, not its children's), in ``named_modules`` order.

    >>> summarize_layers(nn.Sequential(nn.Linear(4, 2), nn.ReLU()))
    [{'name': '0', 'type': 'Linear', 'num_params': 10}, {'name': '1', 'type': 'ReLU', 'num_params': 0}]
    """
    _check_module(model, "summarize_layers")
    rows = []
    for name, m in model.named_modules():
        own = sum(int(p.data.size) for p in m._parameters.values() if p is not None)
        has_children = any(True for _ in m.children())
        if own or not has_children:
            rows.append({"name": _display_name(name), "type": type(m).__name__, "num_params": own})
    return rows


# ----------------------------------------------------------------------------------------------
# activations
# ----------------------------------------------------------------------------------------------


class _RunningStats:
    """Mean, variance, zero count (and, for ReLUs, which units ever fired) over every output a module
    produced while recording. Kept as device arrays, so recording a forward never synchronises; the
    moments are merged with Chan et al.'s pairwise update, which does not cancel catastrophically."""

    __slots__ = ("alive", "count", "dead_ok", "m2", "mean", "zeros")

    def __init__(self) -> None:
        self.count = 0
        self.mean: Any = 0.0
        self.m2: Any = 0.0
        self.zeros: Any = 0
        self.alive: Any = None  # bool array over the unit dims (all but batch dim 0)
        self.dead_ok = True  # False once the unit shape changed between calls: dead fraction undefined

    def add(self, out: Any, track_dead: bool) -> None:
        xp = get_array_module(out)
        n = int(out.size)
        if n == 0:
            return
        a = out.astype(np.float64, copy=False)
        mean = xp.mean(a)
        m2 = xp.sum((a - mean) ** 2)
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta * delta * (self.count * n / total)
        self.count = total
        self.zeros = self.zeros + xp.count_nonzero(out == 0)
        if track_dead and self.dead_ok and out.ndim >= 1:
            alive = xp.any(out != 0, axis=0)
            if self.alive is None:
                self.alive = alive
            elif self.alive.shape == alive.shape:
                self.alive = self.alive | alive
            else:
                self.dead_ok, self.alive = False, None

    def result(self) -> dict[str, float] | None:
        if self.count == 0:
            return None
        xp = get_array_module(self.mean, self.m2, self.zeros)
        scalars = [xp.asarray(self.mean), xp.asarray(self.m2), xp.asarray(self.zeros)]
        if self.alive is not None:
            scalars.append(xp.count_nonzero(self.alive))
        values = _to_floats(scalars)
        out = {
            "mean": values[0],
            "std": math.sqrt(max(values[1], 0.0) / self.count),
            "zero_fraction": values[2] / self.count,
        }
        if self.alive is not None:
            units = max(int(self.alive.size), 1)
            out["dead_fraction"] = 1.0 - values[3] / units
        return out


class ActivationMonitor:
    """Statistics of module outputs during chosen forward passes.

    Attaches a forward hook to every leaf module (a module without children) of ``model``, or, with
    ``kinds``, to every module that is an instance of one of those classes (class names as strings
    also match). The hooks do nothing unless recording, so the monitor can stay attached all of
    training; entering :meth:`recording` clears the previous statistics and records every forward
    inside it (several batches are pooled).

    Per hooked module (dotted name from ``named_modules``; the model itself is ``"(root)"``) it keeps
    the ``mean``, ``std`` (population) and ``zero_fraction`` of the output (a Tensor or array; of a
    tuple output, its first element). For ReLU modules it also keeps ``dead_fraction``: the fraction
    of units (positions over all dims but batch dim 0) that were zero for every recorded sample.

    >>> with ActivationMonitor(model) as monitor:   # detaches its hooks on exit
    ...     with monitor.recording():
    ...         model(x_batch)
    ...     monitor.stats()["1"]
    {'mean': 0.21, 'std': 0.33, 'zero_fraction': 0.52, 'dead_fraction': 0.06}
    """

    def __init__(self, model: Module, kinds: type | str | Iterable[type | str] | None = None):
        _check_module(model, "ActivationMonitor")
        self._kinds = self._parse_kinds(kinds)
        self._recording = False
        self._handles: list[Any] = []
        self._stats: dict[str, _RunningStats] = {}
        self._relu_names: list[str] = []
        self._names: list[str] = []
        for name, module in model.named_modules():
            if not self._selected(module):
                continue
            name = _display_name(name)
            is_relu = type(module).__name__ in _RELU_CLASS_NAMES
            self._names.append(name)
            if is_relu:
                self._relu_names.append(name)
            self._handles.append(module.register_forward_hook(self._make_hook(name, is_relu)))

    @staticmethod
    def _parse_kinds(kinds: Any) -> tuple | None:
        if kinds is None:
            return None
        items = (kinds,) if isinstance(kinds, (type, str)) else tuple(kinds)
        bad = [k for k in items if not isinstance(k, (type, str))]
        if bad or not items:
            raise TypeError(f"ActivationMonitor: kinds must be Module classes or class names, got {kinds!r}")
        return items

    def _selected(self, module: Module) -> bool:
        if self._kinds is None:
            return not any(True for _ in module.children())
        for kind in self._kinds:
            if isinstance(kind, str) and type(module).__name__ == kind:
                return True
            if isinstance(kind, type) and isinstance(module, kind):
                return True
        return False

    def _make_hook(self, name: str, is_relu: bool):
        def hook(module: Module, inputs: tuple, output: Any) -> None:
            if not self._recording:
                return
            if isinstance(output, (tuple, list)):
                output = output[0] if output else None
            out = _array(output)
            if not (hasattr(out, "shape") and hasattr(out, "dtype")):
                return  # not an array output (e.g. a dict): nothing to summarise
            stats = self._stats.get(name)
            if stats is None:
                stats = self._stats[name] = _RunningStats()
            stats.add(out, is_relu)

        return hook

    @property
    def names(self) -> list[str]:
        """Names of the hooked modules, in ``named_modules`` order."""
        return list(self._names)

    @contextlib.contextmanager
    def recording(self) -> Iterator[ActivationMonitor]:
        """Record the forwards run inside this block (previous statistics are discarded)."""
        if not self._handles and self._names:
            raise RuntimeError("ActivationMonitor.recording(): the monitor was removed; create a new one")
        self._stats = {}
        self._recording = True
        try:
            yield self
        finally:
            self._recording = False

    def stats(self) -> dict[str, dict[str, float]]:
        """``{module name: {"mean", "std", "zero_fraction"[, "dead_fraction"]}}`` for every hooked
        module that produced an output during the last :meth:`recording`, in module order."""
        out = {}
        for name in self._names:
            running = self._stats.get(name)
            result = running.result() if running is not None else None
            if result is not None:
                out[name] = result
        return out

    def dead_relu_fraction(self) -> dict[str, float]:
        """``{ReLU module name: fraction of units zero for every recorded sample}``."""
        stats = self.stats()
        return {name: stats[name]["dead_fraction"] for name in self._relu_names
                if "dead_fraction" in stats.get(name, {})}

    def remove(self) -> None:
        """Detach every hook (idempotent). The last statistics stay readable."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._recording = False

    def __enter__(self) -> ActivationMonitor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "attached" if self._handles else "removed"
        return f"ActivationMonitor({len(self._names)} modules, {state})"


# ----------------------------------------------------------------------------------------------
# plots
# ----------------------------------------------------------------------------------------------

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


def _save(fig: Any, canvas_cls: Any, path: str | os.PathLike) -> str:
    """Write the figure as PNG atomically (temp file + rename), so a reader never sees half a file."""
    path = os.fspath(path)
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    canvas_cls(fig)
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
    """Plot loss (train and test) and accuracy against epoch from metrics.jsonl rows; save a PNG.

    Each record may carry ``epoch``, ``train_loss``, ``test_loss``, ``test_accuracy`` (and
    ``train_accuracy``); missing or None values are skipped, series with no values are not drawn,
    and the accuracy panel is drawn only when some accuracy exists (regression and LM runs get the
    loss panel alone). Records without ``epoch`` are placed by position (1, 2, ...).

    Args:
        records: the metrics rows, in order.
        path: where to write the PNG (parent folders are created).

    Returns:
        ``path`` as a string; None when there is nothing to plot or matplotlib is not installed.
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
    if not losses and not accs:
        logger.debug("plot_learning_curves: no loss or accuracy values to plot")
        return None
    mpl = _matplotlib()
    if mpl is None:
        return None
    Figure, FigureCanvasAgg = mpl

    panels = [(ylabel, curves) for ylabel, curves in (("loss", losses), ("accuracy", accs)) if curves]
    fig = Figure(figsize=(5.5 * len(panels), 4.0))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    colors = {"train": "tab:blue", "test": "tab:orange"}
    for ax, (ylabel, curves) in zip(axes, panels):
        for label, (x, y) in curves.items():
            ax.plot(x, y, marker="o" if len(x) < 30 else None, markersize=3, label=label, color=colors[label])
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{ylabel} vs epoch")
        ax.grid(True, alpha=0.3)
        ax.legend()
    return _save(fig, FigureCanvasAgg, path)


def plot_grad_flow(history: list[dict[str, float]], path: str | os.PathLike,
                   epochs: list[int] | None = None) -> str | None:
    """Plot per-layer gradient norms (log scale) with layers in order along x, one line per epoch,
    coloured from early (dark) to late (light); save a PNG.

    Args:
        history: one :func:`layer_grad_norms` dict per epoch. Layers are the union of all keys in
            first-seen order; a layer missing from an epoch (or with a zero norm, which a log axis
            cannot show) leaves a gap in that epoch's line.
        path: where to write the PNG (parent folders are created).
        epochs: the epoch number of each history entry (default 1, 2, ...).

    Returns:
        ``path`` as a string; None when ``history`` is empty or matplotlib is not installed.
    """
    history = list(history)
    if not all(isinstance(h, dict) for h in history):
        raise TypeError("plot_grad_flow expects a list of {layer: gradient norm} dicts")
    if epochs is None:
        epochs = list(range(1, len(history) + 1))
    elif len(epochs) != len(history):
        raise ValueError(f"plot_grad_flow: epochs has {len(epochs)} entries but history has {len(history)}")
    layers = list(dict.fromkeys(name for h in history for name in h))
    if not layers:
        logger.debug("plot_grad_flow: no gradient norms to plot")
        return None
    mpl = _matplotlib()
    if mpl is None:
        return None
    Figure, FigureCanvasAgg = mpl
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    values = np.array([[_number(h.get(layer)) for layer in layers] for h in history])
    values[~(values > 0)] = np.nan  # log scale: zero/negative/missing become gaps
    fig = Figure(figsize=(max(6.0, 0.35 * len(layers) + 2.0), 4.5))
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
        fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="epoch")
    return _save(fig, FigureCanvasAgg, path)
