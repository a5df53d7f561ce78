"""The Tensor front end: creation, dtype inference, conversions, methods with axis/dim spellings."""

from __future__ import annotations

import numpy as np
import pytest

import dtrain as dt


def test_creation_and_dtype_inference():
    assert dt.tensor([1.0, 2.0]).dtype == np.float32
    assert dt.tensor([1, 2]).dtype == np.int64
    assert dt.tensor([True]).dtype == np.bool_
    assert dt.tensor(np.zeros(2, dtype=np.float64)).dtype == np.float64  # arrays keep their dtype
    assert dt.tensor([1, 2], dtype="float64").dtype == np.float64
    src = np.ones(3)
    t = dt.tensor(src)
    src[0] = 5
    assert t.data[0] == 1  # data is copied
    assert dt.zeros(2, 3).shape == (2, 3) and dt.ones((4,)).shape == (4,)
    assert dt.full((2,), 7.0).data.tolist() == [7.0, 7.0]
    assert dt.arange(3).data.tolist() == [0, 1, 2]


def test_conversions():
    x = dt.tensor([[1.5, 2.5]], requires_grad=True)
    assert x.item.__doc__ and dt.tensor([3.0]).item() == 3.0
    assert isinstance(x.numpy(), np.ndarray)
    assert x.tolist() == [[1.5, 2.5]]
    d = x.detach()
    assert not d.requires_grad and d.grad_fn is None and np.shares_memory(d.data, x.data)
    assert x.to(dtype="float64").dtype == np.float64
    assert x.to("cpu") is x
    with pytest.raises(ValueError, match="item\\(\\) needs a one-element tensor"):
        x.item()


def test_to_dtype_is_differentiable():
    x = dt.tensor([1.0, 2.0], requires_grad=True)
    (x.double() * 3.0).sum().backward()
    assert x.grad.dtype == np.float32 and x.grad.tolist() == [3.0, 3.0]


def test_axis_and_dim_spellings_agree():
    x = dt.tensor(np.arange(24.0).reshape(2, 3, 4))
    np.testing.assert_array_equal(x.sum(axis=1).data, x.sum(dim=1).data)
    np.testing.assert_array_equal(x.mean(axis=(0, 2), keepdims=True).data, x.mean(dim=(0, 2), keepdim=True).data)
    assert x.max(dim=-1).shape == (2, 3)
    assert x.transpose(0, 2).shape == (4, 3, 2) and x.permute(1, 2, 0).shape == (3, 4, 2)
    assert x.transpose().shape == (4, 3, 2) and x.T.shape == (4, 3, 2)
    assert x.argmax(dim=1).shape == (2, 4)
    with pytest.raises(TypeError, match="either axis= or dim="):
        x.sum(axis=0, dim=1)


def test_comparisons_are_elementwise_and_not_differentiable():
    x = dt.tensor([1.0, 2.0, 3.0], requires_grad=True)
    m = x > 1.5
    assert m.dtype == np.bool_ and not m.requires_grad
    assert (x == 2.0).data.tolist() == [False, True, False]
    assert {x: 1}[x] == 1  # still hashable by identity


def test_numpy_array_on_the_left_defers_to_tensor():
    x = dt.tensor([1.0, 2.0], requires_grad=True)
    y = np.array([3.0, 4.0], dtype=np.float32) * x
    assert isinstance(y, dt.Tensor) and y.requires_grad


def test_repr():
    assert "requires_grad=True" in repr(dt.tensor([1.0], requires_grad=True))
    assert "grad_fn=Mul" in repr(dt.tensor([1.0], requires_grad=True) * 2.0)


def test_requires_grad_cannot_be_turned_off_on_non_leaf():
    y = dt.tensor([1.0], requires_grad=True) * 2.0
    with pytest.raises(RuntimeError, match="only be turned off on leaf tensors"):
        y.requires_grad = False


def test_contiguous_copies_channels_last_memory_only_when_needed():
    import dtrain.nn.functional as F

    x = dt.tensor(np.arange(2 * 3 * 4 * 4, dtype=np.float64).reshape(2, 3, 4, 4), requires_grad=True)
    w = dt.tensor(np.ones((5, 3, 3, 3)), requires_grad=True)
    y = F.conv2d(x, w, padding=1)  # channels-last memory under the NCHW shape
    assert not y.is_contiguous() and y.data.transpose(0, 2, 3, 1).flags.c_contiguous
    c = y.contiguous()
    assert c.is_contiguous() and c.shape == y.shape
    np.testing.assert_array_equal(c.numpy(), y.numpy())
    assert c.contiguous() is c and x.contiguous() is x
    g = np.random.default_rng(0).normal(size=y.shape)
    c.backward(dt.tensor(g))
    x2, w2 = dt.tensor(x.numpy(), requires_grad=True), dt.tensor(w.numpy(), requires_grad=True)
    F.conv2d(x2, w2, padding=1).backward(dt.tensor(g))
    np.testing.assert_array_equal(x.grad, x2.grad)  # the copy passes the gradient through unchanged
