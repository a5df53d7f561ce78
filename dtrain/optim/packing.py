"""Small parameters updated together on flat arrays: the optimizers' "foreach" step.

A parameter's update is half a dozen to a dozen NumPy calls. For a bias, a norm's weight or a small kernel those
calls are the whole cost (the digits ResNet's 20 parameters: SGD with momentum 78 us a step one at a time).
Parameters of at most ``PACK_MAX`` values, NumPy arrays of one dtype with NumPy gradients, are updated together:
their gradients are concatenated, their state arrays (momentum buffers, moments, averages, sums) are views of one flat
array per state key (each parameter's state keeps torch's format: its own array, here a view), the rule runs
once on the flat arrays, and each parameter subtracts its view of the flat step. The operations and their order
are those of the one-parameter rule on every value, so the results are the same bits.

A plan (which parameters, where each one's values lie) is kept per param group while the group's parameters
with a gradient are the same objects and their arrays the same arrays; the flat state is made again whenever a
parameter's state array is not the view made last (a loaded state, a buffer set by hand). Larger parameters, CuPy
arrays and anything that does not fit (state arrays of another shape or dtype, some parameters with state and
some without) take the one-parameter rule.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

__all__ = ["PACK_MAX", "PackPlan", "PackedUpdates"]

PACK_MAX = 1 << 16  # values; larger parameters: the copies into and out of flat arrays would cost more than calls


class PackPlan:
    """Which of a group's parameters are updated together, and the flat arrays kept for them."""

    def __init__(self, key: int, params: list, pack: list):
        self.key = key  # of the plan in the optimizer's plans
        self.params = list(params)  # the group's parameters with a gradient, when the plan was made
        self.pack = pack
        packed = set(map(id, pack))
        self.rest = [p for p in params if id(p) not in packed]
        self.arrays = [p.data for p in pack]  # the arrays updated (a parameter given another array: plan again)
        self.dtype = pack[0].data.dtype if pack else None
        self.bounds = list(itertools.accumulate((p.data.size for p in pack), initial=0))
        self.size = self.bounds[-1]
        self.step = np.empty(self.size, dtype=self.dtype) if pack else None  # the flat update, subtracted
        self.step_views = self.views_of(self.step) if pack else []
        self.state: dict[str, tuple] = {}  # state key -> (flat array, the views the parameters hold)

    def views_of(self, flat) -> list:
        """Each packed parameter's view of ``flat``, shaped like it."""
        return [flat[a:b].reshape(p.data.shape) for p, a, b in zip(self.pack, self.bounds[:-1], self.bounds[1:])]

    def fits(self) -> bool:
        """The parameters still hold the planned arrays, and every gradient is a NumPy array of that shape and
        dtype (a gradient of another dtype is computed in its own by the one-parameter rule)."""
        return not any(p.data is not a or type(g := p.grad) is not np.ndarray or g.shape != a.shape
                       or g.dtype != a.dtype for p, a in zip(self.pack, self.arrays))

    def gradient(self):
        """The packed gradients as one flat array (a new one, which the rule may overwrite)."""
        return np.concatenate([p.grad.reshape(-1) for p in self.pack])

    def data(self):
        """The packed parameters' values as one flat array (a copy)."""
        return np.concatenate([a.reshape(-1) for a in self.arrays])

    def state_array(self, states: list, key: str, create: bool = True, fill: float = 0.0) -> tuple:
        """(the flat array behind every packed parameter's ``states[i][key]``, whether they had one before): the
        one kept when each parameter still holds its view, else made from their arrays (or, when none has one
        and ``create``, filled with ``fill``), the views then put in the states. (None, None), nothing changed,
        when some have one and some not, none has one and not ``create``, or one is of another type, shape or
        dtype."""
        kept = self.state.get(key)
        if kept is not None and all(st.get(key) is v for st, v in zip(states, kept[1])):
            return kept[0], True
        arrays = [st.get(key) for st in states]
        if all(a is None for a in arrays):
            if not create:
                return None, None
            flat, had = np.full(self.size, fill, dtype=self.dtype), False
        elif all(type(a) is np.ndarray and a.dtype == self.dtype and a.shape == p.data.shape
                 for a, p in zip(arrays, self.pack)):
            flat, had = np.concatenate([a.reshape(-1) for a in arrays]), True
        else:
            return None, None
        views = self.views_of(flat)
        for st, v in zip(states, views):
            st[key] = v
        self.state[key] = (flat, views)
        return flat, had

    def subtract(self, flat, values=None) -> None:
        """Each packed parameter -= its part of ``flat``; with ``values`` (a flat copy of the parameters, from
        ``data``), each parameter := its part of ``values - flat`` instead."""
        if values is None:
            views = self.step_views if flat is self.step else self.views_of(flat)
            for a, v in zip(self.arrays, views):
                a -= v
            return
        values -= flat
        for a, v in zip(self.arrays, self.views_of(values)):
            a[...] = v


def packable(params: list) -> list:
    """The parameters (in order) updated together: small NumPy arrays of the first such one's dtype, with NumPy
    gradients of that dtype and shape."""
    pack, dtype = [], None
    for p in params:
        d, g = p.data, p.grad
        if type(d) is np.ndarray and type(g) is np.ndarray and d.size <= PACK_MAX and g.dtype == d.dtype \
                and d.shape == g.shape and (dtype is None or d.dtype == dtype):
            dtype = d.dtype
            pack.append(p)
    return pack if len(pack) > 1 else []


class PackedUpdates:
    """Mixin for an :class:`~dtrain.optim.optimizer.Optimizer` whose rule also runs on flat arrays: it defines
    ``_update_pack(plan, group) -> bool`` (False: nothing was changed, take the one-parameter rule)."""

    _plans: dict[int, PackPlan] | None = None  # id of a param group -> its plan (made at the first step)

    def _update_group(self, group: dict[str, Any], params: list) -> None:
        if self._plans is None:
            self._plans = {}
        plans = self._plans
        plan = plans.get(id(group))
        if plan is None or len(plan.params) != len(params) or any(a is not b for a, b in zip(plan.params, params)):
            plan = plans[id(group)] = PackPlan(id(group), params, packable(params))
        if not plan.pack:
            super()._update_group(group, params)
            return
        for p in plan.rest:
            self._update(p, p.grad, group)
        if not plan.fits():
            del plans[plan.key]  # a parameter's array was replaced or a gradient does not fit: plan again
        elif self._update_pack(plan, group):
            return
        for p in plan.pack:
            self._update(p, p.grad, group)

    def _update_pack(self, plan: PackPlan, group: dict[str, Any]) -> bool:
        """``_update`` of every parameter of ``plan.pack`` at once on flat arrays; each optimizer defines it."""
        raise NotImplementedError(f"{type(self).__name__} mixes in PackedUpdates but defines no _update_pack")

    def _update_counted(self, plan: PackPlan, group: dict[str, Any], first: dict[str, float],
                        later: dict[str, float], direction) -> bool:
        """``_update_pack`` for a rule with a per-parameter ``step`` count and state arrays, done as its ``_update``
        does it for one parameter: ``first`` maps the arrays a parameter's first step makes to their starting
        value, ``later`` those made whenever missing (an option switched on mid-run); then the step count,
        the regularised gradient, decoupled weight decay, and ``direction(np, g, arrays, tmp, group, step)``,
        which updates the arrays in place and returns ``tmp`` := what to subtract. False, nothing changed that
        matters, when the parameters are at different steps or their states do not fit."""
        states = [self.state[p] for p in plan.pack]
        steps = {st.get("step") for st in states}
        fresh = steps == {None}  # the first step: every state empty, as the one-parameter rule starts one
        if len(steps) != 1 or (fresh and any(states)):
            return False
        g = plan.gradient()
        # ``first`` arrays are made on the first step only, so that a state missing one fails as in _update
        arrays = {key: plan.state_array(states, key, create=fresh, fill=v)[0] for key, v in first.items()}
        arrays.update({key: plan.state_array(states, key, fill=v)[0] for key, v in later.items()})
        if any(a is None for a in arrays.values()):
            return False
        step = (0 if fresh else steps.pop()) + 1
        for st in states:
            st["step"] = step
        lr = group["lr"]
        g = self._regularized_flat(g, plan, group)
        values = None
        if self._decoupled_weight_decay and group["weight_decay"] != 0:
            values = plan.data()
            values *= 1 - lr * group["weight_decay"]
        plan.subtract(direction(np, g, arrays, plan.step, group, step), values)
        return True

    def _regularized_flat(self, g, plan: PackPlan, group: dict[str, Any]):
        """``_regularized_grad`` on the flat gradient ``g`` (modified in place) of the plan's parameters (the flat
        step, overwritten by the rule afterwards, is its scratch)."""
        if not self._regularizes(group):
            return g
        return self._regularize(np, g, g, group, plan.data, lambda: plan.step)
