"""Casts: ``none`` (the buffer as it is), ``fp16`` and ``bf16`` (16-bit floats; the all-reduce adds them in
float32 and rounds once per step of its schedule)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ...backend import bfloat16_dtype
from .base import CompressionError, Compressor

__all__ = ["BF16Compressor", "FP16Compressor", "NoCompression"]


class NoCompression(Compressor):
    """``none``: the plain all-reduce (sum) of the buffer over the chosen algorithm; the payload is the array itself."""

    name = "none"
    host_only = False  # the payload is the buffer itself: device buffers are summed where they are

    def compress(self, key, x, step=0, *, rank=0):
        return (x,), (x.shape, x.dtype)

    def decompress(self, payload, ctx):
        return payload[0].reshape(ctx[0])


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

    @property
    def wire(self):  # looked up when a bf16 compressor is used, so importing dtrain never loads ml_dtypes
        return bfloat16_dtype()

    def __init__(self) -> None:
        if bfloat16_dtype() is None:
            raise CompressionError("bf16 compression needs the ml_dtypes package (bfloat16 for NumPy): "
                                   "pip install ml_dtypes")
        super().__init__()
