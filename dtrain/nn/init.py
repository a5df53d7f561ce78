"""Parameter initialisation, in place, with torch.nn.init's names, formulas and fan conventions.

Every function takes an optional ``generator`` (a :class:`dtrain.backend.Generator`); without one
the default generator seeded by :func:`dtrain.manual_seed` is used, so model construction is
reproducible from one seed. Glorot/He aliases: ``glorot_* = xavier_*``, ``he_* = kaiming_*``.
"""

from __future__ import annotations

import math

import numpy as np

from .. import backend
from ..autograd.tensor import Tensor
from ..backend import device_of, get_array_module, to_device

__all__ = [
    "calculate_gain", "constant_", "glorot_normal_", "glorot_uniform_", "he_normal_", "he_uniform_",
    "kaiming_normal_", "kaiming_uniform_", "normal_", "ones_", "orthogonal_", "uniform_", "xavier_normal_",
    "xavier_uniform_", "zeros_",
]

_GAINS = {"linear": 1.0, "conv1d": 1.0, "conv2d": 1.0, "conv3d": 1.0, "conv_transpose1d": 1.0,
          "conv_transpose2d": 1.0, "conv_transpose3d": 1.0, "sigmoid": 1.0, "identity": 1.0,
          "tanh": 5.0 / 3, "relu": math.sqrt(2.0), "selu": 3.0 / 4}


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The recommended scale for ``nonlinearity`` (torch's table; leaky_relu uses slope ``param``)."""
    if nonlinearity in _GAINS:
        return _GAINS[nonlinearity]
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else float(param)
        return math.sqrt(2.0 / (1 + slope**2))
    raise ValueError(f"unknown nonlinearity {nonlinearity!r}; expected one of "
                     f"{', '.join(sorted([*_GAINS, 'leaky_relu']))}")


def _fans(tensor: Tensor) -> tuple[int, int]:
    shape = tensor.shape
    if len(shape) < 2:
        raise ValueError(f"fan in/out need a tensor with at least 2 dimensions, got shape {shape}")
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def _fill(tensor: Tensor, values) -> Tensor:
    """Write ``values`` (float64 host or device array) into the tensor in place, cast to its dtype."""
    if not isinstance(tensor, Tensor):
        raise TypeError(f"init functions take a Tensor/Parameter, got {type(tensor).__name__}")
    values = to_device(values, device_of(tensor.data))
    get_array_module(tensor.data).copyto(tensor.data, values, casting="unsafe")
    return tensor


def _gen(generator):
    return backend.default_generator if generator is None else generator


def uniform_(tensor: Tensor, a: float = 0.0, b: float = 1.0, generator=None) -> Tensor:
    """Fill with U(a, b)."""
    u = _gen(generator).uniform(tensor.shape, np.float64, device_of(tensor.data))
    return _fill(tensor, a + (b - a) * u)


def normal_(tensor: Tensor, mean: float = 0.0, std: float = 1.0, generator=None) -> Tensor:
    """Fill with N(mean, std²)."""
    n = _gen(generator).normal(tensor.shape, np.float64, device_of(tensor.data))
    return _fill(tensor, mean + std * n)


def constant_(tensor: Tensor, value: float) -> Tensor:
    """Fill with ``value``."""
    tensor.data[...] = value
    return tensor


def zeros_(tensor: Tensor) -> Tensor:
    return constant_(tensor, 0.0)


def ones_(tensor: Tensor) -> Tensor:
    return constant_(tensor, 1.0)


def xavier_uniform_(tensor: Tensor, gain: float = 1.0, generator=None) -> Tensor:
    """Glorot & Bengio (2010): U(-a, a), a = gain·sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = _fans(tensor)
    a = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(tensor, -a, a, generator)


def xavier_normal_(tensor: Tensor, gain: float = 1.0, generator=None) -> Tensor:
    """Glorot & Bengio (2010): N(0, std²), std = gain·sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = _fans(tensor)
    return normal_(tensor, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)), generator)


def _kaiming_std(tensor, a, mode, nonlinearity) -> float:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = _fans(tensor)
    fan = fan_in if mode == "fan_in" else fan_out
    return calculate_gain(nonlinearity, a) / math.sqrt(fan)


def kaiming_uniform_(tensor: Tensor, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu",
                     generator=None) -> Tensor:
    """He et al. (2015): U(-b, b), b = gain·sqrt(3 / fan). torch's Linear/Conv default is a=sqrt(5)."""
    bound = math.sqrt(3.0) * _kaiming_std(tensor, a, mode, nonlinearity)
    return uniform_(tensor, -bound, bound, generator)


def kaiming_normal_(tensor: Tensor, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu",
                    generator=None) -> Tensor:
    """He et al. (2015): N(0, std²), std = gain / sqrt(fan)."""
    return normal_(tensor, 0.0, _kaiming_std(tensor, a, mode, nonlinearity), generator)


def orthogonal_(tensor: Tensor, gain: float = 1.0, generator=None) -> Tensor:
    """Saxe et al. (2013): a (semi-)orthogonal matrix from the QR of a Gaussian, sign-corrected so the
    distribution is uniform (Haar); dims beyond the first are flattened."""
    if tensor.ndim < 2:
        raise ValueError(f"orthogonal_ needs a tensor with at least 2 dimensions, got shape {tensor.shape}")
    rows = tensor.shape[0]
    cols = tensor.data.size // rows
    flat = _gen(generator).normal((rows, cols), np.float64, "cpu").astype(np.float64)
    if rows < cols:
        flat = flat.T
    q, r = np.linalg.qr(flat)
    q *= np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return _fill(tensor, gain * q.reshape(tensor.shape))


glorot_uniform_ = xavier_uniform_
glorot_normal_ = xavier_normal_
he_uniform_ = kaiming_uniform_
he_normal_ = kaiming_normal_


def default_linear_init_(weight: Tensor, bias: Tensor | None, generator=None) -> None:
    """torch's reset_parameters for Linear and Conv: kaiming_uniform_(a=√5) — i.e. U(±1/√fan_in) —
    for the weight and U(±1/√fan_in) for the bias."""
    kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
    if bias is not None:
        fan_in, _ = _fans(weight)
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        uniform_(bias, -bound, bound, generator)
