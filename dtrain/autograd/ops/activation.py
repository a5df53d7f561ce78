"""Fused activations: tanh, sigmoid, relu, leaky_relu, elu, gelu, silu.

Each is a composition of elementwise primitives (``exp``, ``abs``, ``where``, ``clip``, ``erf``; the
``composition`` attribute says which) computed as one graph node: one NumPy pass forward, a backward
that reuses the saved output or mask, and one saved array instead of the composition's chain.
tests/autograd/test_fused.py checks each against its composition.
"""

from __future__ import annotations

import math

import numpy as np

from ..function import FusedFunction
from ..tensor import Tensor
from ._util import ZERO, as_tensor, xp_of
from .elementwise import erf_array


def _sigmoid(xp, x):
    """Overflow-free logistic function (exact in both tails)."""
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


class FusedTanh(FusedFunction):
    composition = "2 * sigmoid(2x) - 1"

    def forward(self, x):
        y = xp_of(x).tanh(x)
        self.saved = (y,)
        return y

    def backward(self, g):
        y = self.saved[0]
        return g * (1 - y * y)

    jvp = backward


class FusedSigmoid(FusedFunction):
    composition = "e = exp(-abs(x)); where(x >= 0, 1 / (1 + e), e / (1 + e))"

    def forward(self, x):
        y = _sigmoid(xp_of(x), x)
        self.saved = (y,)
        return y

    def backward(self, g):
        y = self.saved[0]
        return g * (y * (1 - y))

    jvp = backward


# ReLU's forward against zeros rather than the scalar 0: NumPy's maximum has a SIMD loop for two arrays but not
# for an array and a scalar (25 -> 8 us at (64, 16, 8, 8) float32). The zeros are one read-only flat array per
# dtype, grown to the largest size asked, in x's memory order (C-contiguous, or channels-last after a conv).
# Small arrays (call overhead dominates) and arrays over ZEROS_MAX_BYTES (memory-bound, where reading zeros
# costs bandwidth) keep the scalar.
ZEROS_MIN_SIZE, ZEROS_MAX_BYTES = 16384, 1 << 20
_zero_arrays: dict = {}


_TO_NHWC, _TO_NCHW = (0, 2, 3, 1), (0, 3, 1, 2)


def _zeros(dtype, size: int):
    """A read-only flat array of at least ``size`` zeros (grown and kept per dtype)."""
    flat = _zero_arrays.get(dtype)
    if flat is None or flat.size < size:
        flat = np.zeros(size, dtype=dtype)
        flat.flags.writeable = False
        _zero_arrays[dtype] = flat
    return flat[:size]


def relu_array(x):
    """max(x, 0) (NaN stays NaN; the result has x's memory layout), against zeros where that is faster: a
    C-contiguous or a channels-last NumPy array of ZEROS_MIN_SIZE values to ZEROS_MAX_BYTES."""
    if type(x) is np.ndarray:
        if x.size < ZEROS_MIN_SIZE or x.nbytes > ZEROS_MAX_BYTES:
            return np.maximum(x, ZERO[x.dtype])
        if x.flags.c_contiguous:
            return np.maximum(x, _zeros(x.dtype, x.size).reshape(x.shape))
        if x.ndim == 4:
            xt = x.transpose(_TO_NHWC)
            if xt.flags.c_contiguous:
                return np.maximum(xt, _zeros(x.dtype, x.size).reshape(xt.shape)).transpose(_TO_NCHW)
    return xp_of(x).maximum(x, 0)


class FusedReLU(FusedFunction):
    composition = "where(x > 0, x, 0)"

    def forward(self, x):
        y = relu_array(x)
        self.saved = (y,)
        return y

    def backward(self, g):
        y = self.saved[0]
        return g * (y > (ZERO[y.dtype] if type(y) is np.ndarray else 0))

    jvp = backward


class _FusedPiecewise(FusedFunction):
    """where(x > 0, x, f(x)): subclasses give f and its derivative on the negative side."""

    def _negative_side(self, x, param):
        """(f(x), f'(x)) for the entries where x <= 0 (computed everywhere, used there only)."""
        raise NotImplementedError

    def forward(self, x, param):
        pos = x > 0
        neg, dneg = self._negative_side(x, param)
        self.saved = (pos, dneg)
        return xp_of(x).where(pos, x, neg).astype(x.dtype, copy=False)

    def backward(self, g):
        pos, dneg = self.saved
        return xp_of(g).where(pos, g, g * dneg)

    jvp = backward


class FusedLeakyReLU(_FusedPiecewise):
    composition = "where(x > 0, x, x * negative_slope)"

    def _negative_side(self, x, negative_slope):
        return x * negative_slope, negative_slope


class FusedELU(_FusedPiecewise):
    composition = "where(x > 0, x, alpha * (exp(clip(x, max=0)) - 1))"

    def _negative_side(self, x, alpha):
        neg = alpha * xp_of(x).expm1(xp_of(x).minimum(x, 0))  # minimum: no overflow in the unused branch
        return neg, neg + alpha


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


class FusedGELU(FusedFunction):
    """x·Φ(x) (approximate="none") or its tanh approximation (approximate="tanh")."""

    composition = "x * 0.5 * (1 + erf(x / sqrt(2))), or 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x**3)))"

    def forward(self, x, approximate="none"):
        xp = xp_of(x)
        self.saved = (x,)
        self.approximate = approximate
        if approximate == "tanh":
            t = xp.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x**3))
            self.t = t
            return (0.5 * x * (1 + t)).astype(x.dtype, copy=False)
        cdf = 0.5 * (1 + erf_array(xp, x * _INV_SQRT_2))
        self.cdf = cdf
        return (x * cdf).astype(x.dtype, copy=False)

    def _dydx(self):
        (x,) = self.saved
        xp = xp_of(x)
        if self.approximate == "tanh":
            t = self.t
            return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * x * x)
        return self.cdf + x * (_INV_SQRT_2PI * xp.exp(-0.5 * x * x))

    def backward(self, g):
        return g * self._dydx()

    def jvp(self, t):
        return t * self._dydx()


class FusedSiLU(FusedFunction):
    composition = "x * sigmoid(x)"

    def forward(self, x):
        s = _sigmoid(xp_of(x), x)
        self.saved = (x, s)
        return x * s

    def backward(self, g):
        x, s = self.saved
        return g * (s * (1 + x * (1 - s)))

    jvp = backward


def tanh(x) -> Tensor:
    """Hyperbolic tangent."""
    return FusedTanh.apply(as_tensor(x))


def sigmoid(x) -> Tensor:
    """Logistic function 1 / (1 + exp(-x)), exact in both tails."""
    return FusedSigmoid.apply(as_tensor(x))


def relu(x) -> Tensor:
    """max(x, 0); the gradient at 0 is 0 (torch's convention)."""
    return FusedReLU.apply(as_tensor(x))


def leaky_relu(x, negative_slope: float = 0.01) -> Tensor:
    """x where x > 0, else ``negative_slope * x``."""
    return FusedLeakyReLU.apply(as_tensor(x), param=negative_slope)


def elu(x, alpha: float = 1.0) -> Tensor:
    """x where x > 0, else ``alpha * (exp(x) - 1)``."""
    return FusedELU.apply(as_tensor(x), param=alpha)


def gelu(x, approximate: str = "none") -> Tensor:
    """x·Φ(x) with Φ the standard normal CDF; ``approximate="tanh"`` uses torch's tanh form."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return FusedGELU.apply(as_tensor(x), approximate=approximate)


def silu(x) -> Tensor:
    """x * sigmoid(x) (swish)."""
    return FusedSiLU.apply(as_tensor(x))


# Each activation's frontend only wraps its input and passes a fixed number or string: a captured step
# (autograd/capture.py) may replay them from the recorded parameters.
for _cls in (FusedTanh, FusedSigmoid, FusedReLU, FusedLeakyReLU, FusedELU, FusedGELU, FusedSiLU):
    _cls.capturable = True
