"""Datasets, samplers and the DataLoader: mini-batches of NumPy arrays.

    ds = ArrayDataset(x, y)                                  # x: (n, ...), y: (n, ...)
    loader = DataLoader(ds, batch_size=64, shuffle=True, seed=0)
    for epoch in range(3):
        loader.set_epoch(epoch)
        for xb, yb in loader:                                # NumPy arrays, a batch each
            ...

Shuffling is a pure function of ``(seed, epoch)``: the order of epoch e is
``np.random.default_rng([seed, epoch]).permutation(n)``, so any epoch can be replayed, and a run
resumed in the middle of an epoch (``loader.iter_epoch(e, start_batch=k)``) sees exactly the
batches the uninterrupted run would have seen. Everything here is NumPy only; moving a batch to a
device is the caller's business.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from .. import env
from ..spec import check_int, is_int

__all__ = [
    "ArrayDataset",
    "DataLoader",
    "Dataset",
    "DistributedSampler",
    "RandomSampler",
    "Sampler",
    "SequentialSampler",
    "shard_slice",
    "TensorDataset",
]


# ------------------------------------------------------------------------------------------------
# Datasets
# ------------------------------------------------------------------------------------------------


class Dataset(abc.ABC):
    """A finite, indexable collection of samples.

    Subclasses implement ``__len__`` and ``__getitem__`` (returning one sample, normally a tuple
    such as ``(x, y)``). ``get_batch(indices)`` builds a whole mini-batch; the default stacks the
    samples one by one, so subclasses that hold arrays should override it with a vectorised version.
    """

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of samples."""

    @abc.abstractmethod
    def __getitem__(self, index: int) -> Any:
        """The sample at ``index`` (a tuple of arrays or scalars, or a single array)."""

    def get_batch(self, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, ...]:
        """Return the samples at ``indices`` stacked field by field.

        Args:
            indices: sample indices (a sequence or 1-D integer array, at least one).

        Returns:
            A tuple with one array per field of a sample, each with a leading batch dimension
            ``len(indices)``. A sample that is not a tuple counts as a single field.
        """
        return _stack_samples(self, indices)


def _stack_samples(dataset: Any, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, ...]:
    items = [dataset[int(i)] for i in indices]
    if not items:
        raise ValueError("get_batch needs at least one index to know the shape of a sample")
    items = [item if isinstance(item, tuple) else (item,) for item in items]
    n_fields = len(items[0])
    if any(len(item) != n_fields for item in items):
        raise ValueError(f"samples have different numbers of fields: {sorted({len(item) for item in items})}")
    return tuple(np.stack([np.asarray(item[k]) for item in items]) for k in range(n_fields))


class ArrayDataset(Dataset):
    """A dataset over arrays that share their first (sample) dimension, such as inputs and labels.

    Args:
        *arrays: one or more NumPy arrays (or array-likes), each of shape ``(n, ...)``.

    Sample ``i`` is ``tuple(a[i] for a in arrays)``; ``get_batch(indices)`` gathers a whole batch
    with one fancy-indexing copy per array.

    Example:
        >>> ds = ArrayDataset(np.zeros((10, 3), np.float32), np.arange(10))
        >>> xb, yb = ds.get_batch([0, 5, 9])
        >>> xb.shape, yb.tolist()
        ((3, 3), [0, 5, 9])
    """

    def __init__(self, *arrays: Any):
        if not arrays:
            raise ValueError("ArrayDataset needs at least one array")
        converted = tuple(np.asarray(a) for a in arrays)
        for k, a in enumerate(converted):
            if a.ndim == 0:
                raise ValueError(f"ArrayDataset: array {k} is a scalar; every array needs a sample dimension")
        lengths = [a.shape[0] for a in converted]
        if len(set(lengths)) > 1:
            listed = ", ".join(f"{n} (array {k})" for k, n in enumerate(lengths))
            raise ValueError(f"ArrayDataset: arrays must have the same first dimension, got {listed}")
        self.arrays: tuple[np.ndarray, ...] = converted

    @property
    def tensors(self) -> tuple[np.ndarray, ...]:
        """The arrays (the name PyTorch's TensorDataset uses)."""
        return self.arrays

    def __len__(self) -> int:
        return self.arrays[0].shape[0]

    def __getitem__(self, index: int) -> tuple[np.ndarray, ...]:
        return tuple(a[index] for a in self.arrays)

    def get_batch(self, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, ...]:
        """Return ``tuple(a[indices] for a in arrays)`` (new, contiguous arrays)."""
        idx = np.asarray(indices, dtype=np.intp)
        return tuple(a[idx] for a in self.arrays)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{a.dtype}{list(a.shape)}" for a in self.arrays)
        return f"ArrayDataset({shapes})"


TensorDataset = ArrayDataset


def _sample_count(owner: str, data: Any, minimum: int) -> int:
    """The number of samples a sampler covers, from ``data``: a data set (anything with ``len()``, as
    PyTorch's samplers take theirs) or the count itself. Errors name the sampler and the bad value."""
    if hasattr(data, "__len__") and not isinstance(data, (str, bytes)):
        n = len(data)
        if n < minimum:
            raise ValueError(f"{owner}: the data set is empty (len() is {n}): {data!r}")
        return n
    kind = "a positive" if minimum >= 1 else "a non-negative"
    expected = f"a data set (anything with len()) or {kind} integer sample count"
    if not is_int(data):
        raise TypeError(f"{owner}: dataset must be {expected}, got {type(data).__name__} {data!r}")
    return check_int(f"{owner}: dataset", data, minimum, expected=expected)


# ------------------------------------------------------------------------------------------------
# Samplers
# ------------------------------------------------------------------------------------------------


class Sampler(abc.ABC):
    """An iterable over sample indices with a length, one pass per epoch.

    ``indices()`` returns the current epoch's order as an int64 array (iterating yields the same
    indices as Python ints); ``set_epoch(e)`` selects the epoch. A DataLoader accepts any object with
    ``__iter__`` and ``__len__``; ``indices()`` and ``set_epoch()`` are used when present.
    """

    epoch: int = 0
    # How many times set_epoch ran: the DataLoader compares it with its own calls to tell that the user
    # called sampler.set_epoch (even with the value the loader last gave), whose epoch then wins.
    set_epoch_calls: int = 0

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of indices in one pass."""

    @abc.abstractmethod
    def indices(self) -> np.ndarray:
        """The indices of the current epoch, in order (1-D int64 array)."""

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch that the next pass yields (a non-negative integer)."""
        self.epoch = check_int("epoch", epoch, 0)
        self.set_epoch_calls += 1

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())


class SequentialSampler(Sampler):
    """Yields ``0, 1, ..., n-1`` every epoch.

    Args:
        n: the data set (anything with ``len()``, as in PyTorch) or its number of samples.
    """

    def __init__(self, n: Any):
        self.n = _sample_count("SequentialSampler", n, 0)

    def __len__(self) -> int:
        return self.n

    def indices(self) -> np.ndarray:
        return np.arange(self.n, dtype=np.int64)

    def __repr__(self) -> str:
        return f"SequentialSampler({self.n})"


class RandomSampler(Sampler):
    """Yields a random permutation of ``range(n)`` that depends only on ``(seed, epoch)``.

    The permutation of epoch e is ``np.random.default_rng([seed, epoch]).permutation(n)``: every
    process that knows the seed and the epoch gets the same order, and epoch e can be replayed
    without replaying epochs 0..e-1.

    Args:
        n: the data set (anything with ``len()``, as in PyTorch) or its number of samples.
        seed: non-negative integer seed.

    Example:
        >>> s = RandomSampler(5, seed=0)
        >>> s.set_epoch(3)
        >>> sorted(s) == [0, 1, 2, 3, 4]
        True
    """

    def __init__(self, n: Any, seed: int = 0):
        self.n = _sample_count("RandomSampler", n, 0)
        self.seed = check_int("seed", seed, 0)
        self.epoch = 0

    def __len__(self) -> int:
        return self.n

    def indices(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n).astype(np.int64, copy=False)

    def __repr__(self) -> str:
        return f"RandomSampler({self.n}, seed={self.seed}, epoch={self.epoch})"


# ------------------------------------------------------------------------------------------------
# DataLoader
# ------------------------------------------------------------------------------------------------


class DataLoader:
    """Iterate over a dataset in mini-batches of NumPy arrays.

    Args:
        dataset: a Dataset (anything with ``__len__`` and ``__getitem__``; its ``get_batch`` is used
            when present, otherwise samples are stacked one by one).
        batch_size: samples per batch, a positive integer no larger than the number of samples.
        shuffle: visit the samples in a new random order each epoch (a RandomSampler seeded by ``seed``).
        drop_last: drop the last batch when it is smaller than ``batch_size``.
        seed: seed of the shuffle (non-negative integer).
        sampler: an object with ``__iter__`` and ``__len__`` giving the indices of one epoch (for
            example a DistributedSampler). Mutually exclusive with ``shuffle``.

    Epochs: if you never set one, the loader counts them itself, 0, 1, 2, ... (one per new
    iteration), and hands each to the sampler (``sampler.set_epoch``, when it has one) before the pass.
    Once you set the epoch, on the loader (``loader.set_epoch(e)``) or on its sampler
    (``sampler.set_epoch(e)``, the PyTorch habit), the epoch is yours: every following pass yields the
    epoch you set last and the loader no longer advances it (nor overwrites the sampler's). A sampler's
    own ``set_epoch`` call is seen exactly for dtrain samplers (they count their calls, so even setting
    the epoch the loader last gave counts) and, for other samplers, as a change of their ``epoch``.
    ``iter_epoch(e, start_batch=k)`` yields epoch e from batch k on, for resuming mid-epoch (an explicit
    epoch: it wins for that pass; the Trainer resumes this way).

    Example:
        >>> loader = DataLoader(ArrayDataset(np.arange(10.0), np.arange(10)), batch_size=4)
        >>> [len(xb) for xb, yb in loader]
        [4, 4, 2]
    """

    def __init__(self, dataset: Any, batch_size: int = 1, shuffle: bool = False, drop_last: bool = False,
                 seed: int = 0, sampler: Any = None, shard: tuple[int, int] | None = None):
        batch_size = check_int("batch_size", batch_size, 1)
        seed = check_int("seed", seed, 0)
        if shard is not None:
            rank, world = shard
            world = check_int("shard world size", world, 1)
            if not is_int(rank) or not 0 <= rank < world:
                raise ValueError(f"DataLoader: shard rank must be in [0, {world}), got {rank!r}")
            shard = (int(rank), world)
        n_samples = len(dataset)
        if sampler is not None:
            if shuffle:
                raise ValueError("DataLoader: shuffle=True and sampler= are mutually exclusive; "
                                 "shuffle with the sampler instead (e.g. DistributedSampler(shuffle=True))")
            if not (hasattr(sampler, "__iter__") and hasattr(sampler, "__len__")):
                raise TypeError(f"DataLoader: sampler must have __iter__ and __len__, got {type(sampler).__name__}")
        elif shuffle:
            sampler = RandomSampler(n_samples, seed=seed)
        else:
            sampler = SequentialSampler(n_samples)
        n_indices = len(sampler)
        if n_samples == 0 or n_indices == 0:
            raise ValueError("DataLoader: the data set is empty" if n_samples == 0
                             else f"DataLoader: the sampler yields no indices (data set of {n_samples} samples)")
        if batch_size > n_indices:
            where = (f"the data set ({n_samples} samples)" if n_indices == n_samples
                     else f"the sampler's {n_indices} samples (data set of {n_samples})")
            raise ValueError(f"batch_size {batch_size} is larger than {where}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = seed
        self.sampler = sampler
        self.shard = shard
        self._epoch = 0  # the epoch of the next pass
        self._epoch_fixed = False  # set_epoch was called: stop advancing automatically
        # What the loader last handed the sampler (its epoch, and the sampler's set_epoch count after it):
        # anything else found there at the next pass was set by the user, and is adopted.
        self._handed_epoch, self._handed_calls = 0, 0
        self._get_batch = getattr(dataset, "get_batch", None) or (lambda idx: _stack_samples(dataset, idx))

    @property
    def epoch(self) -> int:
        """The epoch that the next ``iter(loader)`` will yield."""
        self._adopt_user_epoch()
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Make every following pass yield epoch ``epoch`` (and tell the sampler).

        Call it (or ``sampler.set_epoch``) at the top of each epoch, as with PyTorch's
        DistributedSampler. Once it has been called the loader no longer advances the epoch on its own.
        """
        self._epoch = check_int("epoch", epoch, 0)
        self._epoch_fixed = True
        self._sampler_set_epoch(self._epoch)

    def __len__(self) -> int:
        """Number of batches in one epoch."""
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[np.ndarray, ...]]:
        self._adopt_user_epoch()
        epoch = self._epoch
        if not self._epoch_fixed:
            self._epoch += 1
        # The order is fixed now, not at the first next(): a later set_epoch cannot change a pass in flight.
        return self._batches(self._epoch_indices(epoch), 0)

    def iter_epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[np.ndarray, ...]]:
        """Yield the batches of epoch ``epoch`` from batch index ``start_batch`` on.

        The result equals ``list(full epoch)[start_batch:]``, so a run resumed after k batches of
        epoch e continues with exactly the batches it would have seen. Unless ``set_epoch`` has
        fixed the epoch, plain iteration afterwards continues with epoch ``epoch + 1``.

        Args:
            epoch: non-negative epoch number.
            start_batch: first batch to yield, 0 <= start_batch <= len(loader).
        """
        epoch = check_int("epoch", epoch, 0)
        start_batch = check_int("start_batch", start_batch, 0)
        if start_batch > len(self):
            raise ValueError(f"start_batch {start_batch} is past the end of the epoch ({len(self)} batches)")
        self._adopt_user_epoch()
        indices = self._epoch_indices(epoch)
        if not self._epoch_fixed:
            self._epoch = epoch + 1
        return self._batches(indices, start_batch)

    def _sampler_mark(self) -> tuple[Any, Any]:
        """The sampler's epoch and its count of set_epoch calls (None where it keeps none)."""
        return getattr(self.sampler, "epoch", None), getattr(self.sampler, "set_epoch_calls", None)

    def _adopt_user_epoch(self) -> None:
        """If the user called ``sampler.set_epoch`` since the loader last handed the sampler an epoch, that
        epoch wins: it fixes the loader's epoch, exactly as ``loader.set_epoch`` would."""
        epoch, calls = self._sampler_mark()
        if not is_int(epoch):
            return  # a sampler without a readable epoch: the loader's own count is all there is
        if epoch != self._handed_epoch or (is_int(calls) and calls != self._handed_calls):
            self._epoch, self._epoch_fixed = int(epoch), True
            self._handed_epoch, self._handed_calls = epoch, calls

    def _sampler_set_epoch(self, epoch: int) -> None:
        set_epoch = getattr(self.sampler, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)
            self._handed_epoch, self._handed_calls = self._sampler_mark()

    def _epoch_indices(self, epoch: int) -> np.ndarray:
        self._sampler_set_epoch(epoch)
        get_indices = getattr(self.sampler, "indices", None)
        if callable(get_indices):
            indices = np.asarray(get_indices(), dtype=np.int64)
        else:
            indices = np.fromiter(iter(self.sampler), dtype=np.int64)
        if indices.ndim != 1 or len(indices) != len(self.sampler):
            raise ValueError(f"DataLoader: the sampler yielded {indices.size} indices but its len() is "
                             f"{len(self.sampler)}")
        return indices

    def _batches(self, indices: np.ndarray, start_batch: int) -> Iterator[tuple[np.ndarray, ...]]:
        bs = self.batch_size
        end = (len(indices) // bs) * bs if self.drop_last else len(indices)
        for lo in range(start_batch * bs, end, bs):
            batch = indices[lo:lo + bs]
            if self.shard is not None:
                batch = batch[shard_slice(len(batch), *self.shard)]
            yield tuple(self._get_batch(batch))

    def __repr__(self) -> str:
        return (f"DataLoader(dataset of {len(self.dataset)}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, drop_last={self.drop_last}, sampler={self.sampler!r}, shard={self.shard})")


def shard_slice(n: int, rank: int, world: int) -> slice:
    """Rank ``rank``'s contiguous part of ``n`` items split over ``world`` ranks: near-equal sizes,
    the first ``n % world`` ranks one larger (some may be empty when n < world)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


class DistributedSampler(Sampler):
    """This rank's share of each epoch's (seed, epoch) permutation, PyTorch's DistributedSampler rules.

    The epoch's order is shared by all ranks; without ``drop_last`` it is padded by repeating its
    first indices up to a multiple of ``num_replicas``, with ``drop_last`` the tail is cut; rank r
    takes every num_replicas-th index starting at r. Shards are disjoint and (with padding) cover
    the data set; ``set_epoch`` reshuffles.

    Args:
        dataset: the data set (anything with ``len()``, as in PyTorch: ``DistributedSampler(dataset)``)
            or its number of samples.
        num_replicas, rank: the world's size and this process's rank; by default what the launcher
            (mpiexec, srun) announced in the environment (:func:`dtrain.env.launch_info`), a world of
            1 without a launcher.
        shuffle: permute per epoch (else 0..n-1); seed: the shared seed.
    """

    def __init__(self, dataset: Any, num_replicas: int | None = None, rank: int | None = None,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False):
        self.n = _sample_count("DistributedSampler", dataset, 1)
        if num_replicas is None:
            num_replicas = env.world_size()
        if rank is None:
            rank = env.world_rank()
        self.num_replicas = check_int("num_replicas", num_replicas, 1)
        if not is_int(rank) or not 0 <= rank < self.num_replicas:
            raise ValueError(f"DistributedSampler: rank must be in [0, {self.num_replicas}), got {rank!r}")
        self.rank, self.shuffle, self.drop_last = int(rank), bool(shuffle), bool(drop_last)
        self.seed = check_int("seed", seed, 0)
        self.epoch = 0
        if self.drop_last and self.n < self.num_replicas:
            raise ValueError(f"DistributedSampler: drop_last with {self.n} samples over {self.num_replicas} ranks "
                             "leaves every rank empty")
        self.num_samples = self.n // self.num_replicas if self.drop_last else math.ceil(self.n / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def indices(self) -> np.ndarray:
        order = (np.random.default_rng([self.seed, self.epoch]).permutation(self.n) if self.shuffle
                 else np.arange(self.n))
        if self.total_size > self.n:
            order = np.resize(order, self.total_size)  # pads by repeating from the start, as torch does
        return order[:self.total_size][self.rank::self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.num_samples
