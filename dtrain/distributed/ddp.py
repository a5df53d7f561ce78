"""DistributedDataParallel: gradients averaged across ranks in fused buckets, overlapped with backward.

Construction checks that every rank holds the same parameters (names, shapes, dtypes) — a
mismatch is an error on every rank listing the differences, never a hang — then broadcasts rank
0's parameters and buffers.

Parameters (those that require grad) are packed, in REVERSE registration order, into buckets of
at most ``bucket_cap_mb`` (one dtype per bucket): the last layers' gradients are complete first
in backward, so their bucket can start its all-reduce while earlier layers still run backward.
A bucket is launched when all its parameters' post-accumulate hooks have fired and every earlier
bucket has been launched (all ranks launch buckets in the same order). All-reduces run on the
communicator's background worker (non-blocking ring); when the backward pass ends, an engine
callback waits for them and writes the averaged gradients back into ``param.grad``, so
``loss.backward()`` returns with averaged gradients and ``optimizer.step()`` needs nothing else.

Uneven shards are averaged exactly: the forward pass records this rank's sample count n_r; each
rank contributes n_r·g_r, the counts are summed alongside, and every rank divides by Σ n_r — the
gradient of the mean loss over the union of the ranks' samples, as one process would compute it.
A rank with no samples this step calls :meth:`sync_without_backward` (it adds zeros with
weight 0) while the others run backward.

Parameters that received no gradient in this backward (unused in the forward, or a rank that had
no samples) contribute ZEROS (or, under accumulation, whatever their ``.grad`` already holds), so
every rank runs the same collectives; afterwards every trainable parameter has a ``.grad`` on
every rank (zeros-filled if no rank produced one).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

from ..autograd.engine import queue_callback
from ..autograd.function import is_grad_enabled
from ..autograd.tensor import Tensor
from ..backend import get_array_module
from ..nn.module import Module
from .collectives import allreduce, broadcast, ring_allreduce_bytes
from .comm import Communicator, get_world
from .compression import Compressor
from .compression import get as get_compressor

__all__ = ["CONTROL_SLOTS", "DistributedDataParallel", "ModelMismatchError"]

CONTROL_SLOTS = 4  # small float64 values (flags, votes) every rank adds to each synchronisation


class ModelMismatchError(RuntimeError):
    """Ranks hold different models (raised on every rank, listing the differences)."""


class _Bucket:
    __slots__ = ("buffer", "dtype", "handle", "index", "key", "launched", "offsets", "params", "pending",
                 "segments")

    def __init__(self, index: int, params: list, dtype, names: dict):
        self.index, self.params, self.dtype = index, params, dtype
        self.key = f"bucket{index}"
        self.offsets = []
        n = 0
        for p in params:
            self.offsets.append((n, n + p.data.size))
            n += p.data.size
        xp = get_array_module(params[0].data)
        self.buffer = xp.empty(n, dtype=dtype)
        # (parameter name, view of the buffer in the parameter's shape): what compressors see
        self.segments = [(names[id(p)], self.buffer[lo:hi].reshape(p.data.shape))
                         for p, (lo, hi) in zip(params, self.offsets)]
        self.handle = None
        self.launched = False
        self.pending = len(params)


class DistributedDataParallel(Module):
    """Wrap ``module`` for data-parallel training; call it like the module.

    Args:
        module: the model (identical on every rank up to parameter values).
        bucket_cap_mb: bucket size in MiB (default 25).
        compression: a spec ("none", "fp16", "bf16", "powersgd:R", "topk:RATIO", "randomk:RATIO", "qsgd:LEVELS",
            "signsgd") or a Compressor; buckets are summed through it (see dtrain.distributed.compression).
        overlap: start each bucket's all-reduce during backward (True) or all at the end (False).
        algorithm: "ring" (ours), "hierarchical" (per node, then a ring over node leaders) or "mpi"
            (MPI_Allreduce). With compression the compressor's own exchange is used.
        comm: the Communicator (default: the world from dtrain.distributed.init()).
        broadcast_buffers: also broadcast rank 0's buffers (e.g. BatchNorm running stats) at construction.

    ``ddp.control`` holds CONTROL_SLOTS float64 values (flags, votes) that travel with the sample counts
    of the next synchronisation: after it, ``ddp.control_sum`` is their sum over the ranks, identical on
    every rank. The training loop uses it to agree on "stop now" and "the loss was non-finite" without a
    collective of its own.
    """

    def __init__(self, module: Module, bucket_cap_mb: float = 25, compression=None, overlap: bool = True,
                 algorithm: str = "ring", comm: Communicator | None = None, broadcast_buffers: bool = True):
        super().__init__()
        if not isinstance(module, Module):
            raise TypeError(f"DistributedDataParallel wraps an nn.Module, got {type(module).__name__}")
        if not isinstance(bucket_cap_mb, (int, float)) or isinstance(bucket_cap_mb, bool) or not bucket_cap_mb > 0:
            raise ValueError(f"bucket_cap_mb must be a positive number, got {bucket_cap_mb!r}")
        if algorithm not in ("ring", "mpi", "hierarchical", "nccl"):
            raise ValueError(f"algorithm must be 'ring', 'hierarchical', 'mpi' or 'nccl', got {algorithm!r}")
        self.module = module
        d = self.__dict__  # plain attributes (not registered state)
        d["comm"] = comm or get_world()
        d["algorithm"], d["overlap"], d["bucket_cap_mb"] = algorithm, bool(overlap), float(bucket_cap_mb)
        d["compressor"] = compression if isinstance(compression, Compressor) else get_compressor(compression)
        d["_params"] = [p for p in module.parameters() if p.requires_grad]
        _check_same_model(self.comm, module)
        for p in module.parameters():
            broadcast(p.data, 0, comm=self.comm)
        if broadcast_buffers:
            for b in module.buffers():
                broadcast(b, 0, comm=self.comm)
        names = {id(p): name for name, p in module.named_parameters()}
        d["buckets"] = _make_buckets(self._params, int(bucket_cap_mb * 2**20), names)
        d["_where"] = {id(p): (b, i) for b in self.buckets for i, p in enumerate(b.params)}
        d["_handles"] = [p.register_post_accumulate_grad_hook(self._grad_ready) for p in self._params]
        d["_no_sync"] = False
        d["_samples"] = 0  # this rank's samples since the last synchronisation
        d["_armed"] = False  # the coming backward synchronises
        d["_active"] = False  # a synchronisation is in progress (buckets being launched)
        d["_count"] = np.zeros(1 + CONTROL_SLOTS, dtype=np.float64)  # [samples, control values...]
        d["control"] = np.zeros(CONTROL_SLOTS, dtype=np.float64)  # summed over ranks with the next sync
        d["control_sum"] = np.zeros(CONTROL_SLOTS, dtype=np.float64)  # ... the result, after finish()
        d["_count_handle"] = None
        d["_next_bucket"] = 0
        d["step"] = 0  # synchronisations completed (seeds random-k, PowerSGD's start_iter)
        d["bytes_sent"] = 0  # bytes this rank handed to MPI send calls for gradient sync (payloads, counts)
        d["bytes_uncompressed"] = 0  # what the plain ring would have sent for the same buckets (this rank)
        d["_worker_comm"] = None  # the worker's Communicator, whose counter holds the bytes actually sent
        d["last_step_bytes"] = (0, 0)  # (sent, uncompressed) of the latest synchronisation

    # -- forward -------------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        if self._active:
            raise RuntimeError("DistributedDataParallel: a synchronisation is still in progress; the previous "
                               "backward did not finish (call ddp.finish() after an interrupted backward)")
        if is_grad_enabled() and self.comm.size > 1:  # a forward under no_grad (evaluation) is no sample
            first = args[0] if args else next(iter(kwargs.values()), None)
            self.__dict__["_samples"] += int(first.shape[0]) if hasattr(first, "shape") and len(first.shape) else 1
            self.__dict__["_armed"] = not self._no_sync
        return self.module(*args, **kwargs)

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """Forward/backward passes inside accumulate gradients locally; the next pass outside syncs them
        (the average weights each rank by all the samples it saw since the last sync)."""
        self.__dict__["_no_sync"] = True
        try:
            yield
        finally:
            self.__dict__["_no_sync"] = False

    # -- the hot path --------------------------------------------------------------------------
    def _grad_ready(self, param: Tensor) -> None:
        if not self._armed or self.comm.size == 1:
            return
        if not self._active:
            self._begin()
        bucket, _ = self._where[id(param)]
        if bucket.launched:
            raise RuntimeError("DistributedDataParallel: a parameter received a second gradient in one backward "
                               "after its bucket was sent; call backward once per forward")
        bucket.pending -= 1
        if self.overlap:
            self._launch_ready()

    def _begin(self, in_backward: bool = True) -> None:
        d = self.__dict__
        d["_active"] = True
        d["_next_bucket"] = 0
        for b in self.buckets:
            b.pending, b.launched, b.handle = len(b.params), False, None
        if in_backward:
            queue_callback(self.finish)

    def _launch_ready(self) -> None:
        while self._next_bucket < len(self.buckets) and self.buckets[self._next_bucket].pending == 0:
            self._launch(self.buckets[self._next_bucket])

    def _launch(self, bucket: _Bucket) -> None:
        if bucket.index == 0:
            # The sample counts travel just ahead of the first bucket, not at the first hook: a rank that
            # waits in MPI busy-polls, and that would compete with its own backward for the core.
            self._count[0] = self._samples
            self._count[1:] = self.control
            self.__dict__["_count_handle"] = self.comm.submit("DDP sample counts", self._count_job)
            self.__dict__["bytes_uncompressed"] += ring_allreduce_bytes(self._count.size, 8, self.comm.size,
                                                                        self.comm.rank)
        xp = get_array_module(bucket.buffer)
        weight = float(self._samples)
        for p, (lo, hi) in zip(bucket.params, bucket.offsets):
            view = bucket.buffer[lo:hi]
            if p.grad is None:
                view[...] = 0
            else:
                xp.multiply(p.grad.reshape(-1), weight, out=view)
        bucket.handle = self.comm.submit(f"DDP {bucket.key} ({self.compressor.spec})", self._reduce_job, bucket,
                                         self.step)
        bucket.launched = True
        self.__dict__["_next_bucket"] = bucket.index + 1
        self.__dict__["bytes_uncompressed"] += ring_allreduce_bytes(bucket.buffer.size, bucket.buffer.itemsize,
                                                                    self.comm.size, self.comm.rank)

    # The jobs below run on the communicator's worker thread; each adds the bytes it handed to MPI
    # (the worker Communicator counts them at the send calls) to this DDP's own total.
    def _count_job(self, wcomm: Communicator):
        before = wcomm.bytes_sent
        with wcomm.watch("DDP sample counts", bucket=0):
            allreduce(self._count, op="sum", algorithm="ring", comm=wcomm)
        self.__dict__["bytes_sent"] += wcomm.bytes_sent - before
        return self._count

    def _reduce_job(self, wcomm: Communicator, bucket: _Bucket, step: int):
        """Sum the bucket over the ranks, through the compressor (or MPI_Allreduce)."""
        self.__dict__["_worker_comm"] = wcomm
        before = wcomm.bytes_sent
        with wcomm.watch(f"DDP gradient bucket {bucket.index} ({self.compressor.spec})", bucket=bucket.index):
            if self.algorithm != "ring" and self.compressor.spec == "none":
                allreduce(bucket.buffer, op="sum", algorithm=self.algorithm, comm=wcomm)
            else:
                self.compressor.reduce(wcomm, bucket.key, bucket.segments, bucket.buffer, step)
        self.__dict__["bytes_sent"] += wcomm.bytes_sent - before
        return bucket.buffer

    def finish(self) -> None:
        """Wait for every bucket, then write the sample-weighted average into each ``param.grad``.

        Runs automatically at the end of a synchronising backward; a no-op when no synchronisation
        is in progress (so calling it again is harmless).
        """
        if self.comm.size == 1:
            self.__dict__["_samples"] = 0
            self.control_sum[...] = self.control
            return
        if not self._active:
            return
        for b in self.buckets:
            if not b.launched:
                self._launch(b)
        counts = self._count_handle.wait()
        total = float(counts[0])
        self.control_sum[...] = counts[1:]
        if total <= 0:
            raise RuntimeError(f"DistributedDataParallel: no rank had any samples this step (rank {self.comm.rank})")
        scale = 1.0 / total
        for b in self.buckets:
            b.handle.wait()
            xp = get_array_module(b.buffer)
            for p, (lo, hi) in zip(b.params, b.offsets):
                if p.grad is None:
                    p.grad = xp.empty(p.data.shape, dtype=p.data.dtype)
                xp.multiply(b.buffer[lo:hi].reshape(p.data.shape), scale, out=p.grad, casting="unsafe")
            b.handle = None
        d = self.__dict__
        d["_active"], d["_armed"], d["_samples"], d["_count_handle"] = False, False, 0, None
        d["step"] += 1
        sent, raw = self.bytes_sent, self.bytes_uncompressed
        d["last_step_bytes"] = (sent - d.get("_sent_before", 0), raw - d.get("_raw_before", 0))
        d["_sent_before"], d["_raw_before"] = sent, raw

    def sync_without_backward(self) -> None:
        """Take part in this step's synchronisation without a backward pass: a rank whose shard of the
        global batch is empty calls this while the others run backward. It contributes its current
        gradients (zeros where None) with its sample count since the last sync (usually 0 - weight 0)."""
        if self.comm.size == 1 or self._active:
            return
        self._begin(in_backward=False)
        self.finish()

    # -- passthroughs --------------------------------------------------------------------------
    def state_dict(self):
        """The wrapped module's state_dict (no "module." prefix: checkpoints load into the bare model)."""
        return self.module.state_dict()

    def load_state_dict(self, state_dict, strict: bool = True):
        return self.module.load_state_dict(state_dict, strict)

    def remove_hooks(self) -> None:
        """Detach the gradient hooks (the module trains locally again)."""
        for h in self._handles:
            h.remove()
        self.__dict__["_handles"] = []

    def extra_repr(self) -> str:
        return (f"world_size={self.comm.size}, buckets={len(self.buckets)}, bucket_cap_mb={self.bucket_cap_mb}, "
                f"overlap={self.overlap}, algorithm={self.algorithm!r}")


def _make_buckets(params: list, cap_bytes: int, names: dict) -> list[_Bucket]:
    buckets, current, size = [], [], 0
    for p in reversed(params):
        if current and (p.data.dtype != current[0].data.dtype or size + p.data.nbytes > cap_bytes):
            buckets.append(_Bucket(len(buckets), current, current[0].data.dtype, names))
            current, size = [], 0
        current.append(p)
        size += p.data.nbytes
    if current:
        buckets.append(_Bucket(len(buckets), current, current[0].data.dtype, names))
    return buckets


def _signature(module: Module) -> list[tuple]:
    sig = [("parameter", name, tuple(p.shape), str(p.dtype), bool(p.requires_grad))
           for name, p in module.named_parameters()]
    sig += [("buffer", name, tuple(b.shape), str(b.dtype), False) for name, b in module.named_buffers()]
    return sig


def _check_same_model(comm: Communicator, module: Module) -> None:
    """Every rank must hold the same parameter/buffer names, shapes and dtypes; raise everywhere otherwise."""
    if comm.size == 1:
        return
    sig = _signature(module)
    with comm.watch("DDP model check"):
        sigs = comm.comm.allgather(sig)  # a small control message: pickled lower-case call is fine here
    if all(s == sigs[0] for s in sigs):
        return
    problems = []
    ref = {entry[1]: entry for entry in sigs[0]}
    for r, s in enumerate(sigs[1:], start=1):
        mine = {entry[1]: entry for entry in s}
        problems += [f"{e[0]} {e[1]!r} exists on rank 0 but not on rank {r}" for e in sigs[0] if e[1] not in mine]
        problems += [f"{e[0]} {e[1]!r} exists on rank {r} but not on rank 0" for e in s if e[1] not in ref]
        for name in (e[1] for e in sigs[0] if e[1] in mine):  # in registration order
            if ref[name] != mine[name]:
                a, b = ref[name], mine[name]
                problems.append(f"{a[0]} {name!r} is {a[2]} {a[3]}{'' if a[4] else ' (frozen)'} on rank 0 but "
                                f"{b[2]} {b[3]}{'' if b[4] else ' (frozen)'} on rank {r}")
        if not problems and s != sigs[0]:
            problems.append(f"rank {r} registers the same parameters in a different order than rank 0")
    raise ModelMismatchError(f"DistributedDataParallel (rank {comm.rank}): the ranks hold different models: "
                             + "; ".join(problems[:20]) + (f"; ... {len(problems) - 20} more" if len(problems) > 20
                                                            else ""))
