"""The Reducer: DistributedDataParallel's bucket state machine (torch's ``Reducer``).

Parameters that require grad are packed, in REVERSE registration order, into buckets of at most
``bucket_cap_bytes`` (one dtype per bucket): the last layers' gradients are complete first in backward,
so their bucket can start its sum while earlier layers still run backward. A bucket is launched — its
gradients packed into its flat buffer and handed to the comm hook — when all its parameters'
post-accumulate hooks have fired and every earlier bucket has been launched (all ranks launch buckets
in the same order). When backward ends, :meth:`Reducer.finish` (an engine callback) waits for the
hooks' handles and writes the averaged gradients back into ``param.grad``.

With an algorithm that offers bucket storage (the shm algorithm's ``bucket_window``) and the plain sum as the
hook, the buckets live in a shared-memory window: summed chunk by chunk where they are, and written back from
the rank that summed each chunk (no copies in or out of the all-reduce).

With the plain sum (the built-in hook, no compression) the buckets take raw gradients, and for a synchronising
backward each parameter is offered its place in its bucket as gradient buffer (``Tensor.set_grad_buffer``):
linear weights' gradients are written there by backward itself and need no packing; the write-back gives them
arrays of their own again. The bucket's job then multiplies by the sample count (below), or folds it into the
final scale when that is exact.

Uneven shards are averaged exactly: each rank contributes n_r·g_r (n_r its samples since the last sync); the
counts travel in a small all-reduce just ahead of the first bucket, and every rank divides by Σ n_r —
the gradient of the mean loss over the union of the ranks' samples, as one process would compute it.
Parameters with no gradient this backward contribute zeros (or what their ``.grad`` already holds), so
every rank runs the same collectives.

Byte accounting: ``bytes_sent`` counts what this rank handed to MPI send calls for gradient sync (the
sample counts and the buckets, read from the worker communicator's counters), ``bytes_inter_node`` the
part addressed to other nodes, and ``bytes_uncompressed`` what the plain flat ring would have sent for
the same buffers — the reference of the compression ratio.
"""

from __future__ import annotations

import time

import numpy as np

from ..autograd.engine import queue_callback
from ..backend import get_array_module
from .algorithms import get as get_algorithm
from .algorithms import ring_allreduce_bytes
from .algorithms.base import common_power_of_two
from .collectives import allreduce
from .comm import Communicator
from .hooks import reduce_bucket

__all__ = ["CONTROL_SLOTS", "Bucket", "Reducer"]

CONTROL_SLOTS = 4  # small float64 values (flags, votes) every rank adds to each synchronisation


class Bucket:
    """One bucket: its parameters, their offsets in the flat ``buffer``, and its launch state."""

    def __init__(self, index: int, params: list, names: dict):
        self.index, self.params, self.dtype = index, params, params[0].data.dtype
        self.key = f"bucket{index}"
        self.offsets: list[tuple[int, int]] = []
        n = 0
        for p in params:
            self.offsets.append((n, n + p.data.size))
            n += p.data.size
        self.names = [names[id(p)] for p in params]
        self.rebind(get_array_module(params[0].data).empty(n, dtype=self.dtype))
        self.step = 0
        self.handle = None
        self.launched = False
        self.pending = len(params)

    def rebind(self, buffer) -> None:
        """Make ``buffer`` (flat, this bucket's size and dtype) the bucket's storage."""
        self.buffer = buffer
        # (parameter name, view of the buffer in the parameter's shape): what compressors and hooks see
        self.segments = [(name, buffer[lo:hi].reshape(p.data.shape))
                         for name, p, (lo, hi) in zip(self.names, self.params, self.offsets)]

    def __repr__(self) -> str:
        return f"<Bucket {self.index}: {len(self.params)} parameters, {self.buffer.size} x {self.dtype}>"


def make_buckets(params: list, cap_bytes: int, names: dict) -> list[Bucket]:
    """Pack ``params`` in reverse order into buckets of at most ``cap_bytes`` (one dtype per bucket)."""
    groups, current, size = [], [], 0
    for p in reversed(params):
        if current and (p.data.dtype != current[0].data.dtype or size + p.data.nbytes > cap_bytes):
            groups.append(current)
            current, size = [], 0
        current.append(p)
        size += p.data.nbytes
    if current:
        groups.append(current)
    return [Bucket(i, g, names) for i, g in enumerate(groups)]


class Reducer:
    """Buckets, ready order, launch and finish, sample weighting and byte accounting for one model.

    Args:
        params: the parameters that require grad, in registration order.
        names: ``{id(param): name}``.
        comm: the Communicator; cap_bytes: the bucket size; overlap: launch buckets during backward.
        hook, state: the comm hook and its state (see :mod:`dtrain.distributed.hooks`).
        algorithm: what the sample counts travel on (host arrays: a device-only algorithm means the ring).
        shared_buckets: the hook is the plain sum over ``algorithm``: an algorithm that offers bucket storage
            (``bucket_window``: the shm algorithm) sums the buckets where they are instead (``self.window``),
            until another hook is registered (``window_active``).
        gradient_as_bucket_view: leave each ``.grad`` a view of its bucket after a sync (``as_view``: private host
            buckets with the plain sum only).
    """

    def __init__(self, params: list, names: dict, comm: Communicator, cap_bytes: int, overlap: bool, hook, state,
                 algorithm="ring", shared_buckets: bool = False, gradient_as_bucket_view: bool = False):
        self.comm, self.overlap = comm, overlap
        algo = get_algorithm(algorithm)
        self.counts_algorithm = "ring" if algo.device_only else algo
        self.hook, self.hook_state = hook, state
        self.buckets = make_buckets(params, cap_bytes, names)
        self.plain = shared_buckets  # the hook is the plain sum: gradients go in raw, weighted by the sums' job
        self.views_wanted = gradient_as_bucket_view
        self.window = self._bucket_window(algo) if shared_buckets else None
        self.offered = False  # the buckets' places are offered to backward as gradient buffers (offer_buffers)
        # offered on the host only: a device's bandwidth makes the pack cheap, and its matmul's out= is not relied on
        self.host_buckets = all(type(b.buffer) is np.ndarray for b in self.buckets)
        if self.window is not None:
            self.window.on_close.append(self._leave_window)
        self.where = {id(p): b for b in self.buckets for p in b.params}
        self.samples = 0  # this rank's samples since the last synchronisation
        self.armed = False  # the coming backward synchronises
        self.active = False  # a synchronisation is in progress (buckets being launched)
        self.next_bucket = 0
        self.counts = np.zeros(2 + CONTROL_SLOTS, dtype=np.float64)  # [samples, samples squared, control values...]
        self.weight = 0.0  # this rank's sample count in the synchronisation being summed
        self.control = np.zeros(CONTROL_SLOTS, dtype=np.float64)  # summed over ranks with the next sync
        self.control_sum = np.zeros(CONTROL_SLOTS, dtype=np.float64)  # ... the result, after finish()
        self.count_handle = None
        self.step = 0  # synchronisations completed (seeds random-k, PowerSGD's start_iter)
        self.bytes_sent = 0
        self.bytes_inter_node = 0
        self.bytes_uncompressed = 0
        self.last_step_bytes = (0, 0)  # (sent, uncompressed) of the latest synchronisation
        self.worker_comm: Communicator | None = None  # the communicator the buckets' jobs run on
        self._marks = (0, 0)  # the worker's counters when this sync's first job started
        self._raw_before = 0
        self.timings = {"finish_enter": 0.0, "finish_s": 0.0, "pack_in_hooks_s": 0.0, "pack_in_finish_s": 0.0,
                        "wait_s": 0.0, "launch_times": []}

    @property
    def window_active(self) -> bool:
        """The buckets are summed in the shared window (until another hook is registered: ``use_hook``)."""
        return self.window is not None and self.plain

    @property
    def as_view(self) -> bool:
        """gradient_as_bucket_view in effect: after a sync each ``.grad`` is its view of its private host bucket
        (the shm window copies its averages out instead)."""
        return self.views_wanted and self.plain and self.host_buckets and self.window is None

    def use_hook(self, hook, state) -> None:
        """Sum every bucket with ``hook(state, bucket)`` from now on: it sums what it is given, so the buckets take
        sample-weighted gradients again, and nothing is offered to backward (a shared window stays plain storage)."""
        self.hook, self.hook_state = hook, state
        self.plain = False
        self.offer_buffers(False)

    def _bucket_window(self, algo):
        """The algorithm's shared storage for the buckets (host buffers of one dtype), rebound into it; None
        where the algorithm offers none. Collective over the communicator (DDP's construction is)."""
        make = getattr(algo, "bucket_window", None)
        dtypes = {b.dtype for b in self.buckets}
        if make is None or self.comm.size == 1 or len(dtypes) != 1 or \
                any(get_array_module(b.buffer) is not np for b in self.buckets):
            return None
        window = make(self.comm, [b.buffer.size for b in self.buckets], dtypes.pop())
        if window is not None:
            for b, buf in zip(self.buckets, window.buffers()):
                b.rebind(buf)
        return window

    # -- backward ------------------------------------------------------------------------------

    def grad_ready(self, param) -> None:
        """A parameter's gradient was accumulated (its post-accumulate hook)."""
        if not self.armed or self.comm.size == 1:
            return
        if not self.active:
            self.begin()
        bucket = self.where[id(param)]
        if bucket.launched:
            raise RuntimeError("DistributedDataParallel: a parameter received a second gradient in one backward "
                               "after its bucket was sent; call backward once per forward")
        bucket.pending -= 1
        if self.overlap:
            self.launch_ready(in_finish=False)

    def begin(self, in_backward: bool = True) -> None:
        """Start a synchronisation (at the first ready gradient, or from sync_without_backward)."""
        if self.window is not None:  # its memory goes with the communicator: never pack into a freed window
            self.comm._check_open("DistributedDataParallel gradient synchronisation")
        self.active = True
        self.next_bucket = 0
        for b in self.buckets:
            b.pending, b.launched, b.handle = len(b.params), False, None
        self.timings.update(pack_in_hooks_s=0.0, pack_in_finish_s=0.0, wait_s=0.0, launch_times=[])
        if in_backward:
            queue_callback(self.finish)

    def launch_ready(self, in_finish: bool) -> None:
        """Launch every bucket that is complete and next in order."""
        while self.next_bucket < len(self.buckets) and (in_finish or self.buckets[self.next_bucket].pending == 0):
            self.launch(self.buckets[self.next_bucket], in_finish)

    def launch(self, bucket: Bucket, in_finish: bool) -> None:
        """Pack the bucket's sample-weighted gradients and hand it to the comm hook."""
        t0 = time.perf_counter()
        if bucket.index == 0:
            # The sample counts travel just ahead of the first bucket, not at the first hook: a rank that
            # waits in MPI busy-polls, and that would compete with its own backward for the core. In the
            # shared window they are in this rank's header, read by the others after the first bucket's fence.
            self.weight = float(self.samples)
            self.counts[:2] = self.weight, self.weight * self.weight
            self.counts[2:] = self.control
            if self.window_active:
                self.window.set_header(self.counts)
            else:
                self.count_handle = self.comm.submit("DDP sample counts", self._count_job)
            self.bytes_uncompressed += ring_allreduce_bytes(self.counts.size, 8, self.comm.size, self.comm.rank)
        if self.plain:
            self._pack_raw(bucket)
        else:
            self._pack(bucket)
        bucket.step = self.step
        if self.window_active:
            bucket.handle = self.comm.submit(f"DDP {bucket.key} (shared window)", self._window_job, bucket.index)
        elif self.plain:
            bucket.handle = self.comm.submit(f"DDP {bucket.key}", self._plain_job, bucket)
        else:
            bucket.handle = self.hook(self.hook_state, bucket)
        bucket.launched = True
        self.next_bucket = bucket.index + 1
        self.bytes_uncompressed += ring_allreduce_bytes(bucket.buffer.size, bucket.buffer.itemsize, self.comm.size,
                                                        self.comm.rank)
        self.timings["launch_times"].append(t0)
        self.timings["pack_in_finish_s" if in_finish else "pack_in_hooks_s"] += time.perf_counter() - t0

    def _pack(self, bucket: Bucket) -> None:
        """The bucket's buffer = this rank's sample count times each gradient (zeros where there is none)."""
        xp = get_array_module(bucket.buffer)
        weight = float(self.samples)
        for p, (lo, hi) in zip(bucket.params, bucket.offsets):
            view = bucket.buffer[lo:hi]
            if p.grad is None:
                view[...] = 0
            else:
                xp.multiply(p.grad.reshape(-1), weight, out=view)

    def _pack_raw(self, bucket: Bucket) -> None:
        """With the plain sum the gradients go in as they are (one backward wrote there already stays) and the
        sums' job weights them: ``_plain_job``, or in the shared window the sum itself (the header's first value
        is this rank's sample count)."""
        for p, (lo, hi), (_, seg) in zip(bucket.params, bucket.offsets, bucket.segments):
            if p.grad is None:
                bucket.buffer[lo:hi] = 0
            elif p.grad is not seg:
                bucket.buffer[lo:hi] = p.grad.reshape(-1)

    def offer_buffers(self, on: bool) -> None:
        """Offer each parameter its place in its bucket (with the plain sum) as the buffer backward writes its
        gradient into (``Tensor.set_grad_buffer``: no packing copy for it), or withdraw the offers. Offered only
        for a synchronising backward on an open communicator, withdrawn by its ``finish``: outside a step no
        gradient ever lives in a bucket."""
        on = on and self.plain and self.host_buckets and not self.comm.closed
        if on == self.offered:
            return
        for b in self.buckets:
            for p, (_, seg) in zip(b.params, b.segments):
                p.set_grad_buffer(seg if on else None)
        self.offered = on

    def _leave_window(self) -> None:
        """Before the window is freed: withdraw the offers, and give any gradient still in it its own copy."""
        self.offer_buffers(False)
        for b in self.buckets:
            for p in b.params:
                if p.grad is not None and np.may_share_memory(p.grad, b.buffer):
                    p.grad = p.grad.copy()

    def _mark(self, wcomm: Communicator) -> None:
        # On the worker thread, in the first of this sync's jobs: its byte counters before the sync.
        self.worker_comm = wcomm
        self._marks = (wcomm.bytes_sent, wcomm.bytes_inter_node)

    def _plain_job(self, wcomm: Communicator, bucket: Bucket) -> float:
        """Weight this rank's raw gradients, sum the bucket over the ranks; the factor the sums still lack."""
        factor = self._weigh(bucket.buffer)
        reduce_bucket(wcomm, self.hook_state, bucket)
        return factor

    def _weigh(self, flat) -> float:
        """Multiply ``flat`` by this rank's sample count (what the sum of sample-weighted gradients needs), or,
        when every rank has the same count and it is a power of two, leave it and return that count: the
        product is then exact and commutes with the sum's rounding, so it joins the final scale (the same bits,
        one pass fewer). The sample counts (the count job, ahead on this worker) are summed by now."""
        common = common_power_of_two(float(self.counts[0]), float(self.counts[1]), self.comm.size)
        if common:
            return common
        get_array_module(flat).multiply(flat, self.weight, out=flat)
        return 1.0

    def _count_job(self, wcomm: Communicator):
        self._mark(wcomm)
        with wcomm.watch("DDP sample counts", bucket=0):
            allreduce(self.counts, op="sum", algorithm=self.counts_algorithm, comm=wcomm)
        return self.counts

    def _window_job(self, wcomm: Communicator, index: int):
        if index == 0:
            self._mark(wcomm)
        with wcomm.watch(f"DDP gradient bucket {index} (shared window)", bucket=index):
            self.window.reduce(wcomm, index)  # the sample-weighted mean of this rank's chunk, in place

    # -- the end of backward -------------------------------------------------------------------

    def finish(self) -> None:
        """Wait for every bucket, then write the sample-weighted average into each ``param.grad``.

        Runs automatically at the end of a synchronising backward; a no-op when no synchronisation
        is in progress (so calling it again is harmless).
        """
        if self.comm.size == 1:
            self.samples = 0
            self.control_sum[...] = self.control
            return
        if not self.active:
            return
        start = time.perf_counter()
        self.timings["finish_enter"] = start
        self.launch_ready(in_finish=True)
        windowed = self.window_active
        if windowed:  # the first bucket's fence has made every rank's header visible
            self._wait(self.buckets[0].handle)
            counts = self.window.header_sum(self.counts.size)
        else:
            counts = self._wait(self.count_handle)
        total = float(counts[0])
        self.control_sum[...] = counts[2:]
        if total <= 0:
            raise RuntimeError(f"DistributedDataParallel: no rank had any samples this step (rank {self.comm.rank})")
        for b in self.buckets:
            summed = self._wait(b.handle) if b.index or not windowed else None  # (bucket 0's was waited for above)
            if windowed:
                self._write_from_window(b)
            elif self.plain:
                self._write_grads(b, b.buffer, summed / total, self.as_view)
            else:
                self._write_grads(b, summed, 1.0 / total, False)
            b.handle = None
        self.offer_buffers(False)
        if windowed:
            with self.comm.watch("DDP shared buckets released"):
                self.window.release()
        self.active, self.armed, self.samples, self.count_handle = False, False, 0, None
        self.step += 1
        self._account()
        self.timings["finish_s"] = time.perf_counter() - start

    def _wait(self, handle):
        t0 = time.perf_counter()
        try:
            return handle.wait()
        finally:
            self.timings["wait_s"] += time.perf_counter() - t0

    @staticmethod
    def _write_grads(bucket: Bucket, summed, scale: float, as_view: bool) -> None:
        """``.grad`` = the summed bucket times ``scale``: into an array of each parameter's own, or, with
        ``as_view``, in place, each ``.grad`` then being its view of the bucket (gradient_as_bucket_view)."""
        xp = get_array_module(bucket.buffer)
        if as_view:
            xp.multiply(summed, scale, out=summed, casting="unsafe")
            for p, (_, seg) in zip(bucket.params, bucket.segments):
                p.grad = seg
            return
        for p, (lo, hi), (_, seg) in zip(bucket.params, bucket.offsets, bucket.segments):
            if p.grad is None or p.grad is seg:  # a gradient backward wrote into the bucket gets its own array
                p.grad = xp.empty(p.data.shape, dtype=p.data.dtype)
            xp.multiply(summed[lo:hi].reshape(p.data.shape), scale, out=p.grad, casting="unsafe")

    def _write_from_window(self, bucket: Bucket) -> None:
        """Each parameter's averaged gradient copied piece by piece from the ranks that summed it, into an array of
        its own (a gradient backward wrote into the window must not stay there)."""
        for p, (lo, hi) in zip(bucket.params, bucket.offsets):
            in_window = p.grad is not None and np.may_share_memory(p.grad, bucket.buffer)
            own = p.grad is not None and not in_window and p.grad.flags.c_contiguous
            target = p.grad if own else np.empty(p.data.shape, dtype=p.data.dtype)
            flat = target.reshape(-1)
            for s, e, summed in self.window.pieces(bucket.index, lo, hi):
                flat[s - lo:e - lo] = summed
            if p.grad is None or in_window:
                p.grad = target
            elif not own:
                p.grad[...] = target

    def _account(self) -> None:
        wc = self.worker_comm
        sent, inter = wc.bytes_sent - self._marks[0], wc.bytes_inter_node - self._marks[1]
        self.bytes_sent += sent
        self.bytes_inter_node += inter
        self.last_step_bytes = (sent, self.bytes_uncompressed - self._raw_before)
        self._raw_before = self.bytes_uncompressed

    def sync_without_backward(self) -> None:
        """Take part in this step's synchronisation without a backward pass (a rank with an empty shard):
        contribute the current gradients (zeros where None) with the sample count since the last sync."""
        if self.comm.size == 1 or self.active:
            return
        self.begin(in_backward=False)
        self.finish()
