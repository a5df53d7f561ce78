"""Reductions and normalised exponentials: sum, mean, max/min, logsumexp, softmax, log_softmax."""

from __future__ import annotations

from ..function import Function, FusedFunction
from ..tensor import Tensor
from ._util import acc_dtype, as_tensor, expand_grad, keep_shape, norm_axes, xp_of


class Sum(Function):
    capturable = True  # sum()/mean() normalise the axes from the input's rank only

    def forward(self, x, axes=(), keepdims=False):
        self.in_shape, self.axes, self.keepdims = x.shape, axes, keepdims
        if x.dtype.itemsize < 4:
            return x.sum(axis=axes, keepdims=keepdims, dtype=acc_dtype(x.dtype)).astype(x.dtype)
        return x.sum(axis=axes, keepdims=keepdims)

    def backward(self, g):
        return expand_grad(g, self.in_shape, self.axes)

    def jvp(self, t):
        return t.sum(axis=self.axes, keepdims=self.keepdims)


class Mean(Function):
    capturable = True

    def forward(self, x, axes=(), keepdims=False):
        self.in_shape, self.axes, self.keepdims = x.shape, axes, keepdims
        n = 1
        for a in axes:
            n *= x.shape[a]
        self.n = n
        if x.dtype.itemsize < 4:
            return x.mean(axis=axes, keepdims=keepdims, dtype=acc_dtype(x.dtype)).astype(x.dtype)
        return x.mean(axis=axes, keepdims=keepdims)

    def backward(self, g):
        return expand_grad(g / self.n, self.in_shape, self.axes)

    def jvp(self, t):
        return t.mean(axis=self.axes, keepdims=self.keepdims)


class Extremum(Function):
    """max or min; tied extremes share the gradient equally (torch.amax/amin's rule)."""

    def forward(self, x, axes=(), keepdims=False, largest=True):
        if any(x.shape[a] == 0 for a in axes):
            raise ValueError(f"{'max' if largest else 'min'}() over an empty dimension (shape {x.shape}, axes {axes})")
        y = x.max(axis=axes, keepdims=True) if largest else x.min(axis=axes, keepdims=True)
        mask = x == y
        count = mask.sum(axis=axes, keepdims=True)
        self.saved = (mask, count)
        self.in_shape, self.axes, self.keepdims = x.shape, axes, keepdims
        return y if keepdims else y.reshape([n for i, n in enumerate(x.shape) if i not in axes])

    def _weights(self):
        mask, count = self.saved
        return mask / count

    def backward(self, g):
        return g.reshape(keep_shape(self.in_shape, self.axes)) * self._weights()

    def jvp(self, t):
        return (t * self._weights()).sum(axis=self.axes, keepdims=self.keepdims)


class FusedLogSumExp(FusedFunction):
    composition = "m = amax(x); log(sum(exp(x - m))) + m"

    def forward(self, x, axes=(), keepdims=False):
        xp = xp_of(x)
        m = x.max(axis=axes, keepdims=True) if x.size else xp.zeros(keep_shape(x.shape, axes), x.dtype)
        m = xp.where(xp.isfinite(m), m, 0)
        out = xp.log(xp.exp(x - m).sum(axis=axes, keepdims=True)) + m
        self.saved = (x, out)
        self.in_shape, self.axes, self.keepdims = x.shape, axes, keepdims
        return out if keepdims else out.reshape([n for i, n in enumerate(x.shape) if i not in axes])

    def _softmax(self):
        x, out = self.saved
        return xp_of(x).exp(x - out)

    def backward(self, g):
        return g.reshape(keep_shape(self.in_shape, self.axes)) * self._softmax()

    def jvp(self, t):
        return (t * self._softmax()).sum(axis=self.axes, keepdims=self.keepdims)


def _stable_softmax(xp, x, axis):
    e = xp.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


class FusedSoftmax(FusedFunction):
    composition = "e = exp(x - amax(x)); e / sum(e)"
    capturable = True  # softmax()/log_softmax() normalise the axis from the input's rank only

    def forward(self, x, axis=-1):
        y = _stable_softmax(xp_of(x), x, axis)
        self.saved, self.axis = (y,), axis
        return y

    def backward(self, g):
        (y,) = self.saved
        gy = g * y
        return gy - y * gy.sum(axis=self.axis, keepdims=True)

    jvp = backward


class FusedLogSoftmax(FusedFunction):
    composition = "s = x - amax(x); s - log(sum(exp(s)))"
    capturable = True

    def forward(self, x, axis=-1):
        xp = xp_of(x)
        shifted = x - x.max(axis=axis, keepdims=True)
        y = shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))
        self.saved, self.axis = (y,), axis
        return y

    def backward(self, g):
        (y,) = self.saved
        return g - xp_of(y).exp(y) * g.sum(axis=self.axis, keepdims=True)

    def jvp(self, t):
        (y,) = self.saved
        return t - (xp_of(y).exp(y) * t).sum(axis=self.axis, keepdims=True)


def _reduce(cls, x, axis, keepdims, **kw) -> Tensor:
    x = as_tensor(x)
    return cls.apply(x, axes=norm_axes(axis, x.ndim), keepdims=keepdims, **kw)


def sum(x, axis=None, keepdims: bool = False) -> Tensor:
    """Sum over ``axis`` (None: all; int or tuple)."""
    return _reduce(Sum, x, axis, keepdims)


def mean(x, axis=None, keepdims: bool = False) -> Tensor:
    """Mean over ``axis`` (None: all; int or tuple)."""
    return _reduce(Mean, x, axis, keepdims)


def var(x, axis=None, keepdims: bool = False, ddof: int = 0) -> Tensor:
    """Variance (``ddof=1`` for the unbiased estimate), composed of mean and products."""
    x = as_tensor(x)
    axes = norm_axes(axis, x.ndim)
    n = 1
    for a in axes:
        n *= x.shape[a]
    d = x - mean(x, axes, keepdims=True)
    return sum(d * d, axes, keepdims) / (n - ddof)


def amax(x, axis=None, keepdims: bool = False) -> Tensor:
    """Maximum over ``axis``; ties share the gradient."""
    return _reduce(Extremum, x, axis, keepdims, largest=True)


def amin(x, axis=None, keepdims: bool = False) -> Tensor:
    """Minimum over ``axis``; ties share the gradient."""
    return _reduce(Extremum, x, axis, keepdims, largest=False)


def logsumexp(x, axis=None, keepdims: bool = False) -> Tensor:
    """log(sum(exp(x))) computed without overflow."""
    return _reduce(FusedLogSumExp, x, axis, keepdims)


def _one_axis(x: Tensor, axis: int) -> int:
    if x.ndim == 0:
        raise ValueError("softmax needs a tensor with at least one dimension")
    return norm_axes(axis, x.ndim)[0]


def softmax(x, axis: int = -1) -> Tensor:
    """exp(x) / sum(exp(x)) along ``axis``, numerically stable."""
    x = as_tensor(x)
    return FusedSoftmax.apply(x, axis=_one_axis(x, axis))


def log_softmax(x, axis: int = -1) -> Tensor:
    """log(softmax(x)) along ``axis``, numerically stable."""
    x = as_tensor(x)
    return FusedLogSoftmax.apply(x, axis=_one_axis(x, axis))
