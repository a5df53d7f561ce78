"""Matrix products in blocks that OpenBLAS multiplies with its small-matrix kernels.

OpenBLAS's AVX-512 kernels (cores SkylakeX, CooperLake, SapphireRapids; the NumPy wheels pick them at run time
on any AVX-512 x86 CPU, Intel or AMD) multiply a product with M*N*K <= 100**3 by kernels that read both
operands where they are; a larger product first copies (packs) both into blocks. The products of a
convolution are narrow (thousands of rows, K of a few hundred, 16 to 64 outputs), so packing the tall operand
costs up to a quarter of the product. Split into row blocks under the limit, each block takes the small
kernel. Measured, one thread (AMD EPYC, OpenBLAS 0.3.31 SkylakeX), in one call -> in row blocks:

    float32 (4096 x 144) @ (144 x 16)    244 -> 180 us (105 GF/s)   the digits ResNet's 16-channel 3x3 conv
    float32 (1024 x 288) @ (288 x 32)    206 -> 181 us              its 32-channel 3x3 conv
    float32 (4096 x 144).T @ (4096 x 16) 257 -> 190 us              a weight gradient: blocks of the sum over rows
    float64 (4096 x 144) @ (144 x 16)    551 -> 356 us

With the AVX2 kernels (Haswell, Zen) the same blocks are 8-15 % slower, and the small kernels run on one
thread only: the blocks are used only where NumPy's BLAS is OpenBLAS with one of those cores and one thread
(read again every second: dtrain's thread configuration may change it). ``DTRAIN_SMALL_GEMM=0`` turns them off,
``=1`` on whatever the BLAS (both for comparisons); unset means that detection.
"""

from __future__ import annotations

import os
import time

import numpy as np

from ...backend import get_array_module

SMALL_MNK = 1_000_000  # OpenBLAS's limit for the small kernels: M * N * K <= 100**3
MIN_ROWS = 32  # fewer rows per block: the small kernel is no faster than one packed call
MIN_SUM_ROWS = 64  # blocks of a sum over rows also add their (N, K) partial products
AVX512_CORES = frozenset({"skylakex", "cooperlake", "sapphirerapids"})
ENV = "DTRAIN_SMALL_GEMM"

_pools: list = []  # [None | list of threadpoolctl library controllers], decided once per process
RECHECK_S = 1.0  # a change of the BLAS's thread count takes effect within this time
_threads: list = [0.0, None, False]  # [when the thread count was read, of which pools, all one thread]


def _small_kernel_pools():
    """The OpenBLAS pools whose small kernels the blocks are for, [] for none (decided once), or None
    when ``DTRAIN_SMALL_GEMM=1`` forces blocks whatever the BLAS."""
    if not _pools:
        _pools.append(_detect(os.environ.get(ENV, "")))
    return _pools[0]


def _detect(setting: str):
    setting = setting.strip().lower()
    if setting not in ("", "auto", "0", "1"):
        raise ValueError(f"environment variable {ENV} must be 0 (off), 1 (on) or auto (unset: on with OpenBLAS's "
                         f"AVX-512 kernels and one thread), got {setting!r}")
    if setting == "0":
        return []
    if setting == "1":
        return None
    try:
        from threadpoolctl import ThreadpoolController
        blas = [lib for lib in ThreadpoolController().lib_controllers if lib.user_api == "blas"]
        name = np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]
    except Exception:  # no threadpoolctl, or a NumPy without its build record: no blocks
        return []
    if "openblas" not in str(name).lower():
        return []
    return [lib for lib in blas if lib.internal_api == "openblas"
            and str(getattr(lib, "architecture", "")).lower() in AVX512_CORES]


def _one_thread(pools) -> bool:
    """Whether every pool runs one thread: asked again after RECHECK_S (each question costs about 1 us, and a
    step asks dozens of times), or at once for other pools."""
    now = time.monotonic()
    if _threads[1] is not pools or now - _threads[0] > RECHECK_S:
        _threads[:] = [now, pools, all(lib.num_threads == 1 for lib in pools)]
    return _threads[2]


def block_rows(a, k: int, n: int, least: int = MIN_ROWS) -> int:
    """Rows per block for a product of ``a``'s rows with a K x N operand: 0 for one call (not NumPy float32
    or float64, small enough already, blocks too thin, or no small kernels / more than one thread)."""
    if type(a) is not np.ndarray or a.dtype not in (np.float32, np.float64) or a.shape[0] * k * n <= SMALL_MNK:
        return 0
    rows = SMALL_MNK // max(k * n, 1)
    if rows < least:
        return 0
    pools = _small_kernel_pools()
    if pools is not None and not (pools and _one_thread(pools)):
        return 0
    blocks = -(-a.shape[0] // rows)
    return -(-a.shape[0] // blocks)  # blocks of even size: no thin last block


def matmul_into(out, a, b) -> None:
    """out[...] = a @ b (2-D, one dtype; NumPy or CuPy), in row blocks where that is faster (see the module
    docstring)."""
    rows = block_rows(a, b.shape[0], b.shape[1])
    if not rows:
        get_array_module(a).matmul(a, b, out=out)
        return
    for i in range(0, a.shape[0], rows):
        np.matmul(a[i:i + rows], b, out=out[i:i + rows])


def matmul_tn(a, b):
    """a.T @ b for a (M, N) and b (M, K) of one dtype (NumPy or CuPy): the (N, K) sum over M, in row blocks where
    that is faster. Each block is computed as b.T @ a (K, N), measured faster than a.T @ b, and the sum returned
    transposed (a view)."""
    rows = block_rows(a, b.shape[1], a.shape[1], MIN_SUM_ROWS)
    if not rows:
        return a.T @ b
    acc = np.matmul(b[:rows].T, a[:rows])
    part = np.empty_like(acc)
    for i in range(rows, a.shape[0], rows):
        np.add(acc, np.matmul(b[i:i + rows].T, a[i:i + rows], out=part), out=acc)
    return acc.T


def describe() -> str:
    """One line for ``dtrain info``: whether convolution GEMMs run in small-kernel blocks here, and why."""
    try:
        pools = _small_kernel_pools()
    except ValueError as exc:
        return f"convolution GEMM blocks: unknown ({exc})"
    if pools is None:
        return f"convolution GEMM blocks: on ({ENV}=1)"
    if not pools:
        off = os.environ.get(ENV, "").strip() == "0"
        why = f"{ENV}=0" if off else "NumPy's BLAS is not OpenBLAS with AVX-512 kernels"
        return f"convolution GEMM blocks: off ({why})"
    threads = sorted({lib.num_threads for lib in pools})
    cores = ", ".join(sorted({str(lib.architecture) for lib in pools}))
    state = "on" if threads == [1] else "off while the BLAS runs more than one thread"
    return f"convolution GEMM blocks: {state} (OpenBLAS {cores} small-matrix kernels; BLAS threads now {threads})"
