"""Rank-side checks of the hierarchical all-reduce (run by test_hierarchical.py under mpiexec, with
DTRAIN_RANKS_PER_NODE splitting the world into fake nodes)."""

from __future__ import annotations

import numpy as np
from mpi_harness import run_or_abort

import dtrain
import dtrain.distributed as dist
from dtrain import nn


def staging(world):
    """The host-staging path device arrays take without CUDA-aware MPI, forced on NumPy arrays: every
    collective gives the same bits as without staging."""
    n, r = world.size, world.rank
    x = np.random.default_rng(r).standard_normal(5000)
    plain = {}
    for forced in (False, True):
        world.force_staging = forced
        try:
            out = {}
            for alg in ("ring", "hierarchical", "mpi"):
                a = x.copy()
                dist.allreduce(a, op="mean", algorithm=alg)
                out[alg] = a
            out["reduce_scatter"] = dist.reduce_scatter(x, op="sum")
            out["allgather"] = dist.allgather(np.full(3, r, dtype=np.int64))
            b = x.copy() if r == n - 1 else np.zeros_like(x)
            out["broadcast"] = dist.broadcast(b, root=n - 1)
        finally:
            world.force_staging = False
        if not forced:
            plain = out
        else:
            for k, v in out.items():
                assert np.array_equal(v, plain[k]), f"staged {k} differs"
    assert world.force_staging is False


def main():
    world = dist.init()
    n, r = world.size, world.rank
    # 300_001 float64 > the ring's pipeline piece: the ring's pipelined path; 1_200_001 float32/64/int64 >
    # the hierarchical piece (4 MiB): the node's reduce and broadcast pipelined with the leaders' ring.
    sizes = (1, 7, 1000, 300_001, 1_200_001)
    for dtype in ("float64", "float32", "int64", "float16", "bfloat16"):
        if dtype == "bfloat16" and dtrain.bfloat16 is None:
            continue
        for count in sizes:
            rng = np.random.default_rng(1000 * r + count)
            base = (rng.integers(-50, 50, count) if dtype == "int64" else rng.integers(-8, 8, count) / 4)
            results = {}
            for alg in ("ring", "hierarchical", "mpi"):
                a = np.ascontiguousarray(base.astype(dtrain.bfloat16 if dtype == "bfloat16" else dtype))
                dist.allreduce(a, op="sum", algorithm=alg)
                results[alg] = a
            # Small integers (in quarters) add exactly in every order: all three give the same bits.
            assert np.array_equal(results["hierarchical"], results["ring"]), (dtype, count)
            assert np.array_equal(results["hierarchical"], results["mpi"]), (dtype, count)
            # Arbitrary floats: hierarchical adds in another order than the ring (close), and every rank
            # holds the same bits.
            if dtype in ("float64", "float32"):
                x = np.random.default_rng(r).standard_normal(count).astype(dtype)
                h, g = x.copy(), x.copy()
                dist.allreduce(h, op="mean", algorithm="hierarchical")
                dist.allreduce(g, op="mean", algorithm="ring")
                np.testing.assert_allclose(h, g, rtol=1e-5 if dtype == "float32" else 1e-12, atol=1e-6)
                everyone = world.comm.allgather(h.tobytes())
                assert all(e == everyone[0] for e in everyone), "ranks differ after hierarchical"
    # All-gather over every algorithm: the same blocks in rank order (equal and unequal block sizes).
    for counts in (None, [(3 * q + 1) % 5 for q in range(n)], [0] * n):
        mine = np.arange(n if counts is None else counts[r], dtype=np.int64) + 1000 * r
        want = dist.allgather(mine, counts=counts)
        for alg in ("hierarchical", "mpi"):
            got = dist.allgather(mine, counts=counts, algorithm=alg)
            assert np.array_equal(got, want), (alg, counts, got, want)
    # DDP on the hierarchical algorithm: the same gradients as the ring (float64, 3 steps).
    dtrain.manual_seed(0)
    params = {}
    for alg in ("ring", "hierarchical"):
        dtrain.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).to(dtype="float64")
        ddp = dist.DistributedDataParallel(model, algorithm=alg, bucket_cap_mb=0.001)
        x = np.random.default_rng(r).standard_normal((5, 6))
        for _ in range(3):
            model.zero_grad()
            (ddp(dtrain.tensor(x)) ** 2).sum().backward()
        params[alg] = [p.grad.copy() for p in model.parameters()]
        ddp.remove_hooks()
    for a, b in zip(params["ring"], params["hierarchical"]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    staging(world)
    print(f"hierarchical OK rank {r} of {n}: {world.node_count} nodes, local rank {world.local_rank} of "
          f"{world.local_size}", flush=True)


if __name__ == "__main__":
    run_or_abort(main)
