"""Function: one differentiable op, its forward, backward and forward-mode rule side by side.

A Function instance *is* the graph node created when the primitive runs on tensors that require
gradients. It keeps only what its backward needs (``self.saved`` and attributes set in forward), the
edges to its inputs (``self.next``: the producing Function, the leaf Tensor, or None for constants)
and each input's (shape, dtype) so the engine can un-broadcast and cast the gradients it returns.
Intermediate Tensor objects are not referenced by the graph, so an activation lives exactly as long
as some node saved it for backward.

Writing a primitive::

    class Exp(Function):
        def forward(self, x):
            y = get_array_module(x).exp(x)
            self.saved = (y,)
            return y

        def backward(self, g):          # gradient w.r.t. each tensor input, in order
            (y,) = self.saved
            return g * y

        def jvp(self, tx):              # tangent of the output from the inputs' tangents (None = 0)
            (y,) = self.saved
            return tx * y

Backward may return gradients at the broadcast shape: the engine reduces them to each input's
shape (``unbroadcast``) and casts them to its dtype, so ops never re-derive broadcasting rules.
"""

from __future__ import annotations

import itertools
import threading

import numpy as np

from ..backend import get_array_module
from . import capture_hooks

__all__ = ["Function", "FusedFunction", "no_grad", "enable_grad", "is_grad_enabled", "set_grad_enabled", "unbroadcast"]


class _GradMode(threading.local):
    enabled = True


_grad_mode = _GradMode()
_seq = itertools.count()  # creation order of nodes: the engine's deterministic tie-break


def is_grad_enabled() -> bool:
    """True unless inside ``no_grad()``."""
    return _grad_mode.enabled


class set_grad_enabled:
    """Context manager (and function) turning graph recording on or off for this thread."""

    def __init__(self, mode: bool):
        self.prev = _grad_mode.enabled
        _grad_mode.enabled = bool(mode)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        _grad_mode.enabled = self.prev
        return False


class no_grad:
    """``with dt.no_grad(): ...`` computes without recording a graph (evaluation, optimizer steps).

    Also usable as a decorator.
    """

    def __enter__(self):
        self.prev = _grad_mode.enabled
        _grad_mode.enabled = False
        return self

    def __exit__(self, *exc):
        _grad_mode.enabled = self.prev
        return False

    def __call__(self, fn):
        def wrapper(*args, **kwargs):
            with no_grad():
                return fn(*args, **kwargs)

        wrapper.__name__ = getattr(fn, "__name__", "wrapper")
        wrapper.__doc__ = getattr(fn, "__doc__", None)
        return wrapper


class enable_grad(no_grad):
    """Re-enable graph recording inside a ``no_grad`` block."""

    def __enter__(self):
        self.prev = _grad_mode.enabled
        _grad_mode.enabled = True
        return self


def unbroadcast(g, shape: tuple):
    """Sum ``g`` over the axes that broadcasting added or stretched, returning an array of ``shape``.

    Half-precision gradients are summed in float32 so the reduction does not lose precision.
    """
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    if lead < 0:
        raise RuntimeError(f"cannot reduce a gradient of shape {g.shape} to the larger shape {shape}")
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and g.shape[lead + i] != 1
    )
    if axes:
        if g.dtype.itemsize < 4:
            g = g.astype(np.float32).sum(axis=axes, keepdims=True).astype(g.dtype)
        else:
            g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape)


class Function:
    """Base class of every differentiable op (see the module docstring for the recipe).

    Subclasses define ``forward(self, *arrays, **params) -> array`` and
    ``backward(self, grad) -> array | tuple`` (one entry per tensor input, None where an input gets
    no gradient), and ``jvp(self, *tangents) -> array`` for forward mode. Call them through
    ``Cls.apply(*tensors, **params)``, which records the node when a gradient is needed.
    """

    # Subclasses have an instance __dict__ for what forward keeps (masks, shapes); the slots are
    # the attributes every node has, read by the engine on each backward step.
    __slots__ = ("in_meta", "needs_grad", "seq")
    # Inputs whose gradient backward can write into a buffer the engine hands it (``Tensor.set_grad_buffer``):
    # then ``self.grad_out[i]`` is that buffer, or None, during the call (see engine._backward_into_buffers).
    writes_grad_into: tuple[int, ...] | None = None
    grad_out = None
    # May a captured step (capture.py) replay this op from its recorded parameters? Only for ops whose
    # frontend decides from shapes, dtypes and fixed arguments, or re-decides in ``capture_check``.
    capturable = False
    # Class-level defaults, so creating a node sets nothing: a node's own values live in its instance dict. After
    # its backward the engine clears that dict (unless retain_graph), dropping saved activations, edges and whatever
    # else forward kept (masks, indices, statistics), so a node kept alive by a tensor the user still holds keeps
    # no activations; the defaults come back: ``next`` None marks a released node, and ``saved`` reads None.
    saved = None
    next = None
    hooks = None
    retain = None

    @property
    def name(self) -> str:
        return type(self).__name__

    def jvp(self, *tangents):
        """Forward-mode rule. Primitives override it; a custom Function without one says so."""
        raise RuntimeError(
            f"forward-mode AD (jvp) is not defined for op {self.name}: give the Function a jvp method"
        )

    @classmethod
    def apply(cls, *inputs, **params):
        """Run the primitive on tensors (or raw arrays, treated as constants); return a Tensor.

        The per-op cost of every eager step, so kept flat: one pass over the inputs, NumPy's forward run
        here, the node (edges, needs_grad, input meta) recorded inline and only when a gradient is needed."""
        fn = cls()
        arrays = []
        needs_grad = has_tangent = False
        first_type = None
        for t in inputs:
            if isinstance(t, Tensor):
                a = t.data
                if t._requires_grad:
                    needs_grad = True
                if t._tangent is not None:
                    has_tangent = True
            else:
                a = t
            if first_type is None:
                first_type = type(a)
            elif type(a) is not first_type:
                _check_same_device(cls.__name__, inputs)
            arrays.append(a)
        if first_type is ndarray:
            try:
                out = fn.forward(*arrays, **params) if params else fn.forward(*arrays)
            except ValueError as exc:
                raise _op_error(fn, arrays, exc) from None
            if type(out) is not ndarray and isinstance(out, np.generic):
                out = np.asarray(out)
        else:
            out = _run_forward(fn, arrays, params, first_type, inputs)
        if needs_grad and _grad_mode.enabled:
            # the node's edges (producing node, leaf or None), which inputs need a gradient, their (shape, dtype)
            if len(arrays) == 1:  # one input, then a tensor needing a gradient (activations, losses): no lists
                t, a = inputs[0], arrays[0]
                node = t._node
                fn.next, fn.needs_grad, fn.in_meta = (t if node is None else node,), (True,), ((a.shape, a.dtype),)
            else:
                edges, needs, meta = [], [], []
                for t, a in zip(inputs, arrays):
                    if isinstance(t, Tensor) and t._requires_grad:
                        node = t._node
                        edges.append(t if node is None else node)
                        needs.append(True)
                        meta.append((a.shape, a.dtype))
                    else:
                        edges.append(None)
                        needs.append(False)
                        meta.append(None)
                fn.next, fn.needs_grad, fn.in_meta = tuple(edges), tuple(needs), tuple(meta)
            fn.seq = next(_seq)
            result = _make_tensor(out, True, fn)
        else:
            result = _make_tensor(out, False, None)
        if has_tangent:
            result._tangent = _push_tangents(fn, inputs, out)
        if capture_hooks.tracer is not None:  # a captured step is tracing (capture.py)
            capture_hooks.tracer.record(cls, fn, inputs, arrays, params, result)
        return result


class FusedFunction(Function):
    """A Function that computes, as one graph node, what a composition of primitives computes in several.

    Fused ops exist only where one node is measurably faster or more stable than the composition
    (one backward formula instead of a chain, fewer saved activations). ``composition`` names the
    primitives it stands for; docs/autograd.md lists every fused op, and tests/autograd/test_fused.py
    checks each one's values and gradients against its composition. Class names start with
    ``Fused`` so a fused op can never be mistaken for the nn Module of the same name.
    """

    __slots__ = ()
    composition: str = ""


def _run_forward(fn: Function, arrays: list, params: dict, array_type, inputs):
    """``fn.forward`` on the arrays (on their GPU when they live on one); errors name the op and shapes."""
    try:
        if array_type is not np.ndarray and array_type is not None and array_type.__module__.startswith("cupy"):
            _check_same_device(fn.name, inputs)
            with arrays[0].device:
                out = fn.forward(*arrays, **params)
        else:
            out = fn.forward(*arrays, **params)
    except ValueError as exc:
        raise _op_error(fn, arrays, exc) from None
    if isinstance(out, np.generic):
        out = np.asarray(out)
    return out


def _op_error(fn: Function, arrays: list, exc: ValueError) -> ValueError:
    """A forward's ValueError (e.g. shapes that do not broadcast) saying which op and which shapes."""
    shapes = ", ".join(str(tuple(a.shape)) for a in arrays if hasattr(a, "shape"))
    return ValueError(f"op {fn.name} on inputs of shapes {shapes}: {exc}")


def _push_tangents(fn: Function, inputs, out):
    """Forward mode: the output's tangent from the inputs' (None where an input has none)."""
    tangents = [t._tangent if isinstance(t, Tensor) else None for t in inputs]
    tan = fn.jvp(*tangents)
    return None if tan is None else _fit_tangent(tan, out)


def _fit_tangent(tan, out):
    xp = get_array_module(out)
    tan = xp.asarray(tan)
    if tan.shape != out.shape:
        tan = xp.broadcast_to(tan, out.shape)
    if tan.dtype != out.dtype:
        tan = tan.astype(out.dtype)
    return tan


def _check_same_device(op: str, inputs) -> None:
    from ..backend import device_of

    devices = []
    for i, t in enumerate(inputs):
        a = getattr(t, "data", t) if hasattr(t, "_is_dtrain_tensor") else t
        if hasattr(a, "shape") and not isinstance(a, np.generic):
            devices.append((i, device_of(a)))
    kinds = {d for _, d in devices}
    if len(kinds) > 1:
        desc = ", ".join(f"input {i} on {d}" for i, d in devices)
        raise RuntimeError(
            f"op {op}: expected all tensors on the same device, got {desc}. Move them with .to(device)."
        )


from .tensor import Tensor  # noqa: E402  (tensor.py imports this module; bind the class once it exists)

_make_tensor = Tensor._make
ndarray = np.ndarray
