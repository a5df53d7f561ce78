"""Rank-side checks of dtrain.distributed's communicator and collectives.

Run as ``mpiexec -n N python mpi_collectives.py``.

The same assertions hold at every world size N >= 1 (tests/distributed/test_collectives.py runs N = 1..5):

* closed forms: rank r contributes ``r + (i % 3)``, so the sum is ``N(N-1)/2 + N (i % 3)`` and the mean
  ``(N-1)/2 + (i % 3)``, exact in every dtype, for both algorithms;
* integer-valued data (small integers in every dtype, large ones in float64): ring == MPI_Allreduce exactly;
* random data: |result - exact| <= N * eps(dtype) * sum_r |x_r| + N * tiny elementwise for "sum", and
  (N + 1) * eps(dtype) * sum_r |x_r| / N + N * tiny for "mean" (eps = machine epsilon of the array's
  dtype: 2^-10 float16, 2^-7 bfloat16, 2^-23 float32, 2^-52 float64; tiny = its smallest subnormal,
  the rounding floor of results among subnormals); that is a few ulps of the largest contribution
  per rank, the classic bound of a sum of N terms rounded N-1 times; "exact" is the float64 sum of the
  dtype-rounded inputs, computed by MPI_Allreduce on float64 copies (exact here: float64 sums of
  N <= 5 values of at most 24 significant bits);
* the ring's result is bitwise identical on every rank (a SHA-256 of the bytes, gathered);
* reduce_scatter chunks and allgather (equal and unequal counts) exact; reduce_scatter followed by
  allgather is bitwise the ring all-reduce; broadcast from every root;
* async handles (several in flight, with a synchronous collective on the main thread meanwhile,
  waited in order and in reverse) equal the synchronous results bitwise;
* a bad argument raises ValueError on every rank, and the collectives afterwards still work.

Any failure prints the rank and traceback and aborts the whole job (exit status non-zero), so a
failing rank never leaves the others waiting.
"""

from __future__ import annotations

import hashlib

import numpy as np
from mpi_harness import run_or_abort

COUNTS_BASE = (0, 1, 1000, 2**20 + 3)


def eps(dtype) -> float:
    from dtrain.backend import finfo_eps

    return finfo_eps(dtype)


def bf16():
    """ml_dtypes' bfloat16 dtype (None without ml_dtypes), loaded by dtrain on first use."""
    from dtrain.backend import bfloat16_dtype

    return bfloat16_dtype()


def tiny(dtype) -> float:
    """The smallest subnormal: the absolute rounding floor of a result that lands among subnormals."""
    from dtrain.backend import bfloat16

    if bfloat16 is not None and np.dtype(dtype) == bfloat16:
        import ml_dtypes

        return float(ml_dtypes.finfo(bfloat16).smallest_subnormal)
    return float(np.finfo(dtype).smallest_subnormal)


def same_on_all_ranks(comm, array, what: str) -> None:
    digest = hashlib.sha256(np.ascontiguousarray(array).view(np.uint8).tobytes()).hexdigest()
    digests = comm.comm.allgather(digest)
    assert len(set(digests)) == 1, f"{what}: results differ between ranks: {digests}"


def exact_sum(comm, x) -> np.ndarray:
    """The float64 sum over ranks of x (cast to float64), through MPI_Allreduce."""
    from mpi4py import MPI

    ref = np.ascontiguousarray(x, dtype=np.float64).copy()
    comm.comm.Allreduce(MPI.IN_PLACE, ref, op=MPI.SUM)
    return ref


def check_world(world, C) -> None:
    from mpi4py import MPI

    import dtrain.distributed.comm as dcomm

    assert dcomm.init() is world and dcomm.get_world() is world and dcomm.is_initialized()
    assert dcomm.init(MPI.COMM_WORLD) is world
    assert world.rank == MPI.COMM_WORLD.rank and world.size == MPI.COMM_WORLD.size
    assert (dcomm.get_rank(), dcomm.get_world_size()) == (world.rank, world.size)
    assert dcomm.get_local_rank() == world.local_rank and 0 <= world.local_rank < world.local_size <= world.size
    assert dcomm.get_node_count() == world.node_count == sum(world.comm.allgather(world.local_rank == 0))
    assert world.thread_level in ("single", "funneled", "serialized", "multiple")
    assert MPI.Comm.Compare(world.comm, MPI.COMM_WORLD) == MPI.CONGRUENT  # a Dup: same group, own messages
    dcomm.barrier()


def check_closed_forms(world, C) -> None:
    n = world.size
    dtypes = [np.float16, np.float32, np.float64] + ([bf16()] if bf16() is not None else [])
    for count in (*COUNTS_BASE, max(n - 1, 0), n + 1):
        i3 = np.arange(count) % 3
        for dtype in dtypes:
            for algorithm in ("ring", "mpi"):
                for op, expected in (("sum", n * (n - 1) / 2 + n * i3), ("mean", (n - 1) / 2 + i3)):
                    shape = (count // 2, 2) if count % 2 == 0 else (count,)  # any shape works
                    a = (world.rank + i3).astype(dtype).reshape(shape)
                    out = C.allreduce(a, op=op, algorithm=algorithm, comm=world)
                    assert out is a and a.dtype == np.dtype(dtype)
                    got = a.reshape(-1).astype(np.float64)
                    assert np.array_equal(got, expected), (
                        f"{algorithm} {op} {np.dtype(dtype)}[{count}]: max error {np.abs(got - expected).max()}")
                    if algorithm == "ring":
                        same_on_all_ranks(world, a, f"ring {op} {np.dtype(dtype)}[{count}]")
    for dtype in (np.int32, np.int64):
        for algorithm in ("ring", "mpi"):
            a = np.full(1001, world.rank, dtype) + np.arange(1001, dtype=dtype)
            C.allreduce(a, op="sum", algorithm=algorithm, comm=world)
            assert np.array_equal(a, n * (n - 1) // 2 + n * np.arange(1001)), f"{algorithm} sum {np.dtype(dtype)}"


def check_integer_valued_exact(world, C) -> None:
    rng = np.random.default_rng(100 + world.rank)
    dtypes = [np.float16, np.float32, np.float64] + ([bf16()] if bf16() is not None else [])
    for count in (*COUNTS_BASE, max(world.size - 1, 0)):
        small = rng.integers(-8, 9, count).astype(np.float64)
        for dtype in dtypes:
            for op in ("sum", "mean"):
                ring = small.astype(dtype)
                ref = small.astype(dtype)
                C.allreduce(ring, op=op, algorithm="ring", comm=world)
                C.allreduce(ref, op=op, algorithm="mpi", comm=world)
                assert np.array_equal(ring.view(np.uint8), ref.view(np.uint8)), f"ring != mpi: {op} {np.dtype(dtype)}"
        big = rng.integers(-(2**40), 2**40, count).astype(np.float64)
        ring, ref = big.copy(), big.copy()
        C.allreduce(ring, op="sum", algorithm="ring", comm=world)
        C.allreduce(ref, op="sum", algorithm="mpi", comm=world)
        assert np.array_equal(ring, ref) and np.array_equal(ring, exact_sum(world, big)), "float64 integer sums"


def check_random_within_tolerance(world, C) -> None:
    n = world.size
    rng = np.random.default_rng(200 + world.rank)
    dtypes = [np.float16, np.float32, np.float64] + ([bf16()] if bf16() is not None else [])
    for count in (*COUNTS_BASE, max(n - 1, 0)):
        x64 = rng.standard_normal(count) * 10.0 ** rng.integers(-2, 3, count)
        for dtype in dtypes:
            x = x64.astype(dtype)
            exact = exact_sum(world, x)
            magnitude = exact_sum(world, np.abs(x.astype(np.float64)))
            for algorithm in ("ring", "mpi"):
                for op in ("sum", "mean"):
                    a = x.copy()
                    C.allreduce(a, op=op, algorithm=algorithm, comm=world)
                    if op == "sum":
                        want, tol = exact, n * eps(dtype) * magnitude + n * tiny(dtype)
                    else:
                        want, tol = exact / n, (n + 1) * eps(dtype) * magnitude / n + n * tiny(dtype)
                    err = np.abs(a.astype(np.float64) - want)
                    assert np.all(err <= tol), (f"{algorithm} {op} {np.dtype(dtype)}[{count}]: error "
                                                f"{(err / np.maximum(tol, 1e-300)).max():.2f} x the tolerance")
                    if algorithm == "ring":
                        same_on_all_ranks(world, a, f"ring {op} {np.dtype(dtype)}[{count}] random")


def check_pipelining(world, C) -> None:
    """Tiny pieces (many per step, unequal piece counts between neighbours) at several depths: the same
    bits as the default pieces, since every element is reduced in the same order whatever the piecing."""
    n = world.size
    rng = np.random.default_rng(250 + world.rank)
    dtypes = [np.float16, np.float32, np.float64] + ([bf16()] if bf16() is not None else [])
    from dtrain.distributed.algorithms.ring import RingAllreduce, ring_reduce_scatter

    for count in (1, max(n - 1, 0), 7, 100, 1001, 4 * n + 1):
        x64 = rng.standard_normal(count)
        bounds = C.chunk_bounds(count, n)
        lo, hi = bounds[world.rank]
        for dtype in dtypes:
            for op in ("sum", "mean"):
                want = x64.astype(dtype)
                C.allreduce(want, op=op, comm=world)
                mine = C.reduce_scatter(x64.astype(dtype), op=op, comm=world)
                for piece_bytes, depth in ((2, 1), (8, 2), (24, 3), (40, 2)):
                    a = x64.astype(dtype)
                    C.allreduce(a, op=op, comm=world, algorithm=RingAllreduce(piece_bytes, depth))
                    what = f"{op} {np.dtype(dtype)}[{count}] pieces of {piece_bytes} B, depth {depth}"
                    assert np.array_equal(a.view(np.uint8), want.view(np.uint8)), what
                    if n > 1 and count:
                        src = x64.astype(dtype)
                        dst = np.empty_like(src)
                        ring_reduce_scatter(world, src, dst, bounds, op == "mean", piece_bytes, depth)
                        got = dst[lo:hi]
                    else:
                        got = x64.astype(dtype)[lo:hi]  # a world of one, or nothing to reduce
                    assert np.array_equal(got.view(np.uint8), mine.view(np.uint8)), "reduce_scatter " + what


def check_reduce_scatter_allgather(world, C) -> None:
    n, r = world.size, world.rank
    rng = np.random.default_rng(300 + r)
    for count in (*COUNTS_BASE, max(n - 1, 0), 7):
        bounds = C.chunk_bounds(count, n)
        lo, hi = bounds[r]
        lengths = [b - a for a, b in bounds]
        x = rng.integers(-1000, 1001, count).astype(np.float64)
        before = x.copy()
        exact = exact_sum(world, x)
        for op, want in (("sum", exact), ("mean", exact / n)):
            mine = C.reduce_scatter(x.reshape((count,)), op=op, comm=world)
            assert mine.shape == (hi - lo,) and np.array_equal(mine, want[lo:hi]), f"reduce_scatter {op} [{count}]"
            assert np.array_equal(x, before), "reduce_scatter modified its input"
            full = C.allgather(mine, counts=lengths, comm=world)
            ring = x.copy()
            C.allreduce(ring, op=op, algorithm="ring", comm=world)
            assert np.array_equal(full.view(np.uint8), ring.view(np.uint8)), f"allgather(reduce_scatter) != ring {op}"
        # float32 random data: reduce_scatter then allgather is bitwise the ring all-reduce.
        y = rng.standard_normal(count).astype(np.float32)
        mine = C.reduce_scatter(y, op="sum", comm=world)
        ring = y.copy()
        C.allreduce(ring, op="sum", algorithm="ring", comm=world)
        assert np.array_equal(C.allgather(mine, counts=lengths, comm=world), ring), f"float32 rs+ag [{count}]"

    # Equal counts, several dtypes and shapes: rank r contributes 1000 r + arange(k).
    dtypes = [np.float32, np.float64, np.int8, np.int64, np.float16] + ([bf16()] if bf16() is not None else [])
    for k in (0, 1, 5, 100_001):
        for dtype in dtypes:
            mine = ((np.arange(k) % 100) + 7 * r).astype(dtype)
            got = C.allgather(mine.reshape((k,)), comm=world)
            want = np.concatenate([((np.arange(k) % 100) + 7 * q).astype(dtype) for q in range(n)])
            assert got.dtype == np.dtype(dtype) and np.array_equal(got.view(np.uint8), want.view(np.uint8)), (
                f"allgather {np.dtype(dtype)}[{k}]")
    # Unequal counts, including empty contributions; a 2-D contribution is taken flat.
    counts = [(q * 3) % 5 for q in range(n)]
    mine = np.full(counts[r], r, np.float64)
    got = C.allgather(mine, counts=counts, comm=world)
    assert np.array_equal(got, np.repeat(np.arange(n, dtype=np.float64), counts)), "allgather unequal counts"
    got = C.allgather(np.full((2, 3), r, np.int32), comm=world)
    assert np.array_equal(got, np.repeat(np.arange(n), 6)), "allgather 2-D"


def check_broadcast(world, C) -> None:
    n, r = world.size, world.rank
    for root in range(n):
        for dtype, shape in ((np.float64, (3, 4)), (np.float32, (0,)), (np.int16, (1001,)), (np.float16, (2, 2, 2))):
            a = np.full(shape, r + 1, dtype)
            assert C.broadcast(a, root=root, comm=world) is a
            assert np.all(a == root + 1), f"broadcast root {root} {np.dtype(dtype)}"
    big = np.arange(2**20 + 3, dtype=np.float64) * (r + 1)
    C.broadcast(big, root=n - 1, comm=world)
    assert np.array_equal(big, np.arange(2**20 + 3, dtype=np.float64) * n)


def check_async(world, C) -> None:
    n, r = world.size, world.rank
    rng = np.random.default_rng(400 + r)
    cases = [
        (rng.standard_normal(2**20 + 3).astype(np.float32), "mean", "ring"),
        (rng.standard_normal(1000), "sum", "ring"),
        (rng.standard_normal(5000).astype(np.float16), "mean", "ring"),
        (rng.standard_normal(3000).astype(np.float32), "sum", "mpi"),
        (rng.standard_normal((64, 33)), "mean", "ring"),
        (np.arange(17, dtype=np.int64) * (r + 1), "sum", "ring"),
        (np.zeros(0, np.float32), "mean", "ring"),
    ]
    if bf16() is not None:
        cases.append((rng.standard_normal(4099).astype(bf16()), "sum", "ring"))
    expected = []
    for x, op, algorithm in cases:
        y = x.copy()
        C.allreduce(y, op=op, algorithm=algorithm, comm=world)
        expected.append(y)
    x_rs = rng.standard_normal(12345)
    want_rs = C.reduce_scatter(x_rs, op="sum", comm=world)
    want_ag = C.allgather(np.full(3, r, np.int32), comm=world)

    for order in ("in order", "reverse", "interleaved"):
        arrays = [x.copy() for x, _, _ in cases]
        handles = [C.allreduce(a, op=op, algorithm=alg, comm=world, async_op=True)
                   for a, (_, op, alg) in zip(arrays, cases)]
        h_rs = C.reduce_scatter(x_rs, op="sum", comm=world, async_op=True)
        b = np.full(5, r, np.float64)
        h_bc = C.broadcast(b, root=n - 1, comm=world, async_op=True)
        h_ag = C.allgather(np.full(3, r, np.int32), comm=world, async_op=True)
        # A synchronous collective on the main thread while the worker runs its queue.
        main = np.full(10, r, np.float64)
        C.allreduce(main, op="sum", comm=world)
        assert np.all(main == n * (n - 1) / 2)
        pairs = list(zip(handles, arrays, expected))
        if order == "reverse":
            pairs.reverse()
        elif order == "interleaved":
            pairs = pairs[1::2] + pairs[0::2]
        for h, a, want in pairs:
            assert h.wait() is a and h.done()
            assert np.array_equal(a.view(np.uint8), want.view(np.uint8)), f"async {h.name} ({order})"
        assert np.array_equal(h_rs.wait(), want_rs) and np.array_equal(h_ag.wait(), want_ag)
        assert h_bc.wait() is b and np.all(b == n - 1)

    # A failing async operation names itself when waited for; the worker survives it.
    def boom(_comm):
        raise ValueError("deliberate failure")

    h = world.submit("custom-op", boom)
    try:
        h.wait()
    except ValueError as exc:
        assert "custom-op" in str(exc) and f"rank {r}" in str(exc) and "deliberate failure" in str(exc), str(exc)
    else:
        raise AssertionError("Handle.wait() did not re-raise the worker's error")
    again = np.ones(3)
    assert np.all(C.allreduce(again, op="sum", comm=world, async_op=True).wait() == n)

    # A Communicator of its own (dup) works and closes cleanly, worker included.
    other = world.dup()
    a = np.full(100, r, np.float32)
    C.allreduce(a, op="mean", comm=other, async_op=True).wait()
    assert np.all(a == (n - 1) / 2)
    other.close()
    other.close()


def expect_value_error(fn, *words) -> None:
    try:
        fn()
    except ValueError as exc:
        msg = str(exc)
        for w in words:
            assert w in msg, f"ValueError message {msg!r} lacks {w!r}"
    else:
        raise AssertionError(f"no ValueError (expected one mentioning {words})")


def check_bad_arguments(world, C) -> None:
    n, r = world.size, world.rank
    a = np.ones(10, np.float32)
    expect_value_error(lambda: C.allreduce(a, op="prod", comm=world), "'prod'", "'sum'", "'mean'", "'max'", "'min'",
                       f"rank {r}")
    expect_value_error(lambda: C.allreduce(a, algorithm="tree", comm=world), "'tree'", "'ring'", "'mpi'")
    expect_value_error(lambda: C.allreduce(a, algorithm="tree", comm=world, async_op=True), "'tree'")
    expect_value_error(lambda: C.allreduce(np.ones(4, np.int32), op="mean", comm=world), "int32", "'sum'")
    expect_value_error(lambda: C.allreduce(np.ones(4, np.complex64), op="sum", comm=world), "complex64", "float32")
    expect_value_error(lambda: C.allreduce(np.ones((4, 4))[:, ::2], comm=world), "C-contiguous", "strides")
    ro = np.ones(4)
    ro.flags.writeable = False
    expect_value_error(lambda: C.allreduce(ro, comm=world), "writeable")
    expect_value_error(lambda: C.reduce_scatter(a, op="prod", comm=world), "'prod'")
    expect_value_error(lambda: C.broadcast(a, root=n, comm=world), f"[0, {n})", str(n))
    expect_value_error(lambda: C.allgather(a, counts=[10] * (n + 1), comm=world), "counts", str(n))
    expect_value_error(lambda: C.allgather(a, counts=[9] * n, comm=world), "counts", "10")
    # Nothing was sent by the failed calls: the next collectives still match up.
    b = np.full(7, r, np.float64)
    C.allreduce(b, op="sum", comm=world)
    assert np.all(b == n * (n - 1) / 2)
    world.barrier()


def check_measure(world, C) -> None:
    from dtrain.distributed.measure import measure_allreduce

    rows = measure_allreduce([4096, 1 << 16], ("ring", "mpi"), repeats=2, warmup=1, comm=world)
    assert [(row["size_bytes"], row["algorithm"]) for row in rows] == [
        (4096, "ring"), (4096, "mpi"), (1 << 16, "ring"), (1 << 16, "mpi")]
    assert all(row["time_s"] > 0 and row["world_size"] == world.size for row in rows)
    assert world.comm.allgather([row["time_s"] for row in rows]) == [[row["time_s"] for row in rows]] * world.size


def main() -> None:
    import dtrain.distributed.collectives as C
    import dtrain.distributed.comm as dcomm

    world = dcomm.init()
    checks = (check_world, check_closed_forms, check_integer_valued_exact, check_random_within_tolerance,
              check_pipelining, check_reduce_scatter_allgather, check_broadcast, check_async, check_bad_arguments,
              check_measure)
    for check in checks:
        check(world, C)
        world.barrier()
    if world.rank == 0:
        print(f"collectives OK on {world.size} ranks (thread level {world.thread_level}, "
              f"{world.node_count} node(s))", flush=True)
    # Closing the world (collective) makes the next init() build a fresh one on the same communicator.
    world.close()
    world.close()
    fresh = dcomm.init()
    assert fresh is not world and dcomm.get_world() is fresh and fresh.size == world.size
    assert np.all(C.allreduce(np.ones(4), op="sum", comm=fresh) == fresh.size)
    try:
        C.allreduce(np.ones(4), comm=world)
    except RuntimeError as exc:
        assert "closed" in str(exc)
    else:
        raise AssertionError("a collective on a closed Communicator did not raise")


if __name__ == "__main__":
    run_or_abort(main)
