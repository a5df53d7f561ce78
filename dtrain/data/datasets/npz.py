"""Arrays from an ``.npz`` archive: ``npz:FILE`` (x, y and optionally x_test, y_test, n_classes).

The archive is read member by member with :mod:`zipfile` and NumPy's public ``.npy`` format functions,
never with ``allow_pickle``. Before any array is read, its ``.npy`` header (shape and dtype) is checked:
numbers only (no objects, strings or records), a shape the member can hold, and a total size that fits in
memory. So a few-kilobyte archive of compressed zeros that declares gigabytes, or a header that claims a
shape its member cannot hold, is an error naming the file and the member, not an allocation.
"""

from __future__ import annotations

import math
import os
import warnings
import zipfile
from typing import IO, Any

import numpy as np

from ...files import open_regular
from ..dataset import ArrayDataset
from ..filetype import looks_like
from .limits import check_classes, check_memory, human_size, one_line
from .registry import DatasetError, Splits, fixed_split, register_dataset

_NPY_MAGIC = b"\x93NUMPY"
_MAGIC_LEN = len(_NPY_MAGIC) + 2  # then the format version, two bytes
_NPY_VERSIONS = ((1, 0), (2, 0), (3, 0))
_FLOAT32_MAX = float(np.finfo(np.float32).max)

# ------------------------------------------------------------------------------------------------
# Reading the archive: headers first, then the arrays
# ------------------------------------------------------------------------------------------------


def _not_an_archive(path: str, exc: Exception) -> str:
    """Why the zip reader failed, said by what the file looks like (NumPy calls any text file "pickled data")."""
    try:
        what = looks_like(path)
    except OSError:
        what = None
    if what is not None:
        return (f"{path}: cannot read it as an .npz archive: it looks like {what}; npz:FILE reads arrays saved "
                "with np.savez(FILE, x=..., y=...)")
    return f"{path}: cannot read it as an .npz archive: {one_line(exc)}"


def _open_zip(f: IO[bytes], path: str) -> zipfile.ZipFile:
    head = f.read(len(_NPY_MAGIC))
    f.seek(0)
    if head == _NPY_MAGIC:
        raise DatasetError(f"{path}: is a single .npy array, expected an .npz archive with arrays 'x' and "
                           "'y' (np.savez(path, x=..., y=...))")
    try:
        return zipfile.ZipFile(f)
    except Exception as exc:  # BadZipFile, OSError, EOFError, struct.error, ... from a corrupt directory
        raise DatasetError(_not_an_archive(path, exc)) from None


def _members(archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """Array name -> zip member, named as np.load names them (``x.npy`` is ``x``; a later duplicate wins)."""
    return {info.filename.removesuffix(".npy"): info for info in archive.infolist()}


def _read_header(member: IO[bytes], head: bytes) -> tuple[tuple[Any, ...], np.dtype]:
    """Shape and dtype from the .npy header after the magic string and version ``head`` (read already)."""
    version = (head[-2], head[-1])
    if version not in _NPY_VERSIONS:
        raise ValueError(f"unknown .npy format version {version[0]}.{version[1]}")
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    with warnings.catch_warnings():  # a header written by Python 2 is parsed with a UserWarning
        warnings.simplefilter("ignore")
        shape, _, dtype = read(member)
    return tuple(shape), dtype


def _not_npy(path: str, key: str, info: zipfile.ZipInfo, head: bytes) -> str:
    where = f"{path}: array {key!r} (member {info.filename!r})"
    if head[:1] == b"\x80":
        return (f"{where} is a Python pickle, not a .npy array; pickles are not loaded (allow_pickle stays False: "
                "unpickling can run code); save numeric arrays with np.savez(FILE, x=..., y=...)")
    return f"{where} is not a .npy array (it starts with {head!r})"


def _check_header(path: str, key: str, info: zipfile.ZipInfo, archive: zipfile.ZipFile) -> tuple[int, int]:
    """The number of values of member ``key`` and the bytes it decompresses to, after checking its .npy
    header: numbers of a shape the member can hold. Nothing of the array is read."""
    try:
        with archive.open(info) as member:
            head = member.read(_MAGIC_LEN)
            if head[:len(_NPY_MAGIC)] == _NPY_MAGIC and len(head) == _MAGIC_LEN:
                shape, dtype = _read_header(member, head)
                offset = member.tell()
    except Exception as exc:  # ValueError (bad header), BadZipFile, zlib.error, EOFError, encrypted member, ...
        raise DatasetError(f"{path}: cannot read array {key!r} (member {info.filename!r}; corrupt file?): "
                           f"{one_line(exc)}") from None
    if head[:len(_NPY_MAGIC)] != _NPY_MAGIC or len(head) != _MAGIC_LEN:
        raise DatasetError(_not_npy(path, key, info, head))
    if dtype.hasobject:
        raise DatasetError(f"{path}: array {key!r} holds Python objects (dtype object), which are not loaded "
                           "(allow_pickle stays False: unpickling can run code); save numeric arrays instead")
    if dtype.kind not in "biuf":
        raise DatasetError(f"{path}: array {key!r} has dtype {dtype}; expected numbers (bool, int or float)")
    if any(d < 0 for d in shape):
        raise DatasetError(f"{path}: array {key!r} has a negative dimension in its shape {shape} (corrupt file?)")
    if not shape and key != "n_classes":
        raise DatasetError(f"{path}: array {key!r} is a scalar; expected one row per sample")
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    if nbytes > info.file_size - offset:
        raise DatasetError(f"{path}: array {key!r} declares shape {shape} of {dtype} = {nbytes:,} bytes, but its "
                           f"member {info.filename!r} holds only {max(0, info.file_size - offset):,} bytes of data "
                           "(corrupt or truncated file?)")
    return count, nbytes


def _read_member(path: str, key: str, info: zipfile.ZipInfo, archive: zipfile.ZipFile) -> np.ndarray:
    try:
        with archive.open(info) as member, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.lib.format.read_array(member, allow_pickle=False)
    except Exception as exc:  # BadZipFile (CRC), EOFError, zlib.error, ValueError (short data), MemoryError, ...
        raise DatasetError(f"{path}: cannot read array {key!r} (corrupt file?): {one_line(exc)}") from None


def _select(path: str, members: dict[str, zipfile.ZipInfo]) -> list[str]:
    """The arrays to read: x and y, x_test and y_test when both are there, n_classes when it is."""
    keys = sorted(members)
    missing = [k for k in ("x", "y") if k not in members]
    if missing:
        found = ", ".join(map(repr, keys[:20])) + (f" and {len(keys) - 20} more" if len(keys) > 20 else "")
        raise DatasetError(f"{path}: missing array(s) {', '.join(map(repr, missing))}; found keys: "
                           f"{found or 'none'}; expected 'x', 'y' (and optionally 'x_test', 'y_test')")
    has_test = [k for k in ("x_test", "y_test") if k in members]
    if len(has_test) == 1:
        other = "y_test" if has_test[0] == "x_test" else "x_test"
        raise DatasetError(f"{path}: has {has_test[0]!r} but not {other!r}; give both or neither")
    return ["x", "y", *has_test, *(["n_classes"] if "n_classes" in members else [])]


def _read_npz(path: str) -> dict[str, np.ndarray]:
    """The arrays x, y and (if present) x_test, y_test, n_classes of an .npz file: numeric, and checked to fit
    in memory (from their headers) before any of them is read."""
    if not os.path.exists(path):
        raise DatasetError(f"npz: file not found: {path}")
    try:
        f = open_regular(path, "npz")
    except OSError as exc:  # PermissionError, ...; a FIFO or device is an InputFileError (a ValueError)
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from None
    with f, _open_zip(f, path) as archive:
        members = _members(archive)
        keys = _select(path, members)
        headers = {k: _check_header(path, k, members[k], archive) for k in keys}
        # Reading keeps every array; without a test split each is then indexed into train and test (a copy),
        # and x (with x_test) is copied to float32, 4 bytes a value.
        need = sum(2 * nbytes for _, nbytes in headers.values())
        need += sum(4 * headers[k][0] for k in ("x", "x_test") if k in headers)
        listed = ", ".join(f"{k!r} ({human_size(nbytes)} decompressed)" for k, (_, nbytes) in headers.items())
        check_memory(f"{path}: loading its arrays {listed}", need,
                     "is the file a compressed archive of more data than this machine holds?")
        return {k: _read_member(path, k, members[k], archive) for k in keys}


# ------------------------------------------------------------------------------------------------
# Checking the arrays (what a model needs of them) and building the splits
# ------------------------------------------------------------------------------------------------


def _check_shapes(path: str, arrays: dict[str, np.ndarray]) -> None:
    has_test = "x_test" in arrays
    for xk in ("x", "x_test"):
        if xk in arrays and arrays[xk].ndim < 2:
            raise DatasetError(f"{path}: {xk!r} has shape {arrays[xk].shape}; expected (n_samples, features...), "
                               "e.g. (n, 1) for one feature per sample")
    for xk in ("x", "x_test"):
        if xk in arrays and len(arrays[xk]) == 0:
            raise DatasetError(f"{path}: {xk!r} has shape {arrays[xk].shape}: no samples")
    for key in ("x", "y", "x_test", "y_test"):
        if key in arrays and arrays[key].ndim > 1 and 0 in arrays[key].shape[1:]:
            raise DatasetError(f"{path}: {key!r} has shape {arrays[key].shape}: its samples hold no values")
    for xk, yk in (("x", "y"), ("x_test", "y_test")):
        if xk in arrays and len(arrays[xk]) != len(arrays[yk]):
            raise DatasetError(f"{path}: {xk!r} has {len(arrays[xk])} samples but {yk!r} has {len(arrays[yk])}")
    if has_test and arrays["x"].shape[1:] != arrays["x_test"].shape[1:]:
        raise DatasetError(f"{path}: 'x' samples have shape {arrays['x'].shape[1:]} but 'x_test' samples have "
                           f"{arrays['x_test'].shape[1:]}")
    classification = arrays["y"].dtype.kind in "biu"
    if has_test and (arrays["y_test"].dtype.kind in "biu") != classification:
        raise DatasetError(f"{path}: 'y' has dtype {arrays['y'].dtype} but 'y_test' has {arrays['y_test'].dtype}; "
                           "both must be integer labels or both float targets")


def _check_float32_range(path: str, key: str, a: np.ndarray) -> None:
    """Finite values beyond float32's range would become inf in the float32 copy: name the first one. (NaN and
    inf themselves are reported by ``validate``, with their count and first sample.)"""
    if a.dtype.kind != "f" or a.dtype.itemsize <= 4 or not a.size:
        return
    lo, hi = np.fmin.reduce(a, axis=None), np.fmax.reduce(a, axis=None)  # NaN-ignoring, no temporary array
    if not any(math.isfinite(v) and abs(v) > _FLOAT32_MAX for v in (float(lo), float(hi))):
        return
    with np.errstate(invalid="ignore"):
        where = np.isfinite(a) & (np.abs(a) > _FLOAT32_MAX)
    first = np.unravel_index(int(np.argmax(where)), a.shape)
    raise DatasetError(f"{path}: {key!r} holds {a[first].item()!r} (sample {int(first[0])}), too large for float32 "
                       f"(at most {_FLOAT32_MAX:.4g}); scale the data")


def _check_labels(path: str, arrays: dict[str, np.ndarray]) -> int:
    """The number of classes: declared by n_classes or max label + 1, checked against MAX_CLASSES before a
    model is built with one output per class."""
    top = -1
    for key in ("y", "y_test"):
        y = arrays.get(key)
        if y is None or not y.size:
            continue
        if y.ndim != 1:
            raise DatasetError(f"{path}: integer labels {key!r} must have shape (n,), got {y.shape}")
        lo, hi = int(y.min()), int(y.max())
        if lo < 0:
            raise DatasetError(f"{path}: labels {key!r} must be non-negative class indices 0..C-1, found min {lo} "
                               f"(sample {int(np.argmin(y))})")
        check_classes(path, f"label {hi} in {key!r} (sample {int(np.argmax(y))})", hi + 1)
        top = max(top, hi)
    if "n_classes" not in arrays:
        return top + 1
    declared = arrays["n_classes"]
    value = declared.item() if declared.size == 1 else None
    if declared.shape != () or declared.dtype.kind not in "iu" or value < 1:
        shown = repr(value) if value is not None else f"an array of shape {declared.shape}"
        raise DatasetError(f"{path}: 'n_classes' must be a positive integer scalar, got {shown} "
                           f"(dtype {declared.dtype})")
    check_classes(path, f"'n_classes' = {value}", int(value), "declare the true number of classes")
    return int(value)  # validate() then rejects labels outside [0, n_classes)


def _fractional_labels(path: str, y: np.ndarray) -> None:
    """n_classes declares classification, so float y are meant as labels: name the first value that is not a
    class index (or the first value, when they all look like one). y has samples (checked before)."""
    rows = y.reshape(len(y), -1)
    with np.errstate(invalid="ignore"):
        odd = ~np.isfinite(rows) | (rows != np.round(rows)) | (rows < 0)
    sample = int(np.argmax(odd.any(axis=1)))
    value = rows[sample, int(np.argmax(odd[sample]))].item()
    raise DatasetError(f"{path}: 'n_classes' declares class labels, but 'y' has dtype {y.dtype}, such as {value!r} "
                       f"(sample {sample}); labels must be integers 0..C-1 (save y as an integer array, or drop "
                       "n_classes for regression targets)")


@register_dataset("npz", usage="npz:FILE", arg="path", options={})
def _load_npz(path: str, seed: int) -> Splits:
    """Arrays x and y (and optionally x_test, y_test) from an .npz; integer y -> classification, float y -> regression.

    An optional integer scalar ``n_classes`` declares the number of classes (otherwise max label + 1),
    so labels outside [0, n_classes) are caught. Without x_test/y_test a fixed 80/20 split
    (independent of the seed) is made. x becomes float32. Float y of shape (n,) becomes (n, 1).
    """
    arrays = _read_npz(path)
    _check_shapes(path, arrays)
    for key in ("x", "x_test", "y", "y_test"):
        if key in arrays:
            _check_float32_range(path, key, arrays[key])
    classification = arrays["y"].dtype.kind in "biu"
    if not classification and "n_classes" in arrays:
        _fractional_labels(path, arrays["y"])
    n_classes = _check_labels(path, arrays) if classification else None
    if "x_test" in arrays:
        x_train, y_train, x_test, y_test = arrays["x"], arrays["y"], arrays["x_test"], arrays["y_test"]
    else:
        train_idx, test_idx = fixed_split(len(arrays["x"]))
        x_train, y_train = arrays["x"][train_idx], arrays["y"][train_idx]
        x_test, y_test = arrays["x"][test_idx], arrays["y"][test_idx]
    with np.errstate(over="ignore", invalid="ignore"):  # out-of-range values were refused above
        x_train, x_test = x_train.astype(np.float32), x_test.astype(np.float32)
        if classification:
            y_train, y_test = y_train.astype(np.int64), y_test.astype(np.int64)
            task = "classification"
        else:
            y_train, y_test = (y.astype(np.float32).reshape(len(y), -1) if y.ndim == 1 else y.astype(np.float32)
                               for y in (y_train, y_test))
            task = "regression"
    return Splits(ArrayDataset(x_train, y_train), ArrayDataset(x_test, y_test), task, n_classes,
                  tuple(x_train.shape[1:]), f"npz:{path}")
