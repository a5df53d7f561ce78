"""Gradient checking against central finite differences (float64).

One harness for every op: the outputs are projected on fixed random directions ``v`` so a single
backward gives the analytic gradient of ``sum(v * fn(x))``, which is compared element by element
with the central difference ``(f(x + eps e_j) - f(x - eps e_j)) / 2 eps``. Optionally the forward-mode
rule is checked too: ``sum(v * jvp(fn, x, u))`` against the numeric directional derivative along u.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..backend import get_array_module
from .forward_ad import jvp
from .function import no_grad
from .tensor import Tensor


class GradcheckError(AssertionError):
    """Analytic and numeric derivatives disagree (the message names input, index and values)."""


def _outputs(out) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _projected(fn, inputs, vs) -> float:
    with no_grad():
        outs = _outputs(fn(*inputs))
    total = 0.0
    for o, v in zip(outs, vs):
        if v is not None:
            total += float((o.data.astype(np.float64) * v).sum())
    return total


def gradcheck(fn: Callable, inputs: Sequence[Tensor] | Tensor, eps: float = 1e-6, atol: float = 1e-5,
              rtol: float = 1e-3, check_forward: bool = False, seed: int = 0) -> bool:
    """Check reverse-mode (and optionally forward-mode) derivatives of ``fn`` numerically.

    Args:
        fn: function of the input Tensors returning a Tensor or tuple of Tensors.
        inputs: the Tensors to call fn with; those with ``requires_grad`` are checked and must be
            float64 (float32 finite differences are too noisy to mean anything).
        eps, atol, rtol: step and tolerance; an entry passes if |analytic - numeric| <= atol + rtol*|numeric|.
        check_forward: also check the forward-mode rules (``jvp``).
        seed: seeds the random projection directions.

    Returns True, or raises GradcheckError naming the input, the worst index, and both values.
    """
    inputs, checked = _checked_inputs(inputs)
    rng = np.random.default_rng(seed)
    outs = _outputs(fn(*inputs))
    xp = get_array_module(inputs[checked[0]].data)
    vs = [xp.asarray(rng.standard_normal(o.shape)) if o.requires_grad else None for o in outs]
    analytic = _analytic_grads(inputs, checked, outs, vs)
    numeric = {}
    for i in checked:
        x = inputs[i]
        numeric[i] = _numeric_grad(fn, inputs, x, vs, eps)
        a = _host(analytic[i])
        if a.shape != x.shape:
            raise GradcheckError(f"gradcheck: gradient of input {i} has shape {a.shape}, input has {x.shape}")
        _compare(a, numeric[i], atol, rtol, f"input {i}")
    if check_forward:
        _check_forward_mode(fn, inputs, checked, vs, numeric, rng, atol, rtol)
    return True


def _checked_inputs(inputs) -> tuple[tuple[Tensor, ...], list[int]]:
    """The inputs as a tuple of Tensors and the positions of those to check (float64, requires_grad)."""
    inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    inputs = tuple(x if isinstance(x, Tensor) else Tensor(x) for x in inputs)
    checked = [i for i, x in enumerate(inputs) if x.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input has requires_grad=True, so there is nothing to check")
    for i in checked:
        if inputs[i].dtype != np.float64:
            raise ValueError(f"gradcheck: input {i} has dtype {inputs[i].dtype}; use float64 inputs")
    return inputs, checked


def _analytic_grads(inputs, checked: list[int], outs: tuple, vs: list) -> dict:
    """d sum(v * out) / d input for each checked input, by one backward; the inputs' .grad is left as it was."""
    saved_grads = {i: inputs[i].grad for i in checked}
    for i in checked:
        inputs[i].grad = None
    try:
        total = None
        for o, v in zip(outs, vs):
            if v is not None:
                term = (o * Tensor._make(v.astype(o.dtype), False, None)).sum()
                total = term if total is None else total + term
        if total is not None:
            total.backward()
        return {i: (inputs[i].grad if inputs[i].grad is not None else inputs[i].xp.zeros_like(inputs[i].data))
                for i in checked}
    finally:
        for i in checked:
            inputs[i].grad = saved_grads[i]


def _numeric_grad(fn, inputs, x: Tensor, vs: list, eps: float) -> np.ndarray:
    """Central differences of sum(v * fn(inputs)) with respect to each entry of ``x`` (one of the inputs)."""
    num = np.zeros(x.size)
    for j in range(x.size):
        idx = np.unravel_index(j, x.shape)  # perturb the input in place, whatever its layout
        orig = float(x.data[idx])
        x.data[idx] = orig + eps
        f_plus = _projected(fn, inputs, vs)
        x.data[idx] = orig - eps
        f_minus = _projected(fn, inputs, vs)
        x.data[idx] = orig
        num[j] = (f_plus - f_minus) / (2 * eps)
    return num.reshape(x.shape)


def _check_forward_mode(fn, inputs, checked, vs, numeric, rng, atol, rtol) -> None:
    """sum(v * jvp(fn, inputs, u)) against the numeric directional derivative along random u."""
    xp = get_array_module(inputs[checked[0]].data)
    tangents = [xp.asarray(rng.standard_normal(x.shape)) if k in checked else xp.zeros_like(x.data)
                for k, x in enumerate(inputs)]
    _, tans = jvp(fn, list(inputs), tangents)
    fwd = sum(float((_host(t.data) * _host(v)).sum()) for t, v in zip(_outputs(tans), vs) if v is not None)
    num_dir = sum(float((numeric[i] * _host(tangents[i])).sum()) for i in checked)
    _compare(np.array([fwd]), np.array([num_dir]), atol, rtol, "forward-mode (jvp) directional derivative")


def _host(a) -> np.ndarray:
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def _compare(analytic: np.ndarray, numeric: np.ndarray, atol: float, rtol: float, what: str) -> None:
    if analytic.size == 0:
        return
    err = np.abs(analytic - numeric) - (atol + rtol * np.abs(numeric))
    bad = ~(err <= 0)  # NaNs count as failures
    if bad.any():
        worst = np.unravel_index(int(np.nanargmax(np.where(bad, np.nan_to_num(err, nan=np.inf), -np.inf))),
                                 analytic.shape)
        raise GradcheckError(
            f"gradcheck failed for {what} at index {tuple(int(k) for k in worst)}: analytic "
            f"{analytic[worst]!r} vs numeric {numeric[worst]!r} "
            f"({int(bad.sum())} of {analytic.size} entries outside atol={atol}, rtol={rtol})"
        )
