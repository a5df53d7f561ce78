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

from .base import LRScheduler
from .composite import LinearWarmup, SequentialLR
from .decay import CosineAnnealingLR, ExponentialLR, MultiStepLR, StepLR
from .plateau import ReduceLROnPlateau

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
