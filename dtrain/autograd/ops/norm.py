"""Batch and layer normalisation with fused backward passes.

Both normalise ``x`` over a set of axes: xhat = (x - mean) * invstd. Their input gradient is the same
closed form, ``invstd * (gxhat - mean(gxhat) - xhat * mean(gxhat * xhat))``, computed in one pass
here rather than through a dozen tiny ops; statistics of half-precision inputs are taken in float32.
"""

from __future__ import annotations

import numpy as np

from ..function import FusedFunction
from ..tensor import Tensor
from ._util import acc_dtype, tsum, xp_of


def _normalize(x, axes, eps):
    xp = xp_of(x)
    xa = x.astype(acc_dtype(x.dtype), copy=False)
    mean = xa.mean(axis=axes, keepdims=True)
    d = xa - mean
    var = (d * d).mean(axis=axes, keepdims=True)
    invstd = 1.0 / xp.sqrt(var + eps)
    return d * invstd, mean, var, invstd


def _normalize_backward(gxhat, xhat, invstd, axes):
    return invstd * (gxhat - gxhat.mean(axis=axes, keepdims=True)
                     - xhat * (gxhat * xhat).mean(axis=axes, keepdims=True))


class _FusedNorm(FusedFunction):
    """Shared affine/backward/jvp of batch and layer norm; subclasses say how stats are taken."""

    def _affine(self, xhat, w, b, dtype):
        y = xhat
        if w is not None:
            y = y * self._param_view(w)
        if b is not None:
            y = y + self._param_view(b)
        return y.astype(dtype, copy=False)

    def _through_normalization(self, v, xhat, invstd):
        """d xhat / d x applied to ``v``. With batch statistics the map is symmetric, so the same
        expression serves backward (vector-Jacobian) and forward mode (Jacobian-vector)."""
        if self.batch_stats:
            return _normalize_backward(v, xhat, invstd, self.axes)
        return v * invstd

    def backward(self, g):
        xhat, invstd, w = self.saved
        needs = self.needs_grad
        gf = g.astype(xhat.dtype, copy=False)
        gxhat = gf * self._param_view(w) if w is not None else gf
        out = [self._through_normalization(gxhat, xhat, invstd) if needs[0] else None]
        if self.has_w:
            out.append(self._param_reduce(gf * xhat) if needs[1] else None)
        if self.has_b:
            out.append(self._param_reduce(gf) if needs[-1] else None)
        return tuple(out)

    def jvp(self, tx, *twb):
        xhat, invstd, w = self.saved
        tw = twb[0] if self.has_w else None
        tb = twb[-1] if self.has_b else None
        txhat = None
        if tx is not None:
            txhat = self._through_normalization(tx.astype(xhat.dtype, copy=False), xhat, invstd)
            if w is not None:
                txhat = txhat * self._param_view(w)
        return tsum(txhat,
                    None if tw is None else xhat * self._param_view(tw),
                    None if tb is None else self._param_view(tb))


class FusedBatchNorm(_FusedNorm):
    """Normalise over every axis but the channel axis 1; running statistics updated in place."""

    composition = "(x - mean(x)) / sqrt(var(x) + eps) * w + b over (N, H, W), or the running statistics in eval"

    def forward(self, x, *wb, has_w=False, has_b=False, running_mean=None, running_var=None,
                training=False, momentum=0.1, eps=1e-5):
        self.has_w, self.has_b, self.ndim = has_w, has_b, x.ndim
        self.axes = (0,) + tuple(range(2, x.ndim))
        w = wb[0] if has_w else None
        b = wb[-1] if has_b else None
        self.batch_stats = training or running_mean is None
        if self.batch_stats:
            xhat, mean, var, invstd = _normalize(x, self.axes, eps)
            if training and running_mean is not None:
                n = x.size // x.shape[1]
                unbiased = var.reshape(-1) * (n / max(n - 1, 1))
                running_mean *= 1 - momentum
                running_mean += (momentum * mean.reshape(-1)).astype(running_mean.dtype)
                running_var *= 1 - momentum
                running_var += (momentum * unbiased).astype(running_var.dtype)
        else:
            xp = xp_of(x)
            xa = x.astype(acc_dtype(x.dtype), copy=False)
            invstd = 1.0 / xp.sqrt(self._param_view(running_var).astype(xa.dtype) + eps)
            xhat = (xa - self._param_view(running_mean)) * invstd
        self.saved = (xhat, invstd, w)
        return self._affine(xhat, w, b, x.dtype)

    def _param_view(self, p):
        return p.reshape((1, -1) + (1,) * (self.ndim - 2))

    def _param_reduce(self, full):
        return full.sum(axis=self.axes)


class FusedLayerNorm(_FusedNorm):
    """Normalise over the trailing ``len(normalized_shape)`` axes."""

    composition = "(x - mean(x)) / sqrt(var(x) + eps) * w + b over the trailing axes"

    batch_stats = True

    def forward(self, x, *wb, has_w=False, has_b=False, n_axes=1, eps=1e-5):
        self.has_w, self.has_b = has_w, has_b
        self.axes = tuple(range(x.ndim - n_axes, x.ndim))
        w = wb[0] if has_w else None
        b = wb[-1] if has_b else None
        xhat, _, _, invstd = _normalize(x, self.axes, eps)
        self.saved = (xhat, invstd, w)
        return self._affine(xhat, w, b, x.dtype)

    def _param_view(self, p):
        return p

    def _param_reduce(self, full):
        return full  # the engine sums the leading (batch) axes away


def _array(v):
    return v.data if isinstance(v, Tensor) else v


def batch_norm(x: Tensor, running_mean=None, running_var=None, weight: Tensor | None = None,
               bias: Tensor | None = None, training: bool = False, momentum: float = 0.1,
               eps: float = 1e-5) -> Tensor:
    """torch's F.batch_norm: x (N, C, ...); running stats (C,) arrays/tensors updated in place."""
    if x.ndim < 2:
        raise ValueError(f"batch_norm: input must have at least 2 dims (N, C, ...), got shape {x.shape}")
    c = x.shape[1]
    for name, v in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight),
                    ("bias", bias)):
        if v is not None and tuple(v.shape) != (c,):
            raise ValueError(f"batch_norm: {name} has shape {tuple(v.shape)}, expected ({c},) for input {x.shape}")
    if (running_mean is None) != (running_var is None):
        raise ValueError("batch_norm: give both running_mean and running_var, or neither")
    if training and x.size // c <= 1:
        raise ValueError(f"batch_norm: expected more than 1 value per channel when training, got input {x.shape}")
    inputs = [x] + [t for t in (weight, bias) if t is not None]
    return FusedBatchNorm.apply(*inputs, has_w=weight is not None, has_b=bias is not None,
                           running_mean=_array(running_mean), running_var=_array(running_var),
                           training=training, momentum=momentum, eps=eps)


def layer_norm(x: Tensor, normalized_shape, weight: Tensor | None = None, bias: Tensor | None = None,
               eps: float = 1e-5) -> Tensor:
    """torch's F.layer_norm: normalise over the trailing ``normalized_shape`` dims."""
    shape = (normalized_shape,) if isinstance(normalized_shape, (int, np.integer)) else tuple(normalized_shape)
    if tuple(x.shape[x.ndim - len(shape):]) != shape or len(shape) > x.ndim:
        raise ValueError(f"layer_norm: normalized_shape {shape} does not match the trailing dims of input {x.shape}")
    for name, v in (("weight", weight), ("bias", bias)):
        if v is not None and v.shape != shape:
            raise ValueError(f"layer_norm: {name} has shape {v.shape}, expected {shape}")
    inputs = [x] + [t for t in (weight, bias) if t is not None]
    return FusedLayerNorm.apply(*inputs, has_w=weight is not None, has_b=bias is not None, n_axes=len(shape), eps=eps)
