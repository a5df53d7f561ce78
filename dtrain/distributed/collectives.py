"""Collectives on arrays: ring all-reduce (and MPI_Allreduce as the reference), reduce-scatter,
all-gather and broadcast.

    import dtrain.distributed as dist
    dist.allreduce(grad, op="mean")                 # in place, ring; returns grad
    h = dist.allreduce(bucket, op="sum", async_op=True); ...; h.wait()
    mine = dist.reduce_scatter(flat, op="sum")      # this rank's chunk chunk_bounds(flat.size, size)[rank]
    full = dist.allgather(mine, counts=[hi - lo for lo, hi in dist.chunk_bounds(n, size)])

The ring all-reduce is a reduce-scatter followed by an all-gather around the ring (send to rank+1,
receive from rank-1), over the ``chunk_bounds(count, size)`` partition of the flattened array. In
reduce-scatter step ``s`` a rank sends chunk ``(rank-s-1) % size`` and receives chunk
``(rank-s-2) % size`` (adding its own contribution to it), so after ``size-1`` steps it holds the
fully reduced chunk ``rank``; each chunk is reduced on exactly one rank, in a fixed order, and then
only copied, so the result is bitwise identical on every rank ("mean" divides by the size on the
chunk's owner, in its last reduce step, before the all-gather). A reduce-scatter step's transfer is
cut into pieces of at most ``PIPELINE_BYTES`` and pipelined: the receive and send of piece j+1 are
posted before piece j is added (``PIPELINE_DEPTH`` pieces in flight), so the addition overlaps the
transfer; a step whose chunk fits in one piece is a single ``Sendrecv``, as is every all-gather step.
The piecing never changes the result: each element is still summed in the same order.

float16/bfloat16 travel as 16-bit words (``uint16`` on the wire; MPI has no portable half type) but
every addition is done in float32: a rank adds the received partial sum and its own values in a
float32 scratch piece and sends that sum rounded to half; ``mean`` divides the float32 sum before
the final rounding. The "mpi" algorithm upcasts half arrays to float32, calls MPI_Allreduce and
casts back.

Arrays move through mpi4py's buffer interface only (``Isend``/``Irecv``/``Sendrecv``/``Allreduce``/
``Bcast``); nothing is pickled. Scratch space comes from :meth:`Communicator.buffer`, so a hot loop
allocates nothing big per call.

Rules shared by every function here: every rank calls the same collectives in the same order with
the same arguments (counts, dtypes, op, algorithm, root); arguments are validated before any
communication, so a bad call raises ValueError on every rank instead of hanging. With
``async_op=True`` the operation is queued on the Communicator's background thread and a
:class:`Handle` is returned; async operations run in submission order, so every rank must submit
them in the same order, and the caller must not touch the array until ``handle.wait()`` returns.
"""

from __future__ import annotations

import functools
import time

import numpy as np

from ..backend import bfloat16, get_array_module
from . import comm as _comm
from .comm import Communicator, Handle
from .gpu import on_host

__all__ = [
    "ALGORITHMS",
    "OPS",
    "PIPELINE_BYTES",
    "PIPELINE_DEPTH",
    "AllreduceAlgorithm",
    "Handle",
    "allgather",
    "allreduce",
    "broadcast",
    "chunk_bounds",
    "measure_allreduce",
    "ring_allreduce_bytes",
    "reduce_scatter",
]

# Bytes per pipelined piece of a reduce-scatter step, and pieces in flight each way. Chosen by the sweep
# in benchmarks/results/allreduce.md: pieces under 512 KB pay per-message costs, pieces of 1-2 MB are
# the fastest at 16-64 MB, and deeper windows measured the same as 2.
PIPELINE_BYTES = 1 << 20
PIPELINE_DEPTH = 2

OPS = ("sum", "mean")
_TAG_REDUCE = 0x3D1
_TAG_GATHER = 0x3D2

_F16 = np.dtype(np.float16)
_F32 = np.dtype(np.float32)
_HALF = (_F16,) if bfloat16 is None else (_F16, np.dtype(bfloat16))
_FLOAT = _HALF + (_F32, np.dtype(np.float64))
_INT = (np.dtype(np.int32), np.dtype(np.int64))
_U16 = np.dtype(np.uint16)


def chunk_bounds(count: int, parts: int) -> list[tuple[int, int]]:
    """Split ``range(count)`` into ``parts`` contiguous ``[start, stop)`` chunks of near-equal length.

    The first ``count % parts`` chunks are one element longer; with ``count < parts`` the last
    chunks are empty.

    >>> chunk_bounds(10, 4)
    [(0, 3), (3, 6), (6, 8), (8, 10)]
    """
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
        raise ValueError(f"chunk_bounds: count must be a non-negative integer, got {count!r}")
    if isinstance(parts, bool) or not isinstance(parts, (int, np.integer)) or parts < 1:
        raise ValueError(f"chunk_bounds: parts must be a positive integer, got {parts!r}")
    base, extra = divmod(int(count), int(parts))
    bounds = []
    start = 0
    for i in range(int(parts)):
        stop = start + base + (1 if i < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


# ----------------------------------------------------------------------------------------------
# Argument checks (all before any communication)
# ----------------------------------------------------------------------------------------------


def _resolve_comm(comm, what: str) -> Communicator:
    if comm is None:
        return _comm.get_world()
    if not isinstance(comm, Communicator):
        raise TypeError(f"{what}: comm must be a dtrain.distributed.Communicator (e.g. dist.get_world()) or None, "
                        f"got {type(comm).__name__}")
    if comm._closed:
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


def _host_sync(xp) -> None:
    # MPI reads device memory directly (CUDA-aware MPI): the kernels that wrote it must be finished.
    if xp is not np:
        xp.cuda.get_current_stream().synchronize()


_MPI_TYPES: dict = {}


def _mpi_type(dtype):
    """The MPI datatype of a wire dtype (float32/float64/int32/int64/uint16/uint8)."""
    if not _MPI_TYPES:
        MPI = _comm._MPI
        _MPI_TYPES.update({
            np.dtype(np.float32): MPI.FLOAT, np.dtype(np.float64): MPI.DOUBLE, np.dtype(np.int32): MPI.INT32_T,
            np.dtype(np.int64): MPI.INT64_T, _U16: MPI.UINT16_T, np.dtype(np.uint8): MPI.BYTE,
        })
    return _MPI_TYPES[dtype]


# ----------------------------------------------------------------------------------------------
# Algorithms: small objects behind one interface (ring, MPI, hierarchical)
# ----------------------------------------------------------------------------------------------


class AllreduceAlgorithm:
    """An all-reduce strategy: ``run(comm, flat, mean)`` reduces the flat C-contiguous array in place.

    Called only with ``comm.size > 1`` and ``flat.size > 0``, after the arguments were validated.
    """

    name = ""
    host_staging = True  # device arrays go through pinned host buffers unless MPI is CUDA-aware

    def run(self, comm: Communicator, flat, mean: bool) -> None:
        raise NotImplementedError


class RingAllreduce(AllreduceAlgorithm):
    """dtrain's pipelined ring: reduce-scatter then all-gather (bandwidth-optimal, bitwise identical)."""

    name = "ring"

    def run(self, comm: Communicator, flat, mean: bool) -> None:
        bounds = chunk_bounds(flat.size, comm.size)
        _ring_reduce_scatter(comm, flat, flat, bounds, mean)
        _ring_allgather(comm, _wire(flat), bounds)


class MPIAllreduce(AllreduceAlgorithm):
    """MPI_Allreduce (the MPI library's own algorithm): the reference ring is measured against."""

    name = "mpi"

    def run(self, comm: Communicator, flat, mean: bool) -> None:
        MPI = _comm._MPI
        xp = get_array_module(flat)
        if flat.dtype in _HALF:
            acc = comm.buffer("mpi.acc", flat.size, _F32, xp)
            acc[...] = flat
            comm.bytes_sent += acc.nbytes
            comm.comm.Allreduce(MPI.IN_PLACE, [acc, MPI.FLOAT], op=MPI.SUM)
            if mean:
                xp.divide(acc, comm.size, out=acc)
            flat[...] = acc
            return
        comm.bytes_sent += flat.nbytes
        comm.comm.Allreduce(MPI.IN_PLACE, [flat, _mpi_type(flat.dtype)], op=MPI.SUM)
        if mean:
            xp.divide(flat, comm.size, out=flat)


class HierarchicalAllreduce(AllreduceAlgorithm):
    """Two levels: reduce within each node to its leader (MPI_Reduce on the node communicator, which
    MPI runs over shared memory), our ring all-reduce across the node leaders, then a broadcast within
    each node. Inter-node traffic is one ring over the nodes instead of over every rank. Every rank
    ends with the leader's bits, so the result is identical on every rank. Any ranks-per-node layout
    works (nodes of different sizes included); one node or one rank per node degenerate to a reduce
    plus broadcast, or to the plain ring."""

    name = "hierarchical"

    def run(self, comm: Communicator, flat, mean: bool) -> None:
        MPI = _comm._MPI
        xp = get_array_module(flat)
        node, leaders = comm.node_comm, comm.leader_comm
        half = flat.dtype in _HALF
        if half:  # sums in float32, rounded to half once at the end (like the ring's accumulation)
            work = comm.buffer("hier.acc", flat.size, _F32, xp)
            work[...] = flat
        else:
            work = flat
        mtype = _mpi_type(work.dtype)
        _host_sync(xp)
        if node.Get_size() > 1:
            if node.Get_rank() == 0:
                node.Reduce(MPI.IN_PLACE, [work, mtype], op=MPI.SUM, root=0)
            else:
                comm.bytes_sent += work.nbytes
                node.Reduce([work, mtype], None, op=MPI.SUM, root=0)
        if leaders is not None:
            if leaders.Get_size() > 1:
                leader = _leader_view(comm, leaders)
                ALGORITHMS["ring"].run(leader, work, False)
            if mean:
                xp.divide(work, comm.size, out=work)
            if half:
                flat[...] = work
        if node.Get_size() > 1:
            wire = _wire(flat)
            if node.Get_rank() == 0:
                comm.bytes_sent += wire.nbytes
            _host_sync(xp)
            node.Bcast([wire, _mpi_type(wire.dtype)], root=0)


class _LeaderView:
    """The leaders' communicator dressed as a Communicator for the ring (buffers and byte counts go
    to the owning Communicator)."""

    __slots__ = ("comm", "owner", "rank", "size")

    def __init__(self, owner: Communicator, leaders):
        self.owner, self.comm = owner, leaders
        self.rank, self.size = leaders.Get_rank(), leaders.Get_size()

    def buffer(self, key, shape, dtype, xp=np):
        return self.owner.buffer(("leaders", key), shape, dtype, xp)

    @property
    def bytes_sent(self) -> int:
        return self.owner.bytes_sent

    @bytes_sent.setter
    def bytes_sent(self, value: int) -> None:
        self.owner.bytes_sent = value


def _leader_view(comm: Communicator, leaders) -> _LeaderView:
    view = comm.__dict__.get("_leader_view")
    if view is None or view.comm is not leaders:
        view = comm.__dict__["_leader_view"] = _LeaderView(comm, leaders)
    return view


class NcclAllreduce(AllreduceAlgorithm):
    """ncclAllReduce over cupy.cuda.nccl (device arrays only; optional: needs CuPy built with NCCL). The
    NCCL communicator is made on first use from the Communicator's ranks."""

    name = "nccl"
    host_staging = False  # NCCL reads device memory itself

    def run(self, comm: Communicator, flat, mean: bool) -> None:
        from .gpu import nccl_allreduce

        nccl_allreduce(comm, flat, mean)


ALGORITHMS: dict[str, AllreduceAlgorithm] = {a.name: a for a in (RingAllreduce(), MPIAllreduce(),
                                                                  HierarchicalAllreduce(), NcclAllreduce())}


def ring_allreduce_bytes(count: int, itemsize: int, size: int, rank: int) -> int:
    """Bytes rank ``rank`` sends in a ring all-reduce of ``count`` items of ``itemsize`` bytes over
    ``size`` ranks: the chunks it forwards in the n-1 reduce-scatter and n-1 all-gather steps (about
    2(n-1)/n of the buffer). The uncompressed reference of the compression accounting."""
    if size == 1 or count == 0:
        return 0
    bounds = chunk_bounds(count, size)
    sent = sum(bounds[(rank - s - 1) % size][1] - bounds[(rank - s - 1) % size][0] for s in range(size - 1))
    sent += sum(bounds[(rank - s) % size][1] - bounds[(rank - s) % size][0] for s in range(size - 1))
    return sent * itemsize


def _wire(flat):
    """The array as it travels: half types as uint16 words, everything else as itself."""
    return flat.view(_U16) if flat.dtype in _HALF else flat


def _pieces(lo: int, hi: int, step: int) -> list[tuple[int, int]]:
    return [(p, min(p + step, hi)) for p in range(lo, hi, step)]


def _ring_reduce_scatter(comm: Communicator, src, dst, bounds, mean: bool) -> None:
    """Ring reduce-scatter of flat ``src`` into flat ``dst`` (which may be ``src``).

    Afterwards ``dst[bounds[rank]]`` holds the reduced chunk (divided by the size when ``mean``); the
    other chunks of ``dst`` hold partial sums. Each step is pipelined in pieces of PIPELINE_BYTES.
    """
    MPI = _comm._MPI
    mpi = comm.comm
    xp = get_array_module(src)
    n, r = comm.size, comm.rank
    right, left = (r + 1) % n, (r - 1) % n
    half = src.dtype in _HALF
    src_w, dst_w = _wire(src), _wire(dst)
    wtype = _mpi_type(src_w.dtype)
    piece = max(1, PIPELINE_BYTES // src_w.dtype.itemsize)
    longest = min(piece, bounds[0][1] - bounds[0][0])  # chunk 0 is the longest
    rbuf = comm.buffer("ring.recv", (PIPELINE_DEPTH, max(1, longest)), src_w.dtype, xp)
    acc = comm.buffer("ring.acc", max(1, longest), _F32, xp) if half else None
    _host_sync(xp)
    for s in range(n - 1):
        send_from = src_w if s == 0 else dst_w
        sends = _pieces(*bounds[(r - s - 1) % n], piece)
        recvs = _pieces(*bounds[(r - s - 2) % n], piece)
        scale = mean and s == n - 2  # the last step completes this rank's chunk
        if len(sends) <= 1 and len(recvs) <= 1:
            # One piece each way: a single Sendrecv (fewer calls; nothing to overlap anyway).
            slo, shi = sends[0] if sends else (0, 0)
            lo, hi = recvs[0] if recvs else (0, 0)
            comm.bytes_sent += send_from[slo:shi].nbytes
            mpi.Sendrecv([send_from[slo:shi], wtype], right, _TAG_REDUCE, [rbuf[0, : hi - lo], wtype], left,
                         _TAG_REDUCE)
            if recvs:
                _accumulate(xp, src, dst, rbuf[0, : hi - lo], lo, hi, acc, n if scale else 0)
            continue
        # Pipelined: keep PIPELINE_DEPTH pieces in flight each way; piece p is added while the later
        # ones travel, and its receive slot is reused for piece p + PIPELINE_DEPTH.
        depth = PIPELINE_DEPTH
        sreqs, rreqs = [], []

        def post_recv(p: int) -> None:
            if p < len(recvs):
                lo, hi = recvs[p]
                rreqs.append(mpi.Irecv([rbuf[p % depth, : hi - lo], wtype], left, _TAG_REDUCE))

        def post_send(p: int) -> None:
            if p < len(sends):
                lo, hi = sends[p]
                comm.bytes_sent += send_from[lo:hi].nbytes
                sreqs.append(mpi.Isend([send_from[lo:hi], wtype], right, _TAG_REDUCE))

        for p in range(depth):
            post_recv(p)
            post_send(p)
        for p, (lo, hi) in enumerate(recvs):
            rreqs[p].Wait()
            _accumulate(xp, src, dst, rbuf[p % depth, : hi - lo], lo, hi, acc, n if scale else 0)
            post_recv(p + depth)
            post_send(p + depth)
        for q in range(len(recvs) + depth, len(sends)):
            post_send(q)
        MPI.Request.Waitall(sreqs)


def _accumulate(xp, src, dst, got, lo: int, hi: int, acc, divide_by: int) -> None:
    """dst[lo:hi] = src[lo:hi] + got (divided by ``divide_by`` when non-zero), with no temporaries.

    Half types (``acc`` is a float32 scratch piece): the sum and the division are done in float32 and
    rounded to half once, when stored.
    """
    if acc is not None:
        a = acc[: hi - lo]
        xp.add(src[lo:hi], got.view(src.dtype), out=a, dtype=_F32)
        if divide_by:
            xp.divide(a, divide_by, out=a)
        dst[lo:hi] = a
    else:
        out = dst[lo:hi]
        xp.add(src[lo:hi], got, out=out)
        if divide_by:
            xp.divide(out, divide_by, out=out)


def _ring_allgather(comm: Communicator, buf, bounds) -> None:
    """Ring all-gather in place: chunk ``bounds[rank]`` of flat ``buf`` is this rank's; afterwards all are."""
    mpi = comm.comm
    n, r = comm.size, comm.rank
    right, left = (r + 1) % n, (r - 1) % n
    wtype = _mpi_type(buf.dtype)
    _host_sync(get_array_module(buf))
    for s in range(n - 1):
        slo, shi = bounds[(r - s) % n]
        rlo, rhi = bounds[(r - s - 1) % n]
        comm.bytes_sent += buf[slo:shi].nbytes
        mpi.Sendrecv([buf[slo:shi], wtype], right, _TAG_GATHER, [buf[rlo:rhi], wtype], left, _TAG_GATHER)


# ----------------------------------------------------------------------------------------------
# Public collectives
# ----------------------------------------------------------------------------------------------


def allreduce(array, op: str = "mean", algorithm: str = "ring", comm: Communicator | None = None,
              async_op: bool = False, compression=None):
    """Reduce ``array`` over all ranks, in place; return it (or a :class:`Handle` when ``async_op``).

    Args:
        array: a C-contiguous, writeable array of any shape (float16, bfloat16, float32, float64; int32
            and int64 with op "sum"), the same shape and dtype on every rank.
        op: "sum", or "mean" (the sum divided by the world size).
        algorithm: "ring" (dtrain's pipelined ring; the result is bitwise identical on every rank),
            "hierarchical" (reduce within each node, ring across node leaders, broadcast within nodes;
            identical on every rank), "mpi" (MPI_Allreduce, the reference) or "nccl" (CuPy arrays
            only: ncclAllReduce through cupy.cuda.nccl).
        comm: the Communicator (default: the world).
        async_op: queue it on the Communicator's background thread and return a Handle whose
            ``wait()`` returns ``array``; do not touch ``array`` before then.
        compression: None, a spec such as "topk:0.01" or a ``dtrain.distributed.compression.Compressor``. The
            sum then goes through the compressor (its own collectives; ``algorithm`` is not used). Pass
            the same Compressor object on every call to keep its error-feedback memory across calls;
            a spec builds a fresh one each time. float32/float64 only.

    A count of 0 or a world of 1 communicates nothing (mean over one rank is the identity).

    >>> g = np.ones(3, np.float32); allreduce(g, op="sum") is g
    True
    """
    comm = _resolve_comm(comm, "allreduce")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"allreduce (rank {comm.rank}): unknown algorithm {algorithm!r}: expected one of "
                         f"{', '.join(map(repr, ALGORITHMS))}")
    _check_op(op, "allreduce", comm)
    _check_array(array, "allreduce", comm, inplace=True)
    _check_reduce_dtype(array.dtype, op, "allreduce", comm)
    if algorithm == "nccl" and get_array_module(array) is np:
        raise ValueError(f"allreduce (rank {comm.rank}): algorithm 'nccl' needs a CuPy (device) array, got a NumPy "
                         "array; use 'ring' for host arrays")
    algo = ALGORITHMS[algorithm]
    flat = array.reshape(-1)
    mean = op == "mean"
    if compression is not None and compression != "none":
        from .compression import Compressor  # compression builds on this module
        from .compression import get as get_compressor

        compressor = compression if isinstance(compression, Compressor) else get_compressor(compression)
        if array.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError(f"allreduce (rank {comm.rank}): compression needs float32/float64, got {array.dtype}")
        job = functools.partial(_compressed_job, compressor=compressor, shape=array.shape)
        if async_op:
            return comm.submit(f"allreduce(compression={compressor.spec!r}, {array.dtype}[{array.size}])", job,
                               flat, mean, array)
        return job(comm, flat, mean, array)
    if async_op:
        name = f"allreduce(op={op!r}, algorithm={algorithm!r}, {array.dtype}[{array.size}])"
        return comm.submit(name, _allreduce_job, algo, flat, mean, array)
    return _allreduce_job(comm, algo, flat, mean, array)


def _compressed_job(comm: Communicator, flat, mean: bool, array, *, compressor, shape):
    step = compressor.__dict__.get("_allreduce_calls", 0)  # seeds random-k and PowerSGD's warm-up per call
    compressor.__dict__["_allreduce_calls"] = step + 1
    with comm.watch(f"allreduce (compression {compressor.spec})"):
        compressor.reduce(comm, "allreduce", [("array", flat.reshape(shape))], flat, step)
    if mean and comm.size > 1:
        get_array_module(flat).divide(flat, comm.size, out=flat)
    return array


def _allreduce_job(comm: Communicator, algo: AllreduceAlgorithm, flat, mean: bool, array):
    if flat.size and comm.size > 1:
        with comm.watch(f"allreduce {algo.name}"):
            if not algo.host_staging:
                algo.run(comm, flat, mean)
                return array
            with on_host(comm, flat, "allreduce") as wire:
                algo.run(comm, wire, mean)
    return array


def reduce_scatter(array, op: str = "sum", comm: Communicator | None = None, async_op: bool = False):
    """Reduce the flat ``array`` over all ranks and return this rank's chunk of the result (ring).

    Every rank passes the full array (any shape, taken flat; it is not modified). Rank ``r`` gets a new
    array holding the reduced elements ``chunk_bounds(array.size, size)[r]`` (possibly empty). Same
    dtypes and ops as :func:`allreduce`; with ``async_op`` returns a Handle whose ``wait()`` gives it.

    >>> reduce_scatter(np.arange(4.0), op="sum").shape   # world of 1: the whole array
    (4,)
    """
    comm = _resolve_comm(comm, "reduce_scatter")
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
        _ring_reduce_scatter(comm, src, dst, bounds, mean)
        out = dst[lo:hi].copy()
    return out if hx is xp else xp.asarray(out)


def allgather(array, counts=None, comm: Communicator | None = None, async_op: bool = False):
    """Gather every rank's flat ``array`` and return their concatenation in rank order (ring).

    Args:
        array: this rank's contribution (any shape, taken flat; any numeric dtype, the same on all ranks).
        counts: the number of elements each rank contributes, when they differ (e.g. the chunk lengths
            of :func:`chunk_bounds`); the same list on every rank. Default: all equal to ``array.size``.
        comm, async_op: as for :func:`allreduce` (``wait()`` returns the concatenation).

    >>> allgather(np.arange(3)).tolist()   # world of 1
    [0, 1, 2]
    """
    comm = _resolve_comm(comm, "allgather")
    _check_array(array, "allgather", comm, inplace=False)
    n = comm.size
    if counts is None:
        counts = [array.size] * n
    else:
        counts = list(counts)
        if len(counts) != n or any(isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 0
                                   for c in counts):
            raise ValueError(f"allgather (rank {comm.rank}): counts must be {n} non-negative integers (one per "
                             f"rank), got {counts!r}")
        counts = [int(c) for c in counts]
        if counts[comm.rank] != array.size:
            raise ValueError(f"allgather (rank {comm.rank}): this rank contributes {array.size} elements but "
                             f"counts[{comm.rank}] is {counts[comm.rank]}")
    xp = get_array_module(array)
    flat = xp.ascontiguousarray(array).reshape(-1)
    if async_op:
        return comm.submit(f"allgather({array.dtype}, counts={counts})", _allgather_job, flat, counts)
    return _allgather_job(comm, flat, counts)


def _allgather_job(comm: Communicator, flat, counts: list[int]):
    xp = get_array_module(flat)
    offsets = np.concatenate(([0], np.cumsum(counts))).tolist()
    out = xp.empty(offsets[-1], dtype=flat.dtype)
    out[offsets[comm.rank]: offsets[comm.rank + 1]] = flat
    if comm.size > 1 and offsets[-1]:
        size = flat.dtype.itemsize
        bounds = [(offsets[i] * size, offsets[i + 1] * size) for i in range(comm.size)]
        with comm.watch("allgather"), on_host(comm, out.view(np.uint8), "allgather") as wire:
            _ring_allgather(comm, wire, bounds)
    return out


def broadcast(array, root: int = 0, comm: Communicator | None = None, async_op: bool = False):
    """Overwrite ``array`` on every rank with root's ``array`` (in place, MPI_Bcast); return it.

    ``array`` must be C-contiguous and writeable, with the same shape and dtype on every rank.

    >>> broadcast(np.arange(3), root=0).tolist()
    [0, 1, 2]
    """
    comm = _resolve_comm(comm, "broadcast")
    if isinstance(root, bool) or not isinstance(root, (int, np.integer)) or not 0 <= root < comm.size:
        raise ValueError(f"broadcast (rank {comm.rank}): root must be a rank in [0, {comm.size}), got {root!r}")
    _check_array(array, "broadcast", comm, inplace=True)
    if async_op:
        return comm.submit(f"broadcast(root={root}, {array.dtype}[{array.size}])", _broadcast_job, array, int(root))
    return _broadcast_job(comm, array, int(root))


def _broadcast_job(comm: Communicator, array, root: int):
    if comm.size > 1 and array.size:
        _host_sync(get_array_module(array))
        if comm.rank == root:
            comm.bytes_sent += array.nbytes
        with comm.watch(f"broadcast from rank {root}"), \
                on_host(comm, array.reshape(-1).view(np.uint8), "broadcast") as wire:
            comm.comm.Bcast([wire, _comm._MPI.BYTE], root=root)
    return array


# ----------------------------------------------------------------------------------------------
# Measurement (what `dtrain bench allreduce` and benchmarks/allreduce.py report)
# ----------------------------------------------------------------------------------------------


def measure_allreduce(sizes_bytes, algorithms=("ring", "mpi"), repeats: int = 20, warmup: int = 3,
                      comm: Communicator | None = None) -> list[dict]:
    """Time float32 sum all-reduces of each size with each algorithm, nccl-tests style (collective).

    For every size the algorithms are interleaved within each repeat; each timed call is preceded by
    a refill of the array (untimed) and a barrier. A repeat's time is the slowest rank's; the
    reported ``time_s`` is the median over ``repeats`` (``min_time_s`` the best), after ``warmup``
    untimed rounds. ``algbw`` = bytes / time and ``busbw`` = algbw * 2 (n - 1) / n, in GB/s (1e9).
    Returns one dict per (size, algorithm), identical on every rank.
    """
    comm = _resolve_comm(comm, "measure_allreduce")
    MPI = _comm._MPI
    for alg in algorithms:
        if alg not in ALGORITHMS:
            raise ValueError(f"measure_allreduce: unknown algorithm {alg!r}: expected one of {list(ALGORITHMS)}")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"measure_allreduce: repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    n = comm.size
    rows = []
    for nbytes in sizes_bytes:
        count = max(1, int(nbytes) // 4)
        a = np.empty(count, np.float32)
        times = {alg: np.empty(repeats) for alg in algorithms}
        for i in range(warmup + repeats):
            for alg in algorithms:
                a.fill(1.0)
                comm.barrier()
                t0 = time.perf_counter()
                allreduce(a, op="sum", algorithm=alg, comm=comm)
                elapsed = time.perf_counter() - t0
                if a[0] != n or a[-1] != n:
                    raise RuntimeError(f"measure_allreduce (rank {comm.rank}): {alg} gave {a[0]} instead of {n}")
                if i >= warmup:
                    times[alg][i - warmup] = elapsed
        for alg in algorithms:
            t = times[alg]
            comm.comm.Allreduce(MPI.IN_PLACE, [t, MPI.DOUBLE], op=MPI.MAX)
            med = float(np.median(t))
            algbw = count * 4 / med / 1e9
            rows.append({
                "size_bytes": count * 4, "count": count, "dtype": "float32", "algorithm": alg, "world_size": n,
                "time_s": med, "min_time_s": float(t.min()), "algbw_GBps": algbw,
                "busbw_GBps": algbw * 2 * (n - 1) / n, "repeats": repeats,
            })
    return rows
