"""The reverse-mode engine: one backward pass over the recorded graph.

1. An iterative walk from the root counts, for every node and every leaf, how many edges of this
   graph point at it (no recursion: chains of any length work).
2. Nodes are run when all their consumers have delivered a gradient (a count of zero). Among the
   ready nodes the most recently created runs first (a max-heap on the creation number), which is
   the reverse of forward order: deterministic, and the last layer's parameters finish first.
3. A leaf's gradient is complete the moment its last consumer has run; only then do its hooks fire
   and is it accumulated into ``leaf.grad`` — once per leaf per backward, as early as possible
   (DistributedDataParallel starts communicating from these hooks).
4. Unless ``retain_graph`` is set, each node drops its saved activations and edges right after its
   backward, so memory is returned while backward proceeds.
5. Callbacks queued during the pass (``queue_callback``, typically from a leaf hook) run once, in
   order, after the last gradient is delivered: DDP waits for its buckets there, so ``backward()``
   returns with averaged gradients.

6. A leaf may offer a buffer for its gradient (``Tensor.set_grad_buffer``). When the node about to run is the
   only one to deliver that leaf's gradient, ``.grad`` is still None, and the op can write that input's
   gradient in place (``Function.writes_grad_into``), the op gets the buffer (``grad_out``) and ``.grad``
   becomes the buffer itself: DistributedDataParallel's buckets receive linear weights' gradients this way.

7. Steps 1 and 3 exist for leaves someone waits on: leaves with hooks or a gradient buffer (``watch_leaf``, called
   by ``Tensor.register_hook`` and friends). While no such leaf is alive, the pass skips the counting walk: a node
   joins a max-heap on its creation number when its first gradient arrives, and the node popped is always complete
   (every consumer that will ever deliver to it was created later, so it has run already). That is the same order
   as step 2's; leaves then receive their gradients at the end of the pass.

Gradients flowing between nodes are treated as read-only; fan-out sums are accumulated out of place
on first touch and in place afterwards (the engine owns those buffers). An array stored into
``leaf.grad`` is never shared with another leaf's ``.grad``.
"""

from __future__ import annotations

import heapq
import weakref

import numpy as np

from ..backend import get_array_module
from .function import Function, unbroadcast

ndarray = np.ndarray

__all__ = ["backward", "queue_callback", "unwatch_leaf", "watch_leaf"]

_callback_stack: list[list] = []  # one list per backward pass in progress (hooks may nest passes)
# Leaves with hooks, post-accumulate hooks or a gradient buffer, by id (a Tensor's == is elementwise, so no WeakSet):
# while any is alive, passes count consumers (steps 1 and 3). The weak reference drops the entry when the leaf dies.
_watched: dict[int, weakref.ref] = {}


def watch_leaf(leaf) -> None:
    """Have every backward pass complete ``leaf``'s gradient as early as possible (its hooks, its buffer)."""
    key = id(leaf)
    if key not in _watched:
        _watched[key] = weakref.ref(leaf, lambda _, key=key: _watched.pop(key, None))


def unwatch_leaf(leaf) -> None:
    """Undo ``watch_leaf`` once ``leaf`` has no hook, post-accumulate hook or gradient buffer left."""
    if not leaf._hooks and not leaf._post_hooks and leaf._grad_dest is None:
        _watched.pop(id(leaf), None)


def queue_callback(fn) -> None:
    """Run ``fn()`` once when the backward pass in progress has delivered every gradient.

    Only valid while a backward pass runs (from a tensor hook); raises RuntimeError otherwise.
    """
    if not _callback_stack:
        raise RuntimeError("queue_callback() can only be called during a backward pass (from a tensor hook)")
    _callback_stack[-1].append(fn)

_SECOND_BACKWARD = (
    "trying to backward through the graph a second time (or to read values it already freed): "
    "the first backward released saved activations. Pass retain_graph=True to the first backward "
    "if you need to call backward again."
)


def backward(tensor, grad=None, retain_graph: bool = False) -> None:
    """Accumulate d(tensor)/d(leaf) · grad into every leaf's ``.grad`` (see the module docstring)."""
    if not tensor._requires_grad:
        raise RuntimeError(
            "backward() called on a tensor that does not require grad: it was computed from inputs "
            "with requires_grad=False or inside no_grad()"
        )
    data = tensor.data
    if grad is None:
        if data.size != 1:
            raise RuntimeError(
                f"backward() without a gradient needs a scalar (one-element) output, got shape "
                f"{tuple(tensor.shape)}; pass grad= an array of that shape"
            )
        grad = seed_gradient(data)
    else:
        xp = get_array_module(data)
        grad = getattr(grad, "data", grad) if hasattr(grad, "_is_dtrain_tensor") else grad
        if get_array_module(grad) is not xp:
            raise RuntimeError(
                f"backward(): the gradient is on a different device than the tensor ({tensor.device})"
            )
        grad = xp.asarray(grad)
        if grad.shape != tensor.data.shape:
            raise RuntimeError(
                f"backward(): gradient shape {tuple(grad.shape)} does not match tensor shape "
                f"{tuple(tensor.data.shape)}"
            )
        if grad.dtype != tensor.data.dtype:
            grad = grad.astype(tensor.data.dtype)

    callbacks: list = []
    _callback_stack.append(callbacks)
    try:
        root = tensor._node
        if root is None:  # the tensor is itself a leaf
            _finish_leaf(tensor, grad, {_array_key(grad)})
        elif _watched:
            _run(root, grad, retain_graph)
        else:
            _run_in_creation_order(root, grad, retain_graph)
    finally:
        _callback_stack.pop()
    for fn in callbacks:
        fn()


def seed_gradient(out):
    """d out / d out for a one-element output: ones of its shape and dtype (a 0-d array without ones_like's cost)."""
    if type(out) is ndarray and out.ndim == 0:  # a loss on NumPy: every eager step's seed, without the module lookup
        return np.array(1, dtype=out.dtype)
    xp = get_array_module(out)
    return xp.array(1, dtype=out.dtype) if out.shape == () else xp.ones(out.shape, dtype=out.dtype)


def _run(root: Function, grad, retain_graph: bool) -> None:
    """The pass of steps 1-6, for when some leaf is watched."""
    handed: set[int] = {_array_key(grad)}  # arrays already owned by someone: never alias them
    node_deps, leaf_deps, buffers = _count_dependencies(root)
    grads: dict[int, list] = {id(root): [grad, False]}  # [gradient arriving at a node to run, owned by us]
    leaf_grads: dict[int, list] = {}
    ready = [(-root.seq, root)]
    pop, push = heapq.heappop, heapq.heappush
    while ready:
        node = pop(ready)[1]
        entry = grads.pop(id(node), None)
        edges, metas = node.next, node.in_meta
        if entry is None:  # no gradient reached this node: pass "nothing" on so counts still drain
            in_grads = (None,) * len(edges)
        elif buffers and node.writes_grad_into is not None:
            in_grads = _backward_into_buffers(node, entry[0], leaf_deps, leaf_grads)
        else:  # (the pass when leaves are watched: DDP's, over models where a call per node does not show)
            in_grads = _node_backward(node, entry[0], len(edges))
        if not retain_graph:  # release the node: its saved arrays, edges and the rest (Function's class comment)
            node.__dict__.clear()
        for edge, gi, meta in zip(edges, in_grads, metas):
            if edge is None:
                continue
            key = id(edge)
            if gi is not None and (type(gi) is not ndarray or gi.shape != meta[0]
                                   or (gi.dtype is not meta[1] and gi.dtype != meta[1])):
                gi = _fit(gi, meta, node)  # only a mismatch pays for the call
            if isinstance(edge, Function):
                if gi is not None:
                    if key in grads:
                        _accumulate(grads, key, gi)
                    else:
                        grads[key] = [gi, False]
                left = node_deps[key] - 1
                node_deps[key] = left
                if left == 0:
                    push(ready, (-edge.seq, edge))
            else:
                left = leaf_deps[key] - 1
                leaf_deps[key] = left
                if left == 0 and key not in leaf_grads:  # the leaf's only gradient (most parameters)
                    if gi is not None:
                        _finish_leaf(edge, gi, handed)
                    continue
                if gi is not None:
                    _accumulate(leaf_grads, key, gi)
                if left == 0:
                    _finish_leaf(edge, leaf_grads.pop(key)[0], handed)


def _run_in_creation_order(root: Function, grad, retain_graph: bool) -> None:
    """The pass without the counting walk (step 7): no leaf waits, so leaves are finished at the end. A node to
    run is kept out of the heap while it is the only one delivered to (a chain of layers)."""
    grads: dict[int, list] = {}  # [gradient arriving at a node still to run, owned by us]
    leaf_grads: dict[int, list] = {}  # [gradient, owned by us, the leaf]
    ready: list = []
    pop, push = heapq.heappop, heapq.heappush
    node, g = root, grad
    single = single_g = None  # the one node delivered to while the heap is empty, its gradient, owned by us?
    single_owned = False
    while True:
        edges, metas = node.next, node.in_meta
        if edges is None:
            raise RuntimeError(_SECOND_BACKWARD)
        if node.hooks is None and node.retain is None:
            in_grads = node.backward(g)
            if type(in_grads) is not tuple:
                in_grads = (in_grads,)
            if len(in_grads) != len(edges):
                raise RuntimeError(f"op {node.name}: backward returned {len(in_grads)} gradients for {len(edges)} "
                                   "inputs")
        else:
            in_grads = _node_backward(node, g, len(edges))
        if not retain_graph:  # release the node: its saved arrays, edges and the rest (Function's class comment)
            node.__dict__.clear()
        for edge, gi, meta in zip(edges, in_grads, metas):
            if edge is None or gi is None:
                continue
            if type(gi) is not ndarray or gi.shape != meta[0] or (gi.dtype is not meta[1] and gi.dtype != meta[1]):
                gi = _fit(gi, meta, node)
            key = id(edge)
            if isinstance(edge, Function):
                if edge is single:  # fan-in at the next node of a chain: out of place first, then in place
                    if single_owned:
                        single_g += gi
                    else:
                        single_g, single_owned = single_g + gi, True
                elif key in grads:
                    _accumulate(grads, key, gi)
                elif single is None and not ready:
                    single, single_g, single_owned = edge, gi, False
                else:
                    if single is not None:  # a second node to run: both go to the heap
                        grads[id(single)] = [single_g, single_owned]
                        push(ready, (-single.seq, single))
                        single = None
                    grads[key] = [gi, False]
                    push(ready, (-edge.seq, edge))
            elif key in leaf_grads:
                _accumulate(leaf_grads, key, gi)
            else:
                leaf_grads[key] = [gi, False, edge]
        if single is not None:
            node, g, single = single, single_g, None
        elif ready:
            node = pop(ready)[1]
            g = grads.pop(id(node))[0]
        else:
            break
    _finish_leaves(leaf_grads.values(), {_array_key(grad)})


def _finish_leaves(entries, handed: set[int]) -> None:
    """``_finish_leaf`` for each [gradient, owned, leaf], the common leaf (no hooks, ``.grad`` None) inline."""
    for g, _, leaf in entries:
        if leaf.grad is None and not leaf._hooks and not leaf._post_hooks:
            leaf.grad = _unshared(g, handed)
        else:
            _finish_leaf(leaf, g, handed)


def _node_backward(node: Function, g, n_inputs: int) -> tuple:
    """The node's hooks on ``g``, a retained gradient for ``retain_grad()``, then its input gradients."""
    if node.hooks:
        for hook in node.hooks:
            out = hook(g)
            if out is not None:
                g = out
    if node.retain is not None:
        owner = node.retain()
        if owner is not None:
            owner.grad = g.copy() if owner.grad is None else owner.grad + g
    in_grads = node.backward(g)
    if not isinstance(in_grads, tuple):
        in_grads = (in_grads,)
    if len(in_grads) != n_inputs:
        raise RuntimeError(f"op {node.name}: backward returned {len(in_grads)} gradients for {n_inputs} inputs")
    return in_grads


def _backward_into_buffers(node: Function, g, leaf_deps: dict[int, int], leaf_grads: dict[int, list]) -> tuple:
    """The node's backward, offered the gradient buffers (``Tensor.set_grad_buffer``) of the leaves whose whole
    gradient it computes (the last edge still to deliver, nothing delivered yet, ``.grad`` None) at the inputs
    it can write in place (``writes_grad_into``)."""
    edges = node.next
    out = [None] * len(edges)
    offered = False
    for i in node.writes_grad_into:
        leaf = edges[i]
        if leaf is not None and not isinstance(leaf, Function) and leaf._grad_dest is not None \
                and leaf.grad is None and leaf_deps[id(leaf)] == 1 and id(leaf) not in leaf_grads:
            out[i] = leaf._grad_dest
            offered = True
    if not offered:
        return _node_backward(node, g, len(edges))
    node.grad_out = out
    try:
        return _node_backward(node, g, len(edges))
    finally:
        node.grad_out = None


def _count_dependencies(root: Function) -> tuple[dict[int, int], dict[int, int], bool]:
    """Number of incoming edges of every node and leaf reachable from ``root`` (iterative DFS), and whether
    any of those leaves offers a gradient buffer."""
    node_deps: dict[int, int] = {}
    leaf_deps: dict[int, int] = {}
    buffers = False
    stack = [root]
    seen = {id(root)}
    while stack:
        node = stack.pop()
        if node.next is None:
            raise RuntimeError(_SECOND_BACKWARD)
        for edge in node.next:
            if edge is None:
                continue
            key = id(edge)
            if isinstance(edge, Function):
                node_deps[key] = node_deps.get(key, 0) + 1
                if key not in seen:
                    seen.add(key)
                    stack.append(edge)
            else:
                leaf_deps[key] = leaf_deps.get(key, 0) + 1
                if edge._grad_dest is not None:
                    buffers = True
    return node_deps, leaf_deps, buffers


def _fit(g, meta, node: Function):
    """Make an op's returned gradient match its input: array type, shape (un-broadcast), dtype."""
    if isinstance(g, np.generic):
        g = np.asarray(g)
    shape, dtype = meta
    if g.shape != shape:
        try:
            g = unbroadcast(g, shape)
        except (RuntimeError, ValueError):
            raise RuntimeError(
                f"op {node.name}: backward returned a gradient of shape {g.shape} for an input of shape {shape}"
            ) from None
    if g.dtype != dtype:
        g = g.astype(dtype)
    return g


def _accumulate(store: dict, key: int, g) -> None:
    entry = store.get(key)
    if entry is None:
        store[key] = [g, False]
    elif entry[1]:
        entry[0] += g
    else:  # first fan-in: a new buffer we own, so later additions can be in place
        entry[0] = entry[0] + g
        entry[1] = True


def _array_key(a) -> int:
    base = getattr(a, "base", None)
    return id(base) if base is not None else id(a)


def _finish_leaf(leaf, g, handed: set[int]) -> None:
    """Run the leaf's hooks on its complete gradient, then accumulate it into ``leaf.grad``."""
    if leaf._hooks:
        for hook in leaf._hooks:
            out = hook(g)
            if out is not None:
                g = out
    if leaf.grad is None:
        # (an array written into the buffer the leaf offered is the leaf's alone)
        leaf.grad = g if g is leaf._grad_dest else _unshared(g, handed)
    else:
        leaf.grad += g
    if leaf._post_hooks:
        for hook in leaf._post_hooks:
            hook(leaf)


def _unshared(g, handed: set[int]):
    """``g`` for a leaf's ``.grad``: a contiguous array no other leaf holds (else a copy of it)."""
    base = g.base
    if base is None:
        key = id(g)
        if key not in handed and type(g) is ndarray and g.ndim <= 2:  # a new NumPy array of <= 2 axes: C or F order
            handed.add(key)
            return g
    else:
        key = id(base)
    flags = g.flags
    if key in handed or not (flags.c_contiguous or flags.f_contiguous):
        g = g.copy()
        key = id(g)
    handed.add(key)
    return g
