"""The seam between the training loop and gradient averaging.

The Trainer never talks to MPI. After every backward it calls ``sync.after_backward(n)`` ("average
gradients here"), and it reduces evaluation sums and epoch metrics through ``sync.sum``. A world
of one process uses :class:`LocalSync`, where both are identities; the distributed package
provides a subclass that drives DistributedDataParallel and the collectives.
"""

from __future__ import annotations

import numpy as np

__all__ = ["LocalSync"]


class LocalSync:
    """Gradient/metric synchronisation for a single process (rank 0 of a world of 1)."""

    rank = 0
    world_size = 1
    compression = "none"

    def __init__(self):
        self._control = np.zeros(4)

    def set_step(self, step: int) -> None:
        """The training step about to run (named in deadline and stall reports)."""

    def set_control(self, values) -> None:
        """Small numbers (flags, votes) to add up over the ranks with this step's gradient sync; the sums
        come back from :meth:`after_backward`, identical on every rank."""
        self._control[:] = 0
        self._control[:len(values)] = values

    def prepare(self, model):
        """Return what the Trainer calls for forward (the model itself here; a DDP wrapper in a world > 1)."""
        return model

    def agree(self, error: BaseException | None) -> None:
        """Re-raise ``error`` (a world of 1 has nobody else to tell)."""
        if error is not None:
            raise error

    def gather(self, obj) -> list:
        """Every rank's ``obj`` (a small JSON-able value) as a list on rank 0 (None elsewhere)."""
        return [obj]

    def compressor_state(self) -> dict:
        """This rank's gradient-compression state (error-feedback memories...); none in one process."""
        return {}

    def load_compressor_state(self, state: dict) -> None:
        """Restore what compressor_state() returned."""

    def check_identical(self, digests: list, step: int | None = None) -> None:
        """Raise if the ranks' parameters differ; ``digests`` is [(name, hash)] (trivially equal in one process)."""

    def check_same_config(self, config: dict) -> None:
        """Raise on every rank if the ranks were started with different options (one process: nothing to do)."""

    def allgather(self, obj) -> list:
        """Every rank's small JSON-able ``obj``, in rank order, on every rank."""
        return [obj]

    def after_backward(self, n_samples: int) -> np.ndarray:
        """Called after ``loss.backward()`` with this rank's batch size; averages gradients across ranks and
        returns the sums of the values given to :meth:`set_control` for this step."""
        return self._control.copy()

    def sum(self, values: np.ndarray) -> np.ndarray:
        """Element-wise sum of a small float64 vector over all ranks (evaluation counts, losses)."""
        return values

    def bytes_sent(self) -> tuple[int, int]:
        """(bytes this rank sent, uncompressed equivalent) since the start of training."""
        return 0, 0

    def compression_ratio(self) -> float:
        return 1.0

    def close(self) -> None:
        """Release communication resources."""
