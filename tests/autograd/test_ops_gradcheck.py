"""Every primitive against central finite differences (float64), reverse and forward mode.

One table of cases, one harness: each case names a function of dtrain Tensors and the shapes of its
inputs (plus how to draw them), and ``gradcheck(..., check_forward=True)`` checks backward and jvp.
"""

from __future__ import annotations

import numpy as np
import pytest

import dtrain as dt
import dtrain.nn.functional as F
from dtrain.autograd import checkpoint, gradcheck
from dtrain.backend import Generator


def draw(rng, shape, kind):
    if kind == "pos":  # strictly positive, away from 0 (log, sqrt, division, pow)
        return rng.uniform(0.5, 1.5, shape)
    if kind == "away0":  # |x| >= 0.2: abs, relu & co. are smooth there
        x = rng.uniform(0.2, 1.5, shape)
        return x * rng.choice([-1.0, 1.0], shape)
    if kind == "wide":  # tails of sigmoid/tanh/softplus
        return rng.uniform(-30, 30, shape)
    return rng.standard_normal(shape)


C = []  # (id, fn, shapes, kind)


def case(name, fn, *shapes, kind="normal"):
    C.append(pytest.param(fn, shapes, kind, id=name))


# arithmetic, with broadcasting, size-1 and zero-size operands
for sh in [((3, 4), (3, 4)), ((3, 1, 4), (2, 4)), ((1,), (3,)), ((), (2, 3)), ((0, 3), (1, 3)), ((2, 1), (1, 5))]:
    tag = "x".join(map(str, sh[0])) + "_" + "x".join(map(str, sh[1]))
    case(f"add-{tag}", lambda a, b: a + b, *sh)
    case(f"sub-{tag}", lambda a, b: a - b, *sh)
    case(f"mul-{tag}", lambda a, b: a * b, *sh)
    case(f"div-{tag}", lambda a, b: a / b, *sh, kind="pos")
    case(f"pow-tensor-{tag}", lambda a, b: a**b, *sh, kind="pos")
case("radd-scalar", lambda a: 2.5 + a, (3,))
case("rsub-scalar", lambda a: 1.0 - a, (3, 2))
case("rdiv-scalar", lambda a: 2.0 / a, (4,), kind="pos")
case("rpow-scalar", lambda a: 2.0**a, (4,))
case("neg", lambda a: -a, (2, 3))
for p in (2, 3, 0.5, -1.5, 1):
    case(f"pow-const-{p}", lambda a, p=p: a**p, (2, 3), kind="pos")

# matmul in all its NumPy forms
for sa, sb in [((3, 4), (4, 5)), ((2, 1, 3, 4), (5, 4, 2)), ((4,), (4, 5)), ((3, 4), (4,)), ((4,), (4,)),
               ((2, 3, 4), (4,)), ((4,), (2, 4, 3)), ((0, 4), (4, 2)), ((3, 0), (0, 2))]:
    case(f"matmul-{sa}-{sb}", lambda a, b: a @ b, sa, sb)
case("linear-bias", lambda x, w, b: F.linear(x, w, b), (5, 3), (4, 3), (4,))
case("linear-nobias-3d", lambda x, w: F.linear(x, w), (2, 5, 3), (4, 3))
case("linear-1d", lambda x, w, b: F.linear(x, w, b), (3,), (2, 3), (2,))

# reductions
for axis, keep in [(None, False), (0, False), (-1, True), ((0, 2), False), ((0, 2), True)]:
    tag = f"{axis}-{keep}"
    case(f"sum-{tag}", lambda x, a=axis, k=keep: x.sum(axis=a, keepdims=k), (2, 3, 4))
    case(f"mean-{tag}", lambda x, a=axis, k=keep: x.mean(axis=a, keepdims=k), (2, 3, 4))
    case(f"max-{tag}", lambda x, a=axis, k=keep: x.max(axis=a, keepdims=k), (2, 3, 4))
    case(f"min-{tag}", lambda x, a=axis, k=keep: x.min(dim=a, keepdim=k), (2, 3, 4))
    case(f"logsumexp-{tag}", lambda x, a=axis, k=keep: x.logsumexp(axis=a, keepdims=k), (2, 3, 4))
case("sum-zero-size", lambda x: x.sum(axis=0), (0, 3))
case("mean-size1", lambda x: x.mean(), (1, 1))
case("var-unbiased", lambda x: x.var(axis=1, ddof=1), (3, 5))
for ax in (0, -1):
    case(f"softmax-{ax}", lambda x, a=ax: F.softmax(x, dim=a), (3, 5))
    case(f"log_softmax-{ax}", lambda x, a=ax: F.log_softmax(x, dim=a), (3, 5))
case("softmax-wide", lambda x: F.softmax(x, dim=-1), (2, 6), kind="wide")
case("log_softmax-wide", lambda x: F.log_softmax(x, dim=-1), (2, 6), kind="wide")

# shape and indexing
case("reshape", lambda x: x.reshape(4, -1), (2, 3, 2))
case("contiguous-of-transpose", lambda x: x.transpose(0, 2).contiguous(), (2, 3, 4))
case("transpose-swap", lambda x: x.transpose(0, 2), (2, 3, 4))
case("permute", lambda x: x.permute(2, 0, 1), (2, 3, 4))
case("T", lambda x: x.T, (2, 3))
case("flatten", lambda x: x.flatten(1), (2, 3, 4))
case("squeeze-unsqueeze", lambda x: x.squeeze(1).unsqueeze(0), (3, 1, 2))
case("expand", lambda x: x.expand(4, 3, 2), (3, 1))
case("getitem-slice", lambda x: x[1:, ::2], (3, 5))
case("getitem-none-ellipsis-int", lambda x: x[None, ..., 0], (2, 3, 4))
case("getitem-int-array-repeats", lambda x: x[np.array([0, 0, 2, 0])], (3, 2))
case("getitem-mixed-advanced", lambda x: x[[0, 1, 1], :, [1, 1, 0]], (2, 3, 2))
case("getitem-bool-mask", lambda x: x[np.array([True, False, True])], (3, 2))
case("getitem-tensor-index", lambda x: x[dt.tensor([2, 2, 1])], (3, 2))
case("concat-axis1", lambda a, b: dt.concat([a, b], axis=1), (2, 3), (2, 1))
case("concat-zero-size-piece", lambda a, b: dt.concat([a, b], axis=0), (0, 3), (2, 3))
case("stack-axis0", lambda a, b: dt.stack([a, b]), (2, 3), (2, 3))
case("stack-axis-last", lambda a, b: dt.stack([a, b], axis=-1), (2, 3), (2, 3))
case("where", lambda a, b: dt.where(np.array([[True, False, True]]), a, b), (2, 3), (2, 1))
case("where-scalar", lambda a: dt.where(np.array([True, False]), a, 0.0), (3, 2))
case("pad", lambda x: F.pad(x, (1, 2, 0, 1), value=0.5), (2, 3, 4))

# elementwise math and activations
case("exp", lambda x: x.exp(), (2, 3))
case("log", lambda x: x.log(), (2, 3), kind="pos")
case("sqrt", lambda x: x.sqrt(), (2, 3), kind="pos")
case("abs", lambda x: x.abs(), (2, 3), kind="away0")
case("erf", lambda x: dt.autograd.ops.erf(x), (2, 3))
case("clip", lambda x: x.clip(-0.5, 0.7), (4, 5))
case("clip-min-only", lambda x: x.clip(min=0.1), (4, 5))
case("tanh", lambda x: x.tanh(), (2, 3))
case("tanh-wide", lambda x: x.tanh(), (2, 3), kind="wide")
case("sigmoid", lambda x: x.sigmoid(), (2, 3))
case("sigmoid-wide", lambda x: x.sigmoid(), (2, 3), kind="wide")
case("relu", lambda x: x.relu(), (3, 4), kind="away0")
case("leaky_relu", lambda x: F.leaky_relu(x, 0.2), (3, 4), kind="away0")
case("elu", lambda x: F.elu(x, alpha=1.3), (3, 4), kind="away0")
case("gelu", lambda x: F.gelu(x), (3, 4))
case("gelu-tanh", lambda x: F.gelu(x, approximate="tanh"), (3, 4))
case("silu", lambda x: F.silu(x), (3, 4))
case("elementwise-zero-size", lambda x: (x.exp() * x.tanh()).sum(), (0, 4))

# convolution and pooling
case("conv2d", lambda x, w: F.conv2d(x, w), (2, 3, 5, 5), (4, 3, 3, 3))
case("conv2d-bias-stride2-pad1", lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1), (2, 3, 6, 5),
     (4, 3, 3, 3), (4,))
case("conv2d-dilation2", lambda x, w: F.conv2d(x, w, dilation=2, padding=1), (1, 2, 7, 7), (3, 2, 3, 3))
case("conv2d-groups2", lambda x, w, b: F.conv2d(x, w, b, groups=2), (2, 4, 5, 5), (6, 2, 3, 3), (6,))
case("conv2d-rect-kernel", lambda x, w: F.conv2d(x, w, stride=(2, 1), padding=(1, 0)), (1, 2, 6, 5),
     (2, 2, 2, 3))
case("conv2d-1x1", lambda x, w: F.conv2d(x, w), (2, 3, 4, 4), (5, 3, 1, 1))
# one input channel: columns copied offset by offset from NCHW; stride 3 x 2: input gradient summed per phase
case("conv2d-one-channel-stride2x1", lambda x, w, b: F.conv2d(x, w, b, stride=(2, 1), padding=1, dilation=(1, 2)),
     (2, 1, 6, 7), (3, 1, 3, 3), (3,))
case("conv2d-stride3x2-phases", lambda x, w: F.conv2d(x, w, stride=(3, 2), padding=(2, 1)), (1, 2, 8, 7),
     (3, 2, 3, 2))
case("max_pool2d-2", lambda x: F.max_pool2d(x, 2), (2, 3, 4, 6))
case("max_pool2d-3-s2-p1", lambda x: F.max_pool2d(x, 3, stride=2, padding=1), (1, 2, 7, 6))
case("max_pool2d-overlap", lambda x: F.max_pool2d(x, 2, stride=1), (1, 2, 4, 4))
case("avg_pool2d-2", lambda x: F.avg_pool2d(x, 2), (2, 3, 4, 6))
case("avg_pool2d-3-s2-p1", lambda x: F.avg_pool2d(x, 3, stride=2, padding=1), (1, 2, 7, 6))
case("avg_pool2d-no-pad-count", lambda x: F.avg_pool2d(x, 3, 2, 1, count_include_pad=False), (1, 2, 7, 6))

# normalisation
case("batch_norm-train-4d", lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True), (3, 2, 3, 3), (2,),
     (2,))
case("batch_norm-train-2d", lambda x, w, b: F.batch_norm(x, np.zeros(4), np.ones(4), w, b, training=True),
     (5, 4), (4,), (4,))
case("batch_norm-eval", lambda x, w, b: F.batch_norm(x, np.full(2, 0.3), np.full(2, 1.7), w, b), (3, 2, 2, 2),
     (2,), (2,))
case("batch_norm-no-affine", lambda x: F.batch_norm(x, None, None, training=True), (4, 3))
case("layer_norm", lambda x, w, b: F.layer_norm(x, 5, w, b), (2, 3, 5), (5,), (5,))
case("layer_norm-2d-shape", lambda x, w, b: F.layer_norm(x, (3, 4), w, b), (2, 3, 4), (3, 4), (3, 4))
case("layer_norm-no-affine", lambda x: F.layer_norm(x, (4,)), (3, 4))

# nn ops
case("dropout-fixed-generator", lambda x: F.dropout(x, 0.4, generator=Generator(3)), (4, 5))
case("embedding", lambda w: F.embedding(np.array([[0, 2], [2, 2]]), w), (3, 4))
case("attention", lambda q, k, v: F.scaled_dot_product_attention(q, k, v), (2, 3, 4), (2, 5, 4), (2, 5, 2))
case("attention-causal", lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), (1, 2, 4, 3),
     (1, 2, 4, 3), (1, 2, 4, 3))
case("attention-bool-mask", lambda q, k, v: F.scaled_dot_product_attention(
    q, k, v, attn_mask=np.array([[True, False, True], [True, True, False]])), (2, 2, 4), (2, 3, 4), (2, 3, 2))
case("attention-dropout", lambda q, k, v: F.scaled_dot_product_attention(
    q, k, v, dropout_p=0.3, generator=Generator(2)), (2, 3, 4), (2, 3, 4), (2, 3, 2))
case("attention-float-mask", lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m),
     (2, 3), (4, 3), (4, 2), (2, 4))

# losses
T3 = np.array([2, 0, 1])
case("cross_entropy", lambda x: F.cross_entropy(x, T3), (3, 4))
case("cross_entropy-sum-smooth-weight", lambda x: F.cross_entropy(
    x, T3, weight=np.array([0.5, 1.0, 2.0, 1.5]), reduction="sum", label_smoothing=0.2), (3, 4))
case("cross_entropy-none-ignore", lambda x: F.cross_entropy(
    x, np.array([2, -100, 1]), reduction="none"), (3, 4))
case("cross_entropy-mean-ignore-weight-smooth", lambda x: F.cross_entropy(
    x, np.array([3, -1, 1]), weight=np.array([0.5, 1.0, 2.0, 1.5]), ignore_index=-1, label_smoothing=0.1), (3, 4))
case("cross_entropy-4d", lambda x: F.cross_entropy(x, np.array([[[0, 2], [1, 1]], [[2, 2], [0, 1]]])),
     (2, 3, 2, 2))
P34 = np.random.default_rng(7).dirichlet(np.ones(4), size=3)
case("cross_entropy-prob-targets", lambda x: F.cross_entropy(x, P34, label_smoothing=0.1), (3, 4))
case("cross_entropy-1d", lambda x: F.cross_entropy(x, np.array(1)), (4,))
case("nll_loss", lambda x: F.nll_loss(F.log_softmax(x, dim=1), T3, weight=np.array([1.0, 2.0, 0.5, 1.0])),
     (3, 4))
case("nll_loss-none", lambda x: F.nll_loss(x, T3, reduction="none"), (3, 4))
case("mse_loss", lambda x, y: F.mse_loss(x, y), (3, 4), (3, 4))
case("mse_loss-sum", lambda x, y: F.mse_loss(x, y, reduction="sum"), (2, 2), (2, 2))
case("bce_with_logits", lambda x, y: F.binary_cross_entropy_with_logits(x, y.sigmoid()), (3, 4), (3, 4))
case("bce_with_logits-wide-weights", lambda x, y: F.binary_cross_entropy_with_logits(
    x, y.sigmoid(), weight=np.array([1.0, 0.5, 2.0]), pos_weight=np.array([3.0, 1.0, 0.5]), reduction="sum"),
    (2, 3), (2, 3), kind="wide")
case("bce_with_logits-none", lambda x, y: F.binary_cross_entropy_with_logits(x, y, reduction="none"), (4,), (4,))

# composites through the engine: fan-out, residuals, checkpointed segments
case("fan-out-diamond", lambda x: (x * x + x.exp()) * x.tanh(), (3, 2))
case("residual-block", lambda x, w: x + F.linear(F.relu(F.linear(x, w)), w), (2, 3), (3, 3))
case("checkpointed-segment", lambda x, w: checkpoint(lambda a, b: F.gelu(F.linear(a, b)).sum(1), x, w), (2, 3),
     (4, 3))


@pytest.mark.parametrize(("fn", "shapes", "kind"), C)
def test_gradcheck(fn, shapes, kind, rng):
    inputs = [dt.tensor(draw(rng, s, kind), dtype="float64", requires_grad=True) for s in shapes]
    assert gradcheck(fn, inputs, check_forward=True)


def test_embedding_padding_idx_gets_no_gradient(rng):
    w = dt.tensor(rng.standard_normal((3, 2)), dtype="float64", requires_grad=True)
    F.embedding(np.array([0, 1, 1, 2]), w, padding_idx=1).sum().backward()
    np.testing.assert_array_equal(w.grad, [[1.0, 1.0], [0.0, 0.0], [1.0, 1.0]])
