"""Helpers shared by the primitives: operand conversion, axes, scatter-add, tangent sums."""

from __future__ import annotations

import numbers

import numpy as np

from ...backend import accumulation_dtype, get_array_module, get_default_dtype, is_float_dtype
from ..tensor import Tensor


def xp_of(a):
    """numpy or cupy for an array."""
    return get_array_module(a)


class ScalarArrays(dict):
    """Read-only 0-d NumPy arrays holding one value, by dtype: ``ZERO[x.dtype]``.

    A Python number as a ufunc operand is converted on every call (about 0.3 µs, as much as the whole
    operation on a small array); an array of the operand's own dtype is not, and gives the same bits (the
    number would be cast to that dtype). NumPy operands only: CuPy takes Python numbers, not these."""

    def __init__(self, value):
        super().__init__()
        self.value = value

    def __missing__(self, dtype):
        a = np.array(self.value, dtype=dtype)
        a.flags.writeable = False
        self[dtype] = a
        return a


ZERO, ONE = ScalarArrays(0), ScalarArrays(1)


def as_tensor(x, like: Tensor | None = None) -> Tensor:
    """A Tensor for an operand: Tensors pass through; numbers and arrays become constants.

    A Python number takes ``like``'s dtype (so float32 stays float32), unless ``like`` is an integer
    tensor and the number is a float, which then takes the default floating dtype.
    """
    if isinstance(x, Tensor):
        return x
    if isinstance(x, (numbers.Number, np.generic)):
        if like is not None:
            dt = like.dtype
            if not is_float_dtype(dt) and isinstance(x, (float, np.floating)):
                dt = get_default_dtype()
            elif dt == np.bool_ and not isinstance(x, (bool, np.bool_)):
                dt = np.dtype(np.int64) if isinstance(x, numbers.Integral) else get_default_dtype()
            xp = like.xp
            return Tensor._make(xp.asarray(x, dtype=dt), False, None)
        return Tensor._make(np.asarray(x, dtype=get_default_dtype() if isinstance(x, float) else None), False, None)
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return Tensor._make(x, False, None)
    if isinstance(x, (list, tuple)):
        arr = np.asarray(x)
        if arr.dtype.kind == "f":
            arr = arr.astype(like.dtype if like is not None and is_float_dtype(like.dtype) else get_default_dtype())
        if like is not None and like.xp is not np:
            arr = like.xp.asarray(arr)
        return Tensor._make(arr, False, None)
    raise TypeError(f"unsupported operand of type {type(x).__name__}: expected a Tensor, array or number")


def as_tensor_args(values) -> list:
    """The entries of a sequence of Tensors (for concat, stack), or TypeError naming the first that is not one."""
    out = []
    for i, v in enumerate(values):
        if not isinstance(v, Tensor):
            raise TypeError(f"expected a sequence of Tensors, entry {i} is {type(v).__name__}")
        out.append(v)
    return out


def pair(a, b) -> tuple[Tensor, Tensor]:
    """Both operands of a binary op as Tensors (numbers take the other operand's dtype)."""
    if isinstance(a, Tensor):
        return a, as_tensor(b, a)
    if isinstance(b, Tensor):
        return as_tensor(a, b), b
    raise TypeError(f"expected at least one Tensor operand, got {type(a).__name__} and {type(b).__name__}")


def norm_axes(axis, ndim: int) -> tuple[int, ...]:
    """Normalise an axis spec (None, int, tuple; negatives allowed) to a sorted tuple."""
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, (int, np.integer)):
        axis = (int(axis),)
    out = []
    for a in axis:
        a = int(a)
        if not -ndim <= a < max(ndim, 1) or (ndim == 0 and a not in (0, -1)):
            raise ValueError(f"axis {a} is out of range for a tensor with {ndim} dimensions")
        out.append(a % max(ndim, 1) if ndim else 0)
    if len(set(out)) != len(out):
        raise ValueError(f"repeated axis in {axis}")
    return tuple(sorted(out)) if ndim else ()


def keep_shape(shape: tuple, axes: tuple) -> tuple:
    """``shape`` with the reduced ``axes`` kept as size 1."""
    return tuple(1 if i in axes else n for i, n in enumerate(shape))


def expand_grad(g, in_shape: tuple, axes: tuple):
    """Broadcast a reduced gradient back over the reduced axes (a read-only view)."""
    xp = xp_of(g)
    return xp.broadcast_to(g.reshape(keep_shape(in_shape, axes)), in_shape)


def scatter_add(target, index, values) -> None:
    """target[index] += values, with repeated indices accumulated (NumPy and CuPy)."""
    xp = xp_of(target)
    if xp is np:
        np.add.at(target, index, values)
    else:
        import cupyx

        cupyx.scatter_add(target, index, values)


def tsum(*terms):
    """Sum of the tangent terms that are not None (None when all are)."""
    out = None
    for t in terms:
        if t is None:
            continue
        out = t if out is None else out + t
    return out


acc_dtype = accumulation_dtype  # the ops' short name for dtrain.backend.accumulation_dtype
