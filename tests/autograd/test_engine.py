"""The backward engine: deep chains, fan-out, accumulation, hooks, graph freeing, dtypes, aliasing."""

from __future__ import annotations

import numpy as np
import pytest

import dtrain as dt
import dtrain.nn.functional as F


def leaf(a, dtype="float64"):
    return dt.tensor(np.asarray(a, dtype=np.float64), dtype=dtype, requires_grad=True)


def test_10000_op_chain_is_iterative_and_exact():
    x = leaf([1.0, -2.0])
    y = x
    for _ in range(10_000):
        y = y * 1.0001
    y.sum().backward()
    np.testing.assert_allclose(x.grad, np.full(2, 1.0001**10_000), rtol=1e-12)


def test_10000_op_mixed_chain():
    x = leaf([0.3])
    y = x
    for i in range(5_000):
        y = (y + 0.001).tanh() if i % 2 else y * 0.999 + 0.0
    y.sum().backward()
    # same chain differentiated by forward mode, one step at a time
    v, d = 0.3, 1.0
    for i in range(5_000):
        if i % 2:
            v = np.tanh(v + 0.001)
            d *= 1 - v * v
        else:
            v, d = v * 0.999, d * 0.999
    np.testing.assert_allclose(x.grad, [d], rtol=1e-10)


def test_diamond_accumulates_both_paths():
    x = leaf([0.5, 1.5])
    a = x * 2.0
    y = a * a + a.exp()  # a fans out to three uses
    y.sum().backward()
    xv = np.array([0.5, 1.5])
    np.testing.assert_allclose(x.grad, 2 * (2 * (2 * xv)) + 2 * np.exp(2 * xv), rtol=1e-12)


def test_residual_graph_and_shared_weight():
    rng = np.random.default_rng(0)
    xv, wv = rng.standard_normal((4, 3)), rng.standard_normal((3, 3))
    x, w = leaf(xv), leaf(wv)
    h = x + F.linear(x, w)  # residual
    out = (h + F.linear(h, w)).sum()  # the same weight used twice
    out.backward()
    g = np.ones((4, 3))
    gh = g + g @ wv
    hv = xv + xv @ wv.T
    np.testing.assert_allclose(x.grad, gh + gh @ wv, rtol=1e-12)
    np.testing.assert_allclose(w.grad, gh.T @ xv + g.T @ hv, rtol=1e-12)


def test_gradients_accumulate_across_backward_calls():
    x = leaf([1.0, 2.0])
    (x * x).sum().backward()
    (x * 3.0).sum().backward()
    np.testing.assert_array_equal(x.grad, [2.0 + 3.0, 4.0 + 3.0])


def test_graph_freed_after_backward_and_second_backward_is_an_error():
    x = leaf([1.0])
    y = (x.exp() * 2.0).sum()
    y.backward()
    with pytest.raises(RuntimeError, match=r"backward through the graph a second time.*retain_graph=True"):
        y.backward()


def test_retain_graph_allows_a_second_backward():
    x = leaf([1.0, 2.0])
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_array_equal(x.grad, [4.0, 8.0])


def test_saved_activations_released_while_backward_runs():
    """When an early tensor's gradient is complete, every later node has already dropped its data."""
    x = leaf(np.ones((2, 3)))
    h1 = x.tanh()
    h2 = h1.exp()
    h3 = h2 * h2
    later = [h2.grad_fn, h3.grad_fn]
    seen = {}

    def early_hook(g):
        seen["saved"] = [n.saved for n in later]

    h1.register_hook(early_hook)
    h3.sum().backward()
    assert seen["saved"] == [None, None]
    assert h1.grad_fn.saved is None


def test_no_grad_records_nothing():
    x = leaf([1.0])
    with dt.no_grad():
        y = x * 2.0
    assert not y.requires_grad and y.grad_fn is None

    @dt.no_grad()
    def f(t):
        return t * 3.0

    assert not f(x).requires_grad
    assert (x * 2.0).requires_grad  # restored afterwards
    with dt.no_grad(), dt.enable_grad():
        assert (x * 2.0).requires_grad


def test_leaf_hook_fires_once_with_the_complete_gradient():
    x = leaf([1.0, 2.0])
    calls = []
    x.register_hook(lambda g: calls.append(g.copy()))
    y = x * 2.0 + x * x + x.exp()  # three consumers
    y.sum().backward()
    assert len(calls) == 1
    np.testing.assert_allclose(calls[0], 2.0 + 2 * np.array([1.0, 2.0]) + np.exp([1.0, 2.0]))
    np.testing.assert_allclose(x.grad, calls[0])


def test_leaf_hooks_fire_as_early_as_possible_in_reverse_layer_order():
    """The last layer's parameters are complete before the first layer's backward runs (DDP overlap)."""
    rng = np.random.default_rng(0)
    x = dt.tensor(rng.standard_normal((4, 5)))
    ws = [leaf(rng.standard_normal((5, 5))) for _ in range(3)]
    events = []
    for i, w in enumerate(ws):
        w.register_hook(lambda g, i=i: events.append(f"w{i}"))
    h0 = F.linear(x, ws[0])
    h0.register_hook(lambda g: events.append("h0-grad-complete"))
    h = F.linear(h0.tanh(), ws[1])
    h = F.linear(h.tanh(), ws[2])
    h.sum().backward()
    assert events == ["w2", "w1", "h0-grad-complete", "w0"]


def test_hook_can_replace_the_gradient_and_be_removed():
    x = leaf([1.0, 1.0])
    handle = x.register_hook(lambda g: g * 10.0)
    (x * 2.0).sum().backward()
    np.testing.assert_array_equal(x.grad, [20.0, 20.0])
    handle.remove()
    x.grad = None
    (x * 2.0).sum().backward()
    np.testing.assert_array_equal(x.grad, [2.0, 2.0])


def test_post_accumulate_hook_sees_updated_grad():
    x = leaf([1.0])
    seen = []
    x.register_post_accumulate_grad_hook(lambda t: seen.append(t.grad.copy()))
    (x * 2.0).sum().backward()
    (x * 2.0).sum().backward()
    np.testing.assert_array_equal(np.concatenate(seen), [2.0, 4.0])


def test_retain_grad_on_non_leaf():
    x = leaf([1.0, 2.0])
    h = x * 3.0
    h.retain_grad()
    (h * h).sum().backward()
    np.testing.assert_array_equal(h.grad, [6.0, 12.0])


def test_leaf_gradients_never_alias_each_other():
    a, b = leaf([1.0, 2.0]), leaf([3.0, 4.0])
    (a + b).sum().backward()
    assert not np.shares_memory(a.grad, b.grad)
    a.grad *= 0
    np.testing.assert_array_equal(b.grad, [1.0, 1.0])


def test_broadcast_gradients_are_reduced_and_writable():
    w = leaf(np.ones((3, 4)))
    b = leaf(np.zeros(4))
    (w + b).mean().backward()
    assert b.grad.shape == (4,) and w.grad.shape == (3, 4)
    np.testing.assert_allclose(b.grad, np.full(4, 3 / 12))
    w.grad += 1.0  # optimizers update grads in place
    b.grad += 1.0


def test_backward_on_a_leaf_itself():
    x = leaf([5.0])
    x.backward()
    np.testing.assert_array_equal(x.grad, [1.0])


def test_explicit_upstream_gradient_for_non_scalar():
    x = leaf([1.0, 2.0, 3.0])
    (x * x).backward(np.array([1.0, 0.0, -1.0]))
    np.testing.assert_array_equal(x.grad, [2.0, 0.0, -6.0])


def test_constant_branches_get_no_gradient():
    x = leaf([1.0, 2.0])
    c = dt.tensor([3.0, 4.0], dtype="float64")  # requires_grad=False
    (x * c + c).sum().backward()
    assert c.grad is None
    np.testing.assert_array_equal(x.grad, [3.0, 4.0])


def test_deterministic_bitwise():
    def run():
        rng = np.random.default_rng(0)
        w = dt.tensor(rng.standard_normal((16, 8)), requires_grad=True)
        x = dt.tensor(rng.standard_normal((32, 8)))
        F.cross_entropy(F.linear(x, w), rng.integers(0, 16, 32)).backward()
        return w.grad

    assert run().tobytes() == run().tobytes()


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_dtype_kept_through_forward_and_backward(dtype):
    if dtype == "bfloat16" and dt.bfloat16 is None:
        pytest.skip("bfloat16 needs ml_dtypes")
    rng = np.random.default_rng(0)
    xv, wv = rng.standard_normal((4, 3)), rng.standard_normal((2, 3)) * 0.5
    x = dt.tensor(xv, dtype=dtype)
    w = dt.tensor(wv, dtype=dtype, requires_grad=True)
    out = F.cross_entropy(F.gelu(F.layer_norm(F.linear(x, w), 2)), np.array([0, 1, 1, 0]))
    assert out.dtype == np.dtype(dtype) if dtype != "bfloat16" else out.dtype == dt.bfloat16
    out.backward()
    assert w.grad.dtype == w.dtype
    # compare with float64
    x64, w64 = dt.tensor(xv, dtype="float64"), dt.tensor(wv, dtype="float64", requires_grad=True)
    F.cross_entropy(F.gelu(F.layer_norm(F.linear(x64, w64), 2)), np.array([0, 1, 1, 0])).backward()
    tol = {"float32": 1e-5, "float64": 1e-12, "float16": 2e-2, "bfloat16": 1e-1}[dtype]
    np.testing.assert_allclose(w.grad.astype(np.float64), w64.grad, atol=tol, rtol=tol)


def test_mixed_precision_operands_give_each_leaf_its_own_dtype():
    a = dt.tensor([1.0, 2.0], dtype="float32", requires_grad=True)
    b = dt.tensor([3.0, 4.0], dtype="float64", requires_grad=True)
    y = a * b
    assert y.dtype == np.float64
    y.sum().backward()
    assert a.grad.dtype == np.float32 and b.grad.dtype == np.float64


def test_python_scalars_keep_the_tensor_dtype():
    x = dt.tensor([1.0, 2.0], requires_grad=True)  # float32 default
    for y in (x * 2.5, 2.5 * x, x / 3, 1 - x, x**2, x + np.float64(1.0)):
        assert y.dtype == np.float32


def test_set_default_dtype_float64():
    dt.set_default_dtype("float64")
    assert dt.tensor([1.0]).dtype == np.float64
    assert dt.randn(2, 3).dtype == np.float64


def test_queue_callback_runs_once_after_the_last_gradient():
    import dtrain.autograd as ag

    w1 = dt.tensor([1.0, 2.0], requires_grad=True)
    w2 = dt.tensor([3.0], requires_grad=True)
    seen = []

    def hook(t):
        seen.append(("hook", t.shape))
        if len(seen) == 1:
            ag.queue_callback(lambda: seen.append(("callback", w1.grad is not None and w2.grad is not None)))

    w1.register_post_accumulate_grad_hook(hook)
    w2.register_post_accumulate_grad_hook(hook)
    ((w1 * 2).sum() + (w2 * w2).sum()).backward()
    assert seen[-1] == ("callback", True) and [s[0] for s in seen].count("callback") == 1
    with pytest.raises(RuntimeError, match="only be called during a backward pass"):
        ag.queue_callback(lambda: None)
