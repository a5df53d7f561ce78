"""MNIST from its four IDX files (plain or .gz): ``mnist:DIR``; ``read_idx`` checks a file's header against its data."""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from typing import IO

import numpy as np

from ...files import MiB, open_regular
from ...spec import boolean
from ..dataset import ArrayDataset
from .limits import check_memory, one_line
from .registry import DatasetError, Splits, register_dataset

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

# ------------------------------------------------------------------------------------------------
# MNIST (IDX files)
# ------------------------------------------------------------------------------------------------

_IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
_CHUNK = 16 * MiB
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
            if os.path.lexists(path):  # a FIFO, device or directory of that name is found, then refused by name
                return path
    raise DatasetError(f"mnist: missing file {os.path.join(directory, names[0])} (or .gz) in {directory}")


def _read_upto(stream: IO[bytes], n: int) -> bytes:
    """Up to ``n`` bytes of ``stream`` (fewer at its end), read in chunks: a header that declares more data
    than there is costs no more memory than the data that is there."""
    data = bytearray()
    while len(data) < n:
        chunk = stream.read(min(_CHUNK, n - len(data)))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def _header_dims(path: str, head: bytes, magic: int, where: str) -> tuple[int, ...]:
    """The dimensions an IDX header declares, after checking its length, magic number and zero dimensions."""
    ndim = magic & 0xFF
    header_len = 4 + 4 * ndim
    if len(head) < header_len:
        raise DatasetError(f"{path}: {where} too short for an IDX header ({len(head)} bytes, need {header_len})")
    (found,) = struct.unpack(">I", head[:4])
    if found != magic:
        raise DatasetError(f"{path}: wrong magic number 0x{found:08x}, expected 0x{magic:08x} "
                           f"({'images' if ndim == 3 else 'labels'} of unsigned bytes); not an MNIST IDX file?")
    dims = struct.unpack(f">{ndim}I", head[4:header_len])
    if 0 in dims:
        raise DatasetError(f"{path}: header has a zero dimension {' x '.join(map(str, dims))}: no data")
    return dims


def _size_problem(path: str, dims: tuple[int, ...], have: int, where: str, at_least: bool = False) -> str:
    expected = math.prod(dims)  # Python ints: 2**32-1 cubed does not wrap around
    problem = "truncated" if have < expected else "has trailing bytes"
    shown = f"more than {expected}" if at_least else str(have)
    return (f"{path}: {problem}: the header says {' x '.join(map(str, dims))} = {expected} bytes of data, "
            f"{where} has {shown}")


def _read_idx_stream(path: str, stream: IO[bytes], magic: int, file_size: int | None) -> np.ndarray:
    """The array of an IDX stream: ``file_size`` is the plain file's size (checked against the header before
    any data is read), None for a gzip stream (whose data is read only up to what the header declares)."""
    header_len = 4 + 4 * (magic & 0xFF)
    where = "the file" if file_size is not None else "the decompressed file"
    dims = _header_dims(path, _read_upto(stream, header_len), magic, where.removeprefix("the "))
    expected = math.prod(dims)
    if file_size is not None and file_size - header_len != expected:
        raise DatasetError(_size_problem(path, dims, file_size - header_len, where))
    # The bytes, then (in _load_mnist) a float32 copy: 5 bytes a pixel.
    check_memory(f"{path}: the header's {' x '.join(map(str, dims))} bytes of data", 5 * expected,
                 "is the file corrupt?")
    data = _read_upto(stream, expected + 1)
    if len(data) != expected:
        raise DatasetError(_size_problem(path, dims, len(data), where, at_least=len(data) > expected))
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def read_idx(path: str, magic: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes (plain or .gz) after checking its header against the data.

    Only a regular file is opened (a FIFO or a device is refused at once), and the header is checked (magic
    number, no zero dimension, the size it declares against the file's, and against memory) before the data
    is read. Every error names the file, the declared dimensions and what the file has.

    Args:
        path: the file.
        magic: the expected magic number (0x00000803 for images, 0x00000801 for labels).

    Returns:
        A uint8 array shaped as the header says (read-only, over the file's bytes).
    """
    try:
        f = open_regular(path, "mnist")
    except OSError as exc:  # PermissionError, ...; a FIFO or device is an InputFileError (a ValueError)
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from None
    with f:
        if not path.endswith(".gz"):
            try:
                return _read_idx_stream(path, f, magic, os.fstat(f.fileno()).st_size)
            except OSError as exc:
                raise DatasetError(f"cannot read {path}: {one_line(exc)}") from None
        try:
            with gzip.GzipFile(fileobj=f, mode="rb") as stream:
                return _read_idx_stream(path, stream, magic, None)
        except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
            raise DatasetError(f"{path} is not a valid gzip file (corrupt or truncated download?): "
                               f"{one_line(exc)}") from None


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
