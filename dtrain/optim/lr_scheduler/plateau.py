"""ReduceLROnPlateau: lower the lr when a monitored metric stops improving (driven by the metric, not
by the step count, so it is not an LRScheduler and cannot be composed)."""

from __future__ import annotations

import math
from typing import Any

from ...spec import is_real
from ..optimizer import check_number
from .base import check_int_at_least, check_optimizer

__all__ = ["ReduceLROnPlateau"]


class ReduceLROnPlateau:
    """Multiply the lr by ``factor`` when a metric has stopped improving (torch's semantics).

    Call ``step(metric)`` once per evaluation. A metric is an improvement when it beats the best so
    far by the threshold (``rel``: ``best * (1 -/+ threshold)``; ``abs``: ``best -/+ threshold``, for
    mode ``min``/``max``). After more than ``patience`` evaluations without improvement every
    group's lr becomes ``max(lr * factor, min_lr)`` (changes smaller than ``eps`` are skipped), then
    ``cooldown`` evaluations are ignored.

    Args:
        optimizer: the optimizer to schedule.
        mode: "min" (the metric should decrease, e.g. a loss) or "max" (e.g. accuracy).
        factor: multiplicative factor, in (0, 1).
        patience: evaluations without improvement tolerated before reducing (>= 0).
        threshold: the margin an improvement must beat (>= 0).
        threshold_mode: "rel" or "abs".
        cooldown: evaluations to wait after a reduction before counting again (>= 0).
        min_lr: lower bound on the lr, one number or one per param group (>= 0).
        eps: smallest lr change applied (>= 0).
    """

    _hparams = ("mode", "factor", "patience", "threshold", "threshold_mode", "cooldown", "min_lrs", "eps")

    def __init__(self, optimizer, mode: str = "min", factor: float = 0.1, patience: int = 10,
                 threshold: float = 1e-4, threshold_mode: str = "rel", cooldown: int = 0,
                 min_lr: float | list[float] = 0.0, eps: float = 1e-8):
        check_optimizer(optimizer)
        self.optimizer = optimizer
        n = len(optimizer.param_groups)
        if isinstance(min_lr, (list, tuple)):
            if len(min_lr) != n:
                raise ValueError(f"min_lr has {len(min_lr)} value(s), but the optimizer has {n} param group(s)")
            self.min_lrs = list(min_lr)
        else:
            self.min_lrs = [min_lr] * n
        self.mode, self.factor, self.patience, self.threshold = mode, factor, patience, threshold
        self.threshold_mode, self.cooldown, self.eps = threshold_mode, cooldown, eps
        self._check()
        self.last_epoch = 0
        self.best = math.inf if self.mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self._last_lr = [float(g["lr"]) for g in optimizer.param_groups]

    def _check(self) -> None:
        if self.mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {self.mode!r}")
        if self.threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold_mode must be 'rel' or 'abs', got {self.threshold_mode!r}")
        factor = self.factor
        if not is_real(factor) or not 0.0 < factor < 1.0:
            raise ValueError(f"factor must be a number in (0, 1), got {factor!r}")
        self.factor = float(factor)
        self.patience = check_int_at_least("patience", self.patience, 0)
        self.threshold = check_number("threshold", self.threshold)
        self.cooldown = check_int_at_least("cooldown", self.cooldown, 0)
        self.min_lrs = [check_number("min_lr", v) for v in self.min_lrs]
        self.eps = check_number("eps", self.eps)

    def _is_better(self, a: float, best: float) -> bool:
        if self.mode == "min":
            return a < (best * (1.0 - self.threshold) if self.threshold_mode == "rel" else best - self.threshold)
        return a > (best * (1.0 + self.threshold) if self.threshold_mode == "rel" else best + self.threshold)

    def step(self, metric) -> None:
        """Record one evaluation of the monitored metric (a number, or a one-element tensor/array)."""
        current = float(metric)
        self.last_epoch += 1
        if self._is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # bad evaluations during cooldown do not count
        if self.num_bad_epochs > self.patience:
            groups = self.optimizer.param_groups
            if len(groups) != len(self.min_lrs):
                raise RuntimeError(f"the optimizer has {len(groups)} param group(s) but ReduceLROnPlateau was "
                                   f"built for {len(self.min_lrs)}")
            for group, min_lr in zip(groups, self.min_lrs):
                old_lr = float(group["lr"])
                new_lr = max(old_lr * self.factor, min_lr)
                if old_lr - new_lr > self.eps:
                    group["lr"] = new_lr
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = [float(g["lr"]) for g in self.optimizer.param_groups]

    @property
    def in_cooldown(self) -> bool:
        """True while evaluations are being ignored after a reduction."""
        return self.cooldown_counter > 0

    def get_last_lr(self) -> list[float]:
        """The learning rates after the last ``step`` (a new list)."""
        return list(self._last_lr)

    def state_dict(self) -> dict[str, Any]:
        """The state (JSON-able; ``best`` is None until a first finite metric is recorded)."""
        state = {name: getattr(self, name) for name in self._hparams}
        state["min_lrs"] = list(self.min_lrs)
        state.update(type="ReduceLROnPlateau", last_epoch=self.last_epoch,
                     best=self.best if math.isfinite(self.best) else None,
                     num_bad_epochs=self.num_bad_epochs, cooldown_counter=self.cooldown_counter,
                     last_lr=list(self._last_lr))
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state from ``state_dict()`` (the optimizer's lrs come from its own state_dict)."""
        if state_dict.get("type", "ReduceLROnPlateau") != "ReduceLROnPlateau":
            raise ValueError(f"cannot load a state saved by {state_dict['type']} into ReduceLROnPlateau")
        keys = (*self._hparams, "last_epoch", "best", "num_bad_epochs", "cooldown_counter")
        missing = [k for k in keys if k not in state_dict]
        if missing:
            raise ValueError(f"ReduceLROnPlateau state_dict is missing key(s) {missing}")
        for name in self._hparams:
            setattr(self, name, state_dict[name])
        self.min_lrs = list(self.min_lrs)
        self._check()
        best = state_dict["best"]
        self.best = float(best) if best is not None else (math.inf if self.mode == "min" else -math.inf)
        self.last_epoch = int(state_dict["last_epoch"])
        self.num_bad_epochs = int(state_dict["num_bad_epochs"])
        self.cooldown_counter = int(state_dict["cooldown_counter"])
        self._last_lr = [float(g["lr"]) for g in self.optimizer.param_groups]
