"""Built-in data sets behind one entry point: ``load_dataset(spec, seed=0, **options) -> Splits``.

    splits = load_dataset("digits")                          # 1437 train / 360 test, x (n, 64)
    splits = load_dataset("digits", image=True)              # x (n, 1, 8, 8) for CNNs
    splits = load_dataset("synthetic:n=50000,features=128,classes=20", seed=3)
    splits = load_dataset("mnist:~/data/mnist", flatten=True)
    splits = load_dataset("npz:arrays.npz")
    splits = load_dataset("text", seq_len=64)                # character LM on Python's documentation
    loader = DataLoader(splits.train, batch_size=64, shuffle=True)

A spec is ``NAME`` or ``NAME:ARG`` in dtrain's one spec grammar (:mod:`dtrain.spec`). For ``mnist``,
``npz`` and ``text`` the ARG is a path; for ``digits`` and ``synthetic`` it is a list of
``key=value`` options separated by ``,`` or ``:``. Options can also be passed as keyword arguments
(which win over the spec string; ``None`` means "default").

Adding a data set is one decorated function: ``@register_dataset(name, usage, arg, options)``
declares its spec syntax and option parsers (from :mod:`dtrain.spec`: ``integer``, ``real``,
``boolean``, ``choice``); it returns a ``Splits``, which ``load_dataset`` then checks with ``validate``.

Modules: ``registry`` (Splits, register_dataset, load_dataset, validate), ``builtin`` (digits,
synthetic), ``mnist`` (IDX files), ``npz``, ``text``. Importing this package registers them in that order.
``limits`` holds what every loader checks before it allocates (MAX_CLASSES, the text size limit, the memory
a load may need) and DatasetError; files are opened with :func:`dtrain.files.open_regular` (regular files
only: a FIFO or a device is refused at once).
"""

from __future__ import annotations

from . import builtin, mnist, npz, text  # noqa: F401  (each registers its data sets, in this order)
from .mnist import read_idx
from .registry import DatasetError, Splits, dataset_names, load_dataset, register_dataset, validate

__all__ = ["DatasetError", "Splits", "dataset_names", "load_dataset", "read_idx", "register_dataset", "validate"]
