"""Gradient clipping: ``clip_grad_norm_`` and ``clip_grad_value_`` (torch's semantics).

Both work on ``.grad`` arrays in place (parameters whose grad is None are skipped) and run on
NumPy or CuPy alike. This module imports nothing else from ``dtrain.nn`` so that ``dtrain.optim``
can re-export it without pulling in the layers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from ...autograd.tensor import Tensor
from ...backend import get_array_module

__all__ = ["clip_grad_norm_", "clip_grad_value_"]


def _grads(parameters: Tensor | Iterable[Tensor]) -> list:
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    grads = []
    for i, p in enumerate(parameters):
        if not isinstance(p, Tensor):
            raise TypeError(f"parameters[{i}] is a {type(p).__name__}, expected a dtrain Tensor")
        if p.grad is not None:
            grads.append(p.grad)
    return grads


def vector_norm(xp, g, p: float):
    """The p-norm of one gradient array, as a 0-d array on its device (no host sync); half arrays in float32.
    (Also ZeroRedundancyOptimizer's ``max_grad_norm``, on its shards.)"""
    flat = g.reshape(-1)
    if flat.dtype.itemsize < 4:
        flat = flat.astype(xp.float32)  # a float16/bfloat16 sum of squares overflows at 65504
    if flat.size == 0:
        return xp.zeros((), dtype=flat.dtype)
    if p == math.inf:
        return xp.max(xp.abs(flat))
    return xp.linalg.norm(flat, ord=p)


def clip_grad_norm_(parameters: Tensor | Iterable[Tensor], max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False) -> float:
    """Scale the gradients in place so that their total norm is at most ``max_norm``.

    The total norm is that of all gradients concatenated into one vector. When it exceeds
    ``max_norm`` every gradient is multiplied by ``max_norm / (total_norm + 1e-6)`` (torch's rule,
    so the result lands just under ``max_norm``); otherwise nothing changes.

    Args:
        parameters: one Tensor or an iterable of Tensors; those whose ``.grad`` is None are skipped.
        max_norm: the largest allowed norm (> 0; ``math.inf`` only measures the norm).
        norm_type: p of the p-norm (> 0), or ``math.inf``/``"inf"`` for the largest absolute value.
        error_if_nonfinite: raise RuntimeError when the total norm is NaN or infinite, instead of
            scaling by it (which, as in torch, turns the gradients into zeros/NaNs).

    Returns:
        The total norm of the gradients before clipping, as a Python float (0.0 with no gradients).

    >>> total = clip_grad_norm_(model.parameters(), max_norm=1.0)  # doctest: +SKIP
    """
    max_norm = _positive("max_norm", max_norm, allow_inf=True)
    p = _positive("norm_type", norm_type, allow_inf=True)
    grads = _grads(parameters)
    if not grads:
        return 0.0
    xp = get_array_module(grads[0])
    # Per-tensor norms stay on the device; the one float() below is the only host sync.
    norms = xp.stack([vector_norm(xp, g, p).astype(xp.float64) for g in grads])
    total = float(xp.max(norms) if p == math.inf else xp.linalg.norm(norms, ord=p))
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(
            f"the total norm of order {norm_type} of the gradients is non-finite ({total}), so they cannot be "
            "clipped; pass error_if_nonfinite=False to scale by it anyway"
        )
    coef = max_norm / (total + 1e-6)
    if not coef >= 1.0:  # written so that a NaN norm scales too, like torch's clamp
        for g in grads:
            g *= coef
    return total


def clip_grad_value_(parameters: Tensor | Iterable[Tensor], clip_value: float) -> None:
    """Clamp every gradient element into ``[-clip_value, clip_value]``, in place.

    Args:
        parameters: one Tensor or an iterable of Tensors; those whose ``.grad`` is None are skipped.
        clip_value: the largest allowed absolute value (> 0).
    """
    clip_value = _positive("clip_value", clip_value, allow_inf=False)
    for g in _grads(parameters):
        get_array_module(g).clip(g, -clip_value, clip_value, out=g)


def _positive(name: str, value, allow_inf: bool) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if isinstance(value, bool) or not (v > 0) or (v == math.inf and not allow_inf):
        expected = "a positive number (or inf)" if allow_inf else "a positive finite number"
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return v
