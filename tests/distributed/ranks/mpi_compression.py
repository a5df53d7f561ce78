"""Rank-side checks of dtrain.distributed.compression; run as ``mpiexec -n N python mpi_compression.py``.

For every compressor and for float32 and float64 buckets made of a 2-D weight, a conv-like 4-D
weight, a bias and a small matrix (which PowerSGD sends uncompressed), each rank reduces its own
random buffer (fixed per rank plus per-step noise) for 50 steps, and:

* the result is bitwise identical on every rank at every step (SHA-256 of the bytes, gathered at the end);
* ``none`` is the exact sum within the ring's rounding (and exactly the sum for integer-valued data),
  ``fp16``/``bf16`` within half-precision rounding of it;
* ``topk``, ``qsgd``, ``signsgd`` (all-gather) equal a one-process simulation of every rank's
  compressor (compress each rank's input, decompress and add in rank order), and this rank's
  error-feedback memory equals its simulated twin's, bitwise;
* ``randomk`` (ring) equals the simulation within float rounding, its memory bitwise;
* ``powersgd`` equals a NumPy reference of Algorithm 1 (QR for the orthonormalisation, exact sums)
  within rounding, plain sums before ``start_iter``, and the warm-start Qs are identical on every rank;
* with error feedback, the mean of the results over the steps approaches the mean exact sum.

Any failure prints the rank and traceback and aborts the whole job (exit status non-zero), so a
failing rank never leaves the others waiting.
"""

from __future__ import annotations

import hashlib

import numpy as np
from mpi_harness import run_or_abort, segments

SHAPES = [("fc.weight", (24, 40)), ("fc.bias", (24,)), ("conv.weight", (8, 4, 3, 3)), ("small.weight", (3, 2))]
SIZE = sum(int(np.prod(s)) for _, s in SHAPES)
STEPS = 50
SPECS = ["none", "fp16", "bf16", "powersgd:2:start=3", "powersgd:1:start=0", "topk:0.05", "topk:0.05:ef=0",
         "randomk:0.1", "randomk:0.1:ef=0", "qsgd:127", "qsgd:3", "signsgd"]


def digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).view(np.uint8).tobytes()).hexdigest()


def same_on_all_ranks(world, a: np.ndarray, what: str) -> None:
    digests = world.comm.allgather(digest(a))
    assert len(set(digests)) == 1, f"{what}: results differ between ranks: {digests}"


def rank_input(r: int, step: int) -> np.ndarray:
    """Rank r's buffer at ``step`` (float64): fixed per rank, plus a little per-step noise."""
    base = np.random.default_rng([7, r]).standard_normal(SIZE)
    return base + 0.1 * np.random.default_rng([8, r, step]).standard_normal(SIZE)


def segments_of(flat: np.ndarray) -> list[tuple[str, np.ndarray]]:
    return segments(flat, SHAPES)


def eps(dtype) -> float:
    from dtrain.backend import finfo_eps

    return finfo_eps(dtype)


class PowerSGDReference:
    """Algorithm 1 of Vogels et al. for all ranks at once, in NumPy (QR, BLAS, float64 sums)."""

    def __init__(self, c, n: int, dtype):
        from dtrain.distributed.compression import key_hash

        self.c, self.n, self.dtype = c, n, dtype
        self.q = {}
        self.mem = {}
        for name, shape in SHAPES:
            if c.compressible(shape):
                cols = int(np.prod(shape[1:]))
                rng = np.random.default_rng([c.seed, key_hash(name)])
                self.q[name] = rng.standard_normal((cols, c.rank)).astype(dtype).astype(np.float64)
                self.mem[name] = [np.zeros((shape[0], cols)) for _ in range(n)]

    def step(self, xs: list[np.ndarray], step: int) -> np.ndarray:
        out = np.sum(xs, axis=0)
        if step < self.c.start_iter:
            return out
        lo = 0
        for name, shape in SHAPES:
            hi = lo + int(np.prod(shape))
            if name in self.q:
                ms = [x[lo:hi].reshape(shape[0], -1) + m for x, m in zip(xs, self.mem[name])]
                p = sum(m @ self.q[name] for m in ms)
                p_hat, _ = np.linalg.qr(p)
                qs = [m.T @ p_hat for m in ms]
                self.mem[name] = [m - p_hat @ q.T for m, q in zip(ms, qs)]
                self.q[name] = sum(qs)
                out[lo:hi] = (p_hat @ self.q[name].T).reshape(-1)
            lo = hi
        return out


def check_none_integer_valued(world, compression) -> None:
    for dtype in (np.float32, np.float64):
        flat = np.random.default_rng([9, world.rank]).integers(-50, 51, SIZE).astype(dtype)
        expected = sum(np.random.default_rng([9, r]).integers(-50, 51, SIZE) for r in range(world.size))
        compression.reduce(compression.get("none"), world, "b", segments_of(flat), flat, 0)
        assert np.array_equal(flat, expected), "none: integer-valued sum is not exact"


def check_spec(world, compression, spec: str, dtype) -> None:
    n, rank = world.size, world.rank
    c = compression.get(spec)
    what = f"{spec} {np.dtype(dtype)}"
    twins = [compression.get(spec) for _ in range(n)]  # one-process simulation of every rank
    ref = PowerSGDReference(c, n, dtype) if spec.startswith("powersgd") else None
    steps = STEPS if c.error_feedback or ref is not None else 5
    got_sum = np.zeros(SIZE)
    exact_sum = np.zeros(SIZE)
    digests = []  # of every step's result, compared across ranks at the end (one small collective)
    errors = []  # relative error of the mean result over the compressed steps so far
    first = ref.c.start_iter if ref is not None else 0  # the first compressed step
    for step in range(steps):
        xs = [rank_input(r, step).astype(dtype) for r in range(n)]
        flat = xs[rank].copy()
        compression.reduce(c, world, "bucket0", segments_of(flat), flat, step)
        assert flat.dtype == np.dtype(dtype) and flat.shape == (SIZE,)
        digests.append(digest(flat))
        exact = np.sum([x.astype(np.float64) for x in xs], axis=0)
        scale = np.sum([np.abs(x.astype(np.float64)) for x in xs], axis=0)
        got = flat.astype(np.float64)
        if spec == "none":
            bound = n * eps(dtype) * scale
            assert np.all(np.abs(got - exact) <= bound), f"{what}: not the exact sum"
        elif spec in ("fp16", "bf16"):
            from dtrain.backend import bfloat16

            half = np.float16 if spec == "fp16" else bfloat16
            tiny = 2.0**-24 if spec == "fp16" else 0.0  # float16's subnormal spacing: the floor of its rounding
            bound = (n + 1) * eps(half) * scale + n * tiny
            assert np.all(np.abs(got - exact) <= bound), f"{what}: error {np.max(np.abs(got - exact) / bound)}x bound"
        elif ref is not None:
            want = ref.step([x.astype(np.float64) for x in xs], step)
            err = np.linalg.norm(got - want) / np.linalg.norm(want)
            assert err < (2e-3 if dtype == np.float32 else 1e-9), f"{what} step {step}: {err} from the reference"
        else:
            dense = []
            for r in range(n):
                payload, ctx = twins[r].compress("bucket0", xs[r], step, rank=r)
                dense.append(twins[r].decompress(payload, ctx).reshape(-1))
            want = dense[0].copy()
            for d in dense[1:]:
                want += d
            if c.exchange == "allgather":
                assert np.array_equal(flat, want), f"{what} step {step}: differs from the simulation"
            else:  # ring sums in another order
                bound = n * eps(dtype) * np.sum(np.abs(dense), axis=0)
                assert np.all(np.abs(got - want) <= bound), f"{what} step {step}: differs from the simulation"
            mine, twin = c.memory("bucket0"), twins[rank].memory("bucket0")
            assert (mine is None) == (twin is None) and (mine is None or np.array_equal(mine, twin)), (
                f"{what} step {step}: memory differs from the simulation")
        if step >= first:
            got_sum += got
            exact_sum += exact
            errors.append(np.linalg.norm(got_sum - exact_sum) / np.linalg.norm(exact_sum))
    for step, theirs in enumerate(zip(*world.comm.allgather(digests))):
        assert len(set(theirs)) == 1, f"{what} step {step}: results differ between ranks: {theirs}"
    if c.error_feedback and spec != "none":
        # sum_t result_t = sum_t exact_t - sum_r memory_r: the running mean's error decays like 1/t
        assert errors[-1] < 0.5 * errors[0] and errors[-1] < 0.3, f"{what}: mean error {errors[0]} -> {errors[-1]}"
    if ref is not None:
        for name in ref.q:
            same_on_all_ranks(world, c.state_dict()[f"q/{name}"], f"{what}: Q of {name}")
    if rank == 0:
        print(f"  {what:28s} steps {steps:3d}  mean error {errors[0]:.3g} -> {errors[-1]:.3g}", flush=True)


def main() -> None:
    import dtrain.distributed.comm as dcomm
    from dtrain.backend import bfloat16
    from dtrain.distributed import compression

    world = dcomm.init()
    check_none_integer_valued(world, compression)
    for spec in SPECS:
        if spec == "bf16" and bfloat16 is None:
            continue
        for dtype in (np.float32, np.float64):
            check_spec(world, compression, spec, dtype)
            world.barrier()
    if world.rank == 0:
        print(f"compression OK on {world.size} ranks", flush=True)


if __name__ == "__main__":
    run_or_abort(main)
