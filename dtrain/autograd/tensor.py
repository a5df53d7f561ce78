"""Tensor: a backend array plus what reverse- and forward-mode differentiation need.

``Tensor.data`` is the NumPy/CuPy array; ``.grad`` is accumulated by backward; ``._node`` is the
Function that produced it (None for leaves and constants); ``._tangent`` carries the forward-mode
tangent inside ``jvp``. Operators and methods are thin front ends over the ops in ``ops``. The
factories (``tensor``, ``zeros``, ``randn``, ...) are in ``factories.py``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import numpy as np

from ..backend import Device, as_device, device_of, get_array_module, is_float_dtype, resolve_dtype
from . import engine

__all__ = ["Tensor", "shape_args"]


class _HookHandle:
    """Returned by register_hook; ``handle.remove()`` unregisters the hook."""

    def __init__(self, hooks: list, fn: Callable, leaf: Tensor | None = None):
        self._hooks, self._fn = hooks, fn
        self._leaf = None if leaf is None else weakref.ref(leaf)  # a handle does not keep its tensor alive

    def remove(self) -> None:
        if self._fn in self._hooks:
            self._hooks.remove(self._fn)
        leaf = None if self._leaf is None else self._leaf()
        if leaf is not None:
            engine.unwatch_leaf(leaf)


class Tensor:
    """An n-dimensional array that records the operations applied to it for differentiation.

    Create tensors with :func:`dtrain.tensor`; see docs/architecture.md for the full public API.
    """

    __slots__ = ("__weakref__", "_grad_dest", "_hooks", "_node", "_post_hooks", "_requires_grad", "_tangent", "data",
                 "grad")
    _is_dtrain_tensor = True
    __array_ufunc__ = None  # ndarray <op> Tensor defers to Tensor's reflected operators
    __array_priority__ = 1000

    def __init__(self, data, requires_grad: bool = False):
        if isinstance(data, np.generic):
            data = np.asarray(data)
        self.data = data
        self.grad = None
        self._node = None
        self._hooks: list | tuple = ()  # a list from the first registered hook on (no list per tensor before)
        self._post_hooks: list | tuple = ()
        self._tangent = None
        self._grad_dest = None
        self._requires_grad = False
        if requires_grad:
            self.requires_grad = True

    @classmethod
    def _make(cls, data, requires_grad: bool, node):
        t = cls.__new__(cls)
        t.data = data
        t.grad = None
        t._requires_grad = requires_grad
        t._node = node
        t._hooks = ()
        t._post_hooks = ()
        t._tangent = None
        t._grad_dest = None
        return t

    # -- gradient bookkeeping -------------------------------------------------------------------
    @property
    def requires_grad(self) -> bool:
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value: bool) -> None:
        value = bool(value)
        if self._node is not None and not value:
            raise RuntimeError(
                "requires_grad can only be turned off on leaf tensors; use .detach() for a non-leaf"
            )
        if value and not is_float_dtype(self.data.dtype):
            raise TypeError(
                f"only floating-point tensors can require gradients, got dtype {self.data.dtype}"
            )
        self._requires_grad = value

    @property
    def is_leaf(self) -> bool:
        return self._node is None

    @property
    def grad_fn(self):
        """The Function that produced this tensor (None for leaves)."""
        return self._node

    def backward(self, grad=None, retain_graph: bool = False) -> None:
        """Accumulate gradients of this tensor into the ``.grad`` of every leaf it depends on.

        Args:
            grad: d(objective)/d(self), same shape; optional for one-element tensors (taken as 1).
            retain_graph: keep saved activations so backward can run again over the same graph.
        """
        engine.backward(self, grad, retain_graph)

    def register_hook(self, fn: Callable) -> _HookHandle:
        """Call ``fn(grad_array)`` when this tensor's gradient for the current backward is complete.

        For a leaf the hook fires once per backward, before accumulation into ``.grad``; if it
        returns an array, that array is used instead. Returns a handle with ``remove()``.
        """
        if not self._requires_grad:
            raise RuntimeError("cannot register a hook on a tensor that does not require grad")
        if self._node is not None:
            if self._node.hooks is None:
                self._node.hooks = []
            self._node.hooks.append(fn)
            return _HookHandle(self._node.hooks, fn)
        if not self._hooks:
            self._hooks = []
        self._hooks.append(fn)
        engine.watch_leaf(self)
        return _HookHandle(self._hooks, fn, self)

    def register_post_accumulate_grad_hook(self, fn: Callable) -> _HookHandle:
        """Call ``fn(tensor)`` on a leaf right after backward accumulated into its ``.grad``."""
        if self._node is not None:
            raise RuntimeError("post-accumulate-grad hooks can only be registered on leaf tensors")
        if not self._post_hooks:
            self._post_hooks = []
        self._post_hooks.append(fn)
        engine.watch_leaf(self)
        return _HookHandle(self._post_hooks, fn, self)

    def set_grad_buffer(self, buffer) -> None:
        """Offer ``buffer`` (an array of this leaf's shape and dtype, C-contiguous; None withdraws it) as the
        place where backward may write the leaf's gradient.

        An op that can write its input gradient in place (``linear``'s weight) does so when it is the only
        contributor to this leaf in the pass and ``.grad`` is None; ``.grad`` is then ``buffer`` itself. In every
        other case backward proceeds as usual. DistributedDataParallel offers its buckets this way, so the
        gradient lands where it is summed without a copy; whoever offers a buffer withdraws it.
        """
        if buffer is not None:
            if self._node is not None:
                raise RuntimeError("set_grad_buffer: only leaf tensors take a gradient buffer")
            if buffer.shape != self.data.shape or buffer.dtype != self.data.dtype or \
                    not buffer.flags.c_contiguous or type(buffer) is not type(self.data):
                raise ValueError(f"set_grad_buffer: expected a C-contiguous {type(self.data).__name__} of shape "
                                 f"{tuple(self.data.shape)} and dtype {self.data.dtype}, got "
                                 f"{type(buffer).__name__} of shape {tuple(buffer.shape)} and dtype {buffer.dtype}")
        self._grad_dest = buffer
        if buffer is not None:
            engine.watch_leaf(self)
        else:
            engine.unwatch_leaf(self)

    def retain_grad(self) -> None:
        """Make backward also fill ``.grad`` on this non-leaf tensor."""
        if self._node is not None:
            self._node.retain = weakref.ref(self)

    def detach(self) -> Tensor:
        """A new leaf sharing this tensor's data, cut off from the graph."""
        return Tensor._make(self.data, False, None)

    def detach_(self) -> Tensor:
        self._node = None
        self._requires_grad = False
        return self

    def requires_grad_(self, value: bool = True) -> Tensor:
        self.requires_grad = value
        return self

    # -- array-like properties ----------------------------------------------------------------
    @property
    def shape(self) -> tuple:
        return self.data.shape  # a tuple for NumPy and CuPy arrays alike

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def size(self) -> int:
        return int(self.data.size)

    def numel(self) -> int:
        return int(self.data.size)

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def device(self) -> Device:
        return device_of(self.data)

    @property
    def xp(self):
        return get_array_module(self.data)

    def __len__(self) -> int:
        if self.data.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.data.shape[0]

    def __repr__(self) -> str:
        extra = ""
        if self._node is not None:
            extra = f", grad_fn={self._node.name}"
        elif self._requires_grad:
            extra = ", requires_grad=True"
        dev = "" if self.device.type == "cpu" else f", device='{self.device}'"
        body = np.array2string(self.numpy(), separator=", ", prefix="tensor(")
        return f"tensor({body}, dtype={self.dtype}{dev}{extra})"

    def __bool__(self) -> bool:
        if self.data.size != 1:
            raise RuntimeError(f"the truth value of a tensor with {self.data.size} elements is ambiguous")
        return bool(self.data)

    def __float__(self) -> float:
        return float(self.item())

    def __int__(self) -> int:
        return int(self.item())

    __hash__ = object.__hash__

    def item(self):
        """The value of a one-element tensor as a Python number."""
        if self.data.size != 1:
            raise ValueError(f"item() needs a one-element tensor, got shape {self.shape}")
        return self.data.reshape(()).item()

    def numpy(self) -> np.ndarray:
        """The data as a NumPy array (shares memory on CPU, copies from a GPU)."""
        if device_of(self.data).type == "cpu":
            return self.data
        return self.data.get()

    def tolist(self):
        return self.numpy().tolist()

    def to(self, device: str | Device | None = None, dtype=None) -> Tensor:
        """This tensor on another device and/or dtype, differentiably (gradients flow back)."""
        out = self
        if dtype is not None and resolve_dtype(dtype) != self.dtype:
            out = ops.cast(out, resolve_dtype(dtype))
        if device is not None and as_device(device) != out.device:
            out = ops.to_device(out, as_device(device))
        return out

    def cpu(self) -> Tensor:
        return self.to("cpu")

    def cuda(self, index: int | None = None) -> Tensor:
        return self.to("cuda" if index is None else f"cuda:{index}")

    def astype(self, dtype) -> Tensor:
        return self.to(dtype=dtype)

    def float(self) -> Tensor:
        return self.to(dtype=np.float32)

    def double(self) -> Tensor:
        return self.to(dtype=np.float64)

    def half(self) -> Tensor:
        return self.to(dtype=np.float16)

    # -- operators ------------------------------------------------------------------------------
    def __add__(self, other):
        return ops.add(self, other)

    def __radd__(self, other):
        return ops.add(other, self)

    def __sub__(self, other):
        return ops.sub(self, other)

    def __rsub__(self, other):
        return ops.sub(other, self)

    def __mul__(self, other):
        return ops.mul(self, other)

    def __rmul__(self, other):
        return ops.mul(other, self)

    def __truediv__(self, other):
        return ops.div(self, other)

    def __rtruediv__(self, other):
        return ops.div(other, self)

    def __pow__(self, other):
        return ops.pow(self, other)

    def __rpow__(self, other):
        return ops.pow(other, self)

    def __matmul__(self, other):
        return ops.matmul(self, other)

    def __rmatmul__(self, other):
        return ops.matmul(other, self)

    def __neg__(self):
        return ops.neg(self)

    def __pos__(self):
        return self

    def __abs__(self):
        return ops.abs(self)

    def __getitem__(self, index):
        return ops.getitem(self, index)

    # comparisons give boolean tensors without gradient
    def __lt__(self, other):
        return ops.compare(self, other, "less")

    def __le__(self, other):
        return ops.compare(self, other, "less_equal")

    def __gt__(self, other):
        return ops.compare(self, other, "greater")

    def __ge__(self, other):
        return ops.compare(self, other, "greater_equal")

    def __eq__(self, other):  # elementwise, like NumPy and torch
        return ops.compare(self, other, "equal")

    def __ne__(self, other):
        return ops.compare(self, other, "not_equal")

    # -- methods (NumPy axis/keepdims, and torch dim/keepdim) ------------------------------------
    def sum(self, axis=None, keepdims: bool = False, *, dim=None, keepdim=None):
        return ops.sum(self, _axis(axis, dim), _keep(keepdims, keepdim))

    def mean(self, axis=None, keepdims: bool = False, *, dim=None, keepdim=None):
        return ops.mean(self, _axis(axis, dim), _keep(keepdims, keepdim))

    def var(self, axis=None, keepdims: bool = False, *, dim=None, keepdim=None, ddof: int = 0):
        return ops.var(self, _axis(axis, dim), _keep(keepdims, keepdim), ddof=ddof)

    def max(self, axis=None, keepdims: bool = False, *, dim=None, keepdim=None):
        return ops.amax(self, _axis(axis, dim), _keep(keepdims, keepdim))

    def min(self, axis=None, keepdims: bool = False, *, dim=None, keepdim=None):
        return ops.amin(self, _axis(axis, dim), _keep(keepdims, keepdim))

    def argmax(self, axis=None, *, dim=None):
        return Tensor(self.xp.argmax(self.data, axis=_axis(axis, dim)))

    def argmin(self, axis=None, *, dim=None):
        return Tensor(self.xp.argmin(self.data, axis=_axis(axis, dim)))

    def logsumexp(self, axis=None, keepdims: bool = False, *, dim=None, keepdim=None):
        return ops.logsumexp(self, _axis(axis, dim), _keep(keepdims, keepdim))

    def softmax(self, axis=-1, *, dim=None):
        return ops.softmax(self, _axis(axis, dim))

    def log_softmax(self, axis=-1, *, dim=None):
        return ops.log_softmax(self, _axis(axis, dim))

    def reshape(self, *shape):
        return ops.reshape(self, shape_args(shape))

    def view(self, *shape):
        return ops.reshape(self, shape_args(shape))

    def contiguous(self):
        """Self when the memory is C-contiguous, else a differentiable copy that is (torch's contiguous())."""
        return ops.contiguous(self)

    def is_contiguous(self) -> bool:
        """Whether the memory is C-contiguous (convolution outputs are channels-last: False)."""
        return bool(self.data.flags.c_contiguous)

    def flatten(self, start_dim: int = 0, end_dim: int = -1):
        return ops.flatten(self, start_dim, end_dim)

    def squeeze(self, axis=None, *, dim=None):
        return ops.squeeze(self, _axis(axis, dim))

    def unsqueeze(self, axis: int):
        return ops.unsqueeze(self, axis)

    def expand(self, *shape):
        return ops.broadcast_to(self, shape_args(shape))

    def broadcast_to(self, shape):
        return ops.broadcast_to(self, tuple(shape))

    def transpose(self, *dims):
        """``t.transpose(d0, d1)`` swaps two dimensions (torch); ``t.transpose()`` reverses them all."""
        if len(dims) == 0:
            return ops.permute(self, tuple(range(self.ndim))[::-1])
        if len(dims) == 2:
            perm = list(range(self.ndim))
            d0, d1 = (_norm_axis(d, self.ndim) for d in dims)
            perm[d0], perm[d1] = perm[d1], perm[d0]
            return ops.permute(self, tuple(perm))
        raise TypeError(f"transpose takes no or two dimensions (got {dims}); use permute(*dims) to reorder")

    def permute(self, *dims):
        return ops.permute(self, shape_args(dims))

    @property
    def T(self):
        return ops.permute(self, tuple(range(self.ndim))[::-1])

    @property
    def mT(self):
        return self.transpose(-2, -1)

    def exp(self):
        return ops.exp(self)

    def log(self):
        return ops.log(self)

    def sqrt(self):
        return ops.sqrt(self)

    def tanh(self):
        return ops.tanh(self)

    def sigmoid(self):
        return ops.sigmoid(self)

    def relu(self):
        return ops.relu(self)

    def abs(self):
        return ops.abs(self)

    def clip(self, min=None, max=None):
        return ops.clip(self, min, max)

    clamp = clip

    def pow(self, exponent):
        return ops.pow(self, exponent)

    def matmul(self, other):
        return ops.matmul(self, other)

    def eq(self, other):
        return ops.compare(self, other, "equal")


def _axis(axis, dim):
    if dim is not None:
        if axis is not None and axis != dim:
            raise TypeError(f"give either axis= or dim=, not both (axis={axis}, dim={dim})")
        axis = dim
    if isinstance(axis, list):
        axis = tuple(axis)
    return axis


def _keep(keepdims, keepdim):
    return bool(keepdim) if keepdim is not None else bool(keepdims)


def shape_args(shape) -> tuple:
    """A shape given as ``f(2, 3)`` or ``f((2, 3))`` as a tuple of ints."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = shape[0]
    return tuple(int(s) for s in shape)


def _norm_axis(axis: int, ndim: int) -> int:
    if not -ndim <= axis < max(ndim, 1):
        raise IndexError(f"dimension {axis} out of range for a tensor with {ndim} dimensions")
    return axis % max(ndim, 1)


from . import ops  # noqa: E402  (ops need Tensor defined first)
