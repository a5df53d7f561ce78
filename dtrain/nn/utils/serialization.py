"""Pickle-free files for {name: array} dicts (a Module's state_dict): safetensors and npz.

safetensors is implemented here from its published layout (no extra dependency): an 8-byte
little-endian header length, a UTF-8 JSON header ``{name: {"dtype", "shape", "data_offsets"}, ...,
"__metadata__": {str: str}}``, then the raw little-endian tensor bytes. Files written here load in
the ``safetensors`` package (and so in torch), and its files load here. Loading validates every
offset and size and never executes code. Writes are atomic: a temporary file in the same folder,
fsync, rename, fsync of the folder.
"""

from __future__ import annotations

import itertools
import json
import os
import struct
import tempfile
import zipfile
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from ...autograd.tensor import Tensor
from ...backend import bfloat16_dtype, is_bfloat16

__all__ = ["SerializationError", "atomic_write", "load_npz", "load_safetensors", "save_npz", "save_safetensors"]

_METADATA_KEY = "__metadata__"
_NPZ_METADATA_KEY = "__metadata__.json"
_MAX_HEADER = 100 * 1024 * 1024

_CODES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
          "I16": np.int16, "I8": np.int8, "U8": np.uint8, "U16": np.uint16, "U32": np.uint32, "U64": np.uint64,
          "BOOL": np.bool_}


def _code_of(dtype: np.dtype) -> str:
    dtype = dtype.newbyteorder("=")  # a big-endian array is stored too (the writer makes it little-endian)
    if is_bfloat16(dtype):
        return "BF16"
    for code, t in _CODES.items():
        if dtype == np.dtype(t):
            return code
    raise SerializationError(f"cannot store dtype {dtype} in safetensors")


def _dtype_of(code: str, path: str, name: str) -> np.dtype:
    if code == "BF16":
        bf16 = bfloat16_dtype()
        if bf16 is None:
            raise SerializationError(f"{path}: tensor {name!r} is bfloat16, which needs ml_dtypes: "
                                     "pip install ml_dtypes")
        return bf16
    if code not in _CODES:
        raise SerializationError(f"{path}: tensor {name!r} has unsupported dtype {code!r}")
    return np.dtype(_CODES[code])


class SerializationError(ValueError):
    """A state file is missing, corrupt, truncated, or not the expected format (the message names it)."""


def _host_arrays(tensors: Mapping) -> OrderedDict:
    out = OrderedDict()
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"state keys must be strings, got {name!r}")
        if isinstance(value, Tensor):
            value = value.data
        if hasattr(value, "get") and hasattr(value, "__cuda_array_interface__"):
            value = value.get()  # CuPy -> host
        value = np.asarray(value)
        if value.dtype == object:
            raise TypeError(f"state entry {name!r} is an object array; only numeric arrays can be saved")
        out[name] = np.ascontiguousarray(value).reshape(value.shape)  # ascontiguousarray makes 0-d 1-d
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: str) -> None:
    """Make a rename in ``folder`` durable (POSIX); a no-op where directories cannot be fsynced."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # e.g. Windows, where a directory cannot be opened like this
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems (and platforms) refuse fsync on a directory: the rename still happened
    finally:
        os.close(fd)


def atomic_write(path: str, write) -> None:
    """Write ``path`` all or nothing: ``write(f)`` fills a temporary file in the same folder, which is
    fsynced and renamed over ``path``, then the folder is fsynced so the rename survives a power cut.
    On any failure the temporary file is removed and ``path`` is left as it was."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:  # owns fd from here: closed however the block ends
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file what open() would
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)


def save_safetensors(tensors: Mapping, path: str, metadata: Mapping[str, str] | None = None) -> None:
    """Write {name: array} (NumPy/CuPy arrays or Tensors) to ``path`` in the safetensors format.

    ``metadata`` is an optional {str: str} dict stored in the header.
    """
    arrays = _host_arrays(tensors)
    header: dict = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("safetensors metadata must map str to str")
        header[_METADATA_KEY] = dict(metadata)
    offset = 0
    for name, a in arrays.items():
        header[name] = {"dtype": _code_of(a.dtype), "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # align the data section to 8 bytes, as the reference writer does

    def write(f):
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for a in arrays.values():
            f.write(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes())

    atomic_write(path, write)


def load_safetensors(path: str, with_metadata: bool = False):
    """Read a safetensors file into an OrderedDict {name: numpy array} (and its metadata if asked).

    Raises SerializationError naming the file for a missing, truncated or malformed file.
    """
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as exc:
        raise SerializationError(f"cannot read safetensors file {path}: {exc.strerror or exc}") from None
    if len(blob) < 8:
        raise SerializationError(f"{path}: not a safetensors file (only {len(blob)} bytes)")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > _MAX_HEADER or 8 + n > len(blob):
        raise SerializationError(f"{path}: header length {n} does not fit in the file ({len(blob)} bytes); "
                                 "truncated or not a safetensors file")
    try:
        header = json.loads(blob[8:8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SerializationError(f"{path}: the safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise SerializationError(f"{path}: the safetensors header is not a JSON object")
    metadata = header.pop(_METADATA_KEY, None) or {}
    data = memoryview(blob)[8 + n:]
    out = OrderedDict()
    spans = []
    for name, entry in header.items():
        try:
            dtype = _dtype_of(entry["dtype"], path, name)
            shape = tuple(int(s) for s in entry["shape"])
            start, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise SerializationError(f"{path}: malformed header entry for {name!r} ({exc!r})") from None
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if min(shape, default=0) < 0 or not 0 <= start <= end <= len(data) or end - start != expected:
            raise SerializationError(f"{path}: tensor {name!r} (shape {shape}, {entry['dtype']}) has data offsets "
                                     f"[{start}, {end}] that do not match its size {expected} within "
                                     f"{len(data)} data bytes; the file is truncated or corrupt")
        spans.append((start, end, name))
        out[name] = np.frombuffer(data[start:end], dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)
    spans.sort()
    for (_, end_a, a), (start_b, _, b) in itertools.pairwise(spans):
        if start_b < end_a:
            raise SerializationError(f"{path}: tensors {a!r} and {b!r} overlap; the file is corrupt")
    return (out, metadata) if with_metadata else out


def save_npz(tensors: Mapping, path: str, metadata: Mapping | None = None) -> None:
    """Write {name: array} to an uncompressed ``.npz``; JSON-able ``metadata`` rides along as bytes."""
    arrays = _host_arrays(tensors)
    if _NPZ_METADATA_KEY in arrays:
        raise ValueError(f"{_NPZ_METADATA_KEY!r} is reserved for metadata")
    if metadata is not None:
        arrays[_NPZ_METADATA_KEY] = np.frombuffer(json.dumps(metadata).encode(), dtype=np.uint8)
    def write(f):
        # Written member by member (what np.savez does) so any key is allowed, even "file".
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, a in arrays.items():
                with zf.open(name + ".npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, a, allow_pickle=False)

    atomic_write(path, write)


def load_npz(path: str, with_metadata: bool = False):
    """Read an ``.npz`` written by save_npz (or any npz of plain arrays) without unpickling anything."""
    try:
        # Open the file here: np.load(path) leaks its file handle when the zip is corrupt.
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
            arrays = OrderedDict((k, z[k]) for k in z.files)
    except FileNotFoundError:
        raise SerializationError(f"npz file {path} does not exist") from None
    except ValueError as exc:  # object arrays refused because allow_pickle=False
        raise SerializationError(f"{path}: refuses to load pickled data ({exc}): unpickling can run arbitrary "
                                 "code, so only plain arrays are read") from None
    except Exception as exc:  # zipfile.BadZipFile, EOFError, OSError: not an npz or truncated
        raise SerializationError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from None
    for name, a in arrays.items():
        if a.dtype.kind == "V" and a.dtype.itemsize == 2 and a.dtype.names is None:  # how np.save writes bfloat16
            bf16 = bfloat16_dtype()
            if bf16 is None:
                raise SerializationError(f"{path}: array {name!r} is bfloat16, which needs ml_dtypes: "
                                         "pip install ml_dtypes")
            arrays[name] = a.view(bf16)
    raw = arrays.pop(_NPZ_METADATA_KEY, None)
    try:
        metadata = json.loads(raw.tobytes().decode()) if raw is not None else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SerializationError(f"{path}: the metadata entry is not valid JSON ({exc})") from None
    return (arrays, metadata) if with_metadata else arrays
