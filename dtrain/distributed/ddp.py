"""DistributedDataParallel: the Module wrapper (torch's shape). Gradients are summed in buckets by a
:class:`~dtrain.distributed.reducer.Reducer` through a comm hook, overlapped with backward.

Construction checks that every rank holds the same parameters (names, shapes, dtypes) — a mismatch is
an error on every rank listing the differences, never a hang — then broadcasts rank 0's parameters
and buffers. The forward pass records this rank's sample count (the reducer weights each rank's
gradients by it); ``loss.backward()`` returns with averaged gradients and ``optimizer.step()`` needs
nothing else. ``register_comm_hook(state, hook)`` replaces how a bucket is summed
(:mod:`dtrain.distributed.hooks`); by default the built-in hook sums it through the compressor
(``compression=``, "none" by default) over the all-reduce algorithm (``algorithm=``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from ..autograd.capture_hooks import replay_effect
from ..autograd.function import is_grad_enabled
from ..nn.module import Module
from ..spec import is_real
from .algorithms import get as get_algorithm
from .collectives import broadcast
from .comm import Communicator, get_world
from .compression import Compressor, NoCompression
from .compression import get as get_compressor
from .hooks import HookState, compression_hook
from .reducer import CONTROL_SLOTS, Reducer

__all__ = ["CONTROL_SLOTS", "DistributedDataParallel", "ModelMismatchError"]


class ModelMismatchError(RuntimeError):
    """Ranks hold different models (raised on every rank, listing the differences)."""


class DistributedDataParallel(Module):
    """Wrap ``module`` for data-parallel training; call it like the module.

    Args:
        module: the model (identical on every rank up to parameter values).
        bucket_cap_mb: bucket size in MiB (default 25).
        compression: a spec ("none", "fp16", "bf16", "powersgd:R", "topk:RATIO", "randomk:RATIO", "qsgd:LEVELS",
            "signsgd") or a Compressor object; buckets are summed through it (dtrain.distributed.compression).
        overlap: start each bucket's sum during backward (True) or all at the end (False).
        algorithm: the all-reduce algorithm the buckets (and the compressor's payloads) travel on: "ring"
            (ours), "hierarchical" (per node, then a ring over node leaders), "mpi" (MPI_Allreduce), "nccl"
            (device arrays, no compression), "shm" (every rank on one node: one shared-memory window), or an
            AllreduceAlgorithm object.
        comm: the Communicator (default: the world from dtrain.distributed.init()).
        broadcast_buffers: also broadcast rank 0's buffers (e.g. BatchNorm running stats) at construction.
        gradient_as_bucket_view: after each synchronisation every ``param.grad`` is its view of its bucket (the
            average is written in place) instead of an array of its own: one pass over the gradients fewer,
            as torch's flag of that name. The next synchronising backward writes into the same memory, so a
            ``.grad`` kept across steps changes; modifying ``.grad`` in place between steps (clipping) is safe.
            Applies with the built-in sum and no compression on host arrays, and not to the shm window (whose
            averages are copied out anyway: measured faster than writing into one's own segment right after
            the other ranks read it); otherwise ignored.

    ``ddp.control`` holds CONTROL_SLOTS float64 values (flags, votes) that travel with the sample counts
    of the next synchronisation: after it, ``ddp.control_sum`` is their sum over the ranks, identical on
    every rank. The training loop uses it to agree on "stop now" and "the loss was non-finite" without a
    collective of its own. Byte counters (``bytes_sent``, ``bytes_inter_node``, ``bytes_uncompressed``,
    ``last_step_bytes``), ``step`` and ``timings`` of the latest synchronisation come from the reducer.
    """

    def __init__(self, module: Module, bucket_cap_mb: float = 25, compression=None, overlap: bool = True,
                 algorithm="ring", comm: Communicator | None = None, broadcast_buffers: bool = True,
                 gradient_as_bucket_view: bool = False):
        super().__init__()
        if not isinstance(module, Module):
            raise TypeError(f"DistributedDataParallel wraps an nn.Module, got {type(module).__name__}")
        if not is_real(bucket_cap_mb) or not bucket_cap_mb > 0:
            raise ValueError(f"bucket_cap_mb must be a positive number, got {bucket_cap_mb!r}")
        algo = get_algorithm(algorithm, "DistributedDataParallel")  # the registry names the algorithms
        self.module = module
        self.comm = comm or get_world()
        self.algorithm = algo.name
        self.overlap, self.bucket_cap_mb = bool(overlap), float(bucket_cap_mb)
        self.compressor = compression if isinstance(compression, Compressor) else get_compressor(compression)
        params = [p for p in module.parameters() if p.requires_grad]
        _check_same_model(self.comm, module)
        for p in module.parameters():
            broadcast(p.data, 0, comm=self.comm)
        if broadcast_buffers:
            for b in module.buffers():
                broadcast(b, 0, comm=self.comm)
        names = {id(p): name for name, p in module.named_parameters()}
        state = HookState(self.comm, algorithm, self.compressor)
        self.reducer = Reducer(params, names, self.comm, int(bucket_cap_mb * 2**20), self.overlap, compression_hook,
                               state, algorithm, shared_buckets=isinstance(self.compressor, NoCompression),
                               gradient_as_bucket_view=bool(gradient_as_bucket_view))
        self._hook_handles = [p.register_post_accumulate_grad_hook(self.reducer.grad_ready) for p in params]
        self._no_sync = False

    # -- forward -------------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        first = args[0] if args else next(iter(kwargs.values()), None)
        samples = int(first.shape[0]) if hasattr(first, "shape") and len(first.shape) else 1
        self._before_forward(samples)
        # a captured step replays the module's ops, not this method: count and arm on every replay too
        replay_effect(lambda: self._before_forward(samples))
        return self.module(*args, **kwargs)

    def _before_forward(self, samples: int) -> None:
        r = self.reducer
        if r.active:
            raise RuntimeError("DistributedDataParallel: a synchronisation is still in progress; the previous "
                               "backward did not finish (call ddp.finish() after an interrupted backward)")
        if is_grad_enabled() and self.comm.size > 1:  # a forward under no_grad (evaluation) is no sample
            r.samples += samples
            r.armed = not self._no_sync
            r.offer_buffers(r.armed and bool(self._hook_handles))

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """Forward/backward passes inside accumulate gradients locally; the next pass outside syncs them
        (the average weights each rank by all the samples it saw since the last sync)."""
        self._no_sync = True
        try:
            yield
        finally:
            self._no_sync = False

    def register_comm_hook(self, state, hook: Callable) -> None:
        """Sum every bucket with ``hook(state, bucket) -> Handle`` instead of the built-in compression hook
        (see :mod:`dtrain.distributed.hooks` for the contract and an example). Call it before training."""
        if not callable(hook):
            raise TypeError(f"register_comm_hook: hook must be callable as hook(state, bucket), got "
                            f"{type(hook).__name__}")
        if self.reducer.active:
            raise RuntimeError("register_comm_hook: a synchronisation is in progress")
        self.reducer.use_hook(hook, state)

    def finish(self) -> None:
        """Wait for every bucket and write the averaged gradients (automatic at the end of backward)."""
        self.reducer.finish()

    def sync_without_backward(self) -> None:
        """Take part in this step's synchronisation without a backward pass: a rank whose shard of the
        global batch is empty calls this while the others run backward (it contributes weight 0)."""
        self.reducer.sync_without_backward()

    # -- what the reducer knows ----------------------------------------------------------------
    buckets = property(lambda self: self.reducer.buckets, doc="The buckets (reverse registration order).")
    control = property(lambda self: self.reducer.control, doc="Values to sum with the next sync.")
    control_sum = property(lambda self: self.reducer.control_sum, doc="Their sum, after finish().")
    bytes_sent = property(lambda self: self.reducer.bytes_sent, doc="Bytes handed to MPI for gradient sync.")
    bytes_inter_node = property(lambda self: self.reducer.bytes_inter_node, doc="... of which to other nodes.")
    bytes_uncompressed = property(lambda self: self.reducer.bytes_uncompressed,
                                  doc="What the plain flat ring would have sent.")
    last_step_bytes = property(lambda self: self.reducer.last_step_bytes,
                               doc="(sent, uncompressed) of the latest synchronisation.")
    timings = property(lambda self: self.reducer.timings, doc="Timings of the latest synchronisation.")
    last_finish_s = property(lambda self: self.reducer.timings["finish_s"], doc="Seconds of the latest finish().")
    worker_comm = property(lambda self: self.reducer.worker_comm,
                           doc="The communicator the buckets' jobs run on (None before the first sync).")

    @property
    def step(self) -> int:
        """Synchronisations completed (seeds random-k, counts PowerSGD's warm-up); set it when resuming."""
        return self.reducer.step

    @step.setter
    def step(self, value: int) -> None:
        self.reducer.step = int(value)

    # -- passthroughs --------------------------------------------------------------------------
    def state_dict(self):
        """The wrapped module's state_dict (no "module." prefix: checkpoints load into the bare model)."""
        return self.module.state_dict()

    def load_state_dict(self, state_dict, strict: bool = True):
        return self.module.load_state_dict(state_dict, strict)

    def remove_hooks(self) -> None:
        """Detach the gradient hooks (the module trains locally again)."""
        for h in self._hook_handles:
            h.remove()
        self._hook_handles = []
        self.reducer.offer_buffers(False)

    def extra_repr(self) -> str:
        return (f"world_size={self.comm.size}, buckets={len(self.buckets)}, bucket_cap_mb={self.bucket_cap_mb}, "
                f"overlap={self.overlap}, algorithm={self.algorithm!r}")


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
