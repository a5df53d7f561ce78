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


# ``import dtrain`` stays fast: ml_dtypes (bfloat16) is loaded on first use, not with the package.

def _run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_import_dtrain_does_not_import_ml_dtypes():
    res = _run_python("import dtrain, sys; assert 'ml_dtypes' not in sys.modules, 'ml_dtypes imported'")
    assert res.returncode == 0, res.stderr


def test_the_cli_and_training_stack_do_not_import_ml_dtypes():
    res = _run_python("import sys, dtrain.cli, dtrain.train, dtrain.distributed, dtrain.distributed.compression; "
                  "assert 'ml_dtypes' not in sys.modules, 'ml_dtypes imported'")
    assert res.returncode == 0, res.stderr


def test_float32_work_does_not_import_ml_dtypes():
    code = ("import sys, numpy as np, dtrain as dt, dtrain.nn.functional as F\n"
            "x = dt.tensor(np.ones((2, 3), np.float32), requires_grad=True)\n"
            "F.cross_entropy(x, [0, 1]).backward()\n"
            "assert dt.backend.is_float_dtype(x.dtype) and not dt.backend.is_half_dtype(x.dtype)\n"
            "assert 'ml_dtypes' not in sys.modules, 'ml_dtypes imported'")
    res = _run_python(code)
    assert res.returncode == 0, res.stderr


def test_bfloat16_names_still_resolve_for_users():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    bf16 = np.dtype(ml_dtypes.bfloat16)
    assert dt.bfloat16 == bf16
    assert backend.bfloat16 == bf16
    from dtrain.backend import bfloat16

    assert bfloat16 == bf16
    assert backend.is_bfloat16(bf16) and backend.is_half_dtype(bf16) and backend.is_float_dtype(bf16)
    assert not backend.is_bfloat16(np.float16) and backend.is_half_dtype(np.float16)
    assert backend.resolve_dtype("bf16") == bf16


def test_unknown_attributes_are_still_attribute_errors():
    with pytest.raises(AttributeError, match="module 'dtrain' has no attribute 'bfloat17'"):
        dt.bfloat17
    with pytest.raises(AttributeError, match=r"module 'dtrain\.backend' has no attribute 'bfloat17'"):
        backend.bfloat17


@pytest.mark.parametrize("axis,keepdims", [(None, False), (0, False), (1, True), ((0, 1), False)])
def test_array_sum_and_max_equal_the_methods(axis, keepdims):
    a = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)
    s, m = backend.array_sum(a, axis=axis, keepdims=keepdims), backend.array_max(a, axis=axis, keepdims=keepdims)
    np.testing.assert_array_equal(s, a.sum(axis=axis, keepdims=keepdims))
    np.testing.assert_array_equal(m, a.max(axis=axis, keepdims=keepdims))
    assert np.shape(s) == np.shape(a.sum(axis=axis, keepdims=keepdims)) and np.asarray(s).dtype == np.float32
