"""The Trainer's gradient seam under ``dtrain train --zero``: ZeRO-1 instead of DistributedDataParallel.

The model is not wrapped: backward leaves each rank's own gradients, and the optimizer (a
:class:`~dtrain.distributed.ZeroRedundancyOptimizer` the job builds over the world) averages them in its
``step()``, each rank updating its 1/N of the parameters and the ranks then exchanging the updated chunks.
So this seam does what DDP's finish does besides averaging:

- the step's control values (stop votes, non-finite losses, a time-based checkpoint vote) are summed over
  the ranks with one small all-reduce after backward (MPI_Allreduce: for four values it takes 10 µs at 2 ranks
  here, the ring 23 µs);
- each rank adds a vote when its *own* gradients are not finite: the Trainer's non-finite check reads the
  gradients this rank holds (not yet averaged, unlike under DDP), so this vote is what makes every rank
  decide alike: the step is skipped (or raises) everywhere or nowhere;
- the rank's sample count goes to the optimizer's next step (``pending_num_samples``), which weights each
  rank by its samples as DDP does, so uneven shards of the global batch average exactly.

Parameters start equal on every rank because the optimizer broadcasts rank 0's at construction.
"""

from __future__ import annotations

import numpy as np

from ..distributed.collectives import allreduce
from .nonfinite import all_finite
from .sync import GradientSync

__all__ = ["ZeroGradientSync"]


class ZeroGradientSync(GradientSync):
    """Control values and sample counts for a ZeroRedundancyOptimizer's steps (see the module docstring).

    Args:
        comm: the world Communicator. Call :meth:`attach` with the job's optimizer before the first step.
    """

    compression = "none"
    votes_on_gradients = True

    def __init__(self, comm):
        self.comm = comm
        self.optimizer = None
        self._control = np.zeros(4)
        self._votes = np.zeros(4)
        self._start = comm.bytes_sent

    def attach(self, optimizer) -> None:
        """The ZeroRedundancyOptimizer whose steps average the gradients (TypeError for anything else)."""
        from ..distributed.zero import ZeroRedundancyOptimizer

        if not isinstance(optimizer, ZeroRedundancyOptimizer):
            raise TypeError(f"ZeroGradientSync (rank {self.comm.rank}): the optimizer must be a "
                            f"ZeroRedundancyOptimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer

    def prepare(self, model):
        if self.optimizer is None:
            raise RuntimeError(f"ZeroGradientSync (rank {self.comm.rank}): attach(optimizer) before training")
        return model

    def set_step(self, step: int) -> None:
        if self.comm.watchdog is not None:
            self.comm.watchdog.step = step

    def set_control(self, values) -> None:
        self._control[:] = 0
        self._control[:len(values)] = values

    def after_backward(self, n_samples: int) -> np.ndarray:
        votes = self._votes
        votes[:] = self._control
        votes[1] += not all_finite(self.optimizer.params)  # this rank's own gradients (see the module docstring)
        allreduce(votes, op="sum", algorithm="mpi", comm=self.comm)  # 4 values: MPI_Allreduce, 10 µs against 23
        self.optimizer.pending_num_samples = n_samples
        return votes.copy()

    def bytes_sent(self) -> tuple[int, int]:
        sent = self.comm.bytes_sent - self._start
        return sent, sent

    def compressor_state(self) -> dict:
        return {}

    def load_compressor_state(self, state: dict) -> None:
        pass  # nothing is compressed

    def close(self) -> None:
        pass  # the optimizer's windows belong to the communicator, freed by its close()
