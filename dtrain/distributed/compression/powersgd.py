"""PowerSGD (Vogels et al. 2019): rank-R power iteration with warm start and error feedback.

One path, the paper's Algorithm 1 with error feedback, for a bucket whose matrices are compressed and
whose other parameters (biases, small matrices) travel uncompressed:

    1. M_i = G_i + memory_i                 (every compressible parameter i, as a rows x cols matrix)
    2. P_i = M_i Q_i                        (Q_i warm-started from the previous step)
    3. sum [P_1 ... P_k, uncompressed G]    (ONE all-reduce over the chosen algorithm)
    4. P^_i = orthonormalize(P_i)
    5. Q_i = M_i^T P^_i;  memory_i = M_i - P^_i Q_i^T    (this rank's own approximation)
    6. sum [Q_1 ... Q_k]                    (the second all-reduce)
    7. result_i = P^_i Q_i^T;  keep Q_i for the next step

``compress``/``decompress`` (one rank's view, Horovod-style) run the same steps with sums over a single
rank, so ``decompress(*compress(key, x, step))`` is exactly what a world of one computes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import numpy as np

from .base import SEED_EXPECTED, CompressionError, Compressor, check_int, key_hash, parse_bool, parse_int

__all__ = ["PowerSGDCompressor"]


def _dot(u: np.ndarray, v: np.ndarray) -> float:
    # NumPy's own pairwise summation, not BLAS: the same bits on every rank for the same inputs.
    return float(np.add.reduce(u * v))


def orthonormalize(p: np.ndarray) -> np.ndarray:
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


def lowrank(p: np.ndarray, q: np.ndarray, out: np.ndarray | None = None, tmp: np.ndarray | None = None) -> np.ndarray:
    """``p @ q.T`` as a sum of outer products with ufuncs (bitwise reproducible, unlike BLAS), into ``out``
    when given (``tmp``: scratch of the same shape; both reused across steps, so that no step pays for
    fresh pages of a matrix-sized array)."""
    out = np.multiply(p[:, :1], q[:, 0], out=out)
    if p.shape[1] > 1:
        tmp = np.empty_like(out) if tmp is None else tmp
        for j in range(1, p.shape[1]):
            np.multiply(p[:, j:j + 1], q[:, j], out=tmp)
            out += tmp
    return out


def _no_sum(array: np.ndarray) -> None:
    """The sum over a world of one rank."""


class PowerSGDCompressor(Compressor):
    """``powersgd:RANK``: the steps in the module docstring.

    A parameter with ndim >= 2 is a matrix M (shape[0] rows, the rest columns), compressed when
    ``(rows + cols) * R * 2 < rows * cols``. The initial Q is standard normal from (seed, parameter name),
    the same on every rank; a column of the summed Q that is zero or non-finite is drawn afresh. The
    first ``start_iter`` steps (option ``start``, default 10) are plain all-reduces of the whole bucket
    with no memory. Memories and Qs are kept per parameter name. Options: ``powersgd:R:start=N``,
    ``:ef=0``, ``:seed=N``.
    """

    name = "powersgd"
    exchange = "rounds"
    argument = ("RANK", "rank", parse_int("RANK must be an integer >= 1"), "2")
    options: ClassVar[dict] = {"start": ("start_iter", parse_int("start must be a non-negative integer")),
                               "ef": ("ef", parse_bool), "seed": ("seed", parse_int(SEED_EXPECTED))}
    _STATE: ClassVar[dict[str, str]] = {"memory": "_memory", "q": "_q"}  # state_dict: "q/<param>": warm-start Q

    def __init__(self, rank: int, start_iter: int = 10, ef: bool = True, seed: int = 0) -> None:
        super().__init__()
        self.rank = check_int(self.name, "RANK must be an integer >= 1", rank, 1)
        self.start_iter = check_int(self.name, "start must be a non-negative integer", start_iter, 0)
        self.seed = check_int(self.name, SEED_EXPECTED, seed, 0)
        self.error_feedback = bool(ef)
        self._q: dict[str, np.ndarray] = {}
        self._work: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}  # lowrank's output and scratch, per shape
        self._layouts: dict[str, list[tuple[str, tuple[int, ...], int, int]]] = {}
        self.spec = (f"powersgd:{self.rank}" + ("" if self.start_iter == 10 else f":start={self.start_iter}")
                     + ("" if self.error_feedback else ":ef=0") + (f":seed={self.seed}" if self.seed else ""))

    def compressible(self, shape: tuple[int, ...]) -> bool:
        """Whether a parameter of this shape is sent as low-rank factors (else uncompressed)."""
        if len(shape) < 2:
            return False
        rows, cols = int(shape[0]), int(np.prod(shape[1:]))
        return (rows + cols) * self.rank * 2 < rows * cols

    # -- the steps -----------------------------------------------------------------------------

    def reduce_rounds(self, key: str, segments, flat, step: int, total: Callable) -> None:
        """Replace the bucket ``flat`` by the estimated sum over ranks; ``total(array)`` sums in place."""
        layout = self._layout(key, segments)
        mats = [e for e in layout if self.compressible(e[1])]
        if step < self.start_iter or not mats:
            total(flat)
            return
        self._rounds(layout, mats, flat, step, total)

    def _rounds(self, layout, mats, flat, step: int, total: Callable) -> list[tuple[np.ndarray, np.ndarray]]:
        r, dtype = self.rank, flat.dtype
        dense = [e for e in layout if not self.compressible(e[1])]
        buf = np.empty(sum(hi - lo for _, _, lo, hi in dense) + sum(s[0] * r for _, s, _, _ in mats), dtype)
        dense_part = _pack(buf, [flat[lo:hi] for _, _, lo, hi in dense])
        ms = [self._matrix(name, flat[lo:hi].reshape(shape)) for name, shape, lo, hi in mats]  # step 1
        ps = _views(buf[dense_part:], [(m.shape[0], r) for m in ms])
        for (name, *_), m, p in zip(mats, ms, ps):
            np.matmul(m, self._get_q(name, m.shape[1], dtype), out=p)  # step 2
        total(buf)  # step 3: the P factors and the uncompressed parameters, together
        _unpack(buf, [flat[lo:hi] for _, _, lo, hi in dense])
        qbuf = np.empty(sum(m.shape[1] * r for m in ms), dtype)
        qs = _views(qbuf, [(m.shape[1], r) for m in ms])
        p_hats = [orthonormalize(p).astype(dtype) for p in ps]  # step 4
        for (name, *_), m, p_hat, q in zip(mats, ms, p_hats, qs):
            np.matmul(m.T, p_hat, out=q)  # step 5
            if self.error_feedback:
                m -= lowrank(p_hat, q, *self._scratch(m.shape, dtype))
                self.set_memory(name, m)
        total(qbuf)  # step 6
        for (name, _, lo, hi), m, p_hat, q in zip(mats, ms, p_hats, qs):
            # step 7, straight into the bucket (where m may live without error feedback: m is used up)
            lowrank(p_hat, q, flat[lo:hi].reshape(m.shape), self._scratch(m.shape, dtype)[1])
            self._set_q(name, q.copy(), step)
        return list(zip(p_hats, qs))

    def _scratch(self, shape: tuple[int, ...], dtype) -> tuple[np.ndarray, np.ndarray]:
        """Two matrix-sized work arrays per shape and dtype, kept across steps (not state: never saved)."""
        key = (tuple(shape), np.dtype(dtype).str)
        pair = self._work.get(key)
        if pair is None:
            pair = self._work[key] = (np.empty(shape, dtype), np.empty(shape, dtype))
        return pair

    def _layout(self, key: str, segments) -> list[tuple[str, tuple[int, ...], int, int]]:
        layout, lo = [], 0
        for name, view in segments:
            shape = tuple(int(s) for s in view.shape)
            hi = lo + int(np.prod(shape))
            layout.append((name, shape, lo, hi))
            lo = hi
        self._layouts[key] = layout
        return layout

    # -- one rank's view -----------------------------------------------------------------------

    def compress(self, key, x, step=0, *, rank=0):
        """``key`` is the parameter name; a compressible matrix at ``step >= start_iter`` gives ``(P^, Q)``
        (steps 1-5 and 7 with sums over one rank), anything else travels whole (``(x,)``)."""
        if step < self.start_iter or not self.compressible(x.shape):
            return (x,), ("dense", x.shape, x.dtype)
        flat = np.array(x, copy=True).reshape(-1)
        entry = (key, tuple(x.shape), 0, flat.size)
        (p_hat, q), = self._rounds([entry], [entry], flat, step, _no_sum)
        return (p_hat, q), ("lowrank", x.shape, x.dtype)

    def decompress(self, payload, ctx):
        kind, shape, dtype = ctx
        if kind == "dense":
            return payload[0].reshape(shape)
        return lowrank(*payload).astype(dtype, copy=False).reshape(shape)

    # -- state per parameter name --------------------------------------------------------------

    def _matrix(self, name: str, x: np.ndarray) -> np.ndarray:
        """Step 1: ``M = G + memory``, summed into the memory's own array (no fresh matrix per step; the
        same bits as ``G + memory``), which step 5 turns into the next memory."""
        x = x.reshape(x.shape[0], -1)
        mem = self._memory.get(name) if self.error_feedback else None
        if mem is None or mem.shape != x.shape or mem.dtype != x.dtype:
            return self.with_memory(name, x)  # the first step, or the base class's checks and error
        return np.add(mem, x, out=mem)

    def _get_q(self, name: str, cols: int, dtype) -> np.ndarray:
        q = self._q.get(name)
        if q is None:
            rng = np.random.default_rng([self.seed, key_hash(name)])
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
                rng = np.random.default_rng([self.seed, key_hash(name), int(step) + 1, j])
                col[...] = rng.standard_normal(col.size)
        self._q[name] = q

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


def _pack(buf: np.ndarray, parts: list[np.ndarray]) -> int:
    """Copy ``parts`` one after another to the start of ``buf``; return the elements used."""
    o = 0
    for a in parts:
        buf[o:o + a.size] = a
        o += a.size
    return o


def _unpack(buf: np.ndarray, parts: list[np.ndarray]) -> None:
    """The inverse of :func:`_pack`: fill ``parts`` from the start of ``buf``."""
    o = 0
    for a in parts:
        a[...] = buf[o:o + a.size]
        o += a.size


def _views(buf: np.ndarray, shapes: list[tuple[int, int]]) -> list[np.ndarray]:
    """Consecutive matrix views of ``buf`` with the given shapes."""
    out, o = [], 0
    for rows, cols in shapes:
        out.append(buf[o:o + rows * cols].reshape(rows, cols))
        o += rows * cols
    return out
