"""Matrix products: matmul (NumPy semantics, batched and 1-D) and the fused affine map ``linear``."""

from __future__ import annotations

import numpy as np

from ...backend import array_sum, get_array_module
from ..autocast import _state as _autocast_state
from ..autocast import cast_inputs
from ..function import Function, FusedFunction
from ..tensor import Tensor
from ._util import pair, tsum


def _swap(a):
    return a.swapaxes(-1, -2)


def mm(a, b, out=None):
    """a @ b in the operands' own dtype. Half operands (float16, bfloat16) are multiplied with float32
    accumulation, as GPU tensor cores do, and the product is rounded to half once: more accurate than
    NumPy's half-precision loops, and on a CPU much faster (float32 BLAS). ``out``: an array of the product's
    shape to write it into when the operands share its dtype (and are float32 or wider); otherwise ignored."""
    if a.dtype == b.dtype and a.dtype.itemsize >= 4:  # the common case, without result_type's cost
        if out is not None and out.dtype == a.dtype:
            return get_array_module(a).matmul(a, b, out=out)
        return a @ b
    expected = np.result_type(a.dtype, b.dtype)
    if expected.itemsize < 4:
        return (a.astype(np.float32) @ b.astype(np.float32)).astype(expected)
    out = a @ b
    return out if out.dtype == expected else out.astype(expected)


class Matmul(Function):
    """a @ b with NumPy's rules: 1-D operands are promoted and the added axis removed again."""

    capturable = True  # matmul()'s frontend checks shapes only (autocast casts are ops of their own)

    def forward(self, a, b):
        self.saved = (a, b)
        return mm(a, b)

    def backward(self, g):
        a, b = self.saved
        na, nb = self.needs_grad
        if a.ndim == 1 and b.ndim == 1:  # dot product: g is a scalar
            return (g * b if na else None), (g * a if nb else None)
        if a.ndim == 1:  # (k) @ (..., k, m) -> (..., m)
            g2 = g[..., None, :]
            ga = mm(g2, _swap(b))[..., 0, :] if na else None
            gb = a[:, None] * g2 if nb else None  # outer products, summed over batch by the engine
            return ga, gb
        if b.ndim == 1:  # (..., n, k) @ (k) -> (..., n)
            g2 = g[..., :, None]
            ga = g2 * b if na else None
            gb = mm(_swap(a), g2)[..., :, 0] if nb else None
            return ga, gb
        return (mm(g, _swap(b)) if na else None), (mm(_swap(a), g) if nb else None)

    def jvp(self, ta, tb):
        a, b = self.saved
        return tsum(None if ta is None else ta @ b, None if tb is None else a @ tb)


def matmul(a, b) -> Tensor:
    """Matrix product with NumPy's broadcasting of batch dimensions."""
    a, b = pair(a, b)
    a, b = cast_inputs(a, b)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"matmul: both operands need at least one dimension, got shapes {a.shape} and {b.shape}")
    ka = a.shape[-1]
    kb = b.shape[0] if b.ndim == 1 else b.shape[-2]
    if ka != kb:
        raise ValueError(
            f"matmul: shapes {a.shape} and {b.shape} do not align: {ka} (last dim of a) != {kb} "
            f"({'first' if b.ndim == 1 else 'second-to-last'} dim of b)"
        )
    return Matmul.apply(a, b)


class FusedLinear(FusedFunction):
    """y = x @ w.T + b, fused: the weight gradient comes out C-contiguous in w's own layout."""

    composition = "matmul(x, permute(w)) + b"
    capturable = True  # linear()'s frontend checks shapes only (autocast casts are ops of their own)
    writes_grad_into = (1,)  # the weight gradient, straight into a buffer the weight offers (DDP's buckets)

    def forward(self, x, w, b=None):
        self.saved = (x, w)
        # the same product as mm's, without its call where mm would do just that (a small model's every layer)
        y = x @ w.T if x.dtype is w.dtype and x.dtype.itemsize >= 4 else mm(x, w.T)
        if b is not None:
            y += b
        return y

    def backward(self, g):
        x, w = self.saved
        needs = self.needs_grad
        if g.ndim == 2 and self.grad_out is None and g.dtype is x.dtype is w.dtype and g.dtype.itemsize >= 4:
            # what the general path below computes, without mm's and array_sum's calls (see forward)
            gx = g @ w if needs[0] else None
            gw = g.T @ x if needs[1] else None
        else:
            gx = mm(g, w) if needs[0] else None
            if g.ndim != 2:
                g, x = g.reshape(-1, w.shape[0]), x.reshape(-1, w.shape[1])
            gw = mm(g.T, x, out=None if self.grad_out is None else self.grad_out[1]) if needs[1] else None
        if len(needs) == 2:
            return gx, gw
        if not needs[2]:
            return gx, gw, None
        return gx, gw, array_sum(g, axis=0)

    def jvp(self, tx, tw, tb=None):
        x, w = self.saved
        return tsum(None if tx is None else tx @ w.T, None if tw is None else x @ tw.T, tb)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Affine map ``x @ weight.T + bias`` (torch's F.linear: weight has shape (out, in))."""
    if _autocast_state.dtype is not None:
        x, weight, bias = cast_inputs(x, weight, bias)
    ws, xs = weight.shape, x.shape  # read once: every small model's step calls this
    if len(ws) != 2 or not xs or xs[-1] != ws[1]:
        _linear_shape_error(xs, ws)
    if bias is None:
        return FusedLinear.apply(x, weight)
    if bias.shape != (ws[0],):
        raise ValueError(f"linear: bias shape {bias.shape} != ({ws[0]},)")
    return FusedLinear.apply(x, weight, bias)


def _linear_shape_error(xs: tuple, ws: tuple):
    if len(ws) != 2:
        raise ValueError(f"linear: weight must be 2-D (out_features, in_features), got shape {ws}")
    raise ValueError(
        f"linear: input's last dimension {xs[-1] if xs else None} != in_features "
        f"{ws[1]} (input shape {xs}, weight shape {ws})"
    )
