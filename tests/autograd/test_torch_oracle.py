"""dtrain against PyTorch as an oracle: forward values and gradients on identical float64 inputs.

Every case runs one dtrain function and its torch equivalent on the same NumPy inputs, compares the
outputs, backpropagates the same seeded random upstream gradient through both and compares the
gradient of every input that requires one. Only this test imports torch; dtrain never does (see
``test_dtrain_does_not_import_torch``). The module is skipped when torch is not installed.
"""

from __future__ import annotations

import operator
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pytest

import dtrain as dt
import dtrain.nn.functional as F

torch = pytest.importorskip("torch")
TF = torch.nn.functional

RTOL, ATOL = 1e-10, 1e-12


# ---------------------------------------------------------------------------------------------
# Harness
# ---------------------------------------------------------------------------------------------


def check(dt_fn: Callable, th_fn: Callable, inputs: Sequence[np.ndarray], grad: Sequence[bool] | None = None,
          *, rtol: float = RTOL, atol: float = ATOL, seed: int = 1234):
    """Compare ``dt_fn(*inputs)`` with ``th_fn(*inputs)``: values, then gradients of a random upstream.

    ``inputs`` are float arrays turned into float64 tensors (``grad[i]``: whether input i requires a
    gradient; default all). Returns the dtrain and torch input tensors for further checks.
    """
    grad = (True,) * len(inputs) if grad is None else tuple(grad)
    assert len(grad) == len(inputs)
    d_in = [dt.tensor(a, dtype="float64", requires_grad=r) for a, r in zip(inputs, grad)]
    t_in = [torch.tensor(a, dtype=torch.float64, requires_grad=r) for a, r in zip(inputs, grad)]
    d_out = dt_fn(*d_in)
    t_out = th_fn(*t_in)
    t_val = t_out.detach().numpy()
    np.testing.assert_allclose(d_out.numpy(), t_val, rtol=rtol, atol=atol, strict=True, err_msg="forward value")
    if not any(grad):
        return d_in, t_in
    g = np.asarray(np.random.default_rng(seed).standard_normal(t_val.shape))
    d_out.backward(g.copy())
    t_out.backward(torch.from_numpy(g.copy()))
    for i, (d, t, r) in enumerate(zip(d_in, t_in, grad)):
        if not r:
            assert d.grad is None, f"input {i} does not require grad but got one"
            continue
        assert (d.grad is None) == (t.grad is None), f"input {i}: dtrain grad {d.grad}, torch grad {t.grad}"
        if t.grad is not None:
            np.testing.assert_allclose(d.grad, t.grad.numpy(), rtol=rtol, atol=atol, strict=True,
                                       err_msg=f"gradient of input {i}")
    return d_in, t_in


@dataclass(frozen=True)
class Case:
    dt_fn: Callable
    th_fn: Callable
    inputs: tuple
    grad: tuple | None
    rtol: float
    atol: float


def case(id: str, dt_fn: Callable, th_fn: Callable | None, *inputs: np.ndarray, grad=None, rtol=RTOL, atol=ATOL):
    """One parametrized case; ``th_fn=None`` means the same callable works on both libraries."""
    return pytest.param(Case(dt_fn, th_fn or dt_fn, inputs, grad, rtol, atol), id=id)


def run(c: Case) -> None:
    check(c.dt_fn, c.th_fn, c.inputs, c.grad, rtol=c.rtol, atol=c.atol)


_rng = np.random.default_rng(20240521)


def rn(*shape) -> np.ndarray:
    """Standard-normal float64 array."""
    return _rng.standard_normal(shape)


def pos(*shape) -> np.ndarray:
    """Positive values in [0.5, 2)."""
    return _rng.uniform(0.5, 2.0, shape)


def away(*shape) -> np.ndarray:
    """Values with |v| in [0.5, 2) and random sign (safe divisors)."""
    return pos(*shape) * _rng.choice([-1.0, 1.0], shape)


def ints(lo, hi, *shape) -> np.ndarray:
    return _rng.integers(lo, hi, shape).astype(np.int64)


def sh(shape) -> str:
    return "x".join(map(str, shape)) if shape else "scalar"


def T(a: np.ndarray):
    """A constant (non-differentiable) torch tensor of a NumPy array."""
    return torch.from_numpy(np.asarray(a))


# ---------------------------------------------------------------------------------------------
# Arithmetic
# ---------------------------------------------------------------------------------------------

_BINARY_SHAPES = [
    ((3, 4), (3, 4)),
    ((3, 1, 4), (2, 4)),  # broadcasting in both operands
    ((1, 4), (3, 1)),  # size-1 dims stretched on both sides
    ((), (2, 3)),  # 0-d operand
    ((2, 3), (3,)),
    ((0, 4), (4,)),  # zero-size
    ((2, 1, 0), (3, 1)),  # zero-size after broadcasting
]

ARITH = [
    case(f"{name}-{sh(sa)}-{sh(sb)}", fn, None, away(*sa), away(*sb))
    for name, fn in [("add", operator.add), ("sub", operator.sub), ("mul", operator.mul), ("div", operator.truediv)]
    for sa, sb in _BINARY_SHAPES
] + [
    case("add-only-lhs-grad", operator.add, None, rn(3, 1, 4), rn(2, 4), grad=(True, False)),
    case("div-only-rhs-grad", operator.truediv, None, rn(3, 4), away(4), grad=(False, True)),
    case("mul-fanout", lambda a: a * a + a, None, rn(3, 4)),
    case("add-python-scalar", lambda a: a + 2.5, None, rn(3, 4)),
    case("radd-python-scalar", lambda a: 2.5 + a, None, rn(3, 4)),
    case("sub-python-scalar", lambda a: a - 1.5, None, rn(3, 4)),
    case("rsub-python-scalar", lambda a: 1.5 - a, None, rn(3, 4)),
    case("mul-python-scalar", lambda a: a * -2.0, None, rn(3, 4)),
    case("div-python-scalar", lambda a: a / 3.0, None, rn(3, 4)),
    case("rdiv-python-scalar", lambda a: 3.0 / a, None, away(3, 4)),
    case("neg", operator.neg, None, rn(3, 4)),
    case("neg-size1", operator.neg, None, rn(1, 4, 1)),
    case("neg-zero-size", operator.neg, None, rn(0, 3)),
    case("pow-scalar-2", lambda a: a**2, None, rn(3, 4)),
    case("pow-scalar-3", lambda a: a**3, None, rn(3, 4)),
    case("pow-scalar-1", lambda a: a**1, None, rn(3, 4)),
    case("pow-scalar-0", lambda a: a**0, None, pos(3, 4)),
    case("pow-scalar-0.5", lambda a: a**0.5, None, pos(3, 4)),
    case("pow-scalar-neg1.5", lambda a: a**-1.5, None, pos(3, 4)),
    case("pow-scalar-int-neg-base", lambda a: a**-2, None, away(3, 4)),
    case("pow-scalar-zero-size", lambda a: a**2.5, None, pos(0, 2)),
    case("pow-tensor-3x4-3x4", operator.pow, None, pos(3, 4), rn(3, 4)),
    case("pow-tensor-3x1x4-2x4", operator.pow, None, pos(3, 1, 4), rn(2, 4)),
    case("pow-tensor-1x4-3x1", operator.pow, None, pos(1, 4), rn(3, 1)),
    case("pow-tensor-only-exponent-grad", operator.pow, None, pos(3, 4), rn(4), grad=(False, True)),
    case("rpow-python-base", lambda a: 2.0**a, None, rn(3, 4)),
]


@pytest.mark.parametrize("c", ARITH)
def test_arithmetic(c):
    run(c)


# ---------------------------------------------------------------------------------------------
# Matrix products
# ---------------------------------------------------------------------------------------------

_MATMUL_SHAPES = [
    ((3, 4), (4, 5)),
    ((2, 1, 3, 4), (5, 4, 2)),  # batch dims broadcast: (2, 1) with (5,)
    ((2, 3, 4), (4, 5)),  # batched @ 2-D
    ((4, 5), (2, 5, 3)),  # 2-D @ batched
    ((4,), (4, 5)),
    ((3, 4), (4,)),
    ((4,), (4,)),
    ((4,), (2, 4, 5)),  # 1-D @ batched
    ((2, 1, 3, 4), (4,)),  # batched @ 1-D
    ((1, 4), (4, 1)),
    ((3, 0), (0, 5)),  # empty contraction: zeros
    ((0, 3, 4), (4, 2)),  # empty batch
]

MATMUL = [
    case(f"matmul-{sh(sa)}-{sh(sb)}", operator.matmul, None, rn(*sa), rn(*sb)) for sa, sb in _MATMUL_SHAPES
] + [
    case("matmul-fn-batched", dt.matmul, torch.matmul, rn(2, 3, 4), rn(2, 4, 2)),
    case("matmul-only-rhs-grad-1d-lhs", operator.matmul, None, rn(4), rn(2, 4, 5), grad=(False, True)),
    case("matmul-only-lhs-grad-1d-rhs", operator.matmul, None, rn(2, 3, 4), rn(4), grad=(True, False)),
]


@pytest.mark.parametrize("c", MATMUL)
def test_matmul(c):
    run(c)


# ---------------------------------------------------------------------------------------------
# Reductions and normalised exponentials
# ---------------------------------------------------------------------------------------------

_X = rn(2, 3, 4)
_TIES = _rng.integers(0, 3, (2, 3, 4)).astype(np.float64)  # many tied extremes
_ALL = (0, 1, 2)

REDUCE = [
    case("sum-all", lambda x: x.sum(), None, _X),
    case("sum-axis1", lambda x: x.sum(axis=1), lambda x: x.sum(dim=1), _X),
    case("sum-axes02-keepdims", lambda x: x.sum(axis=(0, 2), keepdims=True), lambda x: x.sum(dim=(0, 2), keepdim=True),
         _X),
    case("sum-dim-neg-keepdim", lambda x: x.sum(dim=-1, keepdim=True), None, _X),
    case("sum-fn", lambda x: dt.sum(x, 1), lambda x: torch.sum(x, 1), _X),
    case("sum-size1-axis", lambda x: x.sum(axis=1), lambda x: x.sum(dim=1), rn(2, 1, 4)),
    case("sum-zero-size-axis0", lambda x: x.sum(axis=0), lambda x: x.sum(dim=0), rn(0, 3)),
    case("sum-zero-size-all", lambda x: x.sum(), None, rn(0, 3)),
    case("mean-all", lambda x: x.mean(), None, _X),
    case("mean-axis1", lambda x: x.mean(axis=1), lambda x: x.mean(dim=1), _X),
    case("mean-axes02-keepdims", lambda x: x.mean(axis=(0, 2), keepdims=True),
         lambda x: x.mean(dim=(0, 2), keepdim=True), _X),
    case("mean-dim-neg-keepdim", lambda x: x.mean(dim=-1, keepdim=True), None, _X),
    case("mean-zero-size-axis1", lambda x: x.mean(axis=1), lambda x: x.mean(dim=1), rn(0, 3)),
]
for _name, _dmeth, _top in [("max", "max", torch.amax), ("min", "min", torch.amin)]:
    REDUCE += [
        case(f"{_name}-all{tag}", lambda x, m=_dmeth: getattr(x, m)(), lambda x, f=_top: f(x, dim=_ALL), data)
        for tag, data in [("", _X), ("-ties", _TIES)]
    ] + [
        case(f"{_name}-axis1-ties", lambda x, m=_dmeth: getattr(x, m)(axis=1), lambda x, f=_top: f(x, dim=1), _TIES),
        case(f"{_name}-axes02-keepdims-ties", lambda x, m=_dmeth: getattr(x, m)(axis=(0, 2), keepdims=True),
             lambda x, f=_top: f(x, dim=(0, 2), keepdim=True), _TIES),
        case(f"{_name}-dim-neg-keepdim", lambda x, m=_dmeth: getattr(x, m)(dim=-1, keepdim=True),
             lambda x, f=_top: f(x, dim=-1, keepdim=True), _X),
        case(f"{_name}-fn-axis0", lambda x, m=_name: getattr(dt, "a" + m)(x, 0), lambda x, f=_top: f(x, dim=0), _X),
        case(f"{_name}-size1-axis", lambda x, m=_dmeth: getattr(x, m)(axis=1), lambda x, f=_top: f(x, dim=1),
             rn(2, 1, 4)),
        # a zero-size tensor reduced over a non-empty axis is well defined (torch and NumPy: shape (0,))
        case(f"{_name}-zero-size-axis1", lambda x, m=_dmeth: getattr(x, m)(axis=1), lambda x, f=_top: f(x, dim=1),
             rn(0, 3)),
    ]
REDUCE += [
    case("logsumexp-method-axis1", lambda x: x.logsumexp(axis=1), lambda x: torch.logsumexp(x, dim=1), _X),
    case("logsumexp-F-axes02-keepdim", lambda x: F.logsumexp(x, (0, 2), keepdim=True),
         lambda x: torch.logsumexp(x, dim=(0, 2), keepdim=True), _X),
    case("logsumexp-F-all", lambda x: F.logsumexp(x), lambda x: torch.logsumexp(x, dim=_ALL), _X),
    case("logsumexp-large", lambda x: F.logsumexp(x, dim=-1), lambda x: torch.logsumexp(x, dim=-1), 500 * _X),
    case("logsumexp-fn-size1", lambda x: dt.logsumexp(x, 1), lambda x: torch.logsumexp(x, dim=1), rn(2, 1, 4)),
]
for _d in (0, 1, -1):
    REDUCE += [
        case(f"softmax-dim{_d}", lambda x, d=_d: F.softmax(x, d), lambda x, d=_d: TF.softmax(x, d), _X),
        case(f"log_softmax-dim{_d}", lambda x, d=_d: F.log_softmax(x, d), lambda x, d=_d: TF.log_softmax(x, d), _X),
    ]
REDUCE += [
    case("softmax-large", lambda x: F.softmax(x, dim=-1), lambda x: TF.softmax(x, -1), 300 * _X),
    case("log_softmax-large", lambda x: F.log_softmax(x, dim=-1), lambda x: TF.log_softmax(x, -1), 300 * _X),
    case("softmax-method-size1", lambda x: x.softmax(axis=1), lambda x: x.softmax(dim=1), rn(2, 1, 4)),
    case("log_softmax-dtrain-fn", lambda x: dt.log_softmax(x, 1), lambda x: TF.log_softmax(x, 1), _X),
]


@pytest.mark.parametrize("c", REDUCE)
def test_reduction(c):
    run(c)


# ---------------------------------------------------------------------------------------------
# Shapes, indexing, joining
# ---------------------------------------------------------------------------------------------

_IDX = np.array([0, 2, 0, 0, -1])  # repeated (and negative) indices: gradients accumulate
_MASK = _X > 0
_C34 = _rng.random((3, 4)) > 0.5
_C31 = np.array([[True], [False], [True]])
_C234 = _rng.random((2, 3, 4)) > 0.5

SHAPE = [
    case("reshape-4x6", lambda x: x.reshape(4, 6), None, _X),
    case("reshape-minus1", lambda x: x.reshape(-1), None, _X),
    case("reshape-tuple-size1", lambda x: x.reshape((3, 1, 8)), None, _X),
    case("view-2x12", lambda x: x.view(2, -1), None, _X),
    case("reshape-zero-size", lambda x: x.reshape(3, 0), None, rn(0, 3)),
    case("transpose-0-2", lambda x: x.transpose(0, 2), None, _X),
    case("transpose-neg", lambda x: x.transpose(-1, -2), None, _X),
    case("transpose-size1", lambda x: x.transpose(0, 1), None, rn(1, 3, 1)),
    case("permute-2-0-1", lambda x: x.permute(2, 0, 1), None, _X),
    case("permute-tuple", lambda x: x.permute((1, 0, 2)), lambda x: x.permute(1, 0, 2), _X),
    case("mT", lambda x: x.mT, None, _X),
    case("getitem-slices", lambda x: x[1:2, ::2], None, _X),
    case("getitem-ellipsis-int", lambda x: x[..., -1], None, _X),
    case("getitem-none-int", lambda x: x[None, :, 1], None, _X),
    case("getitem-int", lambda x: x[1], None, _X),
    case("getitem-keep-size1", lambda x: x[:, 1:2, None], None, _X),
    case("getitem-neg-start-step", lambda x: x[-2:, :, 1::2], None, _X),
    case("getitem-empty-slice", lambda x: x[:, 2:2], None, _X),
    case("getitem-intarray-repeated", lambda x: x[_IDX[:4]], lambda x: x[T(_IDX[:4])], rn(3, 4)),
    case("getitem-intarray-negative", lambda x: x[_IDX], lambda x: x[T(_IDX)], rn(3, 4)),
    case("getitem-dtensor-index", lambda x: x[dt.tensor(_IDX)], lambda x: x[T(_IDX)], rn(3, 4)),
    case("getitem-intarray-2d", lambda x: x[np.array([[0, 1], [1, 1]])], lambda x: x[T(np.array([[0, 1], [1, 1]]))],
         rn(3, 4)),
    case("getitem-two-arrays-repeated", lambda x: x[np.array([0, 1, 0]), np.array([2, 2, 2])],
         lambda x: x[T(np.array([0, 1, 0])), T(np.array([2, 2, 2]))], rn(3, 4)),
    case("getitem-slice-and-list", lambda x: x[:, [2, 2, 0]], None, _X),
    case("getitem-bool-mask", lambda x: x[_MASK], lambda x: x[T(_MASK)], _X),
    case("concat-axis1-three", lambda a, b, c: dt.concat([a, b, c], axis=1), lambda a, b, c: torch.cat([a, b, c], 1),
         rn(2, 3, 4), rn(2, 1, 4), rn(2, 2, 4)),
    case("concat-axis-neg", lambda a, b: dt.concat([a, b], axis=-1), lambda a, b: torch.cat([a, b], -1),
         rn(2, 3), rn(2, 5)),
    case("cat-axis0", lambda a, b: dt.cat([a, b]), lambda a, b: torch.cat([a, b]), rn(1, 3), rn(2, 3)),
    case("concat-zero-size", lambda a, b: dt.concat([a, b], axis=1), lambda a, b: torch.cat([a, b], 1),
         rn(2, 0, 4), rn(2, 3, 4)),
    case("concat-partial-grad", lambda a, b: dt.concat([a, b], axis=0), lambda a, b: torch.cat([a, b], 0),
         rn(2, 3), rn(2, 3), grad=(False, True)),
    case("stack-axis0", lambda a, b, c: dt.stack([a, b, c]), lambda a, b, c: torch.stack([a, b, c]),
         rn(3, 4), rn(3, 4), rn(3, 4)),
    case("stack-axis1", lambda a, b: dt.stack([a, b], axis=1), lambda a, b: torch.stack([a, b], 1), rn(3, 4), rn(3, 4)),
    case("stack-axis-neg", lambda a, b: dt.stack([a, b], axis=-1), lambda a, b: torch.stack([a, b], -1),
         rn(3, 1), rn(3, 1)),
    case("stack-zero-size", lambda a, b: dt.stack([a, b], axis=1), lambda a, b: torch.stack([a, b], 1),
         rn(0, 2), rn(0, 2)),
    case("where-bcast-b", lambda a, b: dt.where(_C34, a, b), lambda a, b: torch.where(T(_C34), a, b),
         rn(3, 4), rn(4)),
    case("where-bcast-cond", lambda a, b: dt.where(_C31, a, b), lambda a, b: torch.where(T(_C31), a, b),
         rn(3, 4), rn(1, 4)),
    case("where-cond-widest", lambda a, b: dt.where(_C234, a, b), lambda a, b: torch.where(T(_C234), a, b),
         rn(3, 4), rn(4)),
    case("where-python-scalar", lambda a: dt.where(_C34, a, 0.0), lambda a: torch.where(T(_C34), a, 0.0), rn(3, 4)),
    case("where-same-tensor", lambda a: dt.where(_C34, a, -a), lambda a: torch.where(T(_C34), a, -a), rn(3, 4)),
]


@pytest.mark.parametrize("c", SHAPE)
def test_shape_and_indexing(c):
    run(c)


# ---------------------------------------------------------------------------------------------
# Math functions and activations
# ---------------------------------------------------------------------------------------------

# exact zeros and clip boundaries included: the subgradient conventions must match torch's
_U = np.concatenate([rn(10), [0.0, 0.0, 0.5, -0.5, 30.0, -30.0, -800.0, 800.0]]).reshape(3, 6)
_UMOD = _U[:, :5]  # drops the last column, which holds +800 (exp overflows there)

UNARY = [
    case("exp", dt.exp, torch.exp, _UMOD),
    case("exp-method-zero-size", lambda x: x.exp(), None, rn(0, 2)),
    case("log", dt.log, torch.log, pos(3, 4)),
    case("log-method", lambda x: x.log(), None, pos(2, 1, 3)),
    case("sqrt", dt.sqrt, torch.sqrt, pos(3, 4)),
    case("sqrt-method", lambda x: x.sqrt(), None, pos(4)),
    case("abs", dt.abs, torch.abs, _U),
    case("erf", dt.autograd.ops.erf, torch.erf, _U),
    case("abs-operator", abs, None, _U),
    case("clip-both", lambda x: x.clip(-0.5, 0.5), lambda x: torch.clamp(x, -0.5, 0.5), _U),
    case("clip-min-only", lambda x: x.clip(min=0.0), lambda x: torch.clamp(x, min=0.0), _U),
    case("clip-max-only", lambda x: x.clip(max=0.5), lambda x: torch.clamp(x, max=0.5), _U),
    case("clip-fn", lambda x: dt.clip(x, -1.0, 1.0), lambda x: torch.clamp(x, -1.0, 1.0), _U),
    case("tanh", dt.tanh, torch.tanh, _U),
    case("tanh-F", F.tanh, torch.tanh, _UMOD),
    case("sigmoid", dt.sigmoid, torch.sigmoid, _U),
    case("sigmoid-F", F.sigmoid, torch.sigmoid, _UMOD),
    case("relu", dt.relu, torch.relu, _U),
    case("relu-F", F.relu, TF.relu, _U),
    case("relu-method", lambda x: x.relu(), None, _U),
    case("leaky_relu-default", F.leaky_relu, TF.leaky_relu, _U),
    case("leaky_relu-0.2", lambda x: F.leaky_relu(x, 0.2), lambda x: TF.leaky_relu(x, 0.2), _U),
    case("elu-alpha1", F.elu, TF.elu, _U),
    case("elu-alpha0.5", lambda x: F.elu(x, 0.5), lambda x: TF.elu(x, 0.5), _U),
    case("gelu-erf", F.gelu, TF.gelu, _U),
    case("gelu-tanh", lambda x: F.gelu(x, approximate="tanh"), lambda x: TF.gelu(x, approximate="tanh"), _U),
    case("gelu-bcast-shape", F.gelu, TF.gelu, 3 * rn(2, 1, 5)),
    case("silu", F.silu, TF.silu, _U),
]


@pytest.mark.parametrize("c", UNARY)
def test_unary(c):
    run(c)


# ---------------------------------------------------------------------------------------------
# nn.functional: pad, linear, convolution, pooling, embedding, layer norm, attention
# ---------------------------------------------------------------------------------------------

NN = [
    case("pad-1-2-0-1-value", lambda x: F.pad(x, (1, 2, 0, 1), value=0.5),
         lambda x: TF.pad(x, (1, 2, 0, 1), value=0.5), rn(2, 3, 4)),
    case("pad-last-dim", lambda x: F.pad(x, (1, 1)), lambda x: TF.pad(x, (1, 1)), rn(2, 3)),
    case("pad-three-dims", lambda x: F.pad(x, (1, 0, 0, 2, 1, 1), value=-1.0),
         lambda x: TF.pad(x, (1, 0, 0, 2, 1, 1), value=-1.0), rn(2, 3, 4)),
    case("pad-zero-size", lambda x: F.pad(x, (1, 1)), lambda x: TF.pad(x, (1, 1)), rn(0, 3)),
    case("linear-2d-bias", F.linear, TF.linear, rn(5, 4), rn(3, 4), rn(3)),
    case("linear-3d-bias", F.linear, TF.linear, rn(2, 5, 4), rn(3, 4), rn(3)),
    case("linear-no-bias", F.linear, TF.linear, rn(5, 4), rn(3, 4)),
    case("linear-1d-input", F.linear, TF.linear, rn(4), rn(3, 4), rn(3)),
    case("linear-weight-grad-only", F.linear, TF.linear, rn(2, 4), rn(3, 4), rn(3), grad=(False, True, False)),
]

# (id, x shape, w shape, bias?, kwargs)
_CONV = [
    ("3x3", (2, 3, 7, 7), (4, 3, 3, 3), True, {}),
    ("stride2-pad1", (2, 3, 7, 7), (4, 3, 3, 3), True, dict(stride=2, padding=1)),
    ("dilation2", (2, 3, 9, 8), (4, 3, 3, 3), True, dict(dilation=2)),
    ("groups2-pad1", (2, 4, 6, 6), (6, 2, 3, 3), True, dict(padding=1, groups=2)),
    ("depthwise", (2, 4, 5, 5), (4, 1, 3, 3), False, dict(groups=4)),
    ("groups2-stride2-pad1-dil2", (2, 4, 9, 9), (6, 2, 3, 3), True, dict(stride=2, padding=1, dilation=2, groups=2)),
    ("rect-tuple-args", (1, 2, 6, 7), (3, 2, 2, 3), False, dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2))),
    ("1x1", (2, 3, 4, 4), (5, 3, 1, 1), True, {}),
    ("stride2-unused-edge", (1, 2, 8, 8), (2, 2, 3, 3), True, dict(stride=2)),
    ("size1-spatial", (2, 3, 1, 1), (2, 3, 1, 1), True, {}),
    ("zero-batch", (0, 3, 5, 5), (4, 3, 3, 3), True, dict(padding=1)),
    ("zero-batch-groups2-stride2", (0, 4, 6, 6), (4, 2, 3, 3), True, dict(stride=2, padding=1, groups=2)),
]
for _id, _xs, _ws, _b, _kw in _CONV:
    _arrs = (rn(*_xs), rn(*_ws)) + ((rn(_ws[0]),) if _b else ())
    NN.append(case(f"conv2d-{_id}", lambda *a, k=_kw: F.conv2d(*a, **k), lambda *a, k=_kw: TF.conv2d(*a, **k), *_arrs))
NN.append(case("conv2d-positional-args", lambda x, w, b: F.conv2d(x, w, b, 2, 1, 1, 2),
               lambda x, w, b: TF.conv2d(x, w, b, 2, 1, 1, 2), rn(1, 4, 5, 5), rn(2, 2, 3, 3), rn(2)))
NN.append(case("conv2d-weight-grad-only", lambda x, w: F.conv2d(x, w, padding=1),
               lambda x, w: TF.conv2d(x, w, padding=1), rn(2, 3, 5, 5), rn(4, 3, 3, 3), grad=(False, True)))

_POOL_X = rn(2, 3, 7, 6)  # random floats: no tied maxima
for _id, _kw in [
    ("k2", dict(kernel_size=2)),
    ("k3-s2-p1", dict(kernel_size=3, stride=2, padding=1)),
    ("k2x3-s1x2-p1", dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 1))),
    ("k3-s1-overlap", dict(kernel_size=3, stride=1)),
    ("k2-dilation2", dict(kernel_size=2, stride=1, dilation=2)),
]:
    NN.append(case(f"max_pool2d-{_id}", lambda x, k=_kw: F.max_pool2d(x, **k), lambda x, k=_kw: TF.max_pool2d(x, **k),
                   _POOL_X))
for _id, _kw in [
    ("k2", dict(kernel_size=2)),
    ("k3-s2-p1-incl", dict(kernel_size=3, stride=2, padding=1, count_include_pad=True)),
    ("k3-s2-p1-excl", dict(kernel_size=3, stride=2, padding=1, count_include_pad=False)),
    ("k3x2-s1-p1x0-excl", dict(kernel_size=(3, 2), stride=1, padding=(1, 0), count_include_pad=False)),
    ("k2-s1-p1-excl", dict(kernel_size=2, stride=1, padding=1, count_include_pad=False)),
    ("k2-s1-p1-incl", dict(kernel_size=2, stride=1, padding=1, count_include_pad=True)),
]:
    NN.append(case(f"avg_pool2d-{_id}", lambda x, k=_kw: F.avg_pool2d(x, **k), lambda x, k=_kw: TF.avg_pool2d(x, **k),
                   _POOL_X))

_EMB_IDX = np.array([[0, 2, 0], [4, 2, 0]])
NN += [
    case("embedding-repeated", lambda w: F.embedding(_EMB_IDX, w), lambda w: TF.embedding(T(_EMB_IDX), w), rn(5, 4)),
    case("embedding-padding_idx", lambda w: F.embedding(_EMB_IDX, w, padding_idx=2),
         lambda w: TF.embedding(T(_EMB_IDX), w, padding_idx=2), rn(5, 4)),
    case("embedding-padding_idx-negative", lambda w: F.embedding(_EMB_IDX, w, padding_idx=-1),
         lambda w: TF.embedding(T(_EMB_IDX), w, padding_idx=-1), rn(5, 4)),
    case("embedding-dtensor-1d", lambda w: F.embedding(dt.tensor([3, 3, 1]), w),
         lambda w: TF.embedding(torch.tensor([3, 3, 1]), w), rn(5, 4)),
    case("embedding-0d-index", lambda w: F.embedding(np.array(3), w), lambda w: TF.embedding(torch.tensor(3), w),
         rn(5, 4)),
    case("layer_norm-int-shape-affine", lambda x, w, b: F.layer_norm(x, 4, w, b),
         lambda x, w, b: TF.layer_norm(x, (4,), w, b), rn(2, 3, 4), rn(4), rn(4)),
    case("layer_norm-tuple-no-affine", lambda x: F.layer_norm(x, (4,)), lambda x: TF.layer_norm(x, (4,)),
         rn(2, 3, 4)),
    case("layer_norm-2d-shape-affine-eps", lambda x, w, b: F.layer_norm(x, (3, 4), w, b, eps=1e-3),
         lambda x, w, b: TF.layer_norm(x, (3, 4), w, b, eps=1e-3), rn(2, 3, 4), rn(3, 4), rn(3, 4)),
    case("layer_norm-2d-shape-weight-only", lambda x, w: F.layer_norm(x, [3, 4], w),
         lambda x, w: TF.layer_norm(x, [3, 4], w), rn(2, 3, 4), rn(3, 4)),
    case("layer_norm-size1", lambda x, w, b: F.layer_norm(x, 1, w, b), lambda x, w, b: TF.layer_norm(x, (1,), w, b),
         rn(5, 1), rn(1), rn(1)),
]

_BOOL_MASK = np.array([[True, False, True, True, False], [False, False, False, True, True], [True] * 5])
_FLOAT_MASK = rn(3, 5)
_FLOAT_MASK4 = rn(2, 1, 3, 5)
_QKV = (rn(2, 2, 3, 4), rn(2, 2, 5, 4), rn(2, 2, 5, 6))


def _sdpa(lib, mask=None, **kw):
    f = F.scaled_dot_product_attention if lib == "dt" else TF.scaled_dot_product_attention
    m = mask if (mask is None or lib == "dt") else T(mask)
    return lambda q, k, v: f(q, k, v, attn_mask=m, dropout_p=0.0, **kw)


def _sdpa_case(id, *inputs, mask=None, **kw):
    return case(f"sdpa-{id}", _sdpa("dt", mask, **kw), _sdpa("torch", mask, **kw), *inputs)


NN += [
    _sdpa_case("no-mask", *_QKV),
    _sdpa_case("bool-mask", *_QKV, mask=_BOOL_MASK),
    _sdpa_case("float-mask", *_QKV, mask=_FLOAT_MASK),
    _sdpa_case("float-mask-bcast", *_QKV, mask=_FLOAT_MASK4),
    _sdpa_case("causal-square", rn(2, 2, 4, 3), rn(2, 2, 4, 3), rn(2, 2, 4, 5), is_causal=True),
    _sdpa_case("causal-L3-S5", *_QKV, is_causal=True),
    _sdpa_case("scale", *_QKV, scale=0.3),
    _sdpa_case("3d-inputs", rn(2, 3, 4), rn(2, 5, 4), rn(2, 5, 2)),
    _sdpa_case("bcast-batch", rn(2, 2, 3, 4), rn(1, 2, 5, 4), rn(1, 2, 5, 6)),
]


@pytest.mark.parametrize("c", NN)
def test_nn_functional(c):
    run(c)


# ---------------------------------------------------------------------------------------------
# Batch norm (running statistics compared too)
# ---------------------------------------------------------------------------------------------


_BN_CONFIGS = [
    pytest.param(shape, training, stats, affine,
                 id=f"{len(shape)}d-{'train' if training else 'eval'}-{'stats' if stats else 'no-stats'}"
                    f"-{'affine' if affine else 'no-affine'}")
    for shape in [(4, 3), (4, 3, 5), (4, 3, 2, 5), (3, 3, 3, 3)]  # (3, 3, 3, 3): 27 rows, no tiling of the rows
    for training in (True, False)
    for stats in (True, False)
    for affine in (True, False)
    if training or stats  # torch refuses eval mode without running statistics
]


@pytest.mark.parametrize(("shape", "training", "stats", "affine"), _BN_CONFIGS)
def test_batch_norm(shape, training, stats, affine):
    c = shape[1]
    rm0, rv0 = rn(c), pos(c)
    d_rm, d_rv = (rm0.copy(), rv0.copy()) if stats else (None, None)
    t_rm, t_rv = (torch.tensor(rm0), torch.tensor(rv0)) if stats else (None, None)
    kw = dict(training=training, momentum=0.3, eps=1e-3)

    def dt_fn(x, *wb):
        return F.batch_norm(x, d_rm, d_rv, *wb, **kw)

    def th_fn(x, *wb):
        return TF.batch_norm(x, t_rm, t_rv, *wb, **kw)

    inputs = (2 * rn(*shape) + 1,) + ((rn(c), rn(c)) if affine else ())
    check(dt_fn, th_fn, inputs)
    if stats:
        np.testing.assert_allclose(d_rm, t_rm.numpy(), rtol=RTOL, atol=ATOL, strict=True, err_msg="running_mean")
        np.testing.assert_allclose(d_rv, t_rv.numpy(), rtol=RTOL, atol=ATOL, strict=True, err_msg="running_var")
        if not training:
            np.testing.assert_array_equal(d_rm, rm0)
            np.testing.assert_array_equal(d_rv, rv0)


def test_batch_norm_weight_grad_only():
    x, w, b = rn(6, 2, 3), rn(2), rn(2)
    check(lambda *a: F.batch_norm(a[0], None, None, a[1], a[2], training=True),
          lambda *a: TF.batch_norm(a[0], None, None, a[1], a[2], training=True), (x, w, b), (False, True, True))


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------

_LOGITS = 2 * rn(5, 4)
_TGT = np.array([1, 0, 3, 3, 2])
_TGT_IGN = np.array([1, -100, 3, 3, 2])  # default ignore_index
_TGT_IGN2 = np.array([1, 2, 3, 2, 0])  # ignore_index=2
_W = pos(4)
_LOGITS4 = 2 * rn(2, 4, 3, 2)
_TGT4 = ints(0, 4, 2, 3, 2)
_TGT4[0, 0, 0] = _TGT4[1, 2, 1] = 2  # some positions ignored with ignore_index=2
_PROBS = _rng.dirichlet(np.ones(4), 5)
_PROBS4 = np.moveaxis(_rng.dirichlet(np.ones(4), (2, 3, 2)), -1, 1)


def _torch_kw(kw: dict) -> dict:
    """The same keyword arguments with a NumPy class weight turned into a torch tensor."""
    return {k: T(v) if k == "weight" else v for k, v in kw.items()}


def _ce(logits, target, id, **kw):
    return case(f"cross_entropy-{id}", lambda x: F.cross_entropy(x, target, **kw),
                lambda x: TF.cross_entropy(x, T(target), **_torch_kw(kw)), logits)


def _nll(logp, target, id, **kw):
    return case(f"nll_loss-{id}", lambda x: F.nll_loss(x, target, **kw),
                lambda x: TF.nll_loss(x, T(target), **_torch_kw(kw)), logp)


LOSS = []
for _red in ("mean", "sum", "none"):
    LOSS += [
        _ce(_LOGITS, _TGT, f"2d-{_red}", reduction=_red),
        _ce(_LOGITS, _TGT, f"2d-weight-{_red}", weight=_W, reduction=_red),
        _ce(_LOGITS, _TGT_IGN, f"2d-ignore-default-{_red}", reduction=_red),
        _ce(_LOGITS, _TGT_IGN2, f"2d-weight-ignore2-{_red}", weight=_W, ignore_index=2, reduction=_red),
        _ce(_LOGITS, _TGT, f"2d-smooth-{_red}", label_smoothing=0.1, reduction=_red),
        _ce(_LOGITS, _TGT_IGN2, f"2d-smooth-weight-ignore2-{_red}", weight=_W, ignore_index=2, label_smoothing=0.1,
            reduction=_red),
        _ce(_LOGITS4, _TGT4, f"4d-{_red}", reduction=_red),
        _ce(_LOGITS4, _TGT4, f"4d-smooth-weight-ignore2-{_red}", weight=_W, ignore_index=2, label_smoothing=0.1,
            reduction=_red),
        _ce(_LOGITS, _PROBS, f"probs-{_red}", reduction=_red),
        _ce(_LOGITS, _PROBS, f"probs-weight-smooth-{_red}", weight=_W, label_smoothing=0.1, reduction=_red),
        _ce(_LOGITS4, _PROBS4, f"probs-4d-weight-{_red}", weight=_W, reduction=_red),
        _nll(_LOGITS, _TGT, f"2d-{_red}", reduction=_red),
        _nll(_LOGITS, _TGT_IGN2, f"2d-weight-ignore2-{_red}", weight=_W, ignore_index=2, reduction=_red),
        _nll(_LOGITS4, _TGT4, f"4d-weight-ignore2-{_red}", weight=_W, ignore_index=2, reduction=_red),
        _nll(_LOGITS4, _TGT4, f"4d-{_red}", reduction=_red),
    ]
LOSS += [
    _ce(rn(4), np.array(2), "1d-logits-0d-target"),
    _ce(rn(0, 4), np.zeros(0, np.int64), "zero-batch-sum", reduction="sum"),
    _ce(rn(0, 4), np.zeros(0, np.int64), "zero-batch-mean-nan", reduction="mean"),
    _ce(_LOGITS, np.full(5, -100), "all-ignored-sum", reduction="sum"),
    _ce(50 * _LOGITS, _TGT, "large-logits"),
    _nll(rn(0, 4), np.zeros(0, np.int64), "zero-batch-sum", reduction="sum"),
]

_BCE_X = np.concatenate([3 * rn(9), [0.0, 30.0, -30.0]]).reshape(4, 3)
_BCE_Y = _rng.random((4, 3))
_BCE_HARD = (_rng.random((4, 3)) > 0.5).astype(np.float64)
_BW3, _BW43, _PW3 = pos(3), pos(4, 3), pos(3)


def _bce(id, y, weight=None, pos_weight=None, reduction="mean", y_grad=True):
    def dt_fn(x, t):
        return F.binary_cross_entropy_with_logits(x, t, weight=weight, pos_weight=pos_weight, reduction=reduction)

    def th_fn(x, t):
        return TF.binary_cross_entropy_with_logits(x, t, weight=None if weight is None else T(weight),
                                                   pos_weight=None if pos_weight is None else T(pos_weight),
                                                   reduction=reduction)

    return case(f"bce_logits-{id}", dt_fn, th_fn, _BCE_X, y, grad=(True, y_grad))


for _red in ("mean", "sum", "none"):
    LOSS += [
        case(f"mse_loss-{_red}", lambda x, y, r=_red: F.mse_loss(x, y, reduction=r),
             lambda x, y, r=_red: TF.mse_loss(x, y, reduction=r), rn(3, 4), rn(3, 4)),
        _bce(f"{_red}", _BCE_Y, reduction=_red),
        _bce(f"weight-bcast-{_red}", _BCE_Y, weight=_BW3, reduction=_red),
        _bce(f"weight-full-{_red}", _BCE_Y, weight=_BW43, reduction=_red),
        _bce(f"pos_weight-{_red}", _BCE_Y, pos_weight=_PW3, reduction=_red),
        _bce(f"weight-pos_weight-{_red}", _BCE_Y, weight=_BW3, pos_weight=_PW3, reduction=_red),
    ]
LOSS += [
    case("mse_loss-default-size1", F.mse_loss, TF.mse_loss, rn(1, 4), rn(1, 4)),
    case("mse_loss-target-const", F.mse_loss, TF.mse_loss, rn(2, 3), rn(2, 3), grad=(True, False)),
    _bce("hard-target-no-target-grad", _BCE_HARD, y_grad=False),
    _bce("hard-target-pos_weight", _BCE_HARD, pos_weight=_PW3),
]


@pytest.mark.parametrize("c", LOSS)
def test_loss(c):
    run(c)


# ---------------------------------------------------------------------------------------------
# Dropout (random masks differ between libraries: check dtrain against its own mask) and hygiene
# ---------------------------------------------------------------------------------------------


def test_dropout_scales_kept_values_and_gradient():
    p = 0.3
    x_np = pos(40, 50)  # no zeros, so the mask can be read off the output
    x = dt.tensor(x_np, dtype="float64", requires_grad=True)
    y = F.dropout(x, p=p, training=True, generator=dt.Generator(3))
    mask = (y.numpy() != 0) / (1 - p)
    assert 0.6 < (mask != 0).mean() < 0.8
    np.testing.assert_allclose(y.numpy(), x_np * mask, rtol=1e-15, atol=0, strict=True)
    g = rn(40, 50)
    y.backward(g)
    np.testing.assert_allclose(x.grad, g * mask, rtol=1e-15, atol=0, strict=True)
    assert F.dropout(x, p=p, training=False) is x


def test_dtrain_does_not_import_torch():
    code = "import sys, dtrain, dtrain.nn.functional; assert 'torch' not in sys.modules, 'dtrain imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize("seed", range(4))
def test_conv_and_tiled_max_pool_match_torch_on_random_configurations_with_ties_and_nan(seed):
    # The channels-last convolution (groups == 1) and the tiled max pool (stride == kernel) are fast paths:
    # random shapes, strides, paddings, dilations, batch 0 and 1, integer-valued inputs (whole windows tie,
    # as after a ReLU) and NaNs, against torch in float64, values and gradients.
    rng = np.random.default_rng(100 + seed)
    for _ in range(25):
        n, c, o = int(rng.integers(0, 3)), int(rng.integers(1, 5)), int(rng.integers(1, 5))
        h, w = (int(v) for v in rng.integers(3, 10, size=2))
        k, s, p, d = int(rng.integers(1, 4)), int(rng.integers(1, 4)), int(rng.integers(0, 3)), int(rng.integers(1, 3))
        if (k - 1) * d + 1 > min(h, w) + 2 * p:
            continue
        x = rng.integers(-2, 3, size=(n, c, h, w)).astype(np.float64)
        wt = rng.integers(-1, 2, size=(o, c, k, k)).astype(np.float64)  # integer outputs: exact ties
        xt, wtt = torch.tensor(x, requires_grad=True), torch.tensor(wt, requires_grad=True)
        yt = torch.nn.functional.conv2d(xt, wtt, stride=s, padding=p, dilation=d)
        pk = min(int(rng.integers(1, 4)), yt.shape[2], yt.shape[3])
        y2t = torch.nn.functional.max_pool2d(torch.relu(yt), pk)
        g = rng.normal(size=tuple(y2t.shape))
        y2t.backward(torch.tensor(g))
        if rng.integers(2):  # the same values with channels-last memory, as a convolution's output has
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
        xd, wd = dt.tensor(x, requires_grad=True), dt.tensor(wt, requires_grad=True)
        y2d = F.max_pool2d(F.relu(F.conv2d(xd, wd, stride=s, padding=p, dilation=d)), pk)
        y2d.backward(dt.tensor(g))
        np.testing.assert_allclose(np.asarray(y2d.data), y2t.detach().numpy(), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(np.asarray(xd.grad.data), xt.grad.numpy(), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(np.asarray(wd.grad.data), wtt.grad.numpy(), rtol=1e-9, atol=1e-12)
    x = rng.integers(-1, 2, size=(2, 3, 6, 6)).astype(np.float64)
    x[0, 1, 2, 3] = x[1, 2, 5, 5] = np.nan
    xt, xd = torch.tensor(x, requires_grad=True), dt.tensor(x, requires_grad=True)
    torch.nn.functional.max_pool2d(xt, 2).sum().backward()
    yd = F.max_pool2d(xd, 2)
    yd.sum().backward()
    np.testing.assert_array_equal(np.asarray(xd.grad.data), xt.grad.numpy())
    assert np.isnan(np.asarray(yd.data)).sum() == 2


@pytest.mark.parametrize("rows", [True, False], ids=["kernel-rows", "im2col"])
@pytest.mark.parametrize("keep_cols", [0, 4 << 20], ids=["rebuilt", "kept"])
@pytest.mark.parametrize("block_bytes", [64, 40_000, 1 << 19])
def test_conv_in_blocks_of_rows_and_of_images_matches_torch(monkeypatch, block_bytes, keep_cols, rows):
    # The channels-last convolution builds its columns (im2col) or row panels (stride 1, conv_rows.py) block
    # by block: one output row of one image (64 bytes), two or more whole images (40 kB), or the whole batch
    # (512 KiB), in forward, weight gradient and the stride-1 input gradient. The weight gradient multiplies
    # the forward's columns or panels when they were kept (KEEP_COLS_BYTES), else rebuilds them block by block.
    # Every variant, and im2col where kernel rows would be used, gives torch's values and gradients (float64).
    from dtrain.autograd.ops import conv, conv_rows

    monkeypatch.setattr(conv, "BLOCK_BYTES", block_bytes)
    monkeypatch.setattr(conv_rows, "BLOCK_BYTES", block_bytes)
    monkeypatch.setattr(conv_rows, "MIN_OUT_ROWS", 1)  # these images are small
    monkeypatch.setattr(conv, "KEEP_COLS_BYTES", keep_cols)
    if not rows:
        monkeypatch.setattr(conv_rows, "applies", lambda *args: False)
    rng = np.random.default_rng(7)
    for n, c, o, h, k, s, p, d in [(5, 3, 4, 9, 3, 1, 1, 1), (4, 2, 3, 11, 3, 2, 1, 1), (3, 4, 2, 10, 2, 1, 2, 2),
                                   (6, 3, 5, 7, 1, 1, 0, 1)]:
        x, wt, b = rng.normal(size=(n, c, h, h)), rng.normal(size=(o, c, k, k)), rng.normal(size=o)
        ts = [torch.tensor(a, requires_grad=True) for a in (x, wt, b)]
        yt = torch.nn.functional.conv2d(*ts, stride=s, padding=p, dilation=d)
        g = rng.normal(size=tuple(yt.shape))
        yt.backward(torch.tensor(g))
        ds = [dt.tensor(a, requires_grad=True) for a in (x, wt, b)]
        yd = F.conv2d(*ds, stride=s, padding=p, dilation=d)
        yd.backward(dt.tensor(g))
        np.testing.assert_allclose(np.asarray(yd.data), yt.detach().numpy(), rtol=1e-9, atol=1e-12)
        for a, t in zip(ds, ts):
            np.testing.assert_allclose(np.asarray(a.grad.data), t.grad.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("block_bytes", [1, 3000, None], ids=["row-blocks", "image-blocks", "default"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_conv_by_kernel_rows_matches_torch_on_rectangular_kernels_dilations_and_layouts(monkeypatch, dtype,
                                                                                         block_bytes):
    # Stride-1 convolutions with a kernel of more than one row run as one GEMM per kernel row over row
    # panels (conv_rows.py), and so do their input gradients. Rectangular kernels (one column too), dilations
    # and paddings, odd sizes, batch 0 and 1, NCHW and channels-last inputs, panels kept from forward or
    # rebuilt, in blocks of one row, of a few images, or whole: torch's values and gradients.
    from dtrain.autograd.ops import conv, conv_rows

    if block_bytes is not None:
        monkeypatch.setattr(conv_rows, "BLOCK_BYTES", block_bytes)
    monkeypatch.setattr(conv_rows, "MIN_OUT_ROWS", 1)  # these images are small
    rng = np.random.default_rng(12)
    tol = dict(rtol=1e-9, atol=1e-12) if dtype == np.float64 else dict(rtol=2e-4, atol=2e-4)
    configs = [  # n, c, o, (h, w), (kh, kw), padding, dilation
        (3, 5, 4, (9, 7), (3, 3), (1, 1), (1, 1)), (2, 3, 6, (8, 9), (3, 1), (1, 0), (1, 1)),
        (4, 2, 3, (7, 10), (2, 3), (0, 1), (2, 1)), (1, 4, 2, (6, 6), (3, 2), (2, 2), (1, 2)),
        (0, 3, 2, (5, 5), (3, 3), (1, 1), (1, 1)), (5, 6, 5, (4, 4), (3, 3), (1, 1), (1, 1)),
        (2, 8, 3, (5, 8), (4, 2), (0, 0), (1, 1)),
    ]
    for i, (n, c, o, hw, k, p, d) in enumerate(configs):
        x, wt, b = rng.normal(size=(n, c) + hw), rng.normal(size=(o, c) + k), rng.normal(size=o)
        x, wt, b = x.astype(dtype), wt.astype(dtype), b.astype(dtype)
        assert conv_rows.applies(x, wt, (1, 1), 1)
        ts = [torch.tensor(a.astype(np.float64), requires_grad=True) for a in (x, wt, b)]
        yt = torch.nn.functional.conv2d(*ts, padding=p, dilation=d)
        g = rng.normal(size=tuple(yt.shape))
        yt.backward(torch.tensor(g))
        if i % 2:  # channels-last memory, as a convolution's output has
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
        monkeypatch.setattr(conv, "KEEP_COLS_BYTES", 0 if i % 3 == 2 else 4 << 20)
        ds = [dt.tensor(a, requires_grad=True) for a in (x, wt, b)]
        yd = F.conv2d(*ds, padding=p, dilation=d)
        yd.backward(dt.tensor(g.astype(dtype)))
        np.testing.assert_allclose(np.asarray(yd.data), yt.detach().numpy(), **tol, err_msg=f"config {i}")
        for a, t in zip(ds, ts):
            assert a.grad.dtype == dtype
            np.testing.assert_allclose(np.asarray(a.grad.data), t.grad.numpy(), **tol, err_msg=f"config {i}")
        with dt.no_grad():  # no panels kept: the forward alone
            np.testing.assert_allclose(np.asarray(F.conv2d(ds[0], ds[1], ds[2], padding=p, dilation=d).data),
                                       yt.detach().numpy(), **tol)


def test_conv_by_kernel_rows_applies_to_numpy_float_stride_1_kernels_of_several_rows():
    from dtrain.autograd.ops import conv_rows

    x, w = np.zeros((2, 3, 6, 6), np.float32), np.zeros((4, 3, 3, 3), np.float32)
    rows = conv_rows.MIN_OUT_ROWS
    assert conv_rows.applies(x, w, (1, 1), rows)
    assert not conv_rows.applies(x, w, (1, 1), rows - 1)  # small outputs: im2col
    assert not conv_rows.applies(x, w, (2, 1), rows)  # strided: im2col and the input gradient by phases
    assert not conv_rows.applies(x, w, (1, 2), rows)
    assert not conv_rows.applies(x, w[:, :, :1], (1, 1), rows)  # one kernel row: a single GEMM already
    assert not conv_rows.applies(x.astype(np.float16), w.astype(np.float16), (1, 1), rows)
    assert not conv_rows.applies(x, w.astype(np.float64), (1, 1), rows)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_conv_offset_major_columns_and_input_grad_by_phases_match_torch(dtype):
    # Two more paths of the channels-last convolution: inputs with a few channels (C * itemsize under
    # SHORT_RUN_BYTES, a width stride of 1) build their columns offset-major from the NCHW input; strided
    # convolutions with a kernel wider than 1x1 sum their input gradient phase by phase. Rectangular
    # strides, dilations and paddings, odd sizes, batch 0 and 1, against torch in float64.
    from dtrain.autograd.ops import conv

    rng = np.random.default_rng(11)
    few = conv.SHORT_RUN_BYTES // np.dtype(dtype).itemsize - 1  # the most channels that take the short-run path
    tol = dict(rtol=1e-9, atol=1e-12) if dtype == np.float64 else dict(rtol=2e-4, atol=2e-4)
    configs = [  # n, c, o, (h, w), k, stride, padding, dilation
        (3, few, 4, (9, 7), 3, (1, 1), (1, 1), (1, 1)), (2, few, 3, (8, 9), 3, (2, 1), (0, 1), (1, 2)),
        (1, 1, 2, (5, 6), 2, (3, 1), (1, 0), (1, 1)), (0, few, 2, (6, 6), 3, (1, 1), (1, 1), (1, 1)),
        (4, 3, 5, (9, 9), 3, (2, 2), (1, 1), (1, 1)), (2, 4, 3, (11, 10), 3, (3, 2), (2, 1), (2, 1)),
        (2, 5, 2, (8, 8), 2, (2, 3), (0, 1), (1, 2)), (1, 2, 3, (7, 7), 3, (2, 2), (0, 0), (1, 1)),
    ]
    for n, c, o, hw, k, s, p, d in configs:
        x, wt, b = rng.normal(size=(n, c) + hw), rng.normal(size=(o, c, k, k)), rng.normal(size=o)
        ts = [torch.tensor(a, requires_grad=True) for a in (x, wt, b)]
        yt = torch.nn.functional.conv2d(*ts, stride=s, padding=p, dilation=d)
        g = rng.normal(size=tuple(yt.shape))
        yt.backward(torch.tensor(g))
        ds = [dt.tensor(a.astype(dtype), requires_grad=True) for a in (x, wt, b)]
        yd = F.conv2d(*ds, stride=s, padding=p, dilation=d)
        yd.backward(dt.tensor(g.astype(dtype)))
        np.testing.assert_allclose(np.asarray(yd.data), yt.detach().numpy(), **tol)
        for a, t in zip(ds, ts):
            np.testing.assert_allclose(np.asarray(a.grad.data), t.grad.numpy(), **tol)
