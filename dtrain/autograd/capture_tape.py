"""The replay half of a captured step (capture.py traces): a flat tape of ops over a list of arrays.

Slot layout of ``vals``, fixed when the tape is built: the arguments' arrays, then the parameters'
``.data``, then constant inputs, then each op's output. An op is ``(cls, input slots, parameters)``;
backward walks the live ops (those a gradient reaches from the loss) in reverse creation order,
which is the order the eager engine runs them in, and sums fan-in gradients in the same order, so
replayed gradients equal eager ones bit for bit. A leaf's gradient is handed over (hooks, ``.grad``)
right after its last consumer's backward, as the engine does.
"""

from __future__ import annotations

import numpy as np

from . import engine
from .autocast import autocast_dtype
from .capture_codegen import generate, generate_guard
from .capture_hooks import CaptureError
from .tensor import Tensor


class _Op:
    __slots__ = ("array_params", "check", "cls", "edges", "finish", "ins", "live", "needs", "out", "out_meta",
                 "params")


class _Tape:
    def __init__(self, tracer, args, root: int, outputs=(), several: bool = False, before_backward=None):
        self.nargs = len(args)
        self.several, self.before_backward = several, before_backward
        self.arg_leaf = tuple(isinstance(a, Tensor) and a._requires_grad for a in args)
        for i, a in enumerate(args):
            if self.arg_leaf[i] and a._node is not None:
                raise CaptureError(f"captured step: argument {i} requires grad but is not a leaf tensor; pass a leaf "
                                   "(or .detach() it)")
        self.state = list(tracer.state.values())
        self.effects = tuple(tracer.effects)
        self.guards = tuple(tracer.guards)
        n_fixed = self.nargs + len(self.state)
        raw, attrs, consts = self._symbolic_ops(tracer)
        self.attrs, self.attr_base = attrs, n_fixed
        self.attr_meta = [self.meta_of(getattr(owner, name)) for owner, name in attrs]
        self.consts, self.const_base = consts, n_fixed + len(attrs)
        self.out_base = out_base = self.const_base + len(consts)
        self.arg_is_tensor = tuple(isinstance(a, Tensor) for a in args)
        base = {"out": out_base, "attr": self.attr_base, "const": self.const_base}

        def resolve(s):
            return s if isinstance(s, int) else base[s[0]] + s[1]

        self.ops = [self._op(cls, node, [resolve(s) for s in ins], params,
                             tuple((n, resolve(s)) for n, s in arr), out_base + k, out)
                    for k, (cls, node, ins, params, arr, out) in enumerate(raw)]
        self.root = out_base + root
        self.outputs = tuple(out_base + k for k in outputs)  # slots returned with the loss
        self._liveness()
        self.run = generate(self, _mismatch)
        self.guard = generate_guard(self, args, autocast_dtype())
        self.device = getattr(raw[0][5], "device", None) if type(raw[0][5]) is not np.ndarray else None

    def _symbolic_ops(self, tracer):
        """Each traced op as (cls, node, input slots, fixed parameters, array parameters' slots, output array):
        argument and parameter slots are numbers already; ("out", k), ("attr", j) and ("const", j) are placed
        once the numbers of buffers and constants are known."""
        slot_of_state = {id(t): self.nargs + s for s, t in enumerate(self.state)}
        consts, attrs, attr_index = [], [], {}

        def slot(src):
            kind, v = src
            if kind == "arg":
                return v
            if kind == "state":
                return slot_of_state[id(v)]
            if kind == "out":
                return ("out", v)
            if kind == "attr":  # a module's buffer (owner, attribute name), read afresh on every replay
                key = (id(v[0]), v[1])
                if key not in attr_index:
                    attr_index[key] = len(attrs)
                    attrs.append(v)
                return ("attr", attr_index[key])
            consts.append(v)
            return ("const", len(consts) - 1)

        raw = []
        for cls, node, srcs, psrcs, out, _ in tracer.ops:
            ins = [slot(s) for s in srcs]
            params, arr = {}, []
            for name, (kind, v) in psrcs.items():
                if kind == "value":
                    params[name] = v
                else:
                    arr.append((name, slot((kind, v))))
            raw.append((cls, node, ins, params, arr, out))
        return raw, attrs, consts

    @staticmethod
    def _op(cls, node, ins, params, array_params, out, out_array) -> _Op:
        op = _Op()
        op.cls, op.ins, op.params, op.array_params, op.out = cls, tuple(ins), params, array_params, out
        op.check = getattr(cls, "capture_check", None)
        op.needs = node.needs_grad if node is not None else None
        # (position, slot, (shape, dtype)) of each input that takes a gradient
        op.edges = () if node is None else tuple(
            (j, s, m) for j, (s, n, m) in enumerate(zip(ins, node.needs_grad, node.in_meta)) if n)
        op.out_meta = (type(out_array), out_array.shape, out_array.dtype)
        op.live, op.finish = False, ()
        return op

    def _liveness(self) -> None:
        """Mark the ops a gradient reaches from the loss; give each leaf slot its last live consumer."""
        leaf_slots = {i for i in range(self.nargs) if self.arg_leaf[i]}
        leaf_slots.update(range(self.nargs, self.nargs + len(self.state)))
        needed = {self.root}
        finish: dict[int, int] = {}  # leaf slot -> index of the op after whose backward it is complete
        for k in range(len(self.ops) - 1, -1, -1):
            op = self.ops[k]
            if op.out not in needed or not op.edges:
                continue
            op.live = True
            for _, s, _ in op.edges:
                needed.add(s)
                if s in leaf_slots:
                    finish[s] = k  # walking backwards: the last write is the earliest consumer
        for s, k in finish.items():
            self.ops[k].finish += (s,)
        self.live = [op for op in reversed(self.ops) if op.live]

    @staticmethod
    def meta_of(a) -> tuple:
        """What a buffer must keep for the tape to stay valid: its array type, shape and dtype."""
        return (type(a), getattr(a, "shape", None), getattr(a, "dtype", None))

    def replay(self, args):
        if self.device is not None:
            with self.device:
                return self._replay(args)
        return self._replay(args)

    def _replay(self, args):
        for effect in self.effects:
            effect()
        callbacks: list = []
        engine._callback_stack.append(callbacks)
        try:
            loss, outputs = self.run(args)
        finally:
            engine._callback_stack.pop()
        for cb in callbacks:
            cb()
        if self.several:
            return (Tensor._make(loss, False, None), *(Tensor._make(a, False, None) for a in outputs))
        return Tensor._make(loss, False, None)


def _mismatch(op, out):
    if isinstance(out, np.generic):
        out = np.asarray(out)
    typ, shape, _ = op.out_meta
    if type(out) is not typ or out.shape != shape:
        raise CaptureError(
            f"captured step: op {op.cls.__name__} returned {type(out).__name__} {tuple(out.shape)} on replay, traced "
            f"{typ.__name__} {shape}: the loss function's ops depend on values; run it eagerly"
        )
    return out
