"""Rank-side GPU checks under mpiexec (run by test_gpu_dist.py, only where CuPy sees a GPU): collectives on
CuPy arrays equal the NumPy results for every algorithm (CUDA-aware or staged), and DDP on the GPU
equals DDP on the CPU in float32 to 1e-5 relative."""

from __future__ import annotations

import cupy as cp
import numpy as np
from mpi_harness import run_or_abort

import dtrain
import dtrain.distributed as dist
from dtrain import nn


def main():
    world = dist.init()
    r = world.rank
    cp.cuda.Device(world.local_rank % cp.cuda.runtime.getDeviceCount()).use()
    x = np.random.default_rng(r).standard_normal(300_001).astype(np.float32)
    from dtrain.distributed.algorithms.nccl import load_nccl

    try:
        load_nccl()
        algorithms = ("ring", "hierarchical", "mpi", "nccl")
    except RuntimeError:  # CuPy without NCCL: the optional backend is not there
        algorithms = ("ring", "hierarchical", "mpi")
    for alg in algorithms:
        host, dev = x.copy(), cp.asarray(x)
        if alg == "nccl":  # the NumPy reference for NCCL is the ring
            dist.allreduce(host, op="mean", algorithm="ring")
            dist.allreduce(dev, op="mean", algorithm="nccl")
            np.testing.assert_allclose(cp.asnumpy(dev), host, rtol=1e-5, atol=1e-6)
            continue
        dist.allreduce(host, op="mean", algorithm=alg)
        dist.allreduce(dev, op="mean", algorithm=alg)
        np.testing.assert_allclose(cp.asnumpy(dev), host, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(cp.asnumpy(dist.reduce_scatter(cp.asarray(x), op="sum")),
                                  dist.reduce_scatter(x, op="sum"))
    np.testing.assert_array_equal(cp.asnumpy(dist.allgather(cp.full(3, r, dtype=cp.int64))),
                                  dist.allgather(np.full(3, r, dtype=np.int64)))
    grads = {}
    for device in ("cpu", "cuda"):
        dtrain.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4)).to(device)
        ddp = dist.DistributedDataParallel(model)
        xb = dtrain.tensor(np.random.default_rng(r).standard_normal((6, 8)), dtype="float32", device=device)
        (ddp(xb) ** 2).sum().backward()
        grads[device] = [dtrain.backend.to_device(p.grad, "cpu") for p in model.parameters()]
        ddp.remove_hooks()
    for c, g in zip(grads["cpu"], grads["cuda"]):
        np.testing.assert_allclose(g, c, rtol=1e-5, atol=1e-6)
    print(f"gpu OK rank {r}", flush=True)


if __name__ == "__main__":
    run_or_abort(main)
