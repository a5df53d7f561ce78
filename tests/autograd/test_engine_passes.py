"""The engine's two passes give the same gradients in the same order.

While no leaf is watched (no leaf hook, post-accumulate hook or gradient buffer anywhere), backward skips the
consumer-counting walk and runs nodes from a heap of the nodes gradients have reached; otherwise it counts
consumers so watched leaves finish as early as possible. Both must run the nodes in the same order and give
bitwise the same gradients, on graphs with fan-out, fan-in, a node used twice by one op, a branch whose
gradient is None and constants.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest

import dtrain as dt
from dtrain.autograd import engine


def _leaves(seed: int):
    rng = np.random.default_rng(seed)
    return [dt.tensor(rng.standard_normal(shape), requires_grad=True) for shape in ((3, 4), (4, 2), (2,))]


def _loss(a, b, c, order: list | None = None, detach: bool = True):
    """A DAG over three leaves; with ``order``, the order in which its non-leaf nodes run is logged. ``detach``:
    one branch reads a detached copy of a node's output (a constant to backward)."""

    def log(name, t):
        if order is not None:
            t.register_hook(lambda g: order.append(name))
        return t

    h = log("h", a.tanh())                # fan-out: h feeds three consumers
    p = log("p", h @ b)                   # b is used here and below (a leaf with two consumers)
    q = log("q", h * h)                   # one op using the same input twice
    r = log("r", (q.sum(axis=1, keepdims=True) * p + c).exp())  # fan-in of p and q, c broadcast
    s = log("s", ((h.detach() if detach else h) * 2.0).sum() + (b * b).sum())  # a constant branch and b again
    return log("loss", r.mean() + s + 0.5 * p.sum())


def _backward(seed: int, watched: bool):
    leaves, order = _leaves(seed), []
    loss = _loss(*leaves, order)
    handle = leaves[2].register_hook(lambda g: None) if watched else None
    assert bool(engine._watched) is watched
    loss.backward()
    if handle is not None:
        handle.remove()
    return [leaf.grad for leaf in leaves], order


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_both_passes_run_nodes_in_one_order_and_agree_bitwise(seed):
    gc.collect()  # leaves watched by earlier tests are gone
    fast, fast_order = _backward(seed, watched=False)
    counted, counted_order = _backward(seed, watched=True)
    assert fast_order == counted_order == ["loss", "s", "r", "q", "p", "h"]
    for g1, g2 in zip(fast, counted):
        assert g1.dtype == g2.dtype == np.float64
        np.testing.assert_array_equal(g1, g2)


def test_gradients_match_finite_differences_on_the_fast_pass():
    gc.collect()
    leaves = _leaves(3)
    _loss(*leaves, detach=False).backward()
    assert not engine._watched
    base = [leaf.data.copy() for leaf in leaves]
    eps = 1e-6
    for k, leaf in enumerate(leaves):
        for idx in np.ndindex(leaf.shape):
            values = []
            for step in (eps, -eps):
                arrays = [x.copy() for x in base]
                arrays[k][idx] += step
                with dt.no_grad():
                    values.append(float(_loss(*[dt.tensor(x) for x in arrays], detach=False).data))
            fd = (values[0] - values[1]) / (2 * eps)
            assert abs(fd - leaf.grad[idx]) <= 1e-6 * max(1.0, abs(fd)), (k, idx, fd, leaf.grad[idx])


def test_a_leaf_is_watched_while_it_has_hooks_or_a_buffer():
    gc.collect()
    w = dt.tensor(np.ones(3), requires_grad=True)
    assert not engine._watched
    h1 = w.register_hook(lambda g: None)
    h2 = w.register_post_accumulate_grad_hook(lambda t: None)
    assert id(w) in engine._watched
    h1.remove()
    assert id(w) in engine._watched  # the post-accumulate hook is still there
    h2.remove()
    assert not engine._watched
    w.set_grad_buffer(np.zeros(3))
    assert id(w) in engine._watched
    w.set_grad_buffer(None)
    assert not engine._watched
    w.register_hook(lambda g: None)
    assert id(w) in engine._watched
    del w
    gc.collect()
    assert not engine._watched  # a watched leaf that dies takes its entry with it


def test_fast_pass_leaf_grads_are_unshared_and_accumulate():
    """An op handing one array to two leaves (add) must not make their .grad the same array; a second
    backward adds into .grad in place."""
    gc.collect()
    x = dt.tensor(np.ones((2, 2)), requires_grad=True)
    y = dt.tensor(np.ones((2, 2)), requires_grad=True)
    (x + y).sum().backward()
    assert not engine._watched
    assert x.grad is not y.grad and not np.shares_memory(x.grad, y.grad)
    x.grad[0, 0] = 5.0
    np.testing.assert_array_equal(y.grad, np.ones((2, 2)))
    (x + y).sum().backward()
    np.testing.assert_array_equal(y.grad, np.full((2, 2), 2.0))


def test_fast_pass_second_backward_raises_and_leaves_grads_alone():
    gc.collect()
    x = dt.tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = (x * x).sum()
    y.backward()
    np.testing.assert_array_equal(x.grad, [2.0, 4.0])
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        y.backward()
    np.testing.assert_array_equal(x.grad, [2.0, 4.0])
