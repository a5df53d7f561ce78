"""max/min reductions for every algorithm, and torch.distributed's spellings (all_reduce, all_gather,
ReduceOp, destroy_process_group, is_available): multi-rank checks under mpiexec (ranks/mpi_reduce_ops.py,
the same assertions at every world size) and exact errors on a world of 1."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest

import dtrain
import dtrain.distributed as dist
from dtrain.distributed import collectives as C
from dtrain.distributed.algorithms import ALGORITHMS, REDUCE_OPS, AllreduceAlgorithm, ring_reduce_scatter
from dtrain.distributed.algorithms.nccl import nccl_op

SCRIPT = str(Path(__file__).parent / "ranks" / "mpi_reduce_ops.py")


@pytest.mark.parametrize("n, ppn, nodes", [(1, None, 1), (2, None, 1), (3, None, 1), (4, None, 1), (4, 2, 2),
                                           (3, 2, 2)],
                         ids=["1-rank", "2-ranks", "3-ranks", "4-ranks", "4-ranks-as-2x2", "3-ranks-as-2+1"])
def test_max_min_and_torch_names_under_mpiexec(run_mpi, n, ppn, nodes):
    env = {"DTRAIN_RANKS_PER_NODE": str(ppn)} if ppn else {}
    res = run_mpi(SCRIPT, n, timeout=240, env=env)
    for r in range(n):
        assert f"reduce ops OK rank {r} of {n}: {nodes} nodes" in res.stdout, res.stdout


def test_ops_listed_and_reduce_op_spellings():
    assert C.OPS == ("sum", "mean", "max", "min") and dist.OPS is C.OPS
    assert REDUCE_OPS == ("sum", "max", "min")
    assert (dist.ReduceOp.SUM, dist.ReduceOp.AVG, dist.ReduceOp.MAX, dist.ReduceOp.MIN) == ("sum", "mean", "max",
                                                                                           "min")
    for name, algo in ALGORITHMS.items():
        assert algo.reduce_ops == REDUCE_OPS, name
    assert AllreduceAlgorithm.reduce_ops == ("sum",)  # a subclass must declare max/min to be offered them


@pytest.mark.parametrize("call, bad", [
    (lambda a: C.allreduce(a, op="prod"), "prod"),
    (lambda a: C.allreduce(a, op="prod", async_op=True), "prod"),
    (lambda a: dist.allreduce(a, op="prod"), "prod"),
    (lambda a: dist.all_reduce(a, op="prod"), "prod"),
    (lambda a: dist.all_reduce(a, op="MAX"), "MAX"),
], ids=["allreduce", "allreduce-async", "dist.allreduce", "all_reduce", "all_reduce-uppercase"])
def test_bad_op_is_an_exact_error_listing_the_ops(call, bad):
    a = np.ones(3, np.float32)
    with pytest.raises(ValueError) as info:
        call(a)
    assert str(info.value) == f"allreduce (rank 0): unknown op {bad!r}: expected one of 'sum', 'mean', 'max', 'min'"
    assert np.all(a == 1)


def test_bad_op_in_reduce_scatter_and_the_ring_itself():
    with pytest.raises(ValueError) as info:
        C.reduce_scatter(np.ones(4), op="prod")
    assert str(info.value) == "reduce_scatter (rank 0): unknown op 'prod': expected one of 'sum', 'mean', 'max', 'min'"
    world = dist.init()
    src = np.ones(4)
    with pytest.raises(ValueError) as info:
        ring_reduce_scatter(world, src, src.copy(), C.chunk_bounds(4, 1), False, op="mean")
    assert str(info.value) == "ring reduce-scatter (rank 0): unknown op 'mean': expected one of 'sum', 'max', 'min'"


def test_integer_arrays_take_max_and_min_but_not_mean():
    for op in ("sum", "max", "min"):
        for dtype in (np.int32, np.int64):
            a = np.arange(5, dtype=dtype)
            assert C.allreduce(a, op=op) is a and np.array_equal(a, np.arange(5))
    with pytest.raises(ValueError) as info:
        C.allreduce(np.ones(3, np.int64), op="mean")
    assert "unsupported dtype int64 for op 'mean' (integer arrays support op 'sum', 'max' and 'min')" in str(info.value)


def test_sum_only_algorithm_is_refused_max_with_the_ops_it_has():
    class SumOnly(AllreduceAlgorithm):
        name = "sum-only"

        def allreduce(self, comm, flat, mean):
            raise AssertionError("never called on a world of 1")

    for op in ("max", "min"):
        with pytest.raises(ValueError) as info:
            C.allreduce(np.ones(3), op=op, algorithm=SumOnly())
        assert str(info.value) == (f"allreduce (rank 0): algorithm 'sum-only' does not implement op '{op}': "
                                   "expected one of 'sum', 'mean'")
    assert np.all(C.allreduce(np.ones(3), op="mean", algorithm=SumOnly()) == 1)


def test_nccl_op_codes():
    nccl = types.SimpleNamespace(NCCL_SUM=0, NCCL_PROD=1, NCCL_MAX=2, NCCL_MIN=3)  # cupy.cuda.nccl's values
    assert [nccl_op(nccl, op) for op in ("sum", "max", "min")] == [0, 2, 3]
    with pytest.raises(ValueError) as info:
        nccl_op(nccl, "prod")
    assert str(info.value) == "allreduce: algorithm 'nccl': unknown op 'prod': expected one of 'sum', 'max', 'min'"


def test_all_reduce_defaults_to_sum_and_takes_tensors():
    a = np.full(3, 2.0)
    assert dist.all_reduce(a) is a and np.all(a == 2.0)
    t = dtrain.tensor([1.0, -2.0])
    assert dist.all_reduce(t, op=dist.ReduceOp.MIN) is t and t.data.tolist() == [1.0, -2.0]
    h = dist.all_reduce(np.ones(2), op="max", async_op=True)
    assert h.wait().tolist() == [1.0, 1.0]


def test_all_gather_fills_the_list_and_checks_it():
    out = [np.zeros((2, 2), np.float32)]
    mine = np.arange(4, dtype=np.float32).reshape(2, 2)
    assert dist.all_gather(out, mine) is out and np.array_equal(out[0], mine) and out[0] is not mine
    ts = [dtrain.zeros(2)]
    dist.all_gather(ts, dtrain.tensor([3.0, 4.0]))
    assert ts[0].data.tolist() == [3.0, 4.0]
    cases = [
        ([np.zeros(3), np.zeros(3)], np.ones(3),
         "all_gather (rank 0): tensor_list must be a list of 1 arrays (one per rank), got list of length 2"),
        (np.zeros(3), np.ones(3),
         "all_gather (rank 0): tensor_list must be a list of 1 arrays (one per rank), got ndarray"),
        ([np.zeros(3, np.float32)], np.ones(3),
         "all_gather (rank 0): tensor_list[0] is ndarray (3,) float32: expected a numpy array of tensor's shape "
         "(3,) and dtype float64"),
        ([[0.0, 0.0, 0.0]], np.ones(3),
         "all_gather (rank 0): tensor_list[0] is list: expected a numpy array of tensor's shape (3,) and dtype "
         "float64"),
    ]
    for tensor_list, tensor, message in cases:
        with pytest.raises(ValueError) as info:
            dist.all_gather(tensor_list, tensor)
        assert str(info.value) == message
    ro = np.zeros(3)
    ro.flags.writeable = False
    with pytest.raises(ValueError) as info:
        dist.all_gather([ro], np.ones(3))
    assert str(info.value) == "all_gather (rank 0): tensor_list[0] is not writeable"


def test_destroy_process_group_closes_the_world_and_init_builds_a_new_one():
    assert dist.is_available()
    world = dist.init()
    assert dist.is_initialized()
    dist.destroy_process_group()
    assert world.closed and not dist.is_initialized() and dist.current_world() is None
    dist.destroy_process_group()  # nothing open: a no-op
    with pytest.raises(RuntimeError, match=r"allreduce: this Communicator \(rank 0\) was closed"):
        C.allreduce(np.ones(2), comm=world)
    fresh = dist.init()
    assert fresh is not world and dist.is_initialized() and dist.get_world() is fresh
    assert dist.all_reduce(np.ones(2)).tolist() == [1.0, 1.0]
