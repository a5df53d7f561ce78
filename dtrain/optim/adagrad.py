"""Adagrad (Duchi, Hazan & Singer 2011), PyTorch's formulation."""

from __future__ import annotations

from typing import Any

from ..backend import get_array_module
from .optimizer import Optimizer, check_number
from .packing import PackedUpdates, PackPlan

__all__ = ["Adagrad"]


class Adagrad(PackedUpdates, Optimizer):
    """Adagrad, with torch's exact update rule.

    Per step ``t`` (1, 2, ...), with ``g`` the gradient after regularisation
    (see :mod:`dtrain.optim.optimizer`)::

        clr = lr / (1 + (t - 1) * lr_decay)
        s += g * g                       (s starts at initial_accumulator_value)
        p -= clr * g / (sqrt(s) + eps)

    Args:
        params: Tensors to optimize, or param-group dicts (see :class:`Optimizer`).
        lr: learning rate (> 0).
        lr_decay: learning-rate decay per step (>= 0).
        weight_decay: L2 penalty coefficient, added to the gradient (>= 0).
        initial_accumulator_value: starting value of the squared-gradient sum (>= 0).
        eps: added to the denominator for numerical stability (>= 0).
        l1: L1 penalty coefficient: ``l1 * sign(p)`` is added to the gradient (>= 0).
        maximize: maximize the objective instead of minimizing it.

    State per parameter: ``step`` (int) and ``sum``. Unlike torch, the state is created at the
    first step rather than in the constructor (same values; state_dict has no entry before it). Small NumPy
    parameters at the same step are updated together on flat arrays (:mod:`dtrain.optim.packing`): the same bits
    as one parameter at a time.
    """

    def __init__(self, params, lr: float = 1e-2, lr_decay: float = 0.0, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, eps: float = 1e-10, l1: float = 0.0,
                 maximize: bool = False):
        defaults = dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, eps=eps, l1=l1, maximize=maximize)
        super().__init__(params, defaults)

    def _check_hyperparameters(self, group: dict[str, Any]) -> None:
        group["lr_decay"] = check_number("lr_decay", group["lr_decay"])
        group["initial_accumulator_value"] = check_number("initial_accumulator_value",
                                                          group["initial_accumulator_value"])
        group["eps"] = check_number("eps", group["eps"])

    def _required_state(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("step", "sum")

    def _update(self, param, grad, group: dict[str, Any]) -> None:
        xp = get_array_module(param.data)
        state = self.state[param]
        if not state:
            state["step"] = 0
            state["sum"] = xp.full_like(param.data, group["initial_accumulator_value"])
        state["step"] += 1
        g = self._regularized_grad(param, grad, group)
        param.data -= _direction(xp, g, state, self._scratch(param.data, 1), group, state["step"])

    def _update_pack(self, plan: PackPlan, group: dict[str, Any]) -> bool:
        """``_update`` of every parameter of ``plan.pack`` at once, on flat arrays (the same bits)."""
        return self._update_counted(plan, group, {"sum": group["initial_accumulator_value"]}, {}, _direction)


def _direction(xp, g, arrays, tmp, group: dict[str, Any], step: int):
    """Add g * g to ``arrays["sum"]`` (a parameter's state, or the packed flat array) and return ``tmp`` :=
    clr * g / (sqrt(sum) + eps). The same calls for one parameter and for a pack."""
    clr = group["lr"] / (1 + (step - 1) * group["lr_decay"])
    accumulator = arrays["sum"]
    xp.multiply(g, g, out=tmp)
    accumulator += tmp
    xp.sqrt(accumulator, out=tmp)
    tmp += group["eps"]
    xp.divide(g, tmp, out=tmp)
    tmp *= clr
    return tmp
