"""dtrain.distributed.compression: one-process checks of every compressor (round trips, error bounds, unbiasedness,
the error-feedback identity, payload sizes, state round trips, spec errors) and the multi-rank checks of
mpi_compression.py under mpiexec (bitwise identical results on every rank, sums against references)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import dtrain.distributed as dist
from dtrain.backend import bfloat16, finfo_eps
from dtrain.distributed import compression as C

SCRIPT = str(Path(__file__).parent / "ranks" / "mpi_compression.py")
SPECS = ["none", "fp16", "bf16", "powersgd:2", "topk:0.01", "randomk:0.01", "qsgd:127", "signsgd"]
SEGMENTS = [("fc.weight", (12, 10)), ("fc.bias", (12,)), ("conv.weight", (6, 2, 3, 3)), ("tiny.weight", (2, 3))]
SIZE = sum(math.prod(s) for _, s in SEGMENTS)


@pytest.mark.parametrize("n", [2, 4])
def test_compression_under_mpiexec(run_mpi, n):
    res = run_mpi(SCRIPT, n, timeout=120)
    assert f"compression OK on {n} ranks" in res.stdout


def _world():
    return dist.init()


def _segments(flat):
    segs, lo = [], 0
    for name, shape in SEGMENTS:
        hi = lo + math.prod(shape)
        segs.append((name, flat[lo:hi].reshape(shape)))
        lo = hi
    return segs


def _bucket(step, dtype=np.float32):
    return np.random.default_rng([3, step]).standard_normal(SIZE).astype(dtype)


# ----------------------------------------------------------------------------------------------
# Specs and the registry
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, spec, cls", [
    (None, "none", C.NoCompression),
    ("none", "none", C.NoCompression),
    (" FP16 ", "fp16", C.FP16Compressor),
    ("bf16", "bf16", C.BF16Compressor),
    ("powersgd:2", "powersgd:2", C.PowerSGDCompressor),
    ("PowerSGD:4:start=0", "powersgd:4:start=0", C.PowerSGDCompressor),
    ("powersgd:1:start=10:ef=0:seed=3", "powersgd:1:ef=0:seed=3", C.PowerSGDCompressor),
    ("topk:0.01", "topk:0.01", C.TopKCompressor),
    ("TopK:1e-3", "topk:0.001", C.TopKCompressor),
    ("topk:1", "topk:1", C.TopKCompressor),
    ("topk:0.1:ef=false", "topk:0.1:ef=0", C.TopKCompressor),
    ("randomk:0.05:seed=7", "randomk:0.05:seed=7", C.RandomKCompressor),
    ("randomk:0.05:ef=1", "randomk:0.05", C.RandomKCompressor),
    ("qsgd:127", "qsgd:127", C.QSGDCompressor),
    ("qsgd:4", "qsgd:4", C.QSGDCompressor),
    ("signsgd", "signsgd", C.SignSGDCompressor),
    ("signsgd:ef=0", "signsgd:ef=0", C.SignSGDCompressor),
])
def test_get_builds_canonical_specs(text, spec, cls):
    c = C.get(text)
    assert type(c) is cls and c.spec == spec
    again = C.get(c.spec)
    assert type(again) is cls and again.spec == spec and again is not c
    assert C.get(c) is c  # a Compressor passes through


def test_registry_and_flags():
    assert list(C.COMPRESSORS) == ["none", "fp16", "bf16", "powersgd", "topk", "randomk", "qsgd", "signsgd"]
    assert all(cls.name == name and issubclass(cls, C.Compressor) for name, cls in C.COMPRESSORS.items())
    ef = {s: C.get(s).error_feedback for s in SPECS}
    assert ef == {"none": False, "fp16": False, "bf16": False, "powersgd:2": True, "topk:0.01": True,
                  "randomk:0.01": True, "qsgd:127": False, "signsgd": True}
    assert not C.get("randomk:0.1:ef=0").error_feedback and C.get("powersgd:1").start_iter == 10
    assert issubclass(C.CompressionError, ValueError)


RATIO = r"RATIO must be a number in \(0, 1\]"


@pytest.mark.parametrize("spec, match", [
    ("zip", r"unknown compression 'zip': expected one of none, fp16, bf16, powersgd:RANK, topk:RATIO, "
            r"randomk:RATIO, qsgd:LEVELS, signsgd$"),
    ("", r"unknown compression '': expected one of none, fp16"),
    ("top-k:0.1", r"unknown compression 'top-k:0.1'"),
    ("topk", r"^compression 'topk': expected topk:RATIO \(e.g. topk:0.01\)$"),
    ("topk:", r"compression 'topk:': expected topk:RATIO"),
    ("topk:ef=0", r"compression 'topk:ef=0': expected topk:RATIO"),
    ("topk:0", rf"^compression 'topk:0': topk {RATIO}, got 0.0$"),
    ("topk:1.5", rf"compression 'topk:1.5': topk {RATIO}, got 1.5$"),
    ("topk:-0.1", rf"topk {RATIO}, got -0.1$"),
    ("topk:nan", rf"topk {RATIO}, got nan$"),
    ("randomk:abc", rf"^compression 'randomk:abc': {RATIO}, got 'abc'$"),
    ("randomk:2", rf"randomk {RATIO}, got 2.0$"),
    ("randomk", r"expected randomk:RATIO \(e.g. randomk:0.01\)"),
    ("powersgd", r"^compression 'powersgd': expected powersgd:RANK \(e.g. powersgd:2\)$"),
    ("powersgd:0", r"^compression 'powersgd:0': powersgd RANK must be an integer >= 1, got 0$"),
    ("powersgd:-2", r"powersgd RANK must be an integer >= 1, got -2$"),
    ("powersgd:2.5", r"^compression 'powersgd:2.5': RANK must be an integer >= 1, got '2.5'$"),
    ("powersgd:x", r"RANK must be an integer >= 1, got 'x'$"),
    ("powersgd:2:start=-1", r"powersgd start must be a non-negative integer, got -1$"),
    ("powersgd:2:start=soon", r"start must be a non-negative integer, got 'soon'$"),
    ("qsgd", r"^compression 'qsgd': expected qsgd:LEVELS \(e.g. qsgd:127\)$"),
    ("qsgd:1", r"^compression 'qsgd:1': qsgd LEVELS must be an integer in \[2, 127\], got 1$"),
    ("qsgd:128", r"qsgd LEVELS must be an integer in \[2, 127\], got 128$"),
    ("qsgd:4.0", r"LEVELS must be an integer in \[2, 127\], got '4.0'$"),
    ("qsgd:16:seed=-1", r"qsgd seed must be a non-negative integer, got -1$"),
    ("fp16:3", r"^compression 'fp16:3': unexpected parameter '3': fp16 takes no parameters$"),
    ("none:ef=0", r"unexpected parameter 'ef=0': none takes no parameters$"),
    ("signsgd:0.1", r"unexpected parameter '0.1': signsgd accepts the options ef=...$"),
    ("topk:0.1:foo=1", r"unexpected parameter 'foo=1': topk accepts the options ef=...$"),
    ("powersgd:2:warm", r"powersgd accepts the options start=..., ef=..., seed=...$"),
    ("topk:0.1:ef=2", r"compression 'topk:0.1:ef=2': ef must be 0 or 1 \(true/false\), got '2'$"),
    ("topk:0.1:ef=0:ef=1", r"option 'ef' given twice$"),
    (42, r"compression spec must be a string such as 'topk:0.01' \(or None\), got int 42$"),
])
def test_bad_specs_name_the_spec_and_what_is_expected(spec, match):
    with pytest.raises(C.CompressionError, match=match):
        C.get(spec)


def test_bad_constructor_arguments():
    with pytest.raises(C.CompressionError, match=rf"^topk {RATIO}, got 0.0$"):
        C.TopKCompressor(0.0)
    with pytest.raises(C.CompressionError, match=rf"randomk {RATIO}, got '0.1'$"):
        C.RandomKCompressor("0.1")
    with pytest.raises(C.CompressionError, match=r"qsgd LEVELS must be an integer in \[2, 127\], got True$"):
        C.QSGDCompressor(True)
    with pytest.raises(C.CompressionError, match=r"powersgd RANK must be an integer >= 1, got 1.0$"):
        C.PowerSGDCompressor(1.0)


def test_bf16_without_ml_dtypes_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(C.cast, "bfloat16_dtype", lambda: None)  # as without ml_dtypes installed
    with pytest.raises(C.CompressionError, match=r"compression 'bf16': bf16 compression needs the ml_dtypes "
                                                 r"package .*pip install ml_dtypes"):
        C.get("bf16")


# ----------------------------------------------------------------------------------------------
# Round trips and error bounds
# ----------------------------------------------------------------------------------------------


def test_none_is_the_identity(rng):
    x = rng.standard_normal((5, 4)).astype(np.float32)
    c = C.get("none")
    payload, ctx = c.compress("w", x, 0)
    assert c.decompress(payload, ctx).tolist() == x.tolist() and c.memory("w") is None


@pytest.mark.parametrize("spec", ["fp16", "bf16"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_half_round_trip_within_half_an_ulp(spec, dtype, rng):
    if spec == "bf16" and bfloat16 is None:
        pytest.skip("ml_dtypes is not installed")
    half = np.float16 if spec == "fp16" else bfloat16
    x = (rng.choice([-1.0, 1.0], 4000) * 10.0 ** rng.uniform(-3, 3, 4000)).astype(dtype).reshape(40, 100)
    c = C.get(spec)
    payload, ctx = c.compress("w", x, 0)
    assert len(payload) == 1 and payload[0].dtype == np.dtype(half) and payload[0].nbytes == x.size * 2
    y = c.decompress(payload, ctx)
    assert y.shape == x.shape and y.dtype == x.dtype
    rel = np.abs(y.astype(np.float64) - x) / np.abs(x)
    assert rel.max() <= finfo_eps(half) / 2


def test_fp16_does_not_alias_a_half_input():
    x = np.ones(4, np.float16)
    payload, _ = C.get("fp16").compress("w", x, 0)
    assert not np.shares_memory(payload[0], x)


def test_topk_keeps_the_largest_coordinates_exactly(rng):
    x = rng.standard_normal(1000).astype(np.float32)
    c = C.get("topk:0.013:ef=0")
    (idx, values), ctx = c.compress("b", x, 0)
    assert idx.dtype == np.int32 and values.dtype == np.float32 and idx.size == 13 == c.k(1000)
    assert np.all(np.diff(idx) > 0)
    assert set(idx.tolist()) == set(np.argsort(-np.abs(x))[:13].tolist())
    y = c.decompress((idx, values), ctx)
    assert np.array_equal(y[idx], x[idx])
    rest = np.ones(1000, bool)
    rest[idx] = False
    assert not y[rest].any() and c.memory("b") is None


@pytest.mark.parametrize("ratio, d, k", [(0.07, 100, 7), (0.01, 10, 1), (1, 17, 17), (0.5, 3, 2), (1e-9, 5, 1),
                                         (0.3, 10, 3)])
def test_k_is_max_1_ceil_ratio_d(ratio, d, k):
    assert C.TopKCompressor(ratio).k(d) == k == C.RandomKCompressor(ratio).k(d)


def test_randomk_coordinates_are_shared_and_seeded(rng):
    c = C.get("randomk:0.1")
    a = c.indices("b0", 1000, 5)
    assert a.size == 100 and np.all(np.diff(a) > 0) and a.min() >= 0 and a.max() < 1000
    assert np.array_equal(a, C.get("randomk:0.1").indices("b0", 1000, 5))  # another rank draws the same
    assert not np.array_equal(a, c.indices("b0", 1000, 6))
    assert not np.array_equal(a, c.indices("b1", 1000, 5))
    assert not np.array_equal(a, C.get("randomk:0.1:seed=1").indices("b0", 1000, 5))
    x = rng.standard_normal(1000)
    (values,), ctx = C.get("randomk:0.1:ef=0").compress("b0", x, 5)
    assert np.array_equal(values, x[a] * 10)  # scaled by d/k without error feedback
    y = C.get("randomk:0.1:ef=0").decompress((values,), ctx)
    assert np.count_nonzero(y) == 100 and np.array_equal(y[a], values)


def test_randomk_without_error_feedback_is_unbiased(rng):
    d, trials = 40, 3000
    x = rng.standard_normal(d)
    c = C.get("randomk:0.25:ef=0")  # k = 10: each coordinate kept with probability 1/4, scaled by 4
    mean = np.zeros(d)
    for step in range(trials):
        mean += c.decompress(*c.compress("b", x, step))
    mean /= trials
    sigma = np.abs(x) * math.sqrt((d / 10 - 1) / trials)
    assert np.all(np.abs(mean - x) <= 5 * sigma)


@pytest.mark.parametrize("levels", [127, 4, 2])
def test_qsgd_levels_and_unbiasedness(levels, rng):
    d, trials = 40, 3000
    x = rng.standard_normal(d)
    x[3] = 0.0
    c = C.get(f"qsgd:{levels}")
    norm = np.linalg.norm(x)
    mean = np.zeros(d)
    for step in range(trials):
        y = c.decompress(*c.compress("b", x, step))
        mean += y
    unit = float(np.float32(norm)) / levels
    q = y / unit  # the last one: integer levels of the (rounded-up float32) norm, with x's signs
    assert np.allclose(q, np.round(q), atol=1e-9) and np.abs(q).max() <= levels and y[3] == 0
    assert np.all(np.sign(y[y != 0]) == np.sign(x[y != 0]))
    mean /= trials
    sigma = unit / 2 / math.sqrt(trials)  # a level's variance is at most 1/4
    assert np.all(np.abs(mean - x) <= 5 * sigma + 1e-12)


@pytest.mark.parametrize("bits", range(1, 8))
@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 1001])
def test_bit_packing_matches_packbits(bits, n, rng):
    v = rng.integers(0, 1 << bits, n).astype(np.uint8)
    packed = C.quantize.pack_uint(v, bits)
    planes = np.unpackbits(v.reshape(-1, 1), axis=1, bitorder="little")[:, :bits]
    assert np.array_equal(packed, np.packbits(planes.reshape(-1), bitorder="little"))
    assert packed.size == math.ceil(n * bits / 8) and np.array_equal(C.quantize.unpack_uint(packed, bits, n), v)


def test_qsgd_rounding_is_seeded_by_rank_step_and_key(rng):
    x = rng.standard_normal(500).astype(np.float32)
    c = C.get("qsgd:4")
    a = c.compress("b", x, 3, rank=1)[0][1]
    assert np.array_equal(a, C.get("qsgd:4").compress("b", x, 3, rank=1)[0][1])  # reproducible
    for other in (c.compress("b", x, 3, rank=2), c.compress("b", x, 4, rank=1), c.compress("c", x, 3, rank=1),
                  C.get("qsgd:4:seed=5").compress("b", x, 3, rank=1)):
        assert not np.array_equal(a, other[0][1])


def test_signsgd_sends_the_mean_magnitude_and_the_signs(rng):
    x = rng.standard_normal(37).astype(np.float32)
    x[5] = 0.0
    c = C.get("signsgd:ef=0")
    (scale, bits), ctx = c.compress("b", x, 0)
    assert scale.dtype == np.float32 and scale.shape == (1,) and bits.dtype == np.uint8 and bits.size == 5
    assert scale[0] == np.float32(np.abs(x.astype(np.float64)).sum() / 37)
    y = c.decompress((scale, bits), ctx)
    assert y.dtype == np.float32 and np.array_equal(y, np.where(x >= 0, scale[0], -scale[0]))


# ----------------------------------------------------------------------------------------------
# Error feedback
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["topk:0.05", "randomk:0.05", "signsgd", "powersgd:2:start=0", "powersgd:1:start=0"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_error_feedback_identity(spec, dtype, rng):
    """What is sent plus the new memory is the input plus the previous memory, step after step."""
    c = C.get(spec)
    shape = (30, 20) if spec.startswith("powersgd") else (600,)
    for step in range(6):
        x = rng.standard_normal(shape).astype(dtype)
        prev = c.memory("w")
        p = x.copy() if prev is None else np.add(x, prev, dtype=dtype)
        sent = c.decompress(*c.compress("w", x, step))
        mem = c.memory("w")
        assert mem.shape == shape and mem.dtype == np.dtype(dtype) and sent.dtype == np.dtype(dtype)
        if spec.startswith(("topk", "randomk")):
            assert np.array_equal(sent + mem, p)  # disjoint supports: exact
            assert np.count_nonzero(sent) == c.k(600) and not mem[sent != 0].any()
        else:
            tol = 2 * finfo_eps(dtype) * (np.abs(p) + np.abs(sent))
            assert np.all(np.abs(sent + mem - p) <= tol)
        assert np.abs(mem).max() > 0


def test_powersgd_bucket_memory_identity_through_reduce():
    world = _world()
    c = C.get("powersgd:2:start=1")
    for step in range(5):
        flat = _bucket(step)
        x = flat.copy()
        prev = c.memory("bucket0")
        C.reduce(c, world, "bucket0", _segments(flat), flat, step)
        mem = c.memory("bucket0")
        if step == 0:
            assert prev is None and mem is None and np.array_equal(flat, x)  # plain sum, no memory yet
            continue
        assert mem.shape == (SIZE,) and mem.dtype == np.float32
        p = x if prev is None else x + prev
        assert np.all(np.abs(flat + mem - p) <= 4 * finfo_eps(np.float32) * (np.abs(p) + np.abs(flat)))
        # biases and matrices too small for rank 2 travel whole: exact, no memory
        for (name, shape), (lo, hi) in zip(SEGMENTS, _bounds()):
            if not c.compressible(shape):
                assert np.array_equal(flat[lo:hi], x[lo:hi]) and not mem[lo:hi].any() and c.memory(name) is None
            else:
                assert np.array_equal(c.memory(name).reshape(-1), mem[lo:hi])


def _bounds():
    out, lo = [], 0
    for _, shape in SEGMENTS:
        out.append((lo, lo + math.prod(shape)))
        lo += math.prod(shape)
    return out


def test_nonfinite_input_does_not_poison_the_memory(rng):
    c = C.get("signsgd")
    x = rng.standard_normal(64).astype(np.float32)
    x[7] = np.inf
    y = c.decompress(*c.compress("b", x, 0))
    assert not np.isfinite(y).all() and not c.memory("b").any()
    y = c.decompress(*c.compress("b", np.ones(64, np.float32), 1))
    assert np.isfinite(y).all()
    q = C.get("qsgd:8")
    x[7] = np.nan
    assert np.isnan(q.decompress(*q.compress("b", x, 0))).all()


# ----------------------------------------------------------------------------------------------
# PowerSGD
# ----------------------------------------------------------------------------------------------


def test_powersgd_compressible_rule():
    c = C.get("powersgd:2")
    assert c.compressible((24, 40)) and c.compressible((8, 4, 3, 3)) and c.compressible((10, 10))
    assert not c.compressible((24,)) and not c.compressible((4, 4)) and not c.compressible((8, 8))
    assert not c.compressible((2, 1000)) and not C.get("powersgd:1").compressible((3, 3))
    assert C.get("powersgd:1").compressible((4, 5))  # (4 + 5) * 2 = 18 < 20


@pytest.mark.parametrize("R, dtype, tol", [(2, np.float64, 1e-12), (3, np.float64, 1e-12), (2, np.float32, 3e-6)])
def test_powersgd_is_exact_for_a_low_rank_matrix(R, dtype, tol, rng):
    a = (rng.standard_normal((40, 2)) @ rng.standard_normal((2, 30))).astype(dtype)
    c = C.get(f"powersgd:{R}:start=0")
    for step in range(4):
        (p, q), ctx = c.compress("w", a, step)
        assert p.shape == (40, R) and q.shape == (30, R) and p.dtype == q.dtype == np.dtype(dtype)
        assert np.allclose(p.T.astype(np.float64) @ p, np.eye(R), atol=10 * tol)  # orthonormal columns
        y = c.decompress((p, q), ctx)
        assert np.linalg.norm(y - a) <= tol * np.linalg.norm(a)
        assert np.linalg.norm(c.memory("w")) <= tol * np.linalg.norm(a)


def test_powersgd_warm_start_converges_to_the_best_rank_1_approximation(rng):
    u, _ = np.linalg.qr(rng.standard_normal((30, 6)))
    v, _ = np.linalg.qr(rng.standard_normal((20, 6)))
    s = np.array([10.0, 4.0, 2.0, 1.0, 0.5, 0.2])
    g = (u * s) @ v.T
    best = math.sqrt((s[1:] ** 2).sum() / (s**2).sum())  # Eckart-Young
    c = C.get("powersgd:1:start=0:ef=0")
    errors = [np.linalg.norm(c.decompress(*c.compress("w", g, t)) - g) / np.linalg.norm(g) for t in range(12)]
    assert errors[0] > best + 1e-3 and abs(errors[-1] - best) < 1e-6


def test_powersgd_error_feedback_shrinks_the_error_on_a_fixed_matrix(rng):
    # sum_t sent_t = t g - memory_t, and the memory stays bounded: the running mean's error decays like 1/t
    g = rng.standard_normal((12, 8))
    c = C.get("powersgd:1:start=0")
    total = np.zeros_like(g)
    errors = []
    for t in range(40):
        total += c.decompress(*c.compress("w", g, t))
        errors.append(np.linalg.norm(total / (t + 1) - g) / np.linalg.norm(g))
    assert errors[0] > 0.6 and errors[9] < 0.75 * errors[0] and errors[-1] < 0.2 * errors[0]
    assert errors[-1] < errors[19] < errors[9] < errors[4]


def test_powersgd_start_iter_sends_plain_sums_without_memory():
    world = _world()
    c = C.get("powersgd:1:start=3")
    for step in range(3):
        flat = _bucket(step)
        x = flat.copy()
        C.reduce(c, world, "bucket0", _segments(flat), flat, step)
        assert np.array_equal(flat, x) and c.memory("bucket0") is None and c.state_dict() == {"spec": c.spec}
    flat = _bucket(3)
    x = flat.copy()
    C.reduce(c, world, "bucket0", _segments(flat), flat, 3)
    assert not np.array_equal(flat, x) and c.memory("fc.weight").shape == (12, 10)
    assert set(c.state_dict()) == {"spec", "memory/fc.weight", "memory/conv.weight", "q/fc.weight", "q/conv.weight"}


def test_powersgd_reduce_of_one_rank_matches_compress(rng):
    world = _world()
    c, twin = C.get("powersgd:2:start=0"), C.get("powersgd:2:start=0")
    for step in range(3):
        flat = _bucket(step)
        want = [twin.decompress(*twin.compress(name, view.copy(), step)).reshape(-1) for name, view in _segments(flat)]
        C.reduce(c, world, "bucket0", _segments(flat), flat, step)
        np.testing.assert_allclose(flat, np.concatenate(want), rtol=1e-6, atol=1e-6)


def test_powersgd_recovers_from_a_zero_gradient(rng):
    c = C.get("powersgd:1:start=0")
    y = c.decompress(*c.compress("w", np.zeros((10, 8)), 0))
    assert not y.any() and np.abs(c.state_dict()["q/w"]).min() > 0  # Q drawn afresh, not stuck at zero
    a = np.outer(rng.standard_normal(10), rng.standard_normal(8))
    y = c.decompress(*c.compress("w", a, 1))
    assert np.allclose(y, a, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# Payload sizes and what reaches the collectives
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, nbytes", [
    ("none", 400_000), ("fp16", 200_000), ("bf16", 200_000), ("topk:0.01", 1000 * 8), ("randomk:0.01", 1000 * 4),
    # QSGD: one float32 norm per block of 512 coordinates (196 blocks here), or one for bucket=0
    ("qsgd:127", 100_000 + 784), ("qsgd:8", 62_500 + 784), ("qsgd:4", 50_000 + 784), ("qsgd:2", 37_500 + 784),
    ("qsgd:127:bucket=0", 100_000 + 4), ("qsgd:4:bucket=1000", 50_000 + 400),
    ("signsgd", 12_500 + 4), ("powersgd:4:start=0", (250 + 400) * 4 * 4),
])
def test_payload_sizes(spec, nbytes):
    if spec == "bf16" and bfloat16 is None:
        pytest.skip("ml_dtypes is not installed")
    x = np.random.default_rng(0).standard_normal((250, 400)).astype(np.float32)  # 100,000 elements, 400 kB
    payload, _ = C.get(spec).compress("w", x, 0)
    assert C.payload_nbytes(payload) == nbytes
    assert spec == "none" or nbytes < x.nbytes


@pytest.mark.parametrize("spec", SPECS + ["powersgd:2:start=0", "qsgd:4"])
def test_reduce_hands_only_the_payload_to_the_collectives(spec, monkeypatch):
    if spec == "bf16" and bfloat16 is None:
        pytest.skip("ml_dtypes is not installed")
    calls = []

    def spy(real):
        def run(array, *args, **kwargs):
            calls.append((real.__name__, array.nbytes))
            return real(array, *args, **kwargs)
        return run

    monkeypatch.setattr(C.exchange, "plain_allreduce", spy(C.exchange.plain_allreduce))
    monkeypatch.setattr(C.exchange, "allgather", spy(C.exchange.allgather))
    world = _world()
    flat = _bucket(0)
    c = C.get(spec)
    C.reduce(c, world, "bucket0", _segments(flat), flat, 0)
    sent = sum(n for _, n in calls)
    d = SIZE

    def packed(nbytes):  # an all-gather of several arrays: one byte buffer, padded to its widest dtype
        return -(-nbytes // 4) * 4

    expected = {
        "none": [("allreduce", 4 * d)], "fp16": [("allreduce", 2 * d)], "bf16": [("allreduce", 2 * d)],
        "powersgd:2": [("allreduce", 4 * d)],  # before start_iter: the plain bucket
        "powersgd:2:start=0": [("allreduce", 4 * (12 + 6 + (12 + 6) * 2)), ("allreduce", 4 * (10 + 18) * 2)],
        "topk:0.01": [("allgather", 8 * math.ceil(0.01 * d))], "randomk:0.01": [("allreduce", 4 * math.ceil(0.01 * d))],
        "qsgd:127": [("allgather", packed(4 + d))], "qsgd:4": [("allgather", packed(4 + math.ceil(d * 4 / 8)))],
        "signsgd": [("allgather", packed(4 + math.ceil(d / 8)))],
    }[spec]
    assert calls == expected, calls
    assert spec in ("none", "powersgd:2") or sent < flat.nbytes


# ----------------------------------------------------------------------------------------------
# reduce() on a world of 1, state round trips, argument checks
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS + ["randomk:0.3:ef=0", "qsgd:3", "topk:0.2:ef=0"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reduce_on_one_rank_is_decompress_of_compress(spec, dtype):
    if spec == "bf16" and bfloat16 is None:
        pytest.skip("ml_dtypes is not installed")
    world = _world()
    c, twin = C.get(spec), C.get(spec)
    for step in range(3):
        flat = _bucket(step, dtype)
        if spec.startswith("powersgd"):  # per parameter (plain before start_iter)
            want = flat.copy()
        else:
            want = twin.decompress(*twin.compress("bucket0", flat.copy(), step)).reshape(-1)
        C.reduce(c, world, "bucket0", _segments(flat), flat, step)
        assert flat.dtype == np.dtype(dtype) and np.array_equal(flat, want)


@pytest.mark.parametrize("spec", SPECS + ["powersgd:2:start=1", "randomk:0.2:ef=0", "qsgd:4", "topk:0.05"])
def test_state_dict_round_trip_resumes_bit_for_bit(spec, tmp_path):
    if spec == "bf16" and bfloat16 is None:
        pytest.skip("ml_dtypes is not installed")
    world = _world()

    def run(c, steps):
        outs = []
        for step in steps:
            flat = _bucket(step)
            C.reduce(c, world, "bucket0", _segments(flat), flat, step)
            outs.append(flat)
        return outs

    straight = run(C.get(spec), range(6))
    first = C.get(spec)
    run(first, range(3))
    state = first.state_dict()
    assert state["spec"] == first.spec
    assert all(isinstance(v, np.ndarray) for k, v in state.items() if k != "spec")
    if first.error_feedback and spec != "powersgd:2":
        assert any(k.startswith("memory/") for k in state)
    np.savez(tmp_path / "c.npz", **state)  # arrays and a string: loads without pickle
    with np.load(tmp_path / "c.npz", allow_pickle=False) as f:
        loaded = {k: f[k] for k in f.files}
    resumed = C.get(spec)
    resumed.load_state_dict(loaded)
    for a, b in zip(run(resumed, range(3, 6)), straight[3:]):
        assert np.array_equal(a.view(np.uint8), b.view(np.uint8))


def test_state_dict_is_a_copy_and_load_checks_the_method():
    c = C.get("topk:0.1")
    c.compress("b", np.arange(20.0), 0)
    state = c.state_dict()
    state["memory/b"][:] = 99
    assert c.memory("b").max() < 99
    with pytest.raises(C.CompressionError, match=r"saved by compressor 'signsgd', not topk"):
        c.load_state_dict({"spec": "signsgd"})
    with pytest.raises(C.CompressionError, match=r"unexpected state entry 'q/w': expected 'spec' and arrays named "
                                                 r"'memory/<key>'"):
        c.load_state_dict({"spec": "topk:0.1", "q/w": np.zeros(3)})
    c.load_state_dict({"spec": np.array("topk:0.5")})  # as read back from an npz
    assert c.memory("b") is None
    p = C.get("powersgd:2:start=0")
    p.load_state_dict({"q/w": np.zeros((7, 3))})
    with pytest.raises(C.CompressionError, match=r"the stored Q of 'w' has shape \(7, 3\), expected \(20, 2\)"):
        p.compress("w", np.ones((30, 20)), 0)


def test_reduce_checks_its_arguments():
    world = _world()
    c = C.get("topk:0.1")
    flat = _bucket(0)
    with pytest.raises(ValueError, match=r"topk:0.1.reduce: the segments of 'b' cover 120 elements but flat has"):
        C.reduce(c, world, "b", _segments(flat)[:1], flat, 0)
    with pytest.raises(ValueError, match=r"writeable contiguous 1-D array, got shape \(2, 87\)"):
        C.reduce(c, world, "b", [], flat[:174].reshape(2, 87), 0)
    with pytest.raises(ValueError, match=r"step must be a non-negative integer, got -1"):
        C.reduce(c, world, "b", _segments(flat), flat, -1)
    with pytest.raises(ValueError, match=r"must be a floating array, got dtype int64"):
        C.reduce(c, world, "b", [("i", np.zeros(3, np.int64))], np.zeros(3, np.int64), 0)
    c.compress("b", np.ones(10, np.float32), 0)
    with pytest.raises(C.CompressionError, match=r"memory for 'b' has shape \(10,\) but the input has shape \(12,\)"):
        c.compress("b", np.ones(12, np.float32), 1)


def test_qsgd_blocks_keep_the_variance_down():
    """One norm for a 22k-coordinate vector with 4 levels makes the quantisation noise dwarf the signal
    (the CNN stopped learning); the paper's 512-coordinate blocks cut it by about sqrt(22602 / 512)
    (relative variance bound min(d/s^2, sqrt(d)/s): 37 for one norm, 5.7 per block)."""
    x = np.random.default_rng(3).standard_normal(22_602)
    errors = {}
    for spec in ("qsgd:4", "qsgd:4:bucket=0"):
        c = C.get(spec)
        est = [c.decompress(*c.compress("g", x, step)) for step in range(20)]
        errors[spec] = float(np.mean([np.sum((e - x) ** 2) for e in est]) / np.sum(x * x))
    assert errors["qsgd:4"] < 5.7 and errors["qsgd:4:bucket=0"] > 5 * errors["qsgd:4"]
    with pytest.raises(C.CompressionError, match="bucket must be an integer >= 0"):
        C.get("qsgd:4:bucket=-1")


def test_powersgd_reuses_its_work_arrays_without_changing_a_bit():
    """The memory doubles as step 1's M and lowrank writes into reused arrays (no fresh matrix-sized pages per
    step); the results must be the bits of the plain formulas: G + memory, and p @ q.T as outer products."""
    from dtrain.distributed.compression.powersgd import lowrank

    rng = np.random.default_rng(5)
    p, q = rng.standard_normal((64, 3)).astype(np.float32), rng.standard_normal((48, 3)).astype(np.float32)
    plain = p[:, :1] * q[:, 0] + p[:, 1:2] * q[:, 1] + p[:, 2:3] * q[:, 2]
    out, tmp = np.full((64, 48), np.nan, np.float32), np.full((64, 48), np.nan, np.float32)
    assert lowrank(p, q, out, tmp) is out and np.array_equal(out, plain) and np.array_equal(lowrank(p, q), plain)

    c = C.PowerSGDCompressor(2, start_iter=0)
    g = rng.standard_normal((64, 48)).astype(np.float32)
    first = c._matrix("w", g)  # no memory yet: a copy the compressor owns
    assert not np.shares_memory(first, g) and np.array_equal(first, g)
    mem = rng.standard_normal((64, 48)).astype(np.float32)
    c.set_memory("w", mem.copy())
    m = c._matrix("w", g)
    assert np.shares_memory(m, c.memory("w")) and np.array_equal(m, g + mem)
