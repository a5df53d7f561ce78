"""Rank-side checks of the max/min reductions and torch.distributed's spellings (run by
test_reduce_ops.py under ``mpiexec -n N``, N = 1..4, also with DTRAIN_RANKS_PER_NODE faking nodes).

The same assertions hold at every world size:

* closed forms: rank r contributes ``x_r[i] = (i % 5) - 3 |r - (i % N)|``, so over the ranks the
  maximum is ``i % 5`` (rank ``i % N`` holds it) and the minimum ``(i % 5) - 3 max(i % N, N - 1 - i % N)``;
  exact in every dtype, for "ring", "hierarchical", "mpi" and "shm", int32/int64 included;
* random data: every algorithm gives exactly NumPy's ``maximum``/``minimum`` over the gathered inputs
  (half types compared in float32: the same values), bitwise identical on every rank, also with the
  ring pipelined in tiny pieces and through reduce_scatter;
* an algorithm written for the three-argument ``allreduce(comm, flat, mean)`` still sums, and is
  refused max with a clear error before any communication;
* ``dist.all_reduce`` (torch's default op "sum", ReduceOp, Tensors) and ``dist.all_gather`` (fills a list;
  async too); ``dist.destroy_process_group()`` closes the world and ``dist.init()`` builds a new one.

Every rank prints ``reduce ops OK rank R of N: K nodes``.
"""

from __future__ import annotations

import hashlib

import numpy as np
from mpi_harness import run_or_abort

import dtrain
import dtrain.distributed as dist
from dtrain.backend import bfloat16_dtype
from dtrain.distributed.algorithms import AllreduceAlgorithm, RingAllreduce

ALGORITHMS = ("ring", "hierarchical", "mpi", "shm")
INT_DTYPES = (np.int32, np.int64)


def float_dtypes() -> list:
    bf16 = bfloat16_dtype()
    return [np.float16, np.float32, np.float64] + ([bf16] if bf16 is not None else [])


def digest_everywhere(world, array, what: str) -> None:
    digest = hashlib.sha256(np.ascontiguousarray(array).view(np.uint8).tobytes()).hexdigest()
    digests = world.comm.allgather(digest)
    assert len(set(digests)) == 1, f"{what}: results differ between ranks: {digests}"


def closed_forms(world) -> None:
    n, r = world.size, world.rank
    for count in (0, 1, max(n - 1, 0), n + 1, 1001, 70_001):
        i = np.arange(count)
        contribution = (i % 5) - 3 * np.abs(r - (i % n))
        want = {"max": i % 5, "min": (i % 5) - 3 * np.maximum(i % n, n - 1 - i % n)}
        for dtype in (*float_dtypes(), *INT_DTYPES):
            for op in ("max", "min"):
                for alg in ALGORITHMS:
                    a = contribution.astype(dtype)
                    assert dist.allreduce(a, op=op, algorithm=alg) is a and a.dtype == np.dtype(dtype)
                    what = f"{alg} {op} {np.dtype(dtype)}[{count}]"
                    assert np.array_equal(a.astype(np.float64), want[op]), what
                    digest_everywhere(world, a, what)


def random_data(world) -> None:
    n, r = world.size, world.rank
    rng = np.random.default_rng(500 + r)
    pipelined = RingAllreduce(pipeline_bytes=24, pipeline_depth=2)  # many pieces per step
    for count in (1, max(n - 1, 0), 7, 4099, 2**19 + 3):
        x64 = rng.standard_normal(count) * 10.0 ** rng.integers(-3, 4, count)
        # The largest count: float64 only, in chunks past the ring's 1 MB pipeline piece at 2-4 ranks.
        for dtype in float_dtypes() if count < 2**19 else (np.float64,):
            x = x64.astype(dtype)
            every = np.stack(world.comm.allgather(x.astype(np.float32 if x.itemsize == 2 else x.dtype)))
            for op, fold in (("max", np.maximum), ("min", np.minimum)):
                want = fold.reduce(every, axis=0).astype(dtype)
                algs = (*ALGORITHMS, pipelined) if count < 10_000 else ALGORITHMS
                for alg in algs:
                    a = x.copy()
                    dist.allreduce(a, op=op, algorithm=alg)
                    what = f"{alg} {op} {np.dtype(dtype)}[{count}] random"
                    assert np.array_equal(a.view(np.uint8), want.view(np.uint8)), what
                    digest_everywhere(world, a, what)
                lo, hi = dist.chunk_bounds(count, n)[r]
                mine = dist.reduce_scatter(x, op=op)
                assert np.array_equal(mine.view(np.uint8), want[lo:hi].view(np.uint8)), f"reduce_scatter {op}"


class SumOnly(AllreduceAlgorithm):
    """A user's algorithm that sums only: it keeps the base class's ``reduce_ops`` ("sum")."""

    name = "sum-only"

    def allreduce(self, comm, flat, mean, op="sum"):
        RingAllreduce().allreduce(comm, flat, mean, op)


def legacy_algorithm(world) -> None:
    n, r = world.size, world.rank
    a = np.full(10, r, np.float64)
    dist.allreduce(a, op="sum", algorithm=SumOnly())
    assert np.all(a == n * (n - 1) / 2), a
    try:
        dist.allreduce(a, op="max", algorithm=SumOnly())
    except ValueError as exc:
        assert str(exc) == (f"allreduce (rank {r}): algorithm 'sum-only' does not implement op 'max': expected "
                            "one of 'sum', 'mean'"), str(exc)
    else:
        raise AssertionError("max on a sum-only algorithm did not raise")


def torch_names(world) -> None:
    n, r = world.size, world.rank
    a = np.full(4, r + 1.0)
    assert dist.all_reduce(a) is a and np.all(a == n * (n + 1) / 2)  # torch's default: sum
    t = dtrain.tensor(np.full(3, float(r)), dtype="float32")
    assert dist.all_reduce(t, op=dist.ReduceOp.MAX) is t and np.all(t.data == n - 1)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    assert np.all(t.data == n - 1)  # already reduced: every rank holds n - 1
    b = np.full(2, float(r))
    dist.all_reduce(b, op=dist.ReduceOp.AVG)
    assert np.all(b == (n - 1) / 2)
    h = dist.all_reduce(np.arange(5, dtype=np.int64) * (r + 1), op="max", async_op=True)
    assert np.array_equal(h.wait(), np.arange(5) * n)

    mine = np.arange(6, dtype=np.int32).reshape(2, 3) + 10 * r
    outs = [np.zeros((2, 3), np.int32) for _ in range(n)]
    assert dist.all_gather(outs, mine) is outs
    for q, out in enumerate(outs):
        assert np.array_equal(out, np.arange(6).reshape(2, 3) + 10 * q), (q, out)
    tensors = [dtrain.zeros(3) for _ in range(n)]
    h = dist.all_gather(tensors, dtrain.tensor(np.full(3, float(r)), dtype="float32"), async_op=True)
    assert h.wait() is tensors
    assert [float(t.data[0]) for t in tensors] == [float(q) for q in range(n)]
    try:
        dist.all_gather(outs[:-1] + [np.zeros(3, np.int32)], mine)
    except ValueError as exc:
        assert f"all_gather (rank {r}): tensor_list[{n - 1}] is ndarray (3,) int32" in str(exc), str(exc)
    else:
        raise AssertionError("a mis-shaped tensor_list entry did not raise")


def destroy_and_init_again(world) -> None:
    n = world.size
    assert dist.is_initialized() and dist.is_available()
    dist.destroy_process_group()
    assert world.closed and not dist.is_initialized()
    dist.destroy_process_group()  # nothing open: a no-op
    fresh = dist.init()
    assert fresh is not world and dist.is_initialized() and fresh.size == n
    assert np.all(dist.all_reduce(np.ones(3)) == n)


def main() -> None:
    world = dist.init()
    for check in (closed_forms, random_data, legacy_algorithm, torch_names):
        check(world)
        world.barrier()
    destroy_and_init_again(world)
    fresh = dist.get_world()
    print(f"reduce ops OK rank {fresh.rank} of {fresh.size}: {fresh.node_count} nodes", flush=True)


if __name__ == "__main__":
    run_or_abort(main)
