"""Forward-mode differentiation (dual numbers) and Jacobians.

Inside ``jvp`` every input tensor carries a tangent; each primitive's ``jvp`` rule maps its inputs'
tangents to its output's, alongside the ordinary forward computation. No graph is recorded.
"""

from __future__ import annotations

from collections.abc import Callable

from ..backend import get_array_module
from .function import no_grad
from .tensor import Tensor


def _as_tuple(x) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def jvp(fn: Callable, primals, tangents) -> tuple:
    """Evaluate ``fn(*primals)`` and its directional derivative J·tangents in one forward pass.

    Args:
        fn: function of Tensors returning a Tensor or a tuple of Tensors.
        primals: a Tensor (or sequence of them): the point.
        tangents: matching Tensors/arrays: the direction, one per primal, same shapes.

    Returns:
        ``(outputs, output_tangents)``, each a Tensor or a tuple like fn's result.

    >>> import dtrain as dt
    >>> _, t = jvp(lambda x: x * x, dt.tensor([3.0]), dt.tensor([1.0]))
    >>> t.item()
    6.0
    """
    ps, ts = _as_tuple(primals), _as_tuple(tangents)
    if len(ps) != len(ts):
        raise ValueError(f"jvp: got {len(ps)} primals but {len(ts)} tangents")
    inputs = []
    for i, (p, t) in enumerate(zip(ps, ts)):
        p_arr = p.data if isinstance(p, Tensor) else p
        t_arr = t.data if isinstance(t, Tensor) else t
        xp = get_array_module(p_arr)
        t_arr = xp.asarray(t_arr)
        if t_arr.shape != p_arr.shape:
            raise ValueError(f"jvp: tangent {i} has shape {t_arr.shape}, primal has shape {p_arr.shape}")
        x = Tensor._make(p_arr, False, None)
        x._tangent = t_arr.astype(p_arr.dtype, copy=False)
        inputs.append(x)
    with no_grad():
        out = fn(*inputs)
    outs = _as_tuple(out)
    values, tans = [], []
    for o in outs:
        if not isinstance(o, Tensor):
            raise TypeError(f"jvp: fn must return Tensors, got {type(o).__name__}")
        tan = o._tangent if o._tangent is not None else o.xp.zeros_like(o.data)
        values.append(Tensor._make(o.data, False, None))
        tans.append(Tensor._make(tan, False, None))
        o._tangent = None
    if isinstance(out, (tuple, list)):
        return tuple(values), tuple(tans)
    return values[0], tans[0]


def vjp(fn: Callable, primals, cotangent) -> tuple:
    """Evaluate ``fn(*primals)`` and cotangentᵀ·J by reverse mode. Returns ``(output, grads)``."""
    ps = _as_tuple(primals)
    leaves = [Tensor(p.data if isinstance(p, Tensor) else p, requires_grad=True) for p in ps]
    out = fn(*leaves)
    ct = cotangent.data if isinstance(cotangent, Tensor) else cotangent
    out.backward(ct)
    grads = tuple(
        Tensor._make(x.grad if x.grad is not None else x.xp.zeros_like(x.data), False, None) for x in leaves
    )
    value = Tensor._make(out.data, False, None)
    return value, (grads if isinstance(primals, (tuple, list)) else grads[0])


def jacobian(fn: Callable, x, mode: str = "reverse") -> Tensor:
    """The Jacobian of ``fn`` at ``x`` as a Tensor of shape ``fn(x).shape + x.shape``.

    ``mode="reverse"`` runs one backward per output element; ``mode="forward"`` one jvp per input
    element (cheaper when the input is smaller than the output).
    """
    if mode not in ("reverse", "forward"):
        raise ValueError(f"jacobian: mode must be 'reverse' or 'forward', got {mode!r}")
    x_arr = x.data if isinstance(x, Tensor) else x
    xp = get_array_module(x_arr)
    if mode == "forward":
        cols = []
        out_shape = None
        for j in range(x_arr.size):
            e = xp.zeros(x_arr.size, dtype=x_arr.dtype)
            e[j] = 1
            out, tan = jvp(fn, Tensor._make(x_arr, False, None), e.reshape(x_arr.shape))
            out_shape = out.shape
            cols.append(tan.data.reshape(-1))
        if out_shape is None:
            out_shape = fn(Tensor._make(x_arr, False, None)).shape
            return Tensor._make(xp.zeros(out_shape + x_arr.shape, dtype=x_arr.dtype), False, None)
        jac = xp.stack(cols, axis=1).reshape(out_shape + x_arr.shape)
        return Tensor._make(jac, False, None)
    leaf = Tensor(x_arr, requires_grad=True)
    out = fn(leaf)
    if not out.requires_grad:  # fn does not depend on x
        return Tensor._make(xp.zeros(out.shape + x_arr.shape, dtype=x_arr.dtype), False, None)
    rows = []
    for i in range(out.size):
        leaf.grad = None
        e = xp.zeros(out.size, dtype=out.dtype)
        e[i] = 1
        out.backward(e.reshape(out.shape), retain_graph=True)
        rows.append((leaf.grad if leaf.grad is not None else xp.zeros_like(x_arr)).reshape(-1))
    if not rows:
        return Tensor._make(xp.zeros(out.shape + x_arr.shape, dtype=x_arr.dtype), False, None)
    return Tensor._make(xp.stack(rows, axis=0).reshape(out.shape + x_arr.shape), False, None)


