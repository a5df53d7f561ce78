"""Mixed precision: autocast puts matmul/linear/conv2d in half precision on float32 master weights; the
training job's --precision fp16|bf16 (dynamic loss scaling with fp16, gradients communicated in the
half type by default) reaches float32's accuracy on digits.
Multi-rank: tests/distributed/test_mixed_precision_mpi.py."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import dtrain as dt
import dtrain.nn.functional as F
from dtrain.autograd import autocast
from dtrain.autograd.autocast import autocast_dtype
from dtrain.train.config import ConfigError, resolve_config
from dtrain.train.job import build_job, model_defaults, run

HALVES = ["float16"] + (["bfloat16"] if dt.bfloat16 is not None else [])


def config(**flags):
    flags.setdefault("progress", False)
    flags.setdefault("monitor", False)
    return resolve_config(flags, None, model_defaults)


@pytest.mark.parametrize("half", HALVES)
def test_autocast_computes_in_half_and_keeps_master_gradients_float32(half):
    rng = np.random.default_rng(0)
    x = dt.tensor(rng.standard_normal((4, 2, 6, 6)).astype(np.float32))
    k = dt.tensor(rng.standard_normal((3, 2, 3, 3)).astype(np.float32) * 0.3, requires_grad=True)
    w = dt.tensor(rng.standard_normal((5, 12)).astype(np.float32) * 0.3, requires_grad=True)
    b = dt.tensor(np.zeros(5, np.float32), requires_grad=True)
    with autocast(half):
        h = F.relu(F.conv2d(x, k, stride=2))  # (4, 3, 2, 2)
        out = F.linear(h.flatten(1), w, b)
        assert h.dtype == np.dtype(half) and out.dtype == np.dtype(half)
    loss = F.cross_entropy(out.float(), np.array([0, 1, 2, 3]))
    loss.backward()
    assert loss.dtype == np.float32
    for p in (k, w, b):
        assert p.grad.dtype == np.float32 and np.all(np.isfinite(p.grad))
    # The same computation in float32: close (half has 3-4 significant digits)
    k32, w32, b32 = (dt.tensor(p.data, requires_grad=True) for p in (k, w, b))
    ref = F.cross_entropy(F.linear(F.relu(F.conv2d(x, k32, stride=2)).flatten(1), w32, b32), np.array([0, 1, 2, 3]))
    ref.backward()
    tol = 2e-2 if half == "bfloat16" else 5e-3
    np.testing.assert_allclose(loss.item(), ref.item(), rtol=tol)
    np.testing.assert_allclose(w.grad, w32.grad, rtol=tol * 5, atol=tol)


def test_autocast_is_scoped_per_thread_and_restored():
    seen = []
    with autocast("float16"):
        t = threading.Thread(target=lambda: seen.append(autocast_dtype()))
        t.start()
        t.join()
        assert autocast_dtype() == np.float16
        with autocast("float16", enabled=False):
            assert autocast_dtype() == np.float16  # disabled: leaves the current state alone
    assert autocast_dtype() is None and seen == [None]
    with pytest.raises(ValueError, match="autocast: dtype must be float16 or bfloat16, got float64"):
        with autocast("float64"):
            pass
    ids = dt.tensor(np.array([[1, 2]]))
    with autocast("float16"):  # integer operands are never cast
        assert (ids @ dt.tensor(np.array([[1], [1]]))).dtype.kind == "i"


def test_precision_options_resolve():
    fp16 = config(precision="fp16")
    assert fp16["loss_scale"] == "dynamic" and fp16["compression"] == "fp16"
    bf16 = config(precision="bf16")
    assert bf16["loss_scale"] == "none" and bf16["compression"] == "bf16"
    fp32 = config()
    assert fp32["loss_scale"] == "none" and fp32["compression"] == "none"
    explicit = config(precision="fp16", loss_scale="none", compression="none")
    assert explicit["loss_scale"] == "none" and explicit["compression"] == "none"
    with pytest.raises(ConfigError, match="--precision fp16 keeps float32 master weights: it needs --dtype float32, "
                                          "got --dtype float64"):
        config(precision="fp16", dtype="float64")
    with pytest.raises(ConfigError, match="unknown precision 'fp8'"):
        config(precision="fp8")


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_mlp_matches_float32_accuracy(precision):
    if precision == "bf16" and dt.bfloat16 is None:
        pytest.skip("bfloat16 needs ml_dtypes")
    ref = run(config(epochs=10))
    got = run(config(epochs=10, precision=precision))
    assert abs(got["test_accuracy"] - ref["test_accuracy"]) <= 0.005 + 1e-12, (got, ref)
    trainer = build_job(config(epochs=1, max_steps=2, precision=precision))
    assert trainer.precision == precision and all(p.data.dtype == np.float32 for p in trainer.model.parameters())
    assert (trainer.nonfinite.scaler is not None) == (precision == "fp16")
