"""Device (CuPy) arrays in collectives: CUDA-aware MPI when the library has it, pinned host staging otherwise.

mpi4py hands MPI the device pointer of any array exposing ``__cuda_array_interface__``; that is only
correct when the MPI library is CUDA-aware. :func:`cuda_aware_mpi` decides once per process:

* ``DTRAIN_CUDA_AWARE_MPI=1`` / ``0`` in the environment wins (clusters know their MPI);
* Open MPI: ``ompi_info`` reports ``mpi_built_with_cuda_support:value:true``;
* MPICH: a GPU-enabled build with ``MPIR_CVAR_ENABLE_GPU`` not set to 0 and CUDA in its configure line;
* anything else: not CUDA-aware.

Without it, each collective copies its device array into a page-locked (pinned) host buffer, runs
on the host copy and copies the result back (:func:`on_host`). The pinned buffers belong to the
Communicator and are reused across steps, grown when a larger array comes along. ``dtrain info``
prints which path is in use.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
from collections.abc import Iterator

import numpy as np

from ..backend import get_array_module

__all__ = ["cuda_aware_mpi", "gpu_count", "on_host", "transport"]


@functools.lru_cache(maxsize=1)
def cuda_aware_mpi() -> tuple[bool, str]:
    """(whether MPI can read and write device memory, why we think so)."""
    env = os.environ.get("DTRAIN_CUDA_AWARE_MPI", "").strip()
    if env in ("0", "1"):
        return env == "1", f"DTRAIN_CUDA_AWARE_MPI={env}"
    try:
        from mpi4py import MPI
    except Exception as exc:  # no MPI at all
        return False, f"mpi4py unavailable ({type(exc).__name__})"
    vendor = MPI.get_vendor()[0]
    version = MPI.Get_library_version()
    if vendor == "Open MPI":
        ompi_info = shutil.which("ompi_info")
        if ompi_info:
            try:
                out = subprocess.run([ompi_info, "--parsable", "--all"], capture_output=True, text=True,
                                     timeout=30).stdout
            except (OSError, subprocess.SubprocessError):
                out = ""
            if "mpi_built_with_cuda_support:value:true" in out:
                return True, "Open MPI built with CUDA support (ompi_info)"
            return False, "Open MPI without CUDA support (ompi_info)"
        return False, "Open MPI; ompi_info not found to confirm CUDA support"
    if vendor == "MPICH" or "MPICH" in version:
        gpu_off = os.environ.get("MPIR_CVAR_ENABLE_GPU", "").strip() == "0"
        if "cuda" in version.lower() and not gpu_off:
            return True, "MPICH built with CUDA (library version string)"
        return False, "MPICH without CUDA support"
    return False, f"{vendor}: CUDA support unknown (set DTRAIN_CUDA_AWARE_MPI=1 if it has it)"


def transport() -> str:
    """One line for ``dtrain info``: how collectives move device arrays."""
    aware, why = cuda_aware_mpi()
    if aware:
        return f"device buffers passed to MPI directly (CUDA-aware MPI: {why})"
    return f"staged through reused pinned host buffers ({why})"


def gpu_count() -> int:
    """CUDA devices visible to this process (0 without CuPy or a GPU)."""
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:
        return 0


def _pinned(comm, key: str, nbytes: int) -> np.ndarray:
    """A page-locked host byte buffer of at least ``nbytes``, owned by ``comm`` and reused."""
    cache = comm.cache.setdefault("pinned", {})
    held = cache.get(key)
    if held is None or held[1].nbytes < nbytes:
        import cupy

        size = max(64, -(-nbytes // 4096) * 4096)
        mem = cupy.cuda.alloc_pinned_memory(size)
        held = cache[key] = (mem, np.frombuffer(mem, dtype=np.uint8, count=size))
    return held[1][:nbytes]


@contextlib.contextmanager
def on_host(comm, array, key: str = "stage", copy_in: bool = True, copy_out: bool = True,
            host_memory: bool = False) -> Iterator:
    """Yield an array MPI can use in place of ``array``: ``array`` itself for NumPy arrays and for device
    arrays under CUDA-aware MPI, else a pinned host copy (filled from ``array`` when ``copy_in``),
    copied back into ``array`` on exit when ``copy_out``.

    ``comm.force_staging = True`` stages NumPy arrays too, through plain host buffers (the tests use
    it to run the staging path on machines without a GPU)."""
    xp = get_array_module(array)
    forced = comm.force_staging
    if xp is np and not forced:
        yield array
        return
    if xp is not np and cuda_aware_mpi()[0] and not host_memory:
        yield array
        return
    if xp is np:  # forced: an ordinary scratch buffer plays the pinned one
        host = comm.buffer(("stage", key), array.shape, array.dtype)
        if copy_in:
            host[...] = array
        yield host
        if copy_out:
            array[...] = host
        return
    host = _pinned(comm, key, array.nbytes).view(array.dtype).reshape(array.shape)
    if copy_in:
        array.get(out=host)  # device -> pinned host; returns once the copy is done
    yield host
    if copy_out:
        array.set(host)  # pinned host -> device
        xp.cuda.get_current_stream().synchronize()
