"""SGD: stochastic gradient descent with optional (Nesterov) momentum, PyTorch's formulation."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from ..backend import get_array_module
from .optimizer import Optimizer, check_bool, check_number

__all__ = ["SGD"]

# Parameters of at most this many values (NumPy, one dtype) are updated together, as one flat array: a
# parameter's update is half a dozen NumPy calls, which dominate for biases, norms and small kernels (the
# digits ResNet's 20 parameters: 78 -> 31 us a step). Larger ones keep their own calls: there the copies
# into and out of the flat arrays would cost more than the calls.
PACK_MAX = 1 << 16


class SGD(Optimizer):
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

    Small NumPy parameters (``PACK_MAX`` values or fewer) are updated together on flat arrays, their momentum
    buffers being views of one flat buffer: the same operations in the same order on each value, so the same
    bits as one parameter at a time.

    >>> opt = SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)  # doctest: +SKIP
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, dampening: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0, l1: float = 0.0, maximize: bool = False):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                        weight_decay=weight_decay, l1=l1, maximize=maximize)
        super().__init__(params, defaults)
        self._plans: dict[int, _PackPlan] = {}  # id of a param group -> its pack of small parameters

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
        xp = get_array_module(param.data)
        lr, momentum = group["lr"], group["momentum"]
        g = self._regularized_grad(param, grad, group)
        tmp = self._scratch(param.data, 1)
        if momentum != 0:
            state = self.state[param]
            buf = state.get("momentum_buffer")
            if buf is None:
                # torch starts the buffer at the gradient itself (no dampening on the first step).
                buf = state["momentum_buffer"] = xp.array(g, dtype=param.data.dtype, copy=True)
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
        xp.multiply(g, lr, out=tmp)
        param.data -= tmp

    def _update_group(self, group: dict[str, Any], params: list) -> None:
        plan = self._pack_plan(group, params)
        if not plan.pack:
            super()._update_group(group, params)
            return
        for p in plan.rest:
            self._update(p, p.grad, group)
        if not self._update_pack(plan, group):
            for p in plan.pack:
                self._update(p, p.grad, group)

    def _pack_plan(self, group: dict[str, Any], params: list) -> _PackPlan:
        """The group's pack for these parameters (kept while they are the same ones; empty: no pack)."""
        plan = self._plans.get(id(group))
        if plan is None or len(plan.params) != len(params) or any(a is not b for a, b in zip(plan.params, params)):
            pack = _packable(params)
            plan = self._plans[id(group)] = _PackPlan(id(group), params, pack if len(pack) > 1 else [])
        return plan

    def _update_pack(self, plan: _PackPlan, group: dict[str, Any]) -> bool:
        """``_update`` of every parameter of the plan's pack at once on flat arrays; False (nothing changed) when
        a gradient no longer fits the pack or the momentum buffers cannot join one flat buffer this step."""
        pack, dtype = plan.pack, plan.dtype
        if any(p.data is not d or type(p.grad) is not np.ndarray or p.grad.shape != d.shape
               for p, d in zip(pack, plan.data)):
            del self._plans[plan.key]  # a parameter's array was replaced or a gradient does not fit: plan again
            return False
        g = np.concatenate([p.grad.reshape(-1) for p in pack])  # a copy of our own: regularised in place
        if g.dtype != dtype:
            del self._plans[plan.key]
            return False
        lr, momentum = group["lr"], group["momentum"]
        g = self._regularized_flat(g, pack, group)
        if momentum != 0:
            buf, fresh = self._flat_momentum(plan)
            if buf is None:
                return False
            if fresh is None:  # torch starts the buffer at the gradient itself (no dampening on the first step)
                buf[...] = g
            else:
                buf *= momentum
                if group["dampening"] == 0:
                    buf += g
                else:
                    buf += g * (1 - group["dampening"])
            g = buf * momentum + g if group["nesterov"] else buf
        np.multiply(g, lr, out=plan.step)
        for p, step in zip(pack, plan.step_views):
            p.data -= step
        return True

    def _regularized_flat(self, g, pack: list, group: dict[str, Any]):
        """``_regularized_grad`` on the flat gradient ``g`` (modified in place) of the parameters ``pack``."""
        wd, l1 = group["weight_decay"], group["l1"]
        if group["maximize"]:
            np.negative(g, out=g)
        if wd != 0.0 or l1 != 0.0:
            data = np.concatenate([p.data.reshape(-1) for p in pack])
            if wd != 0.0:
                g += data * wd
            if l1 != 0.0:
                tmp = np.sign(data)
                tmp *= l1
                g += tmp
        return g

    def _flat_momentum(self, plan: _PackPlan) -> tuple:
        """(the pack's flat momentum buffer, its previous values or None on the first step): each parameter's
        ``momentum_buffer`` is its view of it. Made again when those are not the views made last (a loaded state,
        a buffer set by hand); (None, None) when some parameters have a buffer and some not, or a buffer of
        another shape or dtype than its parameter."""
        states = [self.state[p] for p in plan.pack]
        if plan.momentum is not None and all(st.get("momentum_buffer") is v for st, v in zip(states, plan.momentum)):
            return plan.flat, plan.flat
        bufs = [st.get("momentum_buffer") for st in states]
        if all(b is None for b in bufs):
            flat, fresh = np.empty(plan.size, dtype=plan.dtype), None
        elif all(type(b) is np.ndarray and b.dtype == plan.dtype and b.shape == p.data.shape
                 for b, p in zip(bufs, plan.pack)):
            flat = fresh = np.concatenate([b.reshape(-1) for b in bufs])
        else:
            return None, None
        plan.flat, plan.momentum = flat, plan.views_of(flat)
        for st, v in zip(states, plan.momentum):
            st["momentum_buffer"] = v
        return flat, fresh


class _PackPlan:
    """Which of a group's parameters SGD updates together, and the flat arrays it keeps for them."""

    def __init__(self, key: int, params: list, pack: list):
        self.key = key  # of the plan in SGD._plans
        self.params = list(params)  # the group's parameters with a gradient, when the plan was made
        self.pack = pack
        self.data = [p.data for p in pack]  # the arrays updated (a parameter given another array: plan again)
        packed = set(map(id, pack))
        self.rest = [p for p in params if id(p) not in packed]
        self.dtype = pack[0].data.dtype if pack else None
        self.bounds = list(itertools.accumulate((p.data.size for p in pack), initial=0))
        self.size = self.bounds[-1]
        self.step = np.empty(self.size, dtype=self.dtype)  # lr times the update direction
        self.step_views = self.views_of(self.step)
        self.flat = self.momentum = None  # the flat momentum buffer and its views (the parameters' state)

    def views_of(self, flat) -> list:
        return [flat[a:b].reshape(p.data.shape) for p, a, b in zip(self.pack, self.bounds[:-1], self.bounds[1:])]


def _packable(params: list) -> list:
    """The parameters (in order) that SGD updates together: small NumPy arrays of the first such one's dtype,
    with NumPy gradients of that dtype and shape."""
    pack, dtype = [], None
    for p in params:
        d, g = p.data, p.grad
        if type(d) is np.ndarray and type(g) is np.ndarray and d.size <= PACK_MAX and g.dtype == d.dtype \
                and d.shape == g.shape and (dtype is None or d.dtype == dtype):
            dtype = d.dtype
            pack.append(p)
    return pack
