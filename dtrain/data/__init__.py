"""Data: datasets, samplers, the DataLoader and the built-in data sets (NumPy only).

    from dtrain.data import DataLoader, load_dataset
    splits = load_dataset("digits")                    # Splits(train, test, task, n_classes, input_shape, ...)
    loader = DataLoader(splits.train, batch_size=64, shuffle=True, seed=0)
    for xb, yb in loader:                              # NumPy arrays
        ...

This package needs only NumPy (scikit-learn for ``digits``); it imports nothing else from dtrain.
"""

from __future__ import annotations

from .dataset import (
    ArrayDataset,
    DataLoader,
    Dataset,
    DistributedSampler,
    RandomSampler,
    Sampler,
    SequentialSampler,
    TensorDataset,
    shard_slice,
)
from .datasets import DatasetError, Splits, dataset_names, load_dataset, register_dataset, validate

__all__ = [
    "ArrayDataset",
    "DataLoader",
    "Dataset",
    "DatasetError",
    "DistributedSampler",
    "RandomSampler",
    "Sampler",
    "SequentialSampler",
    "Splits",
    "TensorDataset",
    "dataset_names",
    "load_dataset",
    "register_dataset",
    "shard_slice",
    "validate",
]
