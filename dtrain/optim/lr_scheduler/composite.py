"""Schedules made of other schedules: LinearWarmup (a ramp, then another schedule) and SequentialLR."""

from __future__ import annotations

from bisect import bisect_right
from typing import Any

from ..optimizer import check_number
from .base import LRScheduler, check_int_at_least, check_milestones

__all__ = ["LinearWarmup", "SequentialLR"]


def _check_children(optimizer, schedulers: list, owner: str) -> None:
    for i, s in enumerate(schedulers):
        if not isinstance(s, LRScheduler):
            raise TypeError(f"{owner}: scheduler {i} is a {type(s).__name__}, expected an LRScheduler "
                            "(ReduceLROnPlateau cannot be composed: it needs a metric)")
        if s.optimizer is not optimizer:
            raise ValueError(f"{owner}: scheduler {i} ({type(s).__name__}) was built for another optimizer")


class LinearWarmup(LRScheduler):
    """Ramp the lr linearly from ``start_factor * base_lr`` to ``base_lr`` over ``warmup_steps``, then
    hand over to ``after`` (or stay at base_lr).

    For ``epoch < warmup_steps``: ``base_lr * (start_factor + (1 - start_factor) * epoch / warmup_steps)``;
    afterwards ``after``'s schedule at ``epoch - warmup_steps`` (so ``after`` starts from its own
    step 0). Equivalent to torch's ``SequentialLR([LinearLR(start_factor, 1.0, warmup_steps), after],
    milestones=[warmup_steps])``.

    Args:
        optimizer: the optimizer to schedule.
        warmup_steps: length of the ramp in steps (>= 0; 0 means no warmup).
        start_factor: fraction of base_lr at step 0, in [0, 1]. The default 0.0 makes the first
            update a no-op for the parameters (moment estimates still see the gradient).
        after: optional scheduler built on the same optimizer (before this one) to follow the warmup,
            e.g. ``CosineAnnealingLR(opt, T_max=total - warmup_steps)``.
        last_epoch: see :class:`LRScheduler`.
    """

    _hparams = ("warmup_steps", "start_factor")

    def __init__(self, optimizer, warmup_steps: int, start_factor: float = 0.0, after: LRScheduler | None = None,
                 last_epoch: int = -1):
        self.warmup_steps, self.start_factor = warmup_steps, start_factor
        self._check()
        if after is not None:
            _check_children(optimizer, [after], "LinearWarmup")
        self.after = after
        super().__init__(optimizer, last_epoch)

    def _check(self) -> None:
        self.warmup_steps = check_int_at_least("warmup_steps", self.warmup_steps, 0)
        self.start_factor = check_number("start_factor", self.start_factor, high=1.0, high_open=False)

    def lr_at(self, epoch: int) -> list[float]:
        if epoch < self.warmup_steps:
            factor = self.start_factor + (1.0 - self.start_factor) * epoch / self.warmup_steps
            return [base_lr * factor for base_lr in self.base_lrs]
        if self.after is None:
            return list(self.base_lrs)
        return self.after.lr_at(epoch - self.warmup_steps)

    def _set_epoch(self, epoch: int) -> None:
        super()._set_epoch(epoch)
        if self.after is not None and epoch >= self.warmup_steps:
            # Keep the child's counters meaningful (its get_last_lr, its own state_dict).
            self.after.last_epoch = epoch - self.warmup_steps
            self.after._last_lr = list(self._last_lr)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["after"] = None if self.after is None else self.after.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved_after = state_dict.get("after")
        if (saved_after is None) != (self.after is None):
            raise ValueError("the saved LinearWarmup state and this one differ in having an 'after' scheduler")
        self._restore(state_dict)
        if self.after is not None:
            self.after._restore(saved_after)
        self._set_epoch(self.last_epoch)


class SequentialLR(LRScheduler):
    """Run ``schedulers[0]`` until ``milestones[0]``, then ``schedulers[1]`` from its step 0, and so on.

    Args:
        optimizer: the optimizer to schedule (every child must be built on it, before this).
        schedulers: the schedulers to run in order (not ReduceLROnPlateau).
        milestones: strictly increasing steps (>= 1) at which the next scheduler takes over;
            one fewer than the schedulers.
        last_epoch: see :class:`LRScheduler`.
    """

    _hparams = ("milestones",)

    def __init__(self, optimizer, schedulers: list[LRScheduler], milestones: list[int], last_epoch: int = -1):
        schedulers = list(schedulers)
        if not schedulers:
            raise ValueError("SequentialLR needs at least one scheduler")
        _check_children(optimizer, schedulers, "SequentialLR")
        self.schedulers = schedulers
        self.milestones = milestones
        self._check()
        super().__init__(optimizer, last_epoch)

    def _check(self) -> None:
        milestones = check_milestones(self.milestones)
        if len(milestones) != len(self.schedulers) - 1:
            raise ValueError(f"SequentialLR needs one milestone fewer than schedulers: got {len(self.schedulers)} "
                             f"scheduler(s) and {len(milestones)} milestone(s)")
        self.milestones = milestones

    def _active(self, epoch: int) -> tuple[LRScheduler, int]:
        i = bisect_right(self.milestones, epoch)
        return self.schedulers[i], epoch - (self.milestones[i - 1] if i > 0 else 0)

    def lr_at(self, epoch: int) -> list[float]:
        scheduler, local = self._active(epoch)
        return scheduler.lr_at(local)

    def _set_epoch(self, epoch: int) -> None:
        super()._set_epoch(epoch)
        scheduler, local = self._active(epoch)
        scheduler.last_epoch = local
        scheduler._last_lr = list(self._last_lr)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["schedulers"] = [s.state_dict() for s in self.schedulers]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("schedulers")
        if not isinstance(saved, list) or len(saved) != len(self.schedulers):
            raise ValueError(f"the saved SequentialLR state has {len(saved) if isinstance(saved, list) else 'no'} "
                             f"scheduler state(s), expected {len(self.schedulers)}")
        self._restore(state_dict)
        for s, sd in zip(self.schedulers, saved):
            s._restore(sd)
        self._set_epoch(self.last_epoch)
