"""The data-set registry: ``register_dataset``, ``load_dataset(spec)``, ``Splits`` and ``validate``.

A spec follows dtrain's one grammar (:mod:`dtrain.spec`): ``NAME``, ``NAME:PATH`` for data sets read
from files, or ``NAME:key=value...`` for options, separated by ``,`` or ``:``
(``synthetic:n=100,task=regression`` or ``synthetic:n=100:task=regression``). The loaders live in
builtin.py (digits, synthetic), mnist.py (IDX files), npz.py and text.py; each registers itself here.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...spec import SpecError, check_int, is_int, parse_spec
from ..dataset import ArrayDataset
from .limits import MAX_CLASSES, DatasetError, one_line

__all__ = ["DatasetError", "Splits", "dataset_names", "fixed_split", "load_dataset", "register_dataset",
           "standardise", "validate"]

TASKS = ("classification", "regression", "lm")

# A fixed seed for the fixed train/test splits (digits, npz without a test set): the split must not
# change with the run's --seed, or test accuracy would not be comparable across runs.
_SPLIT_SEED = 20240229
_TRAIN_FRACTION = 0.8


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


def _example(entry: _Entry) -> str:
    return f"(e.g. {entry.name}:{next(iter(entry.options), 'key')}=...)"


def _spec_options(entry: _Entry, spec: str) -> tuple[str | None, dict[str, str]]:
    """The path (absolute, for file data sets; None otherwise) and the ``key=value`` options of a spec."""
    try:
        parsed = parse_spec(spec, path=entry.arg != "options")
    except SpecError as exc:
        example = f" {_example(entry)}" if exc.problem == "not-key-value" else ""
        raise DatasetError(f"data set '{entry.name}': {exc}{example}") from None
    if entry.arg == "options":
        if parsed.arg is not None:  # a bare word where options go, e.g. "synthetic:n"
            raise DatasetError(f"data set '{entry.name}': option {parsed.arg!r} is not key=value {_example(entry)}")
        return None, parsed.option_dict()
    if parsed.arg is None:
        if entry.arg == "path":
            raise DatasetError(f"data set '{entry.name}' needs a path: {entry.usage}")
        return None, {}
    return os.path.abspath(os.path.expanduser(parsed.arg)), {}


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
        spec: ``digits``, ``synthetic[:key=value,...]``, ``mnist:DIR``, ``npz:FILE`` or ``text[:FILE]``
            (options separated by ``,`` or ``:``).
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
    check_int("seed", seed, 0, expected="a non-negative integer", error=DatasetError)
    name = spec.strip().partition(":")[0].strip()
    entry = _REGISTRY.get(name.lower())
    if entry is None:
        raise DatasetError(f"unknown data set {name!r}; valid names: {', '.join(dataset_names())}")
    path, given = _spec_options(entry, spec)
    given.update({k: v for k, v in options.items() if v is not None})
    parsed = _resolve_options(entry, given)
    try:
        splits = entry.loader(path, int(seed), **parsed)
    except MemoryError as exc:  # the loaders check sizes first; this is the net under an estimate that was short
        raise DatasetError(f"data set '{spec.strip()}': ran out of memory while loading it ({one_line(exc)}); "
                           "use a smaller data set or a machine with more memory") from None
    validate(splits)
    return splits


# ------------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------------


def validate(splits: Splits) -> None:
    """Check a Splits for the mistakes that would otherwise surface as a silent NaN or a crash mid-run.

    Checks: task is known; n_classes is at most MAX_CLASSES; both splits are non-empty ArrayDataset(x, y);
    input_shape matches x; classification / lm labels are integers in [0, n_classes); inputs (and regression
    targets) are finite. Raises DatasetError naming the data set, the split and the problem.
    """
    name = splits.name
    if splits.task not in TASKS:
        raise DatasetError(f"data set '{name}': task must be one of {', '.join(TASKS)}, got {splits.task!r}")
    if splits.task != "regression" and (not is_int(splits.n_classes)
                                        or splits.n_classes < 1):
        raise DatasetError(f"data set '{name}': task {splits.task} needs n_classes >= 1, got {splits.n_classes!r}")
    if splits.task != "regression" and splits.n_classes > MAX_CLASSES:
        raise DatasetError(f"data set '{name}': n_classes={splits.n_classes:,} is more than the {MAX_CLASSES:,} "
                           "classes dtrain allows (the model's output layer has one row per class)")
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
# Helpers shared by the loaders (the fixed split conventions)
# ------------------------------------------------------------------------------------------------


def fixed_split(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices of a fixed 80/20 split of n samples (independent of the run's seed)."""
    order = np.random.default_rng(_SPLIT_SEED).permutation(n)
    n_train = int(_TRAIN_FRACTION * n)
    return np.sort(order[:n_train]), np.sort(order[n_train:])


def standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Standardise both with the training split's per-feature mean/std (constant features: std 1)."""
    mean = train.mean(axis=0, dtype=np.float64)
    std = train.std(axis=0, dtype=np.float64)
    std[std == 0] = 1.0
    return (((train - mean) / std).astype(np.float32), ((test - mean) / std).astype(np.float32))

