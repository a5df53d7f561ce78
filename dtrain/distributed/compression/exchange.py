"""Moving a compressor's payloads between ranks over whichever all-reduce algorithm was chosen.

    from dtrain.distributed import compression
    c = compression.get("topk:0.01")
    compression.reduce(c, comm, "bucket0", segments, flat, step, algorithm="hierarchical")

A compressor only transforms (:mod:`.base`); this module communicates, according to its ``exchange``:

* "allreduce": every payload array is summed over the ranks with the algorithm's all-reduce, and the
  sum is decompressed (``none``, ``fp16``/``bf16``, ``randomk``);
* "allgather": every rank's payload (packed into one byte buffer) is gathered with the algorithm's
  all-gather, and every rank decompresses and adds them in rank order, so every rank computes the
  bitwise identical sum whatever the algorithm (``topk``, ``qsgd``, ``signsgd``);
* "rounds": the compressor's own schedule, given an in-place sum over the ranks (``powersgd``).

Every algorithm (ring, hierarchical, mpi) carries every compressor; ``nccl`` reads device memory and the
compressors other than ``none`` work on host arrays, so that pair is an error naming both.
"""

from __future__ import annotations

import functools

import numpy as np

from ...backend import get_array_module
from ..algorithms import get as get_algorithm
from ..collectives import allgather, check_array, resolve_comm
from ..collectives import allreduce as plain_allreduce
from .base import CompressionError, Compressor, check_reduce_args
from .registry import get as get_compressor

__all__ = ["allgather_payloads", "allreduce", "check_pair", "reduce"]


def check_pair(compressor: Compressor, algorithm) -> None:
    """CompressionError when ``compressor`` cannot ride ``algorithm`` (host-only compressors on nccl)."""
    algo = get_algorithm(algorithm)
    if compressor.host_only and algo.device_only:
        raise CompressionError(f"compression {compressor.spec!r} with algorithm {algo.name!r}: the compressor works "
                               f"on host (NumPy) arrays and {algo.name!r} on device arrays only; use 'ring', "
                               f"'hierarchical' or 'mpi' with compression, or compression 'none' with {algo.name!r}")


def reduce(compressor: Compressor, comm, key: str, segments, flat, step: int, algorithm="ring") -> None:
    """Replace ``flat`` in place with (an estimate of) the sum over all ranks of every rank's ``flat``.

    Args:
        compressor: the Compressor (its error-feedback memory is kept per ``key``).
        comm: the dtrain Communicator to run the collectives on (synchronously).
        key: identifies the bucket.
        segments: ``(parameter name, view of flat in the parameter's shape)`` in bucket order, covering
            ``flat`` exactly (PowerSGD uses the names and shapes).
        flat: the contiguous 1-D float buffer.
        step: the optimizer step (0, 1, ...), the same on every rank.
        algorithm: a name or AllreduceAlgorithm (see :mod:`dtrain.distributed.algorithms`).

    Every rank issues the same collectives with the same sizes; the result is bitwise identical on
    every rank.
    """
    check_reduce_args(compressor, key, segments, flat, step)
    check_pair(compressor, algorithm)
    total = functools.partial(plain_allreduce, op="sum", algorithm=algorithm, comm=comm)
    if compressor.exchange == "rounds":
        compressor.reduce_rounds(key, segments, flat, step, total)
        return
    payload, ctx = compressor.compress(key, flat, step, rank=comm.rank)
    if compressor.exchange == "allreduce":
        for a in payload:
            total(a)
        dense = compressor.decompress(payload, ctx)
        if not np.may_share_memory(dense, flat):  # "none" summed flat itself
            flat[...] = dense.reshape(-1)
        return
    for r, theirs in enumerate(allgather_payloads(comm, payload, algorithm)):
        compressor.accumulate(flat, theirs, ctx, first=r == 0)


def allgather_payloads(comm, payload, algorithm="ring") -> list[tuple[np.ndarray, ...]]:
    """All-gather every rank's payload (the same array sizes and dtypes on every rank): one tuple per rank.

    Several arrays are packed into one byte buffer (widest dtype first, so every array stays aligned)
    and gathered by one all-gather of the chosen algorithm.
    """
    arrays = [np.ascontiguousarray(a).reshape(-1) for a in payload]
    n = comm.size
    if len(arrays) == 1:
        a = arrays[0]
        out = allgather(a, comm=comm, algorithm=algorithm)
        return [(out[r * a.size:(r + 1) * a.size],) for r in range(n)]
    order = sorted(range(len(arrays)), key=lambda i: -arrays[i].dtype.itemsize)
    align = max(a.dtype.itemsize for a in arrays)
    offsets = [0] * len(arrays)
    pos = 0
    for i in order:
        offsets[i] = pos
        pos += arrays[i].nbytes
    block = -(-pos // align) * align
    buf = np.zeros(block, np.uint8)
    for i, a in enumerate(arrays):
        buf[offsets[i]:offsets[i] + a.nbytes] = a.view(np.uint8)
    out = allgather(buf, comm=comm, algorithm=algorithm)
    gathered = []
    for r in range(n):
        mine = out[r * block:(r + 1) * block]
        gathered.append(tuple(mine[offsets[i]:offsets[i] + a.nbytes].view(a.dtype) for i, a in enumerate(arrays)))
    return gathered


def allreduce(array, op: str = "mean", algorithm="ring", comm=None, async_op: bool = False, compression=None):
    """``dist.allreduce``: :func:`dtrain.distributed.collectives.allreduce`, or, with ``compression``, the
    sum through a compressor over ``algorithm`` (then divided by the size for "mean").

    ``compression``: None, a spec such as "topk:0.01" or a Compressor. Pass the same Compressor object on
    every call to keep its error-feedback memory across calls; a spec builds a fresh one each time.
    float32/float64 only. See :func:`dtrain.distributed.collectives.allreduce` for the other arguments.
    """
    if compression is None or compression == "none":
        return plain_allreduce(array, op=op, algorithm=algorithm, comm=comm, async_op=async_op)
    comm = resolve_comm(comm, "allreduce")
    compressor = get_compressor(compression)
    check_array(array, "allreduce", comm, inplace=True)
    if array.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"allreduce (rank {comm.rank}): compression needs float32/float64, got {array.dtype}")
    if op not in ("sum", "mean"):
        raise ValueError(f"allreduce (rank {comm.rank}): op {op!r} with compression {compressor.spec!r}: a "
                         "compressed all-reduce sums: expected 'sum' or 'mean'")
    check_pair(compressor, algorithm)
    job = functools.partial(_compressed_job, compressor=compressor, shape=array.shape, algorithm=algorithm)
    flat = array.reshape(-1)
    if async_op:
        return comm.submit(f"allreduce(compression={compressor.spec!r}, {array.dtype}[{array.size}])", job,
                           flat, op == "mean", array)
    return job(comm, flat, op == "mean", array)


def _compressed_job(comm, flat, mean: bool, array, *, compressor, shape, algorithm):
    step = compressor.allreduce_calls  # seeds random-k and PowerSGD's warm-up per call
    compressor.allreduce_calls += 1
    with comm.watch(f"allreduce (compression {compressor.spec})"):
        reduce(compressor, comm, "allreduce", [("array", flat.reshape(shape))], flat, step, algorithm)
    if mean and comm.size > 1:
        get_array_module(flat).divide(flat, comm.size, out=flat)
    return array
