"""Gradient checkpointing: keep a segment's inputs, recompute its inside during backward.

``checkpoint(fn, *args)`` runs ``fn`` without recording a graph, so none of its intermediate
activations are kept; backward re-runs ``fn`` with recording on (with the random-number state it
had the first time, so dropout masks match) and backpropagates through that fresh graph. Gradients
are identical; peak memory drops by the activations of the segment.

Parameters that ``fn`` reads from its closure (a module's weights) receive their gradients during
the recomputation; their hooks fire then.
"""

from __future__ import annotations

from collections.abc import Callable

from .. import backend
from .function import Function, enable_grad, no_grad
from .tensor import Tensor


class Checkpoint(Function):
    def forward(self, *arrays, fn=None, spec=None):
        self.fn, self.spec = fn, spec
        self.rng_state = backend.default_generator.get_state()
        self.saved = arrays
        with no_grad():
            out = fn(*self._args([Tensor._make(a, False, None) for a in arrays]))
        if not isinstance(out, Tensor):
            raise TypeError(f"checkpoint: fn must return a single Tensor, got {type(out).__name__}")
        return out.data

    def _args(self, tensors):
        """Rebuild fn's positional arguments: Tensors in their slots, other values as given."""
        it = iter(tensors)
        return [next(it) if is_tensor else value for is_tensor, value in self.spec]

    def backward(self, g):
        after = backend.default_generator.get_state()
        backend.default_generator.set_state(self.rng_state)
        try:
            leaves = [Tensor(a, requires_grad=need) for a, need in zip(self.saved, self.needs_grad)]
            with enable_grad():
                out = self.fn(*self._args(leaves))
        finally:
            backend.default_generator.set_state(after)
        if out.requires_grad:
            out.backward(g)
        return tuple(x.grad if need else None for x, need in zip(leaves, self.needs_grad))

    def jvp(self, *tangents):
        inputs = []
        for a, t in zip(self.saved, tangents):
            x = Tensor._make(a, False, None)
            x._tangent = t
            inputs.append(x)
        backend.default_generator.set_state(self.rng_state)
        with no_grad():
            out = self.fn(*self._args(inputs))
        return out._tangent


def checkpoint(fn: Callable, *args) -> Tensor:
    """Run ``fn(*args)`` storing only its inputs; recompute it in backward (see module docstring)."""
    tensors = [a for a in args if isinstance(a, Tensor)]
    spec = [(isinstance(a, Tensor), None if isinstance(a, Tensor) else a) for a in args]
    return Checkpoint.apply(*tensors, fn=fn, spec=spec)
