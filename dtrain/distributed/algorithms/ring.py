"""dtrain's ring: a pipelined reduce-scatter then an all-gather around the ring (send to rank+1,
receive from rank-1) over the ``chunk_bounds(count, size)`` partition of the flat array.

In reduce-scatter step ``s`` a rank sends chunk ``(rank-s-1) % size`` and receives chunk
``(rank-s-2) % size``, adding its own contribution to it, so after ``size-1`` steps it holds the fully
reduced chunk ``rank``. Each chunk is reduced on exactly one rank, in a fixed order, and then only
copied, so the result is bitwise identical on every rank ("mean" divides on the chunk's owner, in its
last reduce step, before the all-gather). A reduce-scatter step's transfer is cut into pieces of at
most ``pipeline_bytes`` and pipelined: the receive and send of piece j+1 are posted before piece j is
added (``pipeline_depth`` pieces in flight), so the addition overlaps the transfer; a step whose chunk
fits in one piece is a single ``Sendrecv``, as is every all-gather step. The piecing never changes
the result: each element is still summed in the same order.

float16/bfloat16 travel as 16-bit words but every addition is done in float32: a rank adds the
received partial sum and its own values in a float32 scratch piece and sends that sum rounded to
half; ``mean`` divides the float32 sum before the final rounding.

``op="max"``/``"min"`` run the same schedule with ``maximum``/``minimum`` in place of the addition (half
types compared in float32, which is exact: the result is one of the inputs); NaN propagates, as with
NumPy's ``maximum``.
"""

from __future__ import annotations

from ...backend import get_array_module, is_half_dtype
from ...spec import is_int
from .. import comm as _comm
from .base import F32, REDUCE_OPS, AllreduceAlgorithm, chunk_bounds, host_sync, mpi_type, offsets_of, wire

__all__ = ["PIPELINE_BYTES", "PIPELINE_DEPTH", "RingAllreduce", "ring_allgather", "ring_allreduce_bytes",
           "ring_reduce_scatter"]

# Bytes per pipelined piece of a reduce-scatter step, and pieces in flight each way: the defaults of
# RingAllreduce. Chosen by the sweep in benchmarks/results/allreduce.md: pieces under 512 KB pay
# per-message costs, pieces of 1-2 MB are the fastest at 16-64 MB, deeper windows measured the same as 2.
PIPELINE_BYTES = 1 << 20
PIPELINE_DEPTH = 2

_TAG_REDUCE = 0x3D1
_TAG_GATHER = 0x3D2


class RingAllreduce(AllreduceAlgorithm):
    """dtrain's pipelined ring (bandwidth-optimal; bitwise identical on every rank).

    ``RingAllreduce(pipeline_bytes=N, pipeline_depth=D)`` is a ring with other pipeline parameters
    (what the benchmarks sweep); pass the object as ``algorithm=`` to any collective.
    """

    name = "ring"
    reduce_ops = REDUCE_OPS

    def __init__(self, pipeline_bytes: int = PIPELINE_BYTES, pipeline_depth: int = PIPELINE_DEPTH):
        for what, v in (("pipeline_bytes", pipeline_bytes), ("pipeline_depth", pipeline_depth)):
            if not is_int(v) or v < 1:
                raise ValueError(f"RingAllreduce: {what} must be a positive integer, got {v!r}")
        self.pipeline_bytes, self.pipeline_depth = pipeline_bytes, pipeline_depth

    def allreduce(self, comm, flat, mean: bool, op: str = "sum") -> None:
        bounds = chunk_bounds(flat.size, comm.size)
        ring_reduce_scatter(comm, flat, flat, bounds, mean, self.pipeline_bytes, self.pipeline_depth, op)
        ring_allgather(comm, wire(flat), bounds)

    def allgather(self, comm, buf, counts: list[int]) -> None:
        ring_allgather(comm, buf, offsets_of(counts))

    def __repr__(self) -> str:
        return f"<RingAllreduce pipeline_bytes={self.pipeline_bytes} pipeline_depth={self.pipeline_depth}>"


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


def _pieces(lo: int, hi: int, step: int) -> list[tuple[int, int]]:
    return [(p, min(p + step, hi)) for p in range(lo, hi, step)]


class _Step:
    """One pipelined reduce-scatter step: its send and receive pieces, posted ``depth`` ahead."""

    def __init__(self, ring, send_from, sends, recvs):
        self.ring, self.send_from, self.sends, self.recvs = ring, send_from, sends, recvs
        self.sreqs, self.rreqs = [], []

    def post_recv(self, p: int) -> None:
        r = self.ring
        if p < len(self.recvs):
            lo, hi = self.recvs[p]
            self.rreqs.append(r.mpi.Irecv([r.rbuf[p % r.depth, : hi - lo], r.wtype], r.left, _TAG_REDUCE))

    def post_send(self, p: int) -> None:
        r = self.ring
        if p < len(self.sends):
            lo, hi = self.sends[p]
            piece = self.send_from[lo:hi]
            r.comm.record_send(piece.nbytes, r.inter_node)
            self.sreqs.append(r.mpi.Isend([piece, r.wtype], r.right, _TAG_REDUCE))


class _Ring:
    """The fixed facts of one reduce-scatter: neighbours, wire type, scratch buffers, and ``combine``, the
    elementwise ufunc that folds a received piece into this rank's (add, maximum or minimum)."""

    def __init__(self, comm, src, bounds, pipeline_bytes: int, depth: int, op: str = "sum"):
        self.comm, self.mpi, self.depth = comm, comm.comm, depth
        n, r = comm.size, comm.rank
        self.right, self.left = (r + 1) % n, (r - 1) % n
        self.inter_node = comm.crosses_nodes(self.right)
        self.xp = get_array_module(src)
        self.combine = {"sum": self.xp.add, "max": self.xp.maximum, "min": self.xp.minimum}.get(op)
        if self.combine is None:
            raise ValueError(f"ring reduce-scatter (rank {r}): unknown op {op!r}: expected one of "
                             f"{', '.join(map(repr, REDUCE_OPS))}")
        self.wtype = mpi_type(wire(src).dtype)
        self.piece = max(1, pipeline_bytes // wire(src).dtype.itemsize)
        longest = min(self.piece, bounds[0][1] - bounds[0][0])  # chunk 0 is the longest
        self.rbuf = comm.buffer("ring.recv", (depth, max(1, longest)), wire(src).dtype, self.xp)
        self.acc = comm.buffer("ring.acc", max(1, longest), F32, self.xp) if is_half_dtype(src.dtype) else None


def ring_reduce_scatter(comm, src, dst, bounds, mean: bool, pipeline_bytes: int = PIPELINE_BYTES,
                        pipeline_depth: int = PIPELINE_DEPTH, op: str = "sum") -> None:
    """Ring reduce-scatter of flat ``src`` into flat ``dst`` (which may be ``src``).

    Afterwards ``dst[bounds[rank]]`` holds the reduced chunk (divided by the size when ``mean``); the
    other chunks of ``dst`` hold partial reductions. Each step is pipelined in pieces of
    ``pipeline_bytes``. ``op``: "sum", "max" or "min" (one of :data:`REDUCE_OPS`; ``mean`` with "sum" only).
    """
    ring = _Ring(comm, src, bounds, pipeline_bytes, pipeline_depth, op)
    n, r = comm.size, comm.rank
    src_w, dst_w = wire(src), wire(dst)
    host_sync(ring.xp)
    for s in range(n - 1):
        sends = _pieces(*bounds[(r - s - 1) % n], ring.piece)
        recvs = _pieces(*bounds[(r - s - 2) % n], ring.piece)
        divide_by = n if mean and s == n - 2 else 0  # the last step completes this rank's chunk
        step = _Step(ring, src_w if s == 0 else dst_w, sends, recvs)
        if len(sends) <= 1 and len(recvs) <= 1:
            _single_piece_step(ring, step, src, dst, divide_by)
        else:
            _pipelined_step(ring, step, src, dst, divide_by)


def _single_piece_step(ring, step, src, dst, divide_by: int) -> None:
    """One piece each way: a single Sendrecv (fewer calls; nothing to overlap anyway)."""
    slo, shi = step.sends[0] if step.sends else (0, 0)
    lo, hi = step.recvs[0] if step.recvs else (0, 0)
    piece = step.send_from[slo:shi]
    ring.comm.record_send(piece.nbytes, ring.inter_node)
    ring.mpi.Sendrecv([piece, ring.wtype], ring.right, _TAG_REDUCE, [ring.rbuf[0, : hi - lo], ring.wtype],
                      ring.left, _TAG_REDUCE)
    if step.recvs:
        _accumulate(ring, src, dst, ring.rbuf[0, : hi - lo], lo, hi, divide_by)


def _pipelined_step(ring, step, src, dst, divide_by: int) -> None:
    """Keep ``depth`` pieces in flight each way; piece p is added while the later ones travel, and its
    receive slot is reused for piece p + depth."""
    depth = ring.depth
    for p in range(depth):
        step.post_recv(p)
        step.post_send(p)
    for p, (lo, hi) in enumerate(step.recvs):
        step.rreqs[p].Wait()
        _accumulate(ring, src, dst, ring.rbuf[p % depth, : hi - lo], lo, hi, divide_by)
        step.post_recv(p + depth)
        step.post_send(p + depth)
    for q in range(len(step.recvs) + depth, len(step.sends)):
        step.post_send(q)
    _comm._MPI.Request.Waitall(step.sreqs)


def _accumulate(ring, src, dst, got, lo: int, hi: int, divide_by: int) -> None:
    """dst[lo:hi] = combine(src[lo:hi], got) (divided by ``divide_by`` when non-zero), with no temporaries;
    ``combine`` is ``ring.combine`` (add for "sum"/"mean", maximum or minimum).

    Half types (``ring.acc`` is a float32 scratch piece): the reduction and the division are done in
    float32 and rounded to half once, when stored.
    """
    xp, acc, combine = ring.xp, ring.acc, ring.combine
    if acc is not None:
        a = acc[: hi - lo]
        combine(src[lo:hi], got.view(src.dtype), out=a, dtype=F32)
        if divide_by:
            xp.divide(a, divide_by, out=a)
        dst[lo:hi] = a
    else:
        out = dst[lo:hi]
        combine(src[lo:hi], got, out=out)
        if divide_by:
            xp.divide(out, divide_by, out=out)


def ring_allgather(comm, buf, bounds) -> None:
    """Ring all-gather in place: chunk ``bounds[rank]`` of flat ``buf`` is this rank's; afterwards all are."""
    mpi = comm.comm
    n, r = comm.size, comm.rank
    right, left = (r + 1) % n, (r - 1) % n
    inter_node = comm.crosses_nodes(right)
    wtype = mpi_type(buf.dtype)
    host_sync(get_array_module(buf))
    for s in range(n - 1):
        slo, shi = bounds[(r - s) % n]
        rlo, rhi = bounds[(r - s - 1) % n]
        comm.record_send(buf[slo:shi].nbytes, inter_node)
        mpi.Sendrecv([buf[slo:shi], wtype], right, _TAG_GATHER, [buf[rlo:rhi], wtype], left, _TAG_GATHER)
