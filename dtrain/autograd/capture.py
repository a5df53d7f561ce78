"""Captured training steps: trace a loss function once, then replay its ops without the eager machinery.

``step = capture(loss_fn)`` returns a callable; ``step(*args)`` does what

    loss = loss_fn(*args); loss.backward(); return loss.detach()

does, bit for bit. The first call with a given signature runs exactly that, eagerly, while recording
every op (its Function class, parameters and where each input comes from). Later calls with the
same signature replay the record as generated straight-line code (capture_tape.py, capture_codegen.py):
each op's ``forward`` in order, then each ``backward`` in the eager engine's order, with gradients
handed between ops through local variables. No Tensor objects, graph edges, dependency counts or
frontend argument checks are built per op, which is most of an eager step's cost on a small model
(docs/autograd.md, "Captured steps").

What is replayed, and what is guarded
    * Arguments: tensors and arrays (their data read each call; shape, dtype, array type and
      ``requires_grad`` are the signature), other values (part of the signature by equality).
    * Parameters: leaf tensors with ``requires_grad=True`` that ``loss_fn`` reads (a model's
      weights). Their current ``.data`` is read each call, so optimizer updates are seen; a change
      of shape, dtype or ``requires_grad`` makes the step trace again.
    * Grad mode and the autocast dtype are part of the signature; each module called while tracing
      guards its training flag (``model.eval()`` traces, or reuses, a tape of its own) and refuses
      forward hooks; buffers a module declares (``note_buffers``: BatchNorm's running statistics)
      are read afresh on every replay and updated in place there, as eagerly.
    * Only ops that declare ``capturable = True`` may appear: ops whose frontend decides only
      from shapes, dtypes and fixed arguments, or which re-decide value-dependent choices in
      ``capture_check`` (cross-entropy re-checks its class indices each call, raising the eager
      IndexError). Any other op, a non-parameter tensor that is not an argument, a hook on an
      intermediate tensor or a forward-mode tangent stops the trace with a CaptureError.
    * Each op's output must have the traced array type and shape, or the replay raises.

What is not re-run is the Python code of ``loss_fn`` itself: control flow that depends on values
(``if loss > 1``), on attributes other than a module's training flag, or on globals is frozen as
traced, as with any trace, and so are numbers it computes from data. Code whose side effects must
happen on every call registers them with ``replay_effect`` while it is traced (DistributedDataParallel's
sample count and BatchNorm's batch count do); state it decided on, with ``replay_guard``.

Leaf gradients are delivered as in ``backward()``: hooks fire once each leaf's gradient is complete,
and callbacks queued from them run at the end, so DistributedDataParallel works unchanged.
"""

from __future__ import annotations

import threading
from collections import deque

import numpy as np

from . import capture_hooks, function
from .autocast import autocast_dtype
from .capture_hooks import (
    CaptureError,
    is_tracing,
    note_buffers,
    note_constant,
    note_module_call,
    replay_effect,
    replay_guard,
)
from .capture_tape import _Tape
from .tensor import Tensor

__all__ = ["CaptureError", "CapturedStep", "capture", "is_tracing", "note_buffers", "note_constant", "note_module_call",
           "replay_effect", "replay_guard"]


def capture(fn, max_traces: int = 8, before_backward=None) -> CapturedStep:
    """Wrap ``fn(*args) -> scalar loss Tensor`` as a training step that traces once and replays.

    ``fn`` may also return ``(loss, *outputs)`` (tensors its ops computed, such as the logits for an
    accuracy count): the step then returns them too, detached. ``before_backward(loss_array)``, if given,
    runs between the forward and the backward of every call (the Trainer sends its votes there).

    ``max_traces`` bounds how many tapes (one per signature and guard state) are kept; the oldest is
    dropped past it. See the module docstring for what is guarded.
    """
    if not callable(fn):
        raise TypeError(f"capture: expected a callable loss function, got {type(fn).__name__}")
    if int(max_traces) < 1:
        raise ValueError(f"capture: max_traces must be >= 1, got {max_traces}")
    if before_backward is not None and not callable(before_backward):
        raise TypeError(f"capture: before_backward must be callable, got {type(before_backward).__name__}")
    return CapturedStep(fn, int(max_traces), before_backward)


class CapturedStep:
    """``step(*args)``: forward and backward of the captured loss function; returns the loss, detached."""

    def __init__(self, fn, max_traces: int, before_backward=None):
        self.fn = fn
        self.before_backward = before_backward
        self.max_traces = max_traces
        self.traces = 0  # how many times a signature was traced (eagerly)
        # signature -> its tapes (several when guards differ: train and eval), and all tapes oldest first
        self._tapes: dict[tuple, list] = {}
        self._order: deque = deque()
        self._last = None  # the tape replayed (or traced) last: its generated guard is tried first

    def __call__(self, *args):
        if not function._grad_mode.enabled:
            raise CaptureError("a captured step runs backward: call it with gradients enabled (not in no_grad)")
        last = self._last
        if last is not None and last.guard(args):  # the same step again
            return last.replay(args)
        key = _signature(args)
        for tape in self._tapes.get(key, ()):
            if tape.guard(args):  # train and eval tapes share a signature; their guards tell them apart
                self._last = tape
                return tape.replay(args)
        loss, tape = _trace(self.fn, args, self.before_backward)
        self._last = tape
        self.traces += 1
        self._tapes.setdefault(key, []).insert(0, tape)
        self._order.append((key, tape))
        while len(self._order) > self.max_traces:
            old_key, old = self._order.popleft()
            kept = self._tapes[old_key]
            kept.remove(old)
            if not kept:
                del self._tapes[old_key]
        return loss


def _signature(args) -> tuple:
    sig = [autocast_dtype()]
    for i, a in enumerate(args):
        if isinstance(a, Tensor):
            if a._tangent is not None:
                raise CaptureError(f"captured step: argument {i} carries a forward-mode tangent; run it eagerly")
            d = a.data
            typ = type(d)
            sig.append((typ, d.shape, d.dtype, a._requires_grad, a._node is None,
                        None if typ is np.ndarray else getattr(d, "device", None)))
        elif hasattr(a, "shape") and hasattr(a, "dtype") and not isinstance(a, np.generic):
            sig.append((type(a), a.shape, a.dtype, _device(a)))
        else:
            try:
                hash(a)
            except TypeError:
                raise CaptureError(
                    f"captured step: argument {i} ({type(a).__name__}) is neither a tensor, an array nor a "
                    "hashable value: pass arrays and tensors, and fixed options as plain values"
                ) from None
            sig.append(("value", type(a), a))
    return tuple(sig)


def _device(a):
    return None if type(a) is np.ndarray else getattr(a, "device", None)


class _Tracer:
    """Records each op ``Function.apply`` runs on this thread while ``loss_fn`` executes."""

    def __init__(self, args):
        self.thread = threading.get_ident()
        self.ops = []  # (cls, fn or None, input sources, param sources, out array, out tensor)
        self.keep = []  # every array and tensor classified by id stays alive, so ids are not reused
        self.where: dict[int, tuple] = {}  # id(tensor or array) -> ("arg", i) | ("out", k)
        self.state: dict[int, Tensor] = {}  # parameters read by reference, by id
        self.effects = []  # replay_effect() callables, run before each replay
        self.guards = []  # replay_guard() callables, all true for a replay to be valid
        for i, a in enumerate(args):
            if isinstance(a, Tensor):
                self._mark(a, ("arg", i))
                self._mark(a.data, ("arg", i))
            elif hasattr(a, "shape") and not isinstance(a, np.generic):
                self._mark(a, ("arg", i))

        seen: dict[int, int] = {}
        for i, a in enumerate(args):  # a replay reads each argument separately: the trace may not merge two
            arrays = (a,) if hasattr(a, "shape") and not isinstance(a, np.generic) else ()
            for obj in ((a, a.data) if isinstance(a, Tensor) else arrays):
                j = seen.setdefault(id(obj), i)
                if j != i:
                    raise CaptureError(f"captured step: arguments {j} and {i} are the same array; pass distinct "
                                       "arrays (or pass it once)")

    def _mark(self, obj, src) -> None:
        self.keep.append(obj)
        self.where.setdefault(id(obj), src)

    def record(self, cls, fn, inputs, arrays, params, result) -> None:
        if threading.get_ident() != self.thread:
            return
        if not getattr(cls, "capturable", False):
            raise CaptureError(
                f"captured step: op {cls.__name__} cannot be replayed (its frontend makes choices a replay would "
                "not re-check); run without capture, or give the op capturable = True after review"
            )
        k = len(self.ops)
        srcs = tuple(self._source(cls, j, t, a) for j, (t, a) in enumerate(zip(inputs, arrays)))
        psrcs = {name: self._param_source(cls, name, v) for name, v in params.items()}
        node = result._node if result._node is fn else None
        self.ops.append((cls, node, srcs, psrcs, result.data, result))
        self._mark(result, ("out", k))
        self._mark(result.data, ("out", k))

    def _source(self, cls, j: int, t, a) -> tuple:
        if isinstance(t, Tensor):
            if t._tangent is not None:
                raise CaptureError(f"captured step: op {cls.__name__} got a forward-mode tangent; run it eagerly")
            src = self.where.get(id(t))
            if src is not None:
                return src
            if t._requires_grad and t._node is None:
                self.state[id(t)] = t
                return ("state", t)
            src = self.where.get(id(a))  # e.g. a detached view of an op's output: the same array
            if src is not None:
                return src
            if a.ndim == 0 and not t._requires_grad:  # a number the frontend made a tensor (x * 2): a constant
                return ("value", a)
            raise CaptureError(
                f"captured step: input {j} of op {cls.__name__} (shape {tuple(a.shape)}) is a tensor that is neither "
                "an argument of the step, nor computed by a captured op, nor a parameter (a leaf with "
                "requires_grad=True); pass it to the step as an argument"
            )
        return self._array_or_value(cls, f"input {j}", a)

    def _param_source(self, cls, name: str, v) -> tuple:
        return self._array_or_value(cls, f"argument {name!r}", v)

    def _array_or_value(self, cls, what: str, v) -> tuple:
        if hasattr(v, "shape") and hasattr(v, "dtype") and not isinstance(v, np.generic):
            src = self.where.get(id(v))
            if src is None:
                for t in self.state.values():
                    if t.data is v:
                        return ("state", t)
                raise CaptureError(
                    f"captured step: {what} of op {cls.__name__} is an array (shape {tuple(v.shape)}) that is not an "
                    "argument's data nor a captured op's output (its frontend converted or derived it); pass it "
                    "already in the form the op takes (e.g. integer class indices as int64)"
                )
            return src
        if isinstance(v, (tuple, list, dict)) and _holds_array(v):
            raise CaptureError(f"captured step: {what} of op {cls.__name__} holds an array inside a "
                               f"{type(v).__name__}, which a replay would reuse as traced; run without capture")
        return ("value", v)


def _holds_array(v) -> bool:
    """Whether a parameter value nests an array (a replay freezes such containers as they were traced)."""
    if isinstance(v, dict):
        v = tuple(v.values())
    if isinstance(v, (tuple, list)):
        return any(_holds_array(x) for x in v)
    return hasattr(v, "shape") and hasattr(v, "dtype") and not isinstance(v, np.generic)


def _trace(fn, args, before_backward):
    """Run ``fn`` eagerly under a tracer, then its backward; return (what the step returns, replayable tape)."""
    tracer = _Tracer(args)
    if capture_hooks.tracer is not None:
        raise CaptureError("captured step: a captured loss function may not call another captured step")
    capture_hooks.tracer = tracer
    try:
        result = fn(*args)
    finally:
        capture_hooks.tracer = None
    several = isinstance(result, tuple)
    loss, *outputs = result if several else (result,)
    root = _check_loss(loss, tracer)
    slots = [_output_op(t, i, tracer) for i, t in enumerate(outputs, 1)]
    if before_backward is not None:
        before_backward(loss.data)
    loss.backward()
    tape = _Tape(tracer, args, root, slots, several, before_backward)
    detached = tuple(Tensor._make(t.data, False, None) for t in (loss, *outputs))
    return (detached if several else detached[0]), tape


def _output_op(t, i: int, tracer: _Tracer) -> int:
    """The op that made output ``i`` (after the loss) of the loss function."""
    src = tracer.where.get(id(t)) if isinstance(t, Tensor) else None
    if src is None or src[0] != "out":
        raise CaptureError(f"captured step: output {i} of the loss function must be a tensor its ops computed, got "
                           f"{type(t).__name__}")
    return src[1]


def _check_loss(loss, tracer: _Tracer) -> int:
    """The index of the op that made the loss, after checking the trace can be replayed."""
    if not isinstance(loss, Tensor):
        raise CaptureError(f"captured step: the loss function must return a Tensor, got {type(loss).__name__}")
    if loss.data.size != 1:
        raise CaptureError(f"captured step: the loss must have one element, got shape {tuple(loss.shape)}")
    src = tracer.where.get(id(loss))
    if src is None or src[0] != "out" or loss._node is None:
        raise CaptureError(
            "captured step: the loss must be computed by the loss function's ops and require grad "
            "(it must depend on a parameter or an argument with requires_grad=True)"
        )
    for cls, node, *_ in tracer.ops:
        if node is not None and (node.hooks or node.retain is not None):
            raise CaptureError(
                f"captured step: a hook or retain_grad() on the output of op {cls.__name__} would not run on replay"
            )
    return src[1]

