"""Array backends: NumPy on the CPU, CuPy on CUDA GPUs.

Every op in dtrain is written once against ``xp = get_array_module(array)``; this module is the only
place that knows which libraries exist. Importing dtrain never imports CuPy: it is loaded the first
time a CUDA device is asked for (or a CuPy array is seen).

Devices are spelled ``"cpu"``, ``"cuda"`` (the current GPU) or ``"cuda:i"``.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "accumulation_dtype",
    "array_max",
    "array_sum",
    "Device",
    "as_device",
    "bfloat16",  # noqa: F822  (resolved lazily by __getattr__ below)
    "bfloat16_dtype",
    "CUDA_INSTALL_HINT",
    "DeviceUnavailableError",
    "cuda_problem",
    "cupy_available",
    "device_of",
    "get_array_module",
    "get_default_dtype",
    "resolve_dtype",
    "set_default_dtype",
    "to_device",
    "is_bfloat16",
    "is_float_dtype",
    "is_half_dtype",
    "Generator",
    "default_generator",
    "manual_seed",
]

# ----------------------------------------------------------------------------------------------
# CuPy, loaded lazily
# ----------------------------------------------------------------------------------------------

_cupy: Any = None
_cupy_error: str | None = None
_cupy_missing = False  # CuPy itself does not import (as opposed to: no GPU or driver)

# Where CuPy comes from: its wheels are built per CUDA major version (dtrain's [cuda12]/[cuda13] extras
# only pull these in, and exist in a checkout, not on PyPI).
CUDA_INSTALL_HINT = ("install the CuPy build for this machine's CUDA, `pip install cupy-cuda12x` (CUDA 12) or "
                     "`pip install cupy-cuda13x` (CUDA 13), or from a dtrain checkout `pip install -e \".[cuda12]\"`")


class DeviceUnavailableError(ValueError, RuntimeError):
    """A CUDA device was asked for but cannot be used here (no CuPy, no GPU, no such index).

    A ValueError, like any other bad input (the CLI reports it in one line), and a RuntimeError, as before.
    """


def _load_cupy():
    """Return the cupy module, or None (remembering why) when it cannot be used."""
    global _cupy, _cupy_error, _cupy_missing
    if _cupy is not None or _cupy_error is not None:
        return _cupy
    try:
        import cupy

        n = cupy.cuda.runtime.getDeviceCount()
        if n < 1:
            raise RuntimeError("CUDA reports 0 devices")
        _cupy = cupy
    except Exception as exc:  # ImportError, CUDARuntimeError, ...
        _cupy_error = f"{type(exc).__name__}: {exc}"
        _cupy_missing = isinstance(exc, ImportError)
    return _cupy


def cuda_problem() -> str | None:
    """Why CUDA cannot be used here, and the fix, in one line; None when it can (loads CuPy to find out)."""
    if _load_cupy() is not None:
        return None
    if _cupy_missing:
        return f"CuPy is not installed ({_cupy_error}): {CUDA_INSTALL_HINT}"
    return (f"CuPy finds no usable GPU ({_cupy_error}): check the NVIDIA driver (nvidia-smi), "
            "CUDA_VISIBLE_DEVICES, and that the cupy-cudaXXx wheel matches the driver's CUDA version")


def cupy_available() -> bool:
    """True when CuPy imports and at least one CUDA device is visible."""
    return _load_cupy() is not None


def _is_cupy_array(a) -> bool:
    # Avoid importing cupy for NumPy arrays: only look when the type comes from cupy.
    return type(a).__module__.startswith("cupy")


def array_sum(a, axis=None, keepdims: bool = False):
    """``a.sum(axis, keepdims=...)``; on NumPy through ``np.add.reduce``, the same sum without the method's
    Python wrapper (about 1 µs a call, which the steps of small models feel). CuPy arrays use the method."""
    if type(a) is np.ndarray:
        return np.add.reduce(a, axis=axis, keepdims=keepdims)
    return a.sum(axis=axis, keepdims=keepdims)


def array_max(a, axis=None, keepdims: bool = False):
    """``a.max(axis, keepdims=...)``, through ``np.maximum.reduce`` on NumPy (see :func:`array_sum`)."""
    if type(a) is np.ndarray:
        return np.maximum.reduce(a, axis=axis, keepdims=keepdims)
    return a.max(axis=axis, keepdims=keepdims)


def get_array_module(*arrays):
    """Return ``numpy`` or ``cupy``: the module that owns the given arrays.

    Non-array arguments (Python scalars, None) are ignored; with no CuPy array among the
    arguments the answer is ``numpy``.

    >>> get_array_module(np.zeros(3)) is np
    True
    """
    for a in arrays:
        if type(a) is np.ndarray:  # the common case, decided without string checks
            continue
        a = getattr(a, "data", a) if hasattr(a, "_is_dtrain_tensor") else a
        if _is_cupy_array(a):
            return sys.modules["cupy"]
    return np


# ----------------------------------------------------------------------------------------------
# Devices
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Device:
    """A place where arrays live: ``Device("cpu")`` or ``Device("cuda", 0)``."""

    type: str
    index: int | None = None

    def __str__(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"

    def __repr__(self) -> str:
        return f"device('{self}')"

    @property
    def xp(self):
        """The array module for this device (numpy or cupy)."""
        if self.type == "cpu":
            return np
        return _require_cupy(str(self))

    @contextlib.contextmanager
    def context(self):
        """Make this device current for the duration of a ``with`` block (no-op on CPU)."""
        if self.type == "cpu":
            yield
            return
        cp = _require_cupy(str(self))
        with cp.cuda.Device(self.index if self.index is not None else cp.cuda.Device().id):
            yield


CPU = Device("cpu")


def _require_cupy(what: str):
    cp = _load_cupy()
    if cp is None:
        raise DeviceUnavailableError(f"device '{what}' was requested but CUDA is not usable here: {cuda_problem()}; "
                                     "or use device 'cpu'")
    return cp


def as_device(device: str | Device | None) -> Device:
    """Parse ``"cpu"``, ``"cuda"``, ``"cuda:1"`` (or a Device, or None meaning cpu) into a Device.

    Raises ValueError for any other spelling and DeviceUnavailableError (a ValueError and a RuntimeError)
    for a CUDA device that does not exist or cannot be used here.
    """
    if device is None:
        return CPU
    if isinstance(device, Device):
        dev = device
    elif isinstance(device, str):
        spec = device.strip().lower()
        if spec == "cpu":
            return CPU
        if spec == "cuda" or spec == "gpu":
            dev = Device("cuda", None)
        elif spec.startswith("cuda:") and spec[5:].isdigit():
            dev = Device("cuda", int(spec[5:]))
        else:
            raise ValueError(f"unknown device {device!r}: expected 'cpu', 'cuda' or 'cuda:<index>'")
    else:
        raise TypeError(f"device must be a string like 'cpu' or 'cuda:0', got {type(device).__name__}")
    if dev.type == "cpu":
        return CPU
    cp = _require_cupy(str(dev))
    n = cp.cuda.runtime.getDeviceCount()
    index = cp.cuda.Device().id if dev.index is None else dev.index
    if not 0 <= index < n:
        raise DeviceUnavailableError(f"device 'cuda:{index}' does not exist: this machine has {n} CUDA device(s)")
    return Device("cuda", index)


def device_of(array) -> Device:
    """The Device an array lives on."""
    if _is_cupy_array(array):
        return Device("cuda", int(array.device.id))
    return CPU


def to_device(array, device: str | Device | None):
    """Return ``array`` on ``device`` (the same object when it is already there)."""
    if type(array) is np.ndarray and (device is None or device is CPU or device == "cpu"):
        return array  # the CPU training loop's every batch: none of the parsing below
    dev = as_device(device)
    src = device_of(array)
    if src == dev:
        return array
    if dev.type == "cpu":
        return array.get()
    cp = _require_cupy(str(dev))
    with cp.cuda.Device(dev.index):
        return cp.asarray(array)


# ----------------------------------------------------------------------------------------------
# Dtypes
# ----------------------------------------------------------------------------------------------


_BF16_UNKNOWN = object()
_bfloat16: Any = _BF16_UNKNOWN


def bfloat16_dtype() -> np.dtype | None:
    """NumPy's bfloat16 dtype (from ml_dtypes), or None when ml_dtypes is not installed.

    ml_dtypes is imported on the first call, not with dtrain: it is most of ``import dtrain``'s time, and
    a float32 job never needs it. ``dtrain.bfloat16`` / ``dtrain.backend.bfloat16`` call this.
    """
    global _bfloat16
    if _bfloat16 is _BF16_UNKNOWN:
        try:
            import ml_dtypes

            _bfloat16 = np.dtype(ml_dtypes.bfloat16)
        except ImportError:
            _bfloat16 = None
    return _bfloat16


def is_bfloat16(dtype) -> bool:
    """True when ``dtype`` is ml_dtypes' bfloat16. Imports ml_dtypes only for a dtype named bfloat16 (an
    array of that dtype exists only once ml_dtypes is loaded), so checking float32 arrays stays free."""
    try:
        dt = np.dtype(dtype)
    except TypeError:  # "bfloat16" as a string is not a NumPy dtype name
        return False
    return dt.name == "bfloat16" and dt == bfloat16_dtype()


_IS_HALF: dict = {}


def is_half_dtype(dtype) -> bool:
    """True for the 16-bit floats, float16 and bfloat16 (summed in float32 by the collectives).

    Remembered per NumPy dtype: the collectives ask it several times per call, on their hot path."""
    found = _IS_HALF.get(dtype) if isinstance(dtype, np.dtype) else None
    if found is None:
        found = bool(np.dtype(dtype) == np.float16) or is_bfloat16(dtype)
        if isinstance(dtype, np.dtype):
            _IS_HALF[dtype] = found
    return found


def __getattr__(name: str):
    # ``bfloat16`` stays a module attribute for users (``dtrain.backend.bfloat16``), resolved on first use.
    if name == "bfloat16":
        return bfloat16_dtype()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_FLOAT_NAMES = {"float16", "float32", "float64", "half", "float", "double", "bfloat16"}
_default_dtype = np.dtype(np.float32)


def resolve_dtype(dtype) -> np.dtype:
    """Turn a dtype spec (numpy dtype, type, or name such as "float32"/"bfloat16") into a np.dtype.

    Floating (float16/bfloat16/float32/float64), integer and bool dtypes are supported; anything
    else (complex, strings, objects) is rejected with a ValueError naming it.
    """
    if isinstance(dtype, str) and dtype.lower() in ("bfloat16", "bf16"):
        bf16 = bfloat16_dtype()
        if bf16 is None:
            raise ValueError("dtype bfloat16 needs the ml_dtypes package: pip install ml_dtypes")
        return bf16
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise ValueError(f"unsupported dtype {dtype!r}: {exc}") from None
    if dt.kind in "fiub" and dt.itemsize <= 8:
        return dt
    if is_bfloat16(dt):
        return dt
    raise ValueError(
        f"unsupported dtype {dt} ({dtype!r}): expected a floating dtype (float16, bfloat16, float32, "
        "float64), an integer dtype or bool"
    )


_IS_FLOAT: dict = {}


def is_float_dtype(dtype) -> bool:
    """True for float16/bfloat16/float32/float64 (the dtypes that can carry gradients).

    Remembered per NumPy dtype: a training step asks it of every batch (is_bfloat16 reads ``dtype.name``, a
    Python property, for every dtype that is not a float)."""
    found = _IS_FLOAT.get(dtype) if isinstance(dtype, np.dtype) else None
    if found is None:
        dt = np.dtype(dtype)
        found = dt.kind == "f" or is_bfloat16(dt)
        if isinstance(dtype, np.dtype):
            _IS_FLOAT[dtype] = found
    return found


def set_default_dtype(dtype) -> None:
    """Set the dtype of new floating tensors and parameters (float32 unless set).

    >>> set_default_dtype("float64"); set_default_dtype("float32")
    """
    global _default_dtype
    dt = resolve_dtype(dtype)
    if not is_float_dtype(dt):
        raise ValueError(f"the default dtype must be a floating dtype, got {dt}")
    _default_dtype = dt


def get_default_dtype() -> np.dtype:
    """The dtype of new floating tensors (float32 unless changed with set_default_dtype)."""
    return _default_dtype


def accumulation_dtype(dtype):
    """The dtype to accumulate sums of ``dtype`` in: float32 for half types, else ``dtype`` itself."""
    return np.float32 if np.dtype(dtype).itemsize < 4 else dtype


def finfo_eps(dtype) -> float:
    """Machine epsilon of a floating dtype (works for bfloat16 too)."""
    dt = np.dtype(dtype)
    if is_bfloat16(dt):
        return 2.0**-7
    return float(np.finfo(dt).eps)


# ----------------------------------------------------------------------------------------------
# Random numbers: explicit, seeded generators (dropout, init, shuffling)
# ----------------------------------------------------------------------------------------------


class Generator:
    """A seeded source of random numbers for any device.

    CPU draws come from NumPy's PCG64; CUDA draws from CuPy's generator, seeded from the same seed
    and device index, so a run is reproducible from one integer. ``get_state``/``set_state`` give a
    JSON-serialisable snapshot of the CPU stream (checkpoints save it).

    >>> g = Generator(0); g.uniform((2,), np.float32).shape
    (2,)
    """

    def __init__(self, seed: int = 0):
        self.manual_seed(seed)

    def manual_seed(self, seed: int) -> Generator:
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)
        self._np = np.random.Generator(np.random.PCG64(self.seed))
        self._cuda: dict[int, Any] = {}
        return self

    def _gpu(self, index: int):
        cp = _require_cupy(f"cuda:{index}")
        if index not in self._cuda:
            with cp.cuda.Device(index):
                self._cuda[index] = cp.random.RandomState(seed=(self.seed * 1_000_003 + index) % 2**63)
        return self._cuda[index]

    def uniform(self, shape, dtype, device: Device | str | None = None):
        """Uniform [0, 1) samples of ``shape`` and ``dtype`` on ``device``."""
        dev = as_device(device)
        if dev.type == "cpu":
            return self._np.random(shape, dtype=np.float64 if np.dtype(dtype) != np.float32 else np.float32)
        with dev.context():
            return self._gpu(dev.index).random_sample(shape, dtype=np.float32)

    def normal(self, shape, dtype, device: Device | str | None = None):
        """Standard normal samples of ``shape`` on ``device`` (cast to ``dtype`` by the caller)."""
        dev = as_device(device)
        if dev.type == "cpu":
            return self._np.standard_normal(shape, dtype=np.float32 if np.dtype(dtype) == np.float32 else np.float64)
        with dev.context():
            return self._gpu(dev.index).standard_normal(shape, dtype=np.float32)

    def get_state(self) -> dict:
        """JSON-serialisable state of the CPU stream."""
        return {"seed": self.seed, "cpu": self._np.bit_generator.state}

    def set_state(self, state: dict) -> None:
        """Restore a state captured by get_state()."""
        self.manual_seed(int(state["seed"]))
        self._np.bit_generator.state = state["cpu"]


default_generator = Generator(0)


def manual_seed(seed: int) -> Generator:
    """Re-seed the default generator (dropout masks and other draws that name no generator)."""
    return default_generator.manual_seed(seed)
