"""LRScheduler, the base of the closed-form schedules, and the argument checks every scheduler shares.

A schedule is a closed form of the step count ``last_epoch`` and each group's base learning rate
``initial_lr``; subclasses give the formula (``_lr`` or ``lr_at``) and list their hyperparameters
(``_hparams``) for ``state_dict``.
"""

from __future__ import annotations

import itertools
from typing import Any

from ...spec import check_int

__all__ = ["LRScheduler", "check_optimizer", "check_int_at_least", "check_milestones"]


def check_optimizer(optimizer) -> None:
    """TypeError unless ``optimizer`` has ``param_groups``, a list of dicts with an ``lr`` each."""
    # Duck-typed, so wrappers (ZeroRedundancyOptimizer, DDP helpers) that expose param_groups work.
    groups = getattr(optimizer, "param_groups", None)
    if not isinstance(groups, list) or not all(isinstance(g, dict) and "lr" in g for g in groups):
        raise TypeError(f"{type(optimizer).__name__} is not an optimizer: expected an object with "
                        "param_groups, a list of dicts with an 'lr' each")


def check_int_at_least(name: str, value, low: int) -> int:
    """``value`` as an int, or ValueError "NAME must be an integer >= LOW" (bools are not integers)."""
    return check_int(name, value, low, expected=f"an integer >= {low}")


def check_milestones(milestones) -> list[int]:
    """``milestones`` as a list of strictly increasing ints >= 1, or ValueError."""
    try:
        values = list(milestones)
    except TypeError:
        raise ValueError(f"milestones must be a list of increasing integers >= 1, got {milestones!r}") from None
    for m in values:
        check_int_at_least("each milestone", m, 1)
    if any(b <= a for a, b in itertools.pairwise(values)):
        raise ValueError(f"milestones must be strictly increasing, got {values}")
    return values


class LRScheduler:
    """Base class: sets each group's lr to ``lr_at(last_epoch)`` at construction and every ``step()``.

    Subclasses implement ``_lr(base_lr, epoch)`` (or ``lr_at`` for per-group logic) and list their
    hyperparameters in ``_hparams`` (saved by ``state_dict``).

    Args:
        optimizer: the optimizer whose ``param_groups[i]["lr"]`` this scheduler sets.
        last_epoch: index of the last step taken; -1 (default) starts a new schedule and records each
            group's current lr as its ``initial_lr``. A value >= 0 resumes and needs ``initial_lr``
            already in the groups (as after ``optimizer.load_state_dict``).

    Attributes:
        last_epoch: the number of ``step()`` calls so far (0 right after construction).
        base_lrs: each group's ``initial_lr``.
    """

    _hparams: tuple[str, ...] = ()

    def __init__(self, optimizer, last_epoch: int = -1):
        check_optimizer(optimizer)
        self.optimizer = optimizer
        last_epoch = check_int_at_least("last_epoch", last_epoch, -1)
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        else:
            for i, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise KeyError(f"param group {i} has no 'initial_lr', needed to resume a scheduler with "
                                   f"last_epoch={last_epoch}; load the optimizer's state_dict first")
        self.base_lrs: list[float] = [float(group["initial_lr"]) for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        self._last_lr: list[float] = []
        self.step()

    def _lr(self, base_lr: float, epoch: int) -> float:
        raise NotImplementedError

    def lr_at(self, epoch: int) -> list[float]:
        """The learning rate of every param group after ``epoch`` steps (the closed form)."""
        return [self._lr(base_lr, epoch) for base_lr in self.base_lrs]

    def get_lr(self) -> list[float]:
        """The learning rates for the current ``last_epoch``."""
        return self.lr_at(self.last_epoch)

    def get_last_lr(self) -> list[float]:
        """The learning rates this scheduler last set (a new list)."""
        return list(self._last_lr)

    def step(self) -> None:
        """Advance the schedule by one step and write the new lr into every param group."""
        self._set_epoch(self.last_epoch + 1)

    def _set_epoch(self, epoch: int) -> None:
        groups = self.optimizer.param_groups
        if len(groups) != len(self.base_lrs):
            raise RuntimeError(f"the optimizer has {len(groups)} param group(s) but the scheduler was built "
                               f"for {len(self.base_lrs)}; build the scheduler after adding param groups")
        self.last_epoch = epoch
        values = self.lr_at(epoch)
        for group, lr in zip(groups, values):
            group["lr"] = lr
        self._last_lr = list(values)

    def state_dict(self) -> dict[str, Any]:
        """The scheduler's state (JSON-able): type, last_epoch, base_lrs, last lr and hyperparameters."""
        state = {"type": type(self).__name__, "last_epoch": self.last_epoch, "base_lrs": list(self.base_lrs),
                 "last_lr": list(self._last_lr)}
        for name in self._hparams:
            value = getattr(self, name)
            state[name] = list(value) if isinstance(value, tuple) else value
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state from ``state_dict()`` and set the optimizer's lrs to match it.

        Hyperparameters come from the saved state (as in torch). Setting the lrs again makes the
        order of loading (optimizer first or scheduler first) irrelevant.

        Raises:
            ValueError: a state of another scheduler type, a missing key or a different number of
                param groups.
        """
        self._restore(state_dict)
        self._set_epoch(self.last_epoch)

    def _restore(self, state_dict: dict[str, Any]) -> None:
        kind = state_dict.get("type", type(self).__name__)
        if kind != type(self).__name__:
            raise ValueError(f"cannot load a state saved by {kind} into {type(self).__name__}")
        missing = [k for k in ("last_epoch", "base_lrs", *self._hparams) if k not in state_dict]
        if missing:
            raise ValueError(f"{type(self).__name__} state_dict is missing key(s) {missing}")
        if len(state_dict["base_lrs"]) != len(self.base_lrs):
            raise ValueError(f"the saved {type(self).__name__} state has {len(state_dict['base_lrs'])} param "
                             f"group(s), but the optimizer has {len(self.base_lrs)}")
        for name in self._hparams:
            setattr(self, name, state_dict[name])
        self._check()
        self.last_epoch = check_int_at_least("last_epoch", state_dict["last_epoch"], 0)
        self.base_lrs = [float(v) for v in state_dict["base_lrs"]]

    def _check(self) -> None:
        """Validate (and normalise) the hyperparameters held in attributes; raise ValueError."""
