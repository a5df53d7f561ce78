"""The built-in generated and bundled data sets: ``digits`` (scikit-learn's 8x8 digits) and ``synthetic``."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ...spec import boolean, choice, integer, real
from ..dataset import ArrayDataset
from .limits import check_classes, check_memory
from .registry import DatasetError, Splits, fixed_split, register_dataset, standardise

# ------------------------------------------------------------------------------------------------
# digits
# ------------------------------------------------------------------------------------------------


def _digits_csv() -> str | None:
    """Path of the digits file scikit-learn ships (``datasets/data/digits.csv.gz``), found without importing
    scikit-learn (whose import pulls SciPy: about 1.3 s of every rank's start); None when it is not there."""
    import importlib.util
    import os
    spec = importlib.util.find_spec("sklearn")
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        path = os.path.join(root, "datasets", "data", "digits.csv.gz")
        if os.path.isfile(path):
            return path
    return None


@lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    path = _digits_csv()
    if path is not None:  # the same file load_digits reads: 64 pixel columns, then the label
        table = np.loadtxt(path, delimiter=",", dtype=np.float64)
        x, y = np.ascontiguousarray(table[:, :-1]), table[:, -1].astype(np.int64)
    else:
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise DatasetError("the digits data set needs scikit-learn: pip install scikit-learn (from a dtrain "
                               "checkout: pip install -e \".[train]\", with tqdm and matplotlib)") from None
        bunch = load_digits()
        x, y = bunch.data.astype(np.float64), bunch.target.astype(np.int64)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


@register_dataset("digits", usage="digits", arg="options", options={"image": boolean})
def _load_digits(path: str | None, seed: int, *, image: bool = False) -> Splits:
    """scikit-learn's 1797 handwritten 8x8 digits; a fixed 1437/360 split, standardised on the training split."""
    x, y = _digits_arrays()
    train_idx, test_idx = fixed_split(len(x))
    x_train, x_test = standardise(x[train_idx], x[test_idx])
    if image:
        x_train, x_test = x_train.reshape(-1, 1, 8, 8), x_test.reshape(-1, 1, 8, 8)
    return Splits(ArrayDataset(x_train, y[train_idx]), ArrayDataset(x_test, y[test_idx]), "classification",
                  10, tuple(x_train.shape[1:]), "digits")


# ------------------------------------------------------------------------------------------------
# synthetic
# ------------------------------------------------------------------------------------------------


def _check_synthetic_size(n: int, features: int, classes: int | None, outputs: int | None) -> None:
    """Refuse options whose arrays cannot exist here, before generating them: more than MAX_CLASSES classes,
    or more memory than this process has (generating takes about 16 bytes a value of x, float64 then float32,
    and validate() a mask over it: 24 bytes a value in all, counted the same for the regression targets)."""
    if classes is not None:
        check_classes("data set 'synthetic'", f"classes={classes}", classes, "use fewer classes")
    width = outputs or 0
    need = 24 * n * (features + width) + 8 * features * ((classes or 0) + width) + 32 * n
    given = ", ".join(f"{key}={value}" for key, value in (("n", n), ("features", features), ("classes", classes),
                                                           ("outputs", outputs)) if value is not None)
    check_memory(f"data set 'synthetic': {given}", need, "use a smaller n, fewer features or fewer outputs")


@register_dataset("synthetic", usage="synthetic", arg="options", options={
    "n": integer(minimum=1), "features": integer(minimum=1), "classes": integer(minimum=1),
    "outputs": integer(minimum=1), "task": choice("classification", "regression"), "noise": real(minimum=0),
    "image": integer(minimum=1), "channels": integer(minimum=1)})
def _load_synthetic(path: str | None, seed: int, *, n: int = 10000, features: int | None = None,
                    classes: int | None = None, outputs: int | None = None, task: str = "classification",
                    noise: float | None = None, image: int | None = None, channels: int | None = None) -> Splits:
    """Generated data of any size, deterministic from the seed; the last 20% of the samples are the test split.

    classification: balanced classes, x = (centre[y] + noise * N(0, I)) / sqrt(1 + noise^2) with class
    centres drawn from N(0, I) (default noise 1.0: learnable, not trivial in few dimensions).
    regression: x ~ N(0, I), y = x @ W / sqrt(features) + noise * N(0, I), W ~ N(0, 1), shape
    (n, outputs) (default noise 0.1). image=H makes features C*H*H and x of shape (n, C, H, H), with C
    channels=C (default 1; ``image=32,channels=3`` is CIFAR-shaped).
    """
    name = "synthetic"
    if channels is not None and image is None:
        raise DatasetError(f"data set '{name}': channels={channels} needs image=H (the images' height and width)")
    if image is not None:
        channels = 1 if channels is None else channels
        size = channels * image * image
        if features is not None and features != size:
            raise DatasetError(f"data set '{name}': features={features} contradicts image={image}, "
                               f"channels={channels} (an image has {size} features); give one of them")
        features = size
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
        _check_synthetic_size(n, features, classes, None)
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
        _check_synthetic_size(n, features, None, outputs)
        noise = 0.1 if noise is None else noise
        weight = rng.standard_normal((features, outputs)) / np.sqrt(features)
        x = rng.standard_normal((n, features))
        y = (x @ weight + noise * rng.standard_normal((n, outputs))).astype(np.float32)
        n_classes = None
    x = x.astype(np.float32)
    if image is not None:
        x = x.reshape(n, channels, image, image)
    n_test = max(1, n // 5)
    n_train = n - n_test
    return Splits(ArrayDataset(x[:n_train], y[:n_train]), ArrayDataset(x[n_train:], y[n_train:]), task,
                  n_classes, tuple(x.shape[1:]), name)
