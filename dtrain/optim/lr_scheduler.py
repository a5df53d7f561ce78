"""Learning-rate schedulers, torch-shaped: they set ``optimizer.param_groups[i]["lr"]``.

Usage is torch's: build the scheduler after the optimizer, call ``scheduler.step()`` once per epoch
(or per iteration) after ``optimizer.step()``::

    opt = optim.SGD(model.parameters(), lr=0.1)
    sched = lr_scheduler.LinearWarmup(opt, warmup_steps=100, after=lr_scheduler.CosineAnnealingLR(opt, T_max=900))
    for batch in data:
        ...; opt.step(); sched.step()

Every schedule here is a closed form of the step count ``last_epoch`` and each group's base
learning rate ``initial_lr`` (stored in the group by the first scheduler built on it), rather than
torch's recursive updates. The values are the same as torch's (up to rounding), and resuming is
exact: a scheduler restored from ``state_dict`` produces bit-identical learning rates. One
difference: two closed-form schedulers stepping the same optimizer do not multiply together (the
last one to step sets the lr); compose them with :class:`SequentialLR` or ``LinearWarmup(after=)``.

``state_dict()`` of every scheduler holds only JSON-able values (ints, floats, strings, lists,
dicts, None).
"""

from __future__ import annotations

import itertools
import math
import numbers
from bisect import bisect_right
from typing import Any

from .optimizer import check_number

__all__ = [
    "LRScheduler",
    "StepLR",
    "MultiStepLR",
    "ExponentialLR",
    "CosineAnnealingLR",
    "LinearWarmup",
    "SequentialLR",
    "ReduceLROnPlateau",
]


def _check_optimizer(optimizer) -> None:
    # Duck-typed, so wrappers (ZeroRedundancyOptimizer, DDP helpers) that expose param_groups work.
    groups = getattr(optimizer, "param_groups", None)
    if not isinstance(groups, list) or not all(isinstance(g, dict) and "lr" in g for g in groups):
        raise TypeError(f"{type(optimizer).__name__} is not an optimizer: expected an object with "
                        "param_groups, a list of dicts with an 'lr' each")


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _check_milestones(milestones) -> list[int]:
    try:
        values = list(milestones)
    except TypeError:
        raise ValueError(f"milestones must be a list of increasing integers >= 1, got {milestones!r}") from None
    for m in values:
        _check_int("each milestone", m, 1)
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
        _check_optimizer(optimizer)
        self.optimizer = optimizer
        last_epoch = _check_int("last_epoch", last_epoch, -1)
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
        self.last_epoch = _check_int("last_epoch", state_dict["last_epoch"], 0)
        self.base_lrs = [float(v) for v in state_dict["base_lrs"]]

    def _check(self) -> None:
        """Validate (and normalise) the hyperparameters held in attributes; raise ValueError."""


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
        self.step_size = _check_int("step_size", self.step_size, 1)
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
        self.milestones = _check_milestones(self.milestones)
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
        self.T_max = _check_int("T_max", self.T_max, 1)
        self.eta_min = check_number("eta_min", self.eta_min)

    def _lr(self, base_lr: float, epoch: int) -> float:
        return self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * epoch / self.T_max)) / 2


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
        self.warmup_steps = _check_int("warmup_steps", self.warmup_steps, 0)
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
        milestones = _check_milestones(self.milestones)
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
        _check_optimizer(optimizer)
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
        if isinstance(factor, bool) or not isinstance(factor, numbers.Real) or not 0.0 < factor < 1.0:
            raise ValueError(f"factor must be a number in (0, 1), got {factor!r}")
        self.factor = float(factor)
        self.patience = _check_int("patience", self.patience, 0)
        self.threshold = check_number("threshold", self.threshold)
        self.cooldown = _check_int("cooldown", self.cooldown, 0)
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
