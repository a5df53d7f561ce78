"""Collectives on arrays: all-reduce, reduce-scatter, all-gather and broadcast — argument checks and
dispatch to an algorithm (:mod:`dtrain.distributed.algorithms`), nothing else.

    import dtrain.distributed as dist
    dist.allreduce(grad, op="mean")                 # in place, ring; returns grad
    h = dist.allreduce(bucket, op="sum", async_op=True); ...; h.wait()
    mine = dist.reduce_scatter(flat, op="sum")      # this rank's chunk chunk_bounds(flat.size, size)[rank]
    full = dist.allgather(mine, counts=[hi - lo for lo, hi in dist.chunk_bounds(n, size)])
    dist.allreduce(step_times, op="max")            # also "min"; exact on every algorithm
    dist.all_reduce(t, op=dist.ReduceOp.SUM); dist.all_gather(tensor_list, t)   # torch.distributed's names

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

from ..autograd import Tensor
from ..backend import bfloat16_dtype, get_array_module, is_bfloat16
from ..spec import is_int
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
    "ReduceOp",
    "all_gather",
    "all_reduce",
    "allgather",
    "allreduce",
    "broadcast",
    "chunk_bounds",
    "reduce_scatter",
    "ring_allreduce_bytes",
]

OPS = ("sum", "mean", "max", "min")


class ReduceOp:
    """torch.distributed's ``ReduceOp`` spellings of the ops of :data:`OPS` (plain strings, so
    ``op=dist.ReduceOp.MAX`` and ``op="max"`` are the same argument)."""

    SUM = "sum"
    AVG = "mean"
    MAX = "max"
    MIN = "min"

_FLOAT = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))  # + bfloat16 with ml_dtypes
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


def check_array(array, what: str, comm: Communicator, inplace: bool):
    """TypeError/ValueError naming the rank unless ``array`` is a numeric array (C-contiguous and writeable
    when the collective works ``inplace``); returns its array module."""
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
    allowed = _FLOAT + (_INT if op != "mean" else ())
    if dtype not in allowed and not is_bfloat16(dtype):
        # bfloat16 is named among the allowed dtypes only when ml_dtypes is installed
        allowed = allowed[:1] + ((bfloat16_dtype(),) if bfloat16_dtype() is not None else ()) + allowed[1:]
        names = ", ".join(str(d) for d in allowed)
        hint = " (integer arrays support op 'sum', 'max' and 'min')" if dtype in _INT else ""
        raise ValueError(f"{what} (rank {comm.rank}): unsupported dtype {dtype} for op {op!r}{hint}: expected one "
                         f"of {names}")


def _check_algorithm(algorithm, array, what: str, comm: Communicator, op: str = "sum") -> AllreduceAlgorithm:
    algo = get_algorithm(algorithm, what, comm.rank)
    if algo.device_only and get_array_module(array) is np:
        raise ValueError(f"{what} (rank {comm.rank}): algorithm {algo.name!r} needs a CuPy (device) array, got a "
                         "NumPy array; use 'ring' for host arrays")
    if _reduce_op(op) not in algo.reduce_ops:  # e.g. a user's algorithm written for sums only
        ops = [o for o in OPS if _reduce_op(o) in algo.reduce_ops]
        raise ValueError(f"{what} (rank {comm.rank}): algorithm {algo.name!r} does not implement op {op!r}: "
                         f"expected one of {', '.join(map(repr, ops))}")
    return algo


def _reduce_op(op: str) -> str:
    """The algorithms' op of a collective's op: "mean" is "sum" then a division."""
    return "sum" if op == "mean" else op


def _check_counts(counts, array, comm: Communicator) -> list[int]:
    n = comm.size
    if counts is None:
        return [int(array.size)] * n
    counts = list(counts)
    if len(counts) != n or any(not is_int(c) or c < 0 for c in counts):
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
            and int64 with every op but "mean"), the same shape and dtype on every rank.
        op: "sum", "mean" (the sum divided by the world size), "max" or "min" (elementwise; exact, so
            the same bits on every rank for every algorithm; half types compare in float32; NaN
            propagates on the ring, and as the MPI library does on "mpi"). :class:`ReduceOp` has
            torch's spellings (``ReduceOp.MAX``).
        algorithm: a name from :data:`dtrain.distributed.algorithms.ALGORITHMS` — "ring" (dtrain's
            pipelined ring; bitwise identical on every rank), "hierarchical" (reduce within each node,
            ring across node leaders, broadcast within nodes; identical on every rank), "mpi"
            (MPI_Allreduce, the reference), "nccl" (CuPy arrays only) or "shm" (every rank on one node: one
            shared-memory window, no copies through MPI) — or an AllreduceAlgorithm object.
        comm: the Communicator (default: the world).
        async_op: queue it on the Communicator's background thread and return a Handle whose
            ``wait()`` returns ``array``; do not touch ``array`` before then.

    A count of 0 or a world of 1 communicates nothing (mean over one rank is the identity).
    ``dist.allreduce`` also takes ``compression=`` (:func:`dtrain.distributed.compression.allreduce`).

    >>> g = np.ones(3, np.float32); allreduce(g, op="sum") is g
    True
    """
    comm = resolve_comm(comm, "allreduce")
    _check_op(op, "allreduce", comm)
    algo = _check_algorithm(algorithm, array, "allreduce", comm, op)
    check_array(array, "allreduce", comm, inplace=True)
    _check_reduce_dtype(array.dtype, op, "allreduce", comm)
    flat, mean = array.reshape(-1), op == "mean"
    if async_op:
        name = f"allreduce(op={op!r}, algorithm={algo.name!r}, {array.dtype}[{array.size}])"
        return comm.submit(name, _allreduce_job, algo, flat, mean, array, _reduce_op(op))
    return _allreduce_job(comm, algo, flat, mean, array, _reduce_op(op))


def _allreduce_job(comm: Communicator, algo: AllreduceAlgorithm, flat, mean: bool, array, op: str = "sum"):
    if flat.size and comm.size > 1:
        with comm.watch(f"allreduce {algo.name}"):
            if not algo.host_staging:
                algo.allreduce(comm, flat, mean, op)
                return array
            with on_host(comm, flat, "allreduce", host_memory=algo.host_memory) as wire:
                algo.allreduce(comm, wire, mean, op)
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
    check_array(array, "reduce_scatter", comm, inplace=False)
    _check_reduce_dtype(array.dtype, op, "reduce_scatter", comm)
    xp = get_array_module(array)
    flat = xp.ascontiguousarray(array).reshape(-1)
    if async_op:
        name = f"reduce_scatter(op={op!r}, {array.dtype}[{array.size}])"
        return comm.submit(name, _reduce_scatter_job, flat, op == "mean", _reduce_op(op))
    return _reduce_scatter_job(comm, flat, op == "mean", _reduce_op(op))


def _reduce_scatter_job(comm: Communicator, flat, mean: bool, op: str = "sum"):
    xp = get_array_module(flat)
    bounds = chunk_bounds(flat.size, comm.size)
    lo, hi = bounds[comm.rank]
    if comm.size == 1 or flat.size == 0:
        return flat[lo:hi].copy()
    with comm.watch("reduce_scatter"), on_host(comm, flat, "reduce_scatter", copy_out=False) as src:
        hx = get_array_module(src)
        dst = comm.buffer("reduce_scatter.out", src.size, src.dtype, hx)
        ring_reduce_scatter(comm, src, dst, bounds, mean, op=op)
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
    check_array(array, "allgather", comm, inplace=False)
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
                with on_host(comm, out.view(np.uint8), "allgather", host_memory=algo.host_memory) as wire:
                    algo.allgather(comm, wire, [c * size for c in counts])
    return out


def broadcast(array, root: int = 0, comm: Communicator | None = None, async_op: bool = False):
    """Overwrite ``array`` on every rank with root's ``array`` (in place, MPI_Bcast); return it.

    ``array`` must be C-contiguous and writeable, with the same shape and dtype on every rank.

    >>> broadcast(np.arange(3), root=0).tolist()
    [0, 1, 2]
    """
    comm = resolve_comm(comm, "broadcast")
    if not is_int(root) or not 0 <= root < comm.size:
        raise ValueError(f"broadcast (rank {comm.rank}): root must be a rank in [0, {comm.size}), got {root!r}")
    check_array(array, "broadcast", comm, inplace=True)
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



# ----------------------------------------------------------------------------------------------
# torch.distributed's spellings
# ----------------------------------------------------------------------------------------------


def _array_of(x):
    """The backend array of a dtrain Tensor (its ``.data``, reduced in place), or ``x`` itself."""
    return x.data if isinstance(x, Tensor) else x


def all_reduce(tensor, op: str = "sum", group: Communicator | None = None, async_op: bool = False, *,
               algorithm="ring"):
    """torch.distributed's ``all_reduce``: :func:`allreduce` with torch's defaults and argument names.

    Reduces ``tensor`` (a NumPy/CuPy array, or a dtrain Tensor, whose ``.data`` is reduced in place) over
    the ranks of ``group`` (a Communicator; default: the world). Unlike :func:`allreduce`, the default
    ``op`` is "sum", as in torch; ``op`` may be a :class:`ReduceOp` (``ReduceOp.SUM``, ``AVG``, ``MAX``,
    ``MIN``) or its string. Returns ``tensor``, or with ``async_op`` a Handle whose ``wait()`` returns
    the reduced array.

    >>> all_reduce(np.full(3, 2.0), op=ReduceOp.MAX).tolist()   # world of 1
    [2.0, 2.0, 2.0]
    """
    handle = allreduce(_array_of(tensor), op=op, algorithm=algorithm, comm=group, async_op=async_op)
    return handle if async_op else tensor


def all_gather(tensor_list, tensor, group: Communicator | None = None, async_op: bool = False, *,
               algorithm="ring"):
    """torch.distributed's ``all_gather``: fill ``tensor_list[r]`` with rank r's ``tensor``, in place.

    ``tensor_list`` is a list of ``world size`` writeable arrays (or dtrain Tensors), each of the shape
    and dtype of ``tensor``, on the same device. It is a thin layer over :func:`allgather`, which
    returns the concatenation as one new flat array instead (and takes unequal ``counts``). Returns
    ``tensor_list``, or with ``async_op`` a Handle whose ``wait()`` returns it once filled.

    >>> out = [np.zeros(2)]; all_gather(out, np.arange(2.0)); out[0].tolist()   # world of 1
    [0.0, 1.0]
    """
    comm = resolve_comm(group, "all_gather")
    src = _array_of(tensor)
    xp = check_array(src, "all_gather", comm, inplace=False)
    algo = _check_algorithm(algorithm, src, "all_gather", comm)
    outs = _check_gather_list(tensor_list, src, xp, comm)
    flat = xp.ascontiguousarray(src).reshape(-1)
    counts = [int(src.size)] * comm.size
    if async_op:
        name = f"all_gather({src.dtype}[{src.size}] x {comm.size})"
        return comm.submit(name, _all_gather_job, algo, flat, counts, outs, tensor_list)
    return _all_gather_job(comm, algo, flat, counts, outs, tensor_list)


def _check_gather_list(tensor_list, src, xp, comm: Communicator) -> list:
    if not isinstance(tensor_list, (list, tuple)) or len(tensor_list) != comm.size:
        got = f"{type(tensor_list).__name__} of length {len(tensor_list)}" \
            if isinstance(tensor_list, (list, tuple)) else type(tensor_list).__name__
        raise ValueError(f"all_gather (rank {comm.rank}): tensor_list must be a list of {comm.size} arrays (one "
                         f"per rank), got {got}")
    outs = [_array_of(t) for t in tensor_list]
    for i, out in enumerate(outs):
        if not isinstance(out, xp.ndarray) or out.shape != src.shape or out.dtype != src.dtype:
            what = f"{type(out).__name__} {getattr(out, 'shape', '')} {getattr(out, 'dtype', '')}".rstrip()
            raise ValueError(f"all_gather (rank {comm.rank}): tensor_list[{i}] is {what}: expected a "
                             f"{xp.__name__} array of tensor's shape {src.shape} and dtype {src.dtype}")
        if not out.flags.writeable:
            raise ValueError(f"all_gather (rank {comm.rank}): tensor_list[{i}] is not writeable")
    return outs


def _all_gather_job(comm: Communicator, algo: AllreduceAlgorithm, flat, counts: list[int], outs, tensor_list):
    gathered = _allgather_job(comm, algo, flat, counts)
    for (lo, hi), out in zip(offsets_of(counts), outs):
        out[...] = gathered[lo:hi].reshape(out.shape)
    return tensor_list
