"""dtrain.autograd: define-by-run reverse-mode (and forward-mode) automatic differentiation.

Modules: ``tensor`` (Tensor), ``factories`` (``tensor``, ``zeros``, ``randn``, ...), ``function`` (the op
base classes ``Function`` and ``FusedFunction``, grad mode),
``engine`` (the backward pass), ``ops`` (every op: forward, backward, jvp side by side),
``forward_ad`` (jvp, vjp, jacobian), ``gradcheck``, ``checkpoint`` and ``capture`` (trace a training step
once, replay its ops without the eager bookkeeping; ``capture_tape``/``capture_codegen`` replay it).
"""

from .autocast import autocast
from .capture import CapturedStep, CaptureError, capture
from .checkpoint import checkpoint
from .engine import queue_callback
from .factories import arange, full, ones, ones_like, rand, randn, tensor, zeros, zeros_like
from .forward_ad import jacobian, jvp, vjp
from .function import (
    Function,
    FusedFunction,
    enable_grad,
    is_grad_enabled,
    no_grad,
    set_grad_enabled,
    unbroadcast,
)
from .gradcheck import GradcheckError, gradcheck
from .tensor import Tensor

__all__ = [
    "CaptureError", "CapturedStep", "Function", "FusedFunction", "GradcheckError", "Tensor", "arange", "autocast",
    "capture", "checkpoint", "enable_grad", "full", "gradcheck", "is_grad_enabled", "jacobian", "jvp", "no_grad",
    "ones", "ones_like", "queue_callback", "rand", "randn", "set_grad_enabled", "tensor", "unbroadcast", "vjp",
    "zeros", "zeros_like",
]
