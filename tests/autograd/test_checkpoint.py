"""Gradient checkpointing: identical gradients, lower peak memory, dropout masks replayed."""

from __future__ import annotations

import tracemalloc

import numpy as np

import dtrain as dt
import dtrain.nn.functional as F
from dtrain.autograd import checkpoint


def _params(depth, width, seed=0):
    rng = np.random.default_rng(seed)
    return [(dt.tensor(rng.standard_normal((width, width)) / np.sqrt(width), requires_grad=True),
             dt.tensor(np.zeros(width), requires_grad=True)) for _ in range(depth)]


def _block(h, w, b):
    return F.gelu(F.linear(h, w, b))


def _run(params, x, use_checkpoint):
    h = x
    for w, b in params:
        h = checkpoint(_block, h, w, b) if use_checkpoint else _block(h, w, b)
    h.sum().backward()
    return [p.grad for wb in params for p in wb]


def test_same_gradients_as_without_checkpointing():
    x = dt.tensor(np.random.default_rng(1).standard_normal((8, 16)))
    plain = _run(_params(4, 16), x, False)
    ckpt = _run(_params(4, 16), x, True)
    for a, b in zip(plain, ckpt):
        np.testing.assert_array_equal(a, b)


def test_input_gradient_flows_through_checkpoint():
    x = dt.tensor(np.random.default_rng(2).standard_normal((3, 4)), dtype="float64", requires_grad=True)
    w = dt.tensor(np.eye(4), dtype="float64", requires_grad=True)
    checkpoint(lambda a: F.linear(a, w).tanh(), x).sum().backward()
    np.testing.assert_allclose(x.grad, 1 - np.tanh(x.data) ** 2, rtol=1e-12)
    np.testing.assert_allclose(w.grad, (1 - np.tanh(x.data) ** 2).T @ x.data, rtol=1e-12)


def test_dropout_mask_is_replayed_in_recomputation():
    x = dt.tensor(np.ones((4, 50)), dtype="float64", requires_grad=True)
    dt.manual_seed(5)
    y = checkpoint(lambda a: F.dropout(a * 3.0, 0.5), x)
    y.sum().backward()
    # the gradient's zero pattern must be the forward output's (same mask in both passes)
    np.testing.assert_array_equal(x.grad == 0, y.data == 0)
    np.testing.assert_allclose(x.grad[y.data != 0], 6.0)


def _peak_bytes(use_checkpoint):
    params = _params(12, 256)
    x = dt.tensor(np.random.default_rng(3).standard_normal((256, 256)))
    tracemalloc.start()
    tracemalloc.reset_peak()
    _run(params, x, use_checkpoint)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_peak_memory_is_lower():
    """Allocation accounting (tracemalloc), not timing: deterministic for a given program."""
    plain, ckpt = _peak_bytes(False), _peak_bytes(True)
    assert ckpt < 0.5 * plain, (plain, ckpt)
