"""Every rank on one node: the all-reduce through one MPI shared-memory window (``MPI_Win_allocate_shared``)
instead of messages.

Every call starts with a handshake: each rank writes its (count, dtype, op) into a 64-byte header in
front of its segment, and after a fence (``MPI_Win_sync``, a barrier of the node, ``MPI_Win_sync``) checks
every other rank's, so ranks that pass different sizes get a ValueError naming them instead of reading
past each other's data, and all ranks grow the window together when the array is larger than it. Then
each rank copies into its own segment the chunks the others reduce (``chunk_bounds(count, size)``); after
a fence, rank r reduces chunk r from its own array and the other ranks' segments, read directly, its own
values first and then the others in rank order, into its segment ("mean" divides there); after another
fence every rank copies each chunk straight from its owner's segment into its array. The next call's
handshake fence keeps any rank from overwriting its segment while others still read it.

Each element crosses between processes twice, once to be reduced and once to be gathered, and nothing
goes through MPI's own buffers: the ring's send and receive copies are gone, for three barriers a call.
Each chunk is reduced on one rank in a fixed order and only copied afterwards, so the result is bitwise
identical on every rank. Half types are reduced in float32 and rounded once, as in the ring; max and
min run the same schedule. Device arrays are staged through host buffers by the collectives
(``host_memory``), even under CUDA-aware MPI.

Measured on a 2-core VM at 7.1 MiB and 2 ranks it was not reliably faster than the ring over MPICH
(between 0.6x and 1.3x its time, with the machine's cross-core speed; a version pipelined in pieces was
no faster): see docs/distributed.md.

The window is made at the first call on a communicator (collective; 1 MiB per rank) and grown in steps
of 1 MiB; it lives in ``comm.cache`` and is freed by ``Communicator.close()``.

Bytes counted (``record_send``): what the other ranks read from this rank's segment, N + (n-2)*N/n for
N bytes, which is what the ring sends.
"""

from __future__ import annotations

import itertools
import math
import zlib

import numpy as np

from ...backend import is_half_dtype
from .. import comm as _comm
from .base import F32, REDUCE_OPS, AllreduceAlgorithm, chunk_bounds, common_power_of_two, offsets_of

__all__ = ["BucketWindow", "SharedMemoryAllreduce", "SharedSegments", "sum_scaled", "weights_and_scale"]

HEADER = 64  # bytes in front of each rank's data: (count, dtype, op) as int64
_STEP = 1 << 20  # the window grows in multiples of this many bytes per rank
_OPS = ("sum", "max", "min", "allgather")
_windows = itertools.count()  # BucketWindows made in this process (every rank makes them in the same order)


class SharedSegments:
    """One MPI shared-memory window over the node: a header and ``nbytes`` of data per rank, each rank's
    segment seen as a NumPy array by every rank of the node communicator ``node`` (which it owns)."""

    def __init__(self, node, nbytes: int):
        MPI = _comm._load_mpi()
        self.node, self.nbytes = node, nbytes
        self.win = MPI.Win.Allocate_shared(HEADER + nbytes, 1, comm=node)
        self.win.Lock_all(MPI.MODE_NOCHECK)
        self.segments = [np.frombuffer(self.win.Shared_query(q)[0], dtype=np.uint8, count=HEADER + nbytes)
                         for q in range(node.Get_size())]

    def data(self, dtype, count: int) -> list:
        """Every rank's data area as ``count`` values of ``dtype``, in rank order."""
        nbytes = count * np.dtype(dtype).itemsize
        return [s[HEADER:HEADER + nbytes].view(dtype) for s in self.segments]

    def fence(self) -> None:
        """Every rank's writes visible to all, and no rank past this point before all reach it."""
        self.win.Sync()
        self.node.Barrier()
        self.win.Sync()

    def close(self) -> None:
        """Free the window and the node communicator (collective over the node)."""
        self.win.Unlock_all()
        self.win.Free()
        self.node.Free()


def _node(comm, what: str = "all-reduce algorithm 'shm'", instead: str = "'ring' or 'hierarchical'"):
    """A communicator over the ranks that share this rank's memory; ValueError on every rank unless that is
    every rank (naming ``what`` needs it, and what to use ``instead``)."""
    MPI = _comm._MPI
    node = comm.comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.rank)
    size = node.Get_size()
    if size != comm.size:
        node.Free()
        raise ValueError(f"{what} (rank {comm.rank}): every rank must be on one node, but this rank shares memory "
                         f"with {size} of the {comm.size} ranks (hosts: {', '.join(sorted(set(comm.hosts)))}); use "
                         f"{instead} across nodes")
    return node


def handshake(comm, count: int, dtype, op: str, what: str) -> SharedSegments:
    """The communicator's window, checked and big enough for ``count`` values of ``dtype`` on every rank.

    Writes (count, dtype, op) into this rank's header, fences, and compares every rank's: ValueError on
    every rank when any differ, naming the ranks; else the window, grown (collectively) when too small."""
    seg = comm.cache.get("shm")
    if seg is None:
        seg = comm.cache["shm"] = SharedSegments(_node(comm), _STEP)
    dtype = np.dtype(dtype)
    mine = (count, zlib.crc32(dtype.name.encode()), _OPS.index(op))
    seg.segments[comm.rank][:24].view(np.int64)[:] = mine
    seg.fence()
    headers = [tuple(int(v) for v in s[:24].view(np.int64)) for s in seg.segments]
    bad = [q for q, theirs in enumerate(headers) if theirs != mine]
    if bad:
        differ = "; ".join(f"rank {q}: {_describe(headers[q], mine)}" for q in bad)
        raise ValueError(f"{what} (rank {comm.rank}): every rank must pass the same size, dtype and op; this rank "
                         f"passed {count} values of {dtype}, op {op}; {differ}")
    nbytes = count * dtype.itemsize
    if nbytes > seg.nbytes:  # every rank saw the same count: all grow together
        node = seg.node.Dup()
        seg.close()
        seg = comm.cache["shm"] = SharedSegments(node, -(-nbytes // _STEP) * _STEP)
    return seg


def _describe(header: tuple, mine: tuple) -> str:
    count, dtype, op = header
    return (f"{count} values of {'the same dtype' if dtype == mine[1] else 'another dtype'}, "
            f"op {_OPS[op] if 0 <= op < len(_OPS) else '?'}")


class SharedMemoryAllreduce(AllreduceAlgorithm):
    """All-reduce and all-gather through one shared-memory window (every rank on one node)."""

    name = "shm"
    reduce_ops = REDUCE_OPS
    host_memory = True  # NumPy reads the window: the collectives stage device arrays through host buffers

    def allreduce(self, comm, flat, mean: bool, op: str = "sum") -> None:
        n, r = comm.size, comm.rank
        seg = handshake(comm, flat.size, flat.dtype, op, "shm all-reduce")
        views = seg.data(flat.dtype, flat.size)
        bounds = chunk_bounds(flat.size, n)
        for q, (a, b) in enumerate(bounds):  # the chunks the others reduce (this rank's own is read from flat)
            if q != r:
                views[r][a:b] = flat[a:b]
        seg.fence()
        lo, hi = bounds[r]
        _reduce_chunk(comm, flat[lo:hi], views, lo, hi, n if mean else 0, op)
        seg.fence()
        for q, (a, b) in enumerate(bounds):
            flat[a:b] = views[q][a:b]
        comm.record_send((flat.size + (n - 2) * (hi - lo)) * flat.itemsize, False)

    def bucket_window(self, comm, sizes: list[int], dtype) -> BucketWindow | None:
        """Shared storage for DistributedDataParallel's buckets (``sizes`` values of ``dtype`` each), so that
        their sum needs no copy in or out (:class:`BucketWindow`); None for dtypes it does not reduce in
        place (half types). Collective over ``comm``."""
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64) or comm.size == 1:
            return None
        return BucketWindow(comm, sizes, dtype)

    def allgather(self, comm, buf, counts: list[int]) -> None:
        r = comm.rank
        seg = handshake(comm, buf.size, np.uint8, "allgather", "shm all-gather")
        views = seg.data(np.uint8, buf.size)
        blocks = offsets_of(counts)
        lo, hi = blocks[r]
        views[r][lo:hi] = buf[lo:hi]
        seg.fence()
        for q, (a, b) in enumerate(blocks):
            if q != r:
                buf[a:b] = views[q][a:b]
        comm.record_send((comm.size - 1) * (hi - lo), False)


def _reduce_chunk(comm, own, views, lo: int, hi: int, divide_by: int, op: str) -> None:
    """views[rank][lo:hi] = the reduction of this rank's ``own`` values of the chunk, then the other ranks'
    [lo:hi] in rank order (divided by ``divide_by`` when non-zero); half types in a float32 scratch, rounded
    once."""
    r = comm.rank
    combine = {"sum": np.add, "max": np.maximum, "min": np.minimum}[op]
    out = views[r][lo:hi]
    acc = comm.buffer("shm.acc", hi - lo, F32) if is_half_dtype(own.dtype) else out
    first = own
    for q, theirs in enumerate(views):
        if q != r:
            combine(first, theirs[lo:hi], out=acc, dtype=acc.dtype)
            first = acc
    if divide_by:
        np.divide(acc, divide_by, out=acc)
    if acc is not out:
        out[...] = acc


class BucketWindow:
    """DistributedDataParallel's buckets stored in a shared-memory window of their own, one segment per rank.

    Each rank's gradients go into its segment as they are (``buffers``; linear weights' gradients are written
    there by backward itself), and its sample count and control values into its header (``set_header``).
    ``reduce(comm, i)`` (on the worker thread) fences, then rank r sums chunk r of bucket i over the ranks'
    segments, each rank's values times its weight, into its own segment, and fences again: the sum of chunk
    q is then in rank q's segment and nowhere else, so the write-back reads every chunk from its owner
    (``pieces``) instead of an all-gather copying them first, and ``release()`` (a barrier, after the
    write-back) keeps any rank from writing the next step's gradients over a segment another rank still
    reads. The headers replace the sample counts' own all-reduce: every rank sums them after the first
    bucket's fence (``header_sum``). Against the shm all-reduce on a separate bucket: no copy into the window,
    no all-gather; measured at 2 ranks and 7.1 MiB, pack + sum + write-back 1.65-1.91 ms against 3.06-3.10 ms
    over the ring, and the gradients written in place by backward cut the pack from 1.1-1.2 ms to 0.15 ms.
    Each chunk is summed on one rank in a fixed order and only read afterwards: the result is bitwise
    identical on every rank, and to packing n_r * g_r and summing. The window is kept in ``comm.cache`` and
    freed by ``comm.close()``, after ``on_close``."""

    def __init__(self, comm, sizes: list[int], dtype):
        self.dtype = np.dtype(dtype)
        self.seg = SharedSegments(_node(comm), max(sum(sizes) * self.dtype.itemsize, 1))
        comm.cache[("shm.buckets", next(_windows))] = self  # the same key on every rank: freed in order
        views = self.seg.data(self.dtype, sum(sizes))
        starts = offsets_of(list(sizes))
        self.per_bucket = [[v[a:b] for v in views] for a, b in starts]  # [bucket][rank]: its flat values
        self.rank, self.size = comm.rank, comm.size
        self.headers = [s[:HEADER].view(np.float64) for s in self.seg.segments]  # 8 float64 per rank
        self.on_close: list = []  # callables run before the window is freed (the Reducer lets go of it)

    def set_header(self, values) -> None:
        """This rank's header for the coming synchronisation (at most 8 float64; set before the first bucket's
        ``reduce``, unchanged until ``release``): ``values[0]`` is its weight in the sums (its sample count),
        by which every bucket's values from this rank are multiplied as they are summed; all of them are summed
        over the ranks by ``header_sum``."""
        self.headers[self.rank][:len(values)] = values

    def header_sum(self, n: int) -> np.ndarray:
        """The first ``n`` header values summed over the ranks in rank order (the same bits on every rank).
        Valid once the first bucket's ``reduce`` of the synchronisation has returned (its fence)."""
        total = np.zeros(n, dtype=np.float64)
        for h in self.headers:
            total += h[:n]
        return total

    def buffers(self) -> list:
        """This rank's flat storage of each bucket (views of its segment)."""
        return [ranks[self.rank] for ranks in self.per_bucket]

    def reduce(self, comm, index: int) -> None:
        """Chunk ``rank`` of bucket ``index`` := the sum over the ranks of each rank's values times its weight,
        divided by the weights' sum: the sample-weighted mean, in this rank's segment (collective). When every
        rank has the same weight and it is a power of two, multiplying by it is exact and commutes with the
        rounding of the sum, so the values are summed as they are and the weight joins the final scale (the
        same bits, one pass fewer)."""
        views = self.per_bucket[index]
        self.seg.fence()
        lo, hi = chunk_bounds(views[0].size, self.size)[self.rank]
        weights, scale, _ = weights_and_scale(self.headers)  # (no samples: finish() raises)
        sum_scaled(comm, views, lo, hi, self.rank, weights, scale)
        self.seg.fence()
        # what the others read of this segment: their chunks (to sum) and then this rank's sum, as the ring
        comm.record_send(2 * (self.size - 1) * (views[0].size // self.size) * self.dtype.itemsize, False)

    def pieces(self, index: int, lo: int, hi: int):
        """(start, stop, summed values) covering values [lo, hi) of bucket ``index``, each read from the rank
        that summed it."""
        views = self.per_bucket[index]
        for q, (c0, c1) in enumerate(chunk_bounds(views[0].size, self.size)):
            s, e = max(lo, c0), min(hi, c1)
            if s < e:
                yield s, e, views[q][s:e]

    def release(self) -> None:
        """Every rank has read what it needs: segments may be packed again (a barrier of the node)."""
        self.seg.node.Barrier()

    def close(self) -> None:
        """Run ``on_close``, then free the window (collective; ``Communicator.close`` calls it)."""
        for fn in self.on_close:
            fn()
        self.seg.close()


SUM_BLOCK = 1 << 16  # values per pass of the bucket sum: its operands stay in cache from the sum to the scaling


def weights_and_scale(headers) -> tuple[list[float] | None, float, float]:
    """The ranks' weights (the first value of each header: sample counts) for ``sum_scaled``, None when they are
    one power of two (then exact to fold into the scale); the final scale, the weighted mean's common / total;
    and the total. A total of 0 (no samples anywhere) gives scale 1; the caller reports it."""
    weights = [float(h[0]) for h in headers]
    total = math.fsum(weights)
    common = common_power_of_two(total, math.fsum(w * w for w in weights), len(weights))
    scale = ((common or 1.0) / total) if total > 0 else 1.0
    return (None if common else weights), scale, total


def sum_scaled(comm, views, lo: int, hi: int, rank: int, weights: list[float] | None, scale: float,
               out=None) -> None:
    """views[rank][lo:hi] (or ``out``, an array of hi - lo values) = scale * the sum over q of weights[q] *
    views[q][lo:hi] (weights None: of the values as they are): this rank's term first, then the others in rank
    order, each product rounded to the dtype before it is added (exactly what packing n_q * g_q and summing
    would give), block by block so the scaled copies and the scaling never leave the cache."""
    mine = views[rank]
    dest, shift = (mine, 0) if out is None else (out, lo)
    scratch = comm.buffer("shm.weighted", min(SUM_BLOCK, hi - lo), mine.dtype) if weights is not None else None
    for s in range(lo, hi, SUM_BLOCK):
        e = min(s + SUM_BLOCK, hi)
        acc = dest[s - shift:e - shift]
        first = mine[s:e]
        if weights is not None:
            np.multiply(first, weights[rank], out=acc)
            first = acc
        for q, theirs in enumerate(views):
            if q == rank:
                continue
            if weights is None:
                np.add(first, theirs[s:e], out=acc)
            else:
                tmp = scratch[:e - s]
                np.multiply(theirs[s:e], weights[q], out=tmp)
                np.add(acc, tmp, out=acc)
            first = acc
        if first is not acc and out is not None:  # nothing to add or weigh (one rank): its values as they are
            acc[...] = first
        np.multiply(acc, scale, out=acc)
