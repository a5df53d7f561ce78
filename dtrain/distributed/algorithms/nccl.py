"""ncclAllReduce / ncclAllGather over cupy.cuda.nccl: device (CuPy) arrays only; optional (CuPy built
with NCCL). The NCCL communicator is made on first use from the Communicator's ranks (rank 0 makes the
unique id, MPI broadcasts it) and kept in the Communicator's cache for its life.
"""

from __future__ import annotations

import numpy as np

from ...backend import get_array_module
from .base import REDUCE_OPS, AllreduceAlgorithm, offsets_of

__all__ = ["NcclAllreduce", "load_nccl", "nccl_communicator", "nccl_op"]

_NCCL_TYPES = {"float16": "NCCL_FLOAT16", "float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64",
               "int32": "NCCL_INT32", "int64": "NCCL_INT64", "bfloat16": "NCCL_BFLOAT16", "uint8": "NCCL_UINT8"}
_NCCL_OPS = {"sum": "NCCL_SUM", "max": "NCCL_MAX", "min": "NCCL_MIN"}


class NcclAllreduce(AllreduceAlgorithm):
    """ncclAllReduce (ncclSum, then a division for the mean; ncclMax, ncclMin) and ncclAllGather on device
    arrays."""

    name = "nccl"
    host_staging = False  # NCCL reads device memory itself
    device_only = True
    reduce_ops = REDUCE_OPS

    def allreduce(self, comm, flat, mean: bool, op: str = "sum") -> None:
        nccl, nc, xp, stream = _setup(comm, flat, "allreduce")
        comm.record_send(2 * (comm.size - 1) * flat.nbytes // comm.size, comm.node_count > 1)  # a ring's bytes
        nc.allReduce(flat.data.ptr, flat.data.ptr, flat.size, _code(nccl, comm, flat), nccl_op(nccl, op), stream.ptr)
        if mean:
            xp.divide(flat, comm.size, out=flat)
        stream.synchronize()

    def allgather(self, comm, buf, counts: list[int]) -> None:
        if len(set(counts)) != 1:
            raise ValueError(f"allgather (rank {comm.rank}): algorithm 'nccl' gathers equal blocks only, got "
                             f"block sizes {counts}")
        nccl, nc, _, stream = _setup(comm, buf, "allgather")
        lo, hi = offsets_of(counts)[comm.rank]
        comm.record_send((comm.size - 1) * (hi - lo), comm.node_count > 1)
        nc.allGather(buf[lo:hi].data.ptr, buf.data.ptr, hi - lo, nccl.NCCL_UINT8, stream.ptr)
        stream.synchronize()


def _setup(comm, arr, what: str):
    xp = get_array_module(arr)
    if xp is np:
        raise ValueError(f"{what} (rank {comm.rank}): algorithm 'nccl' needs a CuPy (device) array, got a NumPy "
                         "array; use 'ring' for host arrays")
    return load_nccl(), nccl_communicator(comm), xp, xp.cuda.get_current_stream()


def _code(nccl, comm, flat):
    code = getattr(nccl, _NCCL_TYPES.get(flat.dtype.name, ""), None)
    if code is None:
        raise ValueError(f"allreduce (rank {comm.rank}): NCCL cannot reduce {flat.dtype}")
    return code


def nccl_op(nccl, op: str) -> int:
    """The NCCL reduction code of an op of :data:`~dtrain.distributed.algorithms.base.REDUCE_OPS`
    (``nccl.NCCL_SUM``, ``NCCL_MAX``, ``NCCL_MIN``); ValueError for any other op."""
    name = _NCCL_OPS.get(op)
    if name is None:
        raise ValueError(f"allreduce: algorithm 'nccl': unknown op {op!r}: expected one of "
                         f"{', '.join(map(repr, REDUCE_OPS))}")
    return getattr(nccl, name)


def load_nccl():
    """cupy.cuda.nccl, or RuntimeError saying what is missing."""
    try:
        from cupy.cuda import nccl
    except Exception as exc:
        raise RuntimeError(f"algorithm 'nccl' needs CuPy with NCCL (cupy.cuda.nccl): {type(exc).__name__}: {exc}") \
            from None
    if not getattr(nccl, "available", True):
        raise RuntimeError("algorithm 'nccl': this CuPy was built without NCCL support")
    return nccl


def nccl_communicator(comm):
    """The NCCL communicator of a dtrain Communicator, built on first use (collective over ``comm``)."""
    held = comm.cache.get("nccl")
    if held is not None:
        return held
    nccl = load_nccl()
    uid = nccl.get_unique_id() if comm.rank == 0 else None
    with comm.watch("NCCL set-up (unique id broadcast)"):
        uid = comm.comm.bcast(uid, root=0)  # a small control message (a tuple of ints)
    held = comm.cache["nccl"] = nccl.NcclCommunicator(comm.size, uid, comm.rank)
    return held
