"""``Tensor.set_grad_buffer``: backward writes a leaf's gradient into a buffer the leaf offers (linear's weight),
only when that is the whole gradient, and computes exactly what it computes without the buffer."""

from __future__ import annotations

import numpy as np
import pytest

import dtrain as dt
import dtrain.nn.functional as F


def problem(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = dt.tensor(rng.standard_normal((5, 4)))
    w = dt.tensor(rng.standard_normal((3, 4)), requires_grad=True)
    b = dt.tensor(rng.standard_normal(3), requires_grad=True)
    return x, w, b


def reference(loss_fn):
    x, w, b = problem()
    loss_fn(x, w, b).backward()
    return w.grad.copy(), b.grad.copy()


def mlp_loss(x, w, b):
    return F.relu(F.linear(x, w, b)).sum()


def test_the_weight_gradient_lands_in_the_offered_buffer_bit_for_bit():
    gw, gb = reference(mlp_loss)
    x, w, b = problem()
    buf = np.full((3, 4), np.nan)
    w.set_grad_buffer(buf)
    seen = []
    w.register_post_accumulate_grad_hook(lambda t: seen.append(t.grad is buf))
    mlp_loss(x, w, b).backward()
    assert w.grad is buf and seen == [True]
    np.testing.assert_array_equal(buf, gw)
    np.testing.assert_array_equal(b.grad, gb)


def test_a_second_contribution_or_an_existing_grad_keeps_the_buffer_out():
    def tied(x, w, b):  # two linears share the weight: its gradient is a sum, not one op's output
        return F.linear(x, w, b).sum() + (F.linear(x, w) ** 2).sum()

    gw, _ = reference(tied)
    x, w, b = problem()
    buf = np.zeros((3, 4))
    w.set_grad_buffer(buf)
    tied(x, w, b).backward()
    assert w.grad is not buf and not buf.any()
    np.testing.assert_allclose(w.grad, gw, rtol=1e-15)

    first = w.grad.copy()  # .grad already holds a gradient: the new one is added to it, the buffer stays out
    mlp_loss(x, w, b).backward()
    assert w.grad is not buf and not buf.any()
    np.testing.assert_allclose(w.grad, first + reference(mlp_loss)[0], rtol=1e-14)


def test_withdrawn_buffers_and_other_dtypes_are_not_used():
    gw, _ = reference(mlp_loss)
    x, w, b = problem()
    buf = np.zeros((3, 4))
    w.set_grad_buffer(buf)
    w.set_grad_buffer(None)
    mlp_loss(x, w, b).backward()
    assert w.grad is not buf and not buf.any()
    np.testing.assert_array_equal(w.grad, gw)


def test_tensor_hooks_see_the_buffer_and_may_replace_it():
    x, w, b = problem()
    buf = np.zeros((3, 4))
    w.set_grad_buffer(buf)
    w.register_hook(lambda g: g * 2.0)  # returns a new array: that one becomes .grad
    mlp_loss(x, w, b).backward()
    assert w.grad is not buf
    np.testing.assert_array_equal(w.grad, 2.0 * buf)


def test_a_traced_step_does_not_keep_the_buffer():
    gw, _ = reference(mlp_loss)
    x, w, b = problem()
    buf = np.zeros((3, 4))
    w.set_grad_buffer(buf)
    step = dt.autograd.capture(mlp_loss)
    step(x, w, b)  # traced eagerly (the buffer is used), then replayed without the eager engine
    np.testing.assert_array_equal(w.grad, gw)
    w.set_grad_buffer(None)
    w.grad = None
    buf[...] = 0
    step(x, w, b)
    assert not buf.any()
    np.testing.assert_array_equal(w.grad, gw)


def test_bad_buffers_are_refused_naming_what_was_expected():
    x, w, b = problem()
    with pytest.raises(ValueError, match=r"expected a C-contiguous ndarray of shape \(3, 4\) and dtype float64, "
                                         r"got ndarray of shape \(4, 3\) and dtype float64"):
        w.set_grad_buffer(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="dtype float32"):
        w.set_grad_buffer(np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        w.set_grad_buffer(np.zeros((4, 3)).T)
    with pytest.raises(RuntimeError, match="only leaf tensors take a gradient buffer"):
        F.linear(x, w, b).set_grad_buffer(np.zeros((5, 3)))
