"""dtrain.optim: optimizers, learning-rate schedulers and gradient clipping, shaped like torch.optim.

    from dtrain import optim
    opt = optim.AdamW(model.parameters(), lr=3e-4)
    sched = optim.lr_scheduler.LinearWarmup(opt, 100, after=optim.lr_scheduler.CosineAnnealingLR(opt, T_max=900))
    loss.backward(); optim.clip_grad_norm_(model.parameters(), 1.0); opt.step(); sched.step(); opt.zero_grad()

Every optimizer takes ``weight_decay`` (L2), ``l1`` and ``maximize``; see :mod:`dtrain.optim.optimizer`
for the regularisation semantics and the ``state_dict`` format. ``create(name, params, lr, **kwargs)``
builds one by name (the CLI's ``--optimizer``).
"""

from __future__ import annotations

from collections.abc import Iterable

from ..nn.utils.clip import clip_grad_norm_, clip_grad_value_
from . import lr_scheduler
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .optimizer import Optimizer
from .rmsprop import RMSprop
from .sgd import SGD

OPTIMIZERS: dict[str, type[Optimizer]] = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop,
                                          "adagrad": Adagrad}


def create(name: str, params: Iterable, lr: float, **kwargs) -> Optimizer:
    """Build the optimizer registered as ``name`` (case-insensitive) in :data:`OPTIMIZERS`.

    Args:
        name: "sgd", "adam", "adamw", "rmsprop" or "adagrad".
        params: Tensors or param-group dicts, as for the optimizer's constructor.
        lr: learning rate.
        **kwargs: the optimizer's other hyperparameters (momentum, betas, weight_decay, ...).

    Returns:
        The optimizer. Raises ValueError for an unknown name, listing the known ones.

    >>> opt = create("AdamW", model.parameters(), lr=1e-3, weight_decay=0.05)  # doctest: +SKIP
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; expected one of: {', '.join(sorted(OPTIMIZERS))}")
    return OPTIMIZERS[key](params, lr=lr, **kwargs)


__all__ = [
    "OPTIMIZERS", "SGD", "Adagrad", "Adam", "AdamW", "Optimizer", "RMSprop", "clip_grad_norm_", "clip_grad_value_",
    "create", "lr_scheduler",
]
