"""Creating tensors: ``tensor`` from data, filled ones (``zeros``, ``ones``, ``full``, ``*_like``), random
ones drawn from a seeded generator (``randn``, ``rand``) and ``arange``.

dtype rules follow torch: Python floats take the default dtype (float32 unless
``set_default_dtype`` changed it), ints int64, bools bool; arrays keep their own dtype.
"""

from __future__ import annotations

import numbers

import numpy as np

from .. import backend
from ..backend import as_device, device_of, resolve_dtype
from .tensor import Tensor, shape_args

__all__ = ["arange", "full", "ones", "ones_like", "rand", "randn", "tensor", "zeros", "zeros_like"]


def _infer_dtype(data):
    """torch's rule: Python floats -> the default dtype, ints -> int64, bools -> bool."""
    arr = np.asarray(data)
    if arr.dtype.kind == "f":
        return backend.get_default_dtype()
    if arr.dtype.kind in "iu":
        return np.dtype(np.int64)
    if arr.dtype.kind == "b":
        return np.dtype(bool)
    raise ValueError(f"cannot make a tensor from data of dtype {arr.dtype}: expected numbers or bools")


def tensor(data, requires_grad: bool = False, dtype=None, device=None) -> Tensor:
    """Create a leaf tensor from a list, scalar, NumPy/CuPy array or Tensor (data is copied).

    Args:
        data: the values. NumPy/CuPy arrays keep their dtype; Python floats get the default dtype
            (float32 unless ``set_default_dtype`` changed it), Python ints int64.
        requires_grad: record operations on it so backward fills ``.grad`` (floating dtypes only).
        dtype: optional dtype (name, NumPy dtype, or ``dtrain.bfloat16``).
        device: "cpu" (default: where the data already is), "cuda" or "cuda:i".

    >>> tensor([1.0, 2.0], requires_grad=True).shape
    (2,)
    """
    if isinstance(data, Tensor):
        data = data.data
    if dtype is not None:
        dt = resolve_dtype(dtype)
    elif hasattr(data, "dtype") and hasattr(data, "shape"):
        dt = resolve_dtype(data.dtype)
    else:
        dt = _infer_dtype(data)
    if device is None:
        dev = device_of(data) if hasattr(data, "shape") else backend.CPU
    else:
        dev = as_device(device)
    if dev.type == "cpu":
        if hasattr(data, "__cuda_array_interface__"):
            data = data.get()
        arr = np.array(data, dtype=dt, copy=True)
    else:
        with dev.context():
            arr = dev.xp.array(data, dtype=dt, copy=True)
    return Tensor(arr, requires_grad=requires_grad)


def _filled(shape: tuple, value, dtype, device, requires_grad):
    dev = as_device(device)
    dt = resolve_dtype(dtype) if dtype is not None else backend.get_default_dtype()
    with dev.context():
        arr = dev.xp.full(shape, value, dtype=dt)
    return Tensor(arr, requires_grad=requires_grad)


def zeros(*shape, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """A tensor of zeros (default dtype unless given)."""
    return _filled(shape_args(shape), 0, dtype, device, requires_grad)


def ones(*shape, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """A tensor of ones (default dtype unless given)."""
    return _filled(shape_args(shape), 1, dtype, device, requires_grad)


def full(shape, fill_value, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """A tensor of ``shape`` filled with ``fill_value``."""
    return _filled((int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(n) for n in shape),
                   fill_value, dtype, device, requires_grad)


def zeros_like(t: Tensor, dtype=None, requires_grad: bool = False) -> Tensor:
    return zeros(t.shape, dtype=dtype or t.dtype, device=t.device, requires_grad=requires_grad)


def ones_like(t: Tensor, dtype=None, requires_grad: bool = False) -> Tensor:
    return ones(t.shape, dtype=dtype or t.dtype, device=t.device, requires_grad=requires_grad)


def randn(*shape, dtype=None, device=None, requires_grad: bool = False, generator=None) -> Tensor:
    """Standard-normal samples from ``generator`` (default: ``dtrain.manual_seed``'s)."""
    gen = generator or backend.default_generator
    dt = resolve_dtype(dtype) if dtype is not None else backend.get_default_dtype()
    arr = gen.normal(shape_args(shape), dt, device).astype(dt)
    return Tensor(arr, requires_grad=requires_grad)


def rand(*shape, dtype=None, device=None, requires_grad: bool = False, generator=None) -> Tensor:
    """Uniform [0, 1) samples from ``generator`` (default: ``dtrain.manual_seed``'s)."""
    gen = generator or backend.default_generator
    dt = resolve_dtype(dtype) if dtype is not None else backend.get_default_dtype()
    arr = gen.uniform(shape_args(shape), dt, device).astype(dt)
    return Tensor(arr, requires_grad=requires_grad)


def arange(start, stop=None, step=1, dtype=None, device=None) -> Tensor:
    """Evenly spaced values, like numpy.arange (int64 for integer arguments)."""
    if stop is None:
        start, stop = 0, start
    ints = all(isinstance(v, numbers.Integral) for v in (start, stop, step))
    dt = resolve_dtype(dtype) if dtype is not None else (np.dtype(np.int64) if ints else backend.get_default_dtype())
    dev = as_device(device)
    with dev.context():
        return Tensor(dev.xp.arange(start, stop, step, dtype=dt))
