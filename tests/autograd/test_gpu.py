"""CuPy backend: the same ops on a GPU agree with the CPU (float32, 1e-5 relative); mixing devices fails.

Skipped where CuPy or a CUDA device is missing (CI never has one).
"""

from __future__ import annotations

import numpy as np
import pytest

import dtrain as dt
import dtrain.nn.functional as F

pytestmark = pytest.mark.skipif(not dt.backend.cupy_available(), reason="needs CuPy and a CUDA GPU")


def _pipeline(x, w, b, k, ln_w):
    h = F.conv2d(x, k, padding=1)
    h = F.max_pool2d(F.relu(h), 2).flatten(1)
    h = F.layer_norm(F.linear(h, w, b), 10, ln_w)
    return F.cross_entropy(F.gelu(h), np.array([1, 3, 5, 7]))


def test_cnn_forward_backward_matches_cpu():
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((4, 3, 8, 8)), rng.standard_normal((10, 64)) * 0.1, rng.standard_normal(10),
              rng.standard_normal((4, 3, 3, 3)) * 0.3, rng.standard_normal(10)]
    results = {}
    for dev in ("cpu", "cuda"):
        x, w, b, k, lw = (dt.tensor(a, dtype="float32", device=dev, requires_grad=i > 0) for i, a in enumerate(arrays))
        loss = _pipeline(x, w, b, k, lw)  # NumPy targets are moved to the logits' device
        loss.backward()
        results[dev] = [loss.numpy()] + [t.grad if dev == "cpu" else t.grad.get() for t in (w, b, k, lw)]
    for c, g in zip(results["cpu"], results["cuda"]):
        np.testing.assert_allclose(g, c, rtol=1e-5, atol=1e-6)


def test_device_moves_are_differentiable():
    x = dt.tensor([1.0, 2.0], requires_grad=True)
    y = (x.to("cuda") * 3.0).to("cpu").sum()
    y.backward()
    assert x.grad.tolist() == [3.0, 3.0] and isinstance(x.grad, np.ndarray)


def test_mixing_devices_is_a_clear_error():
    with pytest.raises(RuntimeError, match="expected all tensors on the same device"):
        dt.ones(2) + dt.ones(2, device="cuda")


# The whole primitive table of test_ops_gradcheck.py, on the GPU: forward values and gradients in float32
# agree with the CPU to 1e-5 relative.
from test_ops_gradcheck import C as _CASES  # noqa: E402
from test_ops_gradcheck import draw as _draw  # noqa: E402


@pytest.mark.parametrize(("fn", "shapes", "kind"), _CASES)
def test_every_primitive_on_gpu_matches_cpu(fn, shapes, kind):
    rng = np.random.default_rng(0)
    arrays = [_draw(rng, s, kind).astype(np.float32) for s in shapes]
    results = {}
    for dev in ("cpu", "cuda"):
        inputs = [dt.tensor(a, dtype="float32", device=dev, requires_grad=True) for a in arrays]
        out = fn(*inputs)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        total = None
        for o in outs:
            w = dt.tensor(np.linspace(0.5, 1.5, max(o.numel(), 1))[: o.numel()].reshape(o.shape).astype(np.float32),
                          device=dev)
            term = (o * w).sum()
            total = term if total is None else total + term
        total.backward()
        results[dev] = [o.numpy() for o in outs] + [np.zeros(a.shape, np.float32) if t.grad is None
                                                    else dt.backend.to_device(t.grad, "cpu") for t, a in
                                                    zip(inputs, arrays)]
    for c, g in zip(results["cpu"], results["cuda"]):
        np.testing.assert_allclose(g, c, rtol=1e-5, atol=1e-5)


def test_a_captured_step_on_the_gpu_equals_the_eager_step():
    """dt.autograd.capture on CUDA tensors (targets as a CuPy array: a NumPy target is copied by the frontend,
    which capture refuses): replayed steps give the eager loss and gradients."""
    import cupy as cp

    from dtrain import nn
    from dtrain.autograd import capture

    models = []
    for _ in range(2):
        dt.manual_seed(3)
        models.append(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                                    nn.Flatten(), nn.Linear(64, 5)).to("cuda"))
    eager, model = models
    step = capture(lambda x, y: F.cross_entropy(model(x), y))
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = dt.tensor(rng.standard_normal((6, 1, 8, 8)), dtype="float32", device="cuda")
        y = cp.asarray(rng.integers(0, 5, 6))
        eager.zero_grad()
        model.zero_grad()
        le = F.cross_entropy(eager(x), y)
        le.backward()
        lc = step(x, y)
        np.testing.assert_allclose(lc.numpy(), le.numpy(), rtol=1e-6)
        for p, q in zip(eager.parameters(), model.parameters()):
            np.testing.assert_allclose(q.grad.get(), p.grad.get(), rtol=1e-6, atol=1e-7)
    assert step.traces == 1
