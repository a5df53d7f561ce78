"""Fuzzing the files `dtrain train` reads (issue 17, item 11): a TOML --config, an .npz / text / MNIST
--dataset, a checkpoint for --resume and the latest.json that --resume finds in --checkpoint-dir.

Each input is a seeded mutation of a valid file (random bytes, truncation, flipped and inserted bytes, deep
nesting, huge numbers, wrong types). The rule for every one: the run ends within 10 s with exit 2 and ONE
line ``dtrain train: error: ...`` naming the file, or (a mutation that left the file valid) exit 0; never a
traceback, never another status, never a hang.

For speed the CLI runs in a forked child of this process (dtrain imported once, ~20 ms per input instead
of ~0.7 s for a new interpreter), with its stdout/stderr redirected to files and a hard kill after the
deadline. One process: the MPI cases of the same inputs are in tests/test_bad_inputs.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import signal
import struct
import sys
import time
from pathlib import Path

import numpy as np
import pytest

DEADLINE_S = 10.0
COMMON = ["--epochs", "1", "--max-steps", "2", "--batch-size", "8", "--hidden", "8", "--no-progress", "--no-monitor"]
SYNTHETIC = ["--dataset", "synthetic:n=64,features=4,classes=3"]

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _run_forked(argv: list[str], folder: Path) -> tuple[int, str, float]:
    """``dtrain.cli.main(argv)`` in a forked child: (exit status, stderr, seconds). A child still running
    after DEADLINE_S is killed and reported as status -9."""
    from dtrain import cli

    out, err = folder / "stdout", folder / "stderr"
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        status = 70
        try:
            for fd, path in ((1, out), (2, err)):
                f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                os.dup2(f, fd)
                os.close(f)
            sys.stdout, sys.stderr = os.fdopen(1, "w", buffering=1), os.fdopen(2, "w", buffering=1)
            status = cli.main(argv)
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            import traceback

            traceback.print_exc()
            status = 99
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
    while True:
        done, wait_status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() - t0 > DEADLINE_S:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return -9, err.read_text(errors="replace"), time.monotonic() - t0
        time.sleep(0.005)
    return os.waitstatus_to_exitcode(wait_status), err.read_text(errors="replace"), time.monotonic() - t0


# -- mutations ------------------------------------------------------------------------------------------------

def _mutations(valid: bytes, rng: random.Random, n: int) -> list[tuple[str, bytes]]:
    """``n`` seeded corruptions of ``valid``."""
    out = []
    for i in range(n):
        kind = ("truncate", "flip", "insert", "random", "append", "zero-run")[i % 6]
        data = bytearray(valid)
        if kind == "truncate":
            data = data[: rng.randrange(0, max(1, len(data)))]
        elif kind == "flip":
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif kind == "insert":
            at = rng.randrange(len(data) + 1)
            data[at:at] = rng.randbytes(rng.randint(1, 64))
        elif kind == "random":
            data = bytearray(rng.randbytes(rng.choice((0, 1, 7, 64, 4096))))
        elif kind == "append":
            data += rng.randbytes(rng.randint(1, 512))
        else:
            at = rng.randrange(len(data))
            data[at:at + rng.randint(4, 64)] = b"\0" * 8
        out.append((f"{kind}-{i}", bytes(data)))
    return out


_TOML_OK = "epochs = 1\nlr = 0.05\nhidden = '8'\nbatch-size = 8\n"
_TOML_SHAPES = [
    "epochs = " + "[" * 100_000, "epochs = " + "{a=" * 50_000, "epochs = 1e400", "epochs = 99999999999999999999999",
    "epochs = -99999999999999999999999", "lr = 1e999", "lr = nan", "lr = -inf", "epochs = 'one'", "epochs = true",
    "epochs = [1]", "epochs = {a = 1}", "lr = '0.1'x", "lr = [[[[[[]]]]]]", "hidden = 99999999999999",
    "batch-size = 0", "batch-size = 1.5", "[a.b.c.d]\nx = 1", "epochs = 1\nepochs = 2", "epochs=1\nEpochs=2",
    "\ufeffepochs = 1\ncolour = 'red'", "epochs = 1979-05-27T07:32:00Z", "epochs = 0x7FFFFFFFFFFFFFFFFF",
    "dataset = 'npz:" + "a" * 5000 + "'", "seed = -1", "momentum = 1", "\x00\x01\x02", "epochs = '''\n" * 3,
]


def _toml_cases(rng):
    shapes = [(f"shape-{i}", s.encode("utf-8", "surrogatepass")) for i, s in enumerate(_TOML_SHAPES)]
    return shapes + _mutations(_TOML_OK.encode(), rng, 24)


def _npz_bytes() -> bytes:
    r = np.random.default_rng(0)
    buf = io.BytesIO()
    np.savez(buf, x=r.normal(size=(40, 4)), y=np.arange(40) % 3)
    return buf.getvalue()


def _npz_shapes() -> list[tuple[str, bytes]]:
    cases = []
    for name, arrays in (("huge-label", {"x": np.ones((20, 4)), "y": np.r_[np.zeros(19), 3e8].astype(np.int64)}),
                         ("object", {"x": np.array([None] * 20, dtype=object), "y": np.zeros(20)}),
                         ("scalar-y", {"x": np.ones((20, 4)), "y": np.int64(1)}),
                         ("3d-y", {"x": np.ones((20, 4)), "y": np.zeros((20, 2, 2), dtype=np.int64)}),
                         ("complex-x", {"x": np.ones((20, 4), dtype=complex), "y": np.zeros(20, dtype=np.int64)}),
                         ("string-x", {"x": np.array(["a"] * 20), "y": np.zeros(20, dtype=np.int64)}),
                         ("empty", {"x": np.zeros((0, 4)), "y": np.zeros(0, dtype=np.int64)}),
                         ("no-x", {"y": np.zeros(20, dtype=np.int64)})):
        buf = io.BytesIO()
        np.savez(buf, **arrays, allow_pickle=True) if name == "object" else np.savez(buf, **arrays)
        cases.append((name, buf.getvalue()))
    return cases


def _idx(magic: int, dims: tuple, payload: bytes) -> bytes:
    return struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims) + payload


def _mnist_folder(folder: Path, train_images: bytes) -> None:
    folder.mkdir()
    (folder / "train-images-idx3-ubyte").write_bytes(train_images)
    (folder / "train-labels-idx1-ubyte").write_bytes(_idx(0x0801, (16,), bytes([i % 10 for i in range(16)])))
    (folder / "t10k-images-idx3-ubyte").write_bytes(_idx(0x0803, (8, 28, 28), b"\x07" * 8 * 784))
    (folder / "t10k-labels-idx1-ubyte").write_bytes(_idx(0x0801, (8,), bytes(range(8))))


# -- the test ---------------------------------------------------------------------------------------------

def _good_checkpoint(folder: Path) -> tuple[bytes, bytes]:
    """A real checkpoint and its latest.json, from a 2-step run in a forked child."""
    ck = folder / "ck"
    status, err, _ = _run_forked(["train", *COMMON, *SYNTHETIC, "--checkpoint-dir", str(ck), "--checkpoint-every",
                                  "1", "--out", str(folder / "out")], folder)
    assert status == 0, err
    return (ck / "ckpt-00000002.npz").read_bytes(), (ck / "latest.json").read_bytes()


def _inputs(tmp: Path) -> list[tuple[str, list[str], Path]]:
    """(case id, argv, the file or folder the error must name)."""
    rng = random.Random(17)
    cases = []

    def add(kind: str, name: str, data: bytes, suffix: str, argv):
        path = tmp / kind / f"{name}{suffix}"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        cases.append((f"{kind}/{name}", argv(path), path))

    for name, data in _toml_cases(rng):
        add("config", name, data, ".toml", lambda p: ["train", *COMMON, *SYNTHETIC, "--config", str(p)])
    for name, data in _npz_shapes() + _mutations(_npz_bytes(), rng, 30):
        add("npz", name, data, ".npz", lambda p: ["train", *COMMON, "--dataset", f"npz:{p}"])
    text = ("the quick brown fox jumps over the lazy dog. " * 40).encode()
    for name, data in [("empty", b""), ("one-char", b"a")] + _mutations(text, rng, 10):
        add("text", name, data, ".txt", lambda p: ["train", *COMMON, "--model", "lstm", "--seq-len", "8",
                                                   "--dataset", f"text:{p}"])
    images = _idx(0x0803, (16, 28, 28), b"\x01" * 16 * 784)
    for name, data in [("dims-overflow", _idx(0x0803, (2**31, 2**31, 28), b"")),
                       ("dims-zero", _idx(0x0803, (0, 28, 28), b"")),
                       ("wrong-magic", _idx(0x0801, (16, 28, 28), b"\x01" * 16 * 784))] + _mutations(images, rng, 12):
        folder = tmp / "mnist" / name
        folder.parent.mkdir(exist_ok=True)
        _mnist_folder(folder, data)
        cases.append((f"mnist/{name}", ["train", *COMMON, "--model", "mlp", "--dataset", f"mnist:{folder}"], folder))
    checkpoint, latest = _good_checkpoint(tmp)
    for name, data in _mutations(checkpoint, rng, 24):
        add("checkpoint", name, data, ".npz", lambda p: ["train", *COMMON, *SYNTHETIC, "--resume", str(p),
                                                         "--out", str(p.parent / f"out-{p.stem}")])
    latest_shapes = [("deep", b"[" * 200_000), ("deep-object", b'{"a":' * 100_000), ("not-json", b"{latest:"),
                     ("list", b"[1, 2]"), ("null", b"null"), ("wrong-type", b'{"latest": 5}'),
                     ("escape", b'{"latest": "../../../etc/passwd"}'), ("huge-number", b'{"latest": 1e999}')]
    for name, data in latest_shapes + _mutations(latest, rng, 10):
        folder = tmp / "latest" / name
        folder.mkdir(parents=True)
        (folder / "ckpt-00000002.npz").write_bytes(checkpoint)
        (folder / "latest.json").write_bytes(data)
        cases.append((f"latest/{name}", ["train", *COMMON, *SYNTHETIC, "--checkpoint-dir", str(folder), "--resume",
                                         "--out", str(folder / "out")], folder / "latest.json"))
    return cases


def _named(path: Path, line: str) -> bool:
    """The error names the file (by path or name), or for a folder input the folder or a file in it."""
    return path.name in line or str(path) in line


def _warm_up(tmp: Path) -> None:
    """Import here, once, what the children would each import again (~0.2 s per input otherwise)."""
    import importlib

    for name in ("dtrain.train.job", "dtrain.train.trainer", "dtrain.data.datasets", "dtrain.models",
                 "dtrain.train.plots", "dtrain.train.checkpoint", "dtrain.files"):
        importlib.import_module(name)
    with contextlib.suppress(ImportError):  # what the plots import (no pyplot, no backend switch)
        importlib.import_module("matplotlib.backends.backend_agg")
        importlib.import_module("matplotlib.figure")
    from dtrain import cli

    bad = tmp / "warm-up.toml"
    bad.write_text("colour = 'red'\n")
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(["train", "--config", str(bad)]) == 2  # builds the parser, imports the config path


def test_every_mutated_input_file_ends_in_one_line_naming_it_or_in_success(tmp_path):
    _warm_up(tmp_path)
    cases = _inputs(tmp_path)
    assert len(cases) >= 150, len(cases)
    problems, outcomes = [], {"exit 2": 0, "exit 0": 0}
    for case_id, argv, path in cases:
        run_dir = tmp_path / "runs" / case_id.replace("/", "_")
        run_dir.mkdir(parents=True)
        status, err, _seconds = _run_forked([*argv, *(["--out", str(run_dir / "out")] if "--out" not in argv else [])],
                                           run_dir)
        errors = [line for line in err.splitlines() if line.startswith("dtrain train: error:")]
        if status == 0:
            outcomes["exit 0"] += 1
            continue
        why = None
        if status == -9:
            why = f"hung: killed after {DEADLINE_S} s"
        elif "Traceback" in err:
            why = "a traceback"
        elif status != 2:
            why = f"exit status {status}"
        elif len(errors) != 1:
            why = f"{len(errors)} error lines"
        elif not _named(path, errors[0]):
            why = f"the error does not name {path.name}"
        if why:
            problems.append(f"{case_id}: {why}\n    {' '.join(argv)}\n    " + "\n    ".join(err.splitlines()[-6:]))
        else:
            outcomes["exit 2"] += 1
    assert not problems, f"{len(problems)} of {len(cases)} inputs misbehaved:\n" + "\n".join(problems)
    # Most mutations break the file; those that do not (a flipped bit in a float) must simply train.
    assert outcomes["exit 2"] >= 0.8 * len(cases), outcomes


def test_the_fork_runner_reports_a_hang_and_a_traceback(tmp_path, monkeypatch):
    # The harness itself: a command that blocks is killed at the deadline; an exception is seen as a traceback.
    from dtrain import cli

    monkeypatch.setattr(sys.modules[__name__], "DEADLINE_S", 0.5)
    monkeypatch.setattr(cli, "main", lambda argv: time.sleep(5) or 0)
    status, _, seconds = _run_forked(["train"], tmp_path)
    assert status == -9 and seconds < 2
    monkeypatch.setattr(cli, "main", lambda argv: json.loads("{"))
    status, err, _ = _run_forked(["train"], tmp_path)
    assert status == 99 and "Traceback" in err
