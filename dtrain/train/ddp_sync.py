"""The Trainer's two seams over MPI: :class:`DDPGradientSync` and :class:`MPICollectives`.

The Trainer calls ``prepare(model)`` once (wrapping the model in DistributedDataParallel, which
broadcasts rank 0's weights), runs forward through the wrapper, and calls ``after_backward(n)``
every step; metric vectors are summed with our ring all-reduce, so every rank sees the same bits.
Small control messages (errors, RNG states, digests, options) use mpi4py's pickling calls under the
communicator's deadline (``comm.watch``).
"""

from __future__ import annotations

import numpy as np

from ..distributed import DistributedDataParallel, allreduce
from ..distributed.comm import Communicator
from ..distributed.compression import Compressor
from .divergence import comparable_config, config_mismatch, describe_divergence
from .sync import Collectives, DistributedRunError, GradientSync, mark_collective

__all__ = ["DDPGradientSync", "MPICollectives", "agree"]


def agree(comm: Communicator, error: BaseException | None, what: str = "setup") -> None:
    """Collective: raise on every rank if any rank passes an error. A failing rank raises its own error;
    the others raise DistributedRunError quoting every failing rank's message."""
    with comm.watch(f"agree on {what}"):
        messages = comm.comm.allgather(None if error is None else f"{type(error).__name__}: {error}")
    failed = [(r, m) for r, m in enumerate(messages) if m is not None]
    if failed:
        if error is not None:  # a failing rank reports its own problem
            raise mark_collective(error)
        detail = "; ".join(f"rank {r}: {m}" for r, m in failed)
        raise DistributedRunError(f"the job failed on {len(failed)} of {comm.size} ranks: {detail}")


class DDPGradientSync(GradientSync):
    """Gradient averaging over ``comm`` with DistributedDataParallel.

    Args:
        comm: the world Communicator; compressor: the gradient Compressor (built once by the job);
        algorithm: "ring" | "hierarchical" | "mpi" | "nccl" | "shm"; bucket_mb: DDP bucket size in MiB;
        overlap: overlap bucket all-reduces with backward.
    """

    def __init__(self, comm: Communicator, compressor: Compressor, algorithm: str = "ring",
                 bucket_mb: float = 25.0, overlap: bool = True):
        if not isinstance(compressor, Compressor):
            raise TypeError(f"compressor must be a dtrain.distributed.compression.Compressor, "
                            f"got {type(compressor).__name__}")
        self.comm, self.compressor = comm, compressor
        self.compression = compressor.spec
        self.algorithm, self.bucket_mb, self.overlap = algorithm, bucket_mb, overlap
        self.ddp: DistributedDataParallel | None = None

    def prepare(self, model):
        self.ddp = DistributedDataParallel(model, bucket_cap_mb=self.bucket_mb, overlap=self.overlap,
                                           algorithm=self.algorithm, comm=self.comm, compression=self.compressor)
        return self.ddp

    def set_step(self, step: int) -> None:
        if self.comm.watchdog is not None:
            self.comm.watchdog.step = step

    def set_control(self, values) -> None:
        # Before backward: the values travel with the sample counts, launched with the first bucket.
        self.ddp.control[:] = 0
        self.ddp.control[:len(values)] = values

    def after_backward(self, n_samples: int) -> np.ndarray:
        if n_samples == 0:
            self.ddp.sync_without_backward()
        else:
            self.ddp.finish()
        return self.ddp.control_sum.copy()

    def bytes_sent(self) -> tuple[int, int]:
        if self.ddp is None:
            return 0, 0
        return self.ddp.bytes_sent, self.ddp.bytes_uncompressed

    def compressor_state(self) -> dict:
        if self.ddp is None:
            return {}
        return {"step": self.ddp.step, "compressor": self.ddp.compressor.state_dict()}

    def load_compressor_state(self, state: dict) -> None:
        self.ddp.step = int(state["step"])  # seeds random-k, counts PowerSGD's warm-up
        self.ddp.compressor.load_state_dict(state["compressor"])

    def close(self) -> None:
        if self.ddp is not None:
            self.ddp.remove_hooks()


class MPICollectives(Collectives):
    """The Trainer's small collectives over ``comm`` (every rank must call each one, in the same order)."""

    def __init__(self, comm: Communicator):
        self.comm = comm
        self.rank, self.world_size = comm.rank, comm.size

    def sum(self, values: np.ndarray) -> np.ndarray:
        out = np.ascontiguousarray(values, dtype=np.float64).copy()
        return allreduce(out, op="sum", algorithm="ring", comm=self.comm)

    def agree(self, error: BaseException | None) -> None:
        """Collective: raise DistributedRunError on every rank if any rank passes an error (with its message)."""
        agree(self.comm, error)

    def gather(self, obj) -> list | None:
        with self.comm.watch("gather (checkpoint state)"):
            return self.comm.comm.gather(obj, root=0)  # small control message (RNG states)

    def allgather(self, obj) -> list:
        with self.comm.watch("allgather (control)"):
            return self.comm.comm.allgather(obj)

    def check_identical(self, digests: list, step: int | None = None) -> None:
        """Divergence guard: raise on every rank if the ranks' parameters differ, naming the ranks and the
        first differing parameter. ``digests``: [(parameter name, hash of its bytes)] in registration order."""
        with self.comm.watch("divergence check"):
            everyone = self.comm.comm.allgather(digests)  # a small control message
        problem = describe_divergence(everyone, step)
        if problem is not None:
            raise DistributedRunError(problem)

    def check_same_config(self, config: dict) -> None:
        """Raise on every rank if the ranks were started with different options (e.g. mismatched MPMD command
        lines or config files), naming the options and ranks."""
        with self.comm.watch("configuration check"):
            everyone = self.comm.comm.allgather(comparable_config(config))
        problem = config_mismatch(everyone)
        if problem is not None:
            raise DistributedRunError(problem)
