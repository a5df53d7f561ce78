"""Adam and AdamW (Kingma & Ba 2015; Loshchilov & Hutter 2019), PyTorch's formulation."""

from __future__ import annotations

from typing import Any

from ..backend import get_array_module
from .optimizer import Optimizer, check_bool, check_number
from .packing import PackedUpdates, PackPlan

__all__ = ["Adam", "AdamW"]


class Adam(PackedUpdates, Optimizer):
    """Adam, with torch's exact update rule (bias-corrected moments, optional AMSGrad).

    Per step ``t`` (1, 2, ...), with ``g`` the gradient after regularisation (L2 weight decay is
    coupled: ``g += weight_decay * p``, as in torch's Adam; see :class:`AdamW` for decoupled)::

        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        v_hat = max(v_hat, v) if amsgrad else v
        p -= lr / (1 - beta1**t) * m / (sqrt(v_hat) / sqrt(1 - beta2**t) + eps)

    Args:
        params: Tensors to optimize, or param-group dicts (see :class:`Optimizer`).
        lr: learning rate (> 0).
        betas: decay rates (beta1, beta2) of the first and second moment, each in [0, 1).
        eps: added to the denominator for numerical stability (>= 0).
        weight_decay: L2 penalty coefficient, added to the gradient (>= 0).
        amsgrad: use the running maximum of the second moment (Reddi et al. 2018).
        l1: L1 penalty coefficient: ``l1 * sign(p)`` is added to the gradient (>= 0).
        maximize: maximize the objective instead of minimizing it.

    State per parameter: ``step`` (int), ``exp_avg``, ``exp_avg_sq`` and, with amsgrad,
    ``max_exp_avg_sq``. Small NumPy parameters at the same step are updated together on flat arrays
    (:mod:`dtrain.optim.packing`): the same bits as one parameter at a time.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False, l1: float = 0.0, maximize: bool = False):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, l1=l1,
                        maximize=maximize)
        super().__init__(params, defaults)

    def _check_hyperparameters(self, group: dict[str, Any]) -> None:
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2) of numbers in [0, 1), got {betas!r}")
        group["betas"] = tuple(check_number(f"betas[{i}]", b, high=1.0) for i, b in enumerate(betas))
        group["eps"] = check_number("eps", group["eps"])
        group["amsgrad"] = check_bool("amsgrad", group["amsgrad"])

    def _required_state(self, group: dict[str, Any]) -> tuple[str, ...]:
        keys = ("step", "exp_avg", "exp_avg_sq")
        return keys + ("max_exp_avg_sq",) if group["amsgrad"] else keys

    def _update(self, param, grad, group: dict[str, Any]) -> None:
        xp = get_array_module(param.data)
        lr = group["lr"]
        state = self.state[param]
        if not state:
            state["step"] = 0
            state["exp_avg"] = xp.zeros_like(param.data)
            state["exp_avg_sq"] = xp.zeros_like(param.data)
        if group["amsgrad"] and "max_exp_avg_sq" not in state:  # also when amsgrad is switched on later
            state["max_exp_avg_sq"] = xp.zeros_like(param.data)
        state["step"] += 1
        step = state["step"]

        g = self._regularized_grad(param, grad, group)  # sign(p) for l1 is taken before decoupled decay
        if self._decoupled_weight_decay and group["weight_decay"] != 0:
            param.data *= 1 - lr * group["weight_decay"]

        param.data -= _direction(xp, g, state, self._scratch(param.data, 1), group, step)

    def _update_pack(self, plan: PackPlan, group: dict[str, Any]) -> bool:
        """``_update`` of every parameter of ``plan.pack`` at once, on flat arrays (the same bits)."""
        ams = {"max_exp_avg_sq": 0.0} if group["amsgrad"] else {}
        return self._update_counted(plan, group, {"exp_avg": 0.0, "exp_avg_sq": 0.0}, ams, _direction)


def _direction(xp, g, arrays, tmp, group: dict[str, Any], step: int):
    """Update the moments in ``arrays`` (a parameter's state, or the packed flat arrays: ``exp_avg``, ``exp_avg_sq``
    and with AMSGrad ``max_exp_avg_sq``) in place with the gradient ``g``, and return ``tmp`` := the step to
    subtract, lr / (1 - beta1**step) * m / (sqrt(v_hat) / sqrt(1 - beta2**step) + eps). The same calls for one
    parameter and for a flat pack of them."""
    lr, eps = group["lr"], group["eps"]
    beta1, beta2 = group["betas"]
    exp_avg, exp_avg_sq = arrays["exp_avg"], arrays["exp_avg_sq"]
    # m += (1 - beta1) * (g - m): torch's lerp form, so results track torch to the last bits.
    xp.subtract(g, exp_avg, out=tmp)
    tmp *= 1 - beta1
    exp_avg += tmp
    exp_avg_sq *= beta2
    xp.multiply(g, g, out=tmp)
    tmp *= 1 - beta2
    exp_avg_sq += tmp
    second = exp_avg_sq
    if group["amsgrad"]:
        second = arrays["max_exp_avg_sq"]
        xp.maximum(second, exp_avg_sq, out=second)
    xp.sqrt(second, out=tmp)
    tmp /= (1 - beta2**step) ** 0.5
    tmp += eps
    xp.divide(exp_avg, tmp, out=tmp)
    tmp *= lr / (1 - beta1**step)
    return tmp


class AdamW(Adam):
    """Adam with decoupled weight decay (torch's AdamW): ``p *= 1 - lr * weight_decay`` each step.

    The decay multiplies the parameter before the Adam update instead of entering the gradient,
    so it is not rescaled by the adaptive denominator. ``l1`` and ``maximize`` still act on the
    gradient. Arguments as :class:`Adam`, except ``weight_decay`` defaults to 1e-2.
    """

    _decoupled_weight_decay = True

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, l1: float = 0.0, maximize: bool = False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, l1=l1,
                         maximize=maximize)
