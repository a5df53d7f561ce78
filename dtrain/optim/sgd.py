"""SGD: stochastic gradient descent with optional (Nesterov) momentum, PyTorch's formulation."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import get_array_module
from .optimizer import Optimizer, check_bool, check_number
from .packing import PackedUpdates, PackPlan

__all__ = ["SGD"]


class SGD(PackedUpdates, Optimizer):
    """Stochastic gradient descent, with torch's exact update rule.

    Per step, with ``g`` the gradient after regularisation (see :mod:`dtrain.optim.optimizer`)::

        g = -grad if maximize else grad;  g += weight_decay * p + l1 * sign(p)
        if momentum:
            buf = g                                   (first step: no dampening)
            buf = momentum * buf + (1 - dampening) * g   (later steps)
            g = g + momentum * buf if nesterov else buf
        p -= lr * g

    Args:
        params: Tensors to optimize, or param-group dicts (see :class:`Optimizer`).
        lr: learning rate (> 0).
        momentum: momentum factor (>= 0; 0 disables the buffer).
        dampening: dampening for momentum, in [0, 1].
        nesterov: use Nesterov momentum (needs momentum > 0 and dampening == 0).
        weight_decay: L2 penalty coefficient, added to the gradient (>= 0).
        l1: L1 penalty coefficient: ``l1 * sign(p)`` is added to the gradient (>= 0).
        maximize: maximize the objective instead of minimizing it.

    State per parameter: ``momentum_buffer`` (only with momentum > 0).

    Small NumPy parameters are updated together on flat arrays, their momentum buffers being views of one flat
    buffer (:mod:`dtrain.optim.packing`): the same bits as one parameter at a time.

    >>> opt = SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)  # doctest: +SKIP
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, dampening: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0, l1: float = 0.0, maximize: bool = False):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                        weight_decay=weight_decay, l1=l1, maximize=maximize)
        super().__init__(params, defaults)

    def _check_hyperparameters(self, group: dict[str, Any]) -> None:
        group["momentum"] = check_number("momentum", group["momentum"])
        group["dampening"] = check_number("dampening", group["dampening"], high=1.0, high_open=False)
        group["nesterov"] = check_bool("nesterov", group["nesterov"])
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("nesterov=True requires momentum > 0 and dampening == 0, "
                             f"got momentum={group['momentum']}, dampening={group['dampening']}")

    def _required_state(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("momentum_buffer",) if group["momentum"] != 0 else ()

    def _update(self, param, grad, group: dict[str, Any]) -> None:
        g = self._regularized_grad(param, grad, group)
        buf = fresh = None
        if group["momentum"] != 0:
            state = self.state[param]
            buf = state.get("momentum_buffer")
            fresh = buf is None
            if fresh:
                buf = state["momentum_buffer"] = get_array_module(param.data).empty_like(param.data)
        param.data -= _direction(get_array_module(param.data), g, buf, fresh, self._scratch(param.data, 1), group)

    def _update_pack(self, plan: PackPlan, group: dict[str, Any]) -> bool:
        """``_update`` of every parameter of ``plan.pack`` at once, on flat arrays (the same bits)."""
        g = self._regularized_flat(plan.gradient(), plan, group)
        buf = had = None
        if group["momentum"] != 0:
            buf, had = plan.state_array([self.state[p] for p in plan.pack], "momentum_buffer")
            if buf is None:
                return False
        plan.subtract(_direction(np, g, buf, not had, plan.step, group))
        return True


def _direction(xp, g, buf, fresh: bool, tmp, group: dict[str, Any]):
    """``tmp`` := lr times the update direction from the gradient ``g``, the momentum buffer ``buf`` (None without
    momentum; ``fresh``: made this step, filled with the gradient as torch starts it, no dampening) updated in
    place. The same calls for one parameter and for a flat pack of them."""
    momentum = group["momentum"]
    if buf is not None:
        if fresh:
            buf[...] = g
        else:
            buf *= momentum
            if group["dampening"] == 0:
                buf += g
            else:
                xp.multiply(g, 1 - group["dampening"], out=tmp)
                buf += tmp
        if group["nesterov"]:
            xp.multiply(buf, momentum, out=tmp)
            tmp += g
            g = tmp
        else:
            g = buf
    xp.multiply(g, group["lr"], out=tmp)
    return tmp
