"""What code outside the tracer tells a captured step while it traces (capture.py): side effects to redo on
every replay, state a replay depends on, buffers and constants its ops read. Every function here does
nothing when this thread is not tracing. It imports nothing from dtrain (Function.apply and the ops import
it), so that ops and layers can call it without an import cycle."""

from __future__ import annotations

import threading

__all__ = ["CaptureError", "is_tracing", "note_buffers", "note_constant", "note_module_call", "replay_effect",
           "replay_guard"]


tracer = None  # the tracer of the step being traced (capture.py sets it); Function.apply reports each op to it


class CaptureError(RuntimeError):
    """A loss function (or one call of it) that a captured step cannot trace or replay faithfully."""


def _tracing():
    """The tracer of the step this thread is tracing, or None."""
    t = tracer
    if t is not None and t.thread == threading.get_ident():
        return t
    return None


def replay_effect(fn) -> None:
    """Make ``fn()`` run at the start of every replay of the step being traced (nothing when not tracing).

    For Python-side state a forward changes besides its ops, which a replay would otherwise skip:
    DistributedDataParallel counts the samples and arms its reducer this way.
    """
    t = _tracing()
    if t is not None:
        t.effects.append(fn)


def replay_guard(fn) -> None:
    """Make the step being traced valid only while ``fn()`` is true: a replay finding it false traces again.

    For Python-side state a forward decided on, which the recorded ops froze (a module's training flag).
    """
    t = _tracing()
    if t is not None:
        t.guards.append(fn)


def note_buffers(owner, *names: str) -> None:
    """During a trace: ``owner``'s attributes ``names`` are arrays its ops read and update in place (a batch
    norm's running statistics). A replay reads each attribute afresh, so a buffer replaced by
    ``load_state_dict`` is seen; a change of its shape or dtype traces again."""
    t = _tracing()
    if t is not None:
        for name in names:
            a = getattr(owner, name)
            if a is not None:
                t._mark(a, ("attr", (owner, name)))


def note_constant(array) -> None:
    """During a trace: ``array``, which a frontend made from shapes alone (a causal mask), may be reused as
    it is by every replay. Only for arrays that depend on nothing but the inputs' shapes and fixed arguments."""
    t = _tracing()
    if t is not None:
        t._mark(array, ("value", array))


def is_tracing() -> bool:
    """True while this thread traces a captured step (for Python-side state that a replay cannot reproduce)."""
    return _tracing() is not None


def note_module_call(module) -> None:
    """A module's ``__call__`` during a trace: its training flag is guarded; forward hooks are refused
    (they are Python a replay would not run) unless they declare themselves inert for now."""
    if tracer is None:  # the common case, on every module call: one global read
        return
    t = _tracing()
    if t is None:
        return
    for hook in (*module._forward_pre_hooks.values(), *module._forward_hooks.values()):
        # a hook that does nothing now, and says when (``hook.capture_inert() -> bool``), may be skipped by
        # replays for as long as it stays inert (the Trainer's activation monitor outside its recording steps)
        inert = getattr(hook, "capture_inert", None)
        if inert is None or not inert():
            raise CaptureError(f"captured step: module {type(module).__name__} has forward hooks, which a replay "
                               "would not run; remove them (or run this loss function eagerly)")
        replay_guard(inert)
    training = module.training
    replay_guard(lambda: module.training == training)
