"""Row-blocked GEMMs for OpenBLAS's small-matrix kernels (dtrain/autograd/ops/gemm.py): the blocks' rules,
their results against one NumPy call, and convolutions with and without them."""

from __future__ import annotations

import numpy as np
import pytest

import dtrain as dt
import dtrain.nn.functional as F
from dtrain.autograd.ops import gemm as _gemm


class FakePool:
    """What block_rows reads of a threadpoolctl library controller."""

    def __init__(self, num_threads: int):
        self.num_threads = num_threads


@pytest.fixture
def forced(monkeypatch):
    """Blocks whatever the BLAS (DTRAIN_SMALL_GEMM=1)."""
    monkeypatch.setattr(_gemm, "_pools", [None])


@pytest.fixture
def disabled(monkeypatch):
    monkeypatch.setattr(_gemm, "_pools", [[]])


def test_block_rows_splits_large_products_into_even_blocks_under_the_limit(forced):
    a = np.empty((4096, 144), np.float32)
    rows = _gemm.block_rows(a, 144, 16)
    assert rows == 410  # 4096 rows in 10 blocks (at most 1e6 // (144 * 16) = 434 rows each)
    assert rows * 144 * 16 <= _gemm.SMALL_MNK and -(-4096 // rows) == 10
    assert _gemm.block_rows(np.empty((4096, 144)), 144, 16) == 410  # float64 too


def test_block_rows_leaves_what_the_blocks_cannot_speed_up_in_one_call(forced):
    assert _gemm.block_rows(np.empty((400, 144), np.float32), 144, 16) == 0  # small enough already
    assert _gemm.block_rows(np.empty((4096, 576), np.float32), 576, 64) == 0  # 27 rows per block: too thin
    assert _gemm.block_rows(np.empty((4096, 288), np.float32), 288, 32, _gemm.MIN_SUM_ROWS) == 108
    assert _gemm.block_rows(np.empty((4096, 144), np.float16), 144, 16) == 0  # not a BLAS dtype
    assert _gemm.block_rows(np.empty((4096, 144), np.int64), 144, 16) == 0


def test_block_rows_needs_small_kernel_pools_with_one_thread(monkeypatch):
    a = np.empty((4096, 144), np.float32)
    monkeypatch.setattr(_gemm, "_pools", [[]])
    assert _gemm.block_rows(a, 144, 16) == 0  # no OpenBLAS with AVX-512 kernels
    monkeypatch.setattr(_gemm, "_pools", [[FakePool(1)]])
    assert _gemm.block_rows(a, 144, 16) == 410
    monkeypatch.setattr(_gemm, "_pools", [[FakePool(1), FakePool(4)]])
    assert _gemm.block_rows(a, 144, 16) == 0  # the small kernels are single-threaded: keep BLAS's threads


def test_a_change_of_the_thread_count_is_read_again_after_recheck_s(monkeypatch):
    a = np.empty((4096, 144), np.float32)
    pool = FakePool(1)
    monkeypatch.setattr(_gemm, "_pools", [[pool]])
    monkeypatch.setattr(_gemm, "RECHECK_S", 3600.0)
    assert _gemm.block_rows(a, 144, 16) == 410
    pool.num_threads = 8
    assert _gemm.block_rows(a, 144, 16) == 410  # the answer of the last read holds for RECHECK_S
    monkeypatch.setattr(_gemm, "RECHECK_S", 0.0)
    assert _gemm.block_rows(a, 144, 16) == 0
    pool.num_threads = 1
    assert _gemm.block_rows(a, 144, 16) == 410


def test_detect_honours_the_environment_setting_and_keeps_only_avx512_openblas():
    assert _gemm._detect("0") == []
    assert _gemm._detect("1") is None
    found = _gemm._detect("")
    assert isinstance(found, list)
    for lib in found:
        assert lib.internal_api == "openblas" and lib.architecture.lower() in _gemm.AVX512_CORES


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
@pytest.mark.parametrize("m,k,n", [(4096, 144, 16), (1001, 288, 32), (3000, 9, 200)])
def test_blocked_products_equal_one_call(forced, dtype, tol, m, k, n):
    rng = np.random.default_rng(m + k + n)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    assert _gemm.block_rows(a, k, n) > 0
    out = np.empty((m, n), dtype)
    _gemm.matmul_into(out, a, b)
    np.testing.assert_allclose(out, a @ b, rtol=tol, atol=tol)
    g = rng.standard_normal((m, n)).astype(dtype)
    assert _gemm.block_rows(g, k, n, _gemm.MIN_SUM_ROWS) > 0
    np.testing.assert_allclose(_gemm.matmul_tn(g, a), g.T @ a, rtol=tol, atol=tol * np.sqrt(m))


def _conv_step(x, w, stride, padding):
    xt, wt = dt.tensor(x, requires_grad=True), dt.tensor(w, requires_grad=True)
    y = F.conv2d(xt, wt, stride=stride, padding=padding)
    g = np.random.default_rng(1).standard_normal(y.shape)
    (y * dt.tensor(g)).sum().backward()
    assert y.dtype == np.float64
    return y.numpy(), np.asarray(xt.grad), np.asarray(wt.grad)


@pytest.mark.parametrize("shape,w_shape,stride,padding", [
    ((64, 16, 8, 8), (16, 16, 3, 3), 1, 1),  # the digits ResNet's 16-channel conv: every GEMM blocked
    ((64, 32, 4, 4), (32, 32, 3, 3), 1, 1),
    ((33, 16, 9, 7), (32, 16, 3, 3), 2, 1),  # odd sizes, a strided conv (its weight gradient is blocked)
])
def test_convolution_with_blocks_equals_convolution_without(monkeypatch, shape, w_shape, stride, padding):
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal(shape), rng.standard_normal(w_shape)
    monkeypatch.setattr(_gemm, "_pools", [[]])
    plain = _conv_step(x, w, stride, padding)
    monkeypatch.setattr(_gemm, "_pools", [None])
    seen = []
    real = _gemm.block_rows

    def spy(*args, **kwargs):
        seen.append(real(*args, **kwargs))
        return seen[-1]
    monkeypatch.setattr(_gemm, "block_rows", spy)
    blocked = _conv_step(x, w, stride, padding)
    assert any(r > 0 for r in seen), f"no GEMM of this convolution was blocked: {seen}"
    for name, p, b in zip(("output", "input gradient", "weight gradient"), plain, blocked):
        np.testing.assert_allclose(b, p, rtol=1e-12, atol=1e-11, err_msg=name)


def test_a_bad_setting_names_the_variable_and_the_values_it_takes():
    with pytest.raises(ValueError, match=r"environment variable DTRAIN_SMALL_GEMM must be 0 \(off\), 1 \(on\) or "
                                         r"auto .*got 'yes'"):
        _gemm._detect("yes")
    assert [lib.filepath for lib in _gemm._detect(" AUTO ")] == [lib.filepath for lib in _gemm._detect("")]


class FakeOpenBLAS(FakePool):
    architecture = "SkylakeX"


def test_describe_says_whether_the_blocks_are_on_and_why(monkeypatch):
    monkeypatch.setattr(_gemm, "_pools", [None])
    assert _gemm.describe() == "convolution GEMM blocks: on (DTRAIN_SMALL_GEMM=1)"
    monkeypatch.setattr(_gemm, "_pools", [[]])
    monkeypatch.delenv("DTRAIN_SMALL_GEMM", raising=False)
    assert _gemm.describe() == ("convolution GEMM blocks: off (NumPy's BLAS is not OpenBLAS with AVX-512 "
                                "kernels)")
    monkeypatch.setenv("DTRAIN_SMALL_GEMM", "0")
    assert _gemm.describe() == "convolution GEMM blocks: off (DTRAIN_SMALL_GEMM=0)"
    monkeypatch.setattr(_gemm, "_pools", [[FakeOpenBLAS(1)]])
    assert _gemm.describe() == ("convolution GEMM blocks: on (OpenBLAS SkylakeX small-matrix kernels; BLAS threads "
                                "now [1])")
    monkeypatch.setattr(_gemm, "_pools", [[FakeOpenBLAS(2)]])
    assert _gemm.describe().startswith("convolution GEMM blocks: off while the BLAS runs more than one thread")
    monkeypatch.setattr(_gemm, "_pools", [])
    monkeypatch.setenv("DTRAIN_SMALL_GEMM", "maybe")
    assert _gemm.describe().startswith("convolution GEMM blocks: unknown (environment variable DTRAIN_SMALL_GEMM")
