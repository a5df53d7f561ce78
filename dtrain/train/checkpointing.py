"""When the Trainer writes checkpoints, and the collective around each write.

:class:`Checkpointing` decides when (every N steps, every N epochs, at the end, on an interrupt) and
does the exchange: every rank hands rank 0 its RNG and gradient-compression state and the epoch's
partial sums; rank 0 asks the Trainer for ``state_dict(...)`` and hands it to the
:class:`~dtrain.train.checkpoint.CheckpointManager`, which owns the files.
"""

from __future__ import annotations

import os
import time

import numpy as np

from .. import backend
from ..spec import check_int
from .checkpoint import CheckpointError, CheckpointManager

__all__ = ["Checkpointing"]


class Checkpointing:
    """Checkpoints written by ``manager`` every ``every_steps`` optimizer steps, ``every_epochs`` epochs and/or
    ``every_seconds`` of wall-clock time (0: never periodically); one is always written at the end when a
    manager is given.

    The time-based schedule reads rank 0's clock only: rank 0 votes "due" (:meth:`time_vote`) with a step's
    gradient sync, so every rank learns in the same step and all write after it (clocks never disagree).

    ``Checkpointing()`` (no manager) writes nothing, except the checkpoint of an interrupted run, which
    goes to ``out_dir/checkpoints`` when the run has an ``--out`` folder.
    """

    def __init__(self, manager: CheckpointManager | None = None, every_steps: int = 0, every_epochs: int = 0,
                 every_seconds: float = 0.0):
        self.manager = manager
        self.every_steps = check_int("checkpoint_every", every_steps, 0, expected="a non-negative integer")
        self.every_epochs = check_int("checkpoint_every_epochs", every_epochs, 0, expected="a non-negative integer")
        if not isinstance(every_seconds, (int, float)) or isinstance(every_seconds, bool) or not every_seconds >= 0:
            raise ValueError(f"checkpoint_every_seconds: expected a non-negative number, got {every_seconds!r}")
        self.every_seconds = float(every_seconds)
        self.last_written = time.monotonic()  # this rank's clock at the last checkpoint (or the start)
        self.on_written = None  # called with the step after rank 0 wrote a checkpoint (the elastic progress file)

    def time_vote(self, is_main: bool) -> float:
        """Rank 0's vote that ``every_seconds`` have passed since the last checkpoint (other ranks vote 0)."""
        return float(is_main and self.every_seconds > 0 and time.monotonic() - self.last_written >= self.every_seconds)

    def due_after_step(self, state, n_batches: int, time_votes: float = 0.0) -> bool:
        """A periodic checkpoint is due after this step (not at an epoch's end: the epoch's own check follows).
        ``time_votes``: the step's sum of :meth:`time_vote` over the ranks."""
        if state.batch >= n_batches:
            return False
        return (bool(self.every_steps) and state.step % self.every_steps == 0) or time_votes > 0

    def due_after_epoch(self, state, epochs: int) -> bool:
        """A periodic checkpoint is due after this complete epoch (not after the last one: the final follows)."""
        return bool(self.every_epochs) and state.epoch % self.every_epochs == 0 and state.epoch < epochs

    @staticmethod
    def _save_elsewhere(manager: CheckpointManager, state: dict, out_dir: str | None, exc: BaseException,
                        log) -> CheckpointError:
        """The final checkpoint failed in ``manager``'s folder (read-only, full): write it under ``out_dir``
        so the run's work is not lost, and return the error that ends the run, saying where it went."""
        where = os.path.join(out_dir, "checkpoints") if out_dir else None
        what = f"the final checkpoint could not be written to {manager.directory}: {exc}"
        if where is None or os.path.abspath(where) == os.path.abspath(manager.directory):
            return CheckpointError(what)
        try:
            path = CheckpointManager(where).save(state)
        except (CheckpointError, OSError) as exc2:
            return CheckpointError(f"{what}; nor to {where}: {exc2}")
        log.warning(f"final checkpoint written to {path} instead of {manager.directory}")
        return CheckpointError(f"{what}; it was written to {path} instead (--resume {path})")

    def save(self, trainer, final: bool = False, fallback: bool = False) -> str | None:
        """Collective: every rank hands its RNG and compression state to rank 0, which writes the file.

        A periodic checkpoint that cannot be written (a full disk...) is a warning: the previous one is
        intact and training goes on. The final one is an error on every rank. ``fallback``: without a
        manager, write to ``out_dir/checkpoints`` (the interrupted-run checkpoint). Returns the path
        written (rank 0) or None.
        """
        manager, log, collectives = self.manager, trainer.log, trainer.collectives
        out_dir = trainer.reporter.out_dir
        if manager is None and fallback and out_dir:
            manager = CheckpointManager(os.path.join(out_dir, "checkpoints"))
        if manager is None:
            if fallback:
                log.warning("no --checkpoint-dir or --out: the interrupted run's state is not saved")
            return None
        st = trainer.state
        rng_states = collectives.gather(backend.default_generator.get_state())
        compression_states = collectives.gather(trainer.sync.compressor_state())  # error-feedback memories, Qs
        # The partial epoch's sums over every rank: restored on rank 0 (others start at zero), so a resumed
        # epoch reports the same train loss at any world size.
        sums = collectives.sum(np.array([st.loss_sum, st.correct, st.seen], dtype=np.float64))
        # A sharded optimizer (--zero) gathers its state with a collective: every rank asks it, rank 0 writes it.
        optimizer_state = trainer.optimizer.state_dict() if getattr(trainer.optimizer, "collective_state_dict",
                                                                    False) else None
        path, error = None, None
        if log.is_main:
            state = trainer.state_dict(rng_states=rng_states, compression_states=compression_states,
                                       epoch_sums=(float(sums[0]), float(sums[1]), int(sums[2])),
                                       optimizer_state=optimizer_state)
            try:
                path = manager.save(state)
                log.info(f"checkpoint: {path}")
                if self.on_written is not None:
                    self.on_written(st.step)
            except (CheckpointError, OSError) as exc:
                if final:
                    error = self._save_elsewhere(manager, state, out_dir, exc, log)
                else:
                    log.warning(f"checkpoint at step {st.step} not written: {exc}; the previous checkpoint is "
                                "intact and training continues")
        self.last_written = time.monotonic()
        if final:
            collectives.agree(error)  # the final checkpoint failing is everyone's error
        return path
