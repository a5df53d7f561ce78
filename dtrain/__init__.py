"""dtrain: distributed data-parallel training over MPI, on its own autograd engine.

    import dtrain as dt
    x = dt.tensor([[1.0, 2.0]], requires_grad=True)
    (x * x).sum().backward()        # x.grad == [[2., 4.]]

The public API is summarised in docs/architecture.md; dtrain never imports torch.
"""

from __future__ import annotations

import numpy as _np

from . import autograd, backend
from . import env as _env
from .autograd import (
    Function,
    Tensor,
    arange,
    checkpoint,
    enable_grad,
    full,
    is_grad_enabled,
    no_grad,
    ones,
    ones_like,
    rand,
    randn,
    set_grad_enabled,
    tensor,
    zeros,
    zeros_like,
)
from .autograd.ops import (
    abs,
    amax,
    amin,
    clip,
    concat,
    exp,
    log,
    log_softmax,
    logsumexp,
    matmul,
    mean,
    relu,
    sigmoid,
    softmax,
    sqrt,
    stack,
    sum,
    tanh,
    where,
)
from .backend import Device, Generator, get_array_module, get_default_dtype, manual_seed, set_default_dtype
from .backend import as_device as device

_env.tune_allocator()  # glibc keeps freed memory for the next step's activations (DTRAIN_MALLOC=system: off)

__version__ = "0.1.0"

float16 = _np.dtype(_np.float16)
float32 = _np.dtype(_np.float32)
float64 = _np.dtype(_np.float64)
int32 = _np.dtype(_np.int32)
int64 = _np.dtype(_np.int64)
cat = concat

from . import (  # noqa: E402  (these build on the names above)
    data,
    models,
    nn,
    optim,
)

__all__ = [
    "Device", "Function", "Generator", "Tensor", "abs", "amax", "amin", "arange", "autograd", "backend",
    "bfloat16", "cat", "checkpoint", "clip", "concat", "data", "device", "enable_grad", "exp", "float16", "float32",
    "float64", "full", "get_array_module", "get_default_dtype", "int32", "int64", "is_grad_enabled", "log",
    "log_softmax", "logsumexp", "manual_seed", "matmul", "mean", "models", "nn", "no_grad", "ones", "ones_like",
    "optim", "rand", "randn", "relu", "set_default_dtype", "set_grad_enabled", "sigmoid", "softmax", "sqrt", "stack",
    "sum", "tanh", "tensor", "where", "zeros", "zeros_like",
]


def __getattr__(name: str):
    # dtrain.bfloat16: ml_dtypes' dtype (None without ml_dtypes), imported on first use, not with dtrain.
    if name == "bfloat16":
        return backend.bfloat16_dtype()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
