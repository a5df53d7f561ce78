"""Communication hooks of DistributedDataParallel: how a full bucket of gradients is summed over the ranks.

    ddp.register_comm_hook(state, hook)      # hook(state, bucket) -> Handle (torch's shape)

A hook is called on the training thread, during backward, when a bucket is ready. It must start the
bucket's sum over the ranks and return a :class:`dtrain.distributed.comm.Handle` whose ``wait()``
returns the summed flat buffer (``bucket.buffer`` itself, or an array of its size and dtype). Every
rank's hook must issue the same collectives in the same order. The usual way is to run the whole
exchange on the communicator's background thread, so it overlaps the rest of backward::

    def fp16_hook(state, bucket):
        def job(wcomm):                                   # runs on the worker thread
            half = bucket.buffer.astype(np.float16)
            dist.allreduce(half, op="sum", algorithm=state.algorithm, comm=wcomm)
            bucket.buffer[...] = half
            return bucket.buffer
        return state.comm.submit(f"fp16 hook {bucket.key}", job)

The buffer holds each rank's gradients already weighted by its sample count; the reducer divides the
result by the total count. What a bucket offers a hook: ``index``, ``key`` ("bucket<i>"), ``buffer``
(flat), ``segments`` ((parameter name, view of the buffer in its shape) in bucket order), ``params`` and
``step`` (the synchronisation number, the same on every rank).

Every built-in compressor runs through :func:`compression_hook` with a :class:`HookState` naming it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .comm import Communicator
from .compression import Compressor, NoCompression, check_pair
from .compression import reduce as compressed_reduce

__all__ = ["HookState", "compression_hook"]


@dataclass
class HookState:
    """What the built-in hook needs: the communicator to submit to, the all-reduce algorithm (a name or an
    AllreduceAlgorithm) and the compressor (its error-feedback memory lives there)."""

    comm: Communicator
    algorithm: object = "ring"
    compressor: Compressor | None = None

    def __post_init__(self) -> None:
        if self.compressor is None:
            self.compressor = NoCompression()
        check_pair(self.compressor, self.algorithm)


def compression_hook(state: HookState, bucket):
    """Sum ``bucket`` through ``state.compressor`` over ``state.algorithm`` on the worker thread."""
    spec = state.compressor.spec
    return state.comm.submit(f"DDP {bucket.key} ({spec})", reduce_bucket, state, bucket)


def reduce_bucket(wcomm: Communicator, state: HookState, bucket):
    """The job ``compression_hook`` runs on the worker communicator ``wcomm``: the bucket's buffer summed in place
    (through the compressor); returns the buffer."""
    with wcomm.watch(f"DDP gradient bucket {bucket.index} ({state.compressor.spec})", bucket=bucket.index):
        compressed_reduce(state.compressor, wcomm, bucket.key, bucket.segments, bucket.buffer, bucket.step,
                          state.algorithm)
    return bucket.buffer
