"""When the Trainer writes checkpoints, and the collective around each write.

:class:`Checkpointing` decides when (every N steps, every N epochs, at the end, on an interrupt) and
does the exchange: every rank hands rank 0 its RNG and gradient-compression state and the epoch's
partial sums; rank 0 asks the Trainer for ``state_dict(...)`` and hands it to the
:class:`~dtrain.train.checkpoint.CheckpointManager`, which owns the files.
"""

from __future__ import annotations

import os

import numpy as np

from .. import backend
from ..spec import check_int
from .checkpoint import CheckpointError, CheckpointManager

__all__ = ["Checkpointing"]


class Checkpointing:
    """Checkpoints written by ``manager`` every ``every_steps`` optimizer steps and/or ``every_epochs``
    epochs (0: never periodically); one is always written at the end when a manager is given.

    ``Checkpointing()`` (no manager) writes nothing, except the checkpoint of an interrupted run, which
    goes to ``out_dir/checkpoints`` when the run has an ``--out`` folder.
    """

    def __init__(self, manager: CheckpointManager | None = None, every_steps: int = 0, every_epochs: int = 0):
        self.manager = manager
        self.every_steps = check_int("checkpoint_every", every_steps, 0, expected="a non-negative integer")
        self.every_epochs = check_int("checkpoint_every_epochs", every_epochs, 0, expected="a non-negative integer")

    def due_after_step(self, state, n_batches: int) -> bool:
        """A periodic checkpoint is due after this step (not at an epoch's end: the epoch's own check follows)."""
        return bool(self.every_steps) and state.step % self.every_steps == 0 and state.batch < n_batches

    def due_after_epoch(self, state, epochs: int) -> bool:
        """A periodic checkpoint is due after this complete epoch (not after the last one: the final follows)."""
        return bool(self.every_epochs) and state.epoch % self.every_epochs == 0 and state.epoch < epochs

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
        path, error = None, None
        if log.is_main:
            try:
                path = manager.save(trainer.state_dict(rng_states=rng_states, compression_states=compression_states,
                                                       epoch_sums=(float(sums[0]), float(sums[1]), int(sums[2]))))
                log.info(f"checkpoint: {path}")
            except (CheckpointError, OSError) as exc:
                if final:
                    error = exc
                else:
                    log.warning(f"checkpoint at step {st.step} not written: {exc}; the previous checkpoint is "
                                "intact and training continues")
        if final:
            collectives.agree(error)  # the final checkpoint failing is everyone's error
        return path
