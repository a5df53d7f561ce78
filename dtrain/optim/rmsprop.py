"""RMSprop (Hinton's lecture 6e; centered variant of Graves 2013), PyTorch's formulation."""

from __future__ import annotations

from typing import Any

from ..backend import get_array_module
from .optimizer import Optimizer, check_bool, check_number
from .packing import PackedUpdates, PackPlan

__all__ = ["RMSprop"]


class RMSprop(PackedUpdates, Optimizer):
    """RMSprop, with torch's exact update rule.

    Per step, with ``g`` the gradient after regularisation (see :mod:`dtrain.optim.optimizer`)::

        v = alpha * v + (1 - alpha) * g * g
        if centered:  a = alpha * a + (1 - alpha) * g;  denom = sqrt(v - a * a) + eps
        else:         denom = sqrt(v) + eps
        if momentum:  buf = momentum * buf + g / denom;  p -= lr * buf
        else:         p -= lr * g / denom

    Note that eps is added outside the square root (torch's choice, unlike Keras/TensorFlow).

    Args:
        params: Tensors to optimize, or param-group dicts (see :class:`Optimizer`).
        lr: learning rate (> 0).
        alpha: smoothing constant of the squared-gradient average, in [0, 1).
        eps: added to the denominator for numerical stability (>= 0).
        weight_decay: L2 penalty coefficient, added to the gradient (>= 0).
        momentum: momentum factor (>= 0; 0 disables the buffer).
        centered: normalise by the estimated variance of the gradient instead of its second moment.
        l1: L1 penalty coefficient: ``l1 * sign(p)`` is added to the gradient (>= 0).
        maximize: maximize the objective instead of minimizing it.

    State per parameter: ``step`` (int), ``square_avg``, ``momentum_buffer`` (momentum > 0) and
    ``grad_avg`` (centered). Small NumPy parameters at the same step are updated together on flat arrays
    (:mod:`dtrain.optim.packing`): the same bits as one parameter at a time.
    """

    def __init__(self, params, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0,
                 momentum: float = 0.0, centered: bool = False, l1: float = 0.0, maximize: bool = False):
        defaults = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                        centered=centered, l1=l1, maximize=maximize)
        super().__init__(params, defaults)

    def _check_hyperparameters(self, group: dict[str, Any]) -> None:
        group["alpha"] = check_number("alpha", group["alpha"], high=1.0)
        group["eps"] = check_number("eps", group["eps"])
        group["momentum"] = check_number("momentum", group["momentum"])
        group["centered"] = check_bool("centered", group["centered"])

    def _required_state(self, group: dict[str, Any]) -> tuple[str, ...]:
        keys = ("step", "square_avg")
        if group["momentum"] > 0:
            keys += ("momentum_buffer",)
        if group["centered"]:
            keys += ("grad_avg",)
        return keys

    def _update(self, param, grad, group: dict[str, Any]) -> None:
        xp = get_array_module(param.data)
        momentum = group["momentum"]
        state = self.state[param]
        if not state:
            state["step"] = 0
            state["square_avg"] = xp.zeros_like(param.data)
        # Created on first use, so switching momentum/centered on mid-run works as from zeros.
        if momentum > 0 and "momentum_buffer" not in state:
            state["momentum_buffer"] = xp.zeros_like(param.data)
        if group["centered"] and "grad_avg" not in state:
            state["grad_avg"] = xp.zeros_like(param.data)
        state["step"] += 1

        g = self._regularized_grad(param, grad, group)
        param.data -= _direction(xp, g, state, self._scratch(param.data, 1), group, state["step"])

    def _update_pack(self, plan: PackPlan, group: dict[str, Any]) -> bool:
        """``_update`` of every parameter of ``plan.pack`` at once, on flat arrays (the same bits)."""
        later = {**({"momentum_buffer": 0.0} if group["momentum"] > 0 else {}),
                 **({"grad_avg": 0.0} if group["centered"] else {})}
        return self._update_counted(plan, group, {"square_avg": 0.0}, later, _direction)


def _direction(xp, g, arrays, tmp, group: dict[str, Any], step: int):
    """Update ``arrays`` (a parameter's state, or the packed flat arrays) in place with the gradient ``g`` and return
    ``tmp`` := lr * g / denom, or lr * buf with momentum. The same calls for one parameter and for a pack."""
    alpha, momentum = group["alpha"], group["momentum"]
    square_avg = arrays["square_avg"]
    square_avg *= alpha
    xp.multiply(g, g, out=tmp)
    tmp *= 1 - alpha
    square_avg += tmp
    if group["centered"]:
        grad_avg = arrays["grad_avg"]
        xp.subtract(g, grad_avg, out=tmp)  # torch's lerp form of a = alpha * a + (1 - alpha) * g
        tmp *= 1 - alpha
        grad_avg += tmp
        xp.multiply(grad_avg, grad_avg, out=tmp)
        xp.subtract(square_avg, tmp, out=tmp)
        # v - a*a >= 0 in exact arithmetic; rounding can leave -1e-20, whose sqrt is NaN.
        xp.maximum(tmp, 0, out=tmp)
        xp.sqrt(tmp, out=tmp)
    else:
        xp.sqrt(square_avg, out=tmp)
    tmp += group["eps"]
    xp.divide(g, tmp, out=tmp)
    if momentum > 0:
        buf = arrays["momentum_buffer"]
        buf *= momentum
        buf += tmp
        xp.multiply(buf, group["lr"], out=tmp)
    else:
        tmp *= group["lr"]
    return tmp
