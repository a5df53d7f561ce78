"""Pickle-free files for {name: array} dicts (a Module's state_dict): safetensors and npz.

safetensors is implemented here from its published layout (no extra dependency): an 8-byte
little-endian header length, a UTF-8 JSON header ``{name: {"dtype", "shape", "data_offsets"}, ...,
"__metadata__": {str: str}}``, then the raw little-endian tensor bytes. Files written here load in
the ``safetensors`` package (and so in torch), and its files load here. Loading treats the file as
hostile: only a regular file is opened (a FIFO or a device is refused without blocking), the whole
header (dtypes, shapes, offsets against the data section, overlaps, the metadata) is validated before
any tensor is allocated, nothing beyond the file's own bytes is read, and no code is executed. The
same holds for npz (no unpickling). Writes are atomic: a temporary file in the same folder, fsync,
rename, fsync of the folder.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from ...autograd.tensor import Tensor
from ...backend import bfloat16_dtype, is_bfloat16
from ...files import InputFileError, atomic_write, open_regular, parse_guarded

__all__ = ["SerializationError", "atomic_write", "load_npz", "load_safetensors", "save_npz", "save_safetensors"]

_METADATA_KEY = "__metadata__"
_NPZ_METADATA_KEY = "__metadata__.json"
_MAX_HEADER = 100 * 1024 * 1024
_MAX_DIMS = 32  # NumPy 1.x's limit (NumPy 2 allows 64)

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
        raise SerializationError(f"{path}: tensor {_short(name)} has unsupported dtype {_short(code)}")
    return np.dtype(_CODES[code])


class SerializationError(ValueError):
    """A state file is missing, corrupt, truncated, or not the expected format (the message names it)."""


def _short(value) -> str:
    """``repr(value)``, cut to one readable piece of an error line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_index(v) -> bool:
    """A JSON integer that is a valid size or offset: not a bool, not a float, not negative."""
    return _is_int(v) and v >= 0


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


def _open_input(path: str, what: str, missing: str | None = None):
    """``path`` opened for reading if it is a regular file (a FIFO or a device is refused at once, without
    blocking); SerializationError naming it otherwise (``missing``: the message when it does not exist)."""
    try:
        return open_regular(path)
    except FileNotFoundError:
        if missing is None:
            raise SerializationError(f"cannot read {what} {path}: no such file") from None
        raise SerializationError(missing) from None
    except InputFileError as exc:  # "PATH is a FIFO (named pipe), not a regular file"
        raise SerializationError(f"cannot read {what} {path}: it {exc.reason}") from None
    except OSError as exc:
        raise SerializationError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _safetensors_header(f, size: int, path: str) -> tuple[dict, int]:
    """The parsed JSON header (a dict) and its length, from a file of ``size`` bytes positioned at 0."""
    if size < 8:
        raise SerializationError(f"{path}: not a safetensors file (only {size} bytes)")
    (n,) = struct.unpack("<Q", f.read(8))
    if 8 + n > size:
        raise SerializationError(f"{path}: header length {n} does not fit in the file ({size} bytes); "
                                 "truncated or not a safetensors file")
    if n > _MAX_HEADER:
        raise SerializationError(f"{path}: header length {n} is more than the {_MAX_HEADER} bytes a safetensors "
                                 "header may have")
    raw = f.read(n)
    try:
        header = parse_guarded(json.loads, raw.decode("utf-8"), f"{path}: the safetensors header")
    except InputFileError as exc:  # nested too deeply
        raise SerializationError(str(exc)) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SerializationError(f"{path}: the safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise SerializationError(f"{path}: the safetensors header is not a JSON object")
    return header, n


def _safetensors_metadata(metadata, path: str) -> dict:
    """The ``__metadata__`` entry: absent/null, or a {str: str} object as the format defines it."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise SerializationError(f"{path}: {_METADATA_KEY} must be an object mapping strings to strings, got "
                                 f"{type(metadata).__name__} {_short(metadata)}")
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise SerializationError(f"{path}: {_METADATA_KEY}[{_short(key)}] must be a string, got {_short(value)}")
    return metadata


def _tensor_layout(name: str, entry, data_bytes: int, path: str) -> tuple[np.dtype, tuple, int, int]:
    """One header entry validated against the format and the data section's size: (dtype, shape, start,
    end). Nothing is allocated here, so a huge declared shape costs nothing."""
    if not isinstance(entry, dict) or not all(k in entry for k in ("dtype", "shape", "data_offsets")):
        raise SerializationError(f"{path}: malformed header entry for {_short(name)}: expected an object with dtype, "
                                 f"shape and data_offsets, got {_short(entry)}")
    code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(code, str):
        raise SerializationError(f"{path}: tensor {_short(name)} has dtype {_short(code)}; expected one of "
                                 f"{', '.join([*_CODES, 'BF16'])}")
    dtype = _dtype_of(code, path, name)
    if not isinstance(shape, list) or len(shape) > _MAX_DIMS:
        raise SerializationError(f"{path}: tensor {_short(name)} has shape {_short(shape)}; expected a list of at most "
                                 f"{_MAX_DIMS} non-negative integers")
    where = f"{path}: tensor {_short(name)} (shape {_short(tuple(shape))}, {code})"
    for i, d in enumerate(shape):
        if not _is_index(d):
            raise SerializationError(f"{where}: dimension {i} is {_short(d)}; expected a non-negative integer")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
        raise SerializationError(f"{where}: data_offsets is {_short(offsets)}; expected [begin, end], two integers")
    start, end = offsets
    nbytes = math.prod(shape) * dtype.itemsize  # Python integers: no overflow
    if not 0 <= start <= end <= data_bytes or end - start != nbytes:
        raise SerializationError(f"{where} has data offsets [{start}, {end}] that do not match its size {nbytes} "
                                 f"within {data_bytes} data bytes; the file is truncated or corrupt")
    if math.prod(d for d in shape if d) * dtype.itemsize >= 2**63:  # an empty tensor NumPy still cannot shape
        raise SerializationError(f"{where} is too large for an array")
    return dtype, tuple(shape), start, end


def load_safetensors(path: str, with_metadata: bool = False):
    """Read a safetensors file into an OrderedDict {name: numpy array} (and its metadata if asked).

    The whole header is validated (dtypes, shapes, offsets against the data section, no overlaps, the
    metadata a {str: str} object) before any tensor is allocated, and nothing beyond the file's own
    bytes is read. Raises SerializationError naming the file (and the tensor, and the bad value) for a
    missing, truncated, malformed or hostile file, or one that is not a regular file (a FIFO, a device).
    """
    path = os.fspath(path)
    with _open_input(path, "safetensors file") as f:
        size = os.fstat(f.fileno()).st_size
        header, n = _safetensors_header(f, size, path)
        metadata = _safetensors_metadata(header.pop(_METADATA_KEY, None), path)
        data_bytes = size - 8 - n
        layout = [(name, *_tensor_layout(name, entry, data_bytes, path)) for name, entry in header.items()]
        spans = sorted((start, end, name) for name, _, _, start, end in layout)
        for (_, end_a, a), (start_b, _, b) in itertools.pairwise(spans):
            if start_b < end_a:
                raise SerializationError(f"{path}: tensors {_short(a)} and {_short(b)} overlap; the file is truncated "
                                         "or corrupt")
        data = f.read(data_bytes)
    if len(data) != data_bytes:
        raise SerializationError(f"{path}: the file changed while it was read ({len(data)} of {data_bytes} bytes)")
    view = memoryview(data)
    out = OrderedDict()
    for name, dtype, shape, start, end in layout:
        out[name] = np.frombuffer(view[start:end], dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)
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


def _check_npz_members(f, path: str, allow_compressed: bool) -> None:
    """Refuse compressed members when ``allow_compressed`` is False (a deflated member can expand to far more
    memory than the file's size; save_npz never compresses). ``f`` is left at its start."""
    if not allow_compressed:
        with zipfile.ZipFile(f) as zf:
            for info in zf.infolist():
                if info.compress_type != zipfile.ZIP_STORED:
                    raise SerializationError(f"{path}: member {info.filename!r} is compressed; only uncompressed "
                                             "archives are read here (a compressed member can expand without bound)")
    f.seek(0)


def load_npz(path: str, with_metadata: bool = False, max_metadata_bytes: int | None = None,
             allow_compressed: bool = True):
    """Read an ``.npz`` written by save_npz (or any npz of plain arrays) without unpickling anything.

    Only a regular file is opened (a FIFO or a device is refused at once). ``max_metadata_bytes`` bounds the
    metadata document; ``allow_compressed=False`` refuses compressed members. Raises SerializationError
    naming the file.
    """
    path = os.fspath(path)
    f = _open_input(path, "npz file", missing=f"npz file {path} does not exist")
    try:
        # Read from our own handle: np.load(path) leaks its file handle when the zip is corrupt.
        with f:
            _check_npz_members(f, path, allow_compressed)
            with np.load(f, allow_pickle=False) as z:
                arrays = OrderedDict((k, z[k]) for k in z.files)
    except SerializationError:
        raise
    except ValueError as exc:  # object arrays refused because allow_pickle=False
        raise SerializationError(f"{path}: refuses to load pickled data ({exc}): unpickling can run arbitrary "
                                 "code, so only plain arrays are read") from None
    except Exception as exc:  # zipfile.BadZipFile, EOFError, OSError: not an npz or truncated
        raise SerializationError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from None
    for name, a in arrays.items():
        if not isinstance(a, np.ndarray):  # NumPy hands a member that is not an .npy file over as bytes
            raise SerializationError(f"{path}: member {name!r} is not an .npy array")
        if a.dtype.kind == "V" and a.dtype.itemsize == 2 and a.dtype.names is None:  # how np.save writes bfloat16
            bf16 = bfloat16_dtype()
            if bf16 is None:
                raise SerializationError(f"{path}: array {name!r} is bfloat16, which needs ml_dtypes: "
                                         "pip install ml_dtypes")
            arrays[name] = a.view(bf16)
    metadata = _npz_metadata(arrays.pop(_NPZ_METADATA_KEY, None), path, max_metadata_bytes)
    return (arrays, metadata) if with_metadata else arrays


def _npz_metadata(raw, path: str, max_bytes: int | None):
    """The JSON metadata save_npz stored (``{}`` without one), bounded in size and nesting."""
    if raw is None:
        return {}
    if max_bytes is not None and raw.nbytes > max_bytes:
        raise SerializationError(f"{path}: the metadata entry is {raw.nbytes:,} bytes, more than the "
                                 f"{max_bytes:,} such metadata can sensibly be")
    try:
        return parse_guarded(json.loads, raw.tobytes().decode(), f"{path}: the metadata entry")
    except InputFileError:
        raise SerializationError(f"{path}: the metadata entry is nested too deeply to parse") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SerializationError(f"{path}: the metadata entry is not valid JSON ({exc})") from None
