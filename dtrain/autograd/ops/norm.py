"""Batch and layer normalisation with fused backward passes.

Both normalise ``x`` over a set of axes: xhat = (x - mean) * invstd. Their input gradient is the same
closed form, ``invstd * (gxhat - mean(gxhat) - xhat * mean(gxhat * xhat))``, computed in one pass
here rather than through a dozen tiny ops; statistics of half-precision inputs are taken in float32.
"""

from __future__ import annotations

import math

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


class ChannelMatrix:
    """An (N, C, ...) array seen as the (M, C) matrix of its channel vectors, channel innermost in memory.

    Batch norm reduces over every axis but the channel axis and broadcasts per-channel vectors back. On that
    matrix a per-channel sum is one matrix-vector product (``ones @ X``: 20x faster than ``sum(axis=0)``,
    whose inner loop is only C values long), and a broadcast with a (C,) vector runs over rows of ``rep * C``
    values against the vector tiled ``rep`` times (5x faster than rows of C). A channels-last input (every
    convolution's output) is this matrix already; any other layout is copied once. Results go back as
    (N, C, ...) views of channels-last memory."""

    # Values per broadcast row at most. Measured (1 thread, float32, the digits ResNet's (4096, 16) and (1024, 32)):
    # rows of 512 to 4096 values run at 60% of a full-array multiply's speed, rows of 8192 at its speed, and
    # batch norm's forward and backward are 10-17% faster than with rows of 4096.
    ROW = 8192

    def __init__(self, x, dtype):
        self.xp = xp_of(x)
        self.c = x.shape[1]
        self.moved_shape = x.shape[:1] + x.shape[2:] + (self.c,)
        self.to_last = (0,) + tuple(range(2, x.ndim)) + (1,)  # (N, C, ...) -> (N, ..., C), and back
        self.to_first = (0, x.ndim - 1) + tuple(range(1, x.ndim - 1))
        self.m = x.size // self.c if self.c else 0
        self.dtype = dtype
        self.ones = self.xp.ones(self.m, dtype=dtype)
        fit = max(self.ROW // max(self.c, 1), 1)
        self.rep = math.gcd(self.m, 1 << (fit.bit_length() - 1)) or 1

    @classmethod
    def of(cls, x, dtype) -> ChannelMatrix:
        """The ChannelMatrix of ``x`` in ``dtype``: for a NumPy array one shared per shape and dtype (its geometry
        and read-only ones are all it holds; building them is a third of a small batch norm's fixed cost)."""
        if type(x) is not np.ndarray:
            return cls(x, dtype)
        key = (x.shape, dtype)
        cm = _channel_matrices.get(key)
        if cm is None:
            if len(_channel_matrices) >= CHANNEL_MATRICES_KEPT:
                _channel_matrices.clear()
            cm = _channel_matrices[key] = cls(x, dtype)
            cm.ones.flags.writeable = False
        return cm

    def matrix(self, a):
        """``a`` (N, C, ...) as the contiguous (M, C) matrix in the accumulation dtype (a view when possible)."""
        moved = self.xp.ascontiguousarray(a.transpose(self.to_last))
        return moved.reshape(self.m, self.c).astype(self.dtype, copy=False)

    def array(self, a2d, dtype):
        """The (M, C) matrix back as an (N, C, ...) array (channels-last memory) of ``dtype``."""
        return a2d.astype(dtype, copy=False).reshape(self.moved_shape).transpose(self.to_first)

    def sum(self, a2d):
        """Per-channel sums, (C,)."""
        return self.ones @ a2d

    def _rows(self, a2d):
        return a2d.reshape(-1, self.rep * self.c)

    def apply(self, ufunc, a2d, v, out=None):
        """``ufunc(a2d, v)`` with the (C,) vector ``v`` broadcast over the rows (into ``out`` if given)."""
        tiled = self.xp.empty((self.rep, self.c), dtype=self.dtype)
        tiled[...] = v
        res = ufunc(self._rows(a2d), tiled.reshape(-1), out=None if out is None else self._rows(out))
        return res.reshape(a2d.shape)


CHANNEL_MATRICES_KEPT = 64  # shapes whose ChannelMatrix is kept (a few per model: batch sizes, layers)
_channel_matrices: dict = {}


class FusedBatchNorm(FusedFunction):
    """Normalise over every axis but the channel axis 1; running statistics updated in place. Works on the
    :class:`ChannelMatrix` of the input: two matrix-vector products for the statistics, two for the
    parameter gradients, the output as ``d * (invstd * w) + b`` with ``d = x - mean`` (xhat itself is never
    stored: ``d`` and the per-channel ``invstd`` stand for it), and the input gradient as ``G * a + d * b + c``
    with per-channel a, b, c."""

    composition = "(x - mean(x)) / sqrt(var(x) + eps) * w + b over (N, H, W), or the running statistics in eval"
    # batch_norm()'s frontend checks shapes only; the running statistics it passes must be arguments of
    # the step or buffers a module declared with capture.note_buffers (BatchNorm does), as they are updated
    # in place on every replay
    capturable = True

    def forward(self, x, *wb, has_w=False, has_b=False, running_mean=None, running_var=None,
                training=False, momentum=0.1, eps=1e-5):
        self.has_w, self.has_b = has_w, has_b
        w = wb[0] if has_w else None
        b = wb[-1] if has_b else None
        xp = xp_of(x)
        cm = self.cm = ChannelMatrix.of(x, acc_dtype(x.dtype))
        xm = cm.matrix(x)
        self.batch_stats = training or running_mean is None
        if self.batch_stats:
            mean, var, d = self._statistics(xm)
            if training and running_mean is not None:
                unbiased = var * (self.count / max(self.count - 1, 1))
                running_mean *= 1 - momentum
                running_mean += (momentum * mean).astype(running_mean.dtype, copy=False)
                running_var *= 1 - momentum
                running_var += (momentum * unbiased).astype(running_var.dtype, copy=False)
            invstd = (1.0 / xp.sqrt(var + eps)).astype(cm.dtype, copy=False)
        else:
            invstd = (1.0 / xp.sqrt(running_var.astype(cm.dtype) + eps)).astype(cm.dtype, copy=False)
            d = cm.apply(xp.subtract, xm, running_mean)
        self.saved = (d, invstd, w)
        y = cm.apply(xp.multiply, d, invstd if w is None else invstd * w.astype(cm.dtype, copy=False))
        if b is not None:
            cm.apply(xp.add, y, b, out=y)
        return cm.array(y, x.dtype)

    def _statistics(self, xm):
        """(mean, biased variance, xm - mean) per channel; sets ``self.count``, the values per channel."""
        cm = self.cm
        self.count = xm.shape[0]
        mean = cm.sum(xm) / self.count
        d = cm.apply(cm.xp.subtract, xm, mean)
        return mean, cm.sum(d * d) / self.count, d

    def _gradient_means(self, sum_g, sum_gx):
        """Per-channel means of the upstream gradient and of its product with xhat (from the local sums)."""
        return sum_g / self.count, sum_gx / self.count

    def _input_grad(self, gm, d, invstd, w, sum_g, sum_gx):
        """invstd * (gxhat - mean(gxhat) - xhat * mean(gxhat * xhat)) with gxhat = gm * w and xhat = d * invstd,
        per channel."""
        cm, xp = self.cm, self.cm.xp
        scale = invstd if w is None else invstd * w.astype(cm.dtype, copy=False)
        gx = cm.apply(xp.multiply, gm, scale)
        if self.batch_stats:
            mean_g, mean_gx = self._gradient_means(sum_g, sum_gx)
            gx -= cm.apply(xp.multiply, d, scale * invstd * mean_gx)
            cm.apply(xp.subtract, gx, scale * mean_g, out=gx)
        return gx

    def _sums(self, gm, d, invstd, with_x: bool, with_1: bool):
        """Per-channel sums of ``gm * xhat`` and of ``gm`` (None where not wanted)."""
        cm = self.cm
        return (cm.sum(gm * d) * invstd if with_x else None), (cm.sum(gm) if with_1 else None)

    def backward(self, g):
        d, invstd, w = self.saved
        cm = self.cm
        needs = self.needs_grad
        gm = cm.matrix(g)
        stats = needs[0] and self.batch_stats
        sum_gx, sum_g = self._sums(gm, d, invstd, (self.has_w and needs[1]) or stats,
                                   (self.has_b and needs[-1]) or stats)
        out = [cm.array(self._input_grad(gm, d, invstd, w, sum_g, sum_gx), g.dtype) if needs[0] else None]
        if self.has_w:
            out.append(sum_gx if needs[1] else None)
        if self.has_b:
            out.append(sum_g if needs[-1] else None)
        return tuple(out)

    def jvp(self, tx, *twb):
        d, invstd, w = self.saved
        cm, xp = self.cm, self.cm.xp
        tw = twb[0] if self.has_w else None
        tb = twb[-1] if self.has_b else None
        out = None
        if tx is not None:  # the normalisation's Jacobian is symmetric: the same map as backward's
            tm = cm.matrix(tx)
            sum_tx, sum_t = self._sums(tm, d, invstd, True, True)
            out = self._input_grad(tm, d, invstd, w, sum_t, sum_tx)
        if tw is not None:
            out = tsum(out, cm.apply(xp.multiply, d, invstd * tw.astype(cm.dtype, copy=False)))
        if tb is not None:
            out = cm.apply(xp.add, xp.zeros_like(d) if out is None else out, tb)
        return cm.array(out, d.dtype)


class FusedLayerNorm(_FusedNorm):
    """Normalise over the trailing ``len(normalized_shape)`` axes."""

    composition = "(x - mean(x)) / sqrt(var(x) + eps) * w + b over the trailing axes"
    capturable = True  # layer_norm()'s frontend checks shapes only

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
