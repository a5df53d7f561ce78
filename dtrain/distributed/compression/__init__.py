"""Gradient compression: compressors are pure transforms; :mod:`.exchange` moves their payloads over
whichever all-reduce algorithm was chosen.

    import dtrain.distributed.compression as compression
    c = compression.get("topk:0.01")              # or "none", "fp16", "bf16", "powersgd:2", "randomk:0.01",
                                                  #    "qsgd:127", "signsgd"; options: "powersgd:2:start=10"
    compression.reduce(c, comm, "bucket0", segments, flat, step, algorithm="ring")  # flat <- sum estimate
    payload, ctx = c.compress("w", x, step)       # Horovod-style, one rank's view
    y = c.decompress(payload, ctx)
    state = c.state_dict(); c.load_state_dict(state)   # error-feedback memories, PowerSGD's Q

Files: ``base`` (the interface, error feedback, state), one file per family — ``cast`` (none, fp16,
bf16), ``sparse`` (topk, randomk), ``quantize`` (qsgd, signsgd), ``powersgd`` — and ``exchange``.
State (memories, PowerSGD's Q) lives in the instance, keyed by bucket key (``topk``/``randomk``/
``signsgd``) or parameter name (PowerSGD); ``state_dict()`` holds arrays and a spec string only. Random
choices (random-k's coordinates, QSGD's rounding, PowerSGD's initial Q) come from generators seeded by
(seed, step, key[, rank]), so runs are reproducible and resume bit for bit without saving RNG state.

A new compressor is one subclass (``name``, ``argument``/``options`` for its spec, ``exchange``,
``compress``, ``decompress``) and one entry in :data:`COMPRESSORS`; it then rides every algorithm, in
``dist.allreduce(compression=...)`` and in DistributedDataParallel (through the built-in comm hook).

Arrays are NumPy arrays (CPU; ``none`` also passes device buffers through). Every rank must run the same
NumPy: results are bitwise identical across ranks because every rank performs the same element-wise
operations on identical inputs (the low-rank products that must agree are computed with ufuncs, not BLAS).
"""

from __future__ import annotations

from .base import CompressionError, Compressor, key_hash, payload_nbytes
from .cast import BF16Compressor, FP16Compressor, NoCompression
from .exchange import allgather_payloads, allreduce, check_pair, reduce
from .powersgd import PowerSGDCompressor
from .quantize import QSGDCompressor, SignSGDCompressor
from .registry import COMPRESSORS, get
from .sparse import RandomKCompressor, TopKCompressor

__all__ = [
    "COMPRESSORS", "BF16Compressor", "CompressionError", "Compressor", "FP16Compressor", "NoCompression",
    "PowerSGDCompressor", "QSGDCompressor", "RandomKCompressor", "SignSGDCompressor", "TopKCompressor",
    "allgather_payloads", "allreduce", "check_pair", "get", "key_hash", "payload_nbytes", "reduce",
]
