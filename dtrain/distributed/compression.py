"""Gradient compression for data-parallel training: small strategy objects behind one interface.

    import dtrain.distributed.compression as compression
    c = compression.get("topk:0.01")              # or "none", "fp16", "bf16", "powersgd:2", "randomk:0.01",
                                                  #    "qsgd:127", "signsgd"; options: "powersgd:2:start=10"
    c.reduce(comm, "bucket0", segments, flat, step)   # flat <- (an estimate of) the sum over ranks, in place
    payload, ctx = c.compress("w", x, step)       # Horovod-style, one rank's view
    y = c.decompress(payload, ctx)
    state = c.state_dict(); c.load_state_dict(state)   # error-feedback memories, PowerSGD's Q

A :class:`Compressor` turns one rank's dense vector into a *payload* (a few small arrays) and back. What
travels through MPI is the payload, never the dense vector. Two ways of exchanging it:

* **all-reduce** (``exchange = "allreduce"``): the payload is linear — summing the ranks' payloads and
  decompressing gives the sum of the ranks' decompressed vectors. ``none``, ``fp16``/``bf16`` (the
  ring sums half words in float32), ``randomk`` (every rank picks the same coordinates from a shared
  seed) and PowerSGD (two all-reduces of low-rank factors) ride dtrain's ring all-reduce, whose result
  is bitwise identical on every rank.
* **all-gather** (``exchange = "allgather"``): ``topk``, ``qsgd`` and ``signsgd`` payloads are not
  summable; every rank gathers all payloads (packed into one byte buffer, one ring all-gather) and
  decompresses and adds them in rank order, so every rank computes the bitwise identical sum.

Error feedback (Seide et al. 2014; Karimireddy et al. 2019; GRACE's Memory): an EF compressor
compresses ``p = x + memory[key]`` and keeps ``memory[key] = p - decompress(own payload)``, so what a
step leaves out is sent later; ``sent + new memory == input + old memory`` up to one rounding. State
(memories, PowerSGD's Q) lives in the instance, keyed by bucket key (``topk``/``randomk``/``signsgd``)
or parameter name (PowerSGD), and ``state_dict()`` holds arrays and a spec string only. Random choices
(random-k's coordinates, QSGD's rounding, PowerSGD's initial Q) come from generators seeded by
(seed, step, key[, rank]), so runs are reproducible and resume bit for bit without saving RNG state.

A new compressor is one subclass (``name``, ``argument``/``options`` for its spec, ``compress``,
``decompress``) and one entry in :data:`COMPRESSORS`.

Arrays are NumPy arrays (CPU). Every rank must run the same NumPy: results are bitwise identical across
ranks because every rank performs the same element-wise operations on identical inputs (the low-rank
products that must agree are computed with ufuncs, not BLAS).
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any, ClassVar

import numpy as np

from ..backend import bfloat16
from .collectives import allgather, allreduce

__all__ = [
    "COMPRESSORS",
    "BF16Compressor",
    "CompressionError",
    "Compressor",
    "FP16Compressor",
    "NoCompression",
    "PowerSGDCompressor",
    "QSGDCompressor",
    "RandomKCompressor",
    "SignSGDCompressor",
    "TopKCompressor",
    "get",
    "payload_nbytes",
]


class CompressionError(ValueError):
    """A bad compression spec or parameter (the message names the spec and what was expected)."""


# ----------------------------------------------------------------------------------------------
# Parsing helpers (spec text -> constructor arguments)
# ----------------------------------------------------------------------------------------------

_INT_RE = re.compile(r"[+-]?\d+")


def _parse_int(what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not _INT_RE.fullmatch(text):
            raise CompressionError(f"{what}, got {text!r}")
        return int(text)

    return parse


def _parse_float(what: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            return float(text)
        except ValueError:
            raise CompressionError(f"{what}, got {text!r}") from None

    return parse


def _parse_bool(text: str) -> bool:
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise CompressionError(f"ef must be 0 or 1 (true/false), got {text!r}")


_RATIO_EXPECTED = "RATIO must be a number in (0, 1]"
_SEED_EXPECTED = "seed must be a non-negative integer"


def _check_ratio(name: str, ratio) -> Fraction:
    """The ratio as an exact fraction of its shortest decimal form (so ceil(0.07 * 100) is 7, not 8)."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float, np.integer, np.floating)):
        raise CompressionError(f"{name} {_RATIO_EXPECTED}, got {ratio!r}")
    if not 0 < float(ratio) <= 1:  # also rejects nan
        raise CompressionError(f"{name} {_RATIO_EXPECTED}, got {float(ratio)!r}")
    return Fraction(repr(float(ratio)))


def _check_int(name: str, what: str, value, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo or (
            hi is not None and value > hi):
        raise CompressionError(f"{name} {what}, got {value!r}")
    return int(value)


def _fmt(x: float) -> str:
    r = repr(float(x))
    return r[:-2] if r.endswith(".0") else r


def _key_hash(key: str) -> int:
    """A stable 32-bit hash of a key or parameter name (Python's hash() is salted per process)."""
    return zlib.crc32(str(key).encode("utf-8"))


def payload_nbytes(payload: Sequence[np.ndarray]) -> int:
    """The bytes a payload occupies (what one rank contributes to the exchange)."""
    return int(sum(np.asarray(a).nbytes for a in payload))


def _finite_or_zero(mem: np.ndarray) -> np.ndarray:
    # A non-finite input (e.g. an overflowed fp16 step the loss scaler skips) must not poison every
    # later step through the memory: the step's result is non-finite already, the memory starts over.
    if not np.isfinite(mem).all():
        mem[...] = 0
    return mem


# ----------------------------------------------------------------------------------------------
# The interface
# ----------------------------------------------------------------------------------------------


class Compressor:
    """Base class of the compressors: one subclass per method, registered by name in :data:`COMPRESSORS`.

    Class attributes describing the spec ``name[:ARGUMENT][:option=value...]``:
        name: the method ("topk").
        argument: ``(PLACEHOLDER, constructor keyword, parser, example)`` of the main parameter, or None.
        options: ``{option: (constructor keyword, parser)}`` of the optional ``key=value`` parameters.
        exchange: "allreduce" (payloads are summable) or "allgather".

    Instance attributes: ``spec`` (canonical: ``get(c.spec)`` builds an equal compressor) and
    ``error_feedback`` (whether it keeps a residual memory per key).
    """

    name: ClassVar[str] = ""
    argument: ClassVar[tuple[str, str, Callable[[str], Any], str] | None] = None
    options: ClassVar[dict[str, tuple[str, Callable[[str], Any]]]] = {}
    exchange: ClassVar[str] = "allreduce"

    def __init__(self) -> None:
        self.error_feedback = False
        self._memory: dict[str, np.ndarray] = {}
        self.spec = self.name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec!r}>"

    # -- the Horovod-style pair ----------------------------------------------------------------

    def compress(self, key: str, x: np.ndarray, step: int = 0, *, rank: int = 0) -> tuple[tuple[np.ndarray, ...], Any]:
        """Compress this rank's ``x`` for ``key`` at ``step``: ``(payload arrays, ctx)``.

        With error feedback it compresses ``x + memory(key)`` and updates the memory. ``ctx`` holds what
        decompression needs besides the payload (shape, dtype, shared indices) and is the same on every
        rank, so it also decompresses the other ranks' payloads. ``rank`` seeds per-rank randomness (QSGD).
        """
        raise NotImplementedError

    def decompress(self, payload: Sequence[np.ndarray], ctx: Any) -> np.ndarray:
        """One rank's payload back to a dense array of the compressed ``x``'s shape and dtype."""
        raise NotImplementedError

    # -- the collective ------------------------------------------------------------------------

    def reduce(self, comm, key: str, segments: list[tuple[str, np.ndarray]], flat: np.ndarray, step: int) -> None:
        """Replace ``flat`` in place with (an estimate of) the sum over all ranks of every rank's ``flat``.

        Args:
            comm: the dtrain Communicator to run the collectives on (synchronously).
            key: identifies the bucket (error-feedback memory is kept per key).
            segments: ``(parameter name, view of flat in the parameter's shape)`` in bucket order, covering
                ``flat`` exactly (PowerSGD uses the names and shapes).
            flat: the contiguous 1-D float buffer.
            step: the optimizer step (0, 1, ...), the same on every rank.

        Every rank issues the same collectives with the same sizes; the result is bitwise identical on
        every rank.
        """
        _check_reduce_args(self, key, segments, flat, step)
        payload, ctx = self.compress(key, flat, step, rank=comm.rank)
        if self.exchange == "allreduce":
            for a in payload:
                allreduce(a, op="sum", comm=comm)
            flat[...] = self.decompress(payload, ctx).reshape(-1)
            return
        for r, theirs in enumerate(_allgather_payloads(comm, payload)):
            self._accumulate(flat, theirs, ctx, first=r == 0)

    def _accumulate(self, out: np.ndarray, payload, ctx, first: bool) -> None:
        """out (flat) += one rank's decompressed payload (``=`` for the first rank)."""
        dense = self.decompress(payload, ctx).reshape(-1)
        if first:
            out[...] = dense
        else:
            out += dense

    # -- error-feedback memory -----------------------------------------------------------------

    def memory(self, key: str) -> np.ndarray | None:
        """The current error-feedback residual for ``key`` (None when there is none yet, or no EF)."""
        return self._memory.get(key)

    def _with_memory(self, key: str, x: np.ndarray) -> np.ndarray:
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

    def _set_memory(self, key: str, mem: np.ndarray) -> None:
        self._memory[key] = _finite_or_zero(mem)

    # -- state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """``{"spec": spec, "memory/<key>": array, ...}``: arrays and strings only (copies)."""
        state: dict[str, Any] = {"spec": self.spec}
        for k, m in self._memory.items():
            state[f"memory/{k}"] = m.copy()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace this compressor's state with ``state`` (from :meth:`state_dict`, possibly via npz)."""
        entries = self._check_state(state)
        self._memory = {k: np.array(v, copy=True) for k, v in entries.get("memory", {}).items()}

    _STATE_PREFIXES: ClassVar[tuple[str, ...]] = ("memory",)

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
            if not sep or prefix not in self._STATE_PREFIXES or not isinstance(v, np.ndarray):
                expected = ", ".join(f"'{p}/<key>'" for p in self._STATE_PREFIXES)
                raise CompressionError(f"{self.spec}: unexpected state entry {k!r}: expected 'spec' and arrays "
                                       f"named {expected}")
            entries.setdefault(prefix, {})[rest] = v
        return entries


def _check_reduce_args(c: Compressor, key, segments, flat, step) -> None:
    if not isinstance(flat, np.ndarray):
        raise TypeError(f"{c.spec}.reduce: flat must be a NumPy array, got {type(flat).__name__}")
    if flat.ndim != 1 or not flat.flags.c_contiguous or not flat.flags.writeable:
        raise ValueError(f"{c.spec}.reduce: flat must be a writeable contiguous 1-D array, got shape {flat.shape}")
    if flat.dtype.kind != "f" and flat.dtype != bfloat16:
        raise ValueError(f"{c.spec}.reduce: flat must be a floating array, got dtype {flat.dtype}")
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"{c.spec}.reduce: step must be a non-negative integer, got {step!r}")
    if not isinstance(key, str):
        raise TypeError(f"{c.spec}.reduce: key must be a str, got {type(key).__name__}")
    covered = sum(int(np.prod(a.shape)) for _, a in segments)
    if covered != flat.size:
        raise ValueError(f"{c.spec}.reduce: the segments of {key!r} cover {covered} elements but flat has "
                         f"{flat.size}")


def _allgather_payloads(comm, payload: Sequence[np.ndarray]) -> list[tuple[np.ndarray, ...]]:
    """All-gather every rank's payload (the same array sizes and dtypes on every rank): one list per rank.

    Several arrays are packed into one byte buffer (widest dtype first, so every array stays aligned)
    and gathered by one ring all-gather.
    """
    arrays = [np.ascontiguousarray(a).reshape(-1) for a in payload]
    n = comm.size
    if len(arrays) == 1:
        a = arrays[0]
        out = allgather(a, comm=comm)
        return [(out[r * a.size:(r + 1) * a.size],) for r in range(n)]
    order = sorted(range(len(arrays)), key=lambda i: -arrays[i].dtype.itemsize)
    align = max(a.dtype.itemsize for a in arrays)
    offsets = [0] * len(arrays)
    pos = 0
    for i in order:
        offsets[i] = pos
        pos += arrays[i].nbytes
    block = -(-pos // align) * align
    buf = np.zeros(block, np.uint8)
    for i, a in enumerate(arrays):
        buf[offsets[i]:offsets[i] + a.nbytes] = a.view(np.uint8)
    out = allgather(buf, comm=comm)
    gathered = []
    for r in range(n):
        mine = out[r * block:(r + 1) * block]
        gathered.append(tuple(mine[offsets[i]:offsets[i] + a.nbytes].view(a.dtype) for i, a in enumerate(arrays)))
    return gathered


# ----------------------------------------------------------------------------------------------
# none, fp16, bf16
# ----------------------------------------------------------------------------------------------


class NoCompression(Compressor):
    """``none``: the plain ring all-reduce (sum) of the buffer; the payload is the array itself."""

    name = "none"

    def compress(self, key, x, step=0, *, rank=0):
        return (x,), (x.shape, x.dtype)

    def decompress(self, payload, ctx):
        return payload[0].reshape(ctx[0])

    def reduce(self, comm, key, segments, flat, step):
        _check_reduce_args(self, key, segments, flat, step)
        allreduce(flat, op="sum", comm=comm)


class FP16Compressor(Compressor):
    """``fp16``: cast to float16, all-reduce in float16 (the ring adds in float32), cast back.

    Values beyond float16's range (65504) become inf; use bf16 (float32's range) when that can happen.
    """

    name = "fp16"
    wire: ClassVar[Any] = np.dtype(np.float16)

    def compress(self, key, x, step=0, *, rank=0):
        with np.errstate(over="ignore"):
            half = np.ascontiguousarray(x, dtype=self.wire).reshape(-1)
        if np.shares_memory(half, x):  # already half: never all-reduce the caller's array as the payload
            half = half.copy()
        return (half,), (x.shape, x.dtype)

    def decompress(self, payload, ctx):
        return payload[0].astype(ctx[1]).reshape(ctx[0])


class BF16Compressor(FP16Compressor):
    """``bf16``: as fp16 with bfloat16 (float32's exponent range, 8-bit significand); needs ml_dtypes."""

    name = "bf16"
    wire = bfloat16

    def __init__(self) -> None:
        if bfloat16 is None:
            raise CompressionError("bf16 compression needs the ml_dtypes package (bfloat16 for NumPy): "
                                   "pip install ml_dtypes")
        super().__init__()


# ----------------------------------------------------------------------------------------------
# Sparsifiers: top-k and random-k
# ----------------------------------------------------------------------------------------------


class _Sparsifier(Compressor):
    argument = ("RATIO", "ratio", _parse_float(_RATIO_EXPECTED), "0.01")

    def __init__(self, ratio: float, ef: bool = True) -> None:
        super().__init__()
        self._ratio = _check_ratio(self.name, ratio)
        self.ratio = float(ratio)
        self.error_feedback = bool(ef)
        self.spec = f"{self.name}:{_fmt(self.ratio)}" + ("" if self.error_feedback else ":ef=0")

    def k(self, d: int) -> int:
        """The number of coordinates kept of a ``d``-element vector: ``max(1, ceil(ratio * d))``."""
        return min(d, max(1, math.ceil(self._ratio * d)))


class TopKCompressor(_Sparsifier):
    """``topk:RATIO``: the k largest-magnitude coordinates of ``x (+ memory)`` as (int32 index, value) pairs.

    Exchanged by all-gather; every rank scatter-adds all ranks' pairs in rank order. With error feedback
    (the default; ``topk:RATIO:ef=0`` turns it off) the coordinates not sent stay in the memory.
    """

    name = "topk"
    exchange = "allgather"
    options: ClassVar[dict] = {"ef": ("ef", _parse_bool)}

    def compress(self, key, x, step=0, *, rank=0):
        flat = x.reshape(-1)
        if flat.size >= 2**31:
            raise CompressionError(f"{self.spec}: a buffer of {flat.size} elements needs indices beyond int32; "
                                   "use smaller buckets")
        p = self._with_memory(key, flat)
        d = p.size
        k = self.k(d)
        if k >= d:
            idx = np.arange(d, dtype=np.int32)
        else:
            idx = np.argpartition(np.abs(p), d - k)[d - k:].astype(np.int32)
            idx.sort()
        values = p[idx]
        if self.error_feedback:
            p[idx] = 0  # p is ours: it becomes the memory, minus what was sent
            self._set_memory(key, p)
        return (idx, values), (x.shape, x.dtype)

    def decompress(self, payload, ctx):
        idx, values = payload
        shape, dtype = ctx
        out = np.zeros(int(np.prod(shape)), dtype=dtype)
        out[idx] = values
        return out.reshape(shape)

    def _accumulate(self, out, payload, ctx, first):
        idx, values = payload
        if first:
            out[...] = 0
        out[idx] += values  # a rank's indices are distinct, so this is a plain scatter-add


class RandomKCompressor(_Sparsifier):
    """``randomk:RATIO``: k coordinates drawn from a generator seeded by (seed, step, key).

    Every rank draws the same coordinates, so only the k values travel, summed by the ring all-reduce.
    With error feedback (default) the values are unscaled and the rest stays in the memory; without
    (``randomk:RATIO:ef=0``) they are scaled by d/k, so decompress(compress(x)) is unbiased.
    """

    name = "randomk"
    options: ClassVar[dict] = {"ef": ("ef", _parse_bool), "seed": ("seed", _parse_int(_SEED_EXPECTED))}

    def __init__(self, ratio: float, ef: bool = True, seed: int = 0) -> None:
        super().__init__(ratio, ef)
        self.seed = _check_int(self.name, _SEED_EXPECTED, seed, 0)
        if self.seed:
            self.spec += f":seed={self.seed}"

    def indices(self, key: str, d: int, step: int) -> np.ndarray:
        """The sorted coordinates chosen for ``key`` at ``step`` (identical on every rank)."""
        k = self.k(d)
        if k >= d:
            return np.arange(d, dtype=np.int64)
        rng = np.random.default_rng([self.seed, int(step), _key_hash(key)])
        idx = rng.choice(d, size=k, replace=False, shuffle=False)
        idx.sort()
        return idx

    def compress(self, key, x, step=0, *, rank=0):
        flat = x.reshape(-1)
        p = self._with_memory(key, flat)
        d = p.size
        idx = self.indices(key, d, step)
        values = p[idx]
        if self.error_feedback:
            p[idx] = 0
            self._set_memory(key, p)
        else:
            values *= d / idx.size
        return (values,), (x.shape, x.dtype, idx)

    def decompress(self, payload, ctx):
        shape, dtype, idx = ctx
        out = np.zeros(int(np.prod(shape)), dtype=dtype)
        out[idx] = payload[0]
        return out.reshape(shape)


# ----------------------------------------------------------------------------------------------
# Quantizers: QSGD and EF-signSGD
# ----------------------------------------------------------------------------------------------


_LE64 = np.dtype("<u8")


def _pack_uint(v: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned values < 2**bits (uint8) into ``ceil(v.size * bits / 8)`` bytes, little-endian bit order.

    Each group of 8 values becomes one 64-bit word (value j at bit ``bits * j``) of which the low ``bits``
    bytes are kept: the same stream as ``np.packbits`` of the values' bits, without a byte per bit.
    """
    n = v.size
    words = np.zeros(-(-n // 8) * 8, _LE64)
    words[:n] = v
    words = words.reshape(-1, 8)
    words <<= np.arange(8, dtype=_LE64) * np.uint64(bits)
    packed = np.bitwise_or.reduce(words, axis=1).view(np.uint8).reshape(-1, 8)[:, :bits]
    return packed.reshape(-1)[: -(-n * bits // 8)].copy()


def _unpack_uint(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The inverse of :func:`_pack_uint`: ``count`` uint8 values."""
    groups = -(-count // 8)
    full = np.zeros(groups * bits, np.uint8)
    full[: packed.size] = packed
    buf = np.zeros((groups, 8), np.uint8)
    buf[:, :bits] = full.reshape(groups, bits)
    values = buf.view(_LE64) >> (np.arange(8, dtype=_LE64) * np.uint64(bits))
    values &= np.uint64((1 << bits) - 1)
    return values.reshape(-1)[:count].astype(np.uint8)


class QSGDCompressor(Compressor):
    """``qsgd:LEVELS[:bucket=N]`` (Alistarh et al. 2017): s = LEVELS levels against the L2 norm of each
    block of N coordinates (default 512, the paper's bucketing; ``bucket=0``: one norm for the vector).

    Coordinate i becomes ``sign(x_i) * l_i`` with ``l_i = floor(s |x_i| / norm + u)``, u uniform in
    [0, 1): unbiased stochastic rounding, seeded by (seed, rank, step, key). Per block the variance
    grows like min(N/s², sqrt(N)/s)·‖x‖², so blocks keep few levels usable on large tensors (one norm
    over 22k coordinates with s = 4 lets the noise swamp the gradient). The payload is the float32
    norms (rounded up, so no level exceeds s) and the levels: int8 for s >= 64, else packed in
    ``bit_length(2s)`` bits each (3 bits for s = 2..3, 4 bits for 4..7, ...). Exchanged by all-gather;
    decompress = norm / s * level. No error feedback.
    """

    name = "qsgd"
    exchange = "allgather"
    argument = ("LEVELS", "levels", _parse_int("LEVELS must be an integer in [2, 127]"), "127")
    options: ClassVar[dict] = {"seed": ("seed", _parse_int(_SEED_EXPECTED)),
                               "bucket": ("bucket", _parse_int("bucket must be an integer >= 0"))}

    def __init__(self, levels: int, seed: int = 0, bucket: int = 512) -> None:
        super().__init__()
        self.levels = _check_int(self.name, "LEVELS must be an integer in [2, 127]", levels, 2, 127)
        self.seed = _check_int(self.name, _SEED_EXPECTED, seed, 0)
        self.bucket = _check_int(self.name, "bucket must be an integer >= 0", bucket, 0)
        self.bits = (2 * self.levels).bit_length()  # offset levels l + s lie in [0, 2s]
        self.spec = (f"qsgd:{self.levels}" + (f":seed={self.seed}" if self.seed else "")
                     + (f":bucket={self.bucket}" if self.bucket != 512 else ""))

    def _blocks(self, d: int) -> tuple[int, int]:
        width = self.bucket if 0 < self.bucket < d else max(d, 1)
        return -(-d // width) if d else 0, width

    def compress(self, key, x, step=0, *, rank=0):
        flat = x.reshape(-1)
        d = flat.size
        s = self.levels
        nb, width = self._blocks(d)
        a = np.zeros(nb * width, np.float64)  # float64 scratch, padded to whole blocks
        np.abs(flat, out=a[:d], casting="unsafe")
        blocks = a.reshape(nb, width)
        norms = np.sqrt(np.einsum("ij,ij->i", blocks, blocks))
        with np.errstate(over="ignore"):
            norms32 = norms.astype(np.float32)
        bad = ~(np.isfinite(norms) & np.isfinite(norms32))
        norms32[bad] = np.nan  # the sum stays non-finite, as the dense one would
        low = norms32.astype(np.float64) < norms
        norms32[low] = np.nextafter(norms32[low], np.float32(np.inf))  # rounded up: no level exceeds s
        rng = np.random.default_rng([self.seed, int(rank), int(step), _key_hash(key)])
        positive = norms32 > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            blocks *= np.where(positive, s / norms32.astype(np.float64), 0.0)[:, None]
        blocks += rng.random(blocks.shape)
        np.floor(blocks, out=blocks)
        np.minimum(blocks, s, out=blocks)  # s + (1 - 2^-53) may round up to s + 1
        blocks[~positive] = 0
        level = a[:d]
        np.copysign(level, flat, out=level)
        if self.bits >= 8:
            return (norms32, level.astype(np.int8)), (x.shape, x.dtype)
        level += s  # offset levels in [0, 2s]
        return (norms32, _pack_uint(level.astype(np.uint8), self.bits)), (x.shape, x.dtype)

    def decompress(self, payload, ctx):
        norms, body = payload
        shape, dtype = ctx
        d = int(np.prod(shape))
        nb, width = self._blocks(d)
        if self.bits >= 8:
            level = body.astype(dtype)
        else:
            level = _unpack_uint(body, self.bits, d).astype(dtype)
            level -= self.levels
        out = np.zeros(nb * width, dtype=dtype)
        out[:d] = level
        out.reshape(nb, width)[...] *= (norms.astype(np.float64) / self.levels).astype(dtype)[:, None]
        return out[:d].reshape(shape)


class SignSGDCompressor(Compressor):
    """``signsgd`` (EF-signSGD, Karimireddy et al. 2019): ``p = x + memory``; send ``||p||_1 / d`` and sign(p).

    The payload is the float32 scale and the signs packed 8 per byte (np.packbits; 0 counts as +).
    Exchanged by all-gather; decompress = scale * sign; ``memory = p - decompressed``.
    ``signsgd:ef=0`` is the scaled sign without memory.
    """

    name = "signsgd"
    exchange = "allgather"
    options: ClassVar[dict] = {"ef": ("ef", _parse_bool)}

    def __init__(self, ef: bool = True) -> None:
        super().__init__()
        self.error_feedback = bool(ef)
        self.spec = "signsgd" + ("" if self.error_feedback else ":ef=0")

    def compress(self, key, x, step=0, *, rank=0):
        flat = x.reshape(-1)
        p = self._with_memory(key, flat)
        d = p.size
        with np.errstate(over="ignore"):
            scale = np.float32(float(np.abs(p).sum(dtype=np.float64)) / d) if d else np.float32(0)
        head = np.array([scale], np.float32)
        signs = np.packbits(p >= 0)
        payload = (head, signs)
        if self.error_feedback:
            with np.errstate(invalid="ignore"):  # inf - inf: reset by _set_memory
                p -= self.decompress(payload, (p.shape, p.dtype))
            self._set_memory(key, p)
        return payload, (x.shape, x.dtype)

    def decompress(self, payload, ctx):
        head, signs = payload
        shape, dtype = ctx
        s = float(head[0])
        positive = np.unpackbits(signs, count=int(np.prod(shape)))
        return np.array([-s, s], dtype=dtype).take(positive).reshape(shape)


# ----------------------------------------------------------------------------------------------
# PowerSGD
# ----------------------------------------------------------------------------------------------


def _dot(u: np.ndarray, v: np.ndarray) -> float:
    # NumPy's own pairwise summation, not BLAS: the same bits on every rank for the same inputs.
    return float(np.add.reduce(u * v))


def _orthonormalize(p: np.ndarray) -> np.ndarray:
    """Orthonormal columns spanning ``p`` (rows x R), by Gram-Schmidt twice over, in float64.

    Deterministic (ufuncs only), so identical inputs give identical outputs on every rank. A zero column
    stays zero; a non-finite one stays non-finite (the result must not hide a NaN gradient).
    """
    cols = np.array(p.T, dtype=np.float64, order="C")  # row i is column i of p
    for i in range(cols.shape[0]):
        c = cols[i]
        for _ in range(2):  # "twice is enough" (Kahan): orthogonal to working precision
            for j in range(i):
                c -= _dot(cols[j], c) * cols[j]
        norm = math.sqrt(_dot(c, c)) if np.isfinite(c).all() else math.nan
        if norm > 0:
            c /= norm
        elif norm == 0:
            c[...] = 0
        else:
            c[...] = math.nan
    return np.ascontiguousarray(cols.T)


def _lowrank(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``p @ q.T`` as a sum of outer products with ufuncs (bitwise reproducible, unlike BLAS)."""
    out = np.multiply(p[:, :1], q[:, 0])
    tmp = np.empty_like(out)
    for j in range(1, p.shape[1]):
        np.multiply(p[:, j:j + 1], q[:, j], out=tmp)
        out += tmp
    return out


class PowerSGDCompressor(Compressor):
    """``powersgd:RANK`` (Vogels et al. 2019): rank-R power iteration with warm start and error feedback.

    Each parameter with ndim >= 2 is a matrix M (shape[0] rows, the rest columns), compressed when
    ``(rows + cols) * R * 2 < rows * cols``; the others (biases, small matrices) are summed uncompressed,
    concatenated into the buffer that also carries the P factors, so a step is two ring all-reduces:

        M <- M + memory;  P = M Q;  allreduce(P);  P^ = orthonormalize(P);  Q_r = M^T P^;
        memory <- M - P^ Q_r^T;  allreduce(Q);  result = P^ Q_sum^T;  next step's Q = Q_sum

    The initial Q is standard normal from (seed, parameter name), the same on every rank; a column of
    Q_sum that is zero or non-finite is drawn afresh. The first ``start_iter`` steps (option ``start``,
    default 10) are plain all-reduces of the whole bucket with no memory. Memories and Qs are kept per
    parameter name. Options: ``powersgd:R:start=N``, ``:ef=0``, ``:seed=N``.
    """

    name = "powersgd"
    argument = ("RANK", "rank", _parse_int("RANK must be an integer >= 1"), "2")
    options: ClassVar[dict] = {"start": ("start_iter", _parse_int("start must be a non-negative integer")),
               "ef": ("ef", _parse_bool), "seed": ("seed", _parse_int(_SEED_EXPECTED))}
    _STATE_PREFIXES = ("memory", "q")

    def __init__(self, rank: int, start_iter: int = 10, ef: bool = True, seed: int = 0) -> None:
        super().__init__()
        self.rank = _check_int(self.name, "RANK must be an integer >= 1", rank, 1)
        self.start_iter = _check_int(self.name, "start must be a non-negative integer", start_iter, 0)
        self.seed = _check_int(self.name, _SEED_EXPECTED, seed, 0)
        self.error_feedback = bool(ef)
        self._q: dict[str, np.ndarray] = {}
        self._layouts: dict[str, list[tuple[str, tuple[int, ...], int, int]]] = {}
        self.spec = (f"powersgd:{self.rank}" + ("" if self.start_iter == 10 else f":start={self.start_iter}")
                     + ("" if self.error_feedback else ":ef=0") + (f":seed={self.seed}" if self.seed else ""))

    def compressible(self, shape: tuple[int, ...]) -> bool:
        """Whether a parameter of this shape is sent as low-rank factors (else uncompressed)."""
        if len(shape) < 2:
            return False
        rows, cols = int(shape[0]), int(np.prod(shape[1:]))
        return (rows + cols) * self.rank * 2 < rows * cols

    # -- state per parameter name --------------------------------------------------------------

    def _matrix(self, name: str, x: np.ndarray) -> np.ndarray:
        rows = x.shape[0]
        return self._with_memory(name, x.reshape(rows, -1))

    def _get_q(self, name: str, cols: int, dtype) -> np.ndarray:
        q = self._q.get(name)
        if q is None:
            rng = np.random.default_rng([self.seed, _key_hash(name)])
            q = rng.standard_normal((cols, self.rank)).astype(dtype)
            self._q[name] = q
        elif q.shape != (cols, self.rank):
            raise CompressionError(f"{self.spec}: the stored Q of {name!r} has shape {q.shape}, expected "
                                   f"{(cols, self.rank)} (a parameter changed shape, or the state is from another "
                                   "RANK)")
        return q if q.dtype == dtype else q.astype(dtype)

    def _set_q(self, name: str, q: np.ndarray, step: int) -> None:
        for j in range(q.shape[1]):
            col = q[:, j]
            if not np.isfinite(col).all() or not col.any():  # P would stay zero (or NaN) forever
                rng = np.random.default_rng([self.seed, _key_hash(name), int(step) + 1, j])
                col[...] = rng.standard_normal(col.size)
        self._q[name] = q

    # -- one rank's view -----------------------------------------------------------------------

    def compress(self, key, x, step=0, *, rank=0):
        """``key`` is the parameter name; a compressible matrix at ``step >= start_iter`` gives ``(P^, Q)``,
        anything else travels whole (``(x,)``)."""
        if step < self.start_iter or not self.compressible(x.shape):
            return (x,), ("dense", x.shape, x.dtype)
        m = self._matrix(key, x)
        p_hat = _orthonormalize(m @ self._get_q(key, m.shape[1], m.dtype)).astype(m.dtype)
        q = m.T @ p_hat
        if self.error_feedback:
            m -= _lowrank(p_hat, q)
            self._set_memory(key, m)
        self._set_q(key, q.copy(), step)
        return (p_hat, q), ("lowrank", x.shape, x.dtype)

    def decompress(self, payload, ctx):
        kind, shape, dtype = ctx
        if kind == "dense":
            return payload[0].reshape(shape)
        return _lowrank(*payload).astype(dtype, copy=False).reshape(shape)

    # -- the collective ------------------------------------------------------------------------

    def reduce(self, comm, key, segments, flat, step):
        _check_reduce_args(self, key, segments, flat, step)
        layout = []
        lo = 0
        for name, view in segments:
            shape = tuple(int(s) for s in view.shape)
            hi = lo + int(np.prod(shape))
            layout.append((name, shape, lo, hi))
            lo = hi
        self._layouts[key] = layout
        mats = [e for e in layout if self.compressible(e[1])]
        if step < self.start_iter or not mats:
            allreduce(flat, op="sum", comm=comm)
            return
        dense = [e for e in layout if not self.compressible(e[1])]
        r, dtype = self.rank, flat.dtype
        n_dense = sum(hi - lo for _, _, lo, hi in dense)
        buf = np.empty(n_dense + sum(shape[0] * r for _, shape, _, _ in mats), dtype)
        o = 0
        for _, _, lo, hi in dense:
            buf[o:o + hi - lo] = flat[lo:hi]
            o += hi - lo
        ms, ps = [], []
        for name, shape, lo, hi in mats:
            m = self._matrix(name, flat[lo:hi].reshape(shape))
            p = buf[o:o + shape[0] * r].reshape(shape[0], r)
            o += shape[0] * r
            np.matmul(m, self._get_q(name, m.shape[1], dtype), out=p)
            ms.append(m)
            ps.append(p)
        allreduce(buf, op="sum", comm=comm)  # the P factors and the uncompressed parameters, together
        o = 0
        for _, _, lo, hi in dense:
            flat[lo:hi] = buf[o:o + hi - lo]
            o += hi - lo
        qbuf = np.empty(sum(m.shape[1] * r for m in ms), dtype)
        p_hats, qs = [], []
        o = 0
        for (name, _, _, _), m, p in zip(mats, ms, ps):
            p_hat = _orthonormalize(p).astype(dtype)
            q = qbuf[o:o + m.shape[1] * r].reshape(m.shape[1], r)
            o += m.shape[1] * r
            np.matmul(m.T, p_hat, out=q)
            if self.error_feedback:
                m -= _lowrank(p_hat, q)  # memory = M - this rank's own approximation
                self._set_memory(name, m)
            p_hats.append(p_hat)
            qs.append(q)
        allreduce(qbuf, op="sum", comm=comm)
        for (name, _, lo, hi), p_hat, q in zip(mats, p_hats, qs):
            flat[lo:hi] = _lowrank(p_hat, q).reshape(-1)
            self._set_q(name, q.copy(), step)

    def memory(self, key: str) -> np.ndarray | None:
        """The residual of parameter ``key``, or of a bucket ``key`` (flat; zeros where uncompressed)."""
        if key in self._memory:
            return self._memory[key]
        layout = self._layouts.get(key)
        if layout is None:
            return None
        parts = [(self._memory.get(name), lo, hi) for name, _, lo, hi in layout]
        if all(m is None for m, _, _ in parts):
            return None
        dtype = next(m.dtype for m, _, _ in parts if m is not None)
        out = np.zeros(layout[-1][3], dtype)
        for m, lo, hi in parts:
            if m is not None:
                out[lo:hi] = m.reshape(-1)
        return out

    def state_dict(self) -> dict[str, Any]:
        """``{"spec", "memory/<param>": residual, "q/<param>": warm-start Q}`` (copies)."""
        state = super().state_dict()
        for name, q in self._q.items():
            state[f"q/{name}"] = q.copy()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        entries = self._check_state(state)
        self._memory = {k: np.array(v, copy=True) for k, v in entries.get("memory", {}).items()}
        self._q = {k: np.array(v, copy=True) for k, v in entries.get("q", {}).items()}


# ----------------------------------------------------------------------------------------------
# The registry
# ----------------------------------------------------------------------------------------------

COMPRESSORS: dict[str, type[Compressor]] = {
    cls.name: cls
    for cls in (NoCompression, FP16Compressor, BF16Compressor, PowerSGDCompressor, TopKCompressor,
                RandomKCompressor, QSGDCompressor, SignSGDCompressor)
}


def _forms() -> str:
    return ", ".join(f"{n}:{c.argument[0]}" if c.argument else n for n, c in COMPRESSORS.items())


def get(spec: str | Compressor | None = None) -> Compressor:
    """A new compressor from its spec (case-insensitive); None means "none"; a Compressor is returned as is.

    Specs: ``none``, ``fp16``, ``bf16``, ``powersgd:RANK``, ``topk:RATIO``, ``randomk:RATIO``,
    ``qsgd:LEVELS``, ``signsgd``, optionally followed by ``:option=value`` parameters (``ef=0|1``
    for topk/randomk/signsgd/powersgd, ``start=N`` for powersgd, ``seed=N`` for randomk/qsgd/powersgd).
    Raises CompressionError naming the spec and what was expected.

    >>> get("TopK:0.01").spec
    'topk:0.01'
    """
    if spec is None:
        return NoCompression()
    if isinstance(spec, Compressor):
        return spec
    if not isinstance(spec, str):
        raise CompressionError(f"compression spec must be a string such as 'topk:0.01' (or None), got "
                               f"{type(spec).__name__} {spec!r}")
    method, *args = [part.strip() for part in spec.strip().lower().split(":")]
    cls = COMPRESSORS.get(method)
    if cls is None:
        raise CompressionError(f"unknown compression {spec!r}: expected one of {_forms()}")
    kwargs: dict[str, Any] = {}
    try:
        if cls.argument is not None:
            placeholder, keyword, parse, example = cls.argument
            if not args or not args[0] or "=" in args[0]:
                raise CompressionError(f"expected {method}:{placeholder} (e.g. {method}:{example})")
            kwargs[keyword] = parse(args.pop(0))
        for arg in args:
            opt, sep, value = arg.partition("=")
            opt = opt.strip()
            if not sep or opt not in cls.options:
                accepted = (f"{method} accepts the options " + ", ".join(f"{o}=..." for o in cls.options)
                            if cls.options else f"{method} takes no parameters")
                raise CompressionError(f"unexpected parameter {arg!r}: {accepted}")
            keyword, parse = cls.options[opt]
            if keyword in kwargs:
                raise CompressionError(f"option {opt!r} given twice")
            kwargs[keyword] = parse(value.strip())
        return cls(**kwargs)
    except CompressionError as exc:
        raise CompressionError(f"compression {spec!r}: {exc}") from None
