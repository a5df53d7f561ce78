"""Elementwise primitives: arithmetic, math functions (exp, log, sqrt, abs, erf), clip, where, casts.

Binary ops compute their gradients at the broadcast shape; the engine reduces them to each input's
shape. Each class holds forward, backward and the forward-mode rule (jvp) together. The fused
activations built from these (relu, sigmoid, gelu, ...) are in ``activation.py``.
"""

from __future__ import annotations

import math

import numpy as np

from ...backend import Device, device_of, get_array_module, to_device
from ...spec import is_real
from ..function import Function
from ..tensor import Tensor
from ._util import as_tensor, pair, tsum, xp_of

# ---------------------------------------------------------------------------------------------
# Arithmetic
# ---------------------------------------------------------------------------------------------


class Add(Function):
    capturable = True  # the frontend only pairs its operands (numbers become 0-d constants)

    def forward(self, a, b):
        return a + b

    def backward(self, g):
        return g, g

    def jvp(self, ta, tb):
        return tsum(ta, tb)


class Sub(Function):
    capturable = True  # the frontend only pairs its operands (numbers become 0-d constants)

    def forward(self, a, b):
        return a - b

    def backward(self, g):
        return g, -g

    def jvp(self, ta, tb):
        return tsum(ta, None if tb is None else -tb)


class Mul(Function):
    capturable = True  # the frontend only pairs its operands (numbers become 0-d constants)

    def forward(self, a, b):
        self.saved = (a, b)
        return a * b

    def backward(self, g):
        a, b = self.saved
        na, nb = self.needs_grad
        return (g * b if na else None), (g * a if nb else None)

    def jvp(self, ta, tb):
        a, b = self.saved
        return tsum(None if ta is None else ta * b, None if tb is None else a * tb)


class Div(Function):
    capturable = True  # the frontend only pairs its operands (numbers become 0-d constants)

    def forward(self, a, b):
        out = a / b
        self.saved = (b, out)
        return out

    def backward(self, g):
        b, out = self.saved
        na, nb = self.needs_grad
        ga = g / b if na else None
        gb = -(g * out) / b if nb else None
        return ga, gb

    def jvp(self, ta, tb):
        b, out = self.saved
        return tsum(None if ta is None else ta / b, None if tb is None else -(tb * out) / b)


class Neg(Function):
    def forward(self, a):
        return -a

    def backward(self, g):
        return -g

    def jvp(self, ta):
        return -ta


class PowConst(Function):
    """x ** p for a constant Python-number exponent p."""

    def forward(self, x, p):
        self.p = p
        self.saved = (x,)
        if p == 2:
            return x * x
        return x**p

    def _dydx(self):
        (x,) = self.saved
        p = self.p
        if p == 2:
            return 2 * x
        if p == 1:
            return get_array_module(x).ones_like(x)
        return p * x ** (p - 1)

    def backward(self, g):
        return g * self._dydx()

    def jvp(self, tx):
        return tx * self._dydx()


class Pow(Function):
    """a ** b for two arrays; d/db = a**b · log(a) (defined for a > 0)."""

    def forward(self, a, b):
        out = a**b
        self.saved = (a, b, out)
        return out

    def backward(self, g):
        a, b, out = self.saved
        na, nb = self.needs_grad
        xp = xp_of(a)
        ga = g * b * a ** (b - 1) if na else None
        gb = g * out * xp.log(a) if nb else None
        return ga, gb

    def jvp(self, ta, tb):
        a, b, out = self.saved
        xp = xp_of(a)
        return tsum(None if ta is None else ta * b * a ** (b - 1), None if tb is None else tb * out * xp.log(a))


def add(a, b) -> Tensor:
    """a + b with broadcasting."""
    return Add.apply(*pair(a, b))


def sub(a, b) -> Tensor:
    """a - b with broadcasting."""
    return Sub.apply(*pair(a, b))


def mul(a, b) -> Tensor:
    """a * b with broadcasting."""
    return Mul.apply(*pair(a, b))


def div(a, b) -> Tensor:
    """a / b with broadcasting."""
    return Div.apply(*pair(a, b))


def neg(a) -> Tensor:
    return Neg.apply(as_tensor(a))


def pow(a, b) -> Tensor:
    """a ** b: a constant number exponent uses a cheaper primitive than a tensor exponent."""
    if isinstance(a, Tensor) and is_real(b):
        return PowConst.apply(a, p=b)
    return Pow.apply(*pair(a, b))


# ---------------------------------------------------------------------------------------------
# Math functions (one input)
# ---------------------------------------------------------------------------------------------


class Exp(Function):
    def forward(self, x):
        y = xp_of(x).exp(x)
        self.saved = (y,)
        return y

    def backward(self, g):
        return g * self.saved[0]

    def jvp(self, t):
        return t * self.saved[0]


class Log(Function):
    def forward(self, x):
        self.saved = (x,)
        return xp_of(x).log(x)

    def backward(self, g):
        return g / self.saved[0]

    def jvp(self, t):
        return t / self.saved[0]


class Sqrt(Function):
    def forward(self, x):
        y = xp_of(x).sqrt(x)
        self.saved = (y,)
        return y

    def backward(self, g):
        return g / (2 * self.saved[0])

    def jvp(self, t):
        return t / (2 * self.saved[0])


class Abs(Function):
    def forward(self, x):
        xp = xp_of(x)
        self.saved = (xp.sign(x),)
        return xp.abs(x)

    def backward(self, g):
        return g * self.saved[0]

    def jvp(self, t):
        return t * self.saved[0]


class Clip(Function):
    """clip(x, lo, hi); the gradient passes where lo <= x <= hi (torch.clamp's convention)."""

    def forward(self, x, lo=None, hi=None):
        xp = xp_of(x)
        mask = None
        if lo is not None:
            mask = x >= lo
        if hi is not None:
            mask = (x <= hi) if mask is None else (mask & (x <= hi))
        self.saved = (mask,)
        return xp.clip(x, lo, hi)

    def backward(self, g):
        (mask,) = self.saved
        return g if mask is None else g * mask

    jvp = backward


def erf_array(xp, x):
    """Vectorised error function of an array: SciPy/CuPy's where available, else math.erf elementwise."""
    if xp is not np:
        import cupyx.scipy.special

        return cupyx.scipy.special.erf(x)
    try:
        from scipy.special import erf as scipy_erf

        return scipy_erf(x)
    except ImportError:
        return np.vectorize(math.erf, otypes=[np.float64])(x).astype(x.dtype, copy=False)


_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)


class Erf(Function):
    """The error function; d erf(x)/dx = 2/sqrt(pi) * exp(-x**2). GELU is built on it."""

    def forward(self, x):
        self.saved = (x,)
        return erf_array(xp_of(x), x).astype(x.dtype, copy=False)

    def _dydx(self):
        (x,) = self.saved
        return _TWO_OVER_SQRT_PI * xp_of(x).exp(-x * x)

    def backward(self, g):
        return g * self._dydx()

    def jvp(self, t):
        return t * self._dydx()


def exp(x) -> Tensor:
    return Exp.apply(as_tensor(x))


def log(x) -> Tensor:
    return Log.apply(as_tensor(x))


def sqrt(x) -> Tensor:
    return Sqrt.apply(as_tensor(x))


def abs(x) -> Tensor:
    return Abs.apply(as_tensor(x))


def clip(x, min=None, max=None) -> Tensor:
    """Limit values to [min, max] (either may be None); numbers or constant arrays."""
    if min is None and max is None:
        raise ValueError("clip needs at least one of min and max")
    lo = min.data if isinstance(min, Tensor) else min
    hi = max.data if isinstance(max, Tensor) else max
    return Clip.apply(as_tensor(x), lo=lo, hi=hi)


def erf(x) -> Tensor:
    """The error function, elementwise."""
    return Erf.apply(as_tensor(x))


# ---------------------------------------------------------------------------------------------
# Selection, comparison, dtype and device moves
# ---------------------------------------------------------------------------------------------


class Where(Function):
    capturable = True  # where()'s frontend checks the condition's dtype (fixed by the signature) only

    def forward(self, a, b, cond=None):
        self.saved = (cond,)
        return xp_of(a).where(cond, a, b)

    def backward(self, g):
        (cond,) = self.saved
        xp = xp_of(g)
        na, nb = self.needs_grad
        zero = xp.zeros((), dtype=g.dtype)
        return (xp.where(cond, g, zero) if na else None), (xp.where(cond, zero, g) if nb else None)

    def jvp(self, ta, tb):
        (cond,) = self.saved
        xp = get_array_module(ta, tb)
        like = ta if ta is not None else tb
        zero = xp.zeros((), dtype=like.dtype)
        return xp.where(cond, zero if ta is None else ta, zero if tb is None else tb)


def where(cond, a, b) -> Tensor:
    """Elementwise ``a`` where ``cond`` else ``b`` (cond: bool array or Tensor, broadcast)."""
    c = cond.data if isinstance(cond, Tensor) else cond
    a_t, b_t = pair(a, b)
    xp = a_t.xp
    c = xp.asarray(c)
    if c.dtype != np.bool_:
        raise TypeError(f"where: the condition must be boolean, got dtype {c.dtype}")
    return Where.apply(a_t, b_t, cond=c)


class Compare(Function):
    """a <op> b elementwise (``less``, ``equal``, ...): a bool array. An op rather than a computation beside the
    graph, so that a captured step recomputes it on every replay (its inputs are detached: no gradient)."""

    capturable = True

    def forward(self, a, b, op="less"):
        return getattr(xp_of(a), op)(a, b)

    def backward(self, g):
        return None, None

    def jvp(self, ta, tb):
        return None


def compare(a, b, op: str) -> Tensor:
    """Elementwise comparison (``less``, ``equal``, ...): a bool tensor with no gradient."""
    a_t, b_t = pair(a, b)
    return Compare.apply(a_t.detach(), b_t.detach(), op=op)


class Cast(Function):
    def forward(self, x, dtype=None):
        return x.astype(dtype)

    def backward(self, g):
        return g  # the engine casts to the input's dtype

    def jvp(self, t):
        return t


def cast(x: Tensor, dtype) -> Tensor:
    return Cast.apply(x, dtype=np.dtype(dtype))


class ToDevice(Function):
    def forward(self, x, device: Device = None):
        self.src, self.dst = device_of(x), device
        return to_device(x, device)

    def backward(self, g):
        return to_device(g, self.src)

    def jvp(self, t):
        return to_device(t, self.dst)


def to_device_op(x: Tensor, device: Device) -> Tensor:
    return ToDevice.apply(x, device=device)
