"""Parameter: a leaf Tensor that a Module registers as trainable state."""

from __future__ import annotations

import numpy as np

from ..autograd.tensor import Tensor
from ..backend import get_array_module, is_float_dtype

__all__ = ["Parameter"]


class Parameter(Tensor):
    """A Tensor that, assigned as a Module attribute, is listed by ``parameters()``.

    Args:
        data: a backend array (NumPy/CuPy) or a Tensor whose array is taken (not copied).
        requires_grad: whether optimizers train it (default True; must be a float dtype then).

    >>> p = Parameter(np.zeros((2, 3), np.float32)); p.requires_grad
    True
    """

    __slots__ = ()

    def __init__(self, data, requires_grad: bool = True):
        if isinstance(data, Tensor):
            data = data.data
        elif not hasattr(data, "__array_interface__") and not hasattr(data, "__cuda_array_interface__"):
            data = np.asarray(data)
        if requires_grad and not is_float_dtype(data.dtype):
            raise TypeError(f"a Parameter that requires grad must be floating point, got dtype {data.dtype}")
        if not getattr(data.flags, "writeable", True):  # e.g. a view of a read-only buffer
            data = get_array_module(data).array(data)
        super().__init__(data, requires_grad=requires_grad)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()
