"""Sparsifiers: ``topk`` (the largest coordinates, exchanged by all-gather) and ``randomk`` (coordinates
every rank draws alike from a shared seed, so only values travel, summed by the all-reduce)."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from .base import (
    RATIO_EXPECTED,
    SEED_EXPECTED,
    CompressionError,
    Compressor,
    check_int,
    check_ratio,
    fmt,
    key_hash,
    parse_bool,
    parse_float,
    parse_int,
)

__all__ = ["RandomKCompressor", "TopKCompressor"]


class _Sparsifier(Compressor):
    argument = ("RATIO", "ratio", parse_float(RATIO_EXPECTED), "0.01")

    def __init__(self, ratio: float, ef: bool = True) -> None:
        super().__init__()
        self._ratio = check_ratio(self.name, ratio)
        self.ratio = float(ratio)
        self.error_feedback = bool(ef)
        self.spec = f"{self.name}:{fmt(self.ratio)}" + ("" if self.error_feedback else ":ef=0")

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
    options: ClassVar[dict] = {"ef": ("ef", parse_bool)}

    def compress(self, key, x, step=0, *, rank=0):
        flat = x.reshape(-1)
        if flat.size >= 2**31:
            raise CompressionError(f"{self.spec}: a buffer of {flat.size} elements needs indices beyond int32; "
                                   "use smaller buckets")
        p = self.with_memory(key, flat)
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
            self.set_memory(key, p)
        return (idx, values), (x.shape, x.dtype)

    def decompress(self, payload, ctx):
        idx, values = payload
        shape, dtype = ctx
        out = np.zeros(int(np.prod(shape)), dtype=dtype)
        out[idx] = values
        return out.reshape(shape)

    def accumulate(self, out, payload, ctx, first):
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
    options: ClassVar[dict] = {"ef": ("ef", parse_bool), "seed": ("seed", parse_int(SEED_EXPECTED))}

    def __init__(self, ratio: float, ef: bool = True, seed: int = 0) -> None:
        super().__init__(ratio, ef)
        self.seed = check_int(self.name, SEED_EXPECTED, seed, 0)
        if self.seed:
            self.spec += f":seed={self.seed}"

    def indices(self, key: str, d: int, step: int) -> np.ndarray:
        """The sorted coordinates chosen for ``key`` at ``step`` (identical on every rank)."""
        k = self.k(d)
        if k >= d:
            return np.arange(d, dtype=np.int64)
        rng = np.random.default_rng([self.seed, int(step), key_hash(key)])
        idx = rng.choice(d, size=k, replace=False, shuffle=False)
        idx.sort()
        return idx

    def compress(self, key, x, step=0, *, rank=0):
        flat = x.reshape(-1)
        p = self.with_memory(key, flat)
        d = p.size
        idx = self.indices(key, d, step)
        values = p[idx]
        if self.error_feedback:
            p[idx] = 0
            self.set_memory(key, p)
        else:
            values *= d / idx.size
        return (values,), (x.shape, x.dtype, idx)

    def decompress(self, payload, ctx):
        shape, dtype, idx = ctx
        out = np.zeros(int(np.prod(shape)), dtype=dtype)
        out[idx] = payload[0]
        return out.reshape(shape)
