"""Where the training loop is, as plain data: saved in checkpoints, so a resumed run continues exactly."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

__all__ = ["TrainState"]


@dataclass
class TrainState:
    """Where the loop is: everything needed (with the model/optimizer/RNG state) to resume exactly."""

    epoch: int = 0  # epochs completed
    batch: int = 0  # batches completed within the current epoch
    step: int = 0  # optimizer steps taken
    loss_sum: float = 0.0  # this epoch so far, summed over samples (this rank)
    correct: float = 0.0
    seen: int = 0  # samples this rank trained on this epoch
    samples: int = 0  # samples trained on, all ranks, whole run
    train_time: float = 0.0  # seconds spent in training steps, whole run
    best: float | None = None
    bad_epochs: int = 0
    stopped_early: bool = False
    skipped_steps: int = 0  # steps skipped on every rank because the gradients were non-finite
    loss_scale: dict | None = None  # the loss scaler's state (filled in when a checkpoint is written)
    bytes_at_epoch_start: int = 0  # this rank's bytes sent for gradient sync before this epoch
    step_at_epoch_start: int = 0
    history: list = field(default_factory=list)  # metrics records
    grad_flow: list = field(default_factory=list)  # per-epoch layer gradient norms

    def to_json(self) -> dict:
        """A JSON-able copy (what a checkpoint stores)."""
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> TrainState:
        """The state :meth:`to_json` returned."""
        return cls(**d)
