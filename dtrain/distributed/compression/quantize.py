"""Quantizers: QSGD (stochastic rounding to a few levels per block) and EF-signSGD (scaled signs); both
exchanged by all-gather (their payloads are not summable)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from .base import SEED_EXPECTED, Compressor, check_int, key_hash, parse_bool, parse_int

__all__ = ["QSGDCompressor", "SignSGDCompressor", "pack_uint", "unpack_uint"]


_LE64 = np.dtype("<u8")


def pack_uint(v: np.ndarray, bits: int) -> np.ndarray:
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


def unpack_uint(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The inverse of :func:`pack_uint`: ``count`` uint8 values."""
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
    argument = ("LEVELS", "levels", parse_int("LEVELS must be an integer in [2, 127]"), "127")
    options: ClassVar[dict] = {"seed": ("seed", parse_int(SEED_EXPECTED)),
                               "bucket": ("bucket", parse_int("bucket must be an integer >= 0"))}

    def __init__(self, levels: int, seed: int = 0, bucket: int = 512) -> None:
        super().__init__()
        self.levels = check_int(self.name, "LEVELS must be an integer in [2, 127]", levels, 2, 127)
        self.seed = check_int(self.name, SEED_EXPECTED, seed, 0)
        self.bucket = check_int(self.name, "bucket must be an integer >= 0", bucket, 0)
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
        rng = np.random.default_rng([self.seed, int(rank), int(step), key_hash(key)])
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
        return (norms32, pack_uint(level.astype(np.uint8), self.bits)), (x.shape, x.dtype)

    def decompress(self, payload, ctx):
        norms, body = payload
        shape, dtype = ctx
        d = int(np.prod(shape))
        nb, width = self._blocks(d)
        if self.bits >= 8:
            level = body.astype(dtype)
        else:
            level = unpack_uint(body, self.bits, d).astype(dtype)
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
    options: ClassVar[dict] = {"ef": ("ef", parse_bool)}

    def __init__(self, ef: bool = True) -> None:
        super().__init__()
        self.error_feedback = bool(ef)
        self.spec = "signsgd" + ("" if self.error_feedback else ":ef=0")

    def compress(self, key, x, step=0, *, rank=0):
        flat = x.reshape(-1)
        p = self.with_memory(key, flat)
        d = p.size
        with np.errstate(over="ignore"):
            scale = np.float32(float(np.abs(p).sum(dtype=np.float64)) / d) if d else np.float32(0)
        head = np.array([scale], np.float32)
        signs = np.packbits(p >= 0)
        payload = (head, signs)
        if self.error_feedback:
            with np.errstate(invalid="ignore"):  # inf - inf: reset by _set_memory
                p -= self.decompress(payload, (p.shape, p.dtype))
            self.set_memory(key, p)
        return payload, (x.shape, x.dtype)

    def decompress(self, payload, ctx):
        head, signs = payload
        shape, dtype = ctx
        s = float(head[0])
        positive = np.unpackbits(signs, count=int(np.prod(shape)))
        return np.array([-s, s], dtype=dtype).take(positive).reshape(shape)
