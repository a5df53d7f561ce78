"""All-reduce algorithms: one small object per strategy behind one interface (:class:`AllreduceAlgorithm`:
``allreduce(comm, flat, mean, op="sum")`` and ``allgather(comm, buf, counts)``), chosen by name. Every
built-in algorithm reduces with "sum" (and the mean), "max" and "min" (:data:`REDUCE_OPS`).

==============  ===========  ====================  ===============  ===========================================
name            arrays       needs                 bit-identical?   use when
==============  ===========  ====================  ===============  ===========================================
``ring``        host, device nothing (mpi4py p2p)  yes, every rank  the default; bandwidth-optimal, large
                (staged)                                            buffers (>= 256 KB), one node or a flat
                                                                    network
``hierarchical`` host, device nothing; several     yes, every rank  several ranks per node on a slower network:
                (staged)     ranks per node                         one ring over the nodes instead of every
                                                                    rank (DTRAIN_RANKS_PER_NODE fakes nodes)
``mpi``         host, device the MPI library's     as the library   small messages (latency-bound), or to compare
                (staged)     own algorithms        (usually yes)    against the MPI library
``nccl``        device only  CuPy built with NCCL  as NCCL          GPUs with NCCL (NVLink, InfiniBand)
``shm``         host, device every rank on one     yes, every rank  one node, large buffers: no copies through
                (via host)   node (MPI-3 shared                     MPI's buffers (ranks read each other's
                             memory windows)                        memory directly); DDP keeps its buckets
                                                                    in a window and sums them in place
==============  ===========  ====================  ===============  ===========================================

"staged": device arrays go through pinned host buffers unless MPI is CUDA-aware
(:mod:`dtrain.distributed.gpu`). Every algorithm has an all-gather too, so every compressor rides every
algorithm (:mod:`dtrain.distributed.compression`); ``nccl`` gathers equal blocks only.

A new algorithm is one file here with an :class:`AllreduceAlgorithm` subclass and one entry in
:data:`ALGORITHMS`; :func:`get` also accepts an instance (e.g. ``RingAllreduce(pipeline_bytes=1 << 19)``).
"""

from __future__ import annotations

from .base import REDUCE_OPS, AllreduceAlgorithm, chunk_bounds
from .hierarchical import HierarchicalAllreduce
from .mpi import MPIAllreduce
from .nccl import NcclAllreduce
from .ring import (
    PIPELINE_BYTES,
    PIPELINE_DEPTH,
    RingAllreduce,
    ring_allgather,
    ring_allreduce_bytes,
    ring_reduce_scatter,
)
from .shm import SharedMemoryAllreduce

__all__ = [
    "ALGORITHMS", "PIPELINE_BYTES", "PIPELINE_DEPTH", "REDUCE_OPS", "AllreduceAlgorithm", "HierarchicalAllreduce",
    "MPIAllreduce", "NcclAllreduce", "RingAllreduce", "chunk_bounds", "get", "ring_allgather", "ring_allreduce_bytes",
    "ring_reduce_scatter", "SharedMemoryAllreduce",
]

ALGORITHMS: dict[str, AllreduceAlgorithm] = {
    a.name: a for a in (RingAllreduce(), MPIAllreduce(), HierarchicalAllreduce(), NcclAllreduce(),
                         SharedMemoryAllreduce())
}


def get(algorithm, what: str = "allreduce", rank: int | None = None) -> AllreduceAlgorithm:
    """The algorithm named ``algorithm`` (a key of :data:`ALGORITHMS`), or ``algorithm`` itself when it is an
    :class:`AllreduceAlgorithm`; else ValueError naming the bad value (and ``rank``)."""
    if isinstance(algorithm, AllreduceAlgorithm):
        return algorithm
    found = ALGORITHMS.get(algorithm) if isinstance(algorithm, str) else None
    if found is None:
        where = "" if rank is None else f" (rank {rank})"
        raise ValueError(f"{what}{where}: unknown algorithm {algorithm!r}: expected one of "
                         f"{', '.join(map(repr, ALGORITHMS))}")
    return found
