"""The two seams between the training loop and the other ranks.

The Trainer never talks to MPI. It goes through two small interfaces:

- :class:`GradientSync` averages gradients: ``prepare(model)`` once (a world > 1 wraps the model in
  DistributedDataParallel), then every step ``set_step``, ``set_control`` (small votes that travel with
  the gradients) and ``after_backward(n)``; it also reports the bytes sent and the compressor's state.
- :class:`Collectives` exchanges small values: sums of metric vectors, agreement on an error, gathers
  of RNG states, and the cross-rank checks (identical parameters, identical options).

Both are abstract base classes: an implementation that forgets a method cannot be instantiated, so
nothing silently does nothing. A world of one process uses :class:`LocalGradientSync` and
:class:`LocalCollectives` (identities); ``dtrain.train.ddp_sync`` implements both over MPI.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

__all__ = ["Collectives", "DistributedRunError", "GradientSync", "LocalCollectives", "LocalGradientSync",
           "mark_collective"]


class DistributedRunError(RuntimeError):
    """Something failed on some rank; raised on every rank so none is left waiting."""

    collective = True  # raised on every rank at once: no rank is left waiting


def mark_collective(exc: BaseException) -> BaseException:
    """Mark ``exc`` as raised on every rank together (the CLI then exits instead of aborting the job)."""
    try:
        exc.collective = True
    except AttributeError:  # an exception type with __slots__
        pass
    return exc


class GradientSync(ABC):
    """Gradient averaging for the Trainer. ``compression`` is the spec of the compressor applied to the
    gradients ("none" when nothing is compressed)."""

    compression: str = "none"
    # True when the non-finite count ``after_backward`` returns (the control value at index 1) already counts the
    # ranks whose gradients are not finite: the Trainer then need not look at its gradients again.
    votes_on_gradients: bool = False

    @abstractmethod
    def prepare(self, model):
        """Return what the Trainer runs forward through (the model, or a DDP wrapper around it)."""

    @abstractmethod
    def set_step(self, step: int) -> None:
        """The training step about to run (named in deadline and stall reports)."""

    @abstractmethod
    def set_control(self, values) -> None:
        """Small numbers (flags, votes) to add up over the ranks with this step's gradient sync; the sums
        come back from :meth:`after_backward`, identical on every rank."""

    @abstractmethod
    def after_backward(self, n_samples: int) -> np.ndarray:
        """Called after ``loss.backward()`` with this rank's batch size; averages gradients across ranks and
        returns the sums of the values given to :meth:`set_control` for this step."""

    @abstractmethod
    def bytes_sent(self) -> tuple[int, int]:
        """(bytes this rank sent, uncompressed equivalent) since the start of training."""

    def compression_ratio(self) -> float:
        """Uncompressed bytes over bytes sent (1.0 before anything was sent)."""
        sent, raw = self.bytes_sent()
        return raw / sent if sent else 1.0

    @abstractmethod
    def compressor_state(self) -> dict:
        """This rank's gradient-compression state (error-feedback memories, step counter), JSON plus arrays."""

    @abstractmethod
    def load_compressor_state(self, state: dict) -> None:
        """Restore what :meth:`compressor_state` returned."""

    @abstractmethod
    def close(self) -> None:
        """Release communication resources (hooks, buffers)."""


class Collectives(ABC):
    """Small collectives among the ranks. ``rank``/``world_size`` describe this process; ``comm`` is the
    world's Communicator (None in one process)."""

    rank: int = 0
    world_size: int = 1
    comm = None

    @abstractmethod
    def sum(self, values: np.ndarray) -> np.ndarray:
        """Element-wise sum of a small float64 vector over all ranks (evaluation counts, losses)."""

    @abstractmethod
    def agree(self, error: BaseException | None) -> None:
        """Raise on every rank if any rank passes an error (the failing rank raises its own)."""

    @abstractmethod
    def gather(self, obj) -> list | None:
        """Every rank's ``obj`` (a small JSON-able value) as a list on rank 0 (None elsewhere)."""

    @abstractmethod
    def allgather(self, obj) -> list:
        """Every rank's small JSON-able ``obj``, in rank order, on every rank."""

    @abstractmethod
    def check_identical(self, digests: list, step: int | None = None) -> None:
        """Raise on every rank if the ranks' parameters differ; ``digests`` is [(name, hash)]."""

    @abstractmethod
    def check_same_config(self, config: dict) -> None:
        """Raise on every rank if the ranks were started with different options."""


class LocalGradientSync(GradientSync):
    """Gradient sync for a single process: gradients are already "averaged"; the votes come back as given."""

    def __init__(self):
        self._control = np.zeros(4)

    def prepare(self, model):
        return model

    def set_step(self, step: int) -> None:
        pass  # no deadline to report it in

    def set_control(self, values) -> None:
        self._control[:] = 0
        self._control[:len(values)] = values

    def after_backward(self, n_samples: int) -> np.ndarray:
        return self._control.copy()

    def bytes_sent(self) -> tuple[int, int]:
        return 0, 0

    def compressor_state(self) -> dict:
        return {}

    def load_compressor_state(self, state: dict) -> None:
        pass  # nothing is compressed in one process

    def close(self) -> None:
        pass


class LocalCollectives(Collectives):
    """Collectives in a world of one process (rank 0): every operation is an identity."""

    def sum(self, values: np.ndarray) -> np.ndarray:
        return values

    def agree(self, error: BaseException | None) -> None:
        if error is not None:  # nobody else to tell
            raise error

    def gather(self, obj) -> list:
        return [obj]

    def allgather(self, obj) -> list:
        return [obj]

    def check_identical(self, digests: list, step: int | None = None) -> None:
        pass  # one copy of the parameters is trivially identical

    def check_same_config(self, config: dict) -> None:
        pass  # one process, one set of options
