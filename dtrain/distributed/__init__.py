"""dtrain.distributed: data-parallel training over MPI (``import dtrain.distributed as dist``, as with torch).

    import dtrain.distributed as dist
    dist.init()                                    # idempotent; a world of 1 without mpiexec
    ddp = dist.DistributedDataParallel(model)      # same model on every rank, rank 0's weights broadcast
    loss = F.cross_entropy(ddp(x_shard), y_shard)
    loss.backward()                                # buckets summed during backward, averaged at its end
    optimizer.step()                               # identical on every rank
    dist.destroy_process_group()                   # optional: closes the world; init() builds a new one

torch.distributed's spellings work too: ``dist.all_reduce(t, op=dist.ReduceOp.MAX)`` (default op "sum",
as in torch), ``dist.all_gather(tensor_list, t)`` (fills the list), ``dist.is_available()``.

Read bottom-up; each layer imports only the ones above it in this list:

* ``comm``: the Communicator (rank, size, node layout, scratch buffers, async worker, ``abort()``);
* ``algorithms/``: the all-reduce strategies, one file each (ring, hierarchical, mpi, nccl) and a registry;
* ``collectives``: allreduce / reduce_scatter / allgather / broadcast — argument checks and dispatch;
* ``compression/``: compressors (pure transforms) and the exchange that moves their payloads over any
  algorithm;
* ``hooks``: the comm-hook contract and the built-in hook every compressor runs through;
* ``reducer``: buckets, ready order, launch/finish, sample weighting, byte accounting;
* ``ddp``: DistributedDataParallel, the Module wrapper (``register_comm_hook``);
* beside them: ``zero`` (ZeroRedundancyOptimizer), ``sync_batchnorm``, ``watchdog`` (collective deadlines),
  ``gpu`` (device arrays in MPI), ``measure`` (timing the algorithms), ``costmodel`` (alpha-beta-gamma).

dtrain.distributed knows nothing of layers: it sees parameters, arrays and gradient hooks. It never
imports dtrain.train, dtrain.cli or dtrain.bench.
"""

from __future__ import annotations

from ..data import DistributedSampler  # defaults num_replicas/rank from the launcher (dtrain.env)
from . import algorithms, compression, hooks
from .collectives import (
    OPS,
    Handle,
    ReduceOp,
    all_gather,
    all_reduce,
    allgather,
    broadcast,
    chunk_bounds,
    reduce_scatter,
)
from .comm import (
    Communicator,
    barrier,
    current_world,
    destroy_process_group,
    get_local_rank,
    get_node_count,
    get_rank,
    get_world,
    get_world_size,
    init,
    is_available,
    is_initialized,
    set_timeout,
)
from .compression import allreduce  # collectives.allreduce, plus compression=
from .ddp import DistributedDataParallel, ModelMismatchError
from .hooks import HookState, compression_hook
from .sync_batchnorm import SyncBatchNorm, convert_sync_batchnorm
from .zero import ZeroRedundancyOptimizer

__all__ = [
    "OPS", "Communicator", "DistributedDataParallel", "DistributedSampler", "Handle", "HookState",
    "ModelMismatchError", "ReduceOp", "SyncBatchNorm", "ZeroRedundancyOptimizer", "algorithms", "all_gather",
    "all_reduce", "allgather", "allreduce", "barrier", "broadcast", "chunk_bounds", "compression", "compression_hook",
    "convert_sync_batchnorm", "current_world", "destroy_process_group", "get_local_rank", "get_node_count",
    "get_rank", "get_world", "get_world_size", "hooks", "init", "is_available", "is_initialized", "reduce_scatter",
    "set_timeout",
]
