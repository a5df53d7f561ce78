"""Gradient clipping: clip_grad_norm_ / clip_grad_value_ vs NumPy (and torch where installed)."""

import math

import numpy as np
import pytest

import dtrain as dt
from dtrain import optim
from dtrain.nn.utils.clip import clip_grad_norm_, clip_grad_value_

SHAPES = [(3, 4), (5,), (2, 1, 3)]


def _params(seed=0, scale=1.0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    params = [dt.tensor(rng.standard_normal(s), requires_grad=True, dtype=dtype) for s in SHAPES]
    for p in params:
        p.grad = (scale * rng.standard_normal(p.shape)).astype(dtype)
    return params


def _flat(params):
    return np.concatenate([p.grad.ravel() for p in params if p.grad is not None])


def test_reexported_from_optim():
    assert optim.clip_grad_norm_ is clip_grad_norm_ and optim.clip_grad_value_ is clip_grad_value_


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf, "inf", 3.0])
def test_total_norm_matches_numpy(norm_type):
    params = _params()
    params[1].grad = None  # skipped
    expected = np.linalg.norm(_flat(params), ord=float(norm_type))
    total = clip_grad_norm_(params, max_norm=math.inf, norm_type=norm_type)
    assert type(total) is float
    assert total == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
def test_scales_in_place_when_above_max_norm(norm_type):
    params = _params(scale=10.0)
    before = _flat(params)
    arrays = [p.grad for p in params]
    total = np.linalg.norm(before, ord=norm_type)
    max_norm = total / 4
    assert clip_grad_norm_(params, max_norm, norm_type=norm_type) == pytest.approx(total, rel=1e-12)
    assert all(p.grad is a for p, a in zip(params, arrays))
    np.testing.assert_allclose(_flat(params), before * (max_norm / (total + 1e-6)), rtol=1e-12)
    assert np.linalg.norm(_flat(params), ord=norm_type) <= max_norm


def test_no_change_below_max_norm():
    params = _params()
    before = _flat(params)
    total = clip_grad_norm_(params, max_norm=1e3)
    np.testing.assert_array_equal(_flat(params), before)
    assert total == pytest.approx(np.linalg.norm(before), rel=1e-12)


def test_single_tensor_and_generators():
    params = _params(scale=5.0)
    g = params[0].grad.copy()
    clip_grad_norm_(params[0], 1.0)
    np.testing.assert_allclose(params[0].grad, g / (np.linalg.norm(g) + 1e-6), rtol=1e-12)
    expected = np.linalg.norm(_flat(params))
    assert clip_grad_norm_((p for p in params), math.inf) == pytest.approx(expected, rel=1e-12)


def test_no_gradients_gives_zero():
    params = _params()
    for p in params:
        p.grad = None
    assert clip_grad_norm_(params, 1.0) == 0.0


def test_float32_gradients_stay_float32():
    params = _params(scale=10.0, dtype=np.float32)
    expected = np.linalg.norm(_flat(params).astype(np.float64))
    assert clip_grad_norm_(params, 1.0) == pytest.approx(expected, rel=1e-5)
    assert all(p.grad.dtype == np.float32 for p in params)
    assert np.linalg.norm(_flat(params).astype(np.float64)) == pytest.approx(1.0, rel=1e-5)


def test_nonfinite_norm():
    params = _params()
    params[0].grad[0, 0] = np.nan
    with pytest.raises(RuntimeError, match=r"total norm of order 2.0 of the gradients is non-finite \(nan\)"):
        clip_grad_norm_(params, 1.0, error_if_nonfinite=True)
    params = _params()
    params[2].grad[0, 0, 0] = np.inf
    with pytest.raises(RuntimeError, match="non-finite"):
        clip_grad_norm_(params, 1.0, norm_type=math.inf, error_if_nonfinite=True)
    # Without the flag, torch's behaviour: the norm is returned and the gradients scaled by it.
    assert clip_grad_norm_(params[:2], 1.0) < math.inf
    with np.errstate(invalid="ignore"):
        assert clip_grad_norm_(params, 1.0) == math.inf
    assert params[0].grad[0, 0] == 0.0 and np.isnan(params[2].grad[0, 0, 0])


def test_clip_value():
    params = _params(scale=3.0)
    params[1].grad = None
    before = [None if p.grad is None else p.grad.copy() for p in params]
    arrays = [p.grad for p in params]
    clip_grad_value_(params, 1.5)
    for p, b, a in zip(params, before, arrays):
        if b is None:
            assert p.grad is None
            continue
        assert p.grad is a
        np.testing.assert_array_equal(p.grad, np.clip(b, -1.5, 1.5))
    clip_grad_value_(params[0], 0.1)
    assert np.abs(params[0].grad).max() == 0.1


def test_matches_torch():
    torch = pytest.importorskip("torch")
    params = _params(scale=10.0)
    tparams = [torch.zeros(p.shape, dtype=torch.float64, requires_grad=True) for p in params]
    for p, tp in zip(params, tparams):
        tp.grad = torch.tensor(p.grad)
    total = clip_grad_norm_(params, 2.0, norm_type=3.0)
    ttotal = torch.nn.utils.clip_grad_norm_(tparams, 2.0, norm_type=3.0, foreach=False)
    assert total == pytest.approx(float(ttotal), rel=1e-12)
    for p, tp in zip(params, tparams):
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-12)


@pytest.mark.parametrize(("call", "message"), [
    (lambda ps: clip_grad_norm_(ps, 0.0), r"max_norm must be a positive number \(or inf\), got 0.0"),
    (lambda ps: clip_grad_norm_(ps, -1), r"max_norm must be a positive number \(or inf\), got -1"),
    (lambda ps: clip_grad_norm_(ps, float("nan")), "max_norm must be a positive number"),
    (lambda ps: clip_grad_norm_(ps, 1.0, norm_type=0), "norm_type must be a positive number"),
    (lambda ps: clip_grad_norm_(ps, 1.0, norm_type="fro"), "norm_type must be a positive number .*got 'fro'"),
    (lambda ps: clip_grad_value_(ps, 0), "clip_value must be a positive finite number, got 0"),
    (lambda ps: clip_grad_value_(ps, math.inf), "clip_value must be a positive finite number, got inf"),
])
def test_invalid_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call(_params())


def test_non_tensor_is_rejected():
    with pytest.raises(TypeError, match=r"parameters\[1\] is a ndarray, expected a dtrain Tensor"):
        clip_grad_norm_([_params()[0], np.ones(3)], 1.0)
