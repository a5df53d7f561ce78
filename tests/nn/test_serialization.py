"""nn.utils serialization: safetensors and npz round trips, the safetensors byte layout, corrupt and
hostile files, atomic writes, and whole-Module state_dict round trips (also into torch)."""

from __future__ import annotations

import json
import os
import re
import struct
from collections import OrderedDict

import numpy as np
import pytest

import dtrain as dt
from dtrain import nn
from dtrain.nn.utils import load_npz, load_safetensors, save_npz, save_safetensors, serialization
from dtrain.nn.utils.serialization import SerializationError

CODES = {np.dtype(np.float64): "F64", np.dtype(np.float32): "F32", np.dtype(np.float16): "F16",
         np.dtype(np.int64): "I64", np.dtype(np.int32): "I32", np.dtype(np.uint8): "U8", np.dtype(np.bool_): "BOOL"}
if dt.bfloat16 is not None:
    CODES[dt.bfloat16] = "BF16"


def _arrays() -> OrderedDict:
    rng = np.random.default_rng(0)
    out = OrderedDict()
    out["w.f64"] = rng.standard_normal((3, 4))
    out["w.f32"] = rng.standard_normal((2, 3, 4)).astype(np.float32)
    out["f16"] = rng.standard_normal(5).astype(np.float16)
    out["count"] = np.array(7, dtype=np.int64)  # 0-d, like num_batches_tracked
    out["scalar.f32"] = np.array(-1.5, dtype=np.float32)
    out["mask"] = np.array([[True, False], [False, True]])
    out["empty"] = np.zeros((0, 3), dtype=np.float32)
    out["i32"] = np.arange(-3, 3, dtype=np.int32)
    out["u8"] = np.arange(250, 256, dtype=np.uint8)
    if dt.bfloat16 is not None:
        out["bf16"] = rng.standard_normal((2, 3)).astype(dt.bfloat16)
    return out


def _assert_same(loaded, expected) -> None:
    assert list(loaded) == list(expected)
    for k, v in expected.items():
        got = loaded[k]
        assert isinstance(got, np.ndarray), k
        assert got.dtype == v.dtype and got.shape == v.shape, (k, got.dtype, got.shape)
        np.testing.assert_array_equal(got, v, err_msg=k)


def _path_re(path) -> str:
    return re.escape(str(path))


# ---------------------------------------------------------------------------------------------
# safetensors
# ---------------------------------------------------------------------------------------------


def test_safetensors_round_trip_with_metadata(tmp_path):
    arrays = _arrays()
    path = tmp_path / "state.safetensors"
    meta = {"epoch": "3", "note": "naïve ✓", "json": json.dumps({"lr": 0.1})}
    save_safetensors(arrays, str(path), metadata=meta)
    _assert_same(load_safetensors(str(path)), arrays)
    loaded, metadata = load_safetensors(str(path), with_metadata=True)
    _assert_same(loaded, arrays)
    assert metadata == meta
    # Loaded arrays are writable copies independent of each other.
    loaded["w.f64"][...] = 0
    assert not np.any(loaded["w.f64"]) and np.any(loaded["w.f32"])


def test_safetensors_without_metadata_and_os_pathlike(tmp_path):
    path = tmp_path / "a.safetensors"
    save_safetensors({"x": np.ones(2)}, path)
    arrays, metadata = load_safetensors(path, with_metadata=True)
    assert metadata == {} and arrays["x"].tolist() == [1.0, 1.0]
    save_safetensors({}, path)
    assert load_safetensors(path) == {}


def test_safetensors_accepts_tensors_noncontiguous_and_big_endian(tmp_path):
    path = tmp_path / "b.safetensors"
    base = np.arange(12, dtype=np.float64).reshape(3, 4)
    values = {"param": nn.Parameter(np.ones((2, 2), np.float32)), "tensor": dt.tensor([1.0, 2.0]),
              "transposed": base.T, "strided": base[:, ::2], "big_endian": base.astype(">f8")}
    save_safetensors(values, str(path))
    out = load_safetensors(str(path))
    np.testing.assert_array_equal(out["param"], np.ones((2, 2), np.float32))
    np.testing.assert_array_equal(out["tensor"], np.array([1.0, 2.0], np.float32))
    np.testing.assert_array_equal(out["transposed"], base.T)
    np.testing.assert_array_equal(out["strided"], base[:, ::2])
    np.testing.assert_array_equal(out["big_endian"], base)
    assert out["big_endian"].dtype == np.float64


def test_safetensors_file_layout_follows_the_spec(tmp_path):
    arrays = _arrays()
    path = tmp_path / "layout.safetensors"
    save_safetensors(arrays, str(path), metadata={"format": "np"})
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    assert (8 + n) % 8 == 0  # data section aligned, header padded with spaces as the reference writer does
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    assert header.pop("__metadata__") == {"format": "np"}
    data = blob[8 + n:]
    assert list(header) == list(arrays)
    offset = 0
    for name, a in arrays.items():
        entry = header[name]
        assert set(entry) == {"dtype", "shape", "data_offsets"}
        assert entry["dtype"] == CODES[a.dtype]
        assert entry["shape"] == list(a.shape)
        start, end = entry["data_offsets"]
        assert start == offset and end - start == a.nbytes  # contiguous, in order, from 0
        assert data[start:end] == a.astype(a.dtype.newbyteorder("<")).tobytes()
        offset = end
    assert offset == len(data)  # nothing after the last tensor
    assert header["count"]["shape"] == [] and header["empty"]["data_offsets"][0] == header["empty"]["data_offsets"][1]


def test_safetensors_write_errors(tmp_path):
    path = tmp_path / "bad.safetensors"
    with pytest.raises(SerializationError, match="cannot store dtype complex128"):
        save_safetensors({"z": np.zeros(2, complex)}, str(path))
    with pytest.raises(TypeError, match="object array"):
        save_safetensors({"o": np.array([{}, 1], dtype=object)}, str(path))
    with pytest.raises(TypeError, match="metadata must map str to str"):
        save_safetensors({"x": np.zeros(1)}, str(path), metadata={"epoch": 3})
    with pytest.raises(TypeError, match="state keys must be strings"):
        save_safetensors({1: np.zeros(1)}, str(path))
    assert not path.exists() and os.listdir(tmp_path) == []


def test_safetensors_interoperates_with_reference_package(tmp_path):
    st_numpy = pytest.importorskip("safetensors.numpy")
    from safetensors import safe_open

    arrays = OrderedDict((k, v) for k, v in _arrays().items() if k != "bf16")
    ours = tmp_path / "ours.safetensors"
    save_safetensors(arrays, str(ours), metadata={"who": "dtrain"})
    theirs_view = st_numpy.load_file(str(ours))
    assert set(theirs_view) == set(arrays)
    for k, v in arrays.items():
        assert theirs_view[k].dtype == v.dtype and theirs_view[k].shape == v.shape, k
        np.testing.assert_array_equal(theirs_view[k], v)
    with safe_open(str(ours), framework="np") as f:
        assert f.metadata() == {"who": "dtrain"}

    theirs = tmp_path / "theirs.safetensors"
    st_numpy.save_file(dict(arrays), str(theirs), metadata={"who": "safetensors"})
    loaded, metadata = load_safetensors(str(theirs), with_metadata=True)
    assert metadata == {"who": "safetensors"}
    assert set(loaded) == set(arrays)
    for k, v in arrays.items():
        assert loaded[k].dtype == v.dtype and loaded[k].shape == v.shape, k
        np.testing.assert_array_equal(loaded[k], v)


def _write_raw(path, header, data: bytes = b"", header_bytes: bytes | None = None, length: int | None = None):
    raw = json.dumps(header).encode() if header_bytes is None else header_bytes
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)


F64_2 = np.array([1.0, 2.0]).tobytes()  # 16 bytes


@pytest.mark.parametrize("case, pattern", [
    ("missing", "cannot read safetensors file"),
    ("short", r"not a safetensors file \(only 5 bytes\)"),
    ("long_header", "header length 1000 does not fit in the file"),
    ("huge_header", "does not fit in the file"),
    ("bad_json", "header is not valid JSON"),
    ("bad_utf8", "header is not valid JSON"),
    ("not_object", "header is not a JSON object"),
    ("out_of_range", r"tensor 'a' .* data offsets \[0, 24\] that do not match its size 24 within 16 data bytes"),
    ("size_mismatch", r"tensor 'a' \(shape \(2,\), F64\) has data offsets \[0, 8\]"),
    ("negative_offset", r"data offsets \[-8, 8\]"),
    ("truncated", "truncated or corrupt"),
    ("overlap", r"tensors 'a' and 'b' overlap"),
    ("unknown_dtype", r"tensor 'a' has unsupported dtype 'F99'"),
    ("no_shape", r"malformed header entry for 'a'"),
    ("entry_not_object", r"malformed header entry for 'a'"),
    ("negative_shape", r"tensor 'a' \(shape \(-2,\), F64\)"),
])
def test_safetensors_corrupt_files_raise_naming_the_path(tmp_path, case, pattern):
    path = tmp_path / f"{case}.safetensors"
    if case == "short":
        path.write_bytes(b"\x01\x00\x00\x00\x00")
    elif case == "long_header":
        _write_raw(path, {}, length=1000)
    elif case == "huge_header":
        _write_raw(path, {}, length=2**63)
    elif case == "bad_json":
        _write_raw(path, None, header_bytes=b"{not json")
    elif case == "bad_utf8":
        _write_raw(path, None, header_bytes=b"\xff\xfe{}")
    elif case == "not_object":
        _write_raw(path, [1, 2])
    elif case == "out_of_range":
        _write_raw(path, {"a": {"dtype": "F64", "shape": [3], "data_offsets": [0, 24]}}, F64_2)
    elif case == "size_mismatch":
        _write_raw(path, {"a": {"dtype": "F64", "shape": [2], "data_offsets": [0, 8]}}, F64_2)
    elif case == "negative_offset":
        _write_raw(path, {"a": {"dtype": "F64", "shape": [2], "data_offsets": [-8, 8]}}, F64_2)
    elif case == "truncated":
        good = tmp_path / "good.safetensors"
        save_safetensors({"a": np.arange(10.0), "b": np.arange(4.0)}, str(good))
        path.write_bytes(good.read_bytes()[:-5])
    elif case == "overlap":
        _write_raw(path, {"a": {"dtype": "F64", "shape": [2], "data_offsets": [0, 16]},
                          "b": {"dtype": "F64", "shape": [1], "data_offsets": [8, 16]}}, F64_2)
    elif case == "unknown_dtype":
        _write_raw(path, {"a": {"dtype": "F99", "shape": [2], "data_offsets": [0, 16]}}, F64_2)
    elif case == "no_shape":
        _write_raw(path, {"a": {"dtype": "F64", "data_offsets": [0, 16]}}, F64_2)
    elif case == "entry_not_object":
        _write_raw(path, {"a": [0, 16]}, F64_2)
    elif case == "negative_shape":
        _write_raw(path, {"a": {"dtype": "F64", "shape": [-2], "data_offsets": [0, 16]}}, F64_2)
    with pytest.raises(SerializationError, match=_path_re(path)) as info:
        load_safetensors(str(path))
    assert re.search(pattern, str(info.value)), str(info.value)


def test_safetensors_directory_is_an_error(tmp_path):
    with pytest.raises(SerializationError, match=f"cannot read safetensors file {_path_re(tmp_path)}"):
        load_safetensors(str(tmp_path))




def _entry(shape, offsets=(0, 16), dtype="F64"):
    return {"a": {"dtype": dtype, "shape": shape, "data_offsets": list(offsets)}}


# Hostile headers (issue 17, item 10): each is refused in one line naming the file, the tensor and the value,
# before any tensor is allocated.
@pytest.mark.parametrize("header, pattern", [
    (_entry([2**32, 2**32]), r"tensor 'a' \(shape \(4294967296, 4294967296\), F64\) has data offsets \[0, 16\] that "
                             r"do not match its size 147573952589676412928 within 16 data bytes"),
    (_entry([2**62, 0, 4], (0, 0)), r"tensor 'a' \(shape \(4611686018427387904, 0, 4\), F64\) is too large for an "
                                    r"array"),
    (_entry([1.9]), r"tensor 'a' \(shape \(1\.9,\), F64\): dimension 0 is 1\.9; expected a non-negative integer"),
    (_entry([2.0]), r"tensor 'a' \(shape \(2\.0,\), F64\): dimension 0 is 2\.0; expected a non-negative integer"),
    (_entry([True, 2]), r"tensor 'a' \(shape \(True, 2\), F64\): dimension 0 is True; expected a non-negative"),
    (_entry([2, -1]), r"tensor 'a' \(shape \(2, -1\), F64\): dimension 1 is -1; expected a non-negative integer"),
    (_entry("2"), r"tensor 'a' has shape '2'; expected a list of at most 32 non-negative integers"),
    (_entry([1] * 33), r"tensor 'a' has shape \[1, 1, .*; expected a list of at most 32"),
    (_entry([2], dtype=["F64"]), r"tensor 'a' has dtype \['F64'\]; expected one of F64, F32, .*BF16"),
    (_entry([2], dtype="f64"), r"tensor 'a' has unsupported dtype 'f64'"),
    (_entry([2], (16, 0)), r"tensor 'a' \(shape \(2,\), F64\) has data offsets \[16, 0\] that do not match"),
    (_entry([2], (0, 16.0)), r"data_offsets is \[0, 16\.0\]; expected \[begin, end\], two integers"),
    (_entry([2], (False, 16)), r"data_offsets is \[False, 16\]; expected \[begin, end\]"),
    (_entry([2], (0, 8, 16)), r"data_offsets is \[0, 8, 16\]; expected \[begin, end\]"),
    ({**_entry([2]), "__metadata__": ["a"]}, r"__metadata__ must be an object mapping strings to strings, got list"),
    ({**_entry([2]), "__metadata__": {"epoch": 3}}, r"__metadata__\['epoch'\] must be a string, got 3"),
    ({**_entry([2]), "__metadata__": "x"}, r"__metadata__ must be an object mapping strings to strings, got str"),
], ids=["shape-2**32-squared", "empty-but-too-large", "float-dim", "integral-float-dim", "bool-dim", "negative-dim",
        "shape-not-list", "too-many-dims", "dtype-not-str", "dtype-lowercase", "offsets-reversed", "offset-float",
        "offset-bool", "three-offsets", "metadata-list", "metadata-int-value", "metadata-str"])
def test_safetensors_hostile_headers_are_one_line_errors(tmp_path, monkeypatch, header, pattern):
    path = tmp_path / "hostile.safetensors"
    _write_raw(path, header, F64_2)

    def no_allocation(*args, **kwargs):
        raise AssertionError("a tensor was built from a header that does not validate")

    monkeypatch.setattr(serialization.np, "frombuffer", no_allocation)
    with pytest.raises(SerializationError, match=_path_re(path)) as info:
        load_safetensors(str(path))
    message = str(info.value)
    assert "\n" not in message and re.search(pattern, message), message


def test_safetensors_deeply_nested_header_is_one_line(tmp_path):
    path = tmp_path / "nested.safetensors"
    _write_raw(path, None, header_bytes=b"[" * 200_000)
    with pytest.raises(SerializationError, match=rf"^{_path_re(path)}: the safetensors header: nested too deeply to "
                                                 r"parse$"):
        load_safetensors(str(path))


def test_safetensors_header_length_over_the_limit(tmp_path, monkeypatch):
    path = tmp_path / "long.safetensors"
    save_safetensors({"a": np.arange(2.0)}, str(path))
    monkeypatch.setattr(serialization, "_MAX_HEADER", 16)
    with pytest.raises(SerializationError, match=rf"^{_path_re(path)}: header length \d+ is more than the 16 bytes a "
                                                 r"safetensors header may have$"):
        load_safetensors(str(path))


@pytest.mark.parametrize("kind", ["fifo", "symlink-to-fifo", "dev-zero"])
def test_safetensors_and_npz_refuse_fifos_and_devices_without_blocking(tmp_path, kind, no_hang):
    if kind == "dev-zero":
        path, what = "/dev/zero", "a character device"
    else:
        path, what = str(tmp_path / "pipe"), r"a FIFO \(named pipe\)"
        os.mkfifo(path)
        if kind == "symlink-to-fifo":
            os.symlink(path, tmp_path / "model.safetensors")
            path = str(tmp_path / "model.safetensors")
    with pytest.raises(SerializationError, match=rf"^cannot read safetensors file {re.escape(path)}: it is {what}, "
                                                 r"not a regular file$"):
        no_hang(load_safetensors, path)
    with pytest.raises(SerializationError, match=rf"^cannot read npz file {re.escape(path)}: it is {what}, not a "
                                                 r"regular file$"):
        no_hang(load_npz, path)


# ---------------------------------------------------------------------------------------------
# npz
# ---------------------------------------------------------------------------------------------


def test_npz_round_trip_with_metadata(tmp_path):
    arrays = _arrays()
    path = tmp_path / "state.npz"
    meta = {"epoch": 3, "lr": 0.1, "tags": ["a", "b"], "nested": {"ok": True}}
    save_npz(arrays, str(path), metadata=meta)
    loaded, metadata = load_npz(str(path), with_metadata=True)
    _assert_same(loaded, arrays)
    assert metadata == meta
    _assert_same(load_npz(str(path)), arrays)
    save_npz({"x": dt.tensor([1.0])}, str(path))
    arrays2, metadata2 = load_npz(str(path), with_metadata=True)
    assert metadata2 == {} and arrays2["x"].tolist() == [1.0]


def test_npz_reserved_key(tmp_path):
    with pytest.raises(ValueError, match="reserved for metadata"):
        save_npz({"__metadata__.json": np.zeros(1)}, str(tmp_path / "x.npz"))


def test_npz_refuses_pickled_object_arrays(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(str(path), weights=np.zeros(2), payload=np.array([{"code": "boom"}, None], dtype=object))
    with pytest.raises(SerializationError, match=f"{_path_re(path)}: refuses to load pickled data"):
        load_npz(str(path))


@pytest.mark.parametrize("case", ["missing", "not_zip", "truncated", "npy_not_npz", "empty", "bad_metadata"])
def test_npz_bad_files_raise_naming_the_path(tmp_path, case):
    path = tmp_path / f"{case}.npz"
    if case == "not_zip":
        path.write_bytes(b"this is not a zip archive at all")
    elif case == "truncated":
        save_npz({"a": np.arange(1000.0)}, str(path))
        path.write_bytes(path.read_bytes()[:300])
    elif case == "npy_not_npz":
        with open(path, "wb") as f:
            np.save(f, np.arange(3))
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "bad_metadata":
        np.savez(str(path), **{"w": np.zeros(2), "__metadata__.json": np.frombuffer(b"{oops", np.uint8)})
    with pytest.raises(SerializationError, match=_path_re(path)):
        load_npz(str(path))


def test_npz_metadata_nested_too_deeply_or_too_large(tmp_path):
    path = tmp_path / "nested.npz"
    np.savez(str(path), **{"w": np.zeros(2), "__metadata__.json": np.frombuffer(b"[" * 200_000, np.uint8)})
    with pytest.raises(SerializationError, match=rf"^{_path_re(path)}: the metadata entry is nested too deeply to "
                                                 r"parse$"):
        load_npz(str(path))
    save_npz({"w": np.zeros(2)}, str(path), metadata={"note": "x" * 100})
    with pytest.raises(SerializationError, match=r"the metadata entry is 1\d\d bytes, more than the 64 such"):
        load_npz(str(path), max_metadata_bytes=64)
    assert load_npz(str(path), with_metadata=True)[1] == {"note": "x" * 100}


def test_npz_members_that_are_not_arrays_or_are_compressed(tmp_path):
    import zipfile

    path = tmp_path / "odd.npz"
    np.savez(str(path), w=np.zeros(2))
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("notes.txt", b"not an array")  # NumPy hands such a member over as bytes
    with pytest.raises(SerializationError, match=rf"^{_path_re(path)}: member 'notes.txt' is not an \.npy array$"):
        load_npz(str(path))
    np.savez_compressed(str(path), w=np.zeros(1000))
    with pytest.raises(SerializationError, match=r"member 'w\.npy' is compressed; only uncompressed archives"):
        load_npz(str(path), allow_compressed=False)
    assert load_npz(str(path))["w"].shape == (1000,)  # allowed unless refused


# ---------------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------------

WRITERS = [(save_safetensors, load_safetensors, "m.safetensors"), (save_npz, load_npz, "m.npz")]


@pytest.mark.parametrize("save, load, name", WRITERS, ids=["safetensors", "npz"])
def test_atomic_write_replaces_whole_file_and_leaves_no_temp_files(tmp_path, save, load, name):
    path = tmp_path / name
    big = {"a": np.arange(100_000, dtype=np.float64), "b": np.ones((50, 50))}
    small = {"a": np.arange(3, dtype=np.float64)}
    save(big, str(path))
    big_size = path.stat().st_size
    save(small, str(path))
    assert path.stat().st_size < big_size // 100
    _assert_same(load(str(path)), small)
    assert os.listdir(tmp_path) == [name]
    nested = tmp_path / "new" / "dir" / name  # missing folders are created
    save(small, str(nested))
    _assert_same(load(str(nested)), small)


@pytest.mark.parametrize("save, load, name", WRITERS, ids=["safetensors", "npz"])
def test_failed_write_keeps_the_old_file_and_removes_the_temp_file(tmp_path, monkeypatch, save, load, name):
    path = tmp_path / name
    old = {"a": np.arange(5.0)}
    save(old, str(path))

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(serialization.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space left"):
        save({"a": np.zeros(10)}, str(path))
    monkeypatch.undo()
    assert os.listdir(tmp_path) == [name]
    _assert_same(load(str(path)), old)


# ---------------------------------------------------------------------------------------------
# Module state_dicts
# ---------------------------------------------------------------------------------------------


def _cnn() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 5 * 5, 6))


@pytest.mark.parametrize("save, load, name", WRITERS, ids=["safetensors", "npz"])
def test_module_state_dict_round_trip_through_file(tmp_path, save, load, name):
    dt.manual_seed(1)
    src = _cnn()
    src(dt.randn(8, 3, 5, 5))  # training step: running statistics and num_batches_tracked move
    src(dt.randn(8, 3, 5, 5))
    src.eval()
    path = tmp_path / name
    save(src.state_dict(), str(path))
    dt.manual_seed(2)
    dst = _cnn().eval()
    x = dt.randn(4, 3, 5, 5)
    assert not np.allclose(dst(x).numpy(), src(x).numpy())
    loaded = load(str(path))
    assert loaded["1.num_batches_tracked"].shape == () and int(loaded["1.num_batches_tracked"]) == 2
    assert dst.load_state_dict(loaded) == ([], [])
    np.testing.assert_array_equal(dst(x).numpy(), src(x).numpy())
    assert int(dst[1].num_batches_tracked) == 2 and dst[1].num_batches_tracked.dtype == np.int64
    for k, v in src.state_dict().items():
        np.testing.assert_array_equal(dst.state_dict()[k], v, err_msg=k)


def test_module_state_dict_loads_into_torch(tmp_path):
    torch = pytest.importorskip("torch")
    dt.set_default_dtype(np.float64)
    dt.manual_seed(3)
    ours = _cnn()
    ours(dt.randn(8, 3, 5, 5))
    ours.eval()
    path = tmp_path / "to_torch.safetensors"
    save_safetensors(ours.state_dict(), str(path))
    state = load_safetensors(str(path))

    theirs = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                 torch.nn.Flatten(), torch.nn.Linear(4 * 5 * 5, 6)).double().eval()
    assert list(theirs.state_dict()) == list(state)
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    assert int(theirs[1].num_batches_tracked) == 1
    x = np.random.default_rng(0).standard_normal((4, 3, 5, 5))
    with torch.no_grad():
        expected = theirs(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours(dt.tensor(x)).numpy(), expected, rtol=1e-12, atol=1e-12)
