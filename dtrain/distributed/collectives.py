"""Collectives on arrays: all-reduce, reduce-scatter, all-gather and broadcast — argument checks and
dispatch to an algorithm (:mod:`dtrain.distributed.algorithms`), nothing else.

    import dtrain.distributed as dist
    dist.allreduce(grad, op="mean")                 # in place, ring; returns grad
    h = dist.allreduce(bucket, op="sum", async_op=True); ...; h.wait()
    mine = dist.reduce_scatter(flat, op="sum")      # this rank's chunk chunk_bounds(flat.size, size)[rank]
    full = dist.allgather(mine, counts=[hi - lo for lo, hi in dist.chunk_bounds(n, size)])

Arrays move through mpi4py's buffer interface only (``Isend``/``Irecv``/``Sendrecv``/``Allreduce``/
``Bcast``); nothing is pickled. Scratch space comes from :meth:`Communicator.buffer`, so a hot loop
allocates nothing big per call. Device (CuPy) arrays go to MPI directly under CUDA-aware MPI and
through reused pinned host buffers otherwise (:func:`dtrain.distributed.gpu.on_host`).

Rules shared by every function here: every rank calls the same collectives in the same order with
the same arguments (counts, dtypes, op, algorithm, root); arguments are validated before any
communication, so a bad call raises ValueError on every rank instead of hanging. With
``async_op=True`` the operation is queued on the Communicator's background thread and a
:class:`Handle` is returned; async operations run in submission order, so every rank must submit
them in the same order, and the caller must not touch the array until ``handle.wait()`` returns.
"""

from __future__ import annotations

import numpy as np

from ..backend import bfloat16, get_array_module
from . import comm as _comm
from .algorithms import PIPELINE_BYTES, PIPELINE_DEPTH, AllreduceAlgorithm, chunk_bounds, ring_allreduce_bytes
from .algorithms import get as get_algorithm
from .algorithms.base import host_sync, mpi_type, offsets_of
from .algorithms.ring import ring_reduce_scatter
from .comm import Communicator, Handle
from .gpu import on_host

__all__ = [
    "OPS",
    "PIPELINE_BYTES",
    "PIPELINE_DEPTH",
    "Handle",
    "allgather",
    "allreduce",
    "broadcast",
    "chunk_bounds",
    "reduce_scatter",
    "ring_allreduce_bytes",
]

OPS = ("sum", "mean")

_HALF = (np.dtype(np.float16),) if bfloat16 is None else (np.dtype(np.float16), np.dtype(bfloat16))
_FLOAT = _HALF + (np.dtype(np.float32), np.dtype(np.float64))
_INT = (np.dtype(np.int32), np.dtype(np.int64))


# ----------------------------------------------------------------------------------------------
# Argument checks (all before any communication)
# ----------------------------------------------------------------------------------------------


def resolve_comm(comm, what: str) -> Communicator:
    """``comm``, or the world when None; TypeError/RuntimeError for anything else or a closed one."""
    if comm is None:
        return _comm.get_world()
    if not isinstance(comm, Communicator):
        raise TypeError(f"{what}: comm must be a dtrain.distributed.Communicator (e.g. dist.get_world()) or None, "
                        f"got {type(comm).__name__}")
    if comm.closed:
        raise RuntimeError(f"{what}: this Communicator (rank {comm.rank}) was closed")
    return comm


def _check_array(array, what: str, comm: Communicator, inplace: bool):
    xp = get_array_module(array)
    if not isinstance(array, xp.ndarray):
        raise TypeError(f"{what} (rank {comm.rank}): expected a NumPy/CuPy array, got {type(array).__name__}")
    if array.dtype.hasobject:
        raise ValueError(f"{what} (rank {comm.rank}): dtype {array.dtype} cannot be communicated: expected a "
                         "numeric dtype")
    if inplace:
        if not array.flags.c_contiguous:
            raise ValueError(f"{what} (rank {comm.rank}): works in place and needs a C-contiguous array, got one "
                             f"with shape {array.shape} and strides {array.strides}; pass np.ascontiguousarray(a) "
                             "and copy the result back")
        if not array.flags.writeable:
            raise ValueError(f"{what} (rank {comm.rank}): works in place and needs a writeable array")
    return xp


def _check_op(op, what: str, comm: Communicator) -> None:
    if op not in OPS:
        raise ValueError(f"{what} (rank {comm.rank}): unknown op {op!r}: expected one of {', '.join(map(repr, OPS))}")


def _check_reduce_dtype(dtype, op: str, what: str, comm: Communicator) -> None:
    allowed = _FLOAT + (_INT if op == "sum" else ())
    if dtype not in allowed:
        names = ", ".join(str(d) for d in allowed)
        hint = " (integer arrays support op='sum' only)" if dtype in _INT else ""
        raise ValueError(f"{what} (rank {comm.rank}): unsupported dtype {dtype} for op {op!r}{hint}: expected one "
                         f"of {names}")


def _check_algorithm(algorithm, array, what: str, comm: Communicator) -> AllreduceAlgorithm:
    algo = get_algorithm(algorithm, what, comm.rank)
    if algo.device_only and get_array_module(array) is np:
        raise ValueError(f"{what} (rank {comm.rank}): algorithm {algo.name!r} needs a CuPy (device) array, got a "
                         "NumPy array; use 'ring' for host arrays")
    return algo


def _check_counts(counts, array, comm: Communicator) -> list[int]:
    n = comm.size
    if counts is None:
        return [int(array.size)] * n
    counts = list(counts)
    if len(counts) != n or any(isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 0 for c in counts):
        raise ValueError(f"allgather (rank {comm.rank}): counts must be {n} non-negative integers (one per "
                         f"rank), got {counts!r}")
    counts = [int(c) for c in counts]
    if counts[comm.rank] != array.size:
        raise ValueError(f"allgather (rank {comm.rank}): this rank contributes {array.size} elements but "
                         f"counts[{comm.rank}] is {counts[comm.rank]}")
    return counts


# ----------------------------------------------------------------------------------------------
# The collectives
# ----------------------------------------------------------------------------------------------


def allreduce(array, op: str = "mean", algorithm="ring", comm: Communicator | None = None,
              async_op: bool = False):
    """Reduce ``array`` over all ranks, in place; return it (or a :class:`Handle` when ``async_op``).

    Args:
        array: a C-contiguous, writeable array of any shape (float16, bfloat16, float32, float64; int32
            and int64 with op "sum"), the same shape and dtype on every rank.
        op: "sum", or "mean" (the sum divided by the world size).
        algorithm: a name from :data:`dtrain.distributed.algorithms.ALGORITHMS` — "ring" (dtrain's
            pipelined ring; bitwise identical on every rank), "hierarchical" (reduce within each node,
            ring across node leaders, broadcast within nodes; identical on every rank), "mpi"
            (MPI_Allreduce, the reference) or "nccl" (CuPy arrays only) — or an AllreduceAlgorithm object.
        comm: the Communicator (default: the world).
        async_op: queue it on the Communicator's background thread and return a Handle whose
            ``wait()`` returns ``array``; do not touch ``array`` before then.

    A count of 0 or a world of 1 communicates nothing (mean over one rank is the identity).
    ``dist.allreduce`` also takes ``compression=`` (:func:`dtrain.distributed.compression.allreduce`).

    >>> g = np.ones(3, np.float32); allreduce(g, op="sum") is g
    True
    """
    comm = resolve_comm(comm, "allreduce")
    algo = _check_algorithm(algorithm, array, "allreduce", comm)
    _check_op(op, "allreduce", comm)
    _check_array(array, "allreduce", comm, inplace=True)
    _check_reduce_dtype(array.dtype, op, "allreduce", comm)
    flat, mean = array.reshape(-1), op == "mean"
    if async_op:
        name = f"allreduce(op={op!r}, algorithm={algo.name!r}, {array.dtype}[{array.size}])"
        return comm.submit(name, _allreduce_job, algo, flat, mean, array)
    return _allreduce_job(comm, algo, flat, mean, array)


def _allreduce_job(comm: Communicator, algo: AllreduceAlgorithm, flat, mean: bool, array):
    if flat.size and comm.size > 1:
        with comm.watch(f"allreduce {algo.name}"):
            if not algo.host_staging:
                algo.allreduce(comm, flat, mean)
                return array
            with on_host(comm, flat, "allreduce") as wire:
                algo.allreduce(comm, wire, mean)
    return array


def reduce_scatter(array, op: str = "sum", comm: Communicator | None = None, async_op: bool = False):
    """Reduce the flat ``array`` over all ranks and return this rank's chunk of the result (ring).

    Every rank passes the full array (any shape, taken flat; it is not modified). Rank ``r`` gets a new
    array holding the reduced elements ``chunk_bounds(array.size, size)[r]`` (possibly empty). Same
    dtypes and ops as :func:`allreduce`; with ``async_op`` returns a Handle whose ``wait()`` gives it.

    >>> reduce_scatter(np.arange(4.0), op="sum").shape   # world of 1: the whole array
    (4,)
    """
    comm = resolve_comm(comm, "reduce_scatter")
    _check_op(op, "reduce_scatter", comm)
    _check_array(array, "reduce_scatter", comm, inplace=False)
    _check_reduce_dtype(array.dtype, op, "reduce_scatter", comm)
    xp = get_array_module(array)
    flat = xp.ascontiguousarray(array).reshape(-1)
    if async_op:
        name = f"reduce_scatter(op={op!r}, {array.dtype}[{array.size}])"
        return comm.submit(name, _reduce_scatter_job, flat, op == "mean")
    return _reduce_scatter_job(comm, flat, op == "mean")


def _reduce_scatter_job(comm: Communicator, flat, mean: bool):
    xp = get_array_module(flat)
    bounds = chunk_bounds(flat.size, comm.size)
    lo, hi = bounds[comm.rank]
    if comm.size == 1 or flat.size == 0:
        return flat[lo:hi].copy()
    with comm.watch("reduce_scatter"), on_host(comm, flat, "reduce_scatter", copy_out=False) as src:
        hx = get_array_module(src)
        dst = comm.buffer("reduce_scatter.out", src.size, src.dtype, hx)
        ring_reduce_scatter(comm, src, dst, bounds, mean)
        out = dst[lo:hi].copy()
    return out if hx is xp else xp.asarray(out)


def allgather(array, counts=None, comm: Communicator | None = None, async_op: bool = False,
              algorithm="ring"):
    """Gather every rank's flat ``array`` and return their concatenation in rank order.

    Args:
        array: this rank's contribution (any shape, taken flat; any numeric dtype, the same on all ranks).
        counts: the number of elements each rank contributes, when they differ (e.g. the chunk lengths
            of :func:`chunk_bounds`); the same list on every rank. Default: all equal to ``array.size``.
        comm, async_op: as for :func:`allreduce` (``wait()`` returns the concatenation).
        algorithm: as for :func:`allreduce` ("ring" by default; "hierarchical" gathers within each node
            and runs the ring over the node leaders; "mpi" is MPI_Allgatherv).

    >>> allgather(np.arange(3)).tolist()   # world of 1
    [0, 1, 2]
    """
    comm = resolve_comm(comm, "allgather")
    algo = _check_algorithm(algorithm, array, "allgather", comm)
    _check_array(array, "allgather", comm, inplace=False)
    counts = _check_counts(counts, array, comm)
    xp = get_array_module(array)
    flat = xp.ascontiguousarray(array).reshape(-1)
    if async_op:
        return comm.submit(f"allgather({array.dtype}, counts={counts})", _allgather_job, algo, flat, counts)
    return _allgather_job(comm, algo, flat, counts)


def _allgather_job(comm: Communicator, algo: AllreduceAlgorithm, flat, counts: list[int]):
    xp = get_array_module(flat)
    blocks = offsets_of(counts)
    out = xp.empty(blocks[-1][1], dtype=flat.dtype)
    lo, hi = blocks[comm.rank]
    out[lo:hi] = flat
    if comm.size > 1 and out.size:
        size = flat.dtype.itemsize
        with comm.watch("allgather"):
            if not algo.host_staging:
                algo.allgather(comm, out.view(np.uint8), [c * size for c in counts])
            else:
                with on_host(comm, out.view(np.uint8), "allgather") as wire:
                    algo.allgather(comm, wire, [c * size for c in counts])
    return out


def broadcast(array, root: int = 0, comm: Communicator | None = None, async_op: bool = False):
    """Overwrite ``array`` on every rank with root's ``array`` (in place, MPI_Bcast); return it.

    ``array`` must be C-contiguous and writeable, with the same shape and dtype on every rank.

    >>> broadcast(np.arange(3), root=0).tolist()
    [0, 1, 2]
    """
    comm = resolve_comm(comm, "broadcast")
    if isinstance(root, bool) or not isinstance(root, (int, np.integer)) or not 0 <= root < comm.size:
        raise ValueError(f"broadcast (rank {comm.rank}): root must be a rank in [0, {comm.size}), got {root!r}")
    _check_array(array, "broadcast", comm, inplace=True)
    if async_op:
        return comm.submit(f"broadcast(root={root}, {array.dtype}[{array.size}])", _broadcast_job, array, int(root))
    return _broadcast_job(comm, array, int(root))


def _broadcast_job(comm: Communicator, array, root: int):
    if comm.size > 1 and array.size:
        host_sync(get_array_module(array))
        if comm.rank == root:
            comm.record_send(array.nbytes, comm.node_count > 1)
        with comm.watch(f"broadcast from rank {root}"), \
                on_host(comm, array.reshape(-1).view(np.uint8), "broadcast") as wire:
            comm.comm.Bcast([wire, mpi_type(np.uint8)], root=root)
    return array

