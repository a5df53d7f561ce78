"""DDPSync: the Trainer's synchronisation seam backed by dtrain.dist (DDP + collectives).

The Trainer calls ``prepare(model)`` once (wrapping the model in DistributedDataParallel, which
broadcasts rank 0's weights), runs forward through the wrapper, and calls ``after_backward(n)``
every step; metric vectors are summed with our ring all-reduce, so every rank sees the same bits.
"""

from __future__ import annotations

import numpy as np

from ..dist import DistributedDataParallel, allreduce
from ..dist.comm import Communicator
from ..dist.compression import get as get_compressor
from .sync import LocalSync

__all__ = ["DDPSync", "DistributedRunError"]


class DistributedRunError(RuntimeError):
    """Something failed on some rank; raised on every rank so none is left waiting."""


class DDPSync(LocalSync):
    """Gradient averaging and metric reduction over ``comm`` for the Trainer.

    Args:
        comm: the world Communicator; algorithm: "ring" | "mpi"; bucket_mb: DDP bucket size in MiB;
        overlap: overlap bucket all-reduces with backward.
    """

    def __init__(self, comm: Communicator, algorithm: str = "ring", bucket_mb: float = 25.0, overlap: bool = True,
                 compression: str | None = None):
        self.comm = comm
        self.rank, self.world_size = comm.rank, comm.size
        self.algorithm, self.bucket_mb, self.overlap = algorithm, bucket_mb, overlap
        self.compression = get_compressor(compression).spec  # validates the spec before anything runs
        self.ddp: DistributedDataParallel | None = None

    def prepare(self, model):
        self.ddp = DistributedDataParallel(model, bucket_cap_mb=self.bucket_mb, overlap=self.overlap,
                                           algorithm=self.algorithm, comm=self.comm, compression=self.compression)
        return self.ddp

    def after_backward(self, n_samples: int) -> None:
        if n_samples == 0:
            self.ddp.sync_without_backward()
        else:
            self.ddp.finish()

    def sum(self, values: np.ndarray) -> np.ndarray:
        out = np.ascontiguousarray(values, dtype=np.float64).copy()
        return allreduce(out, op="sum", algorithm="ring", comm=self.comm)

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any rank."""
        return bool(self.sum(np.array([1.0 if flag else 0.0]))[0] > 0)

    def bytes_sent(self) -> tuple[int, int]:
        if self.ddp is None:
            return 0, 0
        return self.ddp.bytes_sent, self.ddp.bytes_uncompressed

    def compression_ratio(self) -> float:
        sent, raw = self.bytes_sent()
        return raw / sent if sent else 1.0

    def compressor_state(self) -> dict:
        if self.ddp is None:
            return {}
        return {"step": self.ddp.step, "compressor": self.ddp.compressor.state_dict()}

    def load_compressor_state(self, state: dict) -> None:
        self.ddp.__dict__["step"] = int(state["step"])  # seeds random-k, counts PowerSGD's warm-up
        self.ddp.compressor.load_state_dict(state["compressor"])

    def agree(self, error: BaseException | None) -> None:
        """Collective: raise DistributedRunError on every rank if any rank passes an error (with its message)."""
        messages = self.comm.comm.allgather(None if error is None else f"{type(error).__name__}: {error}")
        failed = [(r, m) for r, m in enumerate(messages) if m is not None]
        if failed:
            if error is not None:  # a failing rank reports its own problem
                raise error
            detail = "; ".join(f"rank {r}: {m}" for r, m in failed)
            raise DistributedRunError(f"the job failed on {len(failed)} of {self.world_size} ranks: {detail}")

    def gather(self, obj) -> list | None:
        return self.comm.comm.gather(obj, root=0)  # small control message (RNG states)

    def check_identical(self, checksum: str) -> None:
        """Raise on every rank if the ranks' final parameter checksums differ."""
        sums = self.comm.comm.allgather(checksum)
        if len(set(sums)) > 1:
            groups = {}
            for r, c in enumerate(sums):
                groups.setdefault(c, []).append(r)
            detail = "; ".join(f"ranks {v} have {k[:12]}" for k, v in groups.items())
            raise DistributedRunError(f"parameters diverged across ranks: {detail}")

    def close(self) -> None:
        if self.ddp is not None:
            self.ddp.remove_hooks()
