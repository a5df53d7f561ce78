"""Where the training loop is, as plain data: saved in checkpoints, so a resumed run continues exactly.

A checkpoint is a file a user names, so what comes back from one is validated field by field before the
loop sees it (:func:`check_saved_state`, :meth:`TrainState.from_json`, :meth:`TrainState.check_fits`,
:func:`check_rng_states`): a wrong type, a negative or absurd count, or counts that contradict each other
is a ValueError naming the source, the field, the value and what was expected, never a TypeError deep in
the loop or a run that silently trains nothing.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field, fields

import numpy as np

__all__ = ["TrainState", "check_rng_states", "check_saved_state"]

_MAX_COUNT = 2**63 - 1  # every count is a 64-bit integer somewhere (NumPy, MPI)
_MAX_WORLD = 2**31 - 1  # MPI ranks are C ints
# The top-level entries of a saved state (Trainer.state_dict) and the JSON types they must have.
_LAYOUT = (("model", dict, "an object"), ("optimizer", dict, "an object"), ("trainer", dict, "an object"),
           ("config", dict, "an object"), ("scheduler", (dict, type(None)), "an object or null"),
           ("rng", list, "a list"), ("compression", list, "a list"))
_COUNTS = ("epoch", "batch", "step", "seen", "samples", "bad_epochs", "skipped_steps", "bytes_at_epoch_start",
           "step_at_epoch_start")
# Metrics record fields with a known type (others, e.g. the monitor's, are free-form JSON).
_RECORD_COUNTS = ("epoch", "step", "bytes_sent", "bytes_uncompressed")
_RECORD_NUMBERS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "samples_per_s", "bytes_per_step",
                   "compression_ratio", "lr", "grad_norm", "weight_norm")


def _short(value) -> str:
    """``repr(value)``, cut to one readable piece of an error line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(v) -> bool:
    """A Python or NumPy integer (a state from ``Trainer.state_dict()`` may hold NumPy scalars), not a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def _check_count(where: str, v) -> None:
    if not _is_int(v) or v < 0:
        raise ValueError(f"{where} must be a non-negative integer, got {_short(v)}")
    if v > _MAX_COUNT:
        raise ValueError(f"{where} must be a non-negative integer below 2**63, got {_short(v)}")


def _check(where: str, ok: bool, value, expected: str) -> None:
    if not ok:
        raise ValueError(f"{where} must be {expected}, got {_short(value)}")


@dataclass
class TrainState:
    """Where the loop is: everything needed (with the model/optimizer/RNG state) to resume exactly."""

    epoch: int = 0  # epochs completed
    batch: int = 0  # batches completed within the current epoch
    step: int = 0  # optimizer steps taken
    loss_sum: float = 0.0  # this epoch so far, summed over samples (this rank)
    correct: float = 0.0
    seen: int = 0  # samples this rank trained on this epoch
    samples: int = 0  # samples trained on, all ranks, whole run
    train_time: float = 0.0  # seconds spent in training steps, whole run
    best: float | None = None
    bad_epochs: int = 0
    stopped_early: bool = False
    skipped_steps: int = 0  # steps skipped on every rank because the gradients were non-finite
    loss_scale: dict | None = None  # the loss scaler's state (filled in when a checkpoint is written)
    bytes_at_epoch_start: int = 0  # this rank's bytes sent for gradient sync before this epoch
    step_at_epoch_start: int = 0
    history: list = field(default_factory=list)  # metrics records
    grad_flow: list = field(default_factory=list)  # per-epoch layer gradient norms

    def to_json(self) -> dict:
        """A JSON-able copy (what a checkpoint stores)."""
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict, source: str = "the state dict") -> TrainState:
        """The state :meth:`to_json` returned, validated: ValueError naming ``source`` (e.g. "checkpoint
        PATH"), the field (``trainer.step``), its value and what was expected. Fields missing from an older
        file keep their defaults."""
        if not isinstance(d, dict):
            raise ValueError(f"{source}: the trainer state must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in d if k not in known)
        if unknown:
            raise ValueError(f"{source}: the trainer state has unknown field(s) {_short(unknown)}; expected only "
                             f"{', '.join(sorted(known))}")
        for name in _COUNTS:
            if name in d:
                _check_count(f"{source}: trainer.{name}", d[name])
        _check_scalars(d, f"{source}: trainer")
        _check_loss_scale(d.get("loss_scale"), f"{source}: trainer.loss_scale")
        _check_history(d.get("history", []), f"{source}: trainer.history")
        _check_grad_flow(d.get("grad_flow", []), f"{source}: trainer.grad_flow")
        state = cls(**d)
        state._check_consistent(source)
        return state

    def _check_consistent(self, source: str) -> None:
        """Counts that contradict each other: every completed epoch and every batch of this one is a step."""
        if self.epoch + self.batch > self.step:
            raise ValueError(f"{source}: trainer.epoch {self.epoch} and trainer.batch {self.batch} do not fit "
                             f"trainer.step {self.step}: every epoch takes at least one step, so epoch + batch "
                             f"<= step")
        for name in ("step_at_epoch_start", "skipped_steps"):
            if getattr(self, name) > self.step:
                raise ValueError(f"{source}: trainer.{name} is {getattr(self, name)}, more than trainer.step "
                                 f"{self.step}")

    def check_fits(self, epochs: int, batches_per_epoch: int, source: str) -> None:
        """ValueError naming ``source`` when this position lies past the end of a run of ``epochs`` epochs of
        ``batches_per_epoch`` batches (resuming it would train nothing, or fail in the data loader)."""
        if self.epoch > epochs:
            raise ValueError(f"{source}: trainer.epoch is {self.epoch}, past the end of this run (--epochs "
                             f"{epochs}); pass --epochs {self.epoch} or more to continue it")
        if self.batch > batches_per_epoch:
            raise ValueError(f"{source}: trainer.batch is {self.batch}, past the end of an epoch of this run "
                             f"({batches_per_epoch} batches per epoch)")


def _check_scalars(d: dict, where: str) -> None:
    """The fields that are not counts: sums, seconds, the best loss and the early-stop flag."""
    if "loss_sum" in d:
        _check(f"{where}.loss_sum", _is_number(d["loss_sum"]), d["loss_sum"], "a number")
    for name in ("correct", "train_time"):
        if name in d:
            v = d[name]
            _check(f"{where}.{name}", _is_number(v) and math.isfinite(v) and v >= 0, v, "a non-negative number")
    if d.get("best") is not None:
        _check(f"{where}.best", _is_number(d["best"]), d["best"], "a number or null")
    if "stopped_early" in d:
        _check(f"{where}.stopped_early", isinstance(d["stopped_early"], bool), d["stopped_early"], "true or false")


def _check_loss_scale(s, where: str) -> None:
    """None, or what LossScaler.state_dict() returns: {"scale": > 0, "good_steps": count, "backoffs": count}."""
    if s is None:
        return
    _check(where, isinstance(s, dict) and "scale" in s and "good_steps" in s, s,
           'null or {"scale": number, "good_steps": integer, "backoffs": integer}')
    unknown = sorted(str(k) for k in s if k not in ("scale", "good_steps", "backoffs"))
    if unknown:
        raise ValueError(f"{where} has unknown field(s) {_short(unknown)}; expected scale, good_steps, backoffs")
    scale = s["scale"]
    _check(f"{where}.scale", _is_number(scale) and math.isfinite(scale) and scale > 0, scale,
           "a positive finite number")
    _check_count(f"{where}.good_steps", s["good_steps"])
    if "backoffs" in s:
        _check_count(f"{where}.backoffs", s["backoffs"])


def _check_history(history, where: str) -> None:
    """A list of metrics records: dicts whose known fields have their types (the reporter formats them)."""
    _check(where, isinstance(history, list), history, "a list of metrics records")
    for i, rec in enumerate(history):
        _check(f"{where}[{i}]", isinstance(rec, dict), rec, "a metrics record (a JSON object)")
        for key in _RECORD_COUNTS:
            if key in rec:
                _check_count(f"{where}[{i}].{key}", rec[key])
        for key in _RECORD_NUMBERS:
            if rec.get(key) is not None:
                _check(f"{where}[{i}].{key}", _is_number(rec[key]), rec[key], "a number or null")
        if "epoch_complete" in rec:
            _check(f"{where}[{i}].epoch_complete", isinstance(rec["epoch_complete"], bool), rec["epoch_complete"],
                   "true or false")


def _check_grad_flow(grad_flow, where: str) -> None:
    """A list of {layer label: gradient norm} dicts, one per epoch."""
    _check(where, isinstance(grad_flow, list), grad_flow, "a list of {layer: gradient norm} objects")
    for i, norms in enumerate(grad_flow):
        _check(f"{where}[{i}]", isinstance(norms, dict), norms, "a {layer: gradient norm} object")
        for layer, norm in norms.items():
            _check(f"{where}[{i}][{layer!r}]", _is_number(norm), norm, "a number")


def check_rng_states(states, source: str) -> None:
    """ValueError naming ``source`` unless ``states`` is a list of what ``Generator.get_state()`` returns:
    ``{"seed": count, "cpu": NumPy PCG64 state}`` (checked before NumPy sees it: it would raise
    OverflowError, or accept a state it then misreads)."""
    where = f"{source}: rng"
    _check(where, isinstance(states, list), states, "a list with one generator state per rank")
    for r, st in enumerate(states):
        at = f"{where}[{r}]"
        _check(at, isinstance(st, dict) and "seed" in st and "cpu" in st, st, 'a {"seed", "cpu"} object')
        _check_count(f"{at}.seed", st["seed"])
        cpu = st["cpu"]
        _check(f"{at}.cpu", isinstance(cpu, dict) and isinstance(cpu.get("state"), dict), cpu,
               "a NumPy PCG64 generator state")
        _check(f"{at}.cpu.bit_generator", cpu.get("bit_generator") == "PCG64", cpu.get("bit_generator"), "'PCG64'")
        for key in ("state", "inc"):
            v = cpu["state"].get(key)
            _check(f"{at}.cpu.state.{key}", _is_int(v) and 0 <= v < 2**128, v, "an integer in [0, 2**128)")
        v = cpu.get("has_uint32")
        _check(f"{at}.cpu.has_uint32", _is_int(v) and v in (0, 1), v, "0 or 1")
        v = cpu.get("uinteger")
        _check(f"{at}.cpu.uinteger", _is_int(v) and 0 <= v < 2**32, v, "an integer in [0, 2**32)")


def check_saved_state(state: dict, source: str) -> None:
    """ValueError naming ``source`` unless ``state`` (a ``Trainer.state_dict()`` read back from a file) has
    its entries of the right JSON types, a sane world size, per-rank compression states that are objects,
    and a valid trainer state (:meth:`TrainState.from_json`) and RNG states (:func:`check_rng_states`)."""
    for key, types, expected in _LAYOUT:
        if key in state and not isinstance(state[key], types):
            raise ValueError(f"{source}: {key} must be {expected}, got {_short(state[key])}")
    world = state.get("world_size", 1)
    _check(f"{source}: world_size", _is_int(world) and 1 <= world <= _MAX_WORLD, world, "a positive integer")
    for r, c in enumerate(state.get("compression", [])):
        _check(f"{source}: compression[{r}]", isinstance(c, dict), c, "an object (that rank's compression state)")
        if "step" in c:
            _check_count(f"{source}: compression[{r}].step", c["step"])
        if "compressor" in c:
            _check(f"{source}: compression[{r}].compressor", isinstance(c["compressor"], dict), c["compressor"],
                   "an object")
    _check_arrays(state, source)
    if "trainer" in state:
        TrainState.from_json(state["trainer"], source)
    check_rng_states(state.get("rng", []), source)


def _check_arrays(state: dict, source: str) -> None:
    """The model's entries are arrays; the optimizer's per-parameter states hold arrays and numbers only (what
    every dtrain optimizer writes: buffers and a step count), so no string reaches the update arithmetic."""
    for name, value in state.get("model", {}).items():
        _check(f"{source}: model[{name!r}]", isinstance(value, np.ndarray), value, "an array")
    optimizer = state.get("optimizer", {})
    per_param = optimizer.get("state", {})
    _check(f"{source}: optimizer.state", isinstance(per_param, dict), per_param, "an object of per-parameter states")
    for index, entry in per_param.items():
        _check(f"{source}: optimizer.state[{index}]", isinstance(entry, dict), entry, "an object")
        for key, value in entry.items():
            _check(f"{source}: optimizer.state[{index}].{key}", isinstance(value, np.ndarray) or _is_number(value),
                   value, "an array or a number")
    groups = optimizer.get("param_groups", [])
    _check(f"{source}: optimizer.param_groups", isinstance(groups, list) and all(isinstance(g, dict) for g in groups),
           groups, "a list of objects")
