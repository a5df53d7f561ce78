"""dtrain.autograd: define-by-run reverse-mode (and forward-mode) automatic differentiation.

Modules: ``tensor`` (Tensor and factories), ``function`` (the primitive base class, grad mode),
``engine`` (the backward pass), ``ops`` (every primitive: forward, backward, jvp side by side),
``forward_ad`` (jvp, vjp, jacobian), ``gradcheck`` and ``checkpoint``.
"""

from .autocast import autocast
from .checkpoint import checkpoint
from .engine import queue_callback
from .forward_ad import jacobian, jvp, vjp
from .function import Function, enable_grad, is_grad_enabled, no_grad, set_grad_enabled, unbroadcast
from .gradcheck import GradcheckError, gradcheck
from .tensor import Tensor, arange, full, ones, ones_like, rand, randn, tensor, zeros, zeros_like

__all__ = [
    "Function", "GradcheckError", "Tensor", "arange", "autocast", "checkpoint", "enable_grad", "full", "gradcheck",
    "is_grad_enabled", "jacobian", "jvp", "no_grad", "ones", "ones_like", "queue_callback", "rand", "randn",
    "set_grad_enabled",
    "tensor", "unbroadcast", "vjp", "zeros", "zeros_like",
]
