"""Every fused op against the same computation written from primitives (float64).

A fused op (a ``FusedFunction`` in ``dtrain.autograd.ops``) computes in one graph node what a chain
of primitives computes in several. For each one, the table below holds cases pairing the public
function that runs it with its composition from primitives only; each case checks that

* the fused function really produces a node of that class, and the composition has no fused node;
* forward values agree, and gradients agree for a random output cotangent;
* the fused function passes the finite-difference gradcheck, reverse and forward mode.

The registry test fails when a fused op exists without a case here (or is named or documented
against the convention), so a new fused op cannot land without its composition.
"""

from __future__ import annotations

import inspect
import math
import re
from pathlib import Path

import numpy as np
import pytest

import dtrain as dt
import dtrain.nn as nn
import dtrain.nn.functional as F
from dtrain.autograd import Function, FusedFunction, gradcheck, ops
from dtrain.autograd.ops import activation, conv, elementwise, linalg, loss, norm, pool, reduce, shape
from dtrain.autograd.ops import nn as nn_ops
from dtrain.backend import Generator

OP_MODULES = (activation, conv, elementwise, linalg, loss, norm, pool, reduce, shape, nn_ops)
DOCS = Path(__file__).resolve().parents[2] / "docs" / "autograd.md"


def op_classes() -> dict[str, type]:
    """Every concrete Function class defined in dtrain.autograd.ops, by name."""
    found = {}
    for mod in OP_MODULES:
        for name, obj in vars(mod).items():
            if (inspect.isclass(obj) and issubclass(obj, Function) and obj.__module__ == mod.__name__
                    and not name.startswith("_")):
                found[name] = obj
    return found


# ---------------------------------------------------------------------------------------------
# Compositions: primitives only (the graph check below enforces it)
# ---------------------------------------------------------------------------------------------


def c_sigmoid(x):
    e = (-x.abs()).exp()
    return dt.where(x >= 0, 1 / (1 + e), e / (1 + e))


def c_tanh(x):
    return 2 * c_sigmoid(2 * x) - 1


def c_gelu(x):
    return x * 0.5 * (1 + ops.erf(x * (1 / math.sqrt(2))))


def c_gelu_tanh(x):
    return 0.5 * x * (1 + c_tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def c_softmax(x, dim):
    e = (x - x.max(axis=dim, keepdims=True)).exp()
    return e / e.sum(axis=dim, keepdims=True)


def c_log_softmax(x, dim):
    s = x - x.max(axis=dim, keepdims=True)
    return s - s.exp().sum(axis=dim, keepdims=True).log()


def c_logsumexp(x, axis, keepdims):
    m = x.max(axis=axis, keepdims=True)
    out = (x - m).exp().sum(axis=axis, keepdims=True).log() + m
    if keepdims:
        return out
    return out.reshape(np.amax(x.data, axis=axis).shape)


def _window_slices(xp_, k, s, d, out_hw):
    """The (N, C, OH, OW) strided slice of a padded input for each kernel offset (i, j)."""
    return [xp_[:, :, i * d[0]: i * d[0] + s[0] * (out_hw[0] - 1) + 1: s[0],
                j * d[1]: j * d[1] + s[1] * (out_hw[1] - 1) + 1: s[1]]
            for i in range(k[0]) for j in range(k[1])]


def _out_hw(x, k, s, p, d):
    return tuple((x.shape[2 + a] + 2 * p[a] - d[a] * (k[a] - 1) - 1) // s[a] + 1 for a in (0, 1))


def c_conv2d(x, w, b=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    n = x.shape[0]
    o, cg, kh, kw = w.shape
    out_hw = _out_hw(x, (kh, kw), stride, padding, dilation)
    xp_ = ops.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    patches = dt.stack(_window_slices(xp_, (kh, kw), stride, dilation, out_hw), axis=2)  # (N, C, K, OH, OW)
    og = o // groups
    outs = []
    for g in range(groups):
        pg = patches[:, g * cg:(g + 1) * cg].reshape(n, cg * kh * kw, out_hw[0] * out_hw[1])
        outs.append(w[g * og:(g + 1) * og].reshape(og, cg * kh * kw) @ pg)  # (N, og, L)
    y = dt.concat(outs, axis=1).reshape(n, o, out_hw[0], out_hw[1])
    return y if b is None else y + b.reshape(1, o, 1, 1)


def c_max_pool2d(x, k, s, p=(0, 0), d=(1, 1)):
    out_hw = _out_hw(x, k, s, p, d)
    xp_ = ops.pad(x, (p[1], p[1], p[0], p[0]), value=-np.inf)
    return dt.stack(_window_slices(xp_, k, s, d, out_hw), axis=-1).max(axis=-1)


def c_avg_pool2d(x, k, s, p=(0, 0), count_include_pad=True):
    out_hw = _out_hw(x, k, s, p, (1, 1))
    windows = dt.stack(_window_slices(ops.pad(x, (p[1], p[1], p[0], p[0])), k, s, (1, 1), out_hw), axis=-1)
    if count_include_pad:
        return windows.sum(axis=-1) / (k[0] * k[1])
    ones = np.pad(np.ones(x.shape[2:]), ((p[0], p[0]), (p[1], p[1])))
    count = sum(a for a in _window_slices(ones[None, None], k, s, (1, 1), out_hw))
    return windows.sum(axis=-1) / count


def c_normalize(x, axes, eps, w=None, b=None, view=lambda t: t):
    mean = x.mean(axis=axes, keepdims=True)
    d = x - mean
    y = d / ((d * d).mean(axis=axes, keepdims=True) + eps).sqrt()
    if w is not None:
        y = y * view(w)
    return y if b is None else y + view(b)


def c_batch_norm(x, w=None, b=None, eps=1e-5):
    def view(t):
        return t.reshape((1, -1) + (1,) * (x.ndim - 2))

    return c_normalize(x, (0,) + tuple(range(2, x.ndim)), eps, w, b, view)


def c_batch_norm_eval(x, mean, var, w, b, eps=1e-5):
    view = (1, -1) + (1,) * (x.ndim - 2)
    return (x - mean.reshape(view)) / np.sqrt(var.reshape(view) + eps) * w.reshape(view) + b.reshape(view)


def c_class_rows(x):
    """(N, C, d...) logits or log-probabilities as (M, C) rows, classes last."""
    if x.ndim <= 2:
        return x.reshape(-1, x.shape[-1])
    perm = (0,) + tuple(range(2, x.ndim)) + (1,)
    return x.permute(*perm).reshape(-1, x.shape[1])


def c_nll(lp, target, weight=None, ignore_index=-100, reduction="mean", smoothing=0.0):
    """Negative log-likelihood of (M, C) log-probabilities, torch's rules, from gathers and sums."""
    m, c = lp.shape
    t = np.asarray(target).reshape(-1)
    w = np.ones(c) if weight is None else np.asarray(weight, dtype=np.float64)
    valid = t != ignore_index
    safe = np.where(valid, t, 0)
    wt = w[safe] * valid
    per = -(1 - smoothing) * wt * lp[np.arange(m), safe]
    if smoothing:
        per = per - (smoothing / c) * (lp * w).sum(axis=1) * valid
    if reduction == "none":
        return per
    return per.sum() if reduction == "sum" else per.sum() / wt.sum()


def c_cross_entropy(x, target, **kw):
    per = c_nll(c_log_softmax(c_class_rows(x), 1), target, **kw)
    if kw.get("reduction") == "none":
        return per.reshape(np.asarray(target).shape)
    return per


def c_cross_entropy_probs(x, probs, smoothing):
    c = x.shape[1]
    p = (1 - smoothing) * probs + smoothing / c
    return -(p * c_log_softmax(x, 1)).sum(axis=1).mean()


def c_bce(x, y, weight=None, pos_weight=None, reduction="mean"):
    sp = (1 + (-x.abs()).exp()).log() + (-x).clip(min=0)  # softplus(-x), without overflow
    lw = 1 if pos_weight is None else 1 + (pos_weight - 1) * y
    per = (1 - y) * x + lw * sp
    if weight is not None:
        per = per * weight
    if reduction == "none":
        return per
    return per.sum() if reduction == "sum" else per.mean()


def c_embedding(idx, w, padding_idx=None):
    rows = w[idx]
    if padding_idx is None:
        return rows
    return dt.where((idx != padding_idx)[..., None], rows, rows.detach())


def c_dropout(x, p, seed):
    keep = Generator(seed).uniform(x.shape, x.dtype) >= p
    return x * (keep / (1 - p))


# ---------------------------------------------------------------------------------------------
# The table: fused class -> cases (id, fused fn, composed fn, input shapes, how to draw inputs)
# ---------------------------------------------------------------------------------------------

T3 = np.array([1, 0, 3])
T4D = np.array([[[0, 2], [1, 1]], [[2, 2], [0, 1]]])
P34 = np.random.default_rng(1).dirichlet(np.ones(4), size=3)
IDX = np.array([[0, 2], [2, 1], [1, 1]])
CW = np.array([0.5, 2.0, 1.0, 1.5])

COMPOSITIONS: dict[str, list[tuple]] = {
    "FusedTanh": [("tanh", ops.tanh, c_tanh, [(3, 4)], "wide")],
    "FusedSigmoid": [("sigmoid", ops.sigmoid, c_sigmoid, [(3, 4)], "wide")],
    "FusedReLU": [("relu", F.relu, lambda x: dt.where(x > 0, x, 0.0), [(3, 4)], "away0")],
    "FusedLeakyReLU": [("leaky_relu", lambda x: F.leaky_relu(x, 0.1), lambda x: dt.where(x > 0, x, x * 0.1),
                        [(3, 4)], "away0")],
    "FusedELU": [("elu", lambda x: F.elu(x, 0.7), lambda x: dt.where(x > 0, x, 0.7 * (x.clip(max=0).exp() - 1)),
                  [(3, 4)], "away0")],
    "FusedGELU": [("gelu", F.gelu, c_gelu, [(3, 4)], "normal"),
                  ("gelu-tanh", lambda x: F.gelu(x, approximate="tanh"), c_gelu_tanh, [(3, 4)], "normal")],
    "FusedSiLU": [("silu", F.silu, lambda x: x * c_sigmoid(x), [(3, 4)], "wide")],
    "FusedSoftmax": [(f"softmax-{d}", lambda x, d=d: F.softmax(x, dim=d), lambda x, d=d: c_softmax(x, d),
                      [(3, 5)], "normal") for d in (0, -1)],
    "FusedLogSoftmax": [(f"log_softmax-{d}", lambda x, d=d: F.log_softmax(x, dim=d),
                         lambda x, d=d: c_log_softmax(x, d), [(3, 5)], "wide") for d in (0, -1)],
    "FusedLogSumExp": [(f"logsumexp-{a}-{k}", lambda x, a=a, k=k: x.logsumexp(axis=a, keepdims=k),
                        lambda x, a=a, k=k: c_logsumexp(x, a, k), [(2, 3, 4)], "normal")
                       for a, k in ((None, False), (1, True), ((0, 2), False))],
    "FusedLinear": [("linear", F.linear, lambda x, w, b: x @ w.T + b, [(5, 3), (4, 3), (4,)], "normal"),
                    ("linear-nobias-3d", F.linear, lambda x, w: x @ w.T, [(2, 5, 3), (4, 3)], "normal")],
    "FusedConv2d": [
        ("conv2d", F.conv2d, c_conv2d, [(2, 3, 5, 5), (4, 3, 3, 3), (4,)], "normal"),
        ("conv2d-stride-pad-dilation",
         lambda x, w: F.conv2d(x, w, stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
         lambda x, w: c_conv2d(x, w, stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
         [(1, 2, 6, 5), (3, 2, 2, 3)], "normal"),
        ("conv2d-groups", lambda x, w, b: F.conv2d(x, w, b, padding=1, groups=2),
         lambda x, w, b: c_conv2d(x, w, b, padding=(1, 1), groups=2), [(2, 4, 4, 4), (6, 2, 3, 3), (6,)], "normal"),
    ],
    "FusedMaxPool2d": [
        ("max_pool2d", lambda x: F.max_pool2d(x, 2), lambda x: c_max_pool2d(x, (2, 2), (2, 2)), [(2, 3, 4, 6)],
         "normal"),
        ("max_pool2d-overlap-pad-dilation", lambda x: F.max_pool2d(x, 3, stride=2, padding=1, dilation=1),
         lambda x: c_max_pool2d(x, (3, 3), (2, 2), (1, 1)), [(1, 2, 5, 5)], "normal"),
    ],
    "FusedAvgPool2d": [
        ("avg_pool2d", lambda x: F.avg_pool2d(x, 2), lambda x: c_avg_pool2d(x, (2, 2), (2, 2)), [(2, 3, 4, 6)],
         "normal"),
        ("avg_pool2d-pad-exclude", lambda x: F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False),
         lambda x: c_avg_pool2d(x, (3, 3), (2, 2), (1, 1), False), [(1, 2, 5, 5)], "normal"),
    ],
    "FusedBatchNorm": [
        ("batch_norm-train-4d", lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True), c_batch_norm,
         [(3, 2, 3, 3), (2,), (2,)], "normal"),
        ("batch_norm-train-2d-no-affine", lambda x: F.batch_norm(x, None, None, training=True), c_batch_norm,
         [(5, 3)], "normal"),
        ("batch_norm-eval", lambda x, w, b: F.batch_norm(x, np.full(2, 0.3), np.full(2, 1.7), w, b),
         lambda x, w, b: c_batch_norm_eval(x, np.full(2, 0.3), np.full(2, 1.7), w, b),
         [(3, 2, 2, 2), (2,), (2,)], "normal"),
    ],
    "FusedLayerNorm": [
        ("layer_norm", lambda x, w, b: F.layer_norm(x, (4,), w, b), lambda x, w, b: c_normalize(x, (2,), 1e-5, w, b),
         [(2, 3, 4), (4,), (4,)], "normal"),
        ("layer_norm-2-axes-no-affine", lambda x: F.layer_norm(x, (3, 4)),
         lambda x: c_normalize(x, (1, 2), 1e-5), [(2, 3, 4)], "normal"),
    ],
    "FusedCrossEntropy": [
        ("cross_entropy", lambda x: F.cross_entropy(x, T3), lambda x: c_cross_entropy(x, T3), [(3, 4)], "normal"),
        ("cross_entropy-weight-ignore-smooth",
         lambda x: F.cross_entropy(x, np.array([1, -100, 3]), weight=CW, label_smoothing=0.2),
         lambda x: c_cross_entropy(x, np.array([1, -100, 3]), weight=CW, smoothing=0.2), [(3, 4)], "normal"),
        ("cross_entropy-sum", lambda x: F.cross_entropy(x, T3, reduction="sum"),
         lambda x: c_cross_entropy(x, T3, reduction="sum"), [(3, 4)], "normal"),
        ("cross_entropy-4d-none", lambda x: F.cross_entropy(x, T4D, reduction="none"),
         lambda x: c_cross_entropy(x, T4D, reduction="none"), [(2, 3, 2, 2)], "normal"),
        ("cross_entropy-prob-targets", lambda x: F.cross_entropy(x, P34, label_smoothing=0.1),
         lambda x: c_cross_entropy_probs(x, P34, 0.1), [(3, 4)], "normal"),
    ],
    "FusedNLLLoss": [
        ("nll_loss", lambda x: F.nll_loss(x, T3), lambda x: c_nll(x, T3), [(3, 4)], "normal"),
        ("nll_loss-weight-ignore", lambda x: F.nll_loss(x, np.array([1, 2, -1]), weight=CW, ignore_index=-1),
         lambda x: c_nll(x, np.array([1, 2, -1]), weight=CW, ignore_index=-1), [(3, 4)], "normal"),
    ],
    "FusedBCEWithLogits": [
        ("bce_with_logits", F.binary_cross_entropy_with_logits, c_bce, [(3, 4), (3, 4)], "normal"),
        ("bce_with_logits-weights-none",
         lambda x, y: F.binary_cross_entropy_with_logits(x, y, weight=np.full(4, 0.5), pos_weight=np.arange(1.0, 5.0),
                                                         reduction="none"),
         lambda x, y: c_bce(x, y, np.full(4, 0.5), np.arange(1.0, 5.0), "none"), [(3, 4), (3, 4)], "wide"),
    ],
    "FusedEmbedding": [
        ("embedding", lambda w: F.embedding(IDX, w), lambda w: c_embedding(IDX, w), [(3, 4)], "normal"),
        ("embedding-padding_idx", lambda w: F.embedding(IDX, w, padding_idx=1),
         lambda w: c_embedding(IDX, w, 1), [(3, 4)], "normal"),
    ],
    "FusedDropout": [
        ("dropout", lambda x: F.dropout(x, 0.4, generator=Generator(3)), lambda x: c_dropout(x, 0.4, 3),
         [(4, 5)], "normal"),
    ],
}

CASES = [pytest.param(name, *case, id=case[0]) for name, cases in COMPOSITIONS.items() for case in cases]
# The padding row of an embedding gets no gradient by definition (torch's padding_idx), so its
# gradient is not the finite difference; the composition check above covers that case.
NOT_A_DERIVATIVE = {"embedding-padding_idx"}
GRADCHECK_CASES = [c for c in CASES if c.id not in NOT_A_DERIVATIVE]


def draw(rng, shape, kind):
    if kind == "away0":  # |x| >= 0.2: the kinks of relu & co. stay out of the finite differences
        return rng.uniform(0.2, 1.5, shape) * rng.choice([-1.0, 1.0], shape)
    if kind == "wide":  # both tails of sigmoid, tanh, softplus
        return rng.uniform(-12, 12, shape)
    return rng.standard_normal(shape)


def graph_op_types(out) -> set[type]:
    """The classes of every node in the graph that produced ``out``."""
    seen, todo, types = set(), [out.grad_fn], set()
    while todo:
        node = todo.pop()
        if node is None or not isinstance(node, Function) or id(node) in seen:
            continue
        seen.add(id(node))
        types.add(type(node))
        todo.extend(node.next)
    return types


def value_and_grads(fn, arrays, cotangent_seed=5):
    xs = [dt.tensor(a, requires_grad=True) for a in arrays]
    out = fn(*xs)
    types = graph_op_types(out)
    v = np.random.default_rng(cotangent_seed).standard_normal(out.shape)
    (out * v).sum().backward()
    return out.numpy().copy(), [x.grad for x in xs], out, types


@pytest.mark.parametrize("fused_name, case_id, fused_fn, composed_fn, shapes, kind", CASES)
def test_fused_matches_its_composition(fused_name, case_id, fused_fn, composed_fn, shapes, kind):
    rng = np.random.default_rng(0)
    arrays = [draw(rng, s, kind) for s in shapes]
    y_f, g_f, out_f, _ = value_and_grads(fused_fn, arrays)
    y_c, g_c, _, types_c = value_and_grads(composed_fn, arrays)
    assert type(out_f.grad_fn).__name__ == fused_name, f"{case_id} does not run {fused_name}"
    fused_in_composition = sorted(t.__name__ for t in types_c if issubclass(t, FusedFunction))
    assert not fused_in_composition, f"the composition of {case_id} uses fused ops {fused_in_composition}"
    np.testing.assert_allclose(y_f, y_c, rtol=1e-10, atol=1e-12, err_msg=f"{case_id}: forward values")
    for i, (a, b) in enumerate(zip(g_f, g_c)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11, err_msg=f"{case_id}: gradient of input {i}")


@pytest.mark.parametrize("fused_name, case_id, fused_fn, composed_fn, shapes, kind", GRADCHECK_CASES)
def test_fused_gradcheck(fused_name, case_id, fused_fn, composed_fn, shapes, kind):
    rng = np.random.default_rng(1)
    xs = [dt.tensor(draw(rng, s, kind), requires_grad=True) for s in shapes]
    assert gradcheck(fused_fn, xs, check_forward=True)


def test_every_fused_op_has_a_composition_and_follows_the_naming_convention():
    classes = op_classes()
    fused = {name for name, cls in classes.items() if issubclass(cls, FusedFunction)}
    missing = sorted(fused - set(COMPOSITIONS))
    assert not missing, f"fused ops without a composition in tests/autograd/test_fused.py: {missing}"
    stale = sorted(set(COMPOSITIONS) - fused)
    assert not stale, f"compositions listed for classes that are not fused ops: {stale}"
    misnamed = sorted(n for n in classes if (n in fused) != n.startswith("Fused"))
    assert not misnamed, f"a FusedFunction's name starts with 'Fused', and only theirs: {misnamed}"
    undescribed = sorted(n for n in fused if not classes[n].composition)
    assert not undescribed, f"fused ops without a `composition` description: {undescribed}"


def test_no_op_shares_a_name_with_an_nn_module():
    modules = {name for name, obj in vars(nn).items() if inspect.isclass(obj) and issubclass(obj, nn.Module)}
    clashes = sorted(set(op_classes()) & modules)
    assert not clashes, f"autograd ops named like nn Modules: {clashes}"


def test_docs_table_lists_every_op_in_its_category():
    text = DOCS.read_text()
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)` \| (primitive|fused) \|", text, re.M)}
    classes = op_classes()
    expected = {n: ("fused" if issubclass(c, FusedFunction) else "primitive") for n, c in classes.items()}
    assert rows == expected, (f"docs/autograd.md's op table disagrees with the code: missing "
                              f"{sorted(set(expected) - set(rows))}, extra {sorted(set(rows) - set(expected))}, "
                              f"wrong category {sorted(n for n in rows if n in expected and rows[n] != expected[n])}")


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_relu_against_zeros_equals_maximum_with_zero_bit_for_bit(dtype):
    # relu_array compares C-contiguous and channels-last arrays in its size range with an array of zeros
    # (NumPy's SIMD loop) instead of the scalar 0: every value, NaN, signed zeros and infinities included,
    # must be what maximum(x, 0) gives, in x's memory layout, for every layout and size.
    rng = np.random.default_rng(3)
    lo, hi = activation.ZEROS_MIN_SIZE, activation.ZEROS_MAX_BYTES // np.dtype(dtype).itemsize
    base = rng.standard_normal(2 * hi).astype(dtype)
    base[:6] = [-0.0, 0.0, np.nan, -np.inf, np.inf, -np.nan]
    n, h, c = 2, 8, 2
    channels_last = np.ascontiguousarray(base[:2 * lo].reshape(n, h, -1, c)).transpose(0, 3, 1, 2)
    arrays = [base[:lo], base[:lo - 1], base[:hi], base[:hi + 1], base[:2 * lo].reshape(64, -1),
              base[:2 * lo].reshape(64, -1).T, base[:4 * lo:2], channels_last, base[:2 * lo].reshape(n, h, -1, c)]
    for x in arrays:
        y = activation.relu_array(x)
        ref = np.maximum(x, 0)
        assert y.shape == ref.shape and y.strides == ref.strides
        np.testing.assert_array_equal(y, ref)  # NaN where ref has NaN
        np.testing.assert_array_equal(np.signbit(y), np.signbit(ref))


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_relu_mask_against_a_cached_zero_equals_the_mask_against_the_number(dtype):
    # FusedReLU.backward compares with ops._util.ZERO[dtype], a read-only 0-d array, instead of the number 0
    # (which NumPy converts on every call): the same gradient, NaN, signed zeros and infinities included.
    from dtrain.autograd.ops._util import ONE, ZERO

    assert ZERO[np.dtype(dtype)] is ZERO[np.dtype(dtype)] and not ZERO[np.dtype(dtype)].flags.writeable
    assert ZERO[np.dtype(dtype)].shape == () and ZERO[np.dtype(dtype)].dtype == dtype and ONE[np.dtype(dtype)] == 1
    y = np.array([-0.0, 0.0, np.nan, -np.inf, np.inf, 2.5, -1.0], dtype=dtype)
    g = np.array([1.0, -2.0, 3.0, 4.0, -5.0, 6.0, np.nan], dtype=dtype)
    node = activation.FusedReLU()
    node.saved = (activation.relu_array(y),)
    out = node.backward(g)
    ref = g * (np.maximum(y, 0) > 0)
    assert out.dtype == ref.dtype
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(np.signbit(out), np.signbit(ref))


def test_batch_norm_shares_one_channel_matrix_per_shape_and_dtype_and_gives_the_same_results():
    # FusedBatchNorm takes its ChannelMatrix (geometry and ones) from a bounded cache for NumPy inputs: the same
    # object for the same shape and accumulation dtype, another for another shape, the ones read-only, and
    # a forward/backward with the shared one equal to one with a fresh ChannelMatrix, bit for bit.
    norm._channel_matrices.clear()
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 3, 4, 5)).astype(np.float32)
    a, b = norm.ChannelMatrix.of(x, np.dtype(np.float32)), norm.ChannelMatrix.of(x.copy(), np.dtype(np.float32))
    assert a is b and not a.ones.flags.writeable
    assert norm.ChannelMatrix.of(x[:5], np.dtype(np.float32)) is not a
    assert norm.ChannelMatrix.of(x, np.dtype(np.float64)) is not a
    fresh = norm.ChannelMatrix(x, np.dtype(np.float32))
    xm = a.matrix(x)
    np.testing.assert_array_equal(a.sum(xm), fresh.sum(fresh.matrix(x)))
    for _ in range(norm.CHANNEL_MATRICES_KEPT + 3):  # bounded: the cache is emptied when full
        norm.ChannelMatrix.of(rng.standard_normal((2 + _, 3)), np.dtype(np.float64))
    assert len(norm._channel_matrices) <= norm.CHANNEL_MATRICES_KEPT
    g = rng.standard_normal(x.shape).astype(np.float32)
    runs = []
    for _ in range(2):  # the second run finds the cached ChannelMatrix
        t = dt.tensor(x, requires_grad=True)
        w, bias = dt.tensor(np.full(3, 1.5, np.float32), requires_grad=True), dt.tensor(np.zeros(3, np.float32),
                                                                                     requires_grad=True)
        y = F.batch_norm(t, None, None, w, bias, training=True)
        y.backward(g)
        runs.append((y.data, t.grad, w.grad, bias.grad))
    for first, second in zip(*runs):
        np.testing.assert_array_equal(first, second)
