"""Shape and indexing primitives: reshape, permute, contiguous, broadcast, getitem, concat, stack, pad."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..function import Function
from ..tensor import Tensor
from ._util import as_tensor_args, norm_axes, scatter_add, xp_of


class Reshape(Function):
    capturable = True  # reshape()'s target shape follows from the input's shape (flatten, squeeze, view)

    def forward(self, x, shape=()):
        self.in_shape, self.shape = x.shape, shape
        return x.reshape(shape)

    def backward(self, g):
        return g.reshape(self.in_shape)

    def jvp(self, t):
        return t.reshape(self.shape)


class Permute(Function):
    capturable = True  # permute()'s axes are normalised from the input's rank only

    def forward(self, x, axes=()):
        self.axes = axes
        return x.transpose(axes)

    def backward(self, g):
        return g.transpose(np.argsort(self.axes))

    def jvp(self, t):
        return t.transpose(self.axes)


class Contiguous(Function):
    """The same values in C-contiguous memory (a copy of a transposed or channels-last array); the identity
    for gradients."""

    def forward(self, x):
        return xp_of(x).ascontiguousarray(x)

    def backward(self, g):
        return g

    def jvp(self, t):
        return t


class BroadcastTo(Function):
    def forward(self, x, shape=()):
        self.shape = shape
        return xp_of(x).broadcast_to(x, shape)

    def backward(self, g):
        return g  # the engine sums it back to the input's shape

    def jvp(self, t):
        return xp_of(t).broadcast_to(t, self.shape)


def _index_arrays(index, xp):
    """Tensors and lists inside an index become arrays; reports whether it is 'advanced'."""
    parts = index if isinstance(index, tuple) else (index,)
    out, advanced = [], False
    for p in parts:
        if isinstance(p, Tensor):
            p = p.data
        elif isinstance(p, list):
            p = xp.asarray(p)
        if hasattr(p, "dtype") and hasattr(p, "shape"):
            if p.dtype != np.bool_:
                if p.dtype.kind not in "iu":
                    raise IndexError(f"tensors used as indices must be integer or bool, got dtype {p.dtype}")
                advanced = True
            p = xp.asarray(p)
        out.append(p)
    return (tuple(out) if isinstance(index, tuple) else out[0]), advanced


class GetItem(Function):
    """x[index]: slices, ints, None, Ellipsis, bool masks and integer arrays (gathers)."""

    # A captured step replays an index of ints, slices, None and Ellipsis as traced (Python values), and an
    # index array only when it is an argument's or an op's output; an array inside an index tuple is refused.
    capturable = True

    def forward(self, x, index=None, advanced=False):
        self.in_shape, self.dtype, self.index, self.advanced = x.shape, x.dtype, index, advanced
        return x[index]

    def backward(self, g):
        gx = xp_of(g).zeros(self.in_shape, dtype=g.dtype)
        if self.advanced:  # repeated indices must accumulate
            scatter_add(gx, self.index, g)
        else:
            gx[self.index] = g
        return gx

    def jvp(self, t):
        return t[self.index]


def getitem(x: Tensor, index) -> Tensor:
    """NumPy indexing; gradients are scattered back (accumulated for repeated integer indices)."""
    index, advanced = _index_arrays(index, x.xp)
    return GetItem.apply(x, index=index, advanced=advanced)


class Concat(Function):
    capturable = True  # concat()/stack() check shapes and normalise the axis from the rank only

    def forward(self, *xs, axis=0):
        self.axis = axis
        self.shapes = [x.shape for x in xs]
        return xp_of(xs[0]).concatenate(xs, axis=axis)

    def backward(self, g):
        bounds = np.cumsum([s[self.axis] for s in self.shapes])[:-1].tolist()
        return tuple(xp_of(g).split(g, bounds, axis=self.axis))

    def jvp(self, *ts):
        like = next(t for t in ts if t is not None)
        xp = xp_of(like)
        parts = [t if t is not None else xp.zeros(s, like.dtype) for t, s in zip(ts, self.shapes)]
        return xp.concatenate(parts, axis=self.axis)


class Stack(Function):
    capturable = True

    def forward(self, *xs, axis=0):
        self.axis = axis
        return xp_of(xs[0]).stack(xs, axis=axis)

    def backward(self, g):
        n = g.shape[self.axis]
        return tuple(g.take(i, axis=self.axis) for i in range(n))

    def jvp(self, *ts):
        like = next(t for t in ts if t is not None)
        xp = xp_of(like)
        return xp.stack([t if t is not None else xp.zeros_like(like) for t in ts], axis=self.axis)


def _check_same_shapes(name: str, ts: list, skip_axis: int | None) -> None:
    ref = ts[0].shape
    for i, t in enumerate(ts[1:], 1):
        a = [n for j, n in enumerate(t.shape) if j != skip_axis]
        b = [n for j, n in enumerate(ref) if j != skip_axis]
        if t.ndim != len(ref) or a != b:
            where = "" if skip_axis is None else f" except along axis {skip_axis}"
            raise ValueError(f"{name}: tensor {i} has shape {t.shape}, expected {ref}{where}")


def concat(tensors: Sequence[Tensor], axis: int = 0) -> Tensor:
    """Join tensors along an existing axis."""
    ts = as_tensor_args(tensors)
    if not ts:
        raise ValueError("concat needs at least one tensor")
    ax = norm_axes(axis, ts[0].ndim)[0]
    _check_same_shapes("concat", ts, ax)
    return Concat.apply(*ts, axis=ax)


def stack(tensors: Sequence[Tensor], axis: int = 0) -> Tensor:
    """Join same-shaped tensors along a new axis."""
    ts = as_tensor_args(tensors)
    if not ts:
        raise ValueError("stack needs at least one tensor")
    _check_same_shapes("stack", ts, None)
    ax = norm_axes(axis, ts[0].ndim + 1)[0]
    return Stack.apply(*ts, axis=ax)


class Pad(Function):
    """Constant padding; ``widths`` is NumPy's ((before, after), ...) per axis."""

    def forward(self, x, widths=(), value=0.0):
        self.widths, self.value = widths, value
        self.slices = tuple(slice(b, b + n) for (b, _), n in zip(widths, x.shape))
        return xp_of(x).pad(x, widths, mode="constant", constant_values=value)

    def backward(self, g):
        return g[self.slices]

    def jvp(self, t):
        return xp_of(t).pad(t, self.widths, mode="constant", constant_values=0)


def pad(x: Tensor, pad: Sequence[int], value: float = 0.0) -> Tensor:
    """torch's F.pad (constant mode): ``pad`` lists (left, right) pairs from the LAST axis backwards."""
    pad = [int(p) for p in pad]
    if len(pad) % 2 or len(pad) // 2 > x.ndim:
        raise ValueError(f"pad: expected an even number of sizes for at most {x.ndim} dims, got {pad}")
    if any(p < 0 for p in pad):
        raise ValueError(f"pad: negative padding is not supported, got {pad}")
    widths = [(0, 0)] * x.ndim
    for i in range(len(pad) // 2):
        widths[x.ndim - 1 - i] = (pad[2 * i], pad[2 * i + 1])
    return Pad.apply(x, widths=tuple(widths), value=value)


def contiguous(x: Tensor) -> Tensor:
    """``x`` itself when its memory is C-contiguous, else a copy that is (torch's ``Tensor.contiguous``).
    Convolution, tiled max pooling and batch norm return channels-last memory under the NCHW shape."""
    return x if x.data.flags.c_contiguous else Contiguous.apply(x)


def reshape(x: Tensor, shape: tuple) -> Tensor:
    """Same data, new shape (one entry may be -1)."""
    shape = tuple(int(s) for s in shape)
    if shape == x.shape:
        return x
    known = 1
    for s in shape:
        known *= s if s != -1 else 1
    n_free = shape.count(-1)
    ok = n_free <= 1 and all(s >= -1 for s in shape) and (
        known == x.size if n_free == 0 else (known > 0 and x.size % known == 0)
    )
    if not ok:
        raise ValueError(f"cannot reshape a tensor of shape {x.shape} ({x.size} elements) into {shape}")
    return Reshape.apply(x, shape=shape)


def permute(x: Tensor, axes: tuple) -> Tensor:
    """Reorder dimensions (``axes`` is a permutation of range(ndim))."""
    axes = tuple(int(a) % max(x.ndim, 1) for a in axes)
    if sorted(axes) != list(range(x.ndim)):
        raise ValueError(f"permute: {axes} is not a permutation of the {x.ndim} dimensions of shape {x.shape}")
    return Permute.apply(x, axes=axes)


def broadcast_to(x: Tensor, shape: tuple) -> Tensor:
    """A broadcast (read-only) view of ``x`` with ``shape``; -1 keeps a dimension."""
    shape = tuple(int(s) for s in shape)
    lead = len(shape) - x.ndim
    shape = tuple(x.shape[i - lead] if s == -1 else s for i, s in enumerate(shape))
    try:
        np.broadcast_shapes(x.shape, shape)
    except ValueError:
        raise ValueError(f"cannot broadcast shape {x.shape} to {shape}") from None
    return BroadcastTo.apply(x, shape=shape)


def flatten(x: Tensor, start_dim: int = 0, end_dim: int = -1) -> Tensor:
    """Merge dimensions start_dim..end_dim into one."""
    if x.ndim == 0:
        return reshape(x, (1,))
    s, e = (norm_axes(d, x.ndim)[0] for d in (start_dim, end_dim))
    n = 1
    for d in x.shape[s : e + 1]:
        n *= d
    return reshape(x, x.shape[:s] + (n,) + x.shape[e + 1 :])


def squeeze(x: Tensor, axis=None) -> Tensor:
    """Remove size-1 dimensions (all, or those in ``axis``)."""
    axes = norm_axes(axis, x.ndim) if axis is not None else tuple(i for i, n in enumerate(x.shape) if n == 1)
    for a in axes:
        if x.shape[a] != 1:
            raise ValueError(f"squeeze: dimension {a} has size {x.shape[a]}, not 1 (shape {x.shape})")
    return reshape(x, tuple(n for i, n in enumerate(x.shape) if i not in axes))


def unsqueeze(x: Tensor, axis: int) -> Tensor:
    """Insert a size-1 dimension at ``axis``."""
    ax = norm_axes(axis, x.ndim + 1)[0]
    return reshape(x, x.shape[:ax] + (1,) + x.shape[ax:])
