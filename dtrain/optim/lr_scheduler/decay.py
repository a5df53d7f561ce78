"""Decay schedules, each one formula of the step count: StepLR, MultiStepLR, ExponentialLR,
CosineAnnealingLR."""

from __future__ import annotations

import math
from bisect import bisect_right

from ..optimizer import check_number
from .base import LRScheduler, check_int_at_least, check_milestones

__all__ = ["CosineAnnealingLR", "ExponentialLR", "MultiStepLR", "StepLR"]


class StepLR(LRScheduler):
    """Decay the lr by ``gamma`` every ``step_size`` steps: ``base_lr * gamma ** (epoch // step_size)``.

    Args:
        optimizer: the optimizer to schedule.
        step_size: period of the decay, in steps (>= 1).
        gamma: multiplicative factor (> 0).
        last_epoch: see :class:`LRScheduler`.
    """

    _hparams = ("step_size", "gamma")

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1):
        self.step_size, self.gamma = step_size, gamma
        self._check()
        super().__init__(optimizer, last_epoch)

    def _check(self) -> None:
        self.step_size = check_int_at_least("step_size", self.step_size, 1)
        self.gamma = check_number("gamma", self.gamma, positive=True)

    def _lr(self, base_lr: float, epoch: int) -> float:
        return base_lr * self.gamma ** (epoch // self.step_size)


class MultiStepLR(LRScheduler):
    """Decay the lr by ``gamma`` at each milestone: ``base_lr * gamma ** (milestones passed)``.

    Args:
        optimizer: the optimizer to schedule.
        milestones: strictly increasing step indices (>= 1) at which the lr is multiplied by gamma.
        gamma: multiplicative factor (> 0).
        last_epoch: see :class:`LRScheduler`.
    """

    _hparams = ("milestones", "gamma")

    def __init__(self, optimizer, milestones, gamma: float = 0.1, last_epoch: int = -1):
        self.milestones, self.gamma = milestones, gamma
        self._check()
        super().__init__(optimizer, last_epoch)

    def _check(self) -> None:
        self.milestones = check_milestones(self.milestones)
        self.gamma = check_number("gamma", self.gamma, positive=True)

    def _lr(self, base_lr: float, epoch: int) -> float:
        return base_lr * self.gamma ** bisect_right(self.milestones, epoch)


class ExponentialLR(LRScheduler):
    """Decay the lr by ``gamma`` every step: ``base_lr * gamma ** epoch``.

    Args:
        optimizer: the optimizer to schedule.
        gamma: multiplicative factor (> 0).
        last_epoch: see :class:`LRScheduler`.
    """

    _hparams = ("gamma",)

    def __init__(self, optimizer, gamma: float, last_epoch: int = -1):
        self.gamma = gamma
        self._check()
        super().__init__(optimizer, last_epoch)

    def _check(self) -> None:
        self.gamma = check_number("gamma", self.gamma, positive=True)

    def _lr(self, base_lr: float, epoch: int) -> float:
        return base_lr * self.gamma**epoch


class CosineAnnealingLR(LRScheduler):
    """Cosine annealing from base_lr down to ``eta_min`` over ``T_max`` steps (SGDR, no restarts).

    ``lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2``; past ``T_max`` the
    cosine continues (the lr rises again), as torch's does.

    Args:
        optimizer: the optimizer to schedule.
        T_max: number of steps of the half period (>= 1).
        eta_min: the lowest learning rate (>= 0).
        last_epoch: see :class:`LRScheduler`.
    """

    _hparams = ("T_max", "eta_min")

    def __init__(self, optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1):
        self.T_max, self.eta_min = T_max, eta_min
        self._check()
        super().__init__(optimizer, last_epoch)

    def _check(self) -> None:
        self.T_max = check_int_at_least("T_max", self.T_max, 1)
        self.eta_min = check_number("eta_min", self.eta_min)

    def _lr(self, base_lr: float, epoch: int) -> float:
        return self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * epoch / self.T_max)) / 2
