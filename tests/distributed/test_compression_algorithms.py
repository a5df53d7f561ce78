"""Every compressor rides every all-reduce algorithm, and comm hooks: 4 ranks as 2 nodes under mpiexec
(mpi_compression_algorithms.py holds the rank-side assertions), plus the pairs that are errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import dtrain as dt
import dtrain.distributed as dist
from dtrain import nn
from dtrain.distributed import compression

SCRIPT = str(Path(__file__).parent / "ranks" / "mpi_compression_algorithms.py")


def test_every_compressor_over_every_algorithm_on_two_nodes(run_mpi):
    res = run_mpi(SCRIPT, 4, timeout=600, env={"DTRAIN_RANKS_PER_NODE": "2"})
    for r in range(4):
        assert f"compression x algorithms OK on rank {r}" in res.stdout, res.stdout


@pytest.mark.parametrize("spec", ["fp16", "bf16", "powersgd:2", "topk:0.1", "randomk:0.1", "qsgd:4", "signsgd"])
def test_host_compressors_with_nccl_are_an_error_naming_the_pair(spec):
    if spec == "bf16" and dt.bfloat16 is None:
        pytest.skip("ml_dtypes is not installed")
    c = compression.get(spec)
    match = rf"compression '{c.spec}' with algorithm 'nccl': the compressor works on host \(NumPy\) arrays"
    with pytest.raises(compression.CompressionError, match=match):
        compression.check_pair(c, "nccl")
    with pytest.raises(compression.CompressionError, match=match):
        dist.DistributedDataParallel(nn.Linear(3, 2), compression=spec, algorithm="nccl")


def test_none_with_nccl_is_allowed_and_ring_with_anything():
    compression.check_pair(compression.get("none"), "nccl")
    for spec in ("fp16", "topk:0.1", "powersgd:2"):
        for alg in ("ring", "mpi", "hierarchical"):
            compression.check_pair(compression.get(spec), alg)


def test_register_comm_hook_checks_the_hook():
    ddp = dist.DistributedDataParallel(nn.Linear(3, 2))
    with pytest.raises(TypeError, match=r"register_comm_hook: hook must be callable as hook\(state, bucket\), got int"):
        ddp.register_comm_hook(None, 3)


def test_a_hook_runs_on_a_world_of_one_without_being_called():
    # One rank has nothing to sum: the reducer never launches buckets, the gradients stay local.
    ddp = dist.DistributedDataParallel(nn.Linear(3, 2))
    calls = []
    ddp.register_comm_hook(None, lambda state, bucket: calls.append(bucket))
    import dtrain as dt

    (ddp(dt.tensor(np.ones((2, 3), np.float32))) ** 2).sum().backward()
    assert calls == [] and ddp.module.weight.grad is not None


def test_unknown_algorithm_is_named_with_the_registry():
    with pytest.raises(ValueError, match=r"^DistributedDataParallel: unknown algorithm 'tree': expected one of "
                                         r"'ring', 'mpi', 'hierarchical', 'nccl', 'shm'$"):
        dist.DistributedDataParallel(nn.Linear(3, 2), algorithm="tree")


def test_compressed_allreduce_checks_its_array_and_op():
    x = np.ones((4, 6))
    with pytest.raises(ValueError, match=r"allreduce \(rank 0\): works in place and needs a C-contiguous array"):
        dist.allreduce(x[:, ::2], op="sum", compression="topk:0.5")
    with pytest.raises(ValueError, match=r"^allreduce \(rank 0\): op 'max' with compression 'fp16': a compressed "
                                         r"all-reduce sums: expected 'sum' or 'mean'$"):
        dist.allreduce(x, op="max", compression="fp16")
