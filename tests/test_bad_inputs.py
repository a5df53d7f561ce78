"""Bad input to `mpiexec -n 2 python -m dtrain train ...`, run for real: every case must exit 2 within 10 s
(no hang) with the reason on stderr ONCE (issue 14: it used to be once per rank). 134 cases: flags, the
environment, TOML configs, data files, checkpoints and manifests, output folders, and MPMD ranks that
disagree (issue 17 added FIFOs, /dev/zero, nesting, sizes beyond memory, crafted checkpoint fields).

The ranks agree on the error, so rank 0 alone reports it, as ``dtrain train: error: ...`` (no rank tag:
it is the job's error). Where only one rank can know (MPMD launches in which one rank's data differs),
rank 0's line says the job failed on that rank and quotes its message.
"""

from __future__ import annotations

import importlib.util
import io
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest


def _load_mpi_launch_helpers():
    # tests/distributed/conftest.py owns mpiexec discovery, the Open MPI/MPICH flags and the ranks' environment;
    # load it by path so this works however pytest is invoked (tests/ is not a package).
    path = Path(__file__).resolve().parent / "distributed" / "conftest.py"
    spec = importlib.util.spec_from_file_location("_dtrain_tests_mpi_launch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_launch = _load_mpi_launch_helpers()
find_mpiexec, mpi_env, launcher_flags = _launch.find_mpiexec, _launch.mpi_env, _launch._launcher_flags

TIMEOUT_S = 10
# Tiny, fast settings; a case's own flags come after these and win (argparse keeps the last value).
COMMON = ("--epochs", "1", "--max-steps", "3", "--batch-size", "8", "--hidden", "8", "--no-progress",
          "--no-monitor", "--dataset", "synthetic:n=64,features=4,classes=3")
# Any error line, with or without a rank tag (`dtrain: error: [rank R] ... aborting` would count too).
ERROR_LINE = re.compile(r"^dtrain(?: train)?: error: (?:\[rank (\d+)\] )?(.*)$", re.MULTILINE)


# ------------------------------------------------------------------------------------------------
# Input files, written on first use into the test's tmp_path: "{name}" in a case's arguments
# becomes the path of file `name` below.
# ------------------------------------------------------------------------------------------------


def _npz(path: Path, **arrays) -> None:
    np.savez(path, **arrays)


def _clean_xy(n: int = 40, features: int = 4) -> dict:
    rng = np.random.default_rng(0)
    return {"x": rng.normal(size=(n, features)), "y": np.arange(n) % 3}


def _with_nan() -> dict:
    arrays = _clean_xy()
    arrays["x"][7, 2] = np.nan
    return arrays


def _labels_outside_declared() -> dict:
    arrays = _clean_xy()
    rng = np.random.default_rng(1)
    return {**arrays, "x_test": rng.normal(size=(10, 4)), "y_test": np.full(10, 7), "n_classes": np.int64(3)}


def _fifo(p: Path) -> None:
    os.mkfifo(p)


def _deep(p: Path, opener: str = "[") -> None:
    p.write_text(opener * 200_000)


def _npz_member_bomb(p: Path) -> None:
    """A tiny .npz whose 'x' member declares a 2**40-element float64 array (8 TiB): it must be refused from
    its header, before anything is allocated or decompressed."""
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 4)))
    header["shape"] = (2**38, 4)
    import zipfile

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", buf.getvalue() + b"\0" * 4096)
        y = io.BytesIO()
        np.save(y, np.zeros(4, dtype=np.int64))
        z.writestr("y.npy", y.getvalue())


def _idx_dir(p: Path, dims=(2**31 - 1, 2**31 - 1, 28)) -> None:
    """An MNIST folder whose training-image header declares dims that overflow anything allocatable."""
    import struct

    p.mkdir()
    (p / "train-images-idx3-ubyte").write_bytes(struct.pack(">I", 0x0803) + struct.pack(">3I", *dims) + b"\0" * 64)
    (p / "train-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x0801, 2) + b"\0\1")
    (p / "t10k-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x0803, 1, 28, 28) + b"\0" * 784)
    (p / "t10k-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x0801, 1) + b"\0")


_GOOD_CHECKPOINT: dict[str, Path] = {}


def _good_checkpoint() -> Path:
    """One real checkpoint of the COMMON job, made once per session (crafted copies are derived from it)."""
    if "path" not in _GOOD_CHECKPOINT:
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="dtrain-bad-inputs-"))
        env = {**mpi_env(), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        subprocess.run([sys.executable, "-m", "dtrain", "train", *COMMON, "--checkpoint-dir", str(folder),
                        "--checkpoint-every", "1", "--out", str(folder / "out")], check=True, capture_output=True,
                       env=env, timeout=120)
        _GOOD_CHECKPOINT["path"] = folder / "ckpt-00000003.npz"
    return _GOOD_CHECKPOINT["path"]


def _crafted_checkpoint(p: Path, **fields) -> None:
    """A copy of the good checkpoint with trainer-state fields replaced in its JSON metadata."""
    import json
    import zipfile

    with zipfile.ZipFile(_good_checkpoint()) as src, zipfile.ZipFile(p, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.startswith("__metadata__"):
                arr = np.load(io.BytesIO(data))
                meta = json.loads(arr.tobytes().decode())
                meta.setdefault("trainer", {}).update(fields)
                out = io.BytesIO()
                np.save(out, np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
                data = out.getvalue()
            dst.writestr(item, data)


def _checkpoint_dir_with(p: Path, latest: bytes | None = None, link_to_fifo: bool = False) -> None:
    import shutil

    p.mkdir()
    shutil.copy(_good_checkpoint(), p / "ckpt-00000003.npz")
    if latest is not None:
        (p / "latest.json").write_bytes(latest)
    if link_to_fifo:
        os.mkfifo(p / "pipe")
        (p / "ckpt-00000009.npz").symlink_to(p / "pipe")
        (p / "latest.json").write_text('{"latest": "ckpt-00000009.npz"}')


def _labels_ending_in(label) -> np.ndarray:
    return np.r_[np.zeros(19), label].astype(np.int64)


def _mmd_npz(n: int, shift: float = 0.0):
    arrays = _clean_xy(n)
    arrays["x"][3, 1] += shift
    return arrays


FILES = {
    "bad_toml": ("bad.toml", lambda p: p.write_text("epochs = \n")),
    "unknown_key_toml": ("colour.toml", lambda p: p.write_text("colour = 'red'\n")),
    "missing": ("missing.file", None),  # never written
    "garbage": ("garbage.bin", lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096))),
    "regular_file": ("regular.file", lambda p: p.write_text("not a folder\n")),
    "empty_dir": ("empty_dir", lambda p: p.mkdir()),
    "short_y_npz": ("short_y.npz", lambda p: _npz(p, x=np.ones((20, 4)), y=np.arange(19) % 3)),
    "flat_x_npz": ("flat_x.npz", lambda p: _npz(p, x=np.arange(20.0), y=np.arange(20) % 3)),
    "nan_npz": ("nan.npz", lambda p: _npz(p, **_with_nan())),
    "labels_npz": ("labels.npz", lambda p: _npz(p, **_labels_outside_declared())),
    "tiny_npz": ("tiny.npz", lambda p: _npz(p, **_clean_xy(n=3))),
    # The same relative file name in two folders: MPMD ranks started in different folders get the
    # same options but different data (as with node-local copies of a data set).
    "clean_dir": ("clean", lambda p: (p.mkdir(), _npz(p / "data.npz", **_clean_xy()))),
    "nan_dir": ("nan", lambda p: (p.mkdir(), _npz(p / "data.npz", **_with_nan()))),
    "dir_41": ("n41", lambda p: (p.mkdir(), _npz(p / "data.npz", **_mmd_npz(41)))),
    "dir_40_other": ("other40", lambda p: (p.mkdir(), _npz(p / "data.npz", **_mmd_npz(40, shift=1.0)))),
    "dir_200": ("n200", lambda p: (p.mkdir(), _npz(p / "data.npz", **_mmd_npz(200)))),
    # --- config files ---
    "dup_toml": ("dup.toml", lambda p: p.write_text("batch-size = 8\nbatch_size = 16\n")),
    "binary_toml": ("binary.toml", lambda p: p.write_bytes(b"\x00\xff\xfe" + np.random.default_rng(1).bytes(512))),
    "deep_toml": ("deep.toml", lambda p: p.write_text("epochs = " + "[" * 200_000)),
    "fifo": ("pipe.fifo", _fifo),
    "big_toml": ("big.toml", lambda p: p.write_text("# padding\n" * 200_000)),
    "string_epochs_toml": ("string.toml", lambda p: p.write_text("epochs = 'many'\n")),
    "float_epochs_toml": ("float.toml", lambda p: p.write_text("epochs = 1.5\n")),
    "table_toml": ("table.toml", lambda p: p.write_text("[train]\nepochs = 1\n")),
    "array_lr_toml": ("array.toml", lambda p: p.write_text("lr = [0.1, 0.2]\n")),
    "huge_int_toml": ("hugeint.toml", lambda p: p.write_text("epochs = 99999999999999999999999\n")),
    # --- data files ---
    "empty_file": ("empty.npz", lambda p: p.write_bytes(b"")),
    "truncated_npz": ("truncated.npz", lambda p: (_npz(p, **_clean_xy()), p.write_bytes(p.read_bytes()[:300]))),
    "huge_label_npz": ("huge_label.npz", lambda p: _npz(p, x=np.ones((20, 4)), y=_labels_ending_in(3e8))),
    "label_2_40_npz": ("label40.npz", lambda p: _npz(p, x=np.ones((20, 4)), y=_labels_ending_in(2**40))),
    "negative_label_npz": ("neg_label.npz", lambda p: _npz(p, x=np.ones((20, 4)), y=-np.ones(20, dtype=np.int64))),
    "float_label_npz": ("float_label.npz", lambda p: _npz(p, x=np.ones((20, 4)), y=np.full(20, 1.5),
                                                          n_classes=np.int64(3))),
    "object_npz": ("object.npz", lambda p: np.savez(p, x=np.array([{"a": 1}] * 20, dtype=object), y=np.zeros(20))),
    "scalar_x_npz": ("scalar.npz", lambda p: _npz(p, x=np.float64(1.0), y=np.zeros(1))),
    "empty_x_npz": ("empty_x.npz", lambda p: _npz(p, x=np.zeros((0, 4)), y=np.zeros(0, dtype=np.int64))),
    "inf_npz": ("inf.npz", lambda p: _npz(p, x=np.full((20, 4), np.inf), y=np.arange(20) % 3)),
    "no_y_npz": ("no_y.npz", lambda p: _npz(p, x=np.ones((20, 4)))),
    "bomb_npz": ("bomb.npz", _npz_member_bomb),
    "idx_overflow_dir": ("idx_overflow", _idx_dir),
    "empty_text": ("empty.txt", lambda p: p.write_text("")),
    "binary_text": ("binary.txt", lambda p: p.write_bytes(b"\xff\xfe\x00" * 100)),
    # --- checkpoints ---
    "ck_step_string": ("step_string.npz", lambda p: _crafted_checkpoint(p, step="abc")),
    "ck_epoch_huge": ("epoch_huge.npz", lambda p: _crafted_checkpoint(p, epoch=10**9)),
    "ck_step_negative": ("step_negative.npz", lambda p: _crafted_checkpoint(p, step=-5)),
    "ck_truncated": ("ck_truncated.npz", lambda p: p.write_bytes(_good_checkpoint().read_bytes()[:2000])),
    "ck_deep_latest_dir": ("ck_deep", lambda p: _checkpoint_dir_with(p, latest=b"[" * 200_000)),
    "ck_binary_latest_dir": ("ck_binlatest", lambda p: _checkpoint_dir_with(p, latest=b"\xff\x00" * 64)),
    "ck_fifo_dir": ("ck_fifo", lambda p: _checkpoint_dir_with(p, link_to_fifo=True)),
}


class _Files(dict):
    """``"{name}".format_map(files)``: the path of FILES[name] under ``root``, created on first use."""

    def __init__(self, root: Path):
        super().__init__()
        self.root = root

    def __missing__(self, name: str) -> str:
        filename, write = FILES[name]
        path = self.root / filename
        if write is not None:
            write(path)
        self[name] = str(path)
        return self[name]


# ------------------------------------------------------------------------------------------------
# The cases
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One bad launch.

    args: flags for every rank (after COMMON). mpmd: instead, one (working folder or None, flags) per
    rank, launched MPMD-style (``mpiexec -n 1 ... : -n 1 ...``). expect: what the one error line (rank
    0's) must contain (str: a substring; re.Pattern: a regex). culprit: the one rank that can know; rank
    0's line must say the job failed on it.
    """

    args: tuple = ()
    expect: tuple = ()
    ranks: int = 2
    env: dict = field(default_factory=dict)
    mpmd: tuple | None = None
    culprit: int | None = None


def case(case_id: str, args=(), expect=(), **kw):
    expect = (expect,) if isinstance(expect, (str, re.Pattern)) else tuple(expect)
    return pytest.param(Case(tuple(args), expect, **kw), id=case_id)


CASES = [
    # --- options (flags, environment, TOML) ---
    case("unknown-model", ["--model", "vgg"], "unknown model 'vgg'"),
    case("unknown-dataset", ["--dataset", "cifar"], "unknown data set 'cifar'"),
    case("unknown-optimizer", ["--optimizer", "lbfgs"], "unknown optimizer 'lbfgs'"),
    case("negative-lr", ["--lr", "-0.1"], "--lr must be > 0, got -0.1"),
    case("zero-batch-size", ["--batch-size", "0"], "--batch-size must be > 0, got 0"),
    case("zero-epochs", ["--epochs", "0"], "--epochs must be > 0, got 0"),
    case("dropout-above-one", ["--dropout", "1.5"], "--dropout must be in [0, 1), got 1.5"),
    case("bad-compression", ["--compression", "topk:2"], ["--compression", "topk RATIO", "got 2"]),
    case("negative-timeout", ["--timeout", "-1"], "--timeout must be >= 0, got -1.0"),
    case("negative-loss-scale", ["--loss-scale", "-1"], ["--loss-scale must be", "got '-1'"]),
    case("negative-check-every", ["--check-every", "-1"], "--check-every must be >= 0, got -1"),
    case("env-timeout-not-a-number", env={"DTRAIN_TIMEOUT": "abc"},
         expect=["DTRAIN_TIMEOUT", "must be a number of seconds, got 'abc'"]),
    case("unknown-flag", ["--colour", "red"], "--colour"),
    case("malformed-toml", ["--config", "{bad_toml}"], ["bad.toml", "is not valid TOML"]),
    case("unknown-toml-key", ["--config", "{unknown_key_toml}"], ["colour.toml", "unknown key 'colour'"]),
    case("missing-config-file", ["--config", "{missing}"], "missing.file does not exist"),
    case("warmup-with-plateau", ["--scheduler", "plateau", "--warmup-steps", "5"],
         "--warmup-steps cannot be combined with --scheduler plateau"),
    case("cnn-on-flat-data", ["--model", "cnn"], "model 'cnn' needs image input"),
    case("bad-flag-value", ["--epochs", "x"], "argument --epochs: invalid int value: 'x'"),
    case("momentum-with-adam", ["--optimizer", "adam", "--momentum", "0.5"],
         "--momentum 0.5 has no effect with --optimizer adam"),
    case("no-gpu", ["--device", "cuda"], re.compile(r"--device cuda: rank 0 sees no CUDA device|CUDA is not usable")),
    # --- data ---
    case("npz-missing", ["--dataset", "npz:{missing}"], ["file not found", "missing.file"]),
    case("npz-not-an-archive", ["--dataset", "npz:{garbage}"], ["garbage.bin", "cannot read it as an .npz"]),
    case("npz-is-toml", ["--dataset", "npz:{unknown_key_toml}"],
         "colour.toml: cannot read it as an .npz archive: it looks like a TOML text file"),
    case("npz-x-y-lengths-differ", ["--dataset", "npz:{short_y_npz}"], "'x' has 20 samples but 'y' has 19"),
    case("npz-x-1d", ["--dataset", "npz:{flat_x_npz}"], ["flat_x.npz", re.compile(r"shape|dimension|ndim|1-D")]),
    case("npz-nan", ["--dataset", "npz:{nan_npz}"], ["nan.npz", "NaN"]),
    case("labels-outside-n-classes", ["--dataset", "npz:{labels_npz}"], ["labels.npz", "labels must lie in [0, 3)"]),
    case("synthetic-bad-option", ["--dataset", "synthetic:n=abc"], "bad value n='abc'"),
    case("world-larger-than-data", ["--dataset", "npz:{tiny_npz}", "--batch-size", "4"],
         "larger than the data set", ranks=4),
    case("batch-smaller-than-world", ["--batch-size", "1"], "--batch-size 1 (global) is smaller than the 2 ranks"),
    # --- checkpoints and outputs ---
    case("checkpoint-every-without-dir", ["--checkpoint-every", "5"], "--checkpoint-every 5 needs --checkpoint-dir"),
    case("checkpoint-dir-is-a-file", ["--checkpoint-dir", "{regular_file}"], "regular.file"),
    case("out-is-a-file", ["--out", "{regular_file}"], "regular.file"),
    case("resume-missing-path", ["--resume", "{missing}"], ["--resume", "missing.file does not exist"]),
    case("resume-latest-without-dir", ["--resume"], "--resume without a PATH needs --checkpoint-dir"),
    case("resume-empty-checkpoint-dir", ["--checkpoint-dir", "{empty_dir}", "--resume"],
         ["no checkpoint found in", "empty_dir"]),
    case("resume-not-a-checkpoint", ["--resume", "{garbage}"], ["garbage.bin", re.compile("checkpoint")]),
    case("resume-a-toml-file", ["--resume", "{unknown_key_toml}"],
         ["colour.toml is not a dtrain checkpoint: it looks like a TOML text file"]),
    # --- ranks that disagree (MPMD launches) ---
    # Two different models: whichever check catches it first, every rank names what differs, the
    # option (hidden) or the model parameter ('0.weight', ...).
    case("mpmd-model-mismatch", mpmd=((None, ["--hidden", "32"]), (None, ["--hidden", "64"])),
         expect=re.compile(r"\bhidden\b|parameter '[\w.]+'")),
    case("mpmd-nan-on-rank-1", mpmd=(("{clean_dir}", ["--dataset", "npz:data.npz"]),
                                     ("{nan_dir}", ["--dataset", "npz:data.npz"])),
         expect=["data.npz", "NaN"], culprit=1),
    case("mpmd-different-lr", mpmd=((None, ["--lr", "0.1"]), (None, ["--lr", "0.2"])),
         expect=["different options", re.compile(r"\blr\b")]),
    case("mpmd-unknown-flag-on-rank-1", mpmd=((None, []), (None, ["--colour", "red"])),
         expect="UsageError: unrecognized arguments: --colour red", culprit=1),
    # --- issue 17: ranks with different data under the same options ---
    case("mpmd-40-vs-41-samples", mpmd=(("{clean_dir}", ["--dataset", "npz:data.npz"]),
                                        ("{dir_41}", ["--dataset", "npz:data.npz"])),
         expect=["the ranks loaded different data", "clean/data.npz", "n41/data.npz"]),
    case("mpmd-same-size-other-contents", mpmd=(("{clean_dir}", ["--dataset", "npz:data.npz"]),
                                                ("{dir_40_other}", ["--dataset", "npz:data.npz"])),
         expect=["the ranks loaded different data", "contents", "other40/data.npz"]),
    case("mpmd-40-vs-200-samples", mpmd=(("{clean_dir}", ["--dataset", "npz:data.npz"]),
                                         ("{dir_200}", ["--dataset", "npz:data.npz"])),
         expect=["the ranks loaded different data", "n200/data.npz"]),
    # --- issue 17: flags ---
    case("lr-nan", ["--lr", "nan"], "--lr must be > 0, got nan"),
    case("lr-inf", ["--lr", "inf"], "--lr must be > 0, got inf"),
    case("lr-overflows-to-inf", ["--lr", "1e400"], "--lr must be > 0, got inf"),
    case("momentum-above-one", ["--momentum", "2"], "--momentum must be in [0, 1), got 2.0"),
    case("negative-momentum", ["--momentum", "-0.5"], "--momentum must be in [0, 1), got -0.5"),
    case("negative-weight-decay", ["--weight-decay", "-1"], "--weight-decay must be >= 0, got -1.0"),
    case("negative-l1", ["--l1", "-1"], "--l1 must be >= 0, got -1.0"),
    case("zero-max-steps", ["--max-steps", "0"], "--max-steps must be > 0, got 0"),
    case("zero-keep-checkpoints", ["--keep-checkpoints", "0"], "--keep-checkpoints must be > 0, got 0"),
    case("check-every-not-a-number", ["--check-every", "abc"], "argument --check-every: invalid int value: 'abc'"),
    case("epochs-in-float-notation", ["--epochs", "1e9"], "argument --epochs: invalid int value: '1e9'"),
    case("unknown-precision", ["--precision", "fp8"], "unknown precision 'fp8'"),
    case("unknown-dtype", ["--dtype", "float16"], "unknown dtype 'float16'"),
    case("unknown-allreduce", ["--allreduce", "foo"], "unknown allreduce 'foo'"),
    case("zero-bucket", ["--bucket-mb", "0"], "--bucket-mb must be > 0, got 0.0"),
    case("unknown-compression", ["--compression", "bogus"], "unknown compression 'bogus'"),
    case("powersgd-rank-zero", ["--compression", "powersgd:0"], "powersgd RANK must be an integer >= 1, got 0"),
    case("qsgd-levels-zero", ["--compression", "qsgd:0"], "qsgd LEVELS must be an integer in [2, 127], got 0"),
    case("randomk-ratio-above-one", ["--compression", "randomk:1.5"], "randomk RATIO must be a number in (0, 1]"),
    case("unknown-scheduler", ["--scheduler", "foo"], "unknown scheduler 'foo'"),
    case("negative-warmup", ["--warmup-steps", "-1"], "--warmup-steps must be >= 0, got -1"),
    case("negative-seed", ["--seed", "-1"], "--seed must be >= 0, got -1"),
    case("skipped-fraction-above-one", ["--max-skipped-fraction", "2"], "--max-skipped-fraction must be in [0, 1)"),
    case("zero-skipped-in-a-row", ["--max-skipped-in-a-row", "0"], "--max-skipped-in-a-row must be > 0, got 0"),
    case("unknown-nonfinite-policy", ["--nonfinite", "maybe"], "unknown nonfinite 'maybe'"),
    case("zero-lr-gamma", ["--lr-gamma", "0"], "--lr-gamma must be > 0, got 0.0"),
    case("negative-clip-norm", ["--clip-grad-norm", "-1"], "--clip-grad-norm must be > 0, got -1.0"),
    case("nan-timeout", ["--timeout", "nan"], "--timeout must be >= 0, got nan"),
    case("negative-stall-warning", ["--stall-warning", "-1"], "--stall-warning must be > 0, got -1.0"),
    case("tiny-stall-warning", ["--stall-warning", "1e-9"], "--stall-warning must be at least 0.1 s, got 1e-09"),
    case("fractional-checkpoint-every", ["--checkpoint-every", "0.5"], ["--checkpoint-every must be", "got '0.5'"]),
    case("checkpoint-every-bad-unit", ["--checkpoint-every", "5x"], ["--checkpoint-every must be", "got '5x'"]),
    case("negative-dropout", ["--dropout", "-0.1"], "--dropout must be in [0, 1), got -0.1"),
    case("unknown-device", ["--device", "tpu"], "unknown device 'tpu'"),
    case("empty-hidden-width", ["--hidden", "8,,8"], "got '8,,8'"),
    case("negative-hidden", ["--hidden", "-5"], "got (-5,)"),
    case("hidden-larger-than-memory", ["--hidden", "200000000"], ["--hidden 200000000", "GiB of memory"]),
    case("batch-larger-than-data", ["--batch-size", "100000"], "batch_size 100000 is larger than the data set"),
    case("loss-scale-beyond-fp16", ["--precision", "fp16", "--loss-scale", "1e300"],
         "--loss-scale 1e+300 is larger than float16 can hold (65504)"),
    case("synthetic-n-float-notation", ["--dataset", "synthetic:n=4e9"], "bad value n='4e9'"),
    case("synthetic-zero-features", ["--dataset", "synthetic:features=0"], "bad value features='0'"),
    case("synthetic-one-class", ["--dataset", "synthetic:classes=1"], "classes=1"),
    case("synthetic-unknown-option", ["--dataset", "synthetic:bogus=1"], "has no option 'bogus'"),
    case("synthetic-n-beyond-memory", ["--dataset", "synthetic:n=4000000000"], "4000000000"),
    case("env-timeout-negative", env={"DTRAIN_TIMEOUT": "-1"}, expect="DTRAIN_TIMEOUT"),
    # --- issue 17: config files ---
    case("toml-duplicate-key", ["--config", "{dup_toml}"], "'batch-size' and 'batch_size' are the same option"),
    case("toml-binary", ["--config", "{binary_toml}"], ["binary.toml", "not UTF-8"]),
    case("toml-deeply-nested", ["--config", "{deep_toml}"], ["deep.toml", "nested too deeply"]),
    case("toml-fifo", ["--config", "{fifo}"], ["pipe.fifo", "is a FIFO (named pipe), not a regular file"]),
    case("toml-dev-zero", ["--config", "/dev/zero"], "/dev/zero is a character device, not a regular file"),
    case("toml-too-big", ["--config", "{big_toml}"], ["big.toml", "more than the 1.0 MiB"]),
    case("toml-string-epochs", ["--config", "{string_epochs_toml}"], ["string.toml", "epochs"]),
    case("toml-float-epochs", ["--config", "{float_epochs_toml}"], ["float.toml", "epochs"]),
    case("toml-table", ["--config", "{table_toml}"], ["table.toml", "[train] tables are not supported"]),
    case("toml-array-lr", ["--config", "{array_lr_toml}"], ["array.toml", "lr"]),
    case("toml-huge-int", ["--config", "{huge_int_toml}"], ["hugeint.toml", "must fit in a 64-bit integer"]),
    case("toml-a-directory", ["--config", "{empty_dir}"], ["empty_dir", "directory"]),
    # --- issue 17: data files ---
    case("npz-empty-file", ["--dataset", "npz:{empty_file}"], "empty.npz"),
    case("npz-truncated", ["--dataset", "npz:{truncated_npz}"], "truncated.npz"),
    case("npz-fifo", ["--dataset", "npz:{fifo}"], ["pipe.fifo", "FIFO"]),
    case("npz-dev-zero", ["--dataset", "npz:/dev/zero"], "/dev/zero is a character device"),
    case("npz-label-3e8", ["--dataset", "npz:{huge_label_npz}"], ["huge_label.npz", "300000000"]),
    case("npz-label-2-to-the-40", ["--dataset", "npz:{label_2_40_npz}"], ["label40.npz", "1099511627776"]),
    case("npz-negative-labels", ["--dataset", "npz:{negative_label_npz}"], ["neg_label.npz", "-1"]),
    case("npz-fractional-labels", ["--dataset", "npz:{float_label_npz}"], ["float_label.npz", "1.5"]),
    case("npz-object-array", ["--dataset", "npz:{object_npz}"], ["object.npz", re.compile("object|pickle")]),
    case("npz-scalar-x", ["--dataset", "npz:{scalar_x_npz}"], "scalar.npz"),
    case("npz-no-samples", ["--dataset", "npz:{empty_x_npz}"], "empty_x.npz"),
    case("npz-infinite-values", ["--dataset", "npz:{inf_npz}"], ["inf.npz", re.compile("inf|non-finite")]),
    case("npz-no-labels", ["--dataset", "npz:{no_y_npz}"], ["no_y.npz", "'y'"]),
    case("npz-declared-8-tib", ["--dataset", "npz:{bomb_npz}"], ["bomb.npz", "x"]),
    case("mnist-header-overflow", ["--dataset", "mnist:{idx_overflow_dir}"], ["train-images-idx3-ubyte", "2147483647"]),
    case("mnist-not-a-folder", ["--dataset", "mnist:/dev/zero"], "/dev/zero"),
    case("text-fifo", ["--dataset", "text:{fifo}", "--model", "lstm"], ["pipe.fifo", "FIFO"]),
    case("text-dev-zero", ["--dataset", "text:/dev/zero", "--model", "lstm"], "/dev/zero is a character device"),
    case("text-empty", ["--dataset", "text:{empty_text}", "--model", "lstm"], "empty.txt"),
    case("text-binary", ["--dataset", "text:{binary_text}", "--model", "lstm"], "binary.txt"),
    # --- issue 17: checkpoints ---
    case("checkpoint-step-a-string", ["--resume", "{ck_step_string}"], ["step_string.npz", "step", "'abc'"]),
    case("checkpoint-epoch-huge", ["--resume", "{ck_epoch_huge}"], ["epoch_huge.npz", "epoch", "1000000000"]),
    case("checkpoint-step-negative", ["--resume", "{ck_step_negative}"], ["step_negative.npz", "step", "-5"]),
    case("checkpoint-truncated", ["--resume", "{ck_truncated}"], "ck_truncated.npz"),
    case("checkpoint-fifo", ["--resume", "{fifo}"], ["pipe.fifo", "FIFO"]),
    case("checkpoint-dev-zero", ["--resume", "/dev/zero"], "/dev/zero is a character device"),
    case("latest-json-deeply-nested", ["--checkpoint-dir", "{ck_deep_latest_dir}", "--resume"],
         ["latest.json", "nested too deeply"]),
    case("latest-json-binary", ["--checkpoint-dir", "{ck_binary_latest_dir}", "--resume"], "latest.json"),
    case("latest-points-at-a-fifo", ["--checkpoint-dir", "{ck_fifo_dir}", "--resume"], ["ckpt-00000009.npz", "FIFO"]),
    # --- issue 17: outputs ---
    case("out-cannot-be-created", ["--out", "/proc/dtrain-out"], "--out /proc/dtrain-out cannot be created"),
    case("checkpoint-dir-cannot-be-created", ["--checkpoint-dir", "/proc/dtrain-ck"],
         "--checkpoint-dir /proc/dtrain-ck cannot be created"),
]


def _command(mpiexec: str, c: Case, files: _Files) -> list[str]:
    program = [sys.executable, "-m", "dtrain", "train", *COMMON]
    if c.mpmd is None:
        return [mpiexec, *launcher_flags(mpiexec), "-n", str(c.ranks), *program,
                *(a.format_map(files) for a in c.args)]
    cmd = [mpiexec, *launcher_flags(mpiexec)]
    for i, (folder, args) in enumerate(c.mpmd):
        if i:
            cmd.append(":")
        if folder is not None:
            cmd += ["--wdir", folder.format_map(files)]  # per application context (MPICH and Open MPI)
        cmd += ["-n", "1", *program, *(a.format_map(files) for a in args)]
    return cmd


def _run(cmd: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return _launch.run_group(cmd, TIMEOUT_S, env, cwd, hang="hung: no exit within")


def _found(expect, line: str) -> bool:
    return bool(expect.search(line)) if isinstance(expect, re.Pattern) else expect in line


@pytest.mark.parametrize("c", CASES)
def test_bad_input_is_reported_once(c: Case, tmp_path):
    mpiexec = find_mpiexec()
    if mpiexec is None:
        pytest.skip("no mpiexec found (pip install mpich, or put an MPI launcher on PATH)")
    files = _Files(tmp_path)
    cmd = _command(mpiexec, c, files)
    env = {**mpi_env(), **c.env}
    if "DTRAIN_TIMEOUT" not in c.env:
        env.pop("DTRAIN_TIMEOUT", None)
    res = _run(cmd, env, tmp_path)
    shown = f"{' '.join(cmd)}\n--- exit status {res.returncode}; stderr ---\n{res.stderr}--- stdout ---\n{res.stdout}"

    assert res.returncode == 2, f"exit status {res.returncode} for bad input, not 2\n{shown}"
    assert "Traceback" not in res.stderr, f"a traceback instead of a one-line error\n{shown}"
    lines = ERROR_LINE.findall(res.stderr)
    assert len(lines) == 1, f"{len(lines)} error lines instead of one (rank 0's)\n{shown}"
    rank, said = lines[0]
    assert rank == "", f"the job's error carries a rank tag ([rank {rank}])\n{shown}"
    absent = [e.pattern if isinstance(e, re.Pattern) else e for e in c.expect if not _found(e, said)]
    assert not absent, f"the error does not contain {absent}: {said!r}\n{shown}"
    if c.culprit is not None:
        assert re.search(rf"failed on .*\brank {c.culprit}\b", said), (
            f"the error does not say the job failed on rank {c.culprit}: {said!r}\n{shown}")
