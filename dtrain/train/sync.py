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

    def prepare(self, model):
        """Return what the Trainer calls for forward (the model itself here; a DDP wrapper in a world > 1)."""
        return model

    def any(self, flag: bool) -> bool:
        """True if ``flag`` is true on any rank (so every rank takes the same branch)."""
        return bool(flag)

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

    def check_identical(self, checksum: str) -> None:
        """Every rank ends with the same parameters (trivially true in one process)."""

    def after_backward(self, n_samples: int) -> None:
        """Called after ``loss.backward()`` with this rank's batch size; averages gradients across ranks."""

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
