"""Bad input to `mpiexec -n 2 python -m dtrain train ...`, run for real: every case must exit non-zero
within 10 s (no hang) with the reason on stderr ONCE (issue 14: it used to be once per rank).

The ranks agree on the error, so rank 0 alone reports it, as ``dtrain train: error: ...`` (no rank tag:
it is the job's error). Where only one rank can know (MPMD launches in which one rank's data differs),
rank 0's line says the job failed on that rank and quotes its message.
"""

from __future__ import annotations

import importlib.util
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

    assert res.returncode != 0, f"exit status 0 for bad input\n{shown}"
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
