"""Built-in data sets behind one entry point: ``load_dataset(spec, seed=0, **options) -> Splits``.

    splits = load_dataset("digits")                          # 1437 train / 360 test, x (n, 64)
    splits = load_dataset("digits", image=True)              # x (n, 1, 8, 8) for CNNs
    splits = load_dataset("synthetic:n=50000,features=128,classes=20", seed=3)
    splits = load_dataset("mnist:~/data/mnist", flatten=True)
    splits = load_dataset("npz:arrays.npz")
    splits = load_dataset("text", seq_len=64)                # character LM on the Zen of Python
    loader = DataLoader(splits.train, batch_size=64, shuffle=True)

A spec is ``NAME`` or ``NAME:ARG``. For ``mnist``, ``npz`` and ``text`` the ARG is a path; for
``digits`` and ``synthetic`` it is a comma-separated list of ``key=value`` options. Options can
also be passed as keyword arguments (which win over the spec string; ``None`` means "default").

Adding a data set is one decorated function: ``@register_dataset(name, usage, arg, options)``
declares its spec syntax and option parsers; it returns a ``Splits``, which ``load_dataset``
then checks with ``validate``.
"""

from __future__ import annotations

import ast
import codecs
import contextlib
import gzip
import importlib.util
import inspect
import io
import os
import struct
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from .dataset import ArrayDataset

__all__ = ["DatasetError", "Splits", "dataset_names", "load_dataset", "register_dataset", "validate"]

TASKS = ("classification", "regression", "lm")

# A fixed seed for the fixed train/test splits (digits, npz without a test set): the split must not
# change with the run's --seed, or test accuracy would not be comparable across runs.
_SPLIT_SEED = 20240229
_TRAIN_FRACTION = 0.8

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


class DatasetError(ValueError):
    """A data set cannot be loaded or is invalid (the message names the file or data set and the problem)."""


@dataclass
class Splits:
    """A data set split into training and test parts, with what a model needs to know about it.

    Attributes:
        train: training samples, ``ArrayDataset(x, y)``.
        test: test samples, ``ArrayDataset(x, y)``.
        task: ``"classification"`` (y int64 labels, shape (n,)), ``"regression"`` (y float32, shape
            (n, k)) or ``"lm"`` (x and y int64 token ids of shape (n, seq_len), y = next tokens).
        n_classes: number of classes (vocabulary size for ``lm``); None for regression.
        input_shape: shape of one input sample, e.g. ``(64,)`` or ``(1, 28, 28)``.
        name: the spec the data came from (e.g. ``"npz:/data/a.npz"``), used in messages.
        vocab: for ``lm``, the vocabulary: character ``vocab[i]`` has id i. None otherwise.
    """

    train: ArrayDataset
    test: ArrayDataset
    task: str
    n_classes: int | None
    input_shape: tuple[int, ...]
    name: str
    vocab: str | None = None

    @property
    def output_size(self) -> int:
        """Width of the model's output layer: n_classes, or the number of regression targets."""
        if self.task == "regression":
            y = self.train.arrays[1]
            return int(np.prod(y.shape[1:], dtype=np.int64)) if y.ndim > 1 else 1
        return int(self.n_classes)

    def summary(self) -> str:
        """One line for logs, e.g. ``digits: 1437 train / 360 test, classification, 10 classes, input (64,)``."""
        what = {"classification": f"{self.n_classes} classes", "lm": f"vocabulary of {self.n_classes}",
                "regression": f"{self.output_size} target(s)"}[self.task]
        return (f"{self.name}: {len(self.train)} train / {len(self.test)} test, {self.task}, {what}, "
                f"input {self.input_shape}")


# ------------------------------------------------------------------------------------------------
# Registry and option parsing
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    name: str
    usage: str
    arg: str  # "options" (key=value list), "path" (required) or "optional-path"
    options: dict[str, Callable[[Any], Any]]
    loader: Callable[..., Splits]


_REGISTRY: dict[str, _Entry] = {}


def register_dataset(name: str, usage: str, arg: str, options: dict[str, Callable[[Any], Any]]):
    """Decorator registering ``fn(arg, seed, **options) -> Splits`` as data set ``name``.

    Args:
        name: the spec's NAME.
        usage: how to spell the spec in messages, e.g. ``"mnist:DIR"``.
        arg: what follows ``NAME:`` — ``"options"`` (``key=value,...``), ``"path"`` (required) or
            ``"optional-path"``.
        options: option name -> parser; a parser takes a string (from the spec) or a Python value
            (from keyword arguments) and returns the value or raises ValueError. The defaults are
            the keyword defaults of ``fn``, which must have exactly these keyword-only options.
    """
    if arg not in ("options", "path", "optional-path"):
        raise ValueError(f"register_dataset: arg must be 'options', 'path' or 'optional-path', got {arg!r}")

    def decorate(fn: Callable[..., Splits]) -> Callable[..., Splits]:
        kw_only = {p.name for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY}
        if kw_only != set(options):
            raise TypeError(f"register_dataset({name!r}): options {sorted(options)} do not match the "
                            f"keyword-only parameters of {fn.__name__}: {sorted(kw_only)}")
        _REGISTRY[name] = _Entry(name, usage, arg, dict(options), fn)
        return fn

    return decorate


def dataset_names() -> list[str]:
    """The usage strings of the registered data sets, e.g. ``['digits', 'synthetic', 'mnist:DIR', ...]``."""
    return [entry.usage for entry in _REGISTRY.values()]


def _positive_int(value: Any) -> int:
    if isinstance(value, str):
        value = value.strip()
        if not value.lstrip("+").isdigit():
            raise ValueError("expected a positive integer")
        value = int(value)
    if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)) or value < 1:
        raise ValueError("expected a positive integer")
    return int(value)


def _nonneg_float(value: Any) -> float:
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise ValueError("expected a non-negative number") from None
    if isinstance(value, (bool, np.bool_)) or not np.isfinite(number) or number < 0:
        raise ValueError("expected a non-negative number")
    return number


def _bool(value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return value.strip().lower() in ("1", "true", "yes", "on")
    raise ValueError("expected true or false")


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = value.strip() if isinstance(value, str) else value
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return text

    return parse


def _parse_options(entry: _Entry, text: str) -> dict[str, str]:
    """``"n=10,task=regression"`` -> ``{"n": "10", "task": "regression"}`` (values still strings)."""
    out: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise DatasetError(f"data set '{entry.name}': option {item.strip()!r} is not key=value "
                               f"(e.g. {entry.name}:{next(iter(entry.options), 'key')}=...)")
        if key in out:
            raise DatasetError(f"data set '{entry.name}': option {key!r} is given twice")
        out[key] = value
    return out


def _resolve_options(entry: _Entry, given: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(given) - set(entry.options))
    if unknown:
        valid = ", ".join(entry.options) or "none"
        raise DatasetError(f"data set '{entry.name}' has no option {', '.join(map(repr, unknown))}; "
                           f"valid options: {valid}")
    parsed = {}
    for key, value in given.items():
        try:
            parsed[key] = entry.options[key](value)
        except ValueError as exc:
            raise DatasetError(f"data set '{entry.name}': bad value {key}={value!r}: {exc}") from None
    return parsed


def load_dataset(spec: str, seed: int = 0, **options: Any) -> Splits:
    """Load a data set by spec, validate it, and return its train/test Splits.

    Args:
        spec: ``digits``, ``synthetic[:key=value,...]``, ``mnist:DIR``, ``npz:FILE`` or ``text[:FILE]``.
        seed: seed for data sets that are generated (``synthetic``). The train/test split of the
            other data sets is fixed and does not depend on it.
        **options: data-set options (they override the same option in the spec string; None
            values are ignored). digits: ``image``; synthetic: ``n, features, classes, outputs,
            task, noise, image``; mnist: ``flatten``; npz: none; text: ``seq_len, stride``.

    Returns:
        A validated Splits.

    Raises:
        DatasetError (a ValueError) naming the data set or file and what is wrong.

    Example:
        >>> s = load_dataset("synthetic:n=100,features=4,classes=3", seed=1)
        >>> s.train.arrays[0].shape, s.test.arrays[0].shape, s.n_classes
        ((80, 4), (20, 4), 3)
    """
    if not isinstance(spec, str) or not spec.strip():
        raise DatasetError(f"data set spec must be a non-empty string, got {spec!r}; valid: "
                           f"{', '.join(dataset_names())}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise DatasetError(f"seed must be a non-negative integer, got {seed!r}")
    name, has_arg, arg = spec.strip().partition(":")
    entry = _REGISTRY.get(name.strip().lower())
    if entry is None:
        raise DatasetError(f"unknown data set {name!r}; valid names: {', '.join(dataset_names())}")
    given: dict[str, Any] = {}
    path: str | None = None
    if entry.arg == "options":
        if has_arg:
            given.update(_parse_options(entry, arg))
    elif not has_arg or not arg.strip():
        if entry.arg == "path":
            raise DatasetError(f"data set '{entry.name}' needs a path: {entry.usage}")
    else:
        path = os.path.abspath(os.path.expanduser(arg.strip()))
    given.update({k: v for k, v in options.items() if v is not None})
    parsed = _resolve_options(entry, given)
    splits = entry.loader(path if entry.arg != "options" else None, int(seed), **parsed)
    validate(splits)
    return splits


# ------------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------------


def validate(splits: Splits) -> None:
    """Check a Splits for the mistakes that would otherwise surface as a silent NaN or a crash mid-run.

    Checks: task is known; both splits are non-empty ArrayDataset(x, y); input_shape matches x;
    classification / lm labels are integers in [0, n_classes); inputs (and regression targets)
    are finite. Raises DatasetError naming the data set, the split and the problem.
    """
    name = splits.name
    if splits.task not in TASKS:
        raise DatasetError(f"data set '{name}': task must be one of {', '.join(TASKS)}, got {splits.task!r}")
    if splits.task != "regression" and (not isinstance(splits.n_classes, (int, np.integer))
                                        or splits.n_classes < 1):
        raise DatasetError(f"data set '{name}': task {splits.task} needs n_classes >= 1, got {splits.n_classes!r}")
    for split in ("train", "test"):
        ds = getattr(splits, split)
        if not isinstance(ds, ArrayDataset) or len(ds.arrays) != 2:
            raise DatasetError(f"data set '{name}': the {split} split must be ArrayDataset(x, y), got {ds!r}")
        if len(ds) == 0:
            raise DatasetError(f"data set '{name}': the {split} split is empty")
        x, y = ds.arrays
        if tuple(x.shape[1:]) != tuple(splits.input_shape):
            raise DatasetError(f"data set '{name}': {split} inputs have sample shape {tuple(x.shape[1:])} but "
                               f"input_shape is {tuple(splits.input_shape)}")
        if splits.task == "regression":
            _check_finite(name, split, "inputs", x)
            _check_finite(name, split, "targets", y)
            continue
        _check_labels(name, split, "labels", y, splits.n_classes)
        if splits.task == "lm":
            _check_labels(name, split, "input ids", x, splits.n_classes)
        else:
            _check_finite(name, split, "inputs", x)


def _check_labels(name: str, split: str, what: str, y: np.ndarray, n_classes: int) -> None:
    if not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(f"data set '{name}', {split} split: {what} must be integers, got dtype {y.dtype}")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= n_classes:
        raise DatasetError(f"data set '{name}', {split} split: {what} must lie in [0, {n_classes}) "
                           f"(n_classes={n_classes}) but range from {lo} to {hi}")


def _check_finite(name: str, split: str, what: str, x: np.ndarray) -> None:
    if not np.issubdtype(x.dtype, np.floating):
        if np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_:
            return
        raise DatasetError(f"data set '{name}', {split} split: {what} must be numeric, got dtype {x.dtype}")
    bad = ~np.isfinite(x)
    count = int(bad.sum())
    if count:
        first = int(np.argmax(bad.reshape(len(x), -1).any(axis=1)))
        raise DatasetError(f"data set '{name}', {split} split: {count} non-finite values (NaN or inf) in the {what}, "
                           f"first in sample {first}")


# ------------------------------------------------------------------------------------------------
# Helpers shared by the loaders
# ------------------------------------------------------------------------------------------------


def _fixed_split(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices of a fixed 80/20 split of n samples (independent of the run's seed)."""
    order = np.random.default_rng(_SPLIT_SEED).permutation(n)
    n_train = int(_TRAIN_FRACTION * n)
    return np.sort(order[:n_train]), np.sort(order[n_train:])


def _standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Standardise both with the training split's per-feature mean/std (constant features: std 1)."""
    mean = train.mean(axis=0, dtype=np.float64)
    std = train.std(axis=0, dtype=np.float64)
    std[std == 0] = 1.0
    return (((train - mean) / std).astype(np.float32), ((test - mean) / std).astype(np.float32))


# ------------------------------------------------------------------------------------------------
# digits
# ------------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DatasetError("the digits data set needs scikit-learn: pip install scikit-learn") from None
    bunch = load_digits()
    x, y = bunch.data.astype(np.float64), bunch.target.astype(np.int64)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


@register_dataset("digits", usage="digits", arg="options", options={"image": _bool})
def _load_digits(path: str | None, seed: int, *, image: bool = False) -> Splits:
    """scikit-learn's 1797 handwritten 8x8 digits; a fixed 1437/360 split, standardised on the training split."""
    x, y = _digits_arrays()
    train_idx, test_idx = _fixed_split(len(x))
    x_train, x_test = _standardise(x[train_idx], x[test_idx])
    if image:
        x_train, x_test = x_train.reshape(-1, 1, 8, 8), x_test.reshape(-1, 1, 8, 8)
    return Splits(ArrayDataset(x_train, y[train_idx]), ArrayDataset(x_test, y[test_idx]), "classification",
                  10, tuple(x_train.shape[1:]), "digits")


# ------------------------------------------------------------------------------------------------
# synthetic
# ------------------------------------------------------------------------------------------------


@register_dataset("synthetic", usage="synthetic", arg="options", options={
    "n": _positive_int, "features": _positive_int, "classes": _positive_int, "outputs": _positive_int,
    "task": _choice("classification", "regression"), "noise": _nonneg_float, "image": _positive_int})
def _load_synthetic(path: str | None, seed: int, *, n: int = 10000, features: int | None = None,
                    classes: int | None = None, outputs: int | None = None, task: str = "classification",
                    noise: float | None = None, image: int | None = None) -> Splits:
    """Generated data of any size, deterministic from the seed; the last 20% of the samples are the test split.

    classification: balanced classes, x = (centre[y] + noise * N(0, I)) / sqrt(1 + noise^2) with class
    centres drawn from N(0, I) (default noise 1.0: learnable, not trivial in few dimensions).
    regression: x ~ N(0, I), y = x @ W / sqrt(features) + noise * N(0, I), W ~ N(0, 1), shape
    (n, outputs) (default noise 0.1). image=H makes features H*H and x of shape (n, 1, H, H).
    """
    name = "synthetic"
    if image is not None:
        if features is not None and features != image * image:
            raise DatasetError(f"data set '{name}': features={features} contradicts image={image} "
                               f"(an image has {image * image} features); give one of them")
        features = image * image
    features = 64 if features is None else features
    if n < 2:
        raise DatasetError(f"data set '{name}': n={n} is too small; need at least 2 samples (train and test)")
    rng = np.random.default_rng(seed)
    if task == "classification":
        if outputs is not None:
            raise DatasetError(f"data set '{name}': outputs={outputs} applies to task=regression; "
                               "use classes= for classification")
        classes = 10 if classes is None else classes
        if classes < 2:
            raise DatasetError(f"data set '{name}': classes={classes}; classification needs at least 2")
        noise = 1.0 if noise is None else noise
        centres = rng.standard_normal((classes, features))
        y = rng.permutation(np.arange(n) % classes).astype(np.int64)
        x = (centres[y] + noise * rng.standard_normal((n, features))) / np.sqrt(1.0 + noise * noise)
        n_classes: int | None = classes
    else:
        if classes is not None:
            raise DatasetError(f"data set '{name}': classes={classes} applies to task=classification; "
                               "use outputs= for regression")
        outputs = 1 if outputs is None else outputs
        noise = 0.1 if noise is None else noise
        weight = rng.standard_normal((features, outputs)) / np.sqrt(features)
        x = rng.standard_normal((n, features))
        y = (x @ weight + noise * rng.standard_normal((n, outputs))).astype(np.float32)
        n_classes = None
    x = x.astype(np.float32)
    if image is not None:
        x = x.reshape(n, 1, image, image)
    n_test = max(1, n // 5)
    n_train = n - n_test
    return Splits(ArrayDataset(x[:n_train], y[:n_train]), ArrayDataset(x[n_train:], y[n_train:]), task,
                  n_classes, tuple(x.shape[1:]), name)


# ------------------------------------------------------------------------------------------------
# MNIST (IDX files)
# ------------------------------------------------------------------------------------------------

_IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
_MNIST_FILES = {
    "train_images": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "train_labels": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "test_images": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "test_labels": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}


def _find_idx_file(directory: str, names: tuple[str, ...]) -> str:
    for base in names:
        for candidate in (base, base + ".gz"):
            path = os.path.join(directory, candidate)
            if os.path.isfile(path):
                return path
    raise DatasetError(f"mnist: missing file {os.path.join(directory, names[0])} (or .gz) in {directory}")


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from None
    if path.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DatasetError(f"{path} is not a valid gzip file (corrupt or truncated download?): {exc}") from None
    return raw


def read_idx(path: str, magic: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes (plain or .gz) after checking its header against the data.

    Args:
        path: the file.
        magic: the expected magic number (0x00000803 for images, 0x00000801 for labels).

    Returns:
        A uint8 array shaped as the header says (read-only view on the file's bytes).
    """
    raw = _read_bytes(path)
    ndim = magic & 0xFF
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise DatasetError(f"{path}: file too short for an IDX header ({len(raw)} bytes, need {header_len})")
    (found,) = struct.unpack(">I", raw[:4])
    if found != magic:
        raise DatasetError(f"{path}: wrong magic number 0x{found:08x}, expected 0x{magic:08x} "
                           f"({'images' if ndim == 3 else 'labels'} of unsigned bytes); not an MNIST IDX file?")
    dims = struct.unpack(f">{ndim}I", raw[4:header_len])
    if any(d == 0 for d in dims[1:]):
        raise DatasetError(f"{path}: header has a zero dimension {dims}")
    expected = int(np.prod(dims, dtype=np.int64))
    have = len(raw) - header_len
    if have != expected:
        problem = "truncated" if have < expected else "has trailing bytes"
        raise DatasetError(f"{path}: {problem}: the header says {' x '.join(map(str, dims))} = {expected} bytes "
                           f"of data, the file has {have}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(dims)


def _read_mnist_split(directory: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    images_path = _find_idx_file(directory, _MNIST_FILES[f"{split}_images"])
    labels_path = _find_idx_file(directory, _MNIST_FILES[f"{split}_labels"])
    images = read_idx(images_path, _IDX_IMAGES_MAGIC)
    labels = read_idx(labels_path, _IDX_LABELS_MAGIC)
    if len(images) != len(labels):
        raise DatasetError(f"mnist: {images_path} has {len(images)} images but {labels_path} has "
                           f"{len(labels)} labels")
    if len(labels) and labels.max() > 9:
        raise DatasetError(f"{labels_path}: labels must be digits 0..9, found {int(labels.max())} (corrupt file?)")
    return images, labels


@register_dataset("mnist", usage="mnist:DIR", arg="path", options={"flatten": _bool})
def _load_mnist(path: str, seed: int, *, flatten: bool = False) -> Splits:
    """The four standard MNIST IDX files (plain or .gz) in a directory; scaled to [0, 1] then (x - 0.1307) / 0.3081."""
    if not os.path.exists(path):
        raise DatasetError(f"mnist: directory not found: {path}")
    if not os.path.isdir(path):
        raise DatasetError(f"mnist: {path} is not a directory; give the folder holding the IDX files")
    parts = []
    for split in ("train", "test"):
        images, labels = _read_mnist_split(path, split)
        parts.append((images, labels))
    (train_x, train_y), (test_x, test_y) = parts
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DatasetError(f"mnist: training images are {train_x.shape[1:]} but test images are "
                           f"{test_x.shape[1:]} in {path}")

    def prepare(images: np.ndarray) -> np.ndarray:
        x = images.astype(np.float32)
        x *= np.float32(1.0 / (255.0 * MNIST_STD))
        x -= np.float32(MNIST_MEAN / MNIST_STD)
        return x.reshape(len(x), -1) if flatten else x[:, None, :, :]

    x_train, x_test = prepare(train_x), prepare(test_x)
    return Splits(ArrayDataset(x_train, train_y.astype(np.int64)), ArrayDataset(x_test, test_y.astype(np.int64)),
                  "classification", 10, tuple(x_train.shape[1:]), f"mnist:{path}")


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
            raise DatasetError(f"{path}: cannot read it as an .npz archive: {type(exc).__name__}: {exc}") from None
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
        train_idx, test_idx = _fixed_split(len(arrays["x"]))
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


# ------------------------------------------------------------------------------------------------
# text (character-level language modelling)
# ------------------------------------------------------------------------------------------------


def _zen_of_python() -> str:
    """The Zen of Python, from the stdlib module ``this``, without printing it."""
    module = sys.modules.get("this")
    if module is None:
        spec = importlib.util.find_spec("this")
        if spec is not None and spec.origin and spec.origin.endswith(".py"):
            try:
                with open(spec.origin, encoding="utf-8") as f:
                    tree = ast.parse(f.read())
                for node in tree.body:
                    if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "s"
                                                            for t in node.targets):
                        return codecs.decode(ast.literal_eval(node.value), "rot13")
            except (OSError, SyntaxError, ValueError):
                pass  # fall back to importing it below
        with contextlib.redirect_stdout(io.StringIO()):  # `import this` prints the Zen
            import this as module
    return codecs.decode(module.s, "rot13")


PYTHON_DOCS_CHARS = 100_000


def _python_docs() -> str:
    """English prose that ships with CPython: the language-reference topics behind ``help()``
    (``pydoc_data.topics``), in a fixed order, the first PYTHON_DOCS_CHARS characters. Falls back to
    the Zen of Python where a distribution strips pydoc_data."""
    try:
        from pydoc_data.topics import topics
    except ImportError:
        return _zen_of_python()
    return "".join(topics[k] for k in sorted(topics))[:PYTHON_DOCS_CHARS]


def _read_text(path: str) -> str:
    if not os.path.exists(path):
        raise DatasetError(f"text: file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from None


def _windows(ids: np.ndarray, seq_len: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    # Views, not copies: a 1 MB text with stride 1 would otherwise take gigabytes; the DataLoader's
    # fancy indexing copies one batch at a time.
    windows = np.lib.stride_tricks.sliding_window_view(ids, seq_len + 1)[::stride]
    return windows[:, :-1], windows[:, 1:]


@register_dataset("text", usage="text[:FILE]", arg="optional-path",
                  options={"seq_len": _positive_int, "stride": _positive_int})
def _load_text(path: str | None, seed: int, *, seq_len: int = 32, stride: int | None = None) -> Splits:
    """Character-level LM: windows x = ids[i:i+seq_len], y = ids[i+1:i+seq_len+1], every ``stride``
    characters (default seq_len // 4); the last 10% of the text is the test split.

    ``text`` is Python's own documentation (pydoc_data.topics, 100,000 characters), ``text:zen`` the
    Zen of Python (tiny: a model memorises it), ``text:FILE`` a UTF-8 file.
    """
    if stride is None:
        stride = max(1, seq_len // 4)
    if path is None:
        text, where, name = _python_docs(), "Python's documentation topics", "text"
    elif os.path.basename(path) == "zen" and not os.path.exists(path):  # (a file named zen wins)
        text, where, name = _zen_of_python(), "the Zen of Python", "text:zen"
    else:
        text, where, name = _read_text(path), path, f"text:{path}"
    n_test = len(text) // 10
    n_train = len(text) - n_test
    if min(n_train, n_test) < seq_len + 1:
        raise DatasetError(f"text: {where} has {len(text)} characters, too short for seq_len {seq_len}: the test "
                           f"split (last 10%, {n_test} characters) and the training split ({n_train}) each need "
                           f"at least seq_len + 1 = {seq_len + 1}; use a longer text or a smaller seq_len")
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    vocab_codes = np.unique(codes)
    ids = np.searchsorted(vocab_codes, codes).astype(np.int64)
    vocab = "".join(map(chr, vocab_codes.tolist()))
    x_train, y_train = _windows(ids[:n_train], seq_len, stride)
    x_test, y_test = _windows(ids[n_train:], seq_len, stride)
    return Splits(ArrayDataset(x_train, y_train), ArrayDataset(x_test, y_test), "lm", len(vocab), (seq_len,),
                  name, vocab=vocab)
