"""Bad and malicious data set inputs (issue 17, items 8, 9 and 11 for data): ``npz:FILE``, ``mnist:DIR``,
``text:FILE`` and ``synthetic:...``.

Every bad input must be a ValueError or OSError (the ranks agree on it and ``dtrain train`` exits 2 with one
line) whose message names the file and the offending value, and it must come back at once: no hang on a FIFO,
no reading /dev/zero until memory runs out, no allocation sized by a label, a header or an option. The cases
that would allocate without the checks run in a child process under ``RLIMIT_AS``, so that a regression fails
the test instead of the machine; the memory checks themselves are tested with a small patched limit.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import resource
import struct
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from dtrain.data import load_dataset
from dtrain.data.datasets import limits

LOAD_S = 2.0  # every load, good or bad, ends within this
CHILD_AS = 2 << 30  # address space of the child process that runs the allocating cases

# ------------------------------------------------------------------------------------------------
# Writing inputs
# ------------------------------------------------------------------------------------------------


def _xy(n: int = 20, **extra) -> dict[str, np.ndarray]:
    return {"x": np.linspace(0.0, 1.0, n * 3).reshape(n, 3), "y": np.arange(n) % 3, **extra}


def _with(key: str, index: tuple | int, value, dtype=None, **extra) -> dict[str, np.ndarray]:
    arrays = _xy(**extra)
    a = arrays[key].astype(dtype or arrays[key].dtype)
    a[index] = value
    arrays[key] = a
    return arrays


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _npy_header(shape: tuple, descr: str = "<f8") -> bytes:
    """A .npy header alone (no data): what a few bytes can claim."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _zip(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def _npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    np.savez(path, **arrays)
    return path


def _idx(magic: int, dims: tuple[int, ...], data: bytes) -> bytes:
    return struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims) + data


MNIST = {"train-images-idx3-ubyte": (0x803, (6, 4, 4)), "train-labels-idx1-ubyte": (0x801, (6,)),
         "t10k-images-idx3-ubyte": (0x803, (3, 4, 4)), "t10k-labels-idx1-ubyte": (0x801, (3,))}


def _mnist_files() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    out = {}
    for name, (magic, dims) in MNIST.items():
        values = rng.integers(0, 256, dims) if len(dims) == 3 else np.arange(dims[0]) % 10
        out[name] = _idx(magic, dims, values.astype(np.uint8).tobytes())
    return out


def _mnist(directory: Path, replace: dict[str, bytes] | None = None, gz: bool = False) -> Path:
    """A small MNIST directory; ``replace`` gives some files other bytes (names without .gz)."""
    directory.mkdir(exist_ok=True)
    for name, data in {**_mnist_files(), **(replace or {})}.items():
        if gz:
            (directory / (name + ".gz")).write_bytes(gzip.compress(data, mtime=0))
        else:
            (directory / name).write_bytes(data)
    return directory


IMAGES = "train-images-idx3-ubyte"
LABELS = "train-labels-idx1-ubyte"
PIXELS = bytes(96)  # 6 x 4 x 4

# ------------------------------------------------------------------------------------------------
# Asserting the outcome
# ------------------------------------------------------------------------------------------------


def _expect_error(spec: str, needles: list[str], **options) -> str:
    start = time.perf_counter()
    with pytest.raises((ValueError, OSError)) as info:  # anything else escapes: a traceback, the test fails
        load_dataset(spec, **options)
    elapsed = time.perf_counter() - start
    message = str(info.value)
    assert elapsed < LOAD_S, f"{spec}: the error took {elapsed:.1f} s: {message}"
    assert "\n" not in message, f"{spec}: the error spans several lines: {message!r}"
    missing = [n for n in needles if n not in message]
    assert not missing, f"{spec}: {missing} not in the error: {message!r}"
    return message


def _no_hang(fn: Callable[[], str], fifo: str, seconds: float = 5.0) -> str:
    """``fn()`` in a thread; if it still blocks on the FIFO after ``seconds``, a writer opens and closes the
    FIFO (the reader then sees its end) and the test fails instead of hanging."""
    out: dict = {}

    def target() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # reported below, on the test's thread
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(seconds)
        pytest.fail(f"loading blocked on the FIFO {fifo} for {seconds} s")
    if "error" in out:
        raise out["error"]
    return out["value"]


# ------------------------------------------------------------------------------------------------
# npz
# ------------------------------------------------------------------------------------------------

NPZ_ARRAYS = {  # case -> (arrays, what the message must contain besides the path)
    "label-3e8": (_with("y", 5, 300_000_000), ["label 300000000 in 'y'", "1,000,000"]),
    "label-2**40": (_with("y", 5, 2**40), ["label 1099511627776 in 'y'", "1,000,000"]),
    "label-uint64-max": (_with("y", 5, 2**64 - 1, np.uint64), ["label 18446744073709551615 in 'y'"]),
    "label-negative": (_with("y", 5, -2), ["'y'", "found min -2"]),
    "n_classes-2**40": (_xy(n_classes=np.int64(2**40)), ["'n_classes' = 1099511627776", "1,000,000"]),
    "n_classes-float": (_xy(n_classes=np.float64(1.5)), ["'n_classes'", "1.5"]),
    "n_classes-zero": (_xy(n_classes=np.int64(0)), ["'n_classes'", "got 0"]),
    "float-labels-with-n_classes": ({"x": np.ones((20, 3)), "y": np.r_[np.zeros(7), 1.5, np.zeros(12)],
                                     "n_classes": np.int64(3)}, ["'y' has dtype float64, such as 1.5 (sample 7)"]),
    "y_test-float-labels": (_xy(x_test=np.ones((2, 3)), y_test=np.array([1.5, 0.0])), ["'y_test' has float64"]),
    "x-0d": ({"x": np.float64(1.0), "y": np.arange(3)}, ["'x' is a scalar"]),
    "x-empty": ({"x": np.zeros((0, 3)), "y": np.zeros(0, np.int64)}, ["'x' has shape (0, 3)"]),
    "x-no-features": ({"x": np.zeros((20, 0)), "y": np.arange(20) % 3}, ["'x' has shape (20, 0)"]),
    "x-complex": ({"x": np.ones((20, 3), complex), "y": np.arange(20) % 3}, ["'x' has dtype complex128"]),
    "x-records": ({"x": np.zeros((20, 3), [("a", "<i4")]), "y": np.arange(20) % 3}, ["'x'", "('a', '<i4')"]),
    "y-strings": ({"x": np.ones((20, 3)), "y": np.array(["a"] * 20)}, ["'y' has dtype <U1"]),
    "x-nan": (_with("x", (3, 1), np.nan), ["NaN", "first in sample"]),
    "x-inf": (_with("x", (4, 0), np.inf), ["inf", "first in sample"]),
    "x-beyond-float32": (_with("x", (4, 0), 1e300), ["'x' holds 1e+300", "float32"]),
    "y-nan-target": (_with("y", 2, np.nan, np.float64), ["NaN", "targets"]),
}


@pytest.mark.parametrize("case", sorted(NPZ_ARRAYS))
def test_npz_bad_arrays_name_the_file_and_the_value(tmp_path, case):
    arrays, needles = NPZ_ARRAYS[case]
    path = _npz(tmp_path / f"{case}.npz", arrays)
    _expect_error(f"npz:{path}", [str(path), *needles])


def test_npz_object_array_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, x=np.array([{"a": 1}] * 20, dtype=object), y=np.arange(20) % 3)  # savez pickles objects
    _expect_error(f"npz:{path}", [str(path), "'x'", "dtype object", "allow_pickle stays False"])


GOOD_Y = _npy(np.arange(20) % 3)
NPZ_MEMBERS = {  # case -> (zip members, what the message must contain besides the path)
    "pickle-member": ({"x.npy": pickle.dumps(np.ones((20, 3))), "y.npy": GOOD_Y},
                      ["'x'", "Python pickle", "allow_pickle stays False"]),
    "not-npy-member": ({"x.npy": b"hello, world", "y.npy": GOOD_Y}, ["'x'", "not a .npy array", "b'hello,"]),
    "huge-declared-shape": ({"x.npy": _npy_header((10**6, 10**6)), "y.npy": GOOD_Y},
                            ["'x'", "(1000000, 1000000)", "8,000,000,000,000 bytes", "holds only 0 bytes"]),
    "negative-dimension": ({"x.npy": _npy_header((-1, 3)), "y.npy": GOOD_Y}, ["'x'", "(-1, 3)"]),
    "bad-header": ({"x.npy": _npy(np.ones((20, 3)))[:10] + b"{'shape': 'nonsense'}" + bytes(60), "y.npy": GOOD_Y},
                   ["cannot read array 'x'"]),
    "no-y": ({"x.npy": _npy(np.ones((20, 3)))}, ["missing array(s) 'y'"]),
}


@pytest.mark.parametrize("case", sorted(NPZ_MEMBERS))
def test_npz_bad_members_are_refused_before_they_are_read(tmp_path, case):
    members, needles = NPZ_MEMBERS[case]
    path = _zip(tmp_path / f"{case}.npz", members)
    _expect_error(f"npz:{path}", [str(path), *needles])


@pytest.mark.parametrize(("case", "needle"), [("random-bytes", "cannot read it as an .npz archive"),
                                              ("truncated", "cannot read"), ("empty", "an empty file"),
                                              ("single-npy", "single .npy array"), ("directory", "directory")])
def test_npz_not_an_archive(tmp_path, case, needle):
    path = tmp_path / f"{case}.npz"
    good = _npz(tmp_path / "good.npz", _xy()).read_bytes()
    if case == "directory":
        path.mkdir()
    else:
        path.write_bytes({"random-bytes": np.random.default_rng(1).bytes(600), "truncated": good[:-40],
                          "empty": b"", "single-npy": _npy(np.ones(3))}[case])
    _expect_error(f"npz:{path}", [str(path), needle])


def test_npz_compressed_bomb_is_refused_from_its_headers(tmp_path, monkeypatch):
    """A small archive of compressed zeros: its declared sizes are checked against memory before reading."""
    monkeypatch.setattr(limits, "memory_limit", lambda: 4 << 20)
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, x=np.zeros((65536, 16)), y=np.zeros(65536, np.int64))  # 8 MiB + 512 KiB
    assert path.stat().st_size < 100_000
    _expect_error(f"npz:{path}", [str(path), "'x' (8.0 MiB decompressed)", "more than the 4.0 MiB available"])


# ------------------------------------------------------------------------------------------------
# MNIST (IDX files)
# ------------------------------------------------------------------------------------------------

IDX_CASES = {  # case -> (file, its bytes, needles besides the file's path)
    "dims-overflow": (IMAGES, _idx(0x803, (2**32 - 1,) * 3, PIXELS),
                      ["4294967295 x 4294967295 x 4294967295", "= 79228162458924105385300197375 bytes",
                       "the file has 96"]),
    "dims-wrap-2**64": (IMAGES, _idx(0x803, (65536, 65536, 2**32 - 1), PIXELS),
                        ["65536 x 65536 x 4294967295", "= 18446744069414584320 bytes", "the file has 96"]),
    "dims-larger-than-file": (IMAGES, _idx(0x803, (60000, 28, 28), PIXELS),
                              ["truncated", "60000 x 28 x 28 = 47040000 bytes", "the file has 96"]),
    "zero-images": (IMAGES, _idx(0x803, (0, 4, 4), b""), ["zero dimension 0 x 4 x 4"]),
    "trailing-bytes": (IMAGES, _idx(0x803, (6, 4, 4), PIXELS + b"\0"), ["trailing bytes", "6 x 4 x 4", "has 97"]),
    "short-header": (IMAGES, _idx(0x803, (6, 4, 4), b"")[:6], ["(6 bytes, need 16)"]),
    "wrong-magic": (IMAGES, _idx(0x802, (6, 4, 4), PIXELS), ["0x00000802", "expected 0x00000803"]),
    "label-200": (LABELS, _idx(0x801, (6,), bytes([1, 2, 200, 0, 0, 0])), ["found 200"]),
    "labels-dims-overflow": (LABELS, _idx(0x801, (2**32 - 1,), bytes(6)), ["4294967295 = 4294967295", "has 6"]),
}


@pytest.mark.parametrize("case", sorted(IDX_CASES))
def test_idx_header_errors_name_the_file_the_dims_and_the_size(tmp_path, case):
    name, data, needles = IDX_CASES[case]
    directory = _mnist(tmp_path / "mnist", {name: data})
    _expect_error(f"mnist:{directory}", [str(directory / name), *needles])


@pytest.mark.parametrize("case", ["header-declares-more", "trailing", "corrupt", "garbage"])
def test_idx_gz_errors_name_the_file(tmp_path, case):
    directory = tmp_path / "mnist"
    if case == "header-declares-more":
        _mnist(directory, {IMAGES: _idx(0x803, (60000, 28, 28), PIXELS)}, gz=True)
        needles = ["60000 x 28 x 28 = 47040000 bytes", "the decompressed file has 96"]
    elif case == "trailing":
        _mnist(directory, {IMAGES: _idx(0x803, (6, 4, 4), PIXELS + bytes(1000))}, gz=True)
        needles = ["trailing bytes", "6 x 4 x 4 = 96 bytes", "more than 96"]
    else:
        _mnist(directory, gz=True)
        packed = (directory / (IMAGES + ".gz")).read_bytes()
        bad = packed[:len(packed) // 2] if case == "corrupt" else packed + b"garbage"
        (directory / (IMAGES + ".gz")).write_bytes(bad)
        needles = ["not a valid gzip file"]
    _expect_error(f"mnist:{directory}", [str(directory / (IMAGES + ".gz")), *needles])


def test_idx_gz_bomb_is_refused_from_its_header(tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "memory_limit", lambda: 1 << 20)
    directory = _mnist(tmp_path / "mnist", {IMAGES: _idx(0x803, (100, 200, 200), bytes(4_000_000))}, gz=True)
    assert (directory / (IMAGES + ".gz")).stat().st_size < 50_000
    _expect_error(f"mnist:{directory}", [str(directory / (IMAGES + ".gz")), "100 x 200 x 200", "1.0 MiB available"])


def test_idx_file_that_is_a_directory_is_named(tmp_path):
    directory = _mnist(tmp_path / "mnist")
    (directory / IMAGES).unlink()
    (directory / IMAGES).mkdir()
    _expect_error(f"mnist:{directory}", [str(directory / IMAGES), "is a directory"])


# ------------------------------------------------------------------------------------------------
# text
# ------------------------------------------------------------------------------------------------


def test_text_errors_name_the_file_and_the_value(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"abc\xff" + b"x" * 100)
    _expect_error(f"text:{bad}", [str(bad), "not UTF-8", "byte 3"])
    short = tmp_path / "short.txt"
    short.write_text("abc")
    _expect_error(f"text:{short}", [str(short), "3 characters", "seq_len 32"])
    folder = tmp_path / "folder"
    folder.mkdir()
    _expect_error(f"text:{folder}", [str(folder), "is a directory"])


def test_text_vocabulary_beyond_the_class_limit(tmp_path):
    everything = "".join(chr(c) for c in range(1, 0x110000) if not 0xD800 <= c < 0xE000)
    path = tmp_path / "unicode.txt"
    path.write_text(everything, encoding="utf-8")
    _expect_error(f"text:{path}", [str(path), "vocabulary of 1,112,063 distinct characters", "1,000,000"])


def test_text_memory_is_checked_before_reading(tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "memory_limit", lambda: 1 << 10)
    path = tmp_path / "prose.txt"
    path.write_text("some prose. " * 400)
    _expect_error(f"text:{path}", [str(path), "4,800 bytes", "1.0 KiB available"])


# ------------------------------------------------------------------------------------------------
# FIFOs: refused at once, for every file input
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["npz", "text", "mnist"])
def test_fifo_is_refused_without_blocking(tmp_path, kind):
    if kind == "mnist":
        directory = _mnist(tmp_path / "mnist")
        (directory / IMAGES).unlink()
        fifo, spec = directory / IMAGES, f"mnist:{directory}"
    else:
        fifo = tmp_path / f"pipe.{kind}"
        spec = f"{kind}:{fifo}"
    os.mkfifo(fifo)
    _no_hang(lambda: _expect_error(spec, [str(fifo), "FIFO"]), str(fifo))


# ------------------------------------------------------------------------------------------------
# Inputs that allocated without bound: run in a child process under RLIMIT_AS
# ------------------------------------------------------------------------------------------------

_CHILD = """
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
from dtrain.data import load_dataset
out = {{}}
for case, spec, options in json.loads(sys.argv[1]):
    start = time.perf_counter()
    try:
        load_dataset(spec, **options)
        out[case] = [[], "loaded", time.perf_counter() - start]
    except BaseException as exc:
        out[case] = [[c.__name__ for c in type(exc).__mro__], str(exc), time.perf_counter() - start]
print(json.dumps(out))
"""

GUARDED = {  # case -> (spec, options, needles); "{big}" is a sparse text file of 1 GiB + 1 byte
    "text-dev-zero": ("text:/dev/zero", {}, ["/dev/zero", "character device"]),
    "npz-dev-zero": ("npz:/dev/zero", {}, ["/dev/zero", "character device"]),
    "text-over-1-GiB": ("text:{big}", {}, ["{big}", "1,073,741,825 bytes", "1.0 GiB"]),
    "synthetic-n": ("synthetic:n=4000000000", {}, ["synthetic", "n=4000000000", "needs about"]),
    "synthetic-classes": ("synthetic:n=100,classes=4000000000", {}, ["synthetic", "classes=4000000000",
                                                                      "1,000,000"]),
    "synthetic-features": ("synthetic:n=100,features=4000000000", {}, ["features=4000000000", "needs about"]),
    "synthetic-image": ("synthetic:n=100,image=100000", {}, ["features=10000000000", "needs about"]),
    "synthetic-outputs": ("synthetic:n=100,task=regression,outputs=3000000000", {},
                          ["outputs=3000000000", "needs about"]),
    "synthetic-n-from-options": ("synthetic", {"n": 2**40, "features": 64}, ["n=1099511627776"]),
}


@pytest.fixture(scope="module")
def guarded(tmp_path_factory) -> dict[str, tuple[list[str], str, float]]:
    big = tmp_path_factory.mktemp("guarded") / "big.txt"
    with open(big, "wb") as f:
        f.truncate((1 << 30) + 1)  # sparse: no disk space, no time
    cases = [[case, spec.format(big=big), options] for case, (spec, options, _) in GUARDED.items()]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", _CHILD.format(limit=CHILD_AS), json.dumps(cases)],
                         capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 0, f"the child process failed:\n{res.stderr}"
    out = json.loads(res.stdout.splitlines()[-1])
    return {case: (types, message.replace(str(big), "{big}"), seconds) for case, (types, message, seconds)
            in out.items()}


@pytest.mark.parametrize("case", sorted(GUARDED))
def test_unbounded_inputs_fail_before_allocating(guarded, case):
    types, message, seconds = guarded[case]
    assert {"ValueError", "OSError"} & set(types), f"{case}: {types[:1] or 'no error'}: {message}"
    assert "MemoryError" not in types and "ran out of memory" not in message, f"{case} allocated: {message}"
    missing = [n for n in GUARDED[case][2] if n not in message]
    assert not missing, f"{case}: {missing} not in the error: {message!r}"
    assert seconds < LOAD_S, f"{case}: the error took {seconds:.1f} s"


def test_synthetic_memory_is_checked_before_generating(monkeypatch):
    monkeypatch.setattr(limits, "memory_limit", lambda: 1 << 20)
    _expect_error("synthetic:n=1000,features=1000", ["synthetic", "n=1000, features=1000, classes=10",
                                                     "1.0 MiB available"])


# ------------------------------------------------------------------------------------------------
# The limits themselves
# ------------------------------------------------------------------------------------------------


def test_memory_limit_is_the_least_of_what_is_known(monkeypatch):
    monkeypatch.setattr(limits.env, "memory_available", lambda: 8 << 30)
    monkeypatch.setattr(limits, "_address_space_limit", lambda: 2 << 30)
    assert limits.memory_limit() == 2 << 30
    monkeypatch.setattr(limits, "_address_space_limit", lambda: None)
    assert limits.memory_limit() == 8 << 30
    monkeypatch.setattr(limits.env, "memory_available", lambda: None)
    assert limits.memory_limit() == limits.FALLBACK_MEMORY


def test_human_size():
    assert [limits.human_size(n) for n in (0, 1023, 1 << 20, 3 << 29, 7 << 40)] == [
        "0 bytes", "1023 bytes", "1.0 MiB", "1.5 GiB", "7.0 TiB"]


# ------------------------------------------------------------------------------------------------
# End to end: `dtrain train` exits 2 with one line
# ------------------------------------------------------------------------------------------------


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))  # a regression fails the test, not the machine


@pytest.mark.parametrize("case", ["label-3e8", "fifo"])
def test_dtrain_train_exits_2_with_one_line(tmp_path, case):
    if case == "fifo":
        path = tmp_path / "pipe.txt"
        os.mkfifo(path)
        spec, needles = f"text:{path}", [str(path), "FIFO"]
    else:
        path = _npz(tmp_path / "labels.npz", _with("y", 5, 300_000_000))
        spec, needles = f"npz:{path}", [str(path), "300000000", "1,000,000"]
    cmd = [sys.executable, "-m", "dtrain", "train", "--epochs", "1", "--max-steps", "3", "--batch-size", "8",
           "--hidden", "8", "--no-progress", "--no-monitor", "--dataset", spec, "--out", str(tmp_path / "out")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, preexec_fn=_limit_memory)
    shown = f"exit {res.returncode}\n{res.stderr}"
    assert res.returncode == 2, shown
    assert "Traceback" not in res.stderr, shown
    lines = [line for line in res.stderr.splitlines() if line.startswith("dtrain train: error:")]
    assert len(lines) == 1, shown
    assert all(n in lines[0] for n in needles), shown


# ------------------------------------------------------------------------------------------------
# Fuzzing: mutations of small valid files load or fail in one line naming the file, quickly
# ------------------------------------------------------------------------------------------------

_EDGE_WORDS = (0, 1 << 31, (1 << 32) - 1, (1 << 63) - 1, (1 << 64) - 1)


def _mutate(rng: np.random.Generator, data: bytes) -> bytes:
    out = bytearray(data)
    how = int(rng.integers(4))
    if how == 0 and out:  # flip a few bytes
        for _ in range(int(rng.integers(1, 8))):
            out[int(rng.integers(len(out)))] = int(rng.integers(256))
    elif how == 1:  # truncate
        del out[int(rng.integers(len(out) + 1)):]
    elif how == 2:  # append garbage
        out += rng.bytes(int(rng.integers(1, 64)))
    else:  # overwrite 8 bytes with an extreme word (sizes, dims, offsets)
        at = int(rng.integers(max(1, len(out) - 8)))
        out[at:at + 8] = struct.pack("<Q", _EDGE_WORDS[int(rng.integers(len(_EDGE_WORDS)))])
    return bytes(out)


def _fuzz_input(rng: np.random.Generator, kind: str, where: Path) -> tuple[str, dict, str]:
    """One mutated input of ``kind``: the spec, its options and the path its errors must name."""
    if kind in ("npz-bytes", "npz-members"):
        arrays = _xy(12, n_classes=np.int64(3), x_test=np.ones((3, 3)), y_test=np.arange(3))
        members = {f"{k}.npy": _npy(v) for k, v in arrays.items()}
        if kind == "npz-bytes":
            buf = io.BytesIO()
            _zip(buf, members, zipfile.ZIP_DEFLATED if rng.integers(2) else zipfile.ZIP_STORED)
            where.write_bytes(_mutate(rng, buf.getvalue()))
        else:  # a mutated .npy inside a well-formed zip (headers, dtypes, shapes, values)
            victim = sorted(members)[int(rng.integers(len(members)))]
            members[victim] = _mutate(rng, members[victim])
            _zip(where, members)
        return f"npz:{where}", {}, str(where)
    if kind in ("idx", "idx-gz"):
        victim = sorted(MNIST)[int(rng.integers(len(MNIST)))]
        _mnist(where, {victim: _mutate(rng, _mnist_files()[victim])}, gz=kind == "idx-gz")
        return f"mnist:{where}", {}, str(where)
    text = ("The quick brown fox jumps over the lazy dog. é ü 漢字 🙂\n" * 4).encode()
    where.write_bytes(_mutate(rng, text))
    return f"text:{where}", {"seq_len": 4}, str(where)


def test_fuzzed_inputs_load_or_fail_in_one_line_naming_the_file(tmp_path):
    rng = np.random.default_rng(20240517)
    kinds = ("npz-bytes", "npz-members", "idx", "idx-gz", "text")
    outcomes: dict[str, int] = {}
    for trial in range(200):
        kind = kinds[trial % len(kinds)]
        spec, options, path = _fuzz_input(rng, kind, tmp_path / f"{trial}-{kind}")
        start = time.perf_counter()
        try:
            load_dataset(spec, **options)
            outcome = "loaded"
        except (ValueError, OSError) as exc:
            message = str(exc)
            assert path in message and "\n" not in message, f"trial {trial} ({kind}): {message!r}"
            outcome = "refused"
        elapsed = time.perf_counter() - start
        assert elapsed < LOAD_S, f"trial {trial} ({kind}) took {elapsed:.1f} s"
        outcomes[f"{kind} {outcome}"] = outcomes.get(f"{kind} {outcome}", 0) + 1
    assert all(outcomes.get(f"{kind} refused") for kind in kinds), outcomes  # the mutations reached every loader
