"""Training monitors: gradient norms (per parameter, per layer, total), weight statistics,
activation statistics with dead-ReLU detection, and :class:`EpochMonitor`, which adds them to the
Trainer's metrics record once per epoch (the plots of them are in :mod:`dtrain.train.plots`).

Everything here only reads the model. Numbers are computed on the parameters' own device (NumPy or
CuPy, via ``get_array_module``) in float64, and come back as Python floats with one device-to-host
copy per call, so calling a monitor once per epoch costs a few reductions and one synchronisation.

>>> monitor = ActivationMonitor(model)
>>> with monitor.recording():
...     model(x)
>>> monitor.dead_relu_fraction()          # {"1": 0.25, ...}
>>> layer_grad_norms(model)               # after loss.backward(): {"0": 0.8, "2": 0.1}
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from ..autograd.tensor import Tensor
from ..backend import get_array_module
from ..nn.module import Module

__all__ = [
    "ActivationMonitor",
    "EpochMonitor",
    "grad_norms",
    "layer_grad_norms",
    "layer_labels",
    "summarize_layers",
    "total_grad_norm",
    "weight_stats",
]

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


def layer_labels(model: Module) -> dict[str, str]:
    """How plots name each layer: ``{layer name: "name (Class)"}`` for every module that owns parameters,
    keyed like :func:`layer_grad_norms`. A Sequential's layers are called "0", "3", "7": with the class
    ("0 (Conv2d)", "7 (Linear)") the gradient-flow plot says which layer is which; the model itself is
    "Class (root)".

    >>> layer_labels(nn.Sequential(nn.Linear(4, 2), nn.ReLU(), nn.Linear(2, 1)))
    {'0': '0 (Linear)', '2': '2 (Linear)'}
    """
    _check_module(model, "layer_labels")
    labels = {}
    for name, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)):
            kind = type(module).__name__
            labels[_display_name(name)] = f"{name} ({kind})" if name else f"{kind} {ROOT_NAME}"
    return labels


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
        own = sum(int(p.data.size) for p in m.parameters(recurse=False))
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

        hook.capture_inert = lambda: not self._recording  # a captured step may skip it while not recording
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


class EpochMonitor:
    """What the Trainer records about the model once per epoch: the gradient flow (layer gradient norms)
    of the epoch's last step, the dead-ReLU fraction of that step's forward, and the weight norm.

    >>> m = EpochMonitor(model)
    >>> with m.recording(last_batch):  # forward of the epoch's last batch
    ...     out = model(x)
    >>> m.capture_grads()               # after its backward and gradient sync
    >>> m.add_to(record, state)         # grad_norm, grad_norms, dead_relu, weight_norm
    """

    def __init__(self, model: Module):
        _check_module(model, "EpochMonitor")
        self.model = model
        self.activations = ActivationMonitor(model)
        self.grads: dict[str, float] | None = None
        self.labels = layer_labels(model)  # the gradient-flow plot's names for the layers

    def start_epoch(self) -> None:
        """Forget the previous epoch's gradient record."""
        self.grads = None

    def recording(self, active: bool):
        """A context that records activations when ``active`` (the epoch's last batch), else does nothing."""
        return self.activations.recording() if active else contextlib.nullcontext()

    def capture_grads(self) -> None:
        """Record the layer gradient norms of the step that just synchronised its gradients."""
        self.grads = layer_grad_norms(self.model)

    def add_to(self, record: dict, grad_flow: list) -> None:
        """Add this epoch's statistics to the metrics ``record`` (``grad_norms`` keyed by layer name); append
        the gradient flow to ``grad_flow`` keyed by :func:`layer_labels` (what grad_flow.png shows)."""
        if self.grads is not None:
            record["grad_norm"] = float(math.sqrt(sum(v * v for v in self.grads.values())))
            record["grad_norms"] = self.grads
            grad_flow.append({self.labels.get(name, name): norm for name, norm in self.grads.items()})
        dead = self.activations.dead_relu_fraction()
        if dead:
            record["dead_relu"] = dead
        params = [p for p in self.model.parameters() if p.requires_grad]
        record["weight_norm"] = float(math.sqrt(sum(float((p.data.astype(np.float64) ** 2).sum()) for p in params)))

    def close(self) -> None:
        """Remove the activation hooks."""
        self.activations.remove()
