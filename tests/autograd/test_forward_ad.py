"""Forward mode against reverse mode: J·v == jvp and vᵀ·J == vjp, on composite functions."""

from __future__ import annotations

import numpy as np
import pytest

import dtrain as dt
import dtrain.nn.functional as F
from dtrain.autograd import jacobian, jvp, vjp

RNG = np.random.default_rng(0)
W = RNG.standard_normal((4, 3))
KER = RNG.standard_normal((2, 1, 2, 2))


def mlp(x):
    return F.log_softmax(F.gelu(F.linear(x.reshape(2, 3), dt.tensor(W))), dim=-1)


def norm_attention(x):
    h = F.layer_norm(x.reshape(1, 2, 3), 3)
    return F.scaled_dot_product_attention(h, h, h, is_causal=True).tanh()


def conv_pool(x):
    return F.max_pool2d(F.conv2d(x.reshape(1, 1, 3, 2), dt.tensor(KER), padding=1), 2).sigmoid()


@pytest.mark.parametrize("fn", [mlp, norm_attention, conv_pool], ids=["mlp", "norm-attention", "conv-pool"])
def test_forward_and_reverse_jacobians_agree(fn):
    x = dt.tensor(RNG.standard_normal(6), dtype="float64")
    j_rev = jacobian(fn, x, mode="reverse").data
    j_fwd = jacobian(fn, x, mode="forward").data
    np.testing.assert_allclose(j_fwd, j_rev, rtol=1e-10, atol=1e-12)

    out_shape = fn(x).shape
    v = RNG.standard_normal(6)
    _, t = jvp(fn, x, v)
    np.testing.assert_allclose(t.data, np.tensordot(j_rev, v, axes=1), rtol=1e-10, atol=1e-12)  # J·v

    u = RNG.standard_normal(out_shape)
    _, g = vjp(fn, x, u)
    np.testing.assert_allclose(g.data, np.tensordot(u, j_fwd, axes=u.ndim), rtol=1e-10, atol=1e-12)  # uᵀ·J


def test_jacobian_of_elementwise_function_is_diagonal():
    x = dt.tensor([0.1, -0.4, 2.0], dtype="float64")
    j = jacobian(lambda t: t.tanh(), x, mode="forward").data
    np.testing.assert_allclose(j, np.diag(1 - np.tanh(x.data) ** 2), rtol=1e-12)


def test_jvp_with_several_primals_and_outputs():
    a = dt.tensor([1.0, 2.0], dtype="float64")
    b = dt.tensor([3.0, -1.0], dtype="float64")
    (p, _), (tp, ts) = jvp(lambda x, y: (x * y, x + y), (a, b), (np.array([1.0, 0.0]), np.array([0.0, 1.0])))
    np.testing.assert_array_equal(p.data, [3.0, -2.0])
    np.testing.assert_array_equal(tp.data, [3.0, 2.0])  # da*b + a*db
    np.testing.assert_array_equal(ts.data, [1.0, 1.0])


def test_jvp_leaves_inputs_untouched_and_records_no_graph():
    x = dt.tensor([1.0, 2.0], dtype="float64", requires_grad=True)
    out, tan = jvp(lambda t: (t * t).sum(), x, np.ones(2))
    assert x._tangent is None and not out.requires_grad
    assert tan.item() == 6.0


def test_jvp_rejects_mismatched_tangent():
    with pytest.raises(ValueError, match=r"tangent 0 has shape \(3,\), primal has shape \(2,\)"):
        jvp(lambda t: t, dt.ones(2), np.ones(3))
