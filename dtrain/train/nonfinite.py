"""Non-finite gradients and loss scaling: what a step does when its gradients are not finite.

After the all-reduce every rank holds the same gradients, so every rank decides alike: the step is
either skipped everywhere (``--nonfinite skip``, or a dynamic loss scale, which also backs off) or
raises a FloatingPointError everywhere that names the step and the ranks whose loss was non-finite.
"""

from __future__ import annotations

import math

import numpy as np

from .. import backend
from .loss_scale import LossScaler, make_loss_scaler
from .sync import mark_collective

__all__ = ["NonFiniteGuard", "all_finite"]


def all_finite(params) -> bool:
    """True when every gradient is finite. A sum (of squares, for float32/64 NumPy arrays: BLAS's dot, 2.5x
    faster than the pairwise sum on a small model's gradients) is finite only if every term is (inf and nan
    propagate); only a finite gradient whose sum overflowed needs the element-wise check."""
    for p in params:
        g = p.grad
        if g is None:
            continue
        if type(g) is np.ndarray and g.dtype.itemsize >= 4 and g.dtype.kind == "f":
            flat = g.reshape(-1)
            total = np.dot(flat, flat)
        else:
            total = backend.array_sum(g)
        if not math.isfinite(float(total)) and not bool(backend.get_array_module(g).isfinite(g).all()):
            return False
    return True


def _unscale(params, scale: float) -> None:
    inv = 1.0 / scale
    for p in params:
        if p.grad is not None:
            p.grad *= inv


class NonFiniteGuard:
    """The non-finite policy ("raise" or "skip") and the loss scale (None, fixed or dynamic).

    Args:
        policy: "raise" or "skip" (validated by :class:`~dtrain.train.options.TrainOptions`).
        loss_scale: None/"none", "dynamic", a number, or a :class:`LossScaler`.
        collectives: the Trainer's :class:`~dtrain.train.sync.Collectives` (to name the ranks at fault).
        log: a :class:`~dtrain.train.log.RankLogger`.
    """

    FRACTION_FROM_STEP = 50  # the skipped fraction is judged from this step on (and at the end)

    def __init__(self, policy: str, loss_scale, collectives, log, max_in_a_row: int = 25, max_fraction: float = 0.2):
        self.policy = policy
        self.max_in_a_row, self.max_fraction = max_in_a_row, max_fraction
        self.in_a_row = 0  # consecutive skipped steps
        self.scaler = loss_scale if isinstance(loss_scale, LossScaler) else make_loss_scaler(loss_scale)
        self.collectives, self.log = collectives, log

    def scale(self, loss):
        """The loss to run backward on (multiplied by the loss scale, if any)."""
        return loss * self.scaler.scale if self.scaler is not None else loss

    def check(self, params, nonfinite_losses: float, state, step: int, loss_value: float,
              counted_gradients: bool = False) -> bool:
        """After the gradient sync: True when the step may go on (gradients unscaled); False when it is skipped.

        ``nonfinite_losses`` is the number of ranks whose loss was non-finite this step (``counted_gradients``:
        or whose gradients were, so ``params``' gradients need no look of their own). Raises FloatingPointError
        on every rank under the "raise" policy.
        """
        finite = nonfinite_losses == 0 and (counted_gradients or all_finite(params))
        if self.scaler is not None:
            try:
                self.scaler.update(finite)
            except FloatingPointError as exc:  # the same scale on every rank: they all raise it at this step
                raise mark_collective(FloatingPointError(f"step {step} (epoch {state.epoch + 1}): {exc}")) from None
            if finite and self.scaler.scale != 1.0:
                _unscale(params, self.scaler.scale)
        if not finite:
            self._nonfinite_step(state, step, loss_value)
        else:
            self.in_a_row = 0
        if step >= self.FRACTION_FROM_STEP or self.in_a_row >= self.max_in_a_row:
            self.check_budget(state, step)
        return finite

    def check_budget(self, state, step: int) -> None:
        """FloatingPointError (on every rank: they all skipped the same steps) when the skipped steps exceed
        the budget: ``max_in_a_row`` consecutive, or more than ``max_fraction`` of the ``step`` steps so far."""
        if self.in_a_row >= self.max_in_a_row:
            why = f"{self.in_a_row} steps in a row (--max-skipped-in-a-row {self.max_in_a_row})"
        elif step and state.skipped_steps > self.max_fraction * step:
            why = (f"{state.skipped_steps} of {step} steps ({100 * state.skipped_steps / step:.0f} %, more than "
                   f"--max-skipped-fraction {self.max_fraction:g})")
        else:
            return
        raise mark_collective(FloatingPointError(
            f"training stopped at step {step} (epoch {state.epoch + 1}): non-finite gradients made it skip {why}; "
            "the model is not learning: lower --lr, check the input data, or raise the budget"))

    def _nonfinite_step(self, state, step: int, loss_value: float) -> None:
        """Non-finite gradients (every rank sees the same): skip the step everywhere, or raise everywhere."""
        dynamic = self.scaler is not None and self.scaler.dynamic
        if self.policy == "skip" or dynamic:
            state.skipped_steps += 1
            self.in_a_row += 1
            why = f"loss scale backed off to {self.scaler.scale:g}" if dynamic else "--nonfinite skip"
            self.log.warning(f"step {step} (epoch {state.epoch + 1}): non-finite gradients after the all-reduce; the "
                             f"step is skipped on every rank ({why}; {state.skipped_steps} skipped so far)")
            return
        losses = self.collectives.allgather(loss_value if math.isfinite(loss_value) else repr(loss_value))
        bad = [r for r, v in enumerate(losses) if isinstance(v, str)]
        where = (f"the loss was {', '.join(f'{losses[r]} on rank {r}' for r in bad)}" if bad
                 else "the loss was finite on every rank, the gradients were not")
        static = self.scaler.scale if self.scaler is not None and self.scaler.scale != 1.0 else None
        advice = (f"the static --loss-scale {static:g} may overflow them: lower it or use --loss-scale dynamic"
                  if static is not None and not bad else "lower --lr, check the input data")
        raise mark_collective(FloatingPointError(
            f"non-finite gradients after the all-reduce at step {step} (epoch {state.epoch + 1}): {where}; "
            f"{advice}, or pass --nonfinite skip to skip such steps"))

    def state_dict(self) -> dict | None:
        """The loss scaler's state (None without one)."""
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: dict | None) -> None:
        """Restore what :meth:`state_dict` returned (nothing to do without a scaler or a saved state)."""
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
