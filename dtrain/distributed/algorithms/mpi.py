"""MPI's own algorithms (MPI_Allreduce, MPI_Allgatherv): the reference dtrain's ring is measured against.

Half arrays are upcast to float32 for MPI_Allreduce (MPI has no portable half type) and cast back, so
the sum is taken in float32 as in the ring (max/min too: exact, the result is one of the inputs). The
bytes counted are what this rank hands to MPI (the library's own schedule is unknown); they count as
crossing nodes whenever the world spans nodes.
"""

from __future__ import annotations

from ...backend import get_array_module, is_half_dtype
from .. import comm as _comm
from .base import F32, REDUCE_OPS, AllreduceAlgorithm, mpi_op, mpi_type, offsets_of

__all__ = ["MPIAllreduce"]


class MPIAllreduce(AllreduceAlgorithm):
    """MPI_Allreduce (MPI_SUM, MPI_MAX, MPI_MIN) / MPI_Allgatherv of the MPI library in use."""

    name = "mpi"
    reduce_ops = REDUCE_OPS

    def allreduce(self, comm, flat, mean: bool, op: str = "sum") -> None:
        MPI = _comm._MPI
        xp = get_array_module(flat)
        work = flat
        if is_half_dtype(flat.dtype):
            work = comm.buffer("mpi.acc", flat.size, F32, xp)
            work[...] = flat
        comm.record_send(work.nbytes, comm.node_count > 1)
        comm.comm.Allreduce(MPI.IN_PLACE, [work, mpi_type(work.dtype)], op=mpi_op(op))
        if mean:
            xp.divide(work, comm.size, out=work)
        if work is not flat:
            flat[...] = work

    def allgather(self, comm, buf, counts: list[int]) -> None:
        MPI = _comm._MPI
        comm.record_send(counts[comm.rank], comm.node_count > 1)
        displs = [lo for lo, _ in offsets_of(counts)]
        comm.comm.Allgatherv(MPI.IN_PLACE, [buf, counts, displs, MPI.BYTE])
