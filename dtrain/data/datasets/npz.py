"""Arrays from an ``.npz`` archive: ``npz:FILE`` (x, y and optionally x_test, y_test, n_classes)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..dataset import ArrayDataset
from ..filetype import looks_like
from .registry import DatasetError, Splits, fixed_split, register_dataset

# ------------------------------------------------------------------------------------------------
# npz
# ------------------------------------------------------------------------------------------------


def _npz_array(archive: Any, key: str, path: str) -> np.ndarray:
    try:
        array = archive[key]
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise DatasetError(f"{path}: array {key!r} holds Python objects (dtype object), which are not loaded "
                               "because unpickling can run code; save numeric arrays instead") from None
        raise DatasetError(f"{path}: cannot read array {key!r}: {exc}") from None
    except Exception as exc:  # zipfile.BadZipFile (CRC), EOFError, OSError, ...
        raise DatasetError(f"{path}: cannot read array {key!r} (corrupt file?): {type(exc).__name__}: {exc}") from None
    kind = array.dtype.kind
    if kind not in "biuf":
        raise DatasetError(f"{path}: array {key!r} has dtype {array.dtype}; expected numbers (bool, int or float)")
    if array.ndim == 0 and key != "n_classes":
        raise DatasetError(f"{path}: array {key!r} is a scalar; expected one row per sample")
    return array


def _not_an_archive(path: str, exc: Exception) -> str:
    """Why np.load failed, said by what the file looks like (NumPy calls any text file "pickled data")."""
    try:
        what = looks_like(path)
    except OSError:
        what = None
    if what is not None:
        return (f"{path}: cannot read it as an .npz archive: it looks like {what}; npz:FILE reads arrays saved "
                "with np.savez(FILE, x=..., y=...)")
    return f"{path}: cannot read it as an .npz archive: {type(exc).__name__}: {exc}"


def _read_npz(path: str) -> dict[str, np.ndarray]:
    """The arrays x, y and (if present) x_test, y_test, n_classes of an .npz file, checked to be numeric."""
    if not os.path.exists(path):
        raise DatasetError(f"npz: file not found: {path}")
    # Open the file ourselves: np.load leaks its own handle when a corrupt zip makes it raise.
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from None
    with f:
        try:
            archive = np.load(f, allow_pickle=False)
        except Exception as exc:  # ValueError (pickled / not numpy), OSError, zipfile.BadZipFile, EOFError
            raise DatasetError(_not_an_archive(path, exc)) from None
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise DatasetError(f"{path}: is a single .npy array, expected an .npz archive with arrays 'x' and "
                               "'y' (np.savez(path, x=..., y=...))")
        with archive:
            keys = sorted(archive.files)
            missing = [k for k in ("x", "y") if k not in keys]
            if missing:
                raise DatasetError(f"{path}: missing array(s) {', '.join(map(repr, missing))}; found keys: "
                                   f"{', '.join(map(repr, keys)) or 'none'}; expected 'x', 'y' (and optionally "
                                   "'x_test', 'y_test')")
            has_test = [k for k in ("x_test", "y_test") if k in keys]
            if len(has_test) == 1:
                other = "y_test" if has_test[0] == "x_test" else "x_test"
                raise DatasetError(f"{path}: has {has_test[0]!r} but not {other!r}; give both or neither")
            extra = ["n_classes"] if "n_classes" in keys else []
            return {k: _npz_array(archive, k, path) for k in ("x", "y", *has_test, *extra)}


@register_dataset("npz", usage="npz:FILE", arg="path", options={})
def _load_npz(path: str, seed: int) -> Splits:
    """Arrays x and y (and optionally x_test, y_test) from an .npz; integer y -> classification, float y -> regression.

    An optional integer scalar ``n_classes`` declares the number of classes (otherwise max label + 1),
    so labels outside [0, n_classes) are caught. Without x_test/y_test a fixed 80/20 split
    (independent of the seed) is made. x becomes float32. Float y of shape (n,) becomes (n, 1).
    """
    arrays = _read_npz(path)
    has_test = "x_test" in arrays
    for xk in ("x", "x_test"):
        if xk in arrays and arrays[xk].ndim < 2:
            raise DatasetError(f"{path}: {xk!r} has shape {arrays[xk].shape}; expected (n_samples, features...), "
                               "e.g. (n, 1) for one feature per sample")

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

    if has_test:
        x_train, y_train, x_test, y_test = arrays["x"], arrays["y"], arrays["x_test"], arrays["y_test"]
    else:
        train_idx, test_idx = fixed_split(len(arrays["x"]))
        x_train, y_train = arrays["x"][train_idx], arrays["y"][train_idx]
        x_test, y_test = arrays["x"][test_idx], arrays["y"][test_idx]
    x_train, x_test = x_train.astype(np.float32), x_test.astype(np.float32)
    name = f"npz:{path}"
    if classification:
        for key, y in (("y", arrays["y"]), ("y_test", arrays.get("y_test"))):
            if y is None or not y.size:
                continue
            if y.ndim != 1:
                raise DatasetError(f"{path}: integer labels {key!r} must have shape (n,), got {y.shape}")
            if y.min() < 0:
                raise DatasetError(f"{path}: labels {key!r} must be non-negative class indices 0..C-1, "
                                   f"found min {int(y.min())}")
        y_train, y_test = y_train.astype(np.int64), y_test.astype(np.int64)
        n_classes = max((int(y.max()) for y in (y_train, y_test) if y.size), default=0) + 1
        if "n_classes" in arrays:  # declared: validate() then rejects labels outside [0, n_classes)
            declared = arrays["n_classes"]
            if declared.shape != () or declared.dtype.kind not in "iu" or int(declared) < 1:
                raise DatasetError(f"{path}: 'n_classes' must be a positive integer scalar, got {declared!r}")
            n_classes = int(declared)
        return Splits(ArrayDataset(x_train, y_train), ArrayDataset(x_test, y_test), "classification",
                      n_classes, tuple(x_train.shape[1:]), name)
    y_train, y_test = (y.astype(np.float32).reshape(len(y), -1) if y.ndim == 1 else y.astype(np.float32)
                       for y in (y_train, y_test))
    return Splits(ArrayDataset(x_train, y_train), ArrayDataset(x_test, y_test), "regression", None,
                  tuple(x_train.shape[1:]), name)
