"""Stateless neural-network functions with torch.nn.functional's names, signatures and order.

Axis arguments are spelled ``dim`` as in torch (``axis`` is accepted too).
"""

from __future__ import annotations

from ..autograd import ops
from ..autograd.ops import (
    avg_pool2d,
    batch_norm,
    binary_cross_entropy_with_logits,
    conv2d,
    cross_entropy,
    dropout,
    elu,
    gelu,
    layer_norm,
    leaky_relu,
    linear,
    max_pool2d,
    mse_loss,
    nll_loss,
    pad,
    relu,
    scaled_dot_product_attention,
    sigmoid,
    silu,
    tanh,
)
from ..autograd.tensor import Tensor

__all__ = [
    "avg_pool2d", "batch_norm", "binary_cross_entropy_with_logits", "conv2d", "cross_entropy", "dropout",
    "elu", "embedding", "gelu", "layer_norm", "leaky_relu", "linear", "log_softmax", "logsumexp",
    "max_pool2d", "mse_loss", "nll_loss", "pad", "relu", "scaled_dot_product_attention", "sigmoid", "silu",
    "softmax", "tanh",
]


def _dim(dim, axis, default):
    if dim is not None and axis is not None and dim != axis:
        raise TypeError(f"give either dim= or axis=, not both (dim={dim}, axis={axis})")
    if dim is not None:
        return dim
    return default if axis is None else axis


def softmax(input: Tensor, dim: int | None = None, *, axis: int | None = None) -> Tensor:
    """softmax along ``dim`` (default: the last)."""
    return ops.softmax(input, _dim(dim, axis, -1))


def log_softmax(input: Tensor, dim: int | None = None, *, axis: int | None = None) -> Tensor:
    """log_softmax along ``dim`` (default: the last)."""
    return ops.log_softmax(input, _dim(dim, axis, -1))


def logsumexp(input: Tensor, dim=None, keepdim: bool = False, *, axis=None) -> Tensor:
    """log(sum(exp(input))) along ``dim`` (default: all), stable."""
    return ops.logsumexp(input, _dim(dim, axis, None), keepdim)


def embedding(input, weight: Tensor, padding_idx: int | None = None) -> Tensor:
    """Look up rows of ``weight`` by integer ``input`` (torch's argument order)."""
    return ops.embedding(input, weight, padding_idx)
