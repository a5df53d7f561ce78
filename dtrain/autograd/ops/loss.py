"""The losses: cross-entropy (log-softmax and the negative log-likelihood fused), NLL, MSE and BCE with logits.

cross_entropy fuses log-softmax and the negative log-likelihood: its backward is
``softmax(x) * sum(G) - G`` style algebra on one (N, C) array instead of a chain of ops, and it is
computed in float32 for half-precision logits.
"""

from __future__ import annotations

import numpy as np

from ... import backend
from ..function import FusedFunction
from ..tensor import Tensor
from ._util import ONE, acc_dtype, as_tensor, xp_of

_REDUCTIONS = ("mean", "sum", "none")

def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _reduce_loss(xp, per, reduction, denom):
    if reduction == "none":
        return per
    total = per.sum()
    if reduction == "sum":
        return total
    if denom == 0:
        return xp.asarray(np.nan, dtype=per.dtype)
    return total / denom


def _grad_scale(xp, g, reduction, denom, shape):
    """Upstream gradient per sample: g (sum), g/denom (mean) or g itself (none)."""
    if reduction == "none":
        return g.reshape(shape)
    if reduction == "sum":
        return g
    return g / denom if denom else g * np.nan


class _FusedClassLoss(FusedFunction):
    """Shared part of nll_loss and cross_entropy over (M, C) log-probabilities.

    The per-sample loss is ``-(1-eps) w[t] lp[t] - eps/C * sum_c w_c lp_c`` (eps = label
    smoothing; w = class weights, 1 if none) for class targets, or ``-sum_c w_c p_c lp_c`` for
    probability targets; ignored samples contribute 0 and do not count in the mean.
    """

    def _setup(self, lp, target, weight, ignore_index, label_smoothing, reduction):
        xp = xp_of(lp)
        m, c = lp.shape
        self.reduction = reduction
        w = weight
        if target.dtype.kind == "f":  # class probabilities
            p = target.astype(lp.dtype, copy=False)
            if label_smoothing:
                p = (1 - label_smoothing) * p + label_smoothing / c
            coef = p * w if w is not None else p
            denom = m
        else:
            valid = target != ignore_index
            safe = xp.where(valid, target, 0)
            wt = w[safe] * valid if w is not None else valid.astype(lp.dtype)
            coef = xp.zeros((m, c), dtype=lp.dtype)
            coef[xp.arange(m), safe] = (1 - label_smoothing) * wt
            if label_smoothing:
                coef += (label_smoothing / c) * (w[None, :] if w is not None else 1.0) * valid[:, None]
            denom = float(wt.sum())
        self.coef, self.denom = coef, denom  # d(per-sample loss)/d(lp) = -coef
        per = -(coef * lp).sum(axis=1)
        return per


def _flatten_classes(x, target):
    """(N, C, d1, ...) -> (M, C) with the class axis last; targets follow (indices or probabilities)."""
    probs = target.dtype.kind == "f"
    if x.ndim == 1:  # one sample: (C,) with a scalar index or (C,) probabilities
        return x[None, :], (target[None, :] if probs else target.reshape(1))
    if x.ndim == 2:
        return x, target
    xp = xp_of(x)
    c = x.shape[1]
    xm = xp.moveaxis(x, 1, -1).reshape(-1, c)
    return xm, (xp.moveaxis(target, 1, -1).reshape(-1, c) if probs else target.reshape(-1))


def _unflatten_classes(gm, shape):
    if len(shape) <= 2:
        return gm.reshape(shape)
    xp = xp_of(gm)
    moved = (shape[0],) + tuple(shape[2:]) + (shape[1],)
    return xp.moveaxis(gm.reshape(moved), -1, 1)


def _sample_shape(shape):
    if len(shape) == 1:
        return ()
    return (shape[0],) + tuple(shape[2:])


class FusedCrossEntropy(_FusedClassLoss):
    composition = "nll_loss(log_softmax(x, dim=1)) (label smoothing, class weights, ignore_index)"
    capturable = True

    @staticmethod
    def capture_check(arrays, params):
        """A captured step's replay re-runs the frontend's one value-dependent decision on this call's target:
        the class-index check (the same IndexError as eagerly) and the plain path only when all are in range."""
        x = arrays[0]
        c = x.shape[0] if x.ndim == 1 else x.shape[1]
        in_range = _check_class_range(params["target"], c, params.get("ignore_index", -100), "cross_entropy")
        if params.get("plain") and not in_range:
            params = {**params, "plain": False}
        return params

    def forward(self, x, target=None, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0,
                plain=False):
        self.shape, self.dtype = x.shape, x.dtype
        self.plain = plain
        if plain:
            return self._plain_forward(x, target, reduction)
        xp = xp_of(x)
        xm, tm = _flatten_classes(x, target)
        xm = xm.astype(acc_dtype(x.dtype), copy=False)
        shifted = xm - xm.max(axis=1, keepdims=True)
        lp = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
        per = self._setup(lp, tm, weight, ignore_index, label_smoothing, reduction)
        self.saved = (lp,)
        out = _reduce_loss(xp, per, reduction, self.denom)
        return (out.reshape(_sample_shape(x.shape)) if reduction == "none" else out).astype(x.dtype)

    def _plain_forward(self, x, target, reduction):
        """The common case (N, C) logits, class indices all in range, no weights, no smoothing: softmax and the
        loss from one exp, and a backward of ``(softmax - onehot) * scale`` with no (N, C) coefficient matrix.
        Half the array calls of the general path: what a small model's step is made of. The target classes are
        addressed by flat indices into the (N, C) arrays (one gather and one in-place subtract, 2-3x cheaper
        than two-axis fancy indexing on small batches)."""
        xp = np if type(x) is np.ndarray else xp_of(x)
        xm = x if x.dtype.itemsize >= 4 else x.astype(acc_dtype(x.dtype))
        shifted = xm - backend.array_max(xm, axis=1, keepdims=True)
        e = xp.exp(shifted)
        s = backend.array_sum(e, axis=1, keepdims=True)
        n, c = x.shape
        idx = _flat_class_index(xp, target, n, c)
        per = xp.log(s[:, 0]) - shifted.reshape(-1)[idx]
        self.reduction, self.denom = reduction, n
        self.saved = (e, s, idx)
        total = backend.array_sum(per)
        out = total if reduction == "sum" else total / n  # plain: reduction is "mean" or "sum", N > 0
        return out if out.dtype == x.dtype else out.astype(x.dtype)

    def _dlogits(self, scale):
        """d loss / d logits, (M, C), for a per-sample upstream ``scale`` (M, 1) or scalar."""
        if self.plain:
            e, s, idx = self.saved
            d = e / s
            d.reshape(-1)[idx] -= ONE[d.dtype] if type(d) is np.ndarray else 1
            d *= scale
            return d
        (lp,) = self.saved
        xp = xp_of(lp)
        coef = self.coef
        # d(-sum coef*lp)/dx = softmax * sum(coef) - coef
        return (xp.exp(lp) * coef.sum(axis=1, keepdims=True) - coef) * scale

    def backward(self, g):
        if self.plain:  # (N, C) logits, a scalar loss: no reshapes
            # on NumPy a Python float instead of 0-d array arithmetic (1 µs a step); the same value: a float32
            # quotient computed in float64 and rounded once is the correctly rounded float32 quotient (a half
            # gradient is widened to float32 first either way)
            g = float(g) if type(g) is np.ndarray else g.astype(acc_dtype(self.dtype), copy=False)
            return self._dlogits(g if self.reduction == "sum" else g / self.denom)
        xp = xp_of(g)
        g = g.astype(acc_dtype(self.dtype), copy=False)
        scale = _grad_scale(xp, g, self.reduction, self.denom, (-1, 1))
        return _unflatten_classes(self._dlogits(scale), self.shape)

    def jvp(self, t):
        tm, _ = _flatten_classes(t, xp_of(t).zeros(1, dtype=np.int64))
        per = (self._dlogits(1.0) * tm).sum(axis=1)
        out = _reduce_loss(xp_of(t), per, self.reduction, self.denom)
        return out.reshape(_sample_shape(self.shape)) if self.reduction == "none" else out


class FusedNLLLoss(_FusedClassLoss):
    composition = "-sum(w[t] * lp[i, t]) / sum(w[t]): a gather (getitem), products and sums"

    def forward(self, lp, target=None, weight=None, ignore_index=-100, reduction="mean"):
        xp = xp_of(lp)
        self.shape = lp.shape
        lpm, tm = _flatten_classes(lp, target)
        per = self._setup(lpm, tm, weight, ignore_index, 0.0, reduction)
        out = _reduce_loss(xp, per, reduction, self.denom)
        return out.reshape(_sample_shape(lp.shape)) if reduction == "none" else out

    def backward(self, g):
        scale = _grad_scale(xp_of(g), g, self.reduction, self.denom, (-1, 1))
        return _unflatten_classes(-self.coef * scale, self.shape)

    def jvp(self, t):
        tm, _ = _flatten_classes(t, xp_of(t).zeros(1, dtype=np.int64))
        per = -(self.coef * tm).sum(axis=1)
        out = _reduce_loss(xp_of(t), per, self.reduction, self.denom)
        return out.reshape(_sample_shape(self.shape)) if self.reduction == "none" else out


_class_offsets: dict = {}  # (N, C) -> [0, C, 2C, ...]: where each row starts in a flattened (N, C) NumPy array


def _flat_class_index(xp, target, n: int, c: int):
    """Flat indices ``i * C + target[i]`` of the target classes in an (N, C) C-contiguous array."""
    if xp is np:
        offsets = _class_offsets.get((n, c))
        if offsets is None:
            if len(_class_offsets) > 64:
                _class_offsets.clear()
            offsets = _class_offsets[n, c] = np.arange(0, n * c, c, dtype=np.intp)
    else:
        offsets = xp.arange(0, n * c, c, dtype=np.intp)
    return offsets + (target if target.dtype.kind == "i" else target.astype(np.intp))


def _class_target(x: Tensor, target, name: str):
    xp = x.xp
    t = target.data if isinstance(target, Tensor) else xp.asarray(target)
    if t.dtype.kind == "f":
        if t.shape != x.shape:
            raise ValueError(f"{name}: probability targets must have the input's shape {x.shape}, got {t.shape}")
        return t
    if t.dtype.kind not in "iu":
        raise TypeError(f"{name}: target must hold class indices (integers) or probabilities, got {t.dtype}")
    expect = _sample_shape(x.shape)
    if t.shape != expect:
        raise ValueError(f"{name}: target shape {t.shape} does not match input {x.shape} "
                         f"(expected {expect}: one class index per sample)")
    return t


_UNSIGNED = {n: np.dtype(f"u{n}") for n in (1, 2, 4, 8)}
_INDEX_DTYPES = frozenset(np.dtype(f"{kind}{n}") for kind in "iu" for n in (1, 2, 4, 8))


def _indices_in_range(t, c: int) -> bool:
    """Every class index of the non-empty integer array ``t`` (1-D if NumPy) lies in [0, c)."""
    if t.size <= 64 and type(t) is np.ndarray:  # a few indices: Python's min/max beat a ufunc reduction's fixed cost
        idx = t.tolist()
        return min(idx) >= 0 and max(idx) < c
    # one reduction instead of min and max: as unsigned, a negative index is larger than any class
    return int(backend.array_max(t.view(_UNSIGNED[t.dtype.itemsize]))) < c


def _check_class_range(t, c: int, ignore_index: int, name: str) -> bool:
    """IndexError naming a target class outside [0, c) (ignore_index aside); True when every index is in it."""
    if t.dtype.kind == "f" or t.size == 0:
        return False
    if _indices_in_range(t.ravel() if type(t) is np.ndarray else t, c):
        return True
    valid = t[t != ignore_index]
    if valid.size and (int(valid.min()) < 0 or int(valid.max()) >= c):
        bad = int(valid.min()) if int(valid.min()) < 0 else int(valid.max())
        raise IndexError(f"{name}: target class {bad} is out of range for {c} classes")
    return False


def cross_entropy(input: Tensor, target, weight=None, ignore_index: int = -100, reduction: str = "mean",
                  label_smoothing: float = 0.0) -> Tensor:
    """Softmax cross-entropy over the class axis 1 (torch's F.cross_entropy), fused and stable.

    ``target``: class indices of shape (N, d1, ...) or class probabilities shaped like ``input``.
    """
    x = getattr(input, "data", None)
    if (type(x) is np.ndarray and type(target) is np.ndarray and weight is None and not label_smoothing
            and (reduction == "mean" or reduction == "sum") and target.dtype in _INDEX_DTYPES):
        shape = x.shape
        if (len(shape) == 2 and target.shape == (shape[0],) and shape[0] and not 0 <= ignore_index < shape[1]
                and _indices_in_range(target, shape[1])):
            # the common case (a small model's every step): (N, C) logits, N class indices in range, no options
            return FusedCrossEntropy.apply(input, target=target, reduction=reduction, plain=True)
    _check_reduction(reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    t = _class_target(input, target, "cross_entropy")
    c = input.shape[0] if input.ndim == 1 else input.shape[1]
    in_range = _check_class_range(t, c, ignore_index, "cross_entropy")
    w = _weight_array(weight, c, input, "cross_entropy")
    plain = (in_range and input.ndim == 2 and w is None and not label_smoothing and reduction != "none"
             and not 0 <= ignore_index < c and t.size > 0)
    return FusedCrossEntropy.apply(input, target=t, weight=w, ignore_index=ignore_index, reduction=reduction,
                                   label_smoothing=label_smoothing, plain=plain)


def nll_loss(input: Tensor, target, weight=None, ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    """Negative log-likelihood of log-probabilities ``input`` (N, C, ...) (torch's F.nll_loss)."""
    _check_reduction(reduction)
    t = _class_target(input, target, "nll_loss")
    if t.dtype.kind == "f":
        raise TypeError("nll_loss: target must hold class indices (integers)")
    c = input.shape[0] if input.ndim == 1 else input.shape[1]
    _check_class_range(t, c, ignore_index, "nll_loss")
    w = _weight_array(weight, c, input, "nll_loss")
    return FusedNLLLoss.apply(input, target=t, weight=w, ignore_index=ignore_index, reduction=reduction)


def _weight_array(weight, c: int, like: Tensor, name: str):
    if weight is None:
        return None
    w = weight.data if isinstance(weight, Tensor) else like.xp.asarray(weight)
    if w.shape != (c,):
        raise ValueError(f"{name}: class weight has shape {w.shape}, expected ({c},)")
    return w.astype(acc_dtype(like.dtype), copy=False)


def mse_loss(input: Tensor, target, reduction: str = "mean") -> Tensor:
    """Mean squared error (torch's F.mse_loss); shapes must match."""
    _check_reduction(reduction)
    target = as_tensor(target, input)
    if input.shape != target.shape:
        raise ValueError(f"mse_loss: input shape {input.shape} != target shape {target.shape}")
    d = input - target
    sq = d * d
    if reduction == "none":
        return sq
    return sq.sum() if reduction == "sum" else sq.mean()


class FusedBCEWithLogits(FusedFunction):
    """(1-y)·x + lw·softplus(-x), lw = 1 + (pos_weight-1)·y, computed without overflow."""

    composition = "(1 - y) * x + lw * (log(1 + exp(-abs(x))) + clip(-x, min=0)), lw = 1 + (pos_weight - 1) * y"

    def forward(self, x, y, weight=None, pos_weight=None, reduction="mean"):
        xp = xp_of(x)
        sp = xp.log1p(xp.exp(-xp.abs(x))) + xp.maximum(-x, 0)  # softplus(-x)
        lw = 1 + (pos_weight - 1) * y if pos_weight is not None else None
        per = (1 - y) * x + (lw * sp if lw is not None else sp)
        if weight is not None:
            per = per * weight
        self.saved = (x, y, sp, lw, weight)
        self.pos_weight, self.reduction, self.n = pos_weight, reduction, per.size
        if reduction == "none":
            return per
        return per.sum() if reduction == "sum" else per.mean()

    def _partials(self):
        x, y, sp, lw, weight = self.saved
        sig_neg_x = xp_of(x).exp(-(sp + x))  # sigmoid(-x) = exp(-softplus(x)), softplus(x) = sp + x
        dx = (1 - y) - (lw if lw is not None else 1) * sig_neg_x
        dy = -x + (self.pos_weight - 1) * sp if self.pos_weight is not None else -x
        if weight is not None:
            dx, dy = dx * weight, dy * weight
        return dx, dy

    def _scale(self, g):
        if self.reduction == "none":
            return g
        return g if self.reduction == "sum" else g / self.n

    def backward(self, g):
        dx, dy = self._partials()
        s = self._scale(g)
        nx, ny = self.needs_grad
        return (dx * s if nx else None), (dy * s if ny else None)

    def jvp(self, tx, ty):
        dx, dy = self._partials()
        per = (0 if tx is None else dx * tx) + (0 if ty is None else dy * ty)
        if self.reduction == "none":
            return per
        return per.sum() if self.reduction == "sum" else per.mean()


def binary_cross_entropy_with_logits(input: Tensor, target, weight=None, reduction: str = "mean",
                                     pos_weight=None) -> Tensor:
    """Sigmoid + binary cross-entropy in one stable op (torch's F.binary_cross_entropy_with_logits)."""
    _check_reduction(reduction)
    target = as_tensor(target, input)
    if target.shape != input.shape:
        raise ValueError(f"binary_cross_entropy_with_logits: target shape {target.shape} != input shape {input.shape}")
    w = weight.data if isinstance(weight, Tensor) else (None if weight is None else input.xp.asarray(weight))
    pw = pos_weight.data if isinstance(pos_weight, Tensor) else (
        None if pos_weight is None else input.xp.asarray(pos_weight))
    return FusedBCEWithLogits.apply(input, target, weight=w, pos_weight=pw, reduction=reduction)
