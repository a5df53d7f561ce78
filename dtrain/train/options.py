"""The Trainer's small option objects: how each step runs (:class:`TrainOptions`) and when to stop early
(:class:`EarlyStopping`). Each validates its values when built, naming the bad value."""

from __future__ import annotations

from dataclasses import dataclass

from ..spec import check_int

__all__ = ["NONFINITE_POLICIES", "PRECISIONS", "EarlyStopping", "TrainOptions"]

NONFINITE_POLICIES = ("raise", "skip")
PRECISIONS = {"fp32": None, "fp16": "float16", "bf16": "bfloat16"}  # --precision -> autocast dtype


@dataclass
class TrainOptions:
    """How each training step runs, and which guards watch it.

    Attributes:
        device, dtype: where and in which float dtype the batches are placed (default: CPU, the default dtype).
        precision: "fp32", or "fp16"/"bf16" for mixed precision: forward (and so backward) of matmul, linear
            and conv2d in half precision under :func:`dtrain.autograd.autocast`, parameters and optimizer
            in float32, the loss in float32.
        loss_scale: None/"none", "dynamic", a number (fixed scale) or a :class:`~dtrain.train.loss_scale.LossScaler`.
        clip_grad_norm: clip the global gradient norm to this value before each step.
        nonfinite: what to do when the (all-reduced) gradients are non-finite: "raise" a FloatingPointError
            naming the step and the ranks whose loss was non-finite, or "skip" the step on every rank
            (counted in ``state.skipped_steps`` and logged). A dynamic loss scale always skips and backs off.
        check_every: compare parameter digests across ranks every this many steps (0: only at the end).
        max_skipped_in_a_row, max_skipped_fraction: the budget of skipped steps; beyond it the run ends with a
            FloatingPointError (a run that skips most of its steps must not look like a success).
        handle_signals: on SIGINT/SIGTERM finish the current step on every rank, write a final checkpoint
            (rank 0) and raise :class:`~dtrain.train.signals.TrainingInterrupted`; a second signal
            interrupts at once.
        capture: run each step's forward and backward through :func:`dtrain.autograd.capture` (traced once
            per batch shape, then replayed without the eager engine's per-op bookkeeping; the same results
            bit for bit). Needs fp32 precision and no loss scale; a model with an op capture does not replay
            (every zoo model replays) stops at the first step with a CaptureError. The monitor's recording
            steps run eagerly.
    """

    device: object = None
    dtype: object = None
    precision: str = "fp32"
    loss_scale: object = None
    clip_grad_norm: float | None = None
    nonfinite: str = "raise"
    check_every: int = 0
    max_skipped_in_a_row: int = 25
    max_skipped_fraction: float = 0.2
    handle_signals: bool = True
    capture: bool = False

    def __post_init__(self):
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise ValueError(f"clip_grad_norm must be positive, got {self.clip_grad_norm!r}")
        if self.nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite must be one of {', '.join(NONFINITE_POLICIES)}, got {self.nonfinite!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.capture and self.precision != "fp32":
            raise ValueError(f"capture needs precision fp32 (autocast's casts are not replayed), got "
                             f"{self.precision!r}")
        check_int("check_every", self.check_every, 0, expected="a non-negative integer")
        check_int("max_skipped_in_a_row", self.max_skipped_in_a_row, 1, expected="a positive integer")
        if not isinstance(self.max_skipped_fraction, (int, float)) or not 0 <= self.max_skipped_fraction < 1:
            raise ValueError(f"max_skipped_fraction must be in [0, 1), got {self.max_skipped_fraction!r}")

    @property
    def autocast_dtype(self) -> str | None:
        """The half dtype forward runs in under autocast, or None for fp32."""
        return PRECISIONS[self.precision]


@dataclass
class EarlyStopping:
    """Stop when ``monitor`` ("test_loss" or "train_loss") has not improved by ``min_delta`` for
    ``patience`` evaluations in a row."""

    patience: int
    min_delta: float = 0.0
    monitor: str = "test_loss"

    def __post_init__(self):
        check_int("early stopping patience", self.patience, 1)
        if self.monitor not in ("test_loss", "train_loss"):
            raise ValueError(f"early stopping monitors 'test_loss' or 'train_loss', got {self.monitor!r}")

    def update(self, state, record: dict, log) -> None:
        """Record one evaluation (a metrics record) in ``state`` (best, bad_epochs, stopped_early)."""
        value = record.get(self.monitor)
        if value is None:
            value = record["train_loss"]
        if state.best is None or value < state.best - self.min_delta:
            state.best, state.bad_epochs = value, 0
            return
        state.bad_epochs += 1
        if state.bad_epochs >= self.patience:
            state.stopped_early = True
            log.info(f"early stopping: {self.monitor} has not improved by {self.min_delta} for "
                     f"{self.patience} epochs (best {state.best:.4f})")
