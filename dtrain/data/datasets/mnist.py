"""MNIST from its four IDX files (plain or .gz): ``mnist:DIR``; ``read_idx`` checks a file's header against its data."""

from __future__ import annotations

import gzip
import os
import struct
import zlib

import numpy as np

from ...spec import boolean
from ..dataset import ArrayDataset
from .registry import DatasetError, Splits, register_dataset

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

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


@register_dataset("mnist", usage="mnist:DIR", arg="path", options={"flatten": boolean})
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
