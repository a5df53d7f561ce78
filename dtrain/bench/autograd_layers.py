"""The tiny-MLP step of ``autograd_overhead`` taken apart layer by layer: what each layer of dtrain adds to the
array work.

* ``dtrain-bodies``: the forward and backward methods of the very ops ``F.linear``, ``F.relu`` and
  ``F.cross_entropy`` record (``FusedLinear``, ``FusedReLU``, ``FusedCrossEntropy``), called in order on the
  arrays: no Tensor, no graph, no engine. Against ``numpy`` this is the cost of the ops' own array code.
* ``dtrain-apply``: the same ops through ``Function.apply`` on tensors and ``loss.backward()``, without the
  functional frontends (their argument checks). Against ``dtrain-bodies``: Function.apply, the graph record
  and the engine; against ``dtrain``: the frontends.
"""

from __future__ import annotations

import numpy as np

from ..autograd.ops.activation import FusedReLU
from ..autograd.ops.linalg import FusedLinear
from ..autograd.ops.loss import FusedCrossEntropy

__all__ = ["DirectOps", "OpBodiesMLP"]


class DirectOps:
    """``F.linear``, ``F.relu`` and ``F.cross_entropy`` as straight ``Function.apply`` calls (no argument
    checks): the frontend-free namespace of the ``dtrain-apply`` row. Valid only for the benchmark's own
    inputs (2-D float32 logits, integer targets in range)."""

    @staticmethod
    def linear(x, w, b):
        return FusedLinear.apply(x, w, b)

    @staticmethod
    def relu(x):
        return FusedReLU.apply(x)

    @staticmethod
    def cross_entropy(logits, target):
        return FusedCrossEntropy.apply(logits, target=target, weight=None, ignore_index=-100, reduction="mean",
                                       label_smoothing=0.0, plain=True)


def _node(cls, needs: tuple):
    """A fresh op object set up as the engine would hand it to ``backward``."""
    fn = cls()
    fn.needs_grad = needs
    fn.grad_out = None
    return fn


class OpBodiesMLP:
    """The step as dtrain's ops compute it, their methods called directly on NumPy arrays."""

    def __init__(self, x, y, params):
        self.x, self.y = x, y
        self.params = [(w.copy(), b.copy()) for w, b in params]
        self.grads = None
        self.one = np.ones((), dtype=x.dtype)

    def step(self):
        h, nodes = self.x, []
        last = len(self.params) - 1
        for i, (w, b) in enumerate(self.params):
            lin = _node(FusedLinear, (i > 0, True, True))  # the input batch needs no gradient
            h = lin.forward(h, w, b)
            nodes.append(lin)
            if i != last:
                act = _node(FusedReLU, (True,))
                h = act.forward(h)
                nodes.append(act)
        loss_fn = _node(FusedCrossEntropy, (True,))
        loss = loss_fn.forward(h, target=self.y, weight=None, ignore_index=-100, reduction="mean",
                               label_smoothing=0.0, plain=True)
        g = loss_fn.backward(self.one)
        grads = [None] * (2 * len(self.params))
        k = len(self.params)
        for fn in reversed(nodes):
            if isinstance(fn, FusedLinear):
                k -= 1
                g, grads[2 * k], grads[2 * k + 1] = fn.backward(g)
            else:
                g = fn.backward(g)
        self.grads = grads
        return loss

    def result(self):
        loss = self.step()
        return float(loss), [np.asarray(g) for g in self.grads]
