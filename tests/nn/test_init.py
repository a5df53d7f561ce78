"""nn.init: each initialiser's empirical distribution against its closed form, fan conventions for
conv shapes, torch's gain table, orthogonality, generator reproducibility and argument errors.

Sample sizes are ~10^5, so the sample mean is within ~0.3% of a std of the truth and the sample
std within ~0.3% relative; the tolerances below are several times that.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import dtrain as dt
from dtrain import nn
from dtrain.backend import Generator
from dtrain.nn import init

SHAPE = (400, 300)  # fan_in 300, fan_out 400
CONV = (64, 32, 5, 5)  # fan_in 32*25 = 800, fan_out 64*25 = 1600
MEAN_TOL = 0.02  # in units of the expected std
STD_RTOL = 0.02


def _param(shape, dtype=np.float64) -> nn.Parameter:
    return nn.Parameter(np.full(shape, np.nan, dtype=dtype))


def _check_uniform(values: np.ndarray, low: float, high: float) -> None:
    std = (high - low) / math.sqrt(12)
    assert np.all(values >= low) and np.all(values <= high)
    span = high - low
    assert values.min() < low + 0.001 * span and values.max() > high - 0.001 * span  # reaches the bounds
    assert abs(values.mean() - (low + high) / 2) < MEAN_TOL * std
    assert values.std() == pytest.approx(std, rel=STD_RTOL)


def _check_normal(values: np.ndarray, mean: float, std: float) -> None:
    assert abs(values.mean() - mean) < MEAN_TOL * std
    assert values.std() == pytest.approx(std, rel=STD_RTOL)
    # Gaussian tails, not a uniform: about 4.55% of samples beyond 2 std.
    assert np.mean(np.abs(values - mean) > 2 * std) == pytest.approx(0.0455, abs=0.005)


# ---------------------------------------------------------------------------------------------
# Distributions
# ---------------------------------------------------------------------------------------------


def test_uniform_and_normal():
    p = _param(SHAPE)
    assert init.uniform_(p, -2.0, 3.0, generator=Generator(1)) is p
    _check_uniform(p.data, -2.0, 3.0)
    init.uniform_(p)
    _check_uniform(p.data, 0.0, 1.0)
    init.normal_(p, mean=1.5, std=0.25, generator=Generator(2))
    _check_normal(p.data, 1.5, 0.25)
    init.normal_(p)
    _check_normal(p.data, 0.0, 1.0)


def test_constant_zeros_ones():
    p = _param((3, 4))
    assert init.constant_(p, 2.5) is p and np.all(p.data == 2.5)
    init.zeros_(p)
    assert np.all(p.data == 0)
    init.ones_(p)
    assert np.all(p.data == 1)


@pytest.mark.parametrize("shape, fan_in, fan_out", [(SHAPE, 300, 400), (CONV, 800, 1600)])
def test_xavier(shape, fan_in, fan_out):
    p = _param(shape)
    a = 0.7 * math.sqrt(6.0 / (fan_in + fan_out))
    init.xavier_uniform_(p, gain=0.7, generator=Generator(3))
    _check_uniform(p.data, -a, a)
    init.xavier_normal_(p, gain=1.3, generator=Generator(4))
    _check_normal(p.data, 0.0, 1.3 * math.sqrt(2.0 / (fan_in + fan_out)))


@pytest.mark.parametrize("shape, fan_in, fan_out", [(SHAPE, 300, 400), (CONV, 800, 1600)])
@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
def test_kaiming(shape, fan_in, fan_out, mode):
    fan = fan_in if mode == "fan_in" else fan_out
    p = _param(shape)
    # Default: leaky_relu with a=0, i.e. gain sqrt(2).
    init.kaiming_uniform_(p, mode=mode, generator=Generator(5))
    bound = math.sqrt(2.0) * math.sqrt(3.0 / fan)
    _check_uniform(p.data, -bound, bound)
    init.kaiming_normal_(p, mode=mode, nonlinearity="relu", generator=Generator(6))
    _check_normal(p.data, 0.0, math.sqrt(2.0) / math.sqrt(fan))
    init.kaiming_normal_(p, a=0.2, mode=mode, generator=Generator(7))
    _check_normal(p.data, 0.0, math.sqrt(2.0 / 1.04) / math.sqrt(fan))
    init.kaiming_uniform_(p, mode=mode, nonlinearity="tanh", generator=Generator(8))
    bound = 5.0 / 3 * math.sqrt(3.0 / fan)
    _check_uniform(p.data, -bound, bound)


def test_kaiming_a_sqrt5_is_torch_default_linear_init():
    p = _param(SHAPE)
    init.kaiming_uniform_(p, a=math.sqrt(5), generator=Generator(9))
    _check_uniform(p.data, -1 / math.sqrt(300), 1 / math.sqrt(300))


def test_default_linear_init_for_linear_and_conv():
    lin = nn.Linear(300, 400, dtype="float64")
    lin.reset_parameters(generator=Generator(10))
    _check_uniform(lin.weight.data, -1 / math.sqrt(300), 1 / math.sqrt(300))
    b = lin.bias.data
    assert np.all(np.abs(b) <= 1 / math.sqrt(300)) and abs(b.std() - 1 / math.sqrt(900)) < 0.15 / math.sqrt(900)
    conv = nn.Conv2d(32, 64, 5, dtype="float64")
    conv.reset_parameters(generator=Generator(11))
    _check_uniform(conv.weight.data, -1 / math.sqrt(800), 1 / math.sqrt(800))
    assert np.all(np.abs(conv.bias.data) <= 1 / math.sqrt(800))
    # No bias: just the weight.
    w = _param((10, 20))
    init.default_linear_init_(w, None, generator=Generator(12))
    assert np.all(np.abs(w.data) <= 1 / math.sqrt(20))


def test_aliases():
    assert init.glorot_uniform_ is init.xavier_uniform_ and init.glorot_normal_ is init.xavier_normal_
    assert init.he_uniform_ is init.kaiming_uniform_ and init.he_normal_ is init.kaiming_normal_


def test_in_place_keeps_array_and_dtype():
    p = _param(SHAPE, np.float32)
    arr = p.data
    init.xavier_normal_(p, generator=Generator(0))
    init.orthogonal_(p, generator=Generator(0))
    init.kaiming_uniform_(p, generator=Generator(0))
    assert p.data is arr and arr.dtype == np.float32
    bound = math.sqrt(6.0 / 300)
    assert np.all(np.abs(arr) <= np.float32(bound))
    _check_uniform(arr.astype(np.float64), -bound, bound)


# ---------------------------------------------------------------------------------------------
# calculate_gain
# ---------------------------------------------------------------------------------------------

TORCH_NONLINEARITIES = ["linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                        "conv_transpose3d", "sigmoid", "tanh", "relu", "leaky_relu", "selu"]


def test_calculate_gain_table():
    for name in ["linear", "conv1d", "conv2d", "conv3d", "conv_transpose2d", "sigmoid", "identity"]:
        assert init.calculate_gain(name) == 1.0
    assert init.calculate_gain("tanh") == pytest.approx(5 / 3)
    assert init.calculate_gain("relu") == pytest.approx(math.sqrt(2))
    assert init.calculate_gain("selu") == pytest.approx(0.75)
    assert init.calculate_gain("leaky_relu") == pytest.approx(math.sqrt(2 / (1 + 0.01**2)))
    assert init.calculate_gain("leaky_relu", 0) == pytest.approx(math.sqrt(2))
    assert init.calculate_gain("leaky_relu", 0.2) == pytest.approx(math.sqrt(2 / 1.04))
    assert init.calculate_gain("leaky_relu", 1) == pytest.approx(1.0)


def test_calculate_gain_matches_torch():
    torch = pytest.importorskip("torch")
    for name in TORCH_NONLINEARITIES:
        assert init.calculate_gain(name) == pytest.approx(torch.nn.init.calculate_gain(name), rel=1e-15), name
    for slope in (0, 0.01, 0.2, 1, 3.5):
        assert init.calculate_gain("leaky_relu", slope) == pytest.approx(
            torch.nn.init.calculate_gain("leaky_relu", slope), rel=1e-15)


# ---------------------------------------------------------------------------------------------
# orthogonal_
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(30, 50), (50, 30), (40, 40), (8, 2, 3, 3), (20, 3, 2)])
@pytest.mark.parametrize("gain", [1.0, 2.5])
def test_orthogonal(shape, gain):
    p = _param(shape)
    assert init.orthogonal_(p, gain=gain, generator=Generator(13)) is p
    assert p.shape == shape
    q = p.data.reshape(shape[0], -1)
    rows, cols = q.shape
    if rows <= cols:  # orthonormal rows
        np.testing.assert_allclose(q @ q.T, gain**2 * np.eye(rows), rtol=0, atol=1e-10 * gain**2)
    if rows >= cols:  # orthonormal columns
        np.testing.assert_allclose(q.T @ q, gain**2 * np.eye(cols), rtol=0, atol=1e-10 * gain**2)


def test_orthogonal_is_not_biased_to_positive_diagonal():
    # The sign correction makes the distribution Haar: diagonal entries take both signs.
    signs = []
    for seed in range(40):
        p = _param((3, 3))
        init.orthogonal_(p, generator=Generator(seed))
        signs.append(np.sign(p.data[0, 0]))
    assert 5 < sum(s > 0 for s in signs) < 35


# ---------------------------------------------------------------------------------------------
# Reproducibility
# ---------------------------------------------------------------------------------------------

INITS = [
    lambda p, g: init.uniform_(p, -1, 1, generator=g),
    lambda p, g: init.normal_(p, 0, 1, generator=g),
    lambda p, g: init.xavier_uniform_(p, generator=g),
    lambda p, g: init.xavier_normal_(p, generator=g),
    lambda p, g: init.kaiming_uniform_(p, generator=g),
    lambda p, g: init.kaiming_normal_(p, generator=g),
    lambda p, g: init.orthogonal_(p, generator=g),
]


@pytest.mark.parametrize("fn", INITS, ids=["uniform", "normal", "xavier_u", "xavier_n", "kaiming_u", "kaiming_n",
                                           "orthogonal"])
def test_same_seed_same_values_different_seed_different(fn):
    a, b, c = _param((20, 30)), _param((20, 30)), _param((20, 30))
    fn(a, Generator(42))
    fn(b, Generator(42))
    fn(c, Generator(43))
    np.testing.assert_array_equal(a.data, b.data)
    assert not np.any(a.data == c.data)
    # A generator is a stream: a second draw differs from the first.
    g = Generator(42)
    fn(b, g)
    fn(b, g)
    assert not np.array_equal(a.data, b.data)


def test_default_generator_follows_manual_seed():
    dt.manual_seed(7)
    a = nn.Linear(6, 5)
    dt.manual_seed(7)
    b = nn.Linear(6, 5)
    dt.manual_seed(8)
    c = nn.Linear(6, 5)
    np.testing.assert_array_equal(a.weight.data, b.weight.data)
    np.testing.assert_array_equal(a.bias.data, b.bias.data)
    assert not np.array_equal(a.weight.data, c.weight.data)


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def test_errors():
    vec = _param((5,))
    for fn in (init.xavier_uniform_, init.xavier_normal_, init.kaiming_uniform_, init.kaiming_normal_):
        with pytest.raises(ValueError, match=r"at least 2 dimensions, got shape \(5,\)"):
            fn(vec)
    with pytest.raises(ValueError, match=r"orthogonal_ needs a tensor with at least 2 dimensions, got shape \(5,\)"):
        init.orthogonal_(vec)
    p = _param((4, 4))
    with pytest.raises(ValueError, match=r"mode must be 'fan_in' or 'fan_out', got 'fan_avg'"):
        init.kaiming_uniform_(p, mode="fan_avg")
    with pytest.raises(ValueError, match=r"unknown nonlinearity 'swish'; expected one of .*relu"):
        init.kaiming_normal_(p, nonlinearity="swish")
    with pytest.raises(ValueError, match=r"unknown nonlinearity 'gelu'"):
        init.calculate_gain("gelu")
    with pytest.raises(TypeError, match="init functions take a Tensor/Parameter, got ndarray"):
        init.uniform_(np.zeros((2, 2)))
