"""Backend: devices, array modules, dtypes, seeded generators; importing dtrain never needs CuPy."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import dtrain as dt
from dtrain import backend


def test_import_does_not_import_cupy_or_torch():
    code = "import sys, dtrain, dtrain.nn.functional; print('cupy' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_device_parsing():
    assert str(backend.as_device("cpu")) == "cpu"
    assert backend.as_device(None) == backend.CPU
    assert backend.as_device(" CPU ") == backend.CPU
    assert backend.device_of(np.zeros(2)) == backend.CPU
    with pytest.raises(TypeError, match="device must be a string"):
        backend.as_device(3)


def test_get_array_module():
    assert backend.get_array_module(np.zeros(2)) is np
    assert backend.get_array_module(1.0, None) is np
    assert backend.get_array_module(dt.ones(2)) is np


def test_resolve_dtype():
    assert backend.resolve_dtype("float16") == np.float16
    assert backend.resolve_dtype(np.int32) == np.int32
    if dt.bfloat16 is not None:
        assert backend.resolve_dtype("bfloat16") == dt.bfloat16
        assert backend.is_float_dtype(dt.bfloat16)


def test_generator_is_reproducible_and_restorable():
    g = backend.Generator(7)
    a = g.uniform((3,), np.float64)
    state = g.get_state()
    b = g.uniform((3,), np.float64)
    g.set_state(state)
    np.testing.assert_array_equal(g.uniform((3,), np.float64), b)
    np.testing.assert_array_equal(backend.Generator(7).uniform((3,), np.float64), a)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        backend.Generator(-1)


def test_manual_seed_controls_dropout():
    x = dt.ones(100)
    dt.manual_seed(3)
    a = dt.nn.functional.dropout(x, 0.5).data
    dt.manual_seed(3)
    b = dt.nn.functional.dropout(x, 0.5).data
    np.testing.assert_array_equal(a, b)
    assert set(np.unique(a)) == {0.0, 2.0}
