"""What every all-reduce algorithm shares: the interface, the wire format of half types, MPI datatypes.

An algorithm is a small object with two collective methods over a flat, C-contiguous host (or, for
NCCL, device) array, called only after :mod:`dtrain.distributed.collectives` validated the arguments:

* ``allreduce(comm, flat, mean, op="sum")``: replace ``flat`` with the reduction over the ranks, in place:
  the sum (divided by the world size when ``mean``), or with ``op`` "max"/"min" the elementwise maximum or
  minimum (``mean`` is then False). An algorithm lists the ops it implements in ``reduce_ops``; the
  collectives refuse the others before anything is sent;
* ``allgather(comm, buf, counts)``: ``buf`` (uint8) holds every rank's block, ``counts[r]`` bytes for
  rank r, in rank order, with this rank's block filled in; afterwards every block is filled.

Both are called only with ``comm.size > 1`` and a non-empty array. Each send is counted with
``comm.record_send(nbytes, inter_node)`` so byte accounting (and the cost model's validation) sees what
each schedule really moves within and between nodes.
"""

from __future__ import annotations

import math

import numpy as np

from ...backend import is_half_dtype
from ...spec import is_int
from .. import comm as _comm

__all__ = ["REDUCE_OPS", "AllreduceAlgorithm", "chunk_bounds", "common_power_of_two", "host_sync", "mpi_op", "mpi_type",
           "wire"]

F32 = np.dtype(np.float32)
U16 = np.dtype(np.uint16)

# The elementwise reductions an algorithm may be asked for ("mean" is "sum" with ``mean=True``).
REDUCE_OPS = ("sum", "max", "min")


class AllreduceAlgorithm:
    """An all-reduce strategy (see the module docstring for the contract of the two methods).

    Class attributes: ``name`` (the registry key), ``host_staging`` (device arrays go through pinned
    host buffers unless MPI is CUDA-aware; False when the algorithm reads device memory itself),
    ``host_memory`` (the algorithm reads the arrays with NumPy itself, not through MPI: device arrays are
    staged through host buffers even under CUDA-aware MPI),
    ``device_only`` (accepts device arrays only), ``reduce_ops`` (the ops of :data:`REDUCE_OPS` its
    ``allreduce`` implements; "sum" only unless a subclass says more, so a subclass written before
    max/min existed is refused them by the argument checks instead of silently summing).
    """

    name = ""
    host_staging = True
    host_memory = False
    device_only = False
    reduce_ops: tuple[str, ...] = ("sum",)

    def allreduce(self, comm, flat, mean: bool, op: str = "sum") -> None:
        raise NotImplementedError(f"{type(self).__name__} does not implement allreduce")

    def allgather(self, comm, buf, counts: list[int]) -> None:
        raise NotImplementedError(f"all-reduce algorithm {self.name!r} has no all-gather")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def chunk_bounds(count: int, parts: int) -> list[tuple[int, int]]:
    """Split ``range(count)`` into ``parts`` contiguous ``[start, stop)`` chunks of near-equal length.

    The first ``count % parts`` chunks are one element longer; with ``count < parts`` the last
    chunks are empty.

    >>> chunk_bounds(10, 4)
    [(0, 3), (3, 6), (6, 8), (8, 10)]
    """
    if not is_int(count) or count < 0:
        raise ValueError(f"chunk_bounds: count must be a non-negative integer, got {count!r}")
    if not is_int(parts) or parts < 1:
        raise ValueError(f"chunk_bounds: parts must be a positive integer, got {parts!r}")
    base, extra = divmod(int(count), int(parts))
    bounds = []
    start = 0
    for i in range(int(parts)):
        stop = start + base + (1 if i < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def common_power_of_two(total: float, squares: float, n: int) -> float:
    """The weight every one of ``n`` ranks has, when they all have the same one and it is a power of two; else 0.

    ``total`` and ``squares`` are the sums of the ranks' weights (sample counts) and of their squares: the
    weights are all equal exactly when n * squares == total ** 2. A power-of-two weight multiplies exactly and
    commutes with the rounding of a sum, so a weighted sum may add the raw values and fold the weight into its
    final scale: the same bits, one pass fewer. Only for totals below 2**26, where the test is exact in float64.
    """
    common = total / n if n else 0.0
    if 0 < total < 2**26 and squares * n == total * total and math.frexp(common)[0] == 0.5:
        return common
    return 0.0


def offsets_of(counts: list[int]) -> list[tuple[int, int]]:
    """``[start, stop)`` of consecutive blocks of the given lengths."""
    out, pos = [], 0
    for c in counts:
        out.append((pos, pos + c))
        pos += c
    return out


def wire(flat):
    """The array as it travels: half types as uint16 words, everything else as itself."""
    return flat.view(U16) if is_half_dtype(flat.dtype) else flat


def host_sync(xp) -> None:
    """MPI reads device memory directly (CUDA-aware MPI): the kernels that wrote it must be finished."""
    if xp is not np:
        xp.cuda.get_current_stream().synchronize()


_MPI_TYPES: dict = {}


def mpi_op(op: str):
    """The MPI reduction operation of an op of :data:`REDUCE_OPS` (MPI.SUM, MPI.MAX, MPI.MIN)."""
    MPI = _comm._load_mpi()
    return {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}[op]


def mpi_type(dtype):
    """The MPI datatype of a wire dtype (float32/float64/int32/int64/uint16/uint8)."""
    if not _MPI_TYPES:
        MPI = _comm._load_mpi()
        _MPI_TYPES.update({
            np.dtype(np.float32): MPI.FLOAT, np.dtype(np.float64): MPI.DOUBLE, np.dtype(np.int32): MPI.INT32_T,
            np.dtype(np.int64): MPI.INT64_T, U16: MPI.UINT16_T, np.dtype(np.uint8): MPI.BYTE,
        })
    return _MPI_TYPES[np.dtype(dtype)]
