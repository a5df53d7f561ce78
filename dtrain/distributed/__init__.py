"""dtrain.distributed: data-parallel training over MPI.

    import dtrain.distributed as dist
    dist.init()                                    # idempotent; a world of 1 without mpiexec
    ddp = dist.DistributedDataParallel(model)      # same model on every rank, rank 0's weights broadcast
    loss = F.cross_entropy(ddp(x_shard), y_shard)
    loss.backward()                                # buckets all-reduced during backward, averaged at its end
    optimizer.step()                               # identical on every rank

``comm`` owns the MPI communicator, ``collectives`` the ring (and MPI reference) all-reduce,
reduce-scatter, all-gather and broadcast, ``ddp`` DistributedDataParallel. dist knows nothing of
layers: it sees parameters, arrays and gradient hooks.
"""

from __future__ import annotations

from ..data.dataset import DistributedSampler as _DistributedSampler
from . import compression
from .collectives import Handle, allgather, allreduce, broadcast, chunk_bounds, reduce_scatter
from .comm import (
    Communicator,
    barrier,
    get_local_rank,
    get_node_count,
    get_rank,
    get_world,
    get_world_size,
    init,
    is_initialized,
    set_timeout,
)
from .ddp import DistributedDataParallel, ModelMismatchError
from .sync_batchnorm import SyncBatchNorm, convert_sync_batchnorm
from .zero import ZeroRedundancyOptimizer

__all__ = [
    "Communicator", "DistributedDataParallel", "DistributedSampler", "Handle", "ModelMismatchError", "allgather",
    "compression",
    "allreduce", "barrier", "broadcast", "chunk_bounds", "get_local_rank", "get_node_count", "get_rank",
    "SyncBatchNorm", "convert_sync_batchnorm", "get_world", "get_world_size", "init", "is_initialized",
    "reduce_scatter", "set_timeout", "ZeroRedundancyOptimizer",
]


class DistributedSampler(_DistributedSampler):
    """dtrain.data.DistributedSampler with num_replicas and rank taken from the world when not given."""

    def __init__(self, n_samples: int, num_replicas: int | None = None, rank: int | None = None,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False):
        if num_replicas is None or rank is None:
            world = get_world()
            num_replicas = world.size if num_replicas is None else num_replicas
            rank = world.rank if rank is None else rank
        super().__init__(n_samples, num_replicas, rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
