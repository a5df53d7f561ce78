"""Mixed precision: ``with autocast("float16"):`` runs matmul, linear and conv2d in half precision.

Inside the context those three primitives cast their floating inputs (activations, weights, bias)
to the autocast dtype with the differentiable ``cast`` op and compute there; their outputs, and so
the activations that follow, are half. Everything else keeps the dtype it is given, and the ops
that reduce (softmax, log-softmax, cross-entropy, the norms, sums and means) accumulate half inputs in
float32 (``acc_dtype``). Parameters stay float32 ("master weights"): the cast's backward turns the
half gradient back into float32, so optimizers update float32 weights. Pair float16 with loss
scaling (``dtrain.train.loss_scale.LossScaler``) so small gradients do not underflow; bfloat16 has
float32's range and usually needs none.

The state is per thread: DDP's communication thread never sees it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from ..backend import is_float_dtype, is_half_dtype, resolve_dtype

__all__ = ["autocast", "autocast_dtype", "cast_inputs"]

class _AutocastState(threading.local):
    # A class default instead of getattr(local, "dtype", None): a missing attribute costs a caught
    # AttributeError, 0.4 us on every linear, matmul and conv2d call (1.4% of the tiny MLP's eager step).
    dtype = None


_state = _AutocastState()


def autocast_dtype():
    """The dtype matmul/linear/conv2d compute in on this thread (None: autocast is off)."""
    return _state.dtype


@contextlib.contextmanager
def autocast(dtype="float16", enabled: bool = True) -> Iterator[None]:
    """Compute matmul, linear and conv2d in ``dtype`` ("float16" or "bfloat16") inside the block."""
    if not enabled:
        yield
        return
    dt = resolve_dtype(dtype)
    if not is_half_dtype(dt):
        raise ValueError(f"autocast: dtype must be float16 or bfloat16, got {dt}")
    previous = autocast_dtype()
    _state.dtype = dt
    try:
        yield
    finally:
        _state.dtype = previous


def cast_inputs(*tensors):
    """The tensors cast to the autocast dtype when it is on (floating tensors only; None stays None)."""
    dt = autocast_dtype()
    if dt is None:
        return tensors
    from .ops import cast

    return tuple(cast(t, dt) if t is not None and hasattr(t, "dtype") and t.dtype != dt and is_float_dtype(t.dtype)
                 else t for t in tensors)
