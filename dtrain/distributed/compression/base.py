"""The compressor interface: a pure transform of one rank's dense vector into a payload and back, with
error-feedback memory and saveable state. A compressor never communicates: :mod:`.exchange` moves its
payloads over whichever all-reduce algorithm the user chose.

Error feedback (Seide et al. 2014; Karimireddy et al. 2019; GRACE's Memory): an EF compressor compresses
``p = x + memory[key]`` and keeps ``memory[key] = p - decompress(own payload)``, so what a step leaves out
is sent later; ``sent + new memory == input + old memory`` up to one rounding.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any, ClassVar

import numpy as np

from ...backend import get_array_module, is_float_dtype
from ...spec import boolean, integer, is_int, is_real, real

__all__ = ["CompressionError", "Compressor", "key_hash", "payload_nbytes"]


class CompressionError(ValueError):
    """A bad compression spec or parameter (the message names the spec and what was expected)."""


# ----------------------------------------------------------------------------------------------
# Spec values: dtrain.spec's typed parsers, framed with the compressor's own wording
# ----------------------------------------------------------------------------------------------

RATIO_EXPECTED = "RATIO must be a number in (0, 1]"
SEED_EXPECTED = "seed must be a non-negative integer"


def _framed(parse: Callable[[str], Any], what: str) -> Callable[[str], Any]:
    def framed(text: str):
        try:
            return parse(text)
        except ValueError:
            raise CompressionError(f"{what}, got {text!r}") from None

    return framed


def parse_int(what: str) -> Callable[[str], int]:
    """A spec-value parser of integers (range checks are the constructor's), raising ``"{what}, got '...'"``."""
    return _framed(integer(), what)


def parse_float(what: str) -> Callable[[str], float]:
    """A spec-value parser of numbers (nan and inf pass through to the constructor's range check)."""
    return _framed(lambda text: real()(text) if text.strip().lower() not in ("nan", "inf", "-inf")
                   else float(text), what)


def parse_bool(text: str) -> bool:
    """The ``ef=`` option: dtrain.spec's boolean parser."""
    return _framed(boolean, "ef must be 0 or 1 (true/false)")(text)


def check_ratio(name: str, ratio) -> Fraction:
    """The ratio as an exact fraction of its shortest decimal form (so ceil(0.07 * 100) is 7, not 8)."""
    if not is_real(ratio):
        raise CompressionError(f"{name} {RATIO_EXPECTED}, got {ratio!r}")
    if not 0 < float(ratio) <= 1:  # also rejects nan
        raise CompressionError(f"{name} {RATIO_EXPECTED}, got {float(ratio)!r}")
    return Fraction(repr(float(ratio)))


def check_int(name: str, what: str, value, lo: int, hi: int | None = None) -> int:
    """``int(value)`` for an integer (not a bool) in ``[lo, hi]``, else CompressionError ``"{name} {what}"``."""
    if not is_int(value) or value < lo or (hi is not None and value > hi):
        raise CompressionError(f"{name} {what}, got {value!r}")
    return int(value)


def fmt(x: float) -> str:
    """A number as the spec writes it (``0.01``, ``1``)."""
    r = repr(float(x))
    return r[:-2] if r.endswith(".0") else r


def key_hash(key: str) -> int:
    """A stable 32-bit hash of a key or parameter name (Python's hash() is salted per process)."""
    return zlib.crc32(str(key).encode("utf-8"))


def payload_nbytes(payload: Sequence[np.ndarray]) -> int:
    """The bytes a payload occupies (what one rank contributes to the exchange)."""
    return int(sum(np.asarray(a).nbytes for a in payload))


def finite_or_zero(mem: np.ndarray) -> np.ndarray:
    """The memory, reset to zeros when it holds a non-finite value (an overflowed fp16 step that the
    loss scaler skips must not poison every later step through the memory)."""
    if not np.isfinite(mem).all():
        mem[...] = 0
    return mem


# ----------------------------------------------------------------------------------------------
# The interface
# ----------------------------------------------------------------------------------------------


class Compressor:
    """Base class of the compressors: one subclass per method, registered by name in
    :data:`dtrain.distributed.compression.COMPRESSORS`.

    Class attributes describing the spec ``name[:ARGUMENT][:option=value...]``:
        name: the method ("topk").
        argument: ``(PLACEHOLDER, constructor keyword, parser, example)`` of the main parameter, or None.
        options: ``{option: (constructor keyword, parser)}`` of the optional ``key=value`` parameters.
        exchange: how :mod:`.exchange` moves payloads: "allreduce" (payloads are summable: the sum of
            the ranks' payloads decompresses to the sum of their vectors), "allgather" (every rank gets
            every payload and adds the decompressed vectors in rank order) or "rounds" (the compressor's
            own schedule of sums, :meth:`reduce_rounds`: PowerSGD).
        host_only: payloads are NumPy arrays (device buffers are an error naming the compressor).

    Instance attributes: ``spec`` (canonical: ``get(c.spec)`` builds an equal compressor),
    ``error_feedback`` (whether it keeps a residual memory per key) and ``allreduce_calls`` (how many
    ``dist.allreduce(..., compression=c)`` calls it served: the step number of the next).
    """

    name: ClassVar[str] = ""
    argument: ClassVar[tuple[str, str, Callable[[str], Any], str] | None] = None
    options: ClassVar[dict[str, tuple[str, Callable[[str], Any]]]] = {}
    exchange: ClassVar[str] = "allreduce"
    host_only: ClassVar[bool] = True

    def __init__(self) -> None:
        self.error_feedback = False
        self._memory: dict[str, np.ndarray] = {}
        self.spec = self.name
        self.allreduce_calls = 0  # calls of dist.allreduce(compression=self): their step number

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec!r}>"

    # -- the Horovod-style pair ----------------------------------------------------------------

    def compress(self, key: str, x: np.ndarray, step: int = 0, *, rank: int = 0) -> tuple[tuple[np.ndarray, ...], Any]:
        """Compress this rank's ``x`` for ``key`` at ``step``: ``(payload arrays, ctx)``.

        With error feedback it compresses ``x + memory(key)`` and updates the memory. ``ctx`` holds what
        decompression needs besides the payload (shape, dtype, shared indices) and is the same on every
        rank, so it also decompresses the other ranks' payloads. ``rank`` seeds per-rank randomness (QSGD).
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement compress")

    def decompress(self, payload: Sequence[np.ndarray], ctx: Any) -> np.ndarray:
        """One rank's payload back to a dense array of the compressed ``x``'s shape and dtype."""
        raise NotImplementedError(f"{type(self).__name__} does not implement decompress")

    def accumulate(self, out: np.ndarray, payload, ctx, first: bool) -> None:
        """out (flat) += one rank's decompressed payload (``=`` for the first rank); the all-gather exchange
        calls it for every rank's payload in rank order."""
        dense = self.decompress(payload, ctx).reshape(-1)
        if first:
            out[...] = dense
        else:
            out += dense

    def reduce_rounds(self, key: str, segments, flat, step: int, total: Callable) -> None:
        """For ``exchange = "rounds"``: replace ``flat`` with the estimated sum over ranks, calling
        ``total(array)`` (an in-place sum over the ranks) as the method's schedule requires."""
        raise NotImplementedError(f"{type(self).__name__} has no rounds of its own (exchange {self.exchange!r})")

    # -- error-feedback memory -----------------------------------------------------------------

    def memory(self, key: str) -> np.ndarray | None:
        """The current error-feedback residual for ``key`` (None when there is none yet, or no EF)."""
        return self._memory.get(key)

    def with_memory(self, key: str, x: np.ndarray) -> np.ndarray:
        """``x + memory[key]`` as a new array the caller owns (with EF), else ``x`` itself."""
        if not self.error_feedback:
            return x
        mem = self._memory.get(key)
        if mem is None:
            return x.copy()
        if mem.shape != x.shape:
            raise CompressionError(f"{self.spec}: the error-feedback memory for {key!r} has shape {mem.shape} but "
                                   f"the input has shape {x.shape}; a key must always name the same buffer")
        return np.add(x, mem, dtype=x.dtype)

    def set_memory(self, key: str, mem: np.ndarray) -> None:
        self._memory[key] = finite_or_zero(mem)

    # -- state ---------------------------------------------------------------------------------

    # state_dict prefix -> the attribute holding that dict of arrays
    _STATE: ClassVar[dict[str, str]] = {"memory": "_memory"}

    def state_dict(self) -> dict[str, Any]:
        """``{"spec": spec, "memory/<key>": array, ...}``: arrays and strings only (copies)."""
        state: dict[str, Any] = {"spec": self.spec}
        for prefix, attr in self._STATE.items():
            for k, m in getattr(self, attr).items():
                state[f"{prefix}/{k}"] = m.copy()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace this compressor's state with ``state`` (from :meth:`state_dict`, possibly via npz)."""
        entries = self._check_state(state)
        for prefix, attr in self._STATE.items():
            setattr(self, attr, {k: np.array(v, copy=True) for k, v in entries.get(prefix, {}).items()})

    def _check_state(self, state: dict[str, Any]) -> dict[str, dict[str, np.ndarray]]:
        if not isinstance(state, dict):
            raise CompressionError(f"{self.spec}: load_state_dict expects a dict, got {type(state).__name__}")
        spec = state.get("spec")
        if spec is not None:
            spec = str(spec.item() if isinstance(spec, np.ndarray) else spec)
            method = spec.strip().lower().split(":")[0]
            if method != self.name:
                raise CompressionError(f"{self.spec}: the state was saved by compressor {spec!r}, not {self.name}")
        entries: dict[str, dict[str, np.ndarray]] = {}
        for k, v in state.items():
            if k == "spec":
                continue
            prefix, sep, rest = k.partition("/")
            if not sep or prefix not in self._STATE or not isinstance(v, np.ndarray):
                expected = ", ".join(f"'{p}/<key>'" for p in self._STATE)
                raise CompressionError(f"{self.spec}: unexpected state entry {k!r}: expected 'spec' and arrays "
                                       f"named {expected}")
            entries.setdefault(prefix, {})[rest] = v
        return entries


def check_reduce_args(c: Compressor, key, segments, flat, step) -> None:
    """The arguments of a bucket's reduction (raised on every rank alike, before any communication)."""
    xp = get_array_module(flat)
    if c.host_only and xp is not np:
        raise TypeError(f"{c.spec}.reduce: flat must be a NumPy array (compression {c.spec!r} runs on host "
                        f"arrays), got {type(flat).__name__}")
    if not isinstance(flat, xp.ndarray):
        raise TypeError(f"{c.spec}.reduce: flat must be a NumPy array, got {type(flat).__name__}")
    if flat.ndim != 1 or not flat.flags.c_contiguous or not flat.flags.writeable:
        raise ValueError(f"{c.spec}.reduce: flat must be a writeable contiguous 1-D array, got shape {flat.shape}")
    if not is_float_dtype(flat.dtype):
        raise ValueError(f"{c.spec}.reduce: flat must be a floating array, got dtype {flat.dtype}")
    if not is_int(step) or step < 0:
        raise ValueError(f"{c.spec}.reduce: step must be a non-negative integer, got {step!r}")
    if not isinstance(key, str):
        raise TypeError(f"{c.spec}.reduce: key must be a str, got {type(key).__name__}")
    covered = sum(int(np.prod(a.shape)) for _, a in segments)
    if covered != flat.size:
        raise ValueError(f"{c.spec}.reduce: the segments of {key!r} cover {covered} elements but flat has "
                         f"{flat.size}")
