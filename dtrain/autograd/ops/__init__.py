"""The differentiable ops and their functional front ends.

Each module groups ops by concept; every op is one Function subclass with forward, backward and jvp
side by side. Primitives are the small basis (arithmetic, exp/log/sqrt/abs/erf/pow, clip/where,
sum/mean/max, matmul, shape, casts); ops named ``Fused*`` (``FusedFunction``) compute a composition
of primitives in one node because that is faster or more stable (docs/autograd.md has the table).
The functions exported here are what Tensor methods, ``dtrain.*`` and ``dtrain.nn.functional`` call.
"""

from .activation import elu, gelu, leaky_relu, relu, sigmoid, silu, tanh
from .conv import conv2d
from .elementwise import abs, add, cast, clip, compare, div, erf, exp, log, mul, neg, pow, sqrt, sub, where
from .elementwise import to_device_op as to_device
from .linalg import linear, matmul
from .loss import binary_cross_entropy_with_logits, cross_entropy, mse_loss, nll_loss
from .nn import dropout, embedding, scaled_dot_product_attention
from .norm import batch_norm, layer_norm
from .pool import avg_pool2d, max_pool2d
from .reduce import amax, amin, log_softmax, logsumexp, mean, softmax, sum, var
from .shape import (
    broadcast_to,
    concat,
    contiguous,
    flatten,
    getitem,
    pad,
    permute,
    reshape,
    squeeze,
    stack,
    unsqueeze,
)

__all__ = [
    "abs", "add", "amax", "amin", "avg_pool2d", "batch_norm", "binary_cross_entropy_with_logits",
    "broadcast_to", "cast", "clip", "compare", "concat", "contiguous", "conv2d", "cross_entropy", "div", "dropout",
    "elu", "embedding", "erf", "exp", "flatten", "gelu", "getitem", "layer_norm", "leaky_relu", "linear",
    "log", "log_softmax", "logsumexp", "matmul", "max_pool2d", "mean", "mse_loss", "mul", "neg",
    "nll_loss", "pad", "permute", "pow", "relu", "reshape", "scaled_dot_product_attention", "sigmoid",
    "silu", "softmax", "sqrt", "squeeze", "stack", "sub", "sum", "tanh", "to_device", "unsqueeze",
    "var", "where",
]
