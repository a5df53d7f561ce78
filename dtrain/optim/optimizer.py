"""Optimizer: the base class of every dtrain optimizer (PyTorch's semantics and state format).

An optimizer owns ``param_groups`` (a list of dicts: ``"params"`` plus that group's hyperparameters)
and ``state`` (per-parameter arrays such as momentum buffers, keyed by the Tensor object). Subclasses
only write the update rule for one parameter, ``_update(param, grad, group)`` (and may update a group's
parameters together in ``_update_group``, as :mod:`dtrain.optim.packing` does for small ones); this module gives them
argument validation, the shared regularised-gradient step and ``state_dict``/``load_state_dict``.

Regularisation, available on every optimizer:

* ``weight_decay`` (L2): ``grad += weight_decay * param`` before the update rule (coupled, as in
  torch). AdamW overrides this with decoupled decay ``param *= 1 - lr * weight_decay``.
* ``l1``: ``grad += l1 * sign(param)`` before the update rule (dtrain's addition; torch has none).
* ``maximize``: ascend instead of descend; the gradient is negated before the two terms above are
  added, exactly like torch.

Every update writes into ``param.data`` in place: the arrays are shared with modules, DDP buckets
and checkpoints, so replacing them would silently break those references.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from ..autograd.function import enable_grad
from ..autograd.tensor import Tensor
from ..backend import device_of, get_array_module, to_device
from ..spec import is_real

__all__ = ["Optimizer", "check_bool", "check_number", "zero_grads"]


# ----------------------------------------------------------------------------------------------
# Hyperparameter checks shared by the optimizers (they also normalise values to Python types, so a
# state_dict is JSON-able even when the user passed NumPy scalars).
# ----------------------------------------------------------------------------------------------


def check_number(name: str, value, *, positive: bool = False, low=0.0, high=None, high_open: bool = True) -> float:
    """Return ``value`` as a Python float, or raise ValueError saying what was expected.

    Args:
        name: the hyperparameter's name, used in the message.
        value: the value to check (bools are rejected: ``lr=True`` is always a mistake).
        positive: require ``value > low`` instead of ``value >= low``.
        low: the lower bound.
        high: the upper bound (None for unbounded); ``high_open`` says whether it is excluded.
    """
    if positive:
        expected = "a positive finite number" if low == 0.0 else f"a finite number > {low}"
    elif high is not None:
        expected = f"a number in [{low:g}, {high:g}{')' if high_open else ']'}"
    else:
        expected = f"a finite number >= {low:g}"
    if not is_real(value):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    v = float(value)
    ok = math.isfinite(v) and (v > low if positive else v >= low)
    if ok and high is not None:
        ok = v < high if high_open else v <= high
    if not ok:
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return v


def check_bool(name: str, value) -> bool:
    """Return ``value`` as a Python bool, or raise ValueError (``maximize="no"`` is not a flag)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _json_value(v):
    """A copy of a group value made of lists/ints/floats/strings/bools only (tuples become lists)."""
    if isinstance(v, (list, tuple)):
        return [_json_value(x) for x in v]
    if isinstance(v, dict):
        return {k: _json_value(x) for k, x in v.items()}
    if isinstance(v, np.generic):
        return v.item()
    return v


def _is_array(v) -> bool:
    return hasattr(v, "shape") and hasattr(v, "dtype") and not isinstance(v, np.generic)


def zero_grads(params, set_to_none: bool = True) -> None:
    """Drop (``set_to_none``) or zero in place the gradients of ``params`` (what ``zero_grad`` does)."""
    for p in params:
        if p.grad is None:
            continue
        if set_to_none:
            p.grad = None
        else:
            p.grad.fill(0)


class Optimizer:
    """Base class for optimizers; subclasses implement ``_update`` and ``_check_hyperparameters``.

    Args:
        params: an iterable of Tensors that require grad (``model.parameters()``), or an iterable of
            dicts, each ``{"params": [...], <hyperparameter overrides>}`` (one param group each).
        defaults: every hyperparameter of the optimizer with its value for groups that do not
            override it.

    Attributes:
        param_groups: list of dicts, each with ``"params"`` (a list of Tensors) and every
            hyperparameter (lr, weight_decay, ...). Schedulers write ``group["lr"]``.
        state: per-parameter state (``{tensor: {"step": int, "exp_avg": array, ...}}``).
        defaults: the hyperparameters given to the constructor.
    """

    # Keys of a parameter's state that are Python scalars; every other state value is an array
    # shaped like the parameter (load_state_dict checks that).
    _scalar_state_keys: tuple[str, ...] = ("step",)
    # AdamW applies weight decay to the parameter itself, not through the gradient.
    _decoupled_weight_decay = False

    def __init__(self, params: Iterable, defaults: dict[str, Any]):
        self.defaults = dict(defaults)
        self._validate(self.defaults)
        self.param_groups: list[dict[str, Any]] = []
        self.state: defaultdict[Tensor, dict[str, Any]] = defaultdict(dict)
        # Reused per-step temporaries, keyed by (slot, device, dtype); see _scratch.
        self._workspace: dict[tuple, Any] = {}

        if isinstance(params, Tensor):
            raise TypeError(
                "params must be an iterable of Tensors or of dicts (param groups), got a single Tensor; "
                "wrap it in a list: [tensor]"
            )
        if isinstance(params, (set, frozenset)):
            raise TypeError("params must be an ordered collection (list, tuple, generator), not a set: "
                            "the order of a set changes between runs, and state_dict indices depend on it")
        if isinstance(params, dict):
            params = [params]
        try:
            params = list(params)
        except TypeError:
            raise TypeError(f"params must be an iterable of Tensors or dicts, got {type(params).__name__}") from None
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        if all(isinstance(p, dict) for p in params):
            for group in params:
                self.add_param_group(group)
        elif any(isinstance(p, dict) for p in params):
            raise TypeError("params must be all Tensors or all dicts (param groups), not a mix of both")
        else:
            self._add_group({"params": params}, where="params")

    # -- what subclasses provide ----------------------------------------------------------------
    def _check_hyperparameters(self, group: dict[str, Any]) -> None:
        """Validate (and normalise in place) the optimizer's own hyperparameters; raise ValueError.

        lr, weight_decay, l1 and maximize, which every optimizer has, are checked by the base class.
        """
        raise NotImplementedError

    def _update(self, param: Tensor, grad, group: dict[str, Any]) -> None:
        """Apply one step of the update rule to ``param.data`` in place."""
        raise NotImplementedError

    def _required_state(self, group: dict[str, Any]) -> tuple[str, ...]:
        """State keys a parameter of ``group`` has once it was stepped (checked by load_state_dict)."""
        return ()

    # -- param groups ---------------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group of parameters with its own hyperparameters (missing ones come from defaults).

        Useful to unfreeze layers during fine-tuning. Raises TypeError/ValueError for a bad
        parameter, a parameter already in another group, or an invalid hyperparameter.
        """
        if not isinstance(param_group, dict):
            raise TypeError(f"a param group must be a dict, got {type(param_group).__name__}")
        if "params" not in param_group:
            raise ValueError(f"param group {len(self.param_groups)} has no 'params' key")
        self._add_group(param_group, where=f"param group {len(self.param_groups)}: params")

    def _add_group(self, param_group: dict[str, Any], where: str) -> None:
        index = len(self.param_groups)
        params = param_group["params"]
        if isinstance(params, Tensor):
            params = [params]
        elif isinstance(params, (set, frozenset)):
            raise TypeError(f"{where} must be an ordered collection (list, tuple), not a set")
        else:
            params = list(params)

        seen: dict[int, int] = {}
        for i, p in enumerate(params):
            if not isinstance(p, Tensor):
                hint = " (pass model.parameters(), not named_parameters())" if isinstance(p, tuple) else ""
                raise TypeError(f"{where}[{i}] is a {type(p).__name__}, expected a dtrain Tensor{hint}")
            if not p.requires_grad:
                raise ValueError(f"{where}[{i}] does not require grad, so it cannot be optimized "
                                 "(create it with requires_grad=True or use nn.Parameter)")
            if not p.is_leaf:
                raise ValueError(f"{where}[{i}] is not a leaf tensor (it was computed from others); "
                                 "optimize the leaves it was computed from")
            if id(p) in seen:
                raise ValueError(f"{where}[{i}] is the same tensor as {where}[{seen[id(p)]}]; "
                                 "list each parameter once")
            seen[id(p)] = i
        for g, group in enumerate(self.param_groups):
            for j, q in enumerate(group["params"]):
                if id(q) in seen:
                    raise ValueError(f"{where}[{seen[id(q)]}] is already in param group {g} (as its "
                                     f"params[{j}]); a parameter can belong to one group only")

        group = {**self.defaults, **{k: v for k, v in param_group.items() if k != "params"}}
        try:
            self._validate(group)
        except ValueError as exc:
            raise ValueError(f"param group {index}: {exc}") from None
        group["params"] = params
        self.param_groups.append(group)

    def _validate(self, group: dict[str, Any], loading: bool = False) -> None:
        # A schedule may legitimately have driven lr to 0 (cosine to eta_min=0, warmup from 0) by
        # the time a checkpoint is written, so a loaded group may hold lr == 0; a new one may not.
        group["lr"] = check_number("lr", group["lr"], positive=not loading)
        group["weight_decay"] = check_number("weight_decay", group["weight_decay"])
        group["l1"] = check_number("l1", group["l1"])
        group["maximize"] = check_bool("maximize", group["maximize"])
        self._check_hyperparameters(group)

    # -- the step -------------------------------------------------------------------------------
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients of every parameter.

        Args:
            set_to_none: drop the gradient arrays (``p.grad = None``, the default: saves memory and
                lets ``step`` skip parameters that get no gradient); False zeroes them in place.
        """
        zero_grads((p for group in self.param_groups for p in group["params"]), set_to_none)

    def step(self, closure: Callable[[], Any] | None = None):
        """Update every parameter that has a gradient; parameters whose ``.grad`` is None are skipped.

        Args:
            closure: optional callable that re-evaluates the model and returns the loss (it runs
                with gradient recording enabled, so it may call ``loss.backward()``).

        Returns:
            The closure's loss, or None without a closure.
        """
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._update_group(group, [p for p in group["params"] if p.grad is not None])
        return loss

    def _update_group(self, group: dict[str, Any], params: list) -> None:
        """Update ``params`` (the group's parameters that have a gradient, in order): ``_update`` on each. An
        optimizer may update several at once instead (``packing.PackedUpdates``: small ones), with the same results."""
        for p in params:
            self._update(p, p.grad, group)

    def _scratch(self, like, slot: int):
        """A reusable temporary array shaped like ``like`` (its dtype and device).

        Keeps one flat buffer per (slot, device, dtype), sized for the largest parameter, so a step
        allocates nothing: fresh multi-megabyte temporaries per parameter per step would cost page
        faults on the CPU. ``slot`` 0 holds the regularised gradient, slot 1 the rule's temporary.
        """
        dev = device_of(like)
        key = (slot, dev, like.dtype)
        buf = self._workspace.get(key)
        if buf is None or buf.size < like.size:
            with dev.context():
                buf = get_array_module(like).empty(like.size, dtype=like.dtype)
            self._workspace[key] = buf
        return buf[: like.size].reshape(like.shape)

    def _regularized_grad(self, param: Tensor, grad, group: dict[str, Any]):
        """The gradient the update rule sees: ``(-grad if maximize else grad) + wd * p + l1 * sign(p)``.

        Returns ``grad`` itself when no term applies (never modified: it may be a view into a DDP
        bucket or inspected after the step); otherwise a scratch array (slot 0) the rule may
        overwrite. With decoupled weight decay (AdamW) the wd term is left to the rule.
        """
        if not self._regularizes(group):
            return grad
        return self._regularize(get_array_module(param.data), grad, self._scratch(param.data, 0), group,
                                lambda: param.data, lambda: self._scratch(param.data, 1))

    def _regularizes(self, group: dict[str, Any]) -> bool:
        """Whether ``_regularize`` changes the gradient for this group."""
        return group["maximize"] or group["l1"] != 0.0 or \
            (not self._decoupled_weight_decay and group["weight_decay"] != 0.0)

    def _regularize(self, xp, grad, out, group: dict[str, Any], values, scratch):
        """``out`` := (-grad if maximize else grad) + wd * p + l1 * sign(p), each term rounded before it is added
        (``out`` may be ``grad`` itself), with p = ``values()`` and ``scratch()`` a temporary shaped like it (asked
        for only when a term needs them). One parameter (``_regularized_grad``) and a flat pack of them
        (``packing``) go through these same calls."""
        wd = 0.0 if self._decoupled_weight_decay else group["weight_decay"]
        l1 = group["l1"]
        if group["maximize"]:
            xp.negative(grad, out=out)
        elif out is not grad:
            xp.copyto(out, grad)
        if wd != 0.0 or l1 != 0.0:
            data, tmp = values(), scratch()
            if wd != 0.0:
                xp.multiply(data, wd, out=tmp)
                out += tmp
            if l1 != 0.0:
                xp.sign(data, out=tmp)
                tmp *= l1
                out += tmp
        return out

    # -- checkpointing ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The optimizer's state in torch's format, holding only arrays and JSON-able values.

        Returns:
            ``{"state": {index: {key: array | int | float}}, "param_groups": [{hyperparameters...,
            "params": [index, ...]}]}``, where indices number the parameters in group order
            (0, 1, ... across all groups). Arrays are copies on the parameters' device; tuples
            (betas) become lists. Parameters never stepped have no entry in ``"state"``.
        """
        groups, state = [], {}
        index = 0
        for group in self.param_groups:
            packed = {k: _json_value(v) for k, v in group.items() if k != "params"}
            packed["params"] = list(range(index, index + len(group["params"])))
            for p in group["params"]:
                entry = self.state.get(p)
                if entry:
                    state[index] = {k: (v.copy() if _is_array(v) else _json_value(v)) for k, v in entry.items()}
                index += 1
            groups.append(packed)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state from ``state_dict()`` (possibly after a JSON/npz round trip).

        Hyperparameters (lr, betas, ...) are taken from the saved groups, the parameters stay this
        optimizer's. State indices may be ints or their string form (JSON keys); arrays are copied
        and cast to each parameter's array module (NumPy/CuPy), device and dtype. Everything is
        validated before anything changes, so a bad dict leaves the optimizer as it was.

        Raises:
            ValueError: a missing key, a different number of groups or of parameters in a group,
                an array whose shape differs from its parameter's, or an invalid hyperparameter.
        """
        if not isinstance(state_dict, dict):
            raise ValueError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        missing = [k for k in ("state", "param_groups") if k not in state_dict]
        if missing:
            raise ValueError(f"optimizer state_dict is missing key(s) {missing}; expected 'state' and 'param_groups'")
        saved_groups = list(state_dict["param_groups"])
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"loaded state_dict has {len(saved_groups)} param group(s), "
                             f"but the optimizer has {len(self.param_groups)}")

        new_groups, by_index = self._loaded_groups(saved_groups)
        new_state = self._loaded_state(state_dict["state"], by_index)
        for group, new in zip(self.param_groups, new_groups):
            params = group["params"]
            group.clear()  # keep the dict objects: schedulers and wrappers may hold them
            group.update(new)
            group["params"] = params
        self.state = defaultdict(dict, new_state)

    def _loaded_groups(self, saved_groups: list) -> tuple[list[dict[str, Any]], dict[int, tuple]]:
        """Validated hyperparameters of each saved group, and saved parameter index -> (param, group
        number, position in the group, new group dict). Changes nothing."""
        new_groups: list[dict[str, Any]] = []
        by_index: dict[int, tuple[Tensor, int, int, dict]] = {}
        for g, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            if not isinstance(saved, dict) or "params" not in saved:
                raise ValueError(f"loaded param group {g} has no 'params' key")
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"loaded param group {g} has {len(saved['params'])} parameter(s), "
                                 f"but the optimizer's group {g} has {len(group['params'])}")
            absent = sorted(k for k in self.defaults if k not in saved)
            if absent:
                raise ValueError(f"loaded param group {g} is missing hyperparameter(s) {absent}")
            new = {k: v for k, v in group.items() if k != "params"}
            for k, v in saved.items():
                if k == "params":
                    continue
                # JSON turns tuples (betas) into lists; give them back the type the code expects.
                new[k] = tuple(v) if isinstance(group.get(k, self.defaults.get(k)), tuple) else v
            try:
                self._validate(new, loading=True)
            except ValueError as exc:
                raise ValueError(f"loaded param group {g}: {exc}") from None
            for pos, (saved_index, p) in enumerate(zip(saved["params"], group["params"])):
                key = int(saved_index)
                if key in by_index:
                    raise ValueError(f"loaded param group {g} repeats parameter index {key}")
                by_index[key] = (p, g, pos, new)
            new_groups.append(new)
        return new_groups, by_index

    def _loaded_state(self, saved_state: dict, by_index: dict[int, tuple]) -> dict[Tensor, dict[str, Any]]:
        """The per-parameter state of a saved ``"state"`` dict, keyed by this optimizer's Tensors."""
        new_state: dict[Tensor, dict[str, Any]] = {}
        for raw_key, entry in saved_state.items():
            try:
                key = int(raw_key)
            except (TypeError, ValueError):
                raise ValueError(f"loaded state has key {raw_key!r}, expected a parameter index") from None
            if key not in by_index:
                raise ValueError(f"loaded state refers to parameter index {key}, "
                                 f"but the optimizer has {len(by_index)} parameter(s)")
            if not entry:
                continue
            p, g, pos, group = by_index[key]
            where = f"state of parameter {key} (param group {g}, params[{pos}])"
            absent = [k for k in self._required_state(group) if k not in entry]
            if absent:
                raise ValueError(f"{where} is missing key(s) {absent}")
            new_state[p] = {k: self._load_state_value(p, k, v, where) for k, v in entry.items()}
        return new_state

    def _load_state_value(self, p: Tensor, key: str, value, where: str):
        if key in self._scalar_state_keys:
            if _is_array(value):
                if value.size != 1:
                    raise ValueError(f"{where}: '{key}' must be a scalar, got an array of shape {tuple(value.shape)}")
                value = value.item()  # a checkpoint writer may have put the counter in the npz
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            return value
        if not _is_array(value):
            return _json_value(value)
        if tuple(value.shape) != p.shape:
            raise ValueError(f"{where}: '{key}' has shape {tuple(value.shape)}, "
                             f"expected {p.shape} (the parameter's shape)")
        return to_device(value, p.device).astype(p.data.dtype, copy=True)

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {v}" for k, v in sorted(group.items()) if k != "params"]
        lines.append(")")
        return "\n".join(lines)
